"""Scores of a dataset split under a model, and the arithmetic the Scores and Thresholds pages do on them:
grouping for histograms, ROC/PR curves, confusion counts, thresholds and outcomes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from core.errors import WorkbenchError
from core.workbench.datasets import check_browsable
from core.workbench.models import load_model

MAP_STORE_SIZE = 112  # side of the anomaly maps kept per scored image (float16) for galleries



@dataclass
class SplitScores:
    """Raw scores (and small anomaly maps) of one split of a dataset under one model."""

    dataset: str
    split: str
    paths: list[str]  # absolute
    rel_paths: list[str]
    labels: np.ndarray  # 0 normal, 1 anomalous
    defects: list[str]
    masks: list[str | None]  # absolute mask paths
    scores: np.ndarray
    maps: np.ndarray  # N x m x m float16 raw maps, downsampled for galleries
    errors: dict[str, str]  # path -> message (unreadable images)
    ms_per_image: float
    is_domain_set: bool = False
    subsampled_from: int = 0  # >0 when only a sample of a larger split was scored

    def __len__(self) -> int:
        return len(self.paths)


def score_split(
    folder: str | Path,
    dataset_root: str | Path,
    split: str = "test",
    det=None,
    cache=None,
    limit: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> SplitScores:
    """Score every image of ``split`` (features through the disk cache). ``limit`` takes an even sample."""
    from core.data import index_dataset
    from core.features import FeatureCache

    check_browsable(dataset_root)
    det = det or load_model(folder)
    index = index_dataset(dataset_root)
    records = index.split(split)
    n_all = len(records)
    if limit and n_all > limit:
        pick = np.linspace(0, n_all - 1, int(limit)).round().astype(int)
        records = [records[i] for i in sorted(set(pick.tolist()))]
    paths = [str(index.abs_path(r)) for r in records]
    kw = {"progress": progress} if progress else {}
    res = det.score_paths(paths, cache=cache if cache is not None else FeatureCache(), **kw)
    keep = [records[i] for i in res.ok]
    h, w = det.input_hw
    f = min(1.0, MAP_STORE_SIZE / max(h, w))  # the model's aspect ratio kept (square for square inputs)
    mh, mw = max(1, round(h * f)), max(1, round(w * f))
    small = np.stack(
        [cv2.resize(mp.astype(np.float32), (mw, mh), interpolation=cv2.INTER_AREA) for mp in res.maps]
    ).astype(np.float16) if len(res.maps) else np.zeros((0, mh, mw), np.float16)
    return SplitScores(
        dataset=str(index.root),
        split=split,
        paths=[paths[i] for i in res.ok],
        rel_paths=[r.path for r in keep],
        labels=np.array([r.label for r in keep], dtype=np.int64),
        defects=[r.defect for r in keep],
        masks=[str(index.mask_path(r)) if r.mask else None for r in keep],
        scores=np.asarray(res.scores, dtype=np.float64),
        maps=small,
        errors={paths[i]: msg for i, msg in res.errors.items()},
        ms_per_image=res.ms_per_image,
        is_domain_set=index.is_domain_set,
        subsampled_from=n_all if len(records) < n_all else 0,
    )


def group_scores(results: Sequence[SplitScores], by: str) -> dict[str, np.ndarray]:
    """Scores grouped for histograms: ``by`` is "label" (normal / anomalous), "defect" or "split"."""
    groups: dict[str, list[float]] = {}
    for r in results:
        for lab, d, s in zip(r.labels, r.defects, r.scores):
            if by == "label":
                key = "normal" if lab == 0 else "anomalous"
            elif by == "defect":
                key = d
            elif by == "split":
                key = r.split
            else:
                raise ValueError(by)
            if r.is_domain_set:
                key = f"domain set {Path(r.dataset).name}" + ("" if by == "label" else f": {key}")
            groups.setdefault(key, []).append(float(s))
    order = sorted(groups, key=lambda k: (k.startswith("domain"), k not in ("normal", "good"), k))
    return {k: np.asarray(groups[k]) for k in order}


def curves(labels: np.ndarray, scores: np.ndarray) -> dict[str, Any] | None:
    """ROC and PR curves with AUROC and AP (sklearn, on raw scores); None with only one class."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    if len(np.unique(y)) < 2:
        return None
    fpr, tpr, _ = roc_curve(y, s)
    prec, rec, _ = precision_recall_curve(y, s)
    return {
        "fpr": fpr, "tpr": tpr, "auroc": float(roc_auc_score(y, s)),
        "precision": prec, "recall": rec, "ap": float(average_precision_score(y, s)),
        "prevalence": float(y.mean()),
    }


def confusion(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Counts and rates at ``threshold`` (anomalous when score >= threshold)."""
    from core.metrics import confusion_at

    return confusion_at(labels, scores, threshold)


def threshold_for_recall(labels: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The highest threshold whose recall reaches ``target`` (fewest false alarms at that recall)."""
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    pos = np.sort(s[y == 1])[::-1]
    if pos.size == 0:
        raise WorkbenchError("This split has no anomalous images, so recall is undefined.",
                             "Pick a split with defects.")
    target = float(np.clip(target, 0.0, 1.0))
    k = max(1, int(np.ceil(target * pos.size - 1e-9)))
    return float(pos[k - 1])


def outcomes(labels: np.ndarray, scores: np.ndarray, threshold: float) -> list[str]:
    """TP / FP / TN / FN of each image at ``threshold``."""
    out = []
    for y, s in zip(np.asarray(labels), np.asarray(scores)):
        pred = s >= threshold
        out.append(("TP" if y == 1 else "FP") if pred else ("FN" if y == 1 else "TN"))
    return out


def flag_rate(scores: np.ndarray, threshold: float) -> float:
    """Share of images called anomalous (``score >= threshold``)."""
    from core.metrics import flag_rate as fr

    return fr(scores, threshold)


def normalisation_of(folder: str | Path):
    """The model's fixed normalisation (from config.json; no arrays loaded)."""
    from core.detectors.postprocess import Normalisation
    from core.storage import read_model_config

    return Normalisation.from_dict(read_model_config(folder)["normalisation"])


def tuning_split_warning(split: str, available: Sequence[str]) -> str | None:
    """What is wrong with tuning a threshold on ``split`` (None for val_mix, the split meant for it)."""
    if split == "val_mix":
        return None
    better = "Tune on val_mix and report on test_mix." if "val_mix" in available else (
        "Give the dataset a validation split (a mixed train/test layout gets val_mix) and tune there.")
    if split in ("test", "test_mix"):
        return (f"{split} is the split results are reported on: a threshold tuned on it has seen the answers, so "
                f"the metrics shown for it are optimistic. {better}")
    if split == "train_normal":
        return ("train_normal holds the normal images the model was fitted on, with no defects: their scores are "
                "lower than a new normal part's, so a threshold tuned there raises false alarms. " + better)
    return f"{split} is not the split meant for tuning. {better}"


def pixel_metrics(res: SplitScores) -> dict[str, float | None] | None:
    """Pixel AUROC, pixel AP and AUPRO of a scored split on its stored gallery maps (``MAP_STORE_SIZE`` px, masks
    resized to match with nearest neighbour); None when the split has no defect masks. ``python -m core evaluate``
    computes the same metrics on full-size maps for reports."""
    from core.data import read_mask
    from core.metrics import aupro, pixel_ap, pixel_auroc

    if not any(res.masks) or len(res) == 0:
        return None
    size = res.maps.shape[-1]
    masks = np.zeros((len(res), size, size), bool)
    for i, mp in enumerate(res.masks):
        if mp:
            try:
                masks[i] = cv2.resize(read_mask(mp).astype(np.uint8), (size, size),
                                      interpolation=cv2.INTER_NEAREST) > 0
            except WorkbenchError:
                return None
    maps = res.maps.astype(np.float32)
    return {"pixel_auroc": pixel_auroc(masks, maps), "pixel_ap": pixel_ap(masks, maps),
            "aupro": aupro(masks, maps)}

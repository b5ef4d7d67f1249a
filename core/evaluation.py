"""Fit a heatmap detector on a dataset's normal images and measure it on a split (the `evaluate` verb).

Writes ``metrics.json``, ``scores.csv``, overlays of the worst misses and false alarms, and the model.
All metrics are computed on raw scores (normalisation is monotone and only for display).
"""

from __future__ import annotations

import csv
import io
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.data import DatasetIndex, index_dataset, read_image, read_mask
from core.data.images import image_shape
from core.detectors import HeatmapDetector, ScoreResult
from core.detectors.postprocess import score_to_threshold
from core.errors import DatasetError, WorkbenchError
from core.features import FeatureCache
from core.metrics import aupro, confusion_at, image_metrics, per_class_metrics, pixel_ap, pixel_auroc
from core.progress import ProgressFn, no_progress
from core.storage import atomic_write_json, atomic_write_text
from core.visualize import overlay, side_by_side, write_png


@dataclass
class Evaluation:
    """Per-image results of one split plus the summary metrics."""

    paths: list[str]
    labels: np.ndarray
    defects: list[str]
    scores: np.ndarray
    maps: np.ndarray
    metrics: dict[str, Any]


def ground_truth_masks(
    index: DatasetIndex, records, size: int | tuple[int, int], problems: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Masks at ``size`` x ``size`` or ``size`` = (height, width) (nearest; the identity when that is the image's own
    size, so maps and masks then align pixel for pixel) and which images have usable pixel ground truth.

    Normal images get an empty mask; defect images without a mask file are left out of pixel metrics, and so
    are those whose mask cannot be read or has another size than its image (never resized to fit: a mask of
    the wrong size marks the wrong pixels). Each such mask adds a message naming it to ``problems``.
    """
    h, w = (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    masks = np.zeros((len(records), h, w), dtype=bool)
    usable = np.zeros(len(records), dtype=bool)
    for i, rec in enumerate(records):
        if rec.label == 0:
            usable[i] = True
            continue
        mp = index.mask_path(rec)
        if mp is None:
            continue
        try:
            m = read_mask(mp, shape=image_shape(index.abs_path(rec)))
        except WorkbenchError as exc:
            if problems is not None:
                problems.append(f"{exc} Left out of the pixel metrics.")
            continue
        masks[i] = m if m.shape == (h, w) else (
            cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0)
        usable[i] = True
    return masks, usable


def timing_probe(det: HeatmapDetector, paths: list[str], n: int = 32, batch: int = 16) -> dict[str, float]:
    """End-to-end ms per image on decoded images without the feature cache: batched, then batch 1."""
    imgs = [read_image(p) for p in paths[:n]]
    det.score_images(imgs[:2])  # warm-up
    t0 = time.perf_counter()
    split: dict[str, float] = {}
    for s in range(0, len(imgs), batch):
        res = det.score_images(imgs[s : s + batch])
        for k, v in res.seconds.items():
            split[k] = split.get(k, 0.0) + v
    batched = 1000 * (time.perf_counter() - t0) / len(imgs)
    t0 = time.perf_counter()
    for im in imgs[:8]:
        det.score_images([im])
    single = 1000 * (time.perf_counter() - t0) / min(8, len(imgs))
    out = {"ms_per_image": batched, "ms_per_image_batch1": single}
    out.update({f"ms_{k}": 1000 * v / len(imgs) for k, v in split.items()})
    return out


@dataclass
class ScoredRecords:
    """Records scored by a detector, the readable ones only, with their ground truth at the map size."""

    records: list  # the records that could be read, in input order
    paths: list[str]
    result: ScoreResult  # scores and maps of ``records``; ``errors`` names the unreadable files
    masks: np.ndarray | None  # N x size x size bool, None when ground truth was not asked for
    usable: np.ndarray | None  # which images have usable pixel ground truth
    mask_problems: list[str]

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], dtype=int)

    @property
    def has_pixels(self) -> bool:
        """Whether pixel metrics can be computed (some usable image has defect pixels)."""
        return self.masks is not None and bool(self.usable.any() and self.masks[self.usable].any())


def score_with_ground_truth(
    det: HeatmapDetector,
    index: DatasetIndex,
    records,
    cache: FeatureCache | None = None,
    progress: ProgressFn = no_progress,
    masks: bool = True,
) -> ScoredRecords:
    """Score ``records`` (unreadable files are reported, not fatal) and, with ``masks``, read their ground truth."""
    paths = [str(index.abs_path(r)) for r in records]
    res = det.score_paths(paths, cache=cache, progress=progress)
    kept = [records[i] for i in res.ok]
    problems: list[str] = []
    gt, usable = ground_truth_masks(index, kept, det.input_hw, problems) if masks else (None, None)
    return ScoredRecords(kept, [paths[i] for i in res.ok], res, gt, usable, problems)


def evaluate_split(
    det: HeatmapDetector,
    index: DatasetIndex,
    split: str,
    cache: FeatureCache | None = None,
    progress: ProgressFn = no_progress,
) -> Evaluation:
    """Score every image of ``split`` and compute image and pixel metrics on raw scores."""
    sr = score_with_ground_truth(det, index, index.split(split), cache, progress)
    res, records, labels, masks, usable = sr.result, sr.records, sr.labels, sr.masks, sr.usable
    defects = [r.defect for r in records]
    im = image_metrics(labels, res.scores)
    has_pixels = sr.has_pixels
    metrics: dict[str, Any] = {
        "split": split,
        "n_images": int(len(records)),
        "n_unreadable": len(res.errors),
        "image_auroc": im.auroc,
        "image_ap": im.ap,
        "f1_max": im.f1_max,
        "threshold": im.threshold,
        "note": im.note,
        "pixel_auroc": pixel_auroc(masks[usable], res.maps[usable]) if has_pixels else None,
        "pixel_ap": pixel_ap(masks[usable], res.maps[usable]) if has_pixels else None,
        "aupro": aupro(masks[usable], res.maps[usable]) if has_pixels else None,
        "per_class": per_class_metrics(labels, res.scores, defects, threshold=im.threshold)
        if (labels == 0).any() and (labels == 1).any()
        else {},
        "at_model_threshold": confusion_at(labels, res.scores, det.threshold),
        "mask_problems": sr.mask_problems,
    }
    if im.threshold is not None:
        metrics["at_f1_threshold"] = confusion_at(labels, res.scores, im.threshold)
    if index.is_domain_set:
        metrics["note"] = (metrics["note"] + "; " if metrics["note"] else "") + (
            "domain set (no normal images): report only beside a mixed split"
        )
    return Evaluation(sr.paths, labels, defects, res.scores, res.maps, metrics)


def write_scores_csv(path: Path, ev: Evaluation, det: HeatmapDetector) -> None:
    """One row per image: path, label, defect class, raw score, score / threshold, decision."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "label", "defect", "score", "score_to_threshold", "decision"])
    norm = score_to_threshold(ev.scores, det.threshold)
    for p, lab, d, s, ns in zip(ev.paths, ev.labels, ev.defects, ev.scores, norm):
        w.writerow([p, int(lab), d, f"{s:.6g}", f"{ns:.4f}", "anomalous" if s >= det.threshold else "normal"])
    atomic_write_text(path, buf.getvalue())


def write_worst_overlays(folder: Path, ev: Evaluation, det: HeatmapDetector, index: DatasetIndex,
                         n: int = 4) -> list[str]:
    """Overlays of the ``n`` lowest-scored defects (misses) and highest-scored normals (false alarms)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    order = np.argsort(ev.scores)
    fns = [i for i in order if ev.labels[i] == 1][:n]
    fps = [i for i in order[::-1] if ev.labels[i] == 0][:n]
    by_path = {str(index.abs_path(r)): r for r in index.records}
    for tag, idxs in (("worst_fn", fns), ("worst_fp", fps)):
        for rank, i in enumerate(idxs):
            img = read_image(ev.paths[i])
            rec = by_path.get(ev.paths[i])
            mp = index.mask_path(rec) if rec is not None else None
            mask = read_mask(mp) if mp is not None else None
            amap = det.normalisation.normalise_map(ev.maps[i])
            pic = side_by_side(img, overlay(img, amap, mask, predicted=amap >= 1.0))
            name = f"{tag}_{rank}_{Path(ev.paths[i]).stem}_score{ev.scores[i]:.3g}.png"
            write_png(folder / name, pic)
            written.append(name)
    return written


def run_evaluate(
    dataset: str | Path,
    det: HeatmapDetector,
    out_dir: str | Path,
    split: str = "test",
    cache: FeatureCache | None = None,
    progress: ProgressFn = no_progress,
) -> dict[str, Any]:
    """Fit on ``train_normal``, evaluate on ``split``, write everything under ``out_dir``; return metrics."""
    out = Path(out_dir)
    index = index_dataset(dataset)
    if index.is_domain_set:
        raise DatasetError(
            f"{index.root} has no normal images, so nothing can be fitted on it, and metrics on it alone would "
            "reward a detector that calls everything anomalous.",
            "Evaluate on a dataset with normal images; score this one only beside it (cross-domain study).",
        )
    train = [str(index.abs_path(r)) for r in index.split("train_normal")]
    t0 = time.perf_counter()
    fit = det.fit(train, cache=cache, progress=progress, fingerprint=index.fingerprint("train_normal"))
    fit_wall = time.perf_counter() - t0
    ev = evaluate_split(det, index, split, cache=cache, progress=progress)
    timing = timing_probe(det, ev.paths)
    m = dict(ev.metrics)
    params = det.state_params()
    m.update(
        dataset=str(index.root),
        detector=det.kind,
        backbone=det.backbone,
        layers=list(det.layers),
        image_size=det.image_size,
        input_hw=list(det.input_hw),
        scale=det.scale.to_dict(),
        coreset=params.get("coreset"),
        coreset_ratio=params.get("ratio"),
        memory_bank_size=params.get("memory_bank_size"),
        image_score_bank_size=params.get("image_score_bank_size"),
        fit_seconds=fit_wall,
        fit_breakdown=fit.to_dict(),
        machine=f"{platform.machine()} {platform.processor() or ''}".strip(),
        **timing,
    )
    if m["image_auroc"] is not None and m["image_auroc"] < 0.5:
        m["warning"] = f"image AUROC {m['image_auroc']:.3f} < 0.5: scores may be inverted"
    out.mkdir(parents=True, exist_ok=True)
    det.save(out / "model", extra={"dataset": str(index.root)})
    write_scores_csv(out / "scores.csv", ev, det)
    m["overlays"] = write_worst_overlays(out / "overlays", ev, det, index)
    atomic_write_json(out / "metrics.json", m)
    return m


def check_can_fit(index: DatasetIndex) -> None:
    """A clear message when a dataset cannot be fitted on (no normal training images)."""
    if index.is_domain_set or not index.splits.get("train_normal"):
        raise WorkbenchError(
            f"{index.root} has no normal training images (train/good).",
            "Fit on a dataset with normal images, e.g. the built-in demo or magnetic_tile.",
        )

"""Study 5: fit on one dataset, score others (e.g. magnetic_tile -> neu_seg, neu_det).

The foreign sets have no normal images, so a detector that calls everything anomalous would look perfect on
them alone; they are only ever reported beside the home set: home image AUROC and the share of home normals
and defects flagged at the model's own threshold (fixed at fit time on normal images), next to the share of
each foreign set flagged at that same threshold. The shift itself is measured as the MMD between image-level
features (mean-pooled PatchCore patch embeddings) of the home training set and each other set (RBF kernel,
median bandwidth, permutation-test p-value), with two in-domain controls: the home training set split in two
halves, and the home test normals. Pixel AUROC uses neu_seg's masks (neu_det's are filled boxes: coarse).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.data import DatasetIndex, index_dataset
from core.experiments.common import (
    Column,
    StudyResult,
    balanced,
    paths_of,
    progress_stage,
    records_of,
    score_records,
    spread,
)
from core.metrics import flag_rate
from core.metrics.shift import mmd_test
from core.progress import ProgressFn, no_progress

COLUMNS = [
    Column("set", "set"),
    Column("role", "role"),
    Column("n_images", "images", "d"),
    Column("image_auroc", "image AUROC", ".3f"),
    Column("flag_rate", "flagged at home threshold", ".3f"),
    Column("flag_rate_normal", "normals flagged", ".3f"),
    Column("flag_rate_defect", "defects flagged", ".3f"),
    Column("pixel_auroc", "pixel AUROC", ".3f"),
    Column("mmd2", "MMD² vs home train", ".4f"),
    Column("mmd_p", "p-value", ".4f"),
]


@dataclass
class CrossDomainSettings:
    """What the cross-domain study runs on."""

    foreign: tuple[str, ...] = ("neu_seg", "neu_det")
    backbone: str = "tf_efficientnet_lite0"
    home_split: str = "test"
    n_train: int | None = None
    n_home: int | None = None
    n_foreign: int | None = None
    mmd_max: int = 400  # at most this many images per set in the MMD (spread over the set)
    permutations: int = 1000
    ratio: float = 0.01
    image_size: int = 0  # 0: PatchCore's default (208 px on CNNs, 224 on ViTs)
    seed: int = 0

    @classmethod
    def quick(cls) -> "CrossDomainSettings":
        return cls(n_train=20, n_home=16, n_foreign=12, mmd_max=40, permutations=200)


def locate_foreign(home: Path, name: str) -> Path:
    """A foreign dataset: a folder path, a sibling of the home dataset, or a name under the data roots."""
    from core.data.locate import resolve_dataset

    if Path(name).is_dir():
        return Path(name)
    if (home.parent / name).is_dir():
        return home.parent / name
    return resolve_dataset(name)


def pooled_features(det, paths: list[str], cache, chunk: int = 128) -> np.ndarray:
    """One vector per image: the mean over the grid of the detector's patch embedding (N x C)."""
    from core.detectors.embedding import patch_embedding

    ext = det.extractor(cache)
    out = []
    for start in range(0, len(paths), chunk):
        feats = ext.extract_paths(paths[start : start + chunk]).features
        out.append(patch_embedding(feats, det.layers, det.cfg.neighbourhood).mean(dim=(2, 3)).numpy())
    return np.concatenate(out).astype(np.float64)


def _mmd(x: np.ndarray, y: np.ndarray, s: CrossDomainSettings) -> dict[str, float]:
    xs, ys = (np.stack(spread(list(a), s.mmd_max)) for a in (x, y))
    r = mmd_test(xs, ys, n_permutations=s.permutations, seed=s.seed)
    return {"mmd2": r.mmd2, "mmd_p": r.p_value, "mmd_bandwidth": r.bandwidth, "mmd_n": [r.n_x, r.n_y]}


def run_cross_domain(index: DatasetIndex, settings: CrossDomainSettings = CrossDomainSettings(), cache=None,
                     progress: ProgressFn = no_progress) -> StudyResult:
    """Fit on ``index``'s normal images and score it and each foreign dataset."""
    from core.detectors import PatchCore, PatchCoreConfig
    from core.evaluation import check_can_fit

    s = settings
    check_can_fit(index)
    foreign = [(name, index_dataset(locate_foreign(index.root, name))) for name in s.foreign]
    steps = 3 + len(foreign)
    progress_stage(progress, "cross-domain", 0, steps)
    train = paths_of(index, spread(records_of(index, "train_normal"), s.n_train))
    det = PatchCore(PatchCoreConfig(backbone=s.backbone, image_size=s.image_size, ratio=s.ratio, seed=s.seed))
    det.fit(train, cache=cache, progress=progress)
    thr = det.threshold
    progress_stage(progress, "cross-domain", 1, steps)

    home = score_records(det, index, balanced(index.split(s.home_split), s.n_home), cache=cache, with_aupro=False)
    ref = pooled_features(det, train, cache)
    half_a, half_b = ref[0::2], ref[1::2]
    home_feats = pooled_features(det, home.paths, cache)
    normals = home.labels == 0
    rows: list[dict[str, Any]] = [
        {"set": f"{index.name} train/good: half vs half", "role": "control", "n_images": len(ref),
         **_mmd(half_a, half_b, s)},
        {"set": f"{index.name} {s.home_split}", "role": "home", "n_images": len(home.paths),
         "image_auroc": home.image_auroc, "flag_rate": flag_rate(home.scores, thr),
         "flag_rate_normal": flag_rate(home.scores[normals], thr) if normals.any() else None,
         "flag_rate_defect": flag_rate(home.scores[~normals], thr) if (~normals).any() else None,
         "pixel_auroc": home.pixel_auroc, **_mmd(ref, home_feats, s)},
    ]
    if normals.sum() >= 2:
        rows.append({"set": f"{index.name} {s.home_split} normals only", "role": "control",
                     "n_images": int(normals.sum()), **_mmd(ref, home_feats[normals], s)})
    progress_stage(progress, "cross-domain", 2, steps)
    score_sets = {"home normal": home.scores[normals], "home defect": home.scores[~normals]}
    for k, (name, fidx) in enumerate(foreign):
        recs = spread(records_of(fidx, "test") or fidx.records, s.n_foreign)
        sc = score_records(det, fidx, recs, cache=cache, with_aupro=False)
        feats = pooled_features(det, sc.paths, cache)
        rows.append({"set": name, "role": "foreign (no normal images)", "n_images": len(sc.paths),
                     "image_auroc": None, "flag_rate": flag_rate(sc.scores, thr),
                     "flag_rate_defect": flag_rate(sc.scores, thr), "pixel_auroc": sc.pixel_auroc,
                     **_mmd(ref, feats, s)})
        score_sets[name] = sc.scores
        progress_stage(progress, "cross-domain", 3 + k, steps)
    progress_stage(progress, "cross-domain", steps, steps)
    return StudyResult(
        study="cross-domain",
        dataset=str(index.root),
        quick=False,
        rows=rows,
        columns=COLUMNS,
        settings={**asdict(s), "n_train_images": len(train), "home_threshold": thr,
                  "foreign_roots": {n: str(f.root) for n, f in foreign}},
        notes=_notes(rows, s, index.name),
        figures=_figures(score_sets, thr),
    )


def _notes(rows: list[dict], s: CrossDomainSettings, home: str) -> list[str]:
    notes = [
        f"PatchCore ({s.backbone}, greedy {s.ratio:.0%}, image score in the default 5 % continuation) fitted on "
        f"{home} train/good; the home threshold is the "
        "model's own (99th percentile of held-out normal scores, fixed at fit time), never tuned on any foreign set.",
        "The foreign sets hold only defect images: their flag rate is meaningful only beside the home rows (a "
        "detector that flags everything would score 1.0 there). Their 'defects flagged' equals their flag rate.",
        f"MMD²: unbiased estimate, RBF kernel with the median-distance bandwidth of each pair's pooled sample, on "
        f"mean-pooled patch embeddings, at most {s.mmd_max} images per set; p-value from {s.permutations} "
        "permutations (smallest possible: 1/(permutations+1)).",
        "Pixel AUROC: home and neu_seg on their pixel masks; neu_det's masks are filled bounding boxes (coarse).",
    ]
    return notes


def _figures(score_sets: dict[str, np.ndarray], thr: float) -> dict[str, Any]:
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, vals in score_sets.items():
        if len(vals):
            fig.add_histogram(x=vals, name=f"{name} ({len(vals)})", opacity=0.6)
    fig.add_vline(x=thr, line_dash="dash", annotation_text="home threshold")
    fig.update_layout(barmode="overlay", xaxis_title="raw anomaly score", yaxis_title="images",
                      title="Scores at home and on foreign sets")
    return {"score_histogram": fig}

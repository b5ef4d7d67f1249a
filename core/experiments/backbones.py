"""Study 1: PatchCore with every offline backbone (and timm names, when the hub is reachable).

Per backbone: image AUROC, pixel AUROC and AUPRO on the evaluation records, fit seconds (features extracted
afresh, without the feature cache, so every backbone pays for its own extraction; loading the weights is not
counted), end-to-end ms per image (``timing_probe``: decoded images, batches of 16, no cache) and the peak resident
memory of the process during fit + scoring. Backbones that cannot be had offline are listed, never given numbers.
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass
from typing import Any

from core.backbones.registry import hub_reachable
from core.data import DatasetIndex
from core.experiments.common import (
    Column,
    PeakRSS,
    StudyResult,
    balanced,
    paths_of,
    progress_stage,
    records_of,
    score_records,
    size_text,
    spread,
)
from core.progress import ProgressFn, no_progress

# Named in the old plan; no installed package ships their weights, so offline they get no numbers.
NOT_OFFLINE = {"resnet50": "ResNet50", "vit_base_patch16_clip_224.openai": "CLIP ViT-B/16",
               "vit_base_patch16_224.augreg_in21k_ft_in1k": "ViT-B/16"}
OLD_CLAIM = "DINOv2 wins"

COLUMNS = [
    Column("backbone", "backbone"),
    Column("layers", "layers"),
    Column("image_auroc", "image AUROC", ".3f"),
    Column("pixel_auroc", "pixel AUROC", ".3f"),
    Column("aupro", "AUPRO", ".3f"),
    Column("fit_seconds", "fit s", ".1f"),
    Column("ms_per_image", "ms / image", ".1f"),
    Column("peak_rss_mb", "peak RSS MB", ".0f"),
    Column("bank_size", "bank", ",d"),
    Column("status", "status"),
]


@dataclass
class BackboneSettings:
    """What the backbones study runs on."""

    backbones: tuple[str, ...] = ()  # empty: every offline backbone
    timm_names: tuple[str, ...] = ()  # extra timm names, tried only when the hub is reachable
    split: str = "test"  # MVTec protocol: all of test/
    n_train: int | None = None  # None: all of train_normal
    n_eval: int | None = None  # None: the whole split
    ratio: float = 0.01
    image_size: int = 0  # 0: PatchCore's default (208 px on CNNs, 224 on ViTs)
    timing_images: int = 32
    seed: int = 0

    @classmethod
    def quick(cls) -> "BackboneSettings":
        return cls(n_train=12, n_eval=12, timing_images=4)


def _run_one(name: str, index: DatasetIndex, train: list[str], evals, s: BackboneSettings, cache,
             progress: ProgressFn) -> dict[str, Any]:
    from core.detectors import PatchCore, PatchCoreConfig
    from core.evaluation import timing_probe

    gc.collect()
    det = PatchCore(PatchCoreConfig(backbone=name, image_size=s.image_size, ratio=s.ratio, seed=s.seed))
    det.extractor()  # load the weights before the clock starts
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        det.fit(train, cache=None, progress=progress)
        fit_s = time.perf_counter() - t0
        sc = score_records(det, index, evals, cache=cache, progress=progress)
        timing = timing_probe(det, sc.paths, n=s.timing_images)
    return {
        "backbone": name,
        "kind": det.extractor().backbone.info.kind,
        "layers": ",".join(det.layers),
        "image_auroc": sc.image_auroc,
        "pixel_auroc": sc.pixel_auroc,
        "aupro": sc.aupro,
        "fit_seconds": fit_s,
        "coreset_seconds": det.coreset_seconds,
        "ms_per_image": timing["ms_per_image"],
        "ms_per_image_batch1": timing["ms_per_image_batch1"],
        "ms_backbone": timing.get("ms_backbone"),
        "peak_rss_mb": mem.peak_mb,
        "rss_before_mb": mem.start_mb,
        "bank_size": int(len(det.bank)),
        "n_eval": int(len(sc.paths)),
        "status": "measured",
    }


def run_backbones(index: DatasetIndex, settings: BackboneSettings = BackboneSettings(), cache=None,
                  progress: ProgressFn = no_progress) -> StudyResult:
    """Fit and evaluate PatchCore (greedy coreset) once per backbone; rows for unavailable ones too."""
    from core.backbones import is_available, list_backbones

    s = settings
    names = list(s.backbones) or [b.name for b in list_backbones()]
    train = paths_of(index, spread(records_of(index, "train_normal"), s.n_train))
    evals = balanced(index.split(s.split), s.n_eval)
    hub = hub_reachable(timeout=2.0) if s.timm_names else False
    rows: list[dict[str, Any]] = []
    todo = [(n, "offline") for n in names] + [(n, "timm") for n in s.timm_names]
    for i, (name, how) in enumerate(todo):
        progress_stage(progress, "backbones", i, len(todo))
        if how == "offline" and not is_available(name):
            rows.append({"backbone": name, "status": "not available offline (weights package not installed)"})
            continue
        if how == "timm" and not hub:
            rows.append({"backbone": name, "status": "not run: the timm hub is unreachable"})
            continue
        rows.append(_run_one(name, index, train, evals, s, cache, progress))
    progress_stage(progress, "backbones", len(todo), len(todo))
    listed = {r["backbone"] for r in rows}
    for name, label in NOT_OFFLINE.items():
        if name not in listed:
            rows.append({"backbone": f"{label} ({name})", "status": "not available offline"})
    measured = [r for r in rows if r.get("status") == "measured"]
    return StudyResult(
        study="backbones",
        dataset=str(index.root),
        quick=False,
        rows=rows,
        columns=COLUMNS,
        settings={**asdict(s), "n_train_images": len(train), "n_eval_images": len(evals), "hub_reachable": hub},
        notes=_notes(measured, s),
        figures=_figures(measured),
    )


def _notes(measured: list[dict], s: BackboneSettings) -> list[str]:
    notes = [
        f"PatchCore, greedy coreset {s.ratio:.0%} (image score in the default 5 % continuation), "
        f"{size_text(s.image_size)}, each backbone's default layers; "
        f"evaluated on `{s.split}`; fit s = feature extraction (no cache) + coreset + index + calibration, "
        "weights loading excluded; ms / image = end to end on decoded images, batches of 16, no cache; "
        "peak RSS = the whole process.",
        "ResNet50, CLIP and ViT-B: no package ships their weights and the model hub is unreachable here, so they "
        "have no numbers.",
    ]
    if len(measured) < 2:
        notes.append(f"Only {len(measured)} backbone measured in this run: no comparison, so nothing to say about "
                     f"the old claim '{OLD_CLAIM}' here.")
        return notes
    best = max(measured, key=lambda r: r["image_auroc"] if r["image_auroc"] is not None else -1)
    dino = [r for r in measured if "dinov2" in r["backbone"]]
    if dino:
        d = dino[0]
        if best is d:
            notes.append(f"Old claim '{OLD_CLAIM}': agrees here: {d['backbone']} has the best image AUROC "
                         f"({d['image_auroc']:.3f}).")
        else:
            notes.append(
                f"Old claim '{OLD_CLAIM}': **contradicted** here: {best['backbone']} has the best image AUROC "
                f"({best['image_auroc']:.3f}) and DINOv2 ViT-S/14 gets {d['image_auroc']:.3f} "
                f"(pixel AUROC {_f(best['pixel_auroc'])} vs {_f(d['pixel_auroc'])})."
            )
    return notes


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _figures(measured: list[dict]) -> dict[str, Any]:
    import plotly.graph_objects as go

    names = [r["backbone"] for r in measured]
    bars = go.Figure()
    for key, label in (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO")):
        bars.add_bar(x=names, y=[r[key] for r in measured], name=label)
    bars.update_layout(barmode="group", yaxis_title="score", title="PatchCore accuracy per backbone")
    speed = go.Figure(go.Scatter(x=[r["ms_per_image"] for r in measured], y=[r["image_auroc"] for r in measured],
                                 mode="markers+text", text=names, textposition="top center"))
    speed.update_layout(xaxis_title="ms / image (end to end)", yaxis_title="image AUROC",
                        title="Speed vs accuracy")
    return {"accuracy": bars, "speed_vs_accuracy": speed}

"""Study 2: coreset method (random / greedy k-center / variance-weighted greedy) x ratio (0.5, 1, 5, 10 %).

One PatchCore fit per pair, on the same cached features (lite0, default layers), so selection time is the only
fit cost that changes; image and pixel AUROC on the evaluation records, selection seconds, bank size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from core.data import DatasetIndex
from core.experiments.common import (
    Column,
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

COLUMNS = [
    Column("method", "method"),
    Column("ratio_pct", "ratio %", "g"),
    Column("bank_size", "bank", ",d"),
    Column("image_auroc", "image AUROC", ".3f"),
    Column("pixel_auroc", "pixel AUROC", ".3f"),
    Column("selection_seconds", "selection s", ".2f"),
    Column("search_ms_per_image", "search ms / image", ".1f"),
]


@dataclass
class CoresetSettings:
    """What the coreset study runs on."""

    methods: tuple[str, ...] = ("random", "greedy", "variance")
    ratios: tuple[float, ...] = (0.005, 0.01, 0.05, 0.10)
    backbone: str = "tf_efficientnet_lite0"
    split: str = "test"
    n_train: int | None = None
    n_eval: int | None = None
    image_size: int = 0  # 0: PatchCore's default (208 px on CNNs, 224 on ViTs)
    seed: int = 0

    @classmethod
    def quick(cls) -> "CoresetSettings":
        return cls(n_train=20, n_eval=16)


def run_coreset(index: DatasetIndex, settings: CoresetSettings = CoresetSettings(), cache=None,
                progress: ProgressFn = no_progress) -> StudyResult:
    """Fit PatchCore once per (method, ratio) and measure it."""
    from core.detectors import PatchCore, PatchCoreConfig

    s = settings
    train = paths_of(index, spread(records_of(index, "train_normal"), s.n_train))
    evals = balanced(index.split(s.split), s.n_eval)
    rows: list[dict[str, Any]] = []
    pairs = [(m, r) for m in s.methods for r in s.ratios]
    for i, (method, ratio) in enumerate(pairs):
        progress_stage(progress, "coreset settings", i, len(pairs))
        # One bank per setting (no larger image-score bank): the bank itself is what this study varies.
        det = PatchCore(PatchCoreConfig(backbone=s.backbone, image_size=s.image_size, coreset=method, ratio=ratio,
                                        rescore_ratio=0.0, seed=s.seed))
        det.fit(train, cache=cache, progress=progress)
        sc = score_records(det, index, evals, cache=cache, with_aupro=False)
        rows.append({
            "method": method,
            "ratio_pct": round(100 * ratio, 3),
            "bank_size": int(len(det.bank)),
            "image_auroc": sc.image_auroc,
            "pixel_auroc": sc.pixel_auroc,
            "selection_seconds": det.coreset_seconds,
            "search_ms_per_image": 1000 * sc.seconds.get("search", 0.0) / max(1, len(sc.paths)),
            "n_patches": int(det.grid[0] * det.grid[1] * len(det.train_paths)),
        })
    progress_stage(progress, "coreset settings", len(pairs), len(pairs))
    return StudyResult(
        study="coreset",
        dataset=str(index.root),
        quick=False,
        rows=rows,
        columns=COLUMNS,
        settings={**asdict(s), "n_train_images": len(train), "n_eval_images": len(evals)},
        notes=_notes(rows, s),
        figures=_figures(rows),
    )


def _notes(rows: list[dict], s: CoresetSettings) -> list[str]:
    notes = [f"PatchCore on {s.backbone} (default layers), {size_text(s.image_size)}, flat exact search, evaluated on "
             f"`{s.split}`; the features come from the cache, so selection s is the coreset step alone "
             "(greedy and variance: batched k-center in the default space: all channels up to 256 wide, "
             "else a 128-dim random projection)."]
    if rows:
        best = max(rows, key=lambda r: r["image_auroc"] or -1)
        notes.append(f"Best image AUROC: {best['method']} at {best['ratio_pct']:g} % ({best['image_auroc']:.3f}).")
    return notes


def _figures(rows: list[dict]) -> dict[str, Any]:
    import plotly.graph_objects as go

    acc, sel = go.Figure(), go.Figure()
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        x = [r["ratio_pct"] for r in rs]
        acc.add_scatter(x=x, y=[r["image_auroc"] for r in rs], mode="lines+markers", name=f"{method} image")
        acc.add_scatter(x=x, y=[r["pixel_auroc"] for r in rs], mode="lines+markers", name=f"{method} pixel",
                        line={"dash": "dot"})
        sel.add_scatter(x=x, y=[r["selection_seconds"] for r in rs], mode="lines+markers", name=method)
    acc.update_layout(xaxis_type="log", xaxis_title="coreset ratio %", yaxis_title="AUROC", title="AUROC vs ratio")
    sel.update_layout(xaxis_type="log", yaxis_type="log", xaxis_title="coreset ratio %",
                      yaxis_title="selection s", title="Selection time")
    return {"auroc_vs_ratio": acc, "selection_time": sel}

"""Evaluate GAIN-MTL models on a split (test_mix by default) and compare the six strategies.

``evaluate_model`` gives classification metrics at the model's threshold (F1-best on val_mix) plus AUROC, and
attention metrics on the defect images that have masks (CAM-IoU at 0.3/0.4/0.5/0.6, PointGame, Energy-Inside,
Loc-IoU for strategies that train the mask head). ``run_compare`` trains and evaluates S1..S6 on the same prepared
data and writes ``table.csv``, ``table.md``, ``figure.html`` / ``figure.json`` and ``compare.json``.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from core.data import DatasetIndex
from core.gain.config import STRATEGIES, STRATEGY_NAMES, GainConfig
from core.gain.data import SplitData, load_split
from core.gain.inference import GainModel, Prediction
from core.metrics.cam import (
    CAM_THRESHOLDS,
    attention_metrics,
    classification_metrics,
    grid_ceiling_iou,
    per_image_attention,
)
from core.storage import atomic_write_json, atomic_write_text

TABLE_COLUMNS = ("strategy", "accuracy", "precision", "recall", "f1", "auroc",
                 *[f"cam_iou@{t:g}" for t in CAM_THRESHOLDS],
                 "point_game", "energy_inside", "loc_iou", "epochs", "best_epoch", "train_s", "wall_s")


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    data: SplitData
    prediction: Prediction
    rows: list[dict[str, Any]]  # per image


def evaluate_on(model: GainModel, data: SplitData) -> EvalResult:
    """Metrics of ``model`` on already loaded images (at the model's size)."""
    t0 = time.perf_counter()
    pred = model.predict(data.images)
    seconds = time.perf_counter() - t0
    cls = classification_metrics(data.labels, pred.probs, model.threshold)
    has_mask = (data.labels == 1) & data.masks.reshape(len(data), -1).any(axis=1)
    loc = model.config.flags.localisation
    att = attention_metrics(pred.cams[has_mask], data.masks[has_mask], pred.mask_probs[has_mask] if loc else None)
    metrics: dict[str, Any] = {
        "strategy": model.config.strategy,
        "split": data.name,
        "n_images": len(data),
        "n_unreadable": len(data.skipped),
        **{k: v for k, v in cls.to_dict().items() if k not in {"n", "n_positive"}},
        "n_defect": cls.n_positive,
        **att,
        "cam_grid": pred.cam_grid,
        "cam_iou_ceiling@0.5": grid_ceiling_iou(data.masks[has_mask], pred.cam_grid) if has_mask.any() else None,
        "cam_iou_ceiling_stride16@0.5": grid_ceiling_iou(data.masks[has_mask], max(1, pred.cam_grid // 2))
        if has_mask.any() else None,
        "cam_iou_ceiling_stride32@0.5": grid_ceiling_iou(data.masks[has_mask], max(1, pred.cam_grid // 4))
        if has_mask.any() else None,
        "ms_per_image": 1000 * seconds / max(1, len(data)),
    }
    per = per_image_attention(pred.cams, data.masks, pred.mask_probs)
    rows = []
    for i in range(len(data)):
        attn = bool(has_mask[i])
        rows.append({
            "path": data.paths[i], "label": int(data.labels[i]), "defect": data.defects[i],
            "prob": float(pred.probs[i]), "predicted": int(pred.probs[i] >= model.threshold),
            **{f"cam_iou@{t:g}": float(per.cam_iou[float(t)][i]) if attn else None for t in CAM_THRESHOLDS},
            "point_game": float(per.point_game[i]) if attn else None,
            "energy_inside": float(per.energy_inside[i]) if attn else None,
            "loc_iou": float(per.loc_iou[i]) if attn and loc else None,
        })
    return EvalResult(metrics, data, pred, rows)


def evaluate_model(model: GainModel, index: DatasetIndex, split: str = "test_mix",
                   limit: int | None = None) -> EvalResult:
    """Load ``split`` of ``index`` at the model's size and evaluate."""
    return evaluate_on(model, load_split(index, split, model.config.image_size, limit))


def _csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else ("" if v is None else v)) for k, v in r.items()})
    return buf.getvalue()


def write_evaluation(folder: str | Path, result: EvalResult) -> None:
    """``metrics.json`` and ``per_image.csv`` in ``folder``."""
    folder = Path(folder)
    atomic_write_json(folder / "metrics.json", result.metrics)
    cols = list(result.rows[0]) if result.rows else ["path"]
    atomic_write_text(folder / "per_image.csv", _csv(result.rows, cols))


def table_row(metrics: dict[str, Any], report: dict[str, Any], wall_s: float) -> dict[str, Any]:
    row = {k: metrics.get(k) for k in TABLE_COLUMNS if k in metrics}
    row.update(strategy=metrics["strategy"], epochs=report.get("epochs_run"), best_epoch=report.get("best_epoch"),
               train_s=report.get("train_seconds"), wall_s=wall_s)
    return row


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The comparison as a markdown table (``-`` where a metric does not apply)."""
    head = ["strategy", "acc", "prec", "recall", "F1", "AUROC", *[f"CAM-IoU@{t:g}" for t in CAM_THRESHOLDS],
            "PointGame", "Energy-In", "Loc-IoU", "epochs (best)", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    for r in rows:
        cells = [r["strategy"], *[f(r.get(k)) for k in ("accuracy", "precision", "recall", "f1", "auroc")],
                 *[f(r.get(f"cam_iou@{t:g}")) for t in CAM_THRESHOLDS],
                 f(r.get("point_game")), f(r.get("energy_inside")), f(r.get("loc_iou")),
                 f"{r.get('epochs')} ({r.get('best_epoch')})", f"{r.get('wall_s', 0):.0f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_figure(rows: Sequence[dict[str, Any]]):
    """A plotly figure: one group of bars per metric, one bar per strategy."""
    import plotly.graph_objects as go

    metrics = ["accuracy", "recall", "f1", "auroc", *[f"cam_iou@{t:g}" for t in CAM_THRESHOLDS], "point_game",
               "energy_inside", "loc_iou"]
    palette = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9"]
    fig = go.Figure()
    for i, r in enumerate(rows):
        fig.add_bar(name=r["strategy"], x=metrics, y=[r.get(m) for m in metrics], marker_color=palette[i % 6])
    fig.update_layout(barmode="group", title="GAIN-MTL strategies on test_mix", yaxis=dict(range=[0, 1]),
                      height=450, legend_title_text="strategy")
    return fig


def run_compare(
    index: DatasetIndex,
    out: str | Path,
    base: GainConfig,
    strategies: Sequence[str] = STRATEGY_NAMES,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train and evaluate each strategy with ``base``'s settings; writes every model, its metrics and the table."""
    from core.gain.train import prepare, train

    out = Path(out)
    t_all = time.perf_counter()
    data = prepare(index, base, log)
    log(f"prepared the data in {data.seconds:.1f} s")
    test = load_split(index, "test_mix", base.image_size, base.limit)
    rows = []
    for name in strategies:
        t0 = time.perf_counter()
        cfg = GainConfig.from_dict({**base.to_dict(), "strategy": name})
        res = train(cfg, data, show_progress, log)
        folder = out / name
        res.model.meta["wall_seconds"] = time.perf_counter() - t0
        res.model.save(folder / "model")
        ev = evaluate_on(res.model, test)
        wall = time.perf_counter() - t0
        ev.metrics.update(wall_seconds=wall, train_report={k: v for k, v in res.report.items() if k != "history"})
        write_evaluation(folder, ev)
        atomic_write_json(folder / "history.json", res.history)
        rows.append(table_row(ev.metrics, res.report, wall))
        log(f"{name}: " + ", ".join(f"{k}={v:.3f}" for k, v in rows[-1].items() if isinstance(v, float)))
        _write_table(out, rows, base, time.perf_counter() - t_all, data.seconds)
    return rows


def _write_table(out: Path, rows: list[dict[str, Any]], base: GainConfig, wall: float, prep: float) -> None:
    atomic_write_text(out / "table.csv", _csv(rows, TABLE_COLUMNS))
    md = markdown_table(rows)
    atomic_write_text(out / "table.md", md)
    fig = comparison_figure(rows)
    atomic_write_text(out / "figure.json", fig.to_json())
    atomic_write_text(out / "figure.html", fig.to_html(include_plotlyjs=True, full_html=True))
    atomic_write_json(out / "compare.json", {
        "rows": rows, "config": base.to_dict(), "wall_seconds": wall, "prepare_seconds": prep,
        "strategies": {k: {"adds": s.adds, "loss_terms": s.loss_terms} for k, s in STRATEGIES.items()},
    })

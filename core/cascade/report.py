"""Outputs: summary rows (refusing one-class splits that stand alone), CSV files and score histograms
(OpenCV-drawn PNG plus a plotly HTML; matplotlib and kaleido are not dependencies)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.errors import WorkbenchError
from core.storage import atomic_write_text

SUMMARY_COLUMNS = ("experiment", "split", "accuracy", "precision", "recall", "f1", "auroc", "pr_auc", "latency_ms",
                   "latency_p95_ms", "heatmap_call_rate", "flag_rate", "n", "n_anomalous", "note")


def summary_row(experiment: str, split: str, labels: np.ndarray, decisions: np.ndarray, scores: np.ndarray,
                latency_ms: np.ndarray, call_rate: float, domain: bool = False) -> dict[str, Any]:
    """One summary row. On a one-class split (e.g. a domain set of defects only) only the flag rate is filled:
    accuracy, precision, AUROC, ... are undefined or trivially perfect there, and the row is marked ``one_class``
    so that :func:`check_summary` refuses it unless a mixed split of the same experiment is beside it."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(labels, np.int64)
    d = np.asarray(decisions, np.int64)
    lat = np.asarray(latency_ms, np.float64)
    row: dict[str, Any] = {"experiment": experiment, "split": split, "n": int(y.size), "n_anomalous": int(y.sum()),
                           "latency_ms": float(lat.mean()), "latency_p95_ms": float(np.percentile(lat, 95)),
                           "heatmap_call_rate": float(call_rate), "flag_rate": float(d.mean())}
    one_class = y.min() == y.max()
    if one_class:
        row.update(accuracy=None, precision=None, recall=None, f1=None, auroc=None, pr_auc=None)
        kind = "all-anomalous" if y[0] == 1 else "all-normal"
        row["note"] = (f"{'domain set, ' if domain else ''}{kind} split: only the flag rate (share called anomalous) "
                       "is meaningful; read it beside the mixed split")
        row["one_class"] = True
        return row
    tp = int(((d == 1) & (y == 1)).sum())
    fp = int(((d == 1) & (y == 0)).sum())
    fn = int(((d == 0) & (y == 1)).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    row.update(accuracy=float((d == y).mean()), precision=p, recall=r, f1=2 * p * r / (p + r) if p + r else 0.0,
               auroc=float(roc_auc_score(y, scores)), pr_auc=float(average_precision_score(y, scores)), note="",
               one_class=False)
    if d.min() == d.max():
        row["note"] = f"calls every image {'anomalous' if d[0] else 'normal'}"
    return row


def check_summary(rows: Sequence[dict[str, Any]]) -> None:
    """Refuse a summary in which a one-class split (all-anomalous or all-normal) is reported without a mixed split
    of the same experiment beside it: 'everything is anomalous' scores perfectly on an all-anomaly split."""
    mixed = {r["experiment"] for r in rows if not r.get("one_class")}
    lonely = [f"{r['experiment']} on {r['split']}" for r in rows if r.get("one_class") and r["experiment"] not in mixed]
    if lonely:
        raise WorkbenchError(
            f"Results on one-class splits only ({', '.join(lonely)}): on an all-anomalous split calling everything "
            "anomalous scores perfectly, so these numbers say nothing alone.",
            "Report them beside a mixed split (test_mix) of the same experiment.",
        )


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(columns)
    for r in rows:
        w.writerow([_fmt(r.get(c)) for c in columns])
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def write_summary(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    check_summary(rows)
    return write_csv(path, rows, SUMMARY_COLUMNS)


_COLOURS = {"good": (46, 139, 87), "normal": (46, 139, 87)}  # RGB
_PALETTE = [(214, 39, 40), (255, 127, 14), (148, 103, 189), (140, 86, 75), (227, 119, 194), (31, 119, 180),
            (188, 189, 34), (23, 190, 207)]


def _colour(name: str, i: int) -> tuple[int, int, int]:
    return _COLOURS.get(name, _PALETTE[i % len(_PALETTE)])


def histogram_png(path: str | Path, scores_by_class: dict[str, np.ndarray], title: str,
                  lines: dict[str, float] | None = None, bins: int = 40, value_range=(0.0, 1.0)) -> Path:
    """Per-class score histograms as step outlines on one axis (OpenCV drawing), with vertical threshold lines."""
    import cv2

    from core.visualize import write_png

    W, H, L, R, T, B = 720, 420, 60, 20, 40, 50
    img = np.full((H, W, 3), 255, np.uint8)
    lo, hi = value_range
    edges = np.linspace(lo, hi, bins + 1)
    hists = {k: np.histogram(np.clip(v, lo, hi), bins=edges)[0] / max(1, len(v)) for k, v in scores_by_class.items()}
    top = max([h.max() for h in hists.values()] + [1e-9])
    px = lambda x: int(L + (x - lo) / (hi - lo) * (W - L - R))  # noqa: E731
    py = lambda y: int(H - B - y / top * (H - T - B))  # noqa: E731
    cv2.rectangle(img, (L, T), (W - R, H - B), (0, 0, 0), 1)
    for x in np.linspace(lo, hi, 6):
        cv2.putText(img, f"{x:.1f}", (px(x) - 10, H - B + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.putText(img, f"{top:.2f}", (5, T + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.putText(img, "share of class", (5, H - B + 35), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
    cv2.putText(img, title, (L, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    for i, (name, h) in enumerate(hists.items()):
        c = _colour(name, i)
        pts = []
        for b in range(bins):
            pts += [(px(edges[b]), py(h[b])), (px(edges[b + 1]), py(h[b]))]
        cv2.polylines(img, [np.array(pts, np.int32)], False, c, 2)
        cv2.putText(img, f"{name} (n={len(scores_by_class[name])})", (W - R - 200, T + 18 + 16 * i),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, c, 1)
    for j, (name, x) in enumerate((lines or {}).items()):
        if x is None or not np.isfinite(x):
            continue
        xx = px(min(max(x, lo), hi))
        cv2.line(img, (xx, T), (xx, H - B), (90, 90, 90), 1)
        cv2.putText(img, name, (xx + 3, T + 14 + 14 * j), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (60, 60, 60), 1)
    write_png(path, img)
    return Path(path)


def histogram_html(path: str | Path, scores_by_class: dict[str, np.ndarray], title: str,
                   lines: dict[str, float] | None = None) -> Path:
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, v in scores_by_class.items():
        fig.add_trace(go.Histogram(x=np.asarray(v, float), name=name, histnorm="probability", opacity=0.6,
                                   xbins=dict(start=0, end=1, size=0.025)))
    for name, x in (lines or {}).items():
        if x is not None and np.isfinite(x):
            fig.add_vline(x=x, line_dash="dash", annotation_text=name)
    fig.update_layout(barmode="overlay", title=title, xaxis_title="gate score (calibrated)",
                      yaxis_title="share of class")
    atomic_write_text(path, fig.to_html(include_plotlyjs="cdn", full_html=True))
    return Path(path)

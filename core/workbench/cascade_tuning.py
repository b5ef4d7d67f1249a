"""Tuning a fitted cascade on its cached measurements only (no model call): the (T_low, T_high) sweep and
Pareto front, one operating point, the pick for a target recall, and saving the chosen policy."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import WorkbenchError
from core.workbench.cascade_gate import cascade_dir


def cascade_sweep(measured, heat_threshold: float, heat_scale: float = 1.0) -> tuple[list[dict], list[dict]]:
    """Every candidate (T_low, T_high) pair at this heatmap threshold, and the recall-vs-latency Pareto front.

    The same rows as :func:`core.cascade.sweep` (same candidates, end points and metrics; ``latency_p95_ms`` is
    left out of the cascade rows) computed with prefix sums over the images sorted by gate score instead of one
    pass per pair, so that moving the heatmap threshold with thousands of measured images stays interactive.
    Pure numpy on the cached measurements: no model call.
    """
    from core.cascade import Policy
    from core.cascade.sweep import candidate_thresholds, degenerate_note, gate_threshold_f1, pair_metrics

    y = np.asarray(measured.labels, np.int64)
    g = np.asarray(measured.gate_scores, np.float64)
    n = y.size
    thr = float(heat_threshold)
    common = dict(heat_threshold=thr, heat_scale=float(heat_scale))
    rows = [pair_metrics(measured, Policy(mode="heatmap_only", **common)),
            pair_metrics(measured, Policy(mode="gate_only", gate_threshold=gate_threshold_f1(y, g), **common))]
    cands = candidate_thresholds(g)
    order = np.argsort(g, kind="stable")
    gs = g[order]
    dh = (np.asarray(measured.heat_scores, np.float64) >= thr)[order]
    ys = y[order]

    def csum(a):
        return np.r_[0.0, np.cumsum(np.asarray(a, np.float64))]

    c_pos, c_hpos, c_hneg = csum(ys), csum(dh & (ys == 1)), csum(dh & (ys == 0))
    c_hms = csum(np.asarray(measured.heat_ms, np.float64)[order])
    gate_total = float(np.sum(measured.gate_ms))
    n_pos = float(ys.sum())
    lt = np.searchsorted(gs, cands, "left")  # images with gate score < t
    le = np.searchsorted(gs, cands, "right")  # images with gate score <= t
    i_lo, i_hi = np.triu_indices(cands.size)
    a, b = lt[i_lo], le[i_hi]  # band [a, b) goes to the heatmap model; [b, n) is gate-anomalous
    b = np.maximum(a, b)
    above_pos = c_pos[n] - c_pos[b]
    above_neg = (n - b) - above_pos
    tp = above_pos + (c_hpos[b] - c_hpos[a])
    fp = above_neg + (c_hneg[b] - c_hneg[a])
    fn = n_pos - tp
    tn = (n - n_pos) - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        rec = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
    nn = max(n, 1)
    lat = (gate_total + (c_hms[b] - c_hms[a])) / nn
    for k in range(i_lo.size):
        row = {"mode": "cascade", "t_low": float(cands[i_lo[k]]), "t_high": float(cands[i_hi[k]]),
               "gate_threshold": None, "accuracy": float((tp[k] + tn[k]) / nn), "precision": float(prec[k]),
               "recall": float(rec[k]), "f1": float(f1[k]), "heatmap_call_rate": float((b[k] - a[k]) / nn),
               "gate_normal_rate": float(a[k] / nn), "gate_anomalous_rate": float((n - b[k]) / nn),
               "positive_rate": float((tp[k] + fp[k]) / nn), "latency_ms": float(lat[k]), "latency_p95_ms": None}
        row["note"] = degenerate_note(row)
        rows.append(row)
    n_neg = max(n - n_pos, 1.0)
    for row in rows:  # every point with the same definition, the end points included
        row["false_alarm_rate"] = float(max(0.0, row["positive_rate"] * n - row["recall"] * n_pos) / n_neg)
    return rows, fast_pareto_front(rows, "latency_ms")


def fast_pareto_front(rows: list[dict[str, Any]], cost: str = "latency_ms") -> list[dict[str, Any]]:
    """:func:`core.cascade.pareto_front` (rows not dominated in higher recall / lower cost, sorted by cost, one row
    per operating point) with a numpy dominance matrix instead of a Python double loop."""
    if not rows:
        return []
    r = np.array([x["recall"] for x in rows], np.float64)
    c = np.array([x[cost] for x in rows], np.float64)
    ge, le = r[None, :] >= r[:, None], c[None, :] <= c[:, None]
    strict = (r[None, :] > r[:, None]) | (c[None, :] < c[:, None])
    dominated = (ge & le & strict).any(axis=1)
    seen, out = set(), []
    for i in sorted(np.flatnonzero(~dominated), key=lambda i: (c[i], -r[i])):
        x = rows[i]
        key = (x["mode"], x["t_low"], x["t_high"], x["gate_threshold"])
        if key not in seen:
            seen.add(key)
            out.append(x)
    return out


def cascade_point(measured, t_low: float, t_high: float, heat_threshold: float) -> dict[str, Any]:
    """Metrics of one (T_low, T_high) on cached measurements: confusion counts, accuracy, precision, recall, F1,
    heatmap call rate, gate-decided shares and expected mean latency (measured gate ms + heatmap ms if routed)."""
    from core.cascade import Policy
    from core.cascade.routing import HEATMAP, decisions_for, routes_for

    lo, hi = float(min(t_low, t_high)), float(max(t_low, t_high))
    pol = Policy(mode="cascade", t_low=lo, t_high=hi, heat_threshold=float(heat_threshold))
    y = np.asarray(measured.labels, np.int64)
    routes = routes_for(measured.gate_scores, pol)
    dec = decisions_for(measured.gate_scores, measured.heat_scores, routes, pol)
    lat = measured.latency(routes, "cascade")
    tp = int(((dec == 1) & (y == 1)).sum())
    fp = int(((dec == 1) & (y == 0)).sum())
    fn = int(((dec == 0) & (y == 1)).sum())
    tn = int(((dec == 0) & (y == 0)).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    n = max(1, y.size)
    heat_all = float(np.mean(measured.heat_ms)) if y.size else 0.0
    return {
        "t_low": lo, "t_high": hi, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "accuracy": (tp + tn) / n, "precision": prec, "recall": rec,
        "false_alarm_rate": fp / (fp + tn) if fp + tn else 0.0,
        "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
        "heatmap_call_rate": float((routes == HEATMAP).mean()) if y.size else 0.0,
        "gate_normal_rate": float((routes == 0).mean()) if y.size else 0.0,
        "gate_anomalous_rate": float((routes == 1).mean()) if y.size else 0.0,
        "latency_ms": float(lat.mean()) if y.size else 0.0,
        "heatmap_only_latency_ms": heat_all,
        "gate_ms": float(np.mean(measured.gate_ms)) if y.size else 0.0,
    }


def cascade_pick_for_recall(rows: list[dict[str, Any]], target_recall: float,
                            precision_floor: float | None = None) -> tuple[float, float, str]:
    """The cascade's automatic choice (:func:`core.cascade.choose`: cheapest mean latency meeting the recall and
    precision floors) with the recall floor set to ``target_recall``; returned as (T_low, T_high, note).

    A ``gate_only`` choice at threshold T becomes T_low = T_high = T; ``heatmap_only`` becomes (0, 1): every image
    goes to the heatmap model.
    """
    from core.cascade import choose

    base = next(r for r in rows if r["mode"] == "heatmap_only")
    c = choose(rows, margin=float(base["recall"]) - float(target_recall), precision_floor=precision_floor)
    r = c.row
    if r["mode"] == "cascade":
        lo, hi = float(r["t_low"]), float(r["t_high"])
    elif r["mode"] == "gate_only":
        lo = hi = float(r["gate_threshold"])
    else:
        lo, hi = 0.0, 1.0
    note = c.note or (f"{r['mode']}: recall {r['recall']:.3f}, precision {r['precision']:.3f}, "
                      f"{r['latency_ms']:.1f} ms/image on val_mix ({c.n_eligible} of {len(rows)} points qualify)")
    if c.n_eligible == 0:
        note = (f"No point reaches recall {target_recall:.2f} with precision ≥ {c.precision_floor:.2f} on val_mix "
                f"(the heatmap model alone reaches {base['recall']:.3f}); every image goes to the heatmap model.")
    return lo, hi, note


def save_cascade_policy(folder: str | Path, t_low: float, t_high: float, heat_threshold: float,
                        source: str = "set in the app") -> dict[str, Any]:
    """Store (T_low, T_high) and the heatmap threshold as the cascade's policy in cascade.json, atomically."""
    import json

    from core.cascade import Policy
    from core.storage import atomic_write_json

    path = cascade_dir(folder) / "cascade.json"
    if not path.is_file():
        raise WorkbenchError(f"{Path(folder).name} has no fitted gate.", "Fit a gate on the Data & models page.")
    lo, hi = float(t_low), float(t_high)
    if not (np.isfinite(lo) and np.isfinite(hi) and 0.0 <= lo <= hi <= 1.0):
        raise WorkbenchError(f"T_low={lo:.4g}, T_high={hi:.4g} are not valid.", "Give 0 <= T_low <= T_high <= 1.")
    cfg = json.loads(path.read_text())
    old = dict(cfg.get("policy") or {})
    pol = Policy(mode="cascade", t_low=lo, t_high=hi, heat_threshold=float(heat_threshold),
                 heat_scale=float(old.get("heat_scale", 1.0)))
    cfg.setdefault("auto_policy", old)
    cfg["policy"] = pol.to_dict()
    cfg["policy_source"] = f"{source} ({time.strftime('%Y-%m-%d %H:%M:%S')})"
    atomic_write_json(path, cfg)
    return cfg


# ------------------------------------------------------------------------------------------------------------
# The gate's score distribution and the bands T_low / T_high cut it into

BANDS = ("gate-normal", "to heatmap", "gate-defect")


def gate_bands(gate_scores: np.ndarray, t_low: float, t_high: float) -> np.ndarray:
    """The band of each image: 0 gate-normal (< T_low), 1 to the heatmap model, 2 gate-defect (> T_high); the same
    rule as :func:`core.cascade.routing.routes_for`."""
    from core.cascade import Policy
    from core.cascade.routing import ANOMALOUS, NORMAL, routes_for

    lo, hi = float(min(t_low, t_high)), float(max(t_low, t_high))
    routes = routes_for(np.asarray(gate_scores, np.float64), Policy(mode="cascade", t_low=lo, t_high=hi))
    return np.where(routes == NORMAL, 0, np.where(routes == ANOMALOUS, 2, 1))


def band_counts(labels: np.ndarray, defects: list[str], gate_scores: np.ndarray, t_low: float, t_high: float,
                by_class: bool = False) -> list[dict[str, Any]]:
    """Images per band, one row for the normal and one for the defective images (or one per defect class)."""
    y = np.asarray(labels, np.int64)
    bands = gate_bands(gate_scores, t_low, t_high)
    groups = ["normal"] + (sorted({d for d, lab in zip(defects, y) if lab == 1}) if by_class else ["defective"])
    rows = []
    for g in groups:
        if g == "normal":
            sel = y == 0
        elif g == "defective":
            sel = y == 1
        else:
            sel = (y == 1) & (np.asarray(defects) == g)
        row: dict[str, Any] = {"images": g, "total": int(sel.sum())}
        row.update({name: int(((bands == k) & sel).sum()) for k, name in enumerate(BANDS)})
        rows.append(row)
    return rows


def score_bins(values: np.ndarray, labels: np.ndarray, lo: float, hi: float, bins: int = 40,
               names: tuple[str, str] = ("normal", "defective")) -> list[dict[str, Any]]:
    """Histogram rows (bin_start, bin_end, count, group) of ``values`` for normal and defective images: computed
    here once so that a chart's interval selection reads back in score units."""
    edges = np.linspace(lo, hi, bins + 1) if hi > lo else np.array([lo, lo + 1.0])
    y = np.asarray(labels)
    rows = []
    for lab, name in enumerate(names):
        counts, _ = np.histogram(np.clip(np.asarray(values, np.float64)[y == lab], edges[0], edges[-1]), edges)
        rows.extend({"bin_start": float(a), "bin_end": float(b), "count": int(c), "group": name}
                    for a, b, c in zip(edges[:-1], edges[1:], counts) if c)
    return rows


# ------------------------------------------------------------------------------------------------------------
# The held-out check: the chosen thresholds on test_mix, measured once per gate


def held_out_measurements(folder: str | Path, progress=None, split: str = "test_mix"):
    """Per-image gate and heatmap scores and times on ``split`` (batch 1, as val_mix was measured), cached in the
    cascade folder (``measured_<split>.csv``; a refit of the gate replaces the folder, and with it this file).

    Returns (defects, Measured). Never used for tuning: it is the report of the thresholds chosen on val_mix.
    """
    from core.cascade import load_gate
    from core.cascade.pipeline import load_split, measure, read_measured, write_measured
    from core.data import index_dataset
    from core.workbench.models import load_model, model_info

    d = cascade_dir(folder)
    cached = d / f"measured_{split}.csv"
    if cached.is_file():
        return read_measured(cached)
    if not (d / "cascade.json").is_file():
        raise WorkbenchError(f"{Path(folder).name} has no fitted gate.", "Fit a gate on the Data & models page.")
    info = model_info(folder)
    index = index_dataset(info.dataset)
    data = load_split(index, split)
    if not len(data.labels):
        raise WorkbenchError(f"The dataset has no {split} images to check on.", "Use a dataset with a test split.")
    prog = progress or (lambda *_: None)
    m = measure(load_gate(d / "gate"), load_model(folder), data, prog)
    write_measured(cached, data, m)
    return data.defects, m


def operating_marks(state, rows: list[dict[str, Any]], t_low: float, t_high: float,
                    heat_threshold: float) -> dict[str, dict[str, Any]]:
    """The points a cascade chart marks, each computed now at ``heat_threshold`` from the cached measurements
    (never a number stored when the gate was fitted at another threshold): heatmap only, gate only, the automatic
    choice and the saved policy as (T_low, T_high) pairs, and the current point."""
    m = state.measured
    out: dict[str, dict[str, Any]] = {}
    for mode, name in (("heatmap_only", "heatmap only"), ("gate_only", "gate only")):
        row = next((r for r in rows if r["mode"] == mode), None)
        if row is not None:
            out[name] = row
    chosen = (state.config.get("choice") or {}).get("chosen") or {}
    if chosen.get("mode") == "cascade" and chosen.get("t_low") is not None:
        out["automatic choice"] = cascade_point(m, chosen["t_low"], chosen["t_high"], heat_threshold)
    pol = state.saved_policy
    if pol.get("mode") == "cascade" and pol.get("t_low") is not None:
        out["saved"] = cascade_point(m, pol["t_low"], pol["t_high"], heat_threshold)
    out["current point"] = cascade_point(m, t_low, t_high, heat_threshold)
    return out

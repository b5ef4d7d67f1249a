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

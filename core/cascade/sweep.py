"""Sweep of (T_low, T_high) pairs, Pareto fronts and the automatic choice, all on per-image measurements.

Candidates are *quantiles of the observed validation gate scores* (each candidate is a score some image has), so
no point of the sweep can fall where no score lies, whatever the gate's scale. End points: ``gate_only`` (the
gate's F1-max threshold on validation) and ``heatmap_only``. A pair's per-image latency is the measured gate time
plus, if routed, the measured heatmap time of that image (batch 1, decoded images, no feature cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from core.cascade.routing import HEATMAP, Policy, decisions_for, routes_for
from core.errors import WorkbenchError

QUANTILE_LEVELS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75,
                   0.8, 0.85, 0.9, 0.95, 0.98, 1.0)
SWEEP_COLUMNS = ("mode", "t_low", "t_high", "gate_threshold", "accuracy", "precision", "recall", "f1",
                 "heatmap_call_rate", "gate_normal_rate", "gate_anomalous_rate", "positive_rate", "latency_ms",
                 "latency_p95_ms", "note")


@dataclass
class Measured:
    """Per-image measurements of one split: labels, gate scores and times, heatmap scores and times."""

    labels: np.ndarray
    gate_scores: np.ndarray
    gate_ms: np.ndarray
    heat_scores: np.ndarray
    heat_ms: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.labels)
        for name in ("gate_scores", "gate_ms", "heat_scores", "heat_ms"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries, labels {n}")

    def latency(self, routes: np.ndarray, mode: str) -> np.ndarray:
        gate = np.zeros_like(self.gate_ms) if mode == "heatmap_only" else self.gate_ms
        return gate + np.where(routes == HEATMAP, self.heat_ms, 0.0)


def candidate_thresholds(gate_scores: np.ndarray, levels: Sequence[float] = QUANTILE_LEVELS) -> np.ndarray:
    """Distinct observed scores at the given quantile levels (``inverted_cdf``: every candidate is an observed
    score; the minimum and maximum are always included)."""
    s = np.asarray(gate_scores, np.float64).reshape(-1)
    if s.size == 0:
        raise WorkbenchError("No validation gate scores to take thresholds from.", "Score val_mix first.")
    q = np.quantile(s, np.clip(np.asarray(levels, np.float64), 0, 1), method="inverted_cdf")
    return np.unique(np.r_[q, s.min(), s.max()])


def gate_health(gate_scores: np.ndarray, labels: np.ndarray | None = None) -> list[str]:
    """Warnings about a gate whose scores cannot route anything (the old collapse: all scores < 0.001)."""
    s = np.asarray(gate_scores, np.float64)
    notes = []
    lo, hi = np.percentile(s, [2.5, 97.5])
    if hi - lo < 1e-3:
        notes.append(f"gate scores collapsed: 95 % of them lie within [{lo:.4g}, {hi:.4g}]")
    if labels is not None:
        y = np.asarray(labels)
        if (y == 1).any() and (y == 0).any():
            a, n = s[y == 1], s[y == 0]
            if np.median(a) <= np.median(n):
                notes.append("anomalous images do not score higher than normal ones (median)")
    return notes


def pair_metrics(m: Measured, policy: Policy) -> dict[str, Any]:
    y = np.asarray(m.labels, np.int64)
    routes = routes_for(m.gate_scores, policy)
    dec = decisions_for(m.gate_scores, m.heat_scores, routes, policy)
    lat = m.latency(routes, policy.mode)
    tp = int(((dec == 1) & (y == 1)).sum())
    fp = int(((dec == 1) & (y == 0)).sum())
    fn = int(((dec == 0) & (y == 1)).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    row = {
        "mode": policy.mode, "t_low": policy.t_low, "t_high": policy.t_high, "gate_threshold": policy.gate_threshold,
        "accuracy": float((dec == y).mean()), "precision": prec, "recall": rec,
        "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
        "heatmap_call_rate": float((routes == HEATMAP).mean()),
        "gate_normal_rate": float((routes == 0).mean()), "gate_anomalous_rate": float((routes == 1).mean()),
        "positive_rate": float(dec.mean()),
        "latency_ms": float(lat.mean()), "latency_p95_ms": float(np.percentile(lat, 95)),
    }
    row["note"] = degenerate_note(row)
    return row


def degenerate_note(row: dict[str, Any]) -> str:
    """Name the configurations that only look useful: all to the heatmap, all anomalous, all normal."""
    notes = []
    if row["mode"] != "heatmap_only" and row["heatmap_call_rate"] >= 1.0:
        notes.append("routes every image to the heatmap model: gate time added, nothing saved")
    if row["positive_rate"] >= 1.0:
        notes.append("calls every image anomalous")
    if row["positive_rate"] <= 0.0:
        notes.append("calls every image normal")
    return "; ".join(notes)


def gate_threshold_f1(labels: np.ndarray, gate_scores: np.ndarray) -> float:
    """The gate's F1-max threshold (an observed score); the median when there is one class only."""
    from core.metrics import f1_max

    y = np.asarray(labels)
    if (y == 1).any() and (y == 0).any():
        return f1_max(y, gate_scores)[1]
    return float(np.quantile(gate_scores, 0.5, method="inverted_cdf"))


def sweep(m: Measured, heat_threshold: float, heat_scale: float = 1.0,
          levels: Sequence[float] = QUANTILE_LEVELS) -> list[dict[str, Any]]:
    """Every candidate pair (T_low <= T_high), plus the gate_only and heatmap_only end points."""
    cands = candidate_thresholds(m.gate_scores, levels)
    common = dict(heat_threshold=heat_threshold, heat_scale=heat_scale)
    rows = [pair_metrics(m, Policy(mode="heatmap_only", **common)),
            pair_metrics(m, Policy(mode="gate_only", gate_threshold=gate_threshold_f1(m.labels, m.gate_scores),
                                   **common))]
    for i, lo in enumerate(cands):
        for hi in cands[i:]:
            rows.append(pair_metrics(m, Policy(mode="cascade", t_low=float(lo), t_high=float(hi), **common)))
    return rows


def pareto_front(rows: list[dict[str, Any]], cost: str = "latency_ms") -> list[dict[str, Any]]:
    """Rows not dominated in (higher recall, lower cost), sorted by cost."""
    front = []
    for r in rows:
        dominated = any(o["recall"] >= r["recall"] and o[cost] <= r[cost] and
                        (o["recall"] > r["recall"] or o[cost] < r[cost]) for o in rows)
        if not dominated:
            front.append(r)
    seen, out = set(), []
    for r in sorted(front, key=lambda r: (r[cost], -r["recall"])):
        key = (r["mode"], r["t_low"], r["t_high"], r["gate_threshold"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


@dataclass
class Choice:
    row: dict[str, Any]
    baseline: dict[str, Any]
    recall_floor: float
    precision_floor: float
    n_eligible: int
    note: str

    def policy(self, heat_threshold: float, heat_scale: float) -> Policy:
        r = self.row
        return Policy(mode=r["mode"], t_low=r["t_low"], t_high=r["t_high"], gate_threshold=r["gate_threshold"],
                      heat_threshold=heat_threshold, heat_scale=heat_scale)

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.row, "heatmap_only": self.baseline, "recall_floor": self.recall_floor,
                "precision_floor": self.precision_floor, "n_eligible": self.n_eligible, "note": self.note}


def _has_band(r: dict[str, Any]) -> bool:
    """A cascade point whose uncertain band is a real interval (T_low < T_high) and holds validation images;
    T_low == T_high only catches the images tied at that score: gate_only in disguise."""
    return r["mode"] == "cascade" and r["t_low"] < r["t_high"] and r["heatmap_call_rate"] > 0


def choose(rows: list[dict[str, Any]], margin: float = 0.02, precision_floor: float | None = None,
           precision_margin: float = 0.05, allow_gate_only: bool = True) -> Choice:
    """The lowest-mean-latency row whose recall is within ``margin`` of heatmap-only recall and whose precision is
    at least ``precision_floor`` (default: heatmap-only precision minus ``precision_margin``).

    ``allow_gate_only=False`` keeps the heatmap model in the loop (a cascade point with a non-empty uncertain band,
    or heatmap_only), e.g. when its maps are wanted for the uncertain parts. Ties: higher F1, then lower call rate.
    A row that routes everything to the heatmap model costs more than heatmap_only, so it is never chosen;
    heatmap_only itself always qualifies with the default floor.
    """
    base = next((r for r in rows if r["mode"] == "heatmap_only"), None)
    if base is None:
        raise WorkbenchError("The sweep has no heatmap_only row to compare with.", "Run the sweep again.")
    rfloor = base["recall"] - float(margin)
    pfloor = base["precision"] - precision_margin if precision_floor is None else float(precision_floor)
    ok = [r for r in rows if r["recall"] >= rfloor - 1e-12 and r["precision"] >= pfloor - 1e-12
          and not (r["mode"] != "heatmap_only" and r["heatmap_call_rate"] >= 1.0)
          and (allow_gate_only or r["mode"] == "heatmap_only" or _has_band(r))]
    if not ok:
        return Choice(base, base, rfloor, pfloor, 0,
                      "no operating point meets the recall margin and precision floor: falling back to heatmap_only")
    best = min(ok, key=lambda r: (round(r["latency_ms"], 6), -r["f1"], r["heatmap_call_rate"]))
    note = "" if best["mode"] != "heatmap_only" else "no cheaper operating point meets the targets on val_mix"
    return Choice(best, base, rfloor, pfloor, len(ok), note)

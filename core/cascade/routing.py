"""Routing: the gate decides the clear cases, the heatmap model the uncertain ones.

Rule (gate scores are calibrated to [0, 1]):  score < T_low -> "normal";  score > T_high -> "anomalous";
otherwise -> "heatmap" (the heatmap model decides with its own threshold, chosen on val_mix).
Besides the cascade there are two end points: ``gate_only`` (anomalous when score >= the gate's own threshold) and
``heatmap_only`` (no gate; every image costs the heatmap model only).

Final score (one ordering over all routes, so AUROC/AP of the cascade are defined): gate-normal images map to
[0, 0.25), heatmap-decided ones to (0.25, 0.75) with 0.5 at the heatmap threshold, gate-anomalous ones to
(0.75, 1]. The final decision is ``final score >= 0.5`` in every mode.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.errors import ModelFormatError, WorkbenchError

ROUTES = ("normal", "anomalous", "heatmap")
NORMAL, ANOMALOUS, HEATMAP = 0, 1, 2
MODES = ("cascade", "gate_only", "heatmap_only")


@dataclass
class Policy:
    """Thresholds of one operating point."""

    mode: str = "cascade"
    t_low: float | None = None
    t_high: float | None = None
    gate_threshold: float | None = None  # gate_only
    heat_threshold: float = 0.0  # raw heatmap score threshold (anomalous when >=)
    heat_scale: float = 1.0  # spread of raw heatmap scores (for the final score only)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise WorkbenchError(f"Unknown cascade mode {self.mode!r}.", f"Use one of {', '.join(MODES)}.")
        if self.mode == "cascade" and (self.t_low is None or self.t_high is None or self.t_low > self.t_high):
            raise WorkbenchError(f"Cascade thresholds T_low={self.t_low}, T_high={self.t_high} are not valid.",
                                 "Give T_low <= T_high, both in [0, 1].")
        if self.mode == "gate_only" and self.gate_threshold is None:
            raise WorkbenchError("gate_only needs the gate threshold.", "Set gate_threshold.")

    def label(self) -> str:
        if self.mode == "cascade":
            return f"cascade T_low={self.t_low:.4g} T_high={self.t_high:.4g}"
        if self.mode == "gate_only":
            return f"gate_only T={self.gate_threshold:.4g}"
        return "heatmap_only"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def routes_for(gate_scores: np.ndarray, policy: Policy) -> np.ndarray:
    """Route code per image (0 normal, 1 anomalous, 2 heatmap)."""
    s = np.asarray(gate_scores, np.float64).reshape(-1)
    if policy.mode == "heatmap_only":
        return np.full(s.size, HEATMAP, np.int64)
    if policy.mode == "gate_only":
        return np.where(s >= policy.gate_threshold, ANOMALOUS, NORMAL).astype(np.int64)
    return np.where(s < policy.t_low, NORMAL, np.where(s > policy.t_high, ANOMALOUS, HEATMAP)).astype(np.int64)


def final_scores(gate_scores: np.ndarray, heat_scores: np.ndarray, routes: np.ndarray, policy: Policy) -> np.ndarray:
    """One score per image on a common scale; ``>= 0.5`` is the final decision (see the module doc)."""
    s = np.clip(np.asarray(gate_scores, np.float64), 0.0, 1.0)
    h = np.asarray(heat_scores, np.float64)
    out = np.zeros(s.size)
    if policy.mode == "gate_only":
        t = policy.gate_threshold
        return np.where(s >= t, 0.5 + 0.5 * (s - t) / max(1e-12, 1 - t), 0.5 * s / max(1e-12, t)).clip(0, 1)
    lo = 0.0 if policy.t_low is None else policy.t_low
    hi = 1.0 if policy.t_high is None else policy.t_high
    n, a, m = routes == NORMAL, routes == ANOMALOUS, routes == HEATMAP
    out[n] = 0.25 * s[n] / max(lo, 1e-12)
    out[a] = 0.75 + 0.25 * (s[a] - hi) / max(1e-12, 1.0 - hi)
    with np.errstate(over="ignore"):
        z = np.nan_to_num(h[m], nan=-np.inf)
        out[m] = 0.25 + 0.5 / (1.0 + np.exp(-np.clip((z - policy.heat_threshold) / max(policy.heat_scale, 1e-12),
                                                       -60, 60)))
    # exactly at the heatmap threshold must stay anomalous
    out[m & (h >= policy.heat_threshold)] = np.maximum(out[m & (h >= policy.heat_threshold)], 0.5)
    out[m & (h < policy.heat_threshold)] = np.minimum(out[m & (h < policy.heat_threshold)], np.nextafter(0.5, 0))
    return np.clip(out, 0.0, 1.0)


def decisions_for(gate_scores, heat_scores, routes, policy: Policy) -> np.ndarray:
    """1 = anomalous. Gate routes decide by themselves; heatmap routes by the heatmap threshold."""
    h = np.asarray(heat_scores, np.float64)
    d = (routes == ANOMALOUS).astype(np.int64)
    m = routes == HEATMAP
    d[m] = (h[m] >= policy.heat_threshold).astype(np.int64)
    return d


@dataclass
class RouteResult:
    """Per image: gate score, route, final decision and score, and the milliseconds each stage cost."""

    gate_scores: np.ndarray
    routes: np.ndarray  # codes, see ROUTES
    decisions: np.ndarray  # 1 anomalous
    final_scores: np.ndarray
    heat_scores: np.ndarray  # NaN where the heatmap model was not called
    gate_ms: np.ndarray
    heatmap_ms: np.ndarray  # 0 where not called
    policy: Policy = field(default_factory=Policy)
    maps: list = field(default_factory=list)  # the heatmap model's map per image, None where it was not called

    @property
    def latency_ms(self) -> np.ndarray:
        return self.gate_ms + self.heatmap_ms

    def counts(self) -> dict[str, int]:
        return {name: int((self.routes == i).sum()) for i, name in enumerate(ROUTES)}

    @property
    def call_rate(self) -> float:
        return float((self.routes == HEATMAP).mean()) if self.routes.size else 0.0

    def rows(self) -> list[dict[str, Any]]:
        return [{"gate_score": float(self.gate_scores[i]), "route": ROUTES[int(self.routes[i])],
                 "decision": "anomalous" if self.decisions[i] else "normal", "final_score": float(self.final_scores[i]),
                 "heat_score": None if np.isnan(self.heat_scores[i]) else float(self.heat_scores[i]),
                 "gate_ms": float(self.gate_ms[i]), "heatmap_ms": float(self.heatmap_ms[i])}
                for i in range(self.routes.size)]


class Cascade:
    """A fitted gate, a fitted heatmap detector and a policy; ``route`` runs them image by image."""

    def __init__(self, gate, detector, policy: Policy) -> None:
        self.gate, self.detector, self.policy = gate, detector, policy

    def route(self, images: Sequence[np.ndarray]) -> RouteResult:
        """Route a batch of decoded images; each image is timed on its own (batch 1), the heatmap model is only
        called for images routed to it (never in heatmap_only's absence of a gate: then the gate is skipped)."""
        import time as _t

        n = len(images)
        gs, gms = np.zeros(n), np.zeros(n)
        hs, hms = np.full(n, np.nan), np.zeros(n)
        routes = np.zeros(n, np.int64)
        maps: list = [None] * n
        for i, img in enumerate(images):
            if self.policy.mode != "heatmap_only":
                t0 = _t.perf_counter()
                gs[i] = self.gate.score_images([img])[0]
                gms[i] = 1000.0 * (_t.perf_counter() - t0)
            routes[i] = routes_for(gs[i:i + 1], self.policy)[0]
            if routes[i] == HEATMAP:
                t0 = _t.perf_counter()
                res = self.detector.score_images([img])
                hs[i] = float(res.scores[0])
                maps[i] = res.maps[0] if getattr(res, "maps", None) is not None else None
                hms[i] = 1000.0 * (_t.perf_counter() - t0)
        dec = decisions_for(gs, hs, routes, self.policy)
        return RouteResult(gs, routes, dec, final_scores(gs, hs, routes, self.policy), hs, gms, hms, self.policy,
                           maps)

    def save(self, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
        from core.storage import atomic_write_json

        folder = Path(folder)
        self.gate.save(folder / "gate")
        self.detector.save(folder / "detector")
        atomic_write_json(folder / "cascade.json", {"policy": self.policy.to_dict(), **(extra or {})})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Cascade":
        from core.cascade.gates import load_gate
        from core.detectors import load_detector

        folder = Path(folder)
        path = folder / "cascade.json"
        if not path.is_file():
            raise ModelFormatError(f"{folder} has no cascade.json.", "Run `python -m core cascade sweep` first.")
        cfg = json.loads(path.read_text())
        return cls(load_gate(folder / "gate"), load_detector(folder / "detector"), Policy(**cfg["policy"]))

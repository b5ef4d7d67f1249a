"""Cascade: a cheap gate decides the clear cases, the heatmap model the uncertain ones.

gate score < T_low -> normal; > T_high -> anomalous; otherwise the heatmap model decides with its own threshold.
"""

from core.cascade.gates import GATES, Gate, load_gate, make_gate
from core.cascade.routing import Cascade, Policy, RouteResult
from core.cascade.sweep import Measured, candidate_thresholds, choose, pareto_front, sweep

__all__ = ["GATES", "Cascade", "Gate", "Measured", "Policy", "RouteResult", "candidate_thresholds", "choose",
           "load_gate", "make_gate", "pareto_front", "sweep"]

"""Shared bits of the benchmark scripts: machine facts, a plain-text table, JSON output."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

RESULTS = REPO / "benchmarks" / "results"
MAGNETIC_TILE = REPO.parent / "shared" / "datasets" / "magnetic_tile"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import numpy
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": numpy.__version__,
        "cuda": torch.cuda.is_available(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table (also readable in a terminal)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(name: str, payload: dict[str, Any], started: float) -> Path:
    """Write ``benchmarks/results/NAME.json`` with the machine and the run's wall time."""
    from core.storage import atomic_write_json

    payload = dict(payload)
    payload["machine"] = machine()
    payload["wall_seconds"] = time.perf_counter() - started
    payload["command"] = "python " + " ".join(sys.argv)
    path = RESULTS / f"{name}.json"
    atomic_write_json(path, payload)
    print(f"\nwrote {path.relative_to(REPO)} (wall {payload['wall_seconds']:.0f} s)")
    return path

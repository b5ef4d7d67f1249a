"""Shared bits of the benchmark scripts: machine facts, a plain-text table, JSON output."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "20000")  # as core/config.py sets it (see there)

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


def magnetic_tile_train() -> tuple[Any, Any, list[str]]:
    """magnetic_tile's index, the default feature cache and the ``train_normal`` image paths (what most scripts
    fit on)."""
    from core.data import index_dataset
    from core.features import FeatureCache

    index = index_dataset(MAGNETIC_TILE)
    return index, FeatureCache(), [str(index.abs_path(r)) for r in index.split("train_normal")]


def patch_distances_on_splits(det, index, cache, splits: Sequence[str], k: int) -> dict[str, tuple]:
    """For each split: (masks, usable, Q x k nearest-bank distances, grid shape) of a fitted PatchCore, scored
    once so that map settings (blur, neighbours) can be compared on the same distances."""
    import numpy as np

    from core.detectors.embedding import to_patches
    from core.evaluation import ground_truth_masks

    out = {}
    for split in splits:
        records = index.split(split)
        feats = det.extractor(cache).extract_paths([str(index.abs_path(r)) for r in records])
        records = [records[i] for i in feats.ok]
        masks, usable = ground_truth_masks(index, records, det.image_size)
        emb = det.embed(feats.features)
        d2, _ = det.index.search(to_patches(emb), k)
        out[split] = (masks, usable, np.sqrt(d2), (emb.shape[0], emb.shape[2], emb.shape[3]))
    return out

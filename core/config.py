"""Process-wide settings: project paths, thread policy and device choice.

Importing ``core`` sets ``OMP_WAIT_POLICY=PASSIVE`` before torch or faiss load their OpenMP runtimes:
with both in one process their worker threads otherwise spin-wait and waste a core on a 2-core machine.
PASSIVE alone makes every idle thread sleep at once, so each of the ~60 small parallel regions of a CNN
forward pays a futex wake-up; ``GOMP_SPINCOUNT=20000`` (libgomp honours it over the policy) lets a thread spin
briefly (well under a millisecond) before sleeping.
``python benchmarks/thread_policy.py`` chose the spin count (each setting in its own process, batches and one image
at a time).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "20000")
os.environ.setdefault("KMP_BLOCKTIME", "0")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("WORKBENCH_CACHE", PROJECT_ROOT / "cache"))
WEIGHTS_CACHE_DIR = CACHE_DIR / "weights"
FEATURE_CACHE_DIR = CACHE_DIR / "features"
# Where the app and CLI look for datasets by name; ../shared/datasets is added when present.
DATA_ROOTS: list[Path] = [
    Path(p) for p in os.environ.get("WORKBENCH_DATA_ROOTS", "").split(os.pathsep) if p
] or [PROJECT_ROOT / "demo_data", PROJECT_ROOT.parent / "shared" / "datasets"]


def torch_device(prefer: str | None = None) -> "torch.device":  # noqa: F821
    """The GPU when one exists (or the one asked for), else the CPU."""
    import torch

    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_threads(n: int | None = None) -> None:
    """Use ``n`` (default: all cores) threads in torch and faiss alike."""
    import torch

    n = n or os.cpu_count() or 1
    torch.set_num_threads(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:  # faiss is optional for parts that only extract features
        pass

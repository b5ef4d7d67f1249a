"""Heatmap detectors (PatchCore, PaDiM) over cached backbone features; ``registry.py`` is the one table of them.

Names are imported on first use (PEP 562), so torch-free submodules (``search``, ``patch_scoring``) can be
imported without loading torch: the exported bundle's scorer (core/bundle) runs on a machine without it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

_NAMES = {
    "FitReport": "core.detectors.base",
    "HeatmapDetector": "core.detectors.base",
    "ScoreResult": "core.detectors.base",
    "default_image_size": "core.detectors.base",
    "Padim": "core.detectors.padim",
    "PadimConfig": "core.detectors.padim",
    "PatchCore": "core.detectors.patchcore",
    "PatchCoreConfig": "core.detectors.patchcore",
    "SearchConfig": "core.detectors.search",
    "FormField": "core.detectors.registry",
    "detector_class": "core.detectors.registry",
    "detector_kinds": "core.detectors.registry",
    "make_detector": "core.detectors.registry",
    "register": "core.detectors.registry",
}


def __getattr__(name: str) -> Any:
    if name == "DETECTORS":
        from core.detectors.registry import detectors

        return detectors()
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'core.detectors' has no attribute {name!r}")


def load_detector(folder: str | Path):
    """Load any saved heatmap detector, dispatching on the kind in its config (``core.detectors.registry``)."""
    from core.detectors.registry import load_detector as load

    return load(folder)


__all__ = [
    "DETECTORS",
    "FitReport",
    "FormField",
    "HeatmapDetector",
    "Padim",
    "PadimConfig",
    "PatchCore",
    "PatchCoreConfig",
    "ScoreResult",
    "SearchConfig",
    "default_image_size",
    "detector_class",
    "detector_kinds",
    "load_detector",
    "make_detector",
    "register",
]

"""Heatmap detectors (PatchCore, PaDiM) over cached backbone features.

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
}


def __getattr__(name: str) -> Any:
    if name == "DETECTORS":
        from core.detectors.padim import Padim
        from core.detectors.patchcore import PatchCore

        return {"patchcore": PatchCore, "padim": Padim}
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'core.detectors' has no attribute {name!r}")


def load_detector(folder: str | Path):
    """Load any saved heatmap detector, dispatching on the kind in its config."""
    from core.errors import ModelFormatError
    from core.storage import read_model_config

    detectors = __getattr__("DETECTORS")
    kind = read_model_config(folder).get("kind")
    if kind not in detectors:
        raise ModelFormatError(
            f"{folder} holds a {kind!r} model; heatmap detectors are {', '.join(detectors)}.",
            "Load it on the page for that kind of model.",
        )
    return detectors[kind].load(folder)


__all__ = [
    "DETECTORS",
    "FitReport",
    "HeatmapDetector",
    "Padim",
    "PadimConfig",
    "PatchCore",
    "PatchCoreConfig",
    "ScoreResult",
    "SearchConfig",
    "default_image_size",
    "load_detector",
]

"""Heatmap detectors (PatchCore, PaDiM) over cached backbone features."""

from __future__ import annotations

from pathlib import Path

from core.detectors.base import FitReport, HeatmapDetector, ScoreResult, default_image_size
from core.detectors.padim import Padim, PadimConfig
from core.detectors.patchcore import PatchCore, PatchCoreConfig
from core.detectors.search import SearchConfig
from core.errors import ModelFormatError
from core.storage import read_model_config

DETECTORS: dict[str, type[HeatmapDetector]] = {"patchcore": PatchCore, "padim": Padim}


def load_detector(folder: str | Path) -> HeatmapDetector:
    """Load any saved heatmap detector, dispatching on the kind in its config."""
    kind = read_model_config(folder).get("kind")
    if kind not in DETECTORS:
        raise ModelFormatError(
            f"{folder} holds a {kind!r} model; heatmap detectors are {', '.join(DETECTORS)}.",
            "Load it on the page for that kind of model.",
        )
    return DETECTORS[kind].load(folder)


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

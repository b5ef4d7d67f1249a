"""The one table of heatmap detectors: name -> class. The CLI (``--detector`` and its options), the workbench's
fit form, the app's pages, evaluation and the contract test all read it.

Adding a detector is one module (a :class:`~core.detectors.base.HeatmapDetector` subclass with its config
dataclass, default input size, fit-form fields and CLI options) and one line in ``_TABLE`` below (or
:func:`register` at run time, which is how ``tests/test_detector_contract.py`` proves the point with a toy
detector defined in the test file itself).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ModelFormatError, WorkbenchError

# Classes are typed as ``type`` here: this module must not import core.detectors.base, which reads the registry.

# name -> "module:Class" (imported on first use: core.detectors stays importable without torch for bundles)
_TABLE: dict[str, str] = {
    "patchcore": "core.detectors.patchcore:PatchCore",
    "padim": "core.detectors.padim:Padim",
}
_registered: dict[str, type] = {}


@dataclass(frozen=True)
class FormField:
    """One field of a detector's fit form (the app draws it; :meth:`HeatmapDetector.from_settings` reads it).

    ``kind``: "choice" (``choices``), "int" or "float" (``minimum`` / ``maximum`` / ``step``).
    """

    name: str  # the config field it sets
    label: str
    kind: str
    default: Any
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    help: str = ""


def register(kind: str, cls: type) -> None:
    """Add (or replace) a detector class under ``kind`` for this process."""
    if getattr(cls, "kind", None) != kind:
        raise ValueError(f"{cls.__name__}.kind is {getattr(cls, 'kind', None)!r}, not {kind!r}")
    _registered[kind] = cls


def unregister(kind: str) -> None:
    _registered.pop(kind, None)


def detector_kinds() -> list[str]:
    """Every registered detector name, the built-in ones first."""
    return list(dict.fromkeys([*_TABLE, *_registered]))


def detector_class(kind: str) -> type:
    """The class registered as ``kind``; a WorkbenchError naming the choices otherwise."""
    if kind in _registered:
        return _registered[kind]
    if kind not in _TABLE:
        raise WorkbenchError(f"Unknown detector {kind!r}.", f"Choose one of: {', '.join(detector_kinds())}.")
    module, name = _TABLE[kind].split(":")
    cls = getattr(importlib.import_module(module), name)
    _registered[kind] = cls
    return cls


def detectors() -> dict[str, type]:
    """name -> class for every registered detector (imports them)."""
    return {k: detector_class(k) for k in detector_kinds()}


def make_detector(kind: str, **settings: Any) -> Any:
    """A new, unfitted detector of ``kind`` from settings (config field names; unknown ones are refused)."""
    return detector_class(kind).from_settings(**settings)


def load_detector(folder: str | Path) -> Any:
    """Load any saved heatmap detector, dispatching on the kind in its config."""
    from core.storage import read_model_config

    kind = read_model_config(folder).get("kind")
    if kind not in detector_kinds():
        raise ModelFormatError(
            f"{folder} holds a {kind!r} model; heatmap detectors are {', '.join(detector_kinds())}.",
            "Load it on the page for that kind of model.",
        )
    return detector_class(kind).load(folder)

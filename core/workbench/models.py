"""Model folders: the fit form's choices, fitting and saving a model, and listing, renaming, deleting,
loading and re-thresholding saved ones.

Models live in ``WORKBENCH_MODELS_DIR`` or ``<project>/models`` (git-ignored), one folder per model.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.errors import DatasetError, ModelFormatError, WorkbenchError
from core.paths import models_dir, short

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


# Sub-folders of the models folder that hold other kinds of models, not one heatmap model each.
RESERVED_SUBFOLDERS = frozenset({"gain"})


def backbone_choices() -> list[str]:
    """Backbones that can be loaded offline here, in display order."""
    from core.backbones import is_available, list_backbones

    return [b.name for b in list_backbones() if is_available(b.name)]


def coreset_methods() -> list[str]:
    """PatchCore coreset methods, ``greedy`` first."""
    from core.detectors.coreset import METHODS

    return ["greedy", *[m for m in METHODS if m != "greedy"]]


def image_size_choices(backbone: str, detector: str = "patchcore") -> list[int]:
    """Input sizes offered for a backbone, the detector's default first (multiples of 14 for the DINOv2 ViT, of 16
    for CNNs)."""
    from core.backbones import get_backbone_info
    from core.detectors import default_image_size

    if get_backbone_info(backbone).kind == "vit":
        sizes = [224, 168, 252, 280, 336]
    else:
        sizes = [208, 224, 160, 192, 256, 288, 320]
    first = default_image_size(detector, backbone)
    return [first, *[s for s in sizes if s != first]]


@dataclass
class FitSettings:
    """What the home page's fit form collects: the settings every detector shares, and the detector's own form
    fields (``options``: config field -> value, see ``HeatmapDetector.form_fields``)."""

    detector: str = "patchcore"
    backbone: str = "tf_efficientnet_lite0"
    image_size: int = 0  # 0: the detector chooses its scale from the training images (core.detectors.scale)
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def build(self):
        """The unfitted detector (the registry's class for ``detector``); bad values get a message."""
        from core.detectors.registry import detector_class

        cls = detector_class(self.detector)
        for f in cls.form_fields():
            value = self.options.get(f.name, f.default)
            if f.kind in ("int", "float") and not (
                    (f.minimum is None or value >= f.minimum) and (f.maximum is None or value <= f.maximum)):
                raise WorkbenchError(f"{f.label} {value} is outside [{f.minimum}, {f.maximum}].",
                                     f"Give a value in that range (default {f.default}).")
        return cls.from_settings(backbone=self.backbone, image_size=int(self.image_size), seed=int(self.seed),
                                 **self.options)


def detector_kinds() -> list[str]:
    """The detectors the fit form offers (the registry's, in its order)."""
    from core.detectors.registry import detector_kinds as kinds

    return kinds()


def detector_form(kind: str) -> tuple:
    """The fit-form fields of ``kind`` (``core.detectors.registry.FormField``)."""
    from core.detectors.registry import detector_class

    return detector_class(kind).form_fields()


def explains_patches(kind: str) -> bool:
    """Whether a detector can show its most anomalous patch beside the nearest normal one (PatchCore)."""
    from core.detectors.registry import detector_class

    return hasattr(detector_class(kind), "nearest_patch")


# Engine stage names -> the stage a user sees. Scoring during a fit is the calibration on held-out normals.
_STAGE_LABELS = {
    "extract features": "extraction",
    "coreset": "coreset",
    "padim statistics": "statistics",
    "score": "calibration",
}


class FitProgress:
    """Translates the engine's progress calls into user-facing stages and remembers their order.

    ``sink(stage_label, done, total)`` is what the page draws (e.g. an st.progress bar).
    After the coreset (PatchCore) an ``index`` stage is reported before calibration starts.
    """

    def __init__(self, sink: Callable[[str, int, int], None] | None = None) -> None:
        self.sink = sink or (lambda *_: None)
        self.stages: list[str] = []

    def __call__(self, stage: str, done: int, total: int) -> None:
        label = _STAGE_LABELS.get(stage, stage)
        if label == "calibration" and "coreset" in self.stages and "index" not in self.stages:
            self._enter("index")
            self.sink("index", 1, 1)
        self._enter(label)
        self.sink(label, int(done), int(max(total, 1)))

    def _enter(self, label: str) -> None:
        if not self.stages or self.stages[-1] != label:
            if label not in self.stages:
                self.stages.append(label)


@dataclass
class FitOutcome:
    """What :func:`fit_model` returns: the saved model folder, the fit report and the wall time."""

    folder: Path
    report: dict[str, Any]
    wall_seconds: float


def default_model_name(dataset_name: str, detector: str) -> str:
    """``<dataset>-<detector>-<YYYYmmdd-HHMMSS>``, with characters a folder name may not hold replaced by ``-``."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{dataset_name}-{detector}").strip("-.") or "model"
    return f"{base[:60]}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_model_name(name: str) -> str:
    """``name`` stripped, if it is a safe folder name; else a WorkbenchError saying what is allowed."""
    name = (name or "").strip()
    if not _NAME_RE.match(name) or ".." in name:
        raise WorkbenchError(
            f"{short(name)} is not a usable model name.",
            "Use 1-80 letters, digits, '.', '_' or '-', starting with a letter or digit.",
        )
    return name


def fit_model(
    dataset_root: str | Path,
    settings: FitSettings,
    name: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    cache=None,
    root: Path | None = None,
) -> FitOutcome:
    """Fit ``settings`` on the dataset's ``train_normal`` split and save it as ``<models>/<name>``.

    The folder is written under a temporary name and renamed into place, so the model list never shows a
    half-written model. An existing name is refused (rename or delete the old model first).
    """
    from core.data import index_dataset
    from core.evaluation import check_can_fit
    from core.features import FeatureCache

    index = index_dataset(dataset_root)
    check_can_fit(index)
    root = root or models_dir()
    name = check_model_name(name or default_model_name(index.name, settings.detector))
    final = root / name
    if final.exists():
        raise WorkbenchError(f"A model named {name!r} already exists.", "Choose another name, or delete that model.")
    det = settings.build()
    paths = [str(index.abs_path(r)) for r in index.split("train_normal")]
    tracker = progress if isinstance(progress, FitProgress) else FitProgress(progress)
    t0 = time.perf_counter()
    try:
        report = det.fit(
            paths, cache=cache if cache is not None else FeatureCache(), progress=tracker,
            fingerprint=index.fingerprint("train_normal"),
        )
    except DatasetError as exc:
        raise _fit_error_with_files(exc, index.root) from None
    wall = time.perf_counter() - t0
    rep = report.to_dict()
    rep["calibration"] = "left out" if det.leave_out_calibration else "held out"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
    try:
        det.save(tmp, extra={"dataset": str(index.root), "fit_report": rep, "name": name,
                             "created": time.strftime("%Y-%m-%d %H:%M:%S")})
        os.rename(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if final.exists():
            raise WorkbenchError(f"A model named {name!r} was saved meanwhile.", "Choose another name.") from None
        raise WorkbenchError(f"The model could not be saved in {root} ({exc}).",
                             "Check the disk space and rights.") from None
    return FitOutcome(final, rep, wall)


def fit_summary(rep: dict[str, Any]) -> str:
    """One sentence on what a fit used: how many images built the model and how the threshold was calibrated."""
    n_fit, n_cal = int(rep.get("n_fit_images", 0)), int(rep.get("n_calibration_images", 0))
    if rep.get("calibration") == "left out":
        text = (f"fitted on all {n_fit} training images; threshold calibrated on {n_cal} of them, each scored with "
                "its own patches left out of the model")
    else:
        text = f"fitted on {n_fit} training images; threshold calibrated on {n_cal} other normal images held out"
    scale = _scale_text({"scale": rep["scale"]}) if rep.get("scale") else ""
    # notes[0] is the scale's own description; what the fit decided beyond it (e.g. the high-resolution settings)
    decided = [str(n) for n in (rep.get("notes") or [])[1:]]
    return "; ".join([text, *([scale] if scale else []), *decided])


def _fit_error_with_files(exc: DatasetError, root: Path) -> DatasetError:
    """The engine's fit error (which names unreadable files itself), prefixed with the dataset."""
    return DatasetError(f"Cannot fit on dataset {root}: {exc.problem}", exc.fix)


@dataclass
class ModelInfo:
    """A saved model as the model list shows it (read from its config, not its arrays)."""

    name: str
    folder: Path
    kind: str = ""
    backbone: str = ""
    image_size: int = 0
    dataset: str = ""
    created: str = ""
    threshold: float | None = None
    threshold_source: str = ""
    details: str = ""
    scale: str = ""  # the input scale the model chose or was given, and why (ScaleChoice.describe)
    stamp: str = ""  # changes whenever the folder's config or arrays change (a cache key)
    error: str = ""  # set when the folder could not be read

    def row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "backbone": self.backbone,
            "size": self.image_size,
            "dataset": Path(self.dataset).name if self.dataset else "",
            "details": self.details,
            "threshold": None if self.threshold is None else round(self.threshold, 4),
            "threshold from": self.threshold_source,
            "created": self.created,
            "problem": self.error,
        }


def threshold_origin(info: ModelInfo, threshold: float) -> str:
    """Where a threshold in use comes from, for captions: the model's saved one, or one being tuned."""
    if abs(float(threshold) - float(info.threshold)) <= 1e-12 * max(1.0, abs(float(info.threshold))):
        return "saved"
    return "unsaved, being tuned on the Thresholds page"


def _scale_text(cfg: dict[str, Any]) -> str:
    """The model's scale line (models saved before format 2: their square size)."""
    from core.detectors.scale import ScaleChoice

    if isinstance(cfg.get("scale"), dict):
        try:
            return ScaleChoice.from_dict(cfg["scale"]).describe()
        except (KeyError, TypeError, ValueError):
            return ""
    size = int(cfg.get("image_size", 0) or 0)
    return f"scale: {size} x {size} px" if size else ""


def model_info(folder: str | Path) -> ModelInfo:
    """Read a model folder's config (not its arrays) into a :class:`ModelInfo`; problems go in ``error``."""
    from core.storage import CONFIG_NAME, read_model_config

    folder = Path(folder)
    try:
        cfg = read_model_config(folder)
    except WorkbenchError as exc:
        return ModelInfo(name=folder.name, folder=folder, error=str(exc))
    p = cfg.get("params") or {}
    norm = cfg.get("normalisation") or {}
    if cfg.get("kind") == "patchcore":
        details = f"{p.get('coreset')} coreset {p.get('ratio')}, bank {p.get('memory_bank_size')}"
        if (p.get("image_score_bank_size") or 0) > (p.get("memory_bank_size") or 0):
            details += f" (image score: {p['image_score_bank_size']})"
    elif cfg.get("kind") == "padim":
        details = f"{p.get('n_channels')} channels"
    else:
        details = ""
    created = cfg.get("created") or time.strftime(
        "%Y-%m-%d %H:%M:%S", time.localtime((folder / CONFIG_NAME).stat().st_mtime)
    )
    st = (folder / CONFIG_NAME).stat()
    return ModelInfo(
        name=folder.name,
        folder=folder,
        kind=str(cfg.get("kind", "")),
        backbone=str(cfg.get("backbone", "")),
        image_size=int(cfg.get("image_size", 0) or 0),
        scale=_scale_text(cfg),
        dataset=str(cfg.get("dataset", "")),
        created=str(created),
        threshold=norm.get("image_threshold"),
        threshold_source=str(norm.get("threshold_source", "")),
        details=details,
        stamp=f"{cfg.get('arrays_sha256', '')[:16]}:{st.st_mtime_ns}",
    )


def list_models(root: Path | None = None) -> list[ModelInfo]:
    """Every model folder under the models folder, newest first (unreadable ones carry an ``error``)."""
    root = root or models_dir()
    infos = [model_info(p) for p in root.iterdir()
             if p.is_dir() and not p.name.startswith(".") and p.name not in RESERVED_SUBFOLDERS]
    good = sorted((m for m in infos if not m.error), key=lambda m: m.created, reverse=True)
    return good + sorted((m for m in infos if m.error), key=lambda m: m.name)


def resolve_model(name_or_folder: str | Path, root: Path | None = None) -> Path:
    """A model folder given as a path or as a name under the models folder; else a ModelFormatError."""
    p = Path(name_or_folder)
    if p.is_dir():
        return p
    cand = (root or models_dir()) / str(name_or_folder)
    if cand.is_dir():
        return cand
    raise ModelFormatError(f"There is no model {str(name_or_folder)!r}.", "Pick one from the list of saved models.")


def rename_model(name: str, new_name: str, root: Path | None = None) -> Path:
    """Rename a saved model folder (an atomic rename); refuses to overwrite another model."""
    root = root or models_dir()
    src = root / check_model_name(name)
    dst = root / check_model_name(new_name)
    if not src.is_dir():
        raise WorkbenchError(f"There is no model {name!r}.", "Refresh the list of models.")
    if dst.exists():
        raise WorkbenchError(f"A model named {new_name!r} already exists.", "Choose another name.")
    os.rename(src, dst)
    return dst


def delete_model(name: str, root: Path | None = None) -> None:
    """Delete a saved model: moved aside first (atomic, so it vanishes from the list at once), then removed."""
    root = root or models_dir()
    src = root / check_model_name(name)
    if not src.is_dir():
        raise WorkbenchError(f"There is no model {name!r}.", "Refresh the list of models.")
    trash = root / f".deleted-{name}-{time.time_ns()}"
    os.rename(src, trash)
    shutil.rmtree(trash, ignore_errors=True)


def load_model(folder: str | Path):
    """The detector saved in ``folder`` (hash, version and kind checked by the engine)."""
    from core.detectors import load_detector

    return load_detector(folder)


def save_threshold(folder: str | Path, threshold: float, source: str = "set in the app") -> dict[str, Any]:
    """Store a new decision threshold in the model's config.json, atomically; returns the new config.

    Only ``normalisation.image_threshold`` and ``normalisation.threshold_source`` change: the arrays file and
    the ``arrays_sha256`` that guards it stay as they are, so the folder still loads. The threshold must lie
    above the held-out normals' median score, which the normalisation maps to 0 (1 = the threshold).
    """
    from core.storage import CONFIG_NAME, atomic_write_json, load_model_folder, model_folder_lock, read_model_config

    folder = Path(folder)
    read_model_config(folder)  # refuse a foreign folder before taking its lock
    with model_folder_lock(folder):  # no save of this model may interleave with the read-modify-write
        cfg = _threshold_config(folder, threshold, source)
        atomic_write_json(folder / CONFIG_NAME, cfg)
    load_model_folder(folder)  # the hash still matches: the folder loads as before
    return cfg


def _threshold_config(folder: Path, threshold: float, source: str) -> dict[str, Any]:
    from core.storage import read_model_config

    cfg = read_model_config(folder)
    norm = dict(cfg.get("normalisation") or {})
    if "image_median" not in norm:
        raise ModelFormatError(f"{folder} has no normalisation in its config.json.", "Refit the model.")
    t = float(threshold)
    if not np.isfinite(t) or t <= float(norm["image_median"]):
        raise WorkbenchError(
            f"Threshold {t:.6g} is not above the median score of held-out normal images "
            f"({float(norm['image_median']):.6g}); the model's score normalisation needs it to be.",
            "Pick a higher threshold (a threshold that low would call most normal images anomalous anyway).",
        )
    norm["image_threshold"] = t
    norm["threshold_source"] = str(source)
    cfg["normalisation"] = norm
    return cfg

"""The service layer the Streamlit pages call: plain Python over ``core``, never importing streamlit.

Pages read state, call a function here and draw the result. Everything that touches files (model folders,
uploaded zips, config rewrites) or does arithmetic on scores (curves, thresholds, grouping) lives here, so
it can be tested and reused without a browser.

Where things go:

* models: ``WORKBENCH_MODELS_DIR`` or ``<project>/models`` (git-ignored), one folder per model;
* uploaded dataset zips: ``<cache>/uploads/<sha256 prefix>/`` (extracted safely, size-limited).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from core.config import CACHE_DIR, PROJECT_ROOT
from core.errors import DatasetError, ImageReadError, ModelFormatError, WorkbenchError

# ------------------------------------------------------------------------------------------------------------
# Places and limits

UPLOADS_DIR = CACHE_DIR / "uploads"
MAX_ZIP_BYTES = int(float(os.environ.get("WORKBENCH_MAX_ZIP_MB", "500")) * 1e6)  # the zip itself
MAX_UNZIPPED_BYTES = int(float(os.environ.get("WORKBENCH_MAX_UNZIPPED_MB", "2000")) * 1e6)
MAX_ZIP_MEMBERS = 50_000
MAX_UPLOAD_IMAGE_BYTES = int(float(os.environ.get("WORKBENCH_MAX_IMAGE_MB", "25")) * 1e6)
MAP_STORE_SIZE = 112  # side of the anomaly maps kept per scored image (float16) for galleries
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")

# Okabe-Ito: a palette that stays distinguishable for the common colour-vision deficiencies.
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
NORMAL_COLOUR = "#0072B2"


def models_dir() -> Path:
    """Where saved models live (``WORKBENCH_MODELS_DIR`` or ``<project>/models``), created on demand."""
    root = Path(os.environ.get("WORKBENCH_MODELS_DIR") or PROJECT_ROOT / "models")
    root.mkdir(parents=True, exist_ok=True)
    return root


# ------------------------------------------------------------------------------------------------------------
# Datasets


def list_datasets() -> dict[str, Path]:
    """Name -> folder: the demo first, then folders under the data roots, then uploaded zips.

    ``available_datasets`` already lists each folder once; an upload that is one of them is not repeated.
    """
    from core.data.locate import available_datasets

    out: dict[str, Path] = dict(available_datasets())
    seen = {path.resolve() for path in out.values()}
    if UPLOADS_DIR.is_dir():
        for sub in sorted(UPLOADS_DIR.iterdir()):
            if sub.name.startswith(".") or not sub.is_dir():
                continue
            root = _find_dataset_root(sub)
            if root is not None and root.resolve() not in seen:
                seen.add(root.resolve())
                out[f"upload:{root.name}-{sub.name[:8]}"] = root
    return out


@dataclass
class DatasetOverview:
    """What the home page shows about a dataset."""

    name: str
    root: Path
    layout: str
    n_images: int
    is_domain_set: bool
    split_rows: list[dict[str, Any]]  # one row per split: split, images, then one column per class
    classes: list[str]
    warnings: list[str]


def check_browsable(root: str | Path) -> Path:
    """``root`` resolved, if the app may read it (under a data root, the demo or the uploads); else a DatasetError."""
    from core.data.locate import check_browsable as check

    return check(root, extra=(UPLOADS_DIR,))


def dataset_overview(root: str | Path) -> DatasetOverview:
    """Splits and class counts of a dataset folder (no image is decoded)."""
    from core.data import index_dataset

    check_browsable(root)
    index = index_dataset(root)
    classes = sorted(index.class_counts())
    rows = []
    for split, idx in index.splits.items():
        counts = index.class_counts(split) if idx else {}
        rows.append({"split": split, "images": len(idx), **{c: counts.get(c, 0) for c in classes}})
    return DatasetOverview(
        name=index.name,
        root=index.root,
        layout=index.layout,
        n_images=len(index.records),
        is_domain_set=index.is_domain_set,
        split_rows=rows,
        classes=classes,
        warnings=list(index.warnings),
    )


def thumbnails(root: str | Path, per_class: int = 2, size: int = 128) -> list[tuple[str, str, np.ndarray]]:
    """``(class, relative path, RGB thumbnail)`` for the first ``per_class`` images of each class.

    Ground-truth masks, when present, are drawn as a magenta contour. Unreadable images are skipped.
    """
    from core.data import index_dataset, read_image, read_mask
    from core.visualize import overlay

    check_browsable(root)
    index = index_dataset(root)
    by_class: dict[str, list] = {}
    for rec in index.records:
        lst = by_class.setdefault(rec.defect, [])
        if len(lst) < per_class:
            lst.append(rec)
    out = []
    for cls in sorted(by_class):
        for rec in by_class[cls]:
            try:
                img = read_image(index.abs_path(rec))
                mp = index.mask_path(rec)
                if mp is not None:
                    mask = read_mask(mp)
                    img = overlay(img, np.zeros(img.shape[:2], np.float32), mask=mask, alpha=0.0)
            except WorkbenchError:
                continue
            out.append((cls, rec.path, _thumb(img, size)))
    return out


def _thumb(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = size / max(h, w)
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def _safe_member_path(name: str, zip_name: str = "The zip") -> PurePosixPath | None:
    """The member's relative path, or None for a folder entry; raises for unsafe names."""
    raw = name.replace("\\", "/")
    if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw) or "\x00" in raw:
        raise DatasetError(
            f"{zip_name} holds an entry with an absolute path ({name!r}); it was not extracted.",
            "Zip the dataset folder with relative paths (e.g. `cd parent && zip -r data.zip mydataset`).",
        )
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise DatasetError(
            f"{zip_name} holds an entry that climbs out of its folder ({name!r}); it was not extracted.",
            "Zip the dataset folder with relative paths and no '..' parts.",
        )
    if not parts or raw.endswith("/"):
        return None
    return PurePosixPath(*parts)


def extract_zip(data: bytes, name: str = "upload.zip") -> Path:
    """Extract an uploaded dataset zip safely into ``cache/uploads/<hash>/`` and return the dataset folder.

    Refused: absolute paths, ``..`` parts, symlinks, more than ``MAX_ZIP_MEMBERS`` entries, and more than
    ``MAX_UNZIPPED_BYTES`` of content (counted while reading, so a lying header cannot bypass it). The
    extraction goes to a temporary folder renamed into place, so a half-extracted upload is never listed.
    """
    if len(data) > MAX_ZIP_BYTES:
        raise DatasetError(
            f"{name} is {len(data) / 1e6:.0f} MB; uploads are limited to {MAX_ZIP_BYTES / 1e6:.0f} MB.",
            "Upload a smaller zip, or copy the folder under the data root (../shared/datasets) instead.",
        )
    digest = hashlib.sha256(data).hexdigest()[:16]
    target = UPLOADS_DIR / digest
    if target.is_dir():
        root = _find_dataset_root(target)
        if root is not None:
            return root
        shutil.rmtree(target, ignore_errors=True)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{name} is not a readable zip file ({exc}).", "Upload a .zip of the dataset folder.") from None
    with zf:
        members = zf.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            raise DatasetError(
                f"{name} holds {len(members)} entries; at most {MAX_ZIP_MEMBERS} are extracted.",
                "Upload a smaller dataset or put the folder under the data root.",
            )
        plan: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        declared = 0
        for m in members:
            rel = _safe_member_path(m.filename, name)
            if rel is None:
                continue
            mode = (m.external_attr >> 16) & 0o170000
            if mode == stat.S_IFLNK:
                raise DatasetError(
                    f"{name} holds a symbolic link ({m.filename!r}); links are not extracted.",
                    "Zip the real files (zip -r without --symlinks).",
                )
            if rel.parts[0] == "__MACOSX" or rel.name.startswith("._"):
                continue
            declared += m.file_size
            plan.append((m, rel))
        if declared > MAX_UNZIPPED_BYTES:
            raise DatasetError(
                f"{name} unpacks to {declared / 1e6:.0f} MB; the limit is {MAX_UNZIPPED_BYTES / 1e6:.0f} MB.",
                "Upload a smaller dataset or put the folder under the data root.",
            )
        UPLOADS_DIR.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest}.", dir=UPLOADS_DIR))
        try:
            written = 0
            base = tmp.resolve()
            for m, rel in plan:
                dest = (tmp / Path(*rel.parts)).resolve()
                if base not in dest.parents:  # belt and braces after the name checks
                    raise DatasetError(f"Zip entry {m.filename!r} of {name} would land outside its folder.",
                                       "Re-zip the folder.")
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(dest, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > MAX_UNZIPPED_BYTES:
                            raise DatasetError(
                                f"{name} unpacks to more than {MAX_UNZIPPED_BYTES / 1e6:.0f} MB "
                                "(more than its headers declare).",
                                "Upload a smaller, well-formed zip.",
                            )
                        out.write(chunk)
            if _find_dataset_root(tmp) is None:
                raise DatasetError(
                    f"{name} does not hold a dataset in MVTec layout (no train/good or test/ folder found).",
                    "Zip a folder that holds train/good/, test/good/, test/<defect>/ (and optionally ground_truth/).",
                )
            try:
                os.rename(tmp, target)
            except OSError:  # another session extracted the same zip meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
        except zipfile.BadZipFile as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DatasetError(f"{name} is damaged ({exc}).", "Zip the folder again and upload it.") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    root = _find_dataset_root(target)
    assert root is not None
    return root


def _find_dataset_root(folder: Path, depth: int = 3) -> Path | None:
    """``folder`` if it is in MVTec layout, else the first such folder up to ``depth`` levels below."""
    if (folder / "train" / "good").is_dir() or (folder / "test").is_dir():
        return folder
    if depth <= 0:
        return None
    try:
        subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX")))
    except OSError:
        return None
    for sub in subs:
        found = _find_dataset_root(sub, depth - 1)
        if found is not None:
            return found
    return None


# ------------------------------------------------------------------------------------------------------------
# Detector settings and fitting

DETECTOR_KINDS = ("patchcore", "padim")


def backbone_choices() -> list[str]:
    """Backbones that can be loaded offline here, in display order."""
    from core.backbones import is_available, list_backbones

    return [b.name for b in list_backbones() if is_available(b.name)]


def coreset_methods() -> list[str]:
    from core.detectors.coreset import METHODS

    return ["greedy", *[m for m in METHODS if m != "greedy"]]


def image_size_choices(backbone: str) -> list[int]:
    """Input sizes offered for a backbone (multiples of 14 for the DINOv2 ViT, of 32 for CNNs)."""
    if "dinov2" in backbone or backbone.startswith("vit"):
        return [224, 168, 252, 280, 336]
    return [224, 160, 192, 256, 288, 320]


@dataclass
class FitSettings:
    """What the home page's fit form collects."""

    detector: str = "patchcore"
    backbone: str = "tf_efficientnet_lite0"
    image_size: int = 224
    coreset: str = "greedy"
    ratio: float = 0.01
    seed: int = 0

    def build(self):
        from core.detectors import Padim, PadimConfig, PatchCore, PatchCoreConfig

        if self.detector == "padim":
            return Padim(PadimConfig(backbone=self.backbone, image_size=int(self.image_size), seed=int(self.seed)))
        if self.detector != "patchcore":
            raise WorkbenchError(f"Unknown detector {self.detector!r}.", f"Choose one of: {', '.join(DETECTOR_KINDS)}.")
        if not 0 < float(self.ratio) <= 1:
            raise WorkbenchError(
                f"The coreset ratio {self.ratio} is outside (0, 1].", "Give a share of the patches, e.g. 0.01 (1 %)."
            )
        return PatchCore(
            PatchCoreConfig(
                backbone=self.backbone,
                image_size=int(self.image_size),
                coreset=self.coreset,
                ratio=float(self.ratio),
                seed=int(self.seed),
            )
        )


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
    folder: Path
    report: dict[str, Any]
    wall_seconds: float


def default_model_name(dataset_name: str, detector: str) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{dataset_name}-{detector}").strip("-.") or "model"
    return f"{base[:60]}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_model_name(name: str) -> str:
    """``name`` stripped, if it is a safe folder name; else a WorkbenchError saying what is allowed."""
    name = (name or "").strip()
    if not _NAME_RE.match(name) or ".." in name:
        raise WorkbenchError(
            f"{name!r} is not a usable model name.",
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
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
    try:
        det.save(tmp, extra={"dataset": str(index.root), "fit_report": rep, "name": name,
                             "created": time.strftime("%Y-%m-%d %H:%M:%S")})
        os.rename(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if final.exists():
            raise WorkbenchError(f"A model named {name!r} was saved meanwhile.", "Choose another name.") from None
        raise WorkbenchError(f"The model could not be saved in {root} ({exc}).", "Check the disk space and rights.") from None
    return FitOutcome(final, rep, wall)


def _fit_error_with_files(exc: DatasetError, root: Path) -> DatasetError:
    """The engine's fit error (which names unreadable files itself), prefixed with the dataset."""
    return DatasetError(f"Cannot fit on dataset {root}: {exc.problem}", exc.fix)


# ------------------------------------------------------------------------------------------------------------
# Saved models


@dataclass
class ModelInfo:
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
    infos = [model_info(p) for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    good = sorted((m for m in infos if not m.error), key=lambda m: m.created, reverse=True)
    return good + sorted((m for m in infos if m.error), key=lambda m: m.name)


def resolve_model(name_or_folder: str | Path, root: Path | None = None) -> Path:
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


# ------------------------------------------------------------------------------------------------------------
# Scores of a split


@dataclass
class SplitScores:
    """Raw scores (and small anomaly maps) of one split of a dataset under one model."""

    dataset: str
    split: str
    paths: list[str]  # absolute
    rel_paths: list[str]
    labels: np.ndarray  # 0 normal, 1 anomalous
    defects: list[str]
    masks: list[str | None]  # absolute mask paths
    scores: np.ndarray
    maps: np.ndarray  # N x m x m float16 raw maps, downsampled for galleries
    errors: dict[str, str]  # path -> message (unreadable images)
    ms_per_image: float
    is_domain_set: bool = False
    subsampled_from: int = 0  # >0 when only a sample of a larger split was scored

    def __len__(self) -> int:
        return len(self.paths)


def score_split(
    folder: str | Path,
    dataset_root: str | Path,
    split: str = "test",
    det=None,
    cache=None,
    limit: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> SplitScores:
    """Score every image of ``split`` (features through the disk cache). ``limit`` takes an even sample."""
    from core.data import index_dataset
    from core.features import FeatureCache

    check_browsable(dataset_root)
    det = det or load_model(folder)
    index = index_dataset(dataset_root)
    records = index.split(split)
    n_all = len(records)
    if limit and n_all > limit:
        pick = np.linspace(0, n_all - 1, int(limit)).round().astype(int)
        records = [records[i] for i in sorted(set(pick.tolist()))]
    paths = [str(index.abs_path(r)) for r in records]
    kw = {"progress": progress} if progress else {}
    res = det.score_paths(paths, cache=cache if cache is not None else FeatureCache(), **kw)
    keep = [records[i] for i in res.ok]
    m = min(MAP_STORE_SIZE, det.image_size)
    small = np.stack(
        [cv2.resize(mp.astype(np.float32), (m, m), interpolation=cv2.INTER_AREA) for mp in res.maps]
    ).astype(np.float16) if len(res.maps) else np.zeros((0, m, m), np.float16)
    return SplitScores(
        dataset=str(index.root),
        split=split,
        paths=[paths[i] for i in res.ok],
        rel_paths=[r.path for r in keep],
        labels=np.array([r.label for r in keep], dtype=np.int64),
        defects=[r.defect for r in keep],
        masks=[str(index.mask_path(r)) if r.mask else None for r in keep],
        scores=np.asarray(res.scores, dtype=np.float64),
        maps=small,
        errors={paths[i]: msg for i, msg in res.errors.items()},
        ms_per_image=res.ms_per_image,
        is_domain_set=index.is_domain_set,
        subsampled_from=n_all if len(records) < n_all else 0,
    )


def dataset_splits(dataset_root: str | Path) -> list[str]:
    """Non-empty splits of a dataset, ``test`` first."""
    from core.data import index_dataset

    check_browsable(dataset_root)
    index = index_dataset(dataset_root)
    names = [s for s, idx in index.splits.items() if idx]
    return sorted(names, key=lambda s: (s != "test", s))


def group_scores(results: Sequence[SplitScores], by: str) -> dict[str, np.ndarray]:
    """Scores grouped for histograms: ``by`` is "label" (normal / anomalous), "defect" or "split"."""
    groups: dict[str, list[float]] = {}
    for r in results:
        for lab, d, s in zip(r.labels, r.defects, r.scores):
            if by == "label":
                key = "normal" if lab == 0 else "anomalous"
            elif by == "defect":
                key = d
            elif by == "split":
                key = r.split
            else:
                raise ValueError(by)
            if r.is_domain_set:
                key = f"domain set {Path(r.dataset).name}" + ("" if by == "label" else f": {key}")
            groups.setdefault(key, []).append(float(s))
    order = sorted(groups, key=lambda k: (k.startswith("domain"), k not in ("normal", "good"), k))
    return {k: np.asarray(groups[k]) for k in order}


def group_colours(names: Sequence[str]) -> dict[str, str]:
    """Okabe-Ito colours: normal/good always blue, the others in palette order."""
    out, palette = {}, [c for c in OKABE_ITO if c != NORMAL_COLOUR]
    i = 0
    for n in names:
        if n in ("normal", "good"):
            out[n] = NORMAL_COLOUR
        else:
            out[n] = palette[i % len(palette)]
            i += 1
    return out


def curves(labels: np.ndarray, scores: np.ndarray) -> dict[str, Any] | None:
    """ROC and PR curves with AUROC and AP (sklearn, on raw scores); None with only one class."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    if len(np.unique(y)) < 2:
        return None
    fpr, tpr, _ = roc_curve(y, s)
    prec, rec, _ = precision_recall_curve(y, s)
    return {
        "fpr": fpr, "tpr": tpr, "auroc": float(roc_auc_score(y, s)),
        "precision": prec, "recall": rec, "ap": float(average_precision_score(y, s)),
        "prevalence": float(y.mean()),
    }


def confusion(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Counts and rates at ``threshold`` (anomalous when score >= threshold)."""
    from core.metrics import confusion_at

    return confusion_at(labels, scores, threshold)


def threshold_for_recall(labels: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The highest threshold whose recall reaches ``target`` (fewest false alarms at that recall)."""
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    pos = np.sort(s[y == 1])[::-1]
    if pos.size == 0:
        raise WorkbenchError("This split has no anomalous images, so recall is undefined.", "Pick a split with defects.")
    target = float(np.clip(target, 0.0, 1.0))
    k = max(1, int(np.ceil(target * pos.size - 1e-9)))
    return float(pos[k - 1])


def outcomes(labels: np.ndarray, scores: np.ndarray, threshold: float) -> list[str]:
    """TP / FP / TN / FN of each image at ``threshold``."""
    out = []
    for y, s in zip(np.asarray(labels), np.asarray(scores)):
        pred = s >= threshold
        out.append(("TP" if y == 1 else "FP") if pred else ("FN" if y == 1 else "TN"))
    return out


def flag_rate(scores: np.ndarray, threshold: float) -> float:
    from core.metrics import flag_rate as fr

    return fr(scores, threshold)


def normalisation_of(folder: str | Path):
    """The model's fixed normalisation (from config.json; no arrays loaded)."""
    from core.detectors.postprocess import Normalisation
    from core.storage import read_model_config

    return Normalisation.from_dict(read_model_config(folder)["normalisation"])


def overlay_image(
    image_path: str | Path,
    raw_map: np.ndarray,
    norm,
    mask_path: str | Path | None = None,
    pixel_threshold: float = 1.0,
    thumb: int | None = None,
) -> np.ndarray:
    """The image with its (normalised) heatmap, ground-truth contour and predicted region.

    ``raw_map`` may be smaller than the image (gallery maps); the predicted region is where the normalised
    map reaches ``pixel_threshold`` (1 = the 99.9th percentile of held-out normal pixels).
    """
    from core.data import read_image, read_mask
    from core.visualize import overlay

    img = read_image(image_path)
    if thumb:
        img = _thumb(img, thumb)
    amap = norm.normalise_map(np.asarray(raw_map, dtype=np.float32))
    mask = read_mask(mask_path) if mask_path else None
    return overlay(img, amap, mask=mask, predicted=amap >= pixel_threshold)


def heat_only(raw_map: np.ndarray, norm, vmax: float = 2.0) -> np.ndarray:
    from core.visualize import heat_colours

    return heat_colours(norm.normalise_map(np.asarray(raw_map, dtype=np.float32)) / vmax)


@dataclass
class ImageDetail:
    """One image rescored at full resolution, with its timing."""

    score: float
    normalised: float
    raw_map: np.ndarray
    ms: float


def score_one(det, image_path: str | Path, cache=None) -> ImageDetail:
    """Rescore one file (cached features): its exact full-size map and the time taken."""
    from core.features import FeatureCache

    t0 = time.perf_counter()
    res = det.score_paths([str(image_path)], cache=cache if cache is not None else FeatureCache())
    ms = 1000 * (time.perf_counter() - t0)
    if not res.ok:
        raise ImageReadError(res.errors.get(0, f"{image_path} could not be read."), "Check the file.")
    s = float(res.scores[0])
    return ImageDetail(s, float(det.normalisation.normalise([s])[0]), res.maps[0], ms)


@dataclass
class Explanation:
    """Why PatchCore scored an image high: its most anomalous patch and the nearest normal patch."""

    query_box: np.ndarray  # the image with the patch outlined
    query_crop: np.ndarray
    train_box: np.ndarray | None
    train_crop: np.ndarray | None
    train_path: str | None
    distance: float
    query_cell: tuple[int, int]
    train_cell: tuple[int, int]
    grid: tuple[int, int]
    note: str = ""


def _cell_box(shape: tuple[int, int], cell: tuple[int, int], grid: tuple[int, int], span: int = 3):
    """Pixel box (x0, y0, x1, y1) of a ``span`` x ``span`` cell neighbourhood centred on ``cell``."""
    h, w = shape
    gh, gw = grid
    ch, cw = h / gh, w / gw
    r, c = cell
    half = span / 2
    y0, y1 = int(max(0, (r + 0.5 - half) * ch)), int(min(h, np.ceil((r + 0.5 + half) * ch)))
    x0, x1 = int(max(0, (c + 0.5 - half) * cw)), int(min(w, np.ceil((c + 0.5 + half) * cw)))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def _boxed(img: np.ndarray, box, colour=(213, 94, 0)) -> tuple[np.ndarray, np.ndarray]:
    x0, y0, x1, y1 = box
    crop = img[y0:y1, x0:x1].copy()
    out = img.copy()
    cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), colour, max(1, round(min(img.shape[:2]) / 120)))
    return out, crop


def explain_patchcore(det, image: np.ndarray | str | Path) -> Explanation:
    """The most anomalous patch of ``image`` beside its nearest memory-bank patch, cropped from its training image.

    The patch is shown with its 3 x 3 neighbourhood (what PatchCore's locally aware features see).
    """
    from core.data import read_image

    if getattr(det, "kind", "") != "patchcore":
        raise WorkbenchError("Patch explanations exist only for PatchCore models.", "Load a PatchCore model.")
    img = read_image(image) if not isinstance(image, np.ndarray) else image
    feats = det.extractor().extract_images([img])
    nb = det.nearest_patch(feats)
    grid = tuple(nb["grid"])
    span = int(getattr(det.cfg, "neighbourhood", 3) or 1)
    qbox, qcrop = _boxed(img, _cell_box(img.shape[:2], nb["query_cell"], grid, span))
    tbox = tcrop = None
    note = ""
    tp = nb.get("train_path")
    if tp:
        try:
            timg = read_image(tp)
            tbox, tcrop = _boxed(timg, _cell_box(timg.shape[:2], nb["train_cell"], grid, span), (0, 114, 178))
        except WorkbenchError as exc:
            note = f"The training image cannot be shown: {exc}"
    else:
        note = "This model does not record its training images."
    return Explanation(qbox, qcrop, tbox, tcrop, tp, float(nb["distance"]), tuple(nb["query_cell"]),
                       tuple(nb["train_cell"]), grid, note)


# ------------------------------------------------------------------------------------------------------------
# Scoring uploaded images


@dataclass
class UploadResult:
    name: str
    ok: bool
    error: str = ""
    score: float | None = None
    normalised: float | None = None
    decision: str = ""
    ms: float | None = None
    image: np.ndarray | None = None
    raw_map: np.ndarray | None = None
    size: tuple[int, int] | None = None

    def row(self) -> dict[str, Any]:
        return {
            "file": self.name,
            "score": None if self.score is None else round(self.score, 6),
            "score_normalised": None if self.normalised is None else round(self.normalised, 4),
            "decision": self.decision if self.ok else "error",
            "ms": None if self.ms is None else round(self.ms, 1),
            "error": self.error,
        }


def score_uploads(
    det,
    files: Sequence[tuple[str, bytes]],
    threshold: float | None = None,
    max_bytes: int = MAX_UPLOAD_IMAGE_BYTES,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[UploadResult]:
    """Score uploaded images one by one (time per image includes decoding); bad files get an error row.

    A file that is too large, empty, corrupt, not an image (e.g. text renamed .png) or over the pixel limit is
    reported by name; the others are still scored.
    """
    thr = det.threshold if threshold is None else float(threshold)
    out: list[UploadResult] = []
    for i, (name, data) in enumerate(files):
        if progress:
            progress("score uploads", i, len(files))
        if len(data) > max_bytes:
            out.append(UploadResult(name, False, f"{name} is {len(data) / 1e6:.1f} MB, over the "
                                    f"{max_bytes / 1e6:.0f} MB limit per image. Fix: downscale or crop it."))
            continue
        t0 = time.perf_counter()
        try:
            from core.data import read_image_bytes

            img = read_image_bytes(bytes(data), name)
            res = det.score_images([img])
        except WorkbenchError as exc:
            out.append(UploadResult(name, False, str(exc)))
            continue
        ms = 1000 * (time.perf_counter() - t0)
        s = float(res.scores[0])
        out.append(UploadResult(
            name, True, score=s, normalised=float(det.normalisation.normalise([s])[0]),
            decision="anomalous" if s >= thr else "normal", ms=ms, image=img, raw_map=res.maps[0],
            size=(int(img.shape[1]), int(img.shape[0])),
        ))
    if progress:
        progress("score uploads", len(files), len(files))
    return out


def upload_overlay(result: UploadResult, norm, pixel_threshold: float = 1.0) -> np.ndarray:
    from core.visualize import overlay

    amap = norm.normalise_map(result.raw_map)
    return overlay(result.image, amap, predicted=amap >= pixel_threshold)


def results_csv(results: Sequence[UploadResult], threshold: float | None = None) -> str:
    """The rows of :meth:`UploadResult.row` as CSV text (plus the threshold used, when given)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    cols = ["file", "score", "score_normalised", "decision", "ms", "error"] + (["threshold"] if threshold is not None else [])
    w.writerow(cols)
    for r in results:
        row = r.row()
        w.writerow([("" if row[c] is None else row[c]) for c in cols[:6]] + ([f"{threshold:.6g}"] if threshold is not None else []))
    return buf.getvalue()



# ------------------------------------------------------------------------------------------------------------
# Cascade gate: fitted beside a model, measured once per image, tuned on cached measurements only
#
# Layout (the same as ``python -m core cascade`` writes, with the model folder itself as the detector):
#   <model>/cascade/gate/                  the gate (config.json + arrays.safetensors)
#   <model>/cascade/measured_val_mix.csv   per val_mix image: label, gate score + ms, heatmap score + ms (batch 1)
#   <model>/cascade/sweep.csv, pareto.csv  every (T_low, T_high) pair on val_mix, and the fronts
#   <model>/cascade/cascade.json           the automatic choice; ``policy`` is what the app saves
# The folder is written under a temporary name and swapped in, so a half-fitted gate is never read.

CASCADE_DIRNAME = "cascade"
GATE_ORDER = ("stats", "supervised", "distance", "autoencoder")  # cheapest to fit first
GATE_HELP = {
    "stats": "Robust image statistics + Mahalanobis distance to the normals; fits in a second, label-free.",
    "supervised": "A small classifier trained on train_normal + train_mix defects (needs labels); slower to fit.",
    "distance": "Distance to the training normals in a small embedding; label-free.",
    "autoencoder": "Reconstruction error of a tiny autoencoder on the normals; label-free, slowest to fit.",
}


def gate_kinds() -> list[str]:
    from core.cascade import GATES

    return [g for g in GATE_ORDER if g in GATES] + [g for g in GATES if g not in GATE_ORDER]


def cascade_dir(folder: str | Path) -> Path:
    return Path(folder) / CASCADE_DIRNAME


def cascade_stamp(folder: str | Path) -> str | None:
    """Changes whenever the cascade folder is rewritten or its policy saved (a cache key); None: no gate."""
    d = cascade_dir(folder)
    try:
        a = (d / "cascade.json").stat().st_mtime_ns
        b = (d / "measured_val_mix.csv").stat().st_mtime_ns
    except OSError:
        return None
    return f"{a}:{b}"


@dataclass
class GateFitOutcome:
    folder: Path
    kind: str
    report: dict[str, Any]
    wall_seconds: float
    n_measured: int


def fit_gate(
    model_folder: str | Path,
    kind: str = "stats",
    progress: Callable[[str, int, int], None] | None = None,
    det=None,
    limit: int | None = None,
    seed: int = 0,
) -> GateFitOutcome:
    """Fit a cascade gate for a saved model and measure it once, per image.

    The gate learns on train_normal + train_mix (label-free gates on the normals only) and is calibrated on
    val_mix; then every val_mix image is scored by the gate and by the model one at a time (batch 1, decoded
    images, no feature cache) and timed. Those measurements are what the Thresholds page tunes on: moving
    ``T_low``/``T_high`` afterwards never calls a model.
    """
    from core.cascade import make_gate
    from core.cascade.pipeline import CascadeOptions, check_mixed, load_split, run_sweep
    from core.data import index_dataset

    folder = Path(model_folder)
    info = model_info(folder)
    if info.error:
        raise ModelFormatError(info.error, "Pick a model that loads.")
    if not info.dataset or not Path(info.dataset).is_dir():
        raise DatasetError(f"The dataset this model was fitted on ({info.dataset or 'unknown'}) is not here.",
                           "Restore that folder, or fit a model on a dataset that is here.")
    if kind not in gate_kinds():
        raise WorkbenchError(f"Unknown gate {kind!r}.", f"Choose one of: {', '.join(gate_kinds())}.")
    prog = progress or (lambda *_: None)
    t0 = time.perf_counter()
    index = index_dataset(info.dataset)
    check_mixed(index)
    data = {}
    for i, split in enumerate(("train_normal", "train_mix", "val_mix")):
        prog("load images", i, 3)
        data[split] = load_split(index, split, limit)
    prog("load images", 3, 3)
    tn, tm, val = data["train_normal"], data["train_mix"], data["val_mix"]
    gate = make_gate(kind, seed=seed)
    report = gate.fit(tn.images + tm.images, np.r_[tn.labels, tm.labels], val.images, val.labels, prog)
    det = det if det is not None else load_model(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{CASCADE_DIRNAME}.", suffix=".tmp", dir=folder))
    try:
        gate.save(tmp / "gate")
        result = run_sweep(gate, det, val, CascadeOptions(gate=kind, limit=limit, seed=seed), out=tmp,
                           progress=lambda s, d, n: prog("measure (batch 1)", d, n))
        from core.storage import atomic_write_json

        atomic_write_json(tmp / "fit.json", {"gate": kind, "dataset": str(index.root), "model": folder.name,
                                             "model_stamp": info.stamp.split(":")[0], "limit": limit,
                                             "gate_report": report, "created": time.strftime("%Y-%m-%d %H:%M:%S")})
        final = cascade_dir(folder)
        old = None
        if final.exists():
            old = folder / f".{CASCADE_DIRNAME}-old-{time.time_ns()}"
            os.rename(final, old)
        os.rename(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return GateFitOutcome(final, kind, {**report, "choice": result["choice"], "gate_health": result["gate_health"]},
                          time.perf_counter() - t0, len(val.labels))


@dataclass
class CascadeState:
    """What the Thresholds page tunes on: cached per-image measurements and the saved cascade settings."""

    folder: Path
    gate: str
    measured: Any  # core.cascade.Measured (val_mix)
    defects: list[str]
    config: dict[str, Any]  # cascade.json
    stamp: str

    @property
    def saved_policy(self) -> dict[str, Any]:
        return dict(self.config.get("policy") or {})

    def __len__(self) -> int:
        return int(len(self.measured.labels))


def load_cascade(folder: str | Path) -> CascadeState | None:
    """The model's gate measurements and settings, or None when no gate was fitted for it."""
    import json

    from core.cascade.pipeline import read_measured

    d = cascade_dir(folder)
    stamp = cascade_stamp(folder)
    if stamp is None:
        return None
    try:
        cfg = json.loads((d / "cascade.json").read_text())
        defects, m = read_measured(d / "measured_val_mix.csv")
    except (OSError, ValueError, KeyError) as exc:
        raise ModelFormatError(f"The cascade files in {d} cannot be read ({exc}).",
                               "Fit the gate again from the Data & models page.") from None
    return CascadeState(Path(folder), str(cfg.get("gate", "")), m, defects, cfg, stamp)


def cascade_sweep(measured, heat_threshold: float, heat_scale: float = 1.0) -> tuple[list[dict], list[dict]]:
    """Every candidate (T_low, T_high) pair at this heatmap threshold, and the recall-vs-latency Pareto front.

    The same rows as :func:`core.cascade.sweep` (same candidates, end points and metrics; ``latency_p95_ms`` is
    left out of the cascade rows) computed with prefix sums over the images sorted by gate score instead of one
    pass per pair, so that moving the heatmap threshold with thousands of measured images stays interactive.
    Pure numpy on the cached measurements: no model call.
    """
    from core.cascade import Policy
    from core.cascade.sweep import candidate_thresholds, degenerate_note, gate_threshold_f1, pair_metrics

    y = np.asarray(measured.labels, np.int64)
    g = np.asarray(measured.gate_scores, np.float64)
    n = y.size
    thr = float(heat_threshold)
    common = dict(heat_threshold=thr, heat_scale=float(heat_scale))
    rows = [pair_metrics(measured, Policy(mode="heatmap_only", **common)),
            pair_metrics(measured, Policy(mode="gate_only", gate_threshold=gate_threshold_f1(y, g), **common))]
    cands = candidate_thresholds(g)
    order = np.argsort(g, kind="stable")
    gs = g[order]
    dh = (np.asarray(measured.heat_scores, np.float64) >= thr)[order]
    ys = y[order]

    def csum(a):
        return np.r_[0.0, np.cumsum(np.asarray(a, np.float64))]

    c_pos, c_hpos, c_hneg = csum(ys), csum(dh & (ys == 1)), csum(dh & (ys == 0))
    c_hms = csum(np.asarray(measured.heat_ms, np.float64)[order])
    gate_total = float(np.sum(measured.gate_ms))
    n_pos = float(ys.sum())
    lt = np.searchsorted(gs, cands, "left")  # images with gate score < t
    le = np.searchsorted(gs, cands, "right")  # images with gate score <= t
    i_lo, i_hi = np.triu_indices(cands.size)
    a, b = lt[i_lo], le[i_hi]  # band [a, b) goes to the heatmap model; [b, n) is gate-anomalous
    b = np.maximum(a, b)
    above_pos = c_pos[n] - c_pos[b]
    above_neg = (n - b) - above_pos
    tp = above_pos + (c_hpos[b] - c_hpos[a])
    fp = above_neg + (c_hneg[b] - c_hneg[a])
    fn = n_pos - tp
    tn = (n - n_pos) - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        rec = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
    nn = max(n, 1)
    lat = (gate_total + (c_hms[b] - c_hms[a])) / nn
    for k in range(i_lo.size):
        row = {"mode": "cascade", "t_low": float(cands[i_lo[k]]), "t_high": float(cands[i_hi[k]]),
               "gate_threshold": None, "accuracy": float((tp[k] + tn[k]) / nn), "precision": float(prec[k]),
               "recall": float(rec[k]), "f1": float(f1[k]), "heatmap_call_rate": float((b[k] - a[k]) / nn),
               "gate_normal_rate": float(a[k] / nn), "gate_anomalous_rate": float((n - b[k]) / nn),
               "positive_rate": float((tp[k] + fp[k]) / nn), "latency_ms": float(lat[k]), "latency_p95_ms": None}
        row["note"] = degenerate_note(row)
        rows.append(row)
    return rows, fast_pareto_front(rows, "latency_ms")


def fast_pareto_front(rows: list[dict[str, Any]], cost: str = "latency_ms") -> list[dict[str, Any]]:
    """:func:`core.cascade.pareto_front` (rows not dominated in higher recall / lower cost, sorted by cost, one row
    per operating point) with a numpy dominance matrix instead of a Python double loop."""
    if not rows:
        return []
    r = np.array([x["recall"] for x in rows], np.float64)
    c = np.array([x[cost] for x in rows], np.float64)
    ge, le = r[None, :] >= r[:, None], c[None, :] <= c[:, None]
    strict = (r[None, :] > r[:, None]) | (c[None, :] < c[:, None])
    dominated = (ge & le & strict).any(axis=1)
    seen, out = set(), []
    for i in sorted(np.flatnonzero(~dominated), key=lambda i: (c[i], -r[i])):
        x = rows[i]
        key = (x["mode"], x["t_low"], x["t_high"], x["gate_threshold"])
        if key not in seen:
            seen.add(key)
            out.append(x)
    return out


def cascade_point(measured, t_low: float, t_high: float, heat_threshold: float) -> dict[str, Any]:
    """Metrics of one (T_low, T_high) on cached measurements: confusion counts, accuracy, precision, recall, F1,
    heatmap call rate, gate-decided shares and expected mean latency (measured gate ms + heatmap ms if routed)."""
    from core.cascade import Policy
    from core.cascade.routing import HEATMAP, decisions_for, routes_for

    lo, hi = float(min(t_low, t_high)), float(max(t_low, t_high))
    pol = Policy(mode="cascade", t_low=lo, t_high=hi, heat_threshold=float(heat_threshold))
    y = np.asarray(measured.labels, np.int64)
    routes = routes_for(measured.gate_scores, pol)
    dec = decisions_for(measured.gate_scores, measured.heat_scores, routes, pol)
    lat = measured.latency(routes, "cascade")
    tp = int(((dec == 1) & (y == 1)).sum())
    fp = int(((dec == 1) & (y == 0)).sum())
    fn = int(((dec == 0) & (y == 1)).sum())
    tn = int(((dec == 0) & (y == 0)).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    n = max(1, y.size)
    heat_all = float(np.mean(measured.heat_ms)) if y.size else 0.0
    return {
        "t_low": lo, "t_high": hi, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "accuracy": (tp + tn) / n, "precision": prec, "recall": rec,
        "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
        "heatmap_call_rate": float((routes == HEATMAP).mean()) if y.size else 0.0,
        "gate_normal_rate": float((routes == 0).mean()) if y.size else 0.0,
        "gate_anomalous_rate": float((routes == 1).mean()) if y.size else 0.0,
        "latency_ms": float(lat.mean()) if y.size else 0.0,
        "heatmap_only_latency_ms": heat_all,
        "gate_ms": float(np.mean(measured.gate_ms)) if y.size else 0.0,
    }


def cascade_pick_for_recall(rows: list[dict[str, Any]], target_recall: float,
                            precision_floor: float | None = None) -> tuple[float, float, str]:
    """The cascade's automatic choice (:func:`core.cascade.choose`: cheapest mean latency meeting the recall and
    precision floors) with the recall floor set to ``target_recall``; returned as (T_low, T_high, note).

    A ``gate_only`` choice at threshold T becomes T_low = T_high = T; ``heatmap_only`` becomes (0, 1): every image
    goes to the heatmap model.
    """
    from core.cascade import choose

    base = next(r for r in rows if r["mode"] == "heatmap_only")
    c = choose(rows, margin=float(base["recall"]) - float(target_recall), precision_floor=precision_floor)
    r = c.row
    if r["mode"] == "cascade":
        lo, hi = float(r["t_low"]), float(r["t_high"])
    elif r["mode"] == "gate_only":
        lo = hi = float(r["gate_threshold"])
    else:
        lo, hi = 0.0, 1.0
    note = c.note or (f"{r['mode']}: recall {r['recall']:.3f}, precision {r['precision']:.3f}, "
                      f"{r['latency_ms']:.1f} ms/image on val_mix ({c.n_eligible} of {len(rows)} points qualify)")
    if c.n_eligible == 0:
        note = (f"No point reaches recall {target_recall:.2f} with precision ≥ {c.precision_floor:.2f} on val_mix "
                f"(the heatmap model alone reaches {base['recall']:.3f}); every image goes to the heatmap model.")
    return lo, hi, note


def save_cascade_policy(folder: str | Path, t_low: float, t_high: float, heat_threshold: float,
                        source: str = "set in the app") -> dict[str, Any]:
    """Store (T_low, T_high) and the heatmap threshold as the cascade's policy in cascade.json, atomically."""
    import json

    from core.cascade import Policy
    from core.storage import atomic_write_json

    path = cascade_dir(folder) / "cascade.json"
    if not path.is_file():
        raise WorkbenchError(f"{Path(folder).name} has no fitted gate.", "Fit a gate on the Data & models page.")
    lo, hi = float(t_low), float(t_high)
    if not (np.isfinite(lo) and np.isfinite(hi) and 0.0 <= lo <= hi <= 1.0):
        raise WorkbenchError(f"T_low={lo:.4g}, T_high={hi:.4g} are not valid.", "Give 0 <= T_low <= T_high <= 1.")
    cfg = json.loads(path.read_text())
    old = dict(cfg.get("policy") or {})
    pol = Policy(mode="cascade", t_low=lo, t_high=hi, heat_threshold=float(heat_threshold),
                 heat_scale=float(old.get("heat_scale", 1.0)))
    cfg.setdefault("auto_policy", old)
    cfg["policy"] = pol.to_dict()
    cfg["policy_source"] = f"{source} ({time.strftime('%Y-%m-%d %H:%M:%S')})"
    atomic_write_json(path, cfg)
    return cfg

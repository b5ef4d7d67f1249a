"""Dataset index: which images exist, their labels, masks and splits. Built from the folder layout only
(no image is decoded), so indexing thousands of files takes well under a second.

Two layouts are detected:

``mvtec``  (a ``train/good`` or a ``test/`` folder exists)::

    root/train/good/**.png                     normal training images
    root/test/good/**.png                      normal test images
    root/test/<defect>/**.png                  defective test images, class = folder name
    root/ground_truth/<defect>/<stem>_mask.png pixel masks (0/255), optional

``folders``  (one folder per label)::

    root/<label>/**.png                        label good|normal|ok|nominal -> normal, else a defect class
    root/masks/<label>/<stem>_mask.png         optional masks (or root/ground_truth/<label>/...)

Names of normal folders are matched case-insensitively and recorded with ``defect="good"``.
Images anywhere below a label folder count. Hidden files and folders are skipped; other files are
skipped silently, except files whose extension is an image format we do not read (``.webp``,
``.heic``, ...), which are listed in ``warnings``. Symlinked folders are followed once (a loop is
detected and skipped with a warning). Records are sorted by path, so the index is deterministic.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from core.data.images import IMAGE_EXTENSIONS
from core.data.splits import DEFAULT_RATIOS, SPLIT_NAMES, check_ratios, compute_splits
from core.errors import DatasetError
from core.storage import atomic_write_json

NORMAL_NAMES = {"good", "normal", "ok", "nominal"}
MASK_FOLDER_NAMES = ("masks", "ground_truth")
INDEX_FORMAT = "workbench-dataset-index"
INDEX_VERSION = 1
# Image formats we recognise but do not read: such files are reported, not silently dropped.
FOREIGN_IMAGE_EXTENSIONS = {
    ".webp", ".gif", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".j2k", ".jpx", ".ppm", ".pgm", ".pbm",
    ".pnm", ".dng", ".raw", ".cr2", ".nef", ".arw", ".exr", ".hdr", ".svg", ".ico", ".dcm", ".dib", ".jfif",
}
_SKIP_DIR_NAMES = {"__MACOSX"}


@dataclass(frozen=True)
class ImageRecord:
    path: str  # posix path relative to the dataset root
    label: int  # 0 normal, 1 anomalous
    defect: str  # "good" for normal, else the defect class (folder name)
    mask: str | None  # relative path of the ground-truth mask, or None
    origin: str  # "train" or "test": where it sits in the layout (folder layout: always "test")


@dataclass
class DatasetIndex:
    root: Path
    name: str
    layout: str  # "mvtec" or "folders"
    records: list[ImageRecord]
    splits: dict[str, list[int]]  # split name -> indices into records
    warnings: list[str] = field(default_factory=list)
    ratios: tuple[float, float, float] = DEFAULT_RATIOS
    seed: int = 0

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    # -- splits ----------------------------------------------------------------------------------
    def _indices(self, name: str) -> list[int]:
        if name not in self.splits:
            raise DatasetError(
                f"Dataset {self.name!r} has no split {name!r}.",
                f"Use one of: {', '.join(self.splits)}.",
            )
        return self.splits[name]

    def split(self, name: str) -> list[ImageRecord]:
        """The records of split ``name``; a :class:`DatasetError` if it is unknown or empty."""
        idx = self._indices(name)
        if not idx:
            raise DatasetError(self._empty_problem(name), self._empty_fix(name))
        return [self.records[i] for i in idx]

    def _empty_problem(self, name: str) -> str:
        n_normal = sum(1 for r in self.records if r.label == 0)
        n_pool = len(self.splits.get("test", []))
        if name == "train_normal":
            if n_normal == 0:
                why = "the dataset has no normal (defect-free) images at all - it is a domain set"
            else:
                why = "none of its normal images sits in the training folder"
            return f"Split 'train_normal' of dataset {self.name!r} is empty: {why}."
        if name == "test":
            return f"Split 'test' of dataset {self.name!r} is empty: the dataset has no test images."
        return (
            f"Split {name!r} of dataset {self.name!r} is empty: the test pool has only {n_pool} image(s), "
            f"too few to cut {self.ratios[0]:.0%}/{self.ratios[1]:.0%}/{self.ratios[2]:.0%} into "
            "train_mix/val_mix/test_mix."
        )

    def _empty_fix(self, name: str) -> str:
        if name == "train_normal":
            where = "train/good/" if self.layout == "mvtec" else "a good/ (or normal/, ok/) folder"
            return (
                f"Fitting needs normal images: add them in {where}. A domain set can only be used to test "
                "a detector fitted on another dataset."
            )
        if name == "test":
            return "Put images in test/good/ and test/<defect>/ (MVTec layout) or in label folders."
        return "Add more labelled images (normal and defective) to the test pool, or change the split ratios."

    # -- paths -----------------------------------------------------------------------------------
    def abs_path(self, rec: ImageRecord) -> Path:
        return self.root / rec.path

    def mask_path(self, rec: ImageRecord) -> Path | None:
        return self.root / rec.mask if rec.mask else None

    # -- summaries -------------------------------------------------------------------------------
    @property
    def is_domain_set(self) -> bool:
        """True when the dataset has no normal images at all (only usable for cross-domain testing)."""
        return not any(r.label == 0 for r in self.records)

    def _records_of(self, split: str | None) -> list[ImageRecord]:
        if split is None:
            return list(self.records)
        return [self.records[i] for i in self._indices(split)]

    def class_counts(self, split: str | None = None) -> dict[str, int]:
        """Images per class (``"good"`` and each defect), sorted by class name."""
        counts = Counter(r.defect for r in self._records_of(split))
        return {k: counts[k] for k in sorted(counts)}

    def fingerprint(self, split: str | None = None) -> str:
        """SHA-256 over the sorted (path, size, mtime_ns) of the images (and masks) - cheap, no reads."""
        entries: set[str] = set()
        for rec in self._records_of(split):
            for rel in (rec.path, rec.mask):
                if rel is None:
                    continue
                try:
                    st = (self.root / rel).stat()
                    entries.add(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}")
                except OSError:
                    entries.add(f"{rel}\0missing")
        h = hashlib.sha256()
        for line in sorted(entries):
            h.update(line.encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()

    def summary(self) -> str:
        counts = {k: len(v) for k, v in self.splits.items()}
        return (
            f"{self.name} ({self.layout}): {len(self.records)} images, classes {self.class_counts()}, "
            f"splits {counts}" + (" [domain set: no normal images]" if self.is_domain_set else "")
        )

    # -- JSON ------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "root": str(self.root),
            "name": self.name,
            "layout": self.layout,
            "ratios": list(self.ratios),
            "seed": self.seed,
            "records": [
                {"path": r.path, "label": r.label, "defect": r.defect, "mask": r.mask, "origin": r.origin}
                for r in self.records
            ],
            "splits": {k: list(v) for k, v in self.splits.items()},
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], root: str | Path | None = None) -> "DatasetIndex":
        if not isinstance(d, dict) or d.get("format") != INDEX_FORMAT:
            raise DatasetError("This JSON is not a dataset index written by the workbench.",
                               "Re-index the dataset folder.")
        version = d.get("version")
        if not isinstance(version, int) or version > INDEX_VERSION:
            raise DatasetError(
                f"Dataset index version {version!r} is newer than this product reads ({INDEX_VERSION}).",
                "Update the product or re-index the dataset.",
            )
        try:
            records = [
                ImageRecord(str(r["path"]), int(r["label"]), str(r["defect"]),
                            None if r.get("mask") is None else str(r["mask"]), str(r["origin"]))
                for r in d["records"]
            ]
            n = len(records)
            splits = {str(k): [int(i) for i in v] for k, v in d["splits"].items()}
            if any(not 0 <= i < n for v in splits.values() for i in v):
                raise ValueError("split index out of range")
            return cls(
                root=Path(root if root is not None else d["root"]),
                name=str(d["name"]),
                layout=str(d["layout"]),
                records=records,
                splits=splits,
                warnings=[str(w) for w in d.get("warnings", [])],
                ratios=tuple(float(x) for x in d.get("ratios", DEFAULT_RATIOS)),  # type: ignore[arg-type]
                seed=int(d.get("seed", 0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DatasetError(f"The dataset index is malformed ({exc}).", "Re-index the dataset folder.") from None


def save_index(index: DatasetIndex, path: str | Path) -> Path:
    """Write the index as JSON, atomically."""
    path = Path(path)
    atomic_write_json(path, index.to_json())
    return path


def load_index(path: str | Path, root: str | Path | None = None) -> DatasetIndex:
    """Read an index written by :func:`save_index` (``root`` overrides the dataset root it names)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"Dataset index {path} does not exist.", "Index the dataset first.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"Dataset index {path} cannot be read ({exc}).", "Re-index the dataset folder.") from None
    return DatasetIndex.from_json(d, root)


# ------------------------------------------------------------------------------------------------
# Indexing


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in _SKIP_DIR_NAMES


class _Walker:
    """Recursive listing that follows symlinked folders once and never loops."""

    def __init__(self, root: Path, warnings: list[str]) -> None:
        self.root = root
        self.warnings = warnings
        self.foreign: Counter[tuple[str, str]] = Counter()  # (top folder, ext) -> count

    def files(self, folder: Path) -> list[Path]:
        """Image files (by extension) below ``folder``, recursively, as absolute paths, sorted."""
        out: list[Path] = []
        seen: set[tuple[int, int]] = set()
        stack = [folder]
        top = self._rel(folder)
        while stack:
            d = stack.pop()
            try:
                st = d.stat()
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                self.warnings.append(
                    f"Skipped {self._rel(d)}: a symlink to a folder already listed (a loop or a duplicate link)."
                )
                continue
            seen.add(key)
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError as exc:
                self.warnings.append(f"Could not list {self._rel(d)} ({exc.strerror or exc}); skipped.")
                continue
            for e in entries:
                if _hidden(e.name):
                    continue
                try:
                    is_dir = e.is_dir(follow_symlinks=True)
                    is_file = e.is_file(follow_symlinks=True)
                except OSError:
                    is_dir = is_file = False
                if is_dir:
                    stack.append(Path(e.path))
                    continue
                ext = os.path.splitext(e.name)[1].lower()
                if not is_file:
                    if ext in IMAGE_EXTENSIONS and e.is_symlink():
                        self.warnings.append(f"Skipped {self._rel(Path(e.path))}: a broken symlink.")
                    continue
                if ext in IMAGE_EXTENSIONS:
                    out.append(Path(e.path))
                elif ext in FOREIGN_IMAGE_EXTENSIONS:
                    self.foreign[(top, ext)] += 1
        return sorted(out, key=lambda p: p.as_posix())

    def flush_foreign(self) -> None:
        for (top, ext), n in sorted(self.foreign.items()):
            self.warnings.append(
                f"Skipped {n} {ext} file(s) in {top}/: that format is not read "
                f"(convert to one of {', '.join(sorted(IMAGE_EXTENSIONS))})."
            )
        self.foreign.clear()

    def _rel(self, p: Path) -> str:
        try:
            return p.relative_to(self.root).as_posix() or "."
        except ValueError:
            return str(p)


def _subdirs(folder: Path) -> list[Path]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return []
    out = []
    for e in entries:
        if _hidden(e.name):
            continue
        try:
            if e.is_dir(follow_symlinks=True):
                out.append(Path(e.path))
        except OSError:
            continue
    return out


def _top_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (not below it)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return []
    out = []
    for e in entries:
        if _hidden(e.name) or os.path.splitext(e.name)[1].lower() not in IMAGE_EXTENSIONS:
            continue
        try:
            if e.is_file(follow_symlinks=True):
                out.append(Path(e.path))
        except OSError:
            continue
    return out


def _mask_table(walker: _Walker, gt_dir: Path) -> dict[tuple[str, str], Path]:
    """(sub-folder, stem) -> mask file, for masks named ``<stem>_mask.<ext>`` or ``<stem>.<ext>``."""
    table: dict[tuple[str, str], Path] = {}
    if not gt_dir.is_dir():
        return table
    exact: dict[tuple[str, str], Path] = {}
    loose: dict[tuple[str, str], Path] = {}
    for p in walker.files(gt_dir):
        sub = p.parent.relative_to(gt_dir).as_posix()
        sub = "" if sub == "." else sub
        stem = p.stem
        if stem.endswith("_mask"):
            exact.setdefault((sub, stem[: -len("_mask")]), p)
        else:
            loose.setdefault((sub, stem), p)
    table.update(loose)
    table.update(exact)  # "<stem>_mask" wins over "<stem>"
    return table


def _find_mask(table: dict[tuple[str, str], Path], rel_in_class: Path) -> Path | None:
    sub = rel_in_class.parent.as_posix()
    sub = "" if sub == "." else sub
    stem = rel_in_class.stem
    return table.get((sub, stem)) or table.get(("", stem))


def _is_normal(label: str) -> bool:
    return label.lower() in NORMAL_NAMES


def _missing_folder_error(root: Path) -> DatasetError:
    parent = root.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    hint = ""
    if parent.is_dir():
        names = [p.name for p in _subdirs(parent)][:20]
        hint = f" {parent} contains: {', '.join(names)}." if names else f" {parent} has no sub-folders."
    return DatasetError(
        f"Dataset folder {root} does not exist.",
        "Check the path (it is relative to the folder you started from)." + hint,
    )


def _looks_mvtec(folder: Path) -> bool:
    return (folder / "train" / "good").is_dir() or (folder / "test").is_dir()


def index_dataset(
    root: str | Path, *, ratios: Iterable[float] = DEFAULT_RATIOS, seed: int = 0
) -> DatasetIndex:
    """Index the dataset at ``root`` (layout auto-detected) and compute its splits."""
    ratios_t = check_ratios(tuple(ratios))
    root = Path(os.path.normpath(Path(os.path.expanduser(str(root))).absolute()))
    if not root.exists():
        raise _missing_folder_error(root)
    if not root.is_dir():
        raise DatasetError(f"Dataset path {root} is a file, not a folder.", "Give the folder that holds the images.")
    name = root.name or root.resolve().name or str(root)
    warnings: list[str] = []
    walker = _Walker(root, warnings)

    if _looks_mvtec(root):
        layout = "mvtec"
        records = _index_mvtec(root, walker, warnings)
    else:
        layout = "folders"
        records = _index_folders(root, walker, warnings)
    walker.flush_foreign()

    if not records:
        where = "train/good/ or test/<class>/" if layout == "mvtec" else "its label folders"
        raise DatasetError(
            f"Dataset folder {root} holds no images in {where} "
            f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))}).",
            "Check that this is the right folder and that the images have one of those extensions.",
        )
    records.sort(key=lambda r: r.path)
    splits = compute_splits(records, layout, ratios_t, seed)
    return DatasetIndex(root=root, name=name, layout=layout, records=records, splits=splits,
                        warnings=warnings, ratios=ratios_t, seed=int(seed))


def _index_mvtec(root: Path, walker: _Walker, warnings: list[str]) -> list[ImageRecord]:
    records: list[ImageRecord] = []
    gt_root = root / "ground_truth"
    train_dir = root / "train"
    for cls_dir in _subdirs(train_dir) if train_dir.is_dir() else []:
        files = walker.files(cls_dir)
        if not _is_normal(cls_dir.name):
            if files:
                warnings.append(
                    f"Skipped {len(files)} image(s) in train/{cls_dir.name}/: only normal images "
                    "(train/good/) are used for training in MVTec layout."
                )
            continue
        for p in files:
            records.append(ImageRecord(p.relative_to(root).as_posix(), 0, "good", None, "train"))
    test_dir = root / "test"
    if test_dir.is_dir():
        loose = _top_images(test_dir)
        if loose:
            warnings.append(
                f"Skipped {len(loose)} image(s) lying directly in test/: put them in test/good/ or test/<defect>/."
            )
        for cls_dir in _subdirs(test_dir):
            files = walker.files(cls_dir)
            if not files:
                warnings.append(f"Folder test/{cls_dir.name}/ has no images.")
                continue
            normal = _is_normal(cls_dir.name)
            table = {} if normal else _mask_table(walker, gt_root / cls_dir.name)
            missing = 0
            for p in files:
                rel = p.relative_to(root).as_posix()
                if normal:
                    records.append(ImageRecord(rel, 0, "good", None, "test"))
                    continue
                m = _find_mask(table, p.relative_to(cls_dir))
                if m is None:
                    missing += 1
                records.append(
                    ImageRecord(rel, 1, cls_dir.name, m.relative_to(root).as_posix() if m else None, "test")
                )
            if missing:
                warnings.append(
                    f"{missing} of {len(files)} image(s) in test/{cls_dir.name}/ have no mask in "
                    f"ground_truth/{cls_dir.name}/ (expected <stem>_mask.png); pixel metrics skip them."
                )
    return records


def _index_folders(root: Path, walker: _Walker, warnings: list[str]) -> list[ImageRecord]:
    labels = [d for d in _subdirs(root) if d.name.lower() not in MASK_FOLDER_NAMES]
    nested = [d.name for d in labels if _looks_mvtec(d)]
    if nested:
        raise DatasetError(
            f"{root} looks like a folder of datasets ({', '.join(nested)} are datasets in MVTec layout), "
            "not one dataset.",
            f"Pick one of them, e.g. {root / nested[0]}.",
        )
    loose = _top_images(root)
    if not labels:
        if loose:
            raise DatasetError(
                f"Dataset folder {root} has {len(loose)} image(s) but no label folders, so their labels are unknown.",
                "Arrange the images as MVTec layout (train/good, test/good, test/<defect>) or one folder per label "
                "(good/, <defect>/).",
            )
        raise DatasetError(
            f"Dataset folder {root} holds no images and no sub-folders.",
            "Check the path; a dataset needs train/good + test/<class> (MVTec) or one folder per label.",
        )
    if loose:
        warnings.append(f"Skipped {len(loose)} image(s) lying directly in the dataset folder (no label folder).")
    mask_roots = [root / m for m in MASK_FOLDER_NAMES if (root / m).is_dir()]
    # also accept capitalised mask folders (Masks/, Ground_Truth/)
    mask_roots += [d for d in _subdirs(root) if d.name.lower() in MASK_FOLDER_NAMES and d not in mask_roots]
    records: list[ImageRecord] = []
    for lab in labels:
        files = walker.files(lab)
        if not files:
            warnings.append(f"Folder {lab.name}/ has no images; skipped.")
            continue
        normal = _is_normal(lab.name)
        tables = [] if normal else [_mask_table(walker, mr / lab.name) for mr in mask_roots]
        missing = 0
        for p in files:
            rel = p.relative_to(root).as_posix()
            if normal:
                records.append(ImageRecord(rel, 0, "good", None, "test"))
                continue
            m = None
            for t in tables:
                m = _find_mask(t, p.relative_to(lab))
                if m is not None:
                    break
            missing += m is None
            records.append(ImageRecord(rel, 1, lab.name, m.relative_to(root).as_posix() if m else None, "test"))
        if tables and missing:
            warnings.append(f"{missing} of {len(files)} image(s) in {lab.name}/ have no mask.")
    return records


__all__ = [
    "ImageRecord",
    "DatasetIndex",
    "index_dataset",
    "save_index",
    "load_index",
    "NORMAL_NAMES",
    "SPLIT_NAMES",
]

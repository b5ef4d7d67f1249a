"""Datasets the app may browse: the list (data roots, demo, uploads), overviews, thumbnails and splits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.errors import WorkbenchError
from core.workbench import zip_uploads
from core.workbench.zip_uploads import _find_dataset_root


def list_datasets() -> dict[str, Path]:
    """Name -> folder: the demo first, then folders under the data roots, then uploaded zips.

    ``available_datasets`` already lists each folder once; an upload that is one of them is not repeated.
    """
    from core.data.locate import available_datasets

    out: dict[str, Path] = dict(available_datasets())
    seen = {path.resolve() for path in out.values()}
    if zip_uploads.UPLOADS_DIR.is_dir():
        for sub in sorted(zip_uploads.UPLOADS_DIR.iterdir()):
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

    return check(root, extra=(zip_uploads.UPLOADS_DIR,))


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

    Ground-truth masks, when present, are drawn as a magenta contour. Each thumbnail is ``size`` x ``size`` (the
    image fitted inside, padded in light grey) so that a grid of them lines up. Unreadable images are skipped.
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
            out.append((cls, rec.path, _pad_square(_thumb(img, size), size)))
    return out


def _pad_square(img: np.ndarray, size: int, value: int = 240) -> np.ndarray:
    """``img`` (at most ``size`` on its longer side) centred on a ``size`` x ``size`` light-grey square."""
    h, w = img.shape[:2]
    top, left = (size - h) // 2, (size - w) // 2
    return cv2.copyMakeBorder(img, top, size - h - top, left, size - w - left, cv2.BORDER_CONSTANT,
                              value=(value, value, value))


def _thumb(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = size / max(h, w)
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def dataset_splits(dataset_root: str | Path) -> list[str]:
    """Non-empty splits of a dataset, ``test`` first."""
    from core.data import index_dataset

    check_browsable(dataset_root)
    index = index_dataset(dataset_root)
    names = [s for s, idx in index.splits.items() if idx]
    return sorted(names, key=lambda s: (s != "test", s))

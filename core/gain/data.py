"""Data for GAIN-MTL: the splits as resized uint8 images with their masks, and counterfactual images.

Images are decoded with :mod:`core.data` (safe reading) and resized to ``size`` x ``size`` (antialiased area
resize, no crop); masks come from :func:`core.evaluation.ground_truth_masks` (nearest, same size). Unreadable
images are skipped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from core.data import DatasetIndex, ImageRecord, read_image
from core.errors import DatasetError, WorkbenchError


@dataclass
class SplitData:
    """One split at the training size: N images (uint8 N x S x S x 3), labels, masks (bool N x S x S)."""

    name: str
    paths: list[str]
    labels: np.ndarray
    defects: list[str]
    images: np.ndarray
    masks: np.ndarray
    skipped: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx) -> "SplitData":
        idx = list(idx)
        return SplitData(self.name, [self.paths[i] for i in idx], self.labels[idx], [self.defects[i] for i in idx],
                         self.images[idx], self.masks[idx], dict(self.skipped))


def limit_records(records: list[ImageRecord], limit: int | None) -> list[ImageRecord]:
    """At most ``limit`` records per class, keeping the index order (deterministic)."""
    if limit is None:
        return list(records)
    seen: dict[str, int] = {}
    out = []
    for r in records:
        if seen.get(r.defect, 0) < limit:
            seen[r.defect] = seen.get(r.defect, 0) + 1
            out.append(r)
    return out


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
    """uint8 H x W x 3 -> size x size x 3 (area interpolation when shrinking, bilinear when growing)."""
    h, w = img.shape[:2]
    interp = cv2.INTER_AREA if h >= size and w >= size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def load_split(index: DatasetIndex, split: str, size: int, limit: int | None = None) -> SplitData:
    """Read the images and masks of ``split`` at ``size`` x ``size`` (unreadable files are skipped)."""
    from core.evaluation import ground_truth_masks

    records = limit_records(index.split(split), limit)
    imgs, kept, skipped = [], [], {}
    for rec in records:
        try:
            imgs.append(resize_image(read_image(index.abs_path(rec)), size))
            kept.append(rec)
        except WorkbenchError as exc:
            skipped[rec.path] = str(exc)
    masks, usable = ground_truth_masks(index, kept, size)
    for i, rec in enumerate(kept):
        if rec.label == 1 and not usable[i]:
            masks[i] = False  # a defect without a mask: classification only (attention metrics skip it)
    return SplitData(
        name=split,
        paths=[str(index.abs_path(r)) for r in kept],
        labels=np.array([r.label for r in kept], dtype=np.int64),
        defects=[r.defect for r in kept],
        images=np.stack(imgs) if imgs else np.zeros((0, size, size, 3), np.uint8),
        masks=masks,
        skipped=skipped,
    )


def concat(name: str, parts: list[SplitData]) -> SplitData:
    """Several splits as one (e.g. train_normal + train_mix)."""
    return SplitData(
        name=name,
        paths=[p for s in parts for p in s.paths],
        labels=np.concatenate([s.labels for s in parts]),
        defects=[d for s in parts for d in s.defects],
        images=np.concatenate([s.images for s in parts]),
        masks=np.concatenate([s.masks for s in parts]),
        skipped={k: v for s in parts for k, v in s.skipped.items()},
    )


def check_two_classes(data: SplitData, what: str) -> None:
    """A supervised classifier needs both classes; say which split lacks one and how to fix it."""
    n_pos, n_neg = int((data.labels == 1).sum()), int((data.labels == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise DatasetError(
            f"GAIN-MTL's {what} holds only one class ({n_neg} normal, {n_pos} defective): a classifier trained or "
            "selected on one class learns nothing about the other.",
            "Use a dataset with normal images in train/good and defective images (with masks) in test/, such as "
            "magnetic_tile; domain sets such as neu_seg have no normal images.",
        )


def counterfactual(image: np.ndarray, mask: np.ndarray, normal: np.ndarray, dilate: int = 3,
                   feather: float = 2.0) -> np.ndarray:
    """``image`` with its defect region (``mask``, dilated by ``dilate`` px and feathered) replaced by the same
    region of a normal image of the same size: what the part would look like without the defect."""
    m = mask.astype(np.uint8)
    if dilate > 0:
        m = cv2.dilate(m, np.ones((2 * dilate + 1, 2 * dilate + 1), np.uint8))
    soft = m.astype(np.float32)
    if feather > 0:
        soft = np.maximum(soft, cv2.GaussianBlur(soft, (0, 0), feather))
        soft = np.clip(soft, 0.0, 1.0)
    out = image.astype(np.float32) * (1.0 - soft[..., None]) + normal.astype(np.float32) * soft[..., None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def counterfactual_images(data: SplitData, normals: np.ndarray, seed: int) -> np.ndarray:
    """One counterfactual per image of ``data`` (a normal image is returned unchanged): each defect image gets a
    normal partner drawn with ``seed`` from ``normals`` (N x S x S x 3)."""
    rng = np.random.default_rng(seed)
    partners = rng.integers(0, len(normals), size=len(data))
    out = data.images.copy()
    for i in range(len(data)):
        if data.labels[i] == 1 and data.masks[i].any():
            out[i] = counterfactual(data.images[i], data.masks[i], normals[partners[i]])
    return out

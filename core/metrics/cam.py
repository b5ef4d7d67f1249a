"""Classification and attention (CAM) metrics: arrays in, numbers out (no model knowledge).

Attention metrics are computed per defect image with a pixel mask, after per-image min-max normalisation of the
CAM to [0, 1] (a constant CAM becomes all zeros), and averaged over those images:

* CAM-IoU at ``t``: IoU of ``cam01 >= t`` with the mask;
* PointGame: 1 when the CAM's maximum (first arg-max in row-major order) lies inside the mask;
* Energy-Inside: ``sum(cam01 * mask) / sum(cam01)`` (0 for an all-zero map);
* Loc-IoU: IoU of the mask head's probability ``>= 0.5`` with the mask.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

CAM_THRESHOLDS = (0.3, 0.4, 0.5, 0.6)


@dataclass
class ClassificationMetrics:
    accuracy: float
    precision: float
    recall: float
    f1: float
    auroc: float | None  # None when only one class is present
    threshold: float
    n: int
    n_positive: int

    def to_dict(self) -> dict:
        return asdict(self)


def classification_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> ClassificationMetrics:
    """Accuracy, precision, recall, F1 at ``scores >= threshold`` and AUROC (sklearn) of ``scores``.

    Precision (recall) is 0 when nothing is predicted (no positive exists), rather than undefined.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    pred = s >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    n = len(y)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    auroc = float(roc_auc_score(y, s)) if 0 < y.sum() < n else None
    return ClassificationMetrics(
        accuracy=float(np.mean(pred == (y == 1))) if n else 0.0,
        precision=float(precision),
        recall=float(recall),
        f1=float(f1),
        auroc=auroc,
        threshold=float(threshold),
        n=int(n),
        n_positive=int(y.sum()),
    )


def f1_best_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold with the highest F1 (ties: the highest threshold); 0.5 when there is no positive."""
    y = np.asarray(labels).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.sum() == 0 or len(y) == 0:
        return 0.5
    best_t, best_f = 0.5, -1.0
    for t in np.unique(s):
        pred = s >= t
        tp = np.sum(pred & (y == 1))
        f = 2 * tp / (pred.sum() + y.sum())
        if f >= best_f:
            best_f, best_t = float(f), float(t)
    return best_t


def minmax_normalise(maps: np.ndarray) -> np.ndarray:
    """Per-map min-max normalisation to [0, 1] over the last two axes; a constant map becomes zeros."""
    m = np.asarray(maps, dtype=np.float64)
    lo = m.min(axis=(-2, -1), keepdims=True)
    hi = m.max(axis=(-2, -1), keepdims=True)
    span = hi - lo
    out = np.where(span > 0, (m - lo) / np.where(span > 0, span, 1.0), 0.0)
    return out.astype(np.float32)


def iou(pred: np.ndarray, mask: np.ndarray) -> float:
    """IoU of two boolean maps (1.0 when both are empty)."""
    p, g = np.asarray(pred, bool), np.asarray(mask, bool)
    union = np.logical_or(p, g).sum()
    return float(np.logical_and(p, g).sum() / union) if union else 1.0


def cam_iou(cam01: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> float:
    """IoU of a normalised CAM binarised at ``threshold`` (``>=``) with the ground-truth mask."""
    return iou(np.asarray(cam01) >= threshold, mask)


def point_game(cam: np.ndarray, mask: np.ndarray) -> float:
    """1.0 when the CAM's maximum (first arg-max, row-major) lies inside the mask, else 0.0."""
    c = np.asarray(cam)
    r, k = np.unravel_index(int(np.argmax(c)), c.shape)
    return float(bool(np.asarray(mask, bool)[r, k]))


def energy_inside(cam01: np.ndarray, mask: np.ndarray) -> float:
    """Share of the (non-negative, normalised) CAM's energy that falls inside the mask; 0 for an all-zero map."""
    c = np.clip(np.asarray(cam01, dtype=np.float64), 0.0, None)
    total = c.sum()
    return float(c[np.asarray(mask, bool)].sum() / total) if total > 0 else 0.0


def loc_iou(mask_prob: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> float:
    """IoU of the localisation head's probability map at ``threshold`` with the mask."""
    return iou(np.asarray(mask_prob) >= threshold, mask)


@dataclass
class PerImageAttention:
    """Per-image attention metrics (arrays over the images that were scored)."""

    cam_iou: dict[float, np.ndarray]  # threshold -> per image
    point_game: np.ndarray
    energy_inside: np.ndarray
    loc_iou: np.ndarray | None


def per_image_attention(
    cams: np.ndarray,
    masks: np.ndarray,
    mask_probs: np.ndarray | None = None,
    thresholds: Sequence[float] = CAM_THRESHOLDS,
) -> PerImageAttention:
    """Attention metrics for each (CAM, mask) pair; CAMs are min-max normalised here (N x H x W in)."""
    cams = np.asarray(cams)
    masks = np.asarray(masks, bool)
    if cams.shape != masks.shape:
        raise ValueError(f"CAMs {cams.shape} and masks {masks.shape} must have the same shape")
    c01 = minmax_normalise(cams)
    n = len(c01)
    inter_union = {}
    for t in thresholds:
        b = c01 >= t
        inter = np.logical_and(b, masks).sum(axis=(1, 2))
        union = np.logical_or(b, masks).sum(axis=(1, 2))
        inter_union[float(t)] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    pg = np.array([point_game(cams[i], masks[i]) for i in range(n)])
    ei = np.array([energy_inside(c01[i], masks[i]) for i in range(n)])
    li = None
    if mask_probs is not None:
        mp = np.asarray(mask_probs)
        li = np.array([loc_iou(mp[i], masks[i]) for i in range(n)])
    return PerImageAttention(inter_union, pg, ei, li)


def cam_iou_batch(cams01: np.ndarray, masks: np.ndarray, threshold: float) -> np.ndarray:
    """Per-image CAM-IoU of already normalised CAMs (N x H x W) at one threshold (vectorised, for sliders)."""
    b = np.asarray(cams01) >= threshold
    m = np.asarray(masks, bool)
    inter = np.logical_and(b, m).sum(axis=(1, 2))
    union = np.logical_or(b, m).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def attention_metrics(
    cams: np.ndarray,
    masks: np.ndarray,
    mask_probs: np.ndarray | None = None,
    thresholds: Sequence[float] = CAM_THRESHOLDS,
) -> dict[str, float | None]:
    """Mean attention metrics over defect images: ``cam_iou@t`` for each threshold, ``point_game``,
    ``energy_inside`` and (with ``mask_probs``) ``loc_iou``; images with an empty mask are left out."""
    cams = np.asarray(cams)
    masks = np.asarray(masks, bool)
    keep = masks.reshape(len(masks), -1).any(axis=1) if len(masks) else np.zeros(0, bool)
    out: dict[str, float | None] = {"n_attention_images": int(keep.sum())}
    if not keep.any():
        for t in thresholds:
            out[f"cam_iou@{t:g}"] = None
        out.update(point_game=None, energy_inside=None, loc_iou=None)
        return out
    per = per_image_attention(cams[keep], masks[keep], None if mask_probs is None else np.asarray(mask_probs)[keep],
                              thresholds)
    for t in thresholds:
        out[f"cam_iou@{t:g}"] = float(per.cam_iou[float(t)].mean())
    out["point_game"] = float(per.point_game.mean())
    out["energy_inside"] = float(per.energy_inside.mean())
    out["loc_iou"] = None if per.loc_iou is None else float(per.loc_iou.mean())
    return out


def grid_ceiling_iou(masks: np.ndarray, grid: int, threshold: float = 0.5) -> float:
    """The best CAM-IoU a map on a ``grid`` x ``grid`` lattice can reach on average: each mask is area-averaged
    onto the grid, upsampled back bilinearly and binarised at ``threshold`` (an oracle CAM at that resolution)."""
    import cv2

    masks = np.asarray(masks, bool)
    keep = masks.reshape(len(masks), -1).any(axis=1)
    vals = []
    for m in masks[keep]:
        h, w = m.shape
        small = cv2.resize(m.astype(np.float32), (grid, grid), interpolation=cv2.INTER_AREA)
        up = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        vals.append(iou(minmax_normalise(up[None])[0] >= threshold, m))
    return float(np.mean(vals)) if vals else float("nan")

"""Pictures for people: heatmap overlays with ground-truth contours (uint8 RGB arrays in, arrays out)."""

from __future__ import annotations

import cv2
import numpy as np


def heat_colours(map01: np.ndarray) -> np.ndarray:
    """A [0, 1] map as a viridis-coloured uint8 RGB image (perceptually uniform, colour-blind safe)."""
    m = np.clip(np.nan_to_num(map01), 0.0, 1.0)
    bgr = cv2.applyColorMap((m * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def overlay(
    image: np.ndarray,
    amap: np.ndarray,
    mask: np.ndarray | None = None,
    predicted: np.ndarray | None = None,
    alpha: float = 0.45,
    vmax: float = 2.0,
) -> np.ndarray:
    """The image with its anomaly map blended in, ground truth in magenta and the predicted region in white.

    ``amap`` is a *normalised* map (1 = the 99.9th percentile of normal pixels, fixed at fit time), drawn on a
    fixed scale [0, vmax] so that two overlays are comparable; it is never rescaled by its own maximum.
    """
    h, w = image.shape[:2]
    m = cv2.resize(amap.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    out = cv2.addWeighted(image, 1.0 - alpha, heat_colours(m / vmax), alpha, 0.0)
    thickness = max(1, round(min(h, w) / 150))
    for region, colour in ((mask, (255, 0, 255)), (predicted, (255, 255, 255))):
        if region is None:
            continue
        r = cv2.resize(region.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(r, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, colour, thickness)
    return out


def side_by_side(*images: np.ndarray, height: int = 256) -> np.ndarray:
    """Images resized to one height and joined left to right."""
    parts = []
    for im in images:
        h, w = im.shape[:2]
        parts.append(cv2.resize(im, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_AREA))
    return np.concatenate(parts, axis=1)


def write_png(path, image: np.ndarray) -> None:
    """Atomically write an RGB uint8 image as PNG."""
    from core.storage import atomic_write_bytes

    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    atomic_write_bytes(path, buf.tobytes())

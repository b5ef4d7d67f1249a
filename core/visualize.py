"""Pictures for people: heatmap overlays with ground-truth contours (uint8 RGB arrays in, arrays out), and the
one colour table every chart uses, so that a split or a method has the same colour in every chart."""

from __future__ import annotations

import hashlib
from typing import Sequence

import cv2
import numpy as np

# Okabe-Ito: a palette that stays distinguishable for the common colour-vision deficiencies.
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
NORMAL_COLOUR = "#0072B2"
ANOMALOUS_COLOUR = "#D55E00"
# Names that mean the same thing on every page get one colour each.
SERIES_COLOURS = {
    "normal": NORMAL_COLOUR, "good": NORMAL_COLOUR, "anomalous": ANOMALOUS_COLOUR, "defect": ANOMALOUS_COLOUR,
    "defective": ANOMALOUS_COLOUR,
    "train_normal": "#56B4E9", "train_mix": "#CC79A7", "val_mix": "#009E73", "test_mix": "#E69F00",
    "test": "#E69F00", "chance": "#999999",
}
_FREE = ["#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#000000", "#F0E442", "#999999"]


def series_colours(names: Sequence[str]) -> dict[str, str]:
    """A colour per series name: fixed for the names in ``SERIES_COLOURS``; any other name (a defect class, a
    method, a backbone) gets a slot chosen from a hash of its name, so it keeps its colour from chart to chart
    (the next free slot when two names of one chart would share one)."""
    out: dict[str, str] = {}
    for n in names:
        if n in SERIES_COLOURS:
            out[n] = SERIES_COLOURS[n]
    used = set(out.values())
    for n in names:
        if n in out:
            continue
        start = int(hashlib.sha1(n.encode("utf-8")).hexdigest(), 16) % len(_FREE)
        free = [_FREE[(start + k) % len(_FREE)] for k in range(len(_FREE))]
        out[n] = next((c for c in free if c not in used), free[0])
        used.add(out[n])
    return out


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


def worst_region(amap: np.ndarray, image_hw: tuple[int, int], crop: int = 256) -> tuple[int, int, int, int]:
    """The ``crop`` x ``crop`` window (y0, x0, y1, x1, in the image's own pixels) centred on the map's maximum,
    shifted to stay inside the image (smaller where the image is): for a 1:1 view of the worst region.

    ``amap`` may be at any size; its maximum is carried to image pixels by the ratio of the sizes."""
    h, w = int(image_hw[0]), int(image_hw[1])
    mh, mw = amap.shape[:2]
    my, mx = np.unravel_index(int(np.argmax(np.nan_to_num(amap, nan=-np.inf))), (mh, mw))
    cy, cx = int((my + 0.5) * h / mh), int((mx + 0.5) * w / mw)
    ch, cw = min(crop, h), min(crop, w)
    y0 = min(max(0, cy - ch // 2), h - ch)
    x0 = min(max(0, cx - cw // 2), w - cw)
    return y0, x0, y0 + ch, x0 + cw


def worst_region_crop(
    image: np.ndarray, amap: np.ndarray, crop: int = 256, mask: np.ndarray | None = None, vmax: float = 2.0
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The overlay of ``image`` (normalised ``amap``, optional ground-truth ``mask``) cropped at 1:1 pixels around
    the map's maximum, and the window (y0, x0, y1, x1): a 2-px pin-hole stays 2 px on screen."""
    box = worst_region(amap, image.shape[:2], crop)
    full = overlay(image, amap, mask, vmax=vmax)
    y0, x0, y1, x1 = box
    return full[y0:y1, x0:x1], box

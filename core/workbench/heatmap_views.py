"""What the Heatmaps page draws: overlays of anomaly maps, one image rescored at full size, and PatchCore's
nearest-patch explanation."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.errors import ImageReadError, WorkbenchError
from core.workbench.datasets import _thumb


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
    """The normalised map alone in viridis colours, ``vmax`` (on the normalised scale) the hottest."""
    from core.visualize import heat_colours

    return heat_colours(norm.normalise_map(np.asarray(raw_map, dtype=np.float32)) / vmax)


@dataclass
class ImageDetail:
    """One image rescored at full resolution, with its timing."""

    score: float
    to_threshold: float  # score / the threshold given to score_one (1 = at the threshold)
    raw_map: np.ndarray
    ms: float


def score_one(det, image_path: str | Path, threshold: float | None = None, cache=None) -> ImageDetail:
    """Rescore one file (cached features): its exact full-size map, its score relative to ``threshold`` (the one
    in use; default the model's saved one) and the time taken."""
    from core.detectors.postprocess import score_to_threshold
    from core.features import FeatureCache

    t0 = time.perf_counter()
    res = det.score_paths([str(image_path)], cache=cache if cache is not None else FeatureCache())
    ms = 1000 * (time.perf_counter() - t0)
    if not res.ok:
        raise ImageReadError(res.errors.get(0, f"{image_path} could not be read."), "Check the file.")
    s = float(res.scores[0])
    thr = det.threshold if threshold is None else float(threshold)
    return ImageDetail(s, float(score_to_threshold(s, thr)), res.maps[0], ms)


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


def worst_region_view(image: np.ndarray | str | Path, raw_map: np.ndarray, norm, mask_path: str | Path | None = None,
                      crop: int = 256) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The overlay cropped at 1:1 pixels (``crop`` x ``crop`` of the image's own pixels) around the map's maximum,
    and the window (y0, x0, y1, x1): on a 640-px board or a camera frame a 2-px pin-hole stays 2 px on screen."""
    from core.data import read_image, read_mask
    from core.visualize import worst_region_crop

    img = read_image(image) if not isinstance(image, np.ndarray) else image
    mask = read_mask(mask_path) if mask_path else None
    return worst_region_crop(img, norm.normalise_map(np.asarray(raw_map, dtype=np.float32)), crop, mask)


def export_bundle_zip(folder: str | Path) -> bytes:
    """The model exported as a bundle that scores without torch (ONNX), zipped for a download."""
    from core.bundle.export import export_bundle_zip as export

    return export(folder)

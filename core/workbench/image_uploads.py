"""Scoring images uploaded on the Score images page: one result row per file, overlays and a CSV."""

from __future__ import annotations

import csv
import io
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from core.errors import WorkbenchError

MAX_UPLOAD_IMAGE_BYTES = int(float(os.environ.get("WORKBENCH_MAX_IMAGE_MB", "25")) * 1e6)


@dataclass
class UploadResult:
    """One uploaded file: its score, normalised score and decision, or the error that stopped it."""

    name: str
    ok: bool
    error: str = ""
    score: float | None = None
    to_threshold: float | None = None  # score / the threshold used
    decision: str = ""
    ms: float | None = None
    image: np.ndarray | None = None
    raw_map: np.ndarray | None = None
    size: tuple[int, int] | None = None

    def row(self) -> dict[str, Any]:
        return {
            "file": self.name,
            "score": None if self.score is None else round(self.score, 6),
            "score_to_threshold": None if self.to_threshold is None else round(self.to_threshold, 4),
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
    from core.detectors.postprocess import score_to_threshold

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
            from core.data.images import check_scorable, read_image_bytes

            img = check_scorable(read_image_bytes(bytes(data), name), name)
            res = det.score_images([img])
        except WorkbenchError as exc:
            out.append(UploadResult(name, False, str(exc)))
            continue
        ms = 1000 * (time.perf_counter() - t0)
        s = float(res.scores[0])
        out.append(UploadResult(
            name, True, score=s, to_threshold=float(score_to_threshold(s, thr)),
            decision="anomalous" if s >= thr else "normal", ms=ms, image=img, raw_map=res.maps[0],
            size=(int(img.shape[1]), int(img.shape[0])),
        ))
    if progress:
        progress("score uploads", len(files), len(files))
    return out


def upload_overlay(result: UploadResult, norm, pixel_threshold: float = 1.0) -> np.ndarray:
    """The uploaded image with its normalised heatmap and the region where the map reaches ``pixel_threshold``."""
    from core.visualize import overlay

    amap = norm.normalise_map(result.raw_map)
    return overlay(result.image, amap, predicted=amap >= pixel_threshold)


def results_csv(results: Sequence[UploadResult], threshold: float | None = None) -> str:
    """The rows of :meth:`UploadResult.row` as CSV text (plus the threshold used, when given)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    cols = ["file", "score", "score_to_threshold", "decision", "ms", "error"] + (["threshold"] if threshold is not None else [])
    w.writerow(cols)
    for r in results:
        row = r.row()
        w.writerow([("" if row[c] is None else row[c]) for c in cols[:6]] + ([f"{threshold:.6g}"] if threshold is not None else []))
    return buf.getvalue()

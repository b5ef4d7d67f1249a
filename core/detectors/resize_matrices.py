"""The feature path's two resizes as separable linear maps, ``out = R_h @ img @ R_w.T``, in numpy (no torch).

* input: torch's ``interpolate(mode="bilinear", align_corners=False, antialias=True)`` (the weights of ATen's
  ``_compute_index_ranges_weights``: a triangle filter stretched by the scale when shrinking, as Pillow does);
* anomaly map: the same bilinear upsampling (no antialiasing when enlarging) followed by OpenCV's Gaussian blur
  (kernel truncated at 4 sigma, border reflected without repeating the edge, BORDER_REFLECT_101), folded into one
  matrix per side (``map_matrix``).

The detectors' maps (core.detectors.postprocess) and the torch-free bundle (core.bundle.resample) multiply by the
same matrices, so both compute the same maps. tests/test_postprocess.py checks the map against torch's bilinear
upsampling and OpenCV's blur, tests/test_bundle.py the input resize against torch's preprocessing.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def as_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    """``size`` (one side of a square, or (height, width)) as (height, width)."""
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


@lru_cache(maxsize=256)
def resize_matrix(n_in: int, n_out: int, antialias: bool = True) -> np.ndarray:
    """n_out x n_in weights of torch's bilinear resize along one axis (align_corners=False), float32."""
    scale = n_in / n_out
    i = np.arange(n_out, dtype=np.float64)[:, None]
    j = np.arange(n_in, dtype=np.float64)[None, :]
    if antialias and scale > 1.0:  # shrinking: a triangle filter stretched by the scale, taps [lo, hi)
        center = scale * (i + 0.5)
        lo = np.maximum(np.trunc(center - scale + 0.5), 0)
        hi = np.minimum(np.trunc(center + scale + 0.5), n_in)
        w = np.maximum(0.0, 1.0 - np.abs((j - center + 0.5) / scale)) * ((j >= lo) & (j < hi))
        total = w.sum(axis=1, keepdims=True)
        return (w / np.where(total > 0, total, 1.0)).astype(np.float32)
    # plain bilinear: two taps, the source index clamped at 0 and n_in - 1
    src = np.maximum(scale * (i[:, 0] + 0.5) - 0.5, 0.0)
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0
    m = np.zeros((n_out, n_in), np.float64)
    np.add.at(m, (np.arange(n_out), i0), 1.0 - lam)
    np.add.at(m, (np.arange(n_out), i1), lam)
    return m.astype(np.float32)


def gaussian_taps(n: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's GaussianBlur along an axis of ``n`` pixels as taps: (n x ksize source indices, ksize weights), with
    ksize = 2 * round(4 sigma) + 1 and the border reflected without repeating the edge (BORDER_REFLECT_101, folded
    again for kernels wider than the axis)."""
    ksize = 2 * int(4.0 * sigma + 0.5) + 1
    x = np.arange(ksize) - ksize // 2
    kernel = np.exp(-(x * x) / (2.0 * sigma * sigma))
    j = np.arange(n)[:, None] + x[None, :]
    if n > 1:
        period = 2 * (n - 1)
        j = j % period
        j = np.where(j >= n, period - j, j)
    else:
        j = np.zeros_like(j)
    return j, kernel / kernel.sum()


@lru_cache(maxsize=16)
def map_matrix(n_cells: int, size: int, sigma: float) -> np.ndarray:
    """size x n_cells: a patch-map axis upsampled bilinearly to ``size`` px, then blurred (one matrix, float32).

    Built as the blur's taps applied to the rows of the upsampling matrix: never the size x size blur matrix (128 MB
    at 4000 px)."""
    up = resize_matrix(n_cells, size, antialias=False).astype(np.float64)
    if sigma <= 0:
        return up.astype(np.float32)
    src, kernel = gaussian_taps(size, float(sigma))
    out = np.zeros_like(up)
    for t, weight in enumerate(kernel):
        out += weight * up[src[:, t]]
    return out.astype(np.float32)


def map_matrices(grid_hw: tuple[int, int], size: int | tuple[int, int], sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """(A_h, A_w) with ``A_h @ patch_map @ A_w.T`` = a ``grid_hw`` patch map upsampled to ``size`` and blurred."""
    out_h, out_w = as_hw(size)
    return map_matrix(int(grid_hw[0]), out_h, float(sigma)), map_matrix(int(grid_hw[1]), out_w, float(sigma))

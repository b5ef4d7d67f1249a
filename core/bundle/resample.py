"""The torch path's resizes as numpy matrices, so a bundle preprocesses and post-processes without torch.

Both resizes of the feature path are separable linear maps, written here as ``out = R_h @ img @ R_w.T``:

* input: torch's ``interpolate(mode="bilinear", align_corners=False, antialias=True)`` (the weights of ATen's
  ``_compute_index_ranges_weights``: a triangle filter stretched by the scale when shrinking, as Pillow does);
* anomaly map: the same bilinear upsampling (no antialiasing when enlarging) followed by OpenCV's Gaussian blur
  (kernel truncated at 4 sigma, border reflected without repeating the edge, BORDER_REFLECT_101), folded into one
  matrix per side. tests/test_bundle.py checks both against torch and OpenCV on real images.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


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


@lru_cache(maxsize=16)
def blur_matrix(n: int, sigma: float) -> np.ndarray:
    """n x n matrix of OpenCV's GaussianBlur along one axis (ksize = 2 * round(4 sigma) + 1, BORDER_REFLECT_101)."""
    if sigma <= 0:
        return np.eye(n)
    ksize = 2 * int(4.0 * sigma + 0.5) + 1
    r = ksize // 2
    x = np.arange(ksize) - r
    kernel = np.exp(-(x * x) / (2.0 * sigma * sigma))
    kernel /= kernel.sum()
    m = np.zeros((n, n), np.float64)
    for i in range(n):
        for t, kv in zip(x, kernel):
            j = i + t
            if n > 1:  # reflect 101: -1 -> 1, n -> n - 2 (repeated for kernels wider than the map)
                period = 2 * (n - 1)
                j = j % period
                j = period - j if j >= n else j
            else:
                j = 0
            m[i, j] += kv
    return m


@lru_cache(maxsize=16)
def map_matrix(n_cells: int, size: int, sigma: float) -> np.ndarray:
    """size x n_cells: a patch-map axis upsampled bilinearly to ``size`` px, then blurred (one matrix, float32)."""
    return (blur_matrix(size, float(sigma)) @ resize_matrix(n_cells, size, antialias=False).astype(np.float64)
            ).astype(np.float32)


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def resize_image(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """uint8 H x W (grey) or H x W x 3 -> float32 3 x size x size (or 3 x height x width for ``size`` = (height,
    width)), pixel values 0..255 (torch's antialiased bilinear resize; a grey image is resized once and repeated to
    3 channels, as the torch path does)."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    h, w = img.shape[:2]
    out_h, out_w = _hw(size)
    rh = resize_matrix(h, out_h) if h != out_h else None
    rw = resize_matrix(w, out_w).T if w != out_w else None
    planes = [img] if img.ndim == 2 else [img[:, :, c] for c in range(img.shape[2])]
    out = []
    for p in planes:
        p = p.astype(np.float32)
        if rh is not None:
            p = rh @ p
        if rw is not None:
            p = p @ rw
        out.append(p)
    if len(out) == 1:
        out = out * 3
    return np.stack(out)


def upsample_and_blur(patch_maps: np.ndarray, size: int | tuple[int, int], sigma: float) -> np.ndarray:
    """N x h x w patch scores -> N x size x size maps, or N x height x width for ``size`` = (height, width)
    (core.detectors.postprocess.upsample_and_blur in numpy)."""
    n, h, w = patch_maps.shape
    out_h, out_w = _hw(size)
    a_h, a_w = map_matrix(h, out_h, float(sigma)), map_matrix(w, out_w, float(sigma))
    return np.matmul(np.matmul(a_h, np.asarray(patch_maps, np.float32)), a_w.T)  # two batched matrix products

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


@lru_cache(maxsize=64)
def resize_matrix(n_in: int, n_out: int, antialias: bool = True) -> np.ndarray:
    """n_out x n_in weights of torch's bilinear resize along one axis (align_corners=False), float64."""
    scale = n_in / n_out
    aa = antialias and scale > 1.0
    support = scale if aa else 1.0
    inv = 1.0 / scale if aa else 1.0
    m = np.zeros((n_out, n_in), np.float64)
    if not aa:  # plain bilinear: two taps, source index clamped at 0
        for i in range(n_out):
            src = max(scale * (i + 0.5) - 0.5, 0.0)
            i0 = min(int(src), n_in - 1)
            i1 = min(i0 + 1, n_in - 1)
            lam = src - i0
            m[i, i0] += 1.0 - lam
            m[i, i1] += lam
        return m
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        j = np.arange(lo, hi)
        w = np.maximum(0.0, 1.0 - np.abs((j - center + 0.5) * inv))
        total = w.sum()
        m[i, lo:hi] = w / total if total > 0 else w
    return m


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
    return (blur_matrix(size, float(sigma)) @ resize_matrix(n_cells, size, antialias=False)).astype(np.float32)


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
    """uint8 H x W (grey) or H x W x 3 -> float32 3 x size x size, pixel values 0..255 (torch's antialiased
    bilinear resize; a grey image is resized once and repeated to 3 channels, as the torch path does)."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    h, w = img.shape[:2]
    rh = resize_matrix(h, size).astype(np.float32) if h != size else None
    rw = resize_matrix(w, size).astype(np.float32).T if w != size else None
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


def upsample_and_blur(patch_maps: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """N x h x w patch scores -> N x size x size maps (core.detectors.postprocess.upsample_and_blur in numpy)."""
    n, h, w = patch_maps.shape
    a_h, a_w = map_matrix(h, size, float(sigma)), map_matrix(w, size, float(sigma))
    return np.einsum("ij,njk,lk->nil", a_h, np.asarray(patch_maps, np.float32), a_w, optimize=True)

"""The torch path's input resize and map resampling in numpy, so a bundle preprocesses and post-processes without
torch: the same matrices as the detectors (core.detectors.resize_matrices), multiplied here with numpy."""

from __future__ import annotations

import numpy as np

from core.detectors.resize_matrices import as_hw, map_matrices, resize_matrix


def resize_image(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """uint8 H x W (grey) or H x W x 3 -> float32 3 x size x size (or 3 x height x width for ``size`` = (height,
    width)), pixel values 0..255 (torch's antialiased bilinear resize; a grey image is resized once and repeated to
    3 channels, as the torch path does)."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    h, w = img.shape[:2]
    out_h, out_w = as_hw(size)
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
    a_h, a_w = map_matrices(patch_maps.shape[1:], size, sigma)
    return np.matmul(np.matmul(a_h, np.asarray(patch_maps, np.float32)), a_w.T)  # two batched matrix products

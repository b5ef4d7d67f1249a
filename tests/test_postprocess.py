"""The anomaly map's resampling (core.detectors.postprocess.upsample_and_blur, one matrix per axis) is the plain
definition: torch's bilinear upsampling (align_corners=False) followed by OpenCV's Gaussian blur truncated at 4
sigma with BORDER_REFLECT_101, on real board features' shapes, non-square maps and kernels wider than the map."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.bundle.resample import upsample_and_blur as bundle_upsample_and_blur
from core.detectors.postprocess import upsample_and_blur

REPO = Path(__file__).resolve().parent.parent


def plain_upsample_and_blur(patch_maps: np.ndarray, hw: tuple[int, int], sigma: float) -> np.ndarray:
    up = F.interpolate(torch.from_numpy(patch_maps)[:, None], size=hw, mode="bilinear", align_corners=False)[:, 0]
    if sigma <= 0:
        return up.numpy()
    ksize = 2 * int(4.0 * sigma + 0.5) + 1
    return np.stack([cv2.GaussianBlur(m, (ksize, ksize), sigmaX=sigma, sigmaY=sigma,
                                      borderType=cv2.BORDER_REFLECT_101) for m in up.numpy()])


@pytest.mark.parametrize("grid, size, sigma", [
    ((80, 80), (640, 640), 6.0),  # deeppcb at its own 640 px, the high-resolution blur
    ((26, 26), (208, 208), 4.0),  # magnetic_tile's default
    ((36, 60), (288, 480), 6.0),  # non-square
    ((6, 9), (13, 21), 4.0),  # a 33-tap kernel on a 13-px axis: the border reflected more than once
    ((26, 26), (208, 208), 0.0),  # upsampling alone
])
def test_map_is_bilinear_upsampling_then_opencv_blur(grid, size, sigma):
    rng = np.random.default_rng(0)
    maps = rng.gamma(2.0, 1.0, (3, *grid)).astype(np.float32)
    maps[0, grid[0] // 2, grid[1] // 3] += 20.0  # one hot cell, as a small defect gives
    want = plain_upsample_and_blur(maps, size, sigma)
    got = upsample_and_blur(maps, size, sigma)
    assert got.shape == want.shape == (3, *size)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert np.abs(bundle_upsample_and_blur(maps, size, sigma) - got).max() <= 1e-5 * np.abs(want).max()


def test_map_of_a_real_board_is_the_plain_one():
    """A map made from a real defective board (its grey levels on the 80 x 80 patch grid) resamples onto the same
    pixels both ways."""
    from core.data import read_image

    board = sorted((REPO.parent / "shared" / "datasets" / "deeppcb_00041" / "test" / "defect").glob("*.jpg"))[0]
    img = read_image(board, keep_gray=True).astype(np.float32)
    grid = cv2.resize(img, (80, 80), interpolation=cv2.INTER_AREA)[None]
    want = plain_upsample_and_blur(grid, (640, 640), 6.0)
    got = upsample_and_blur(grid, 640, 6.0)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert want.flat[got.argmax()] >= want.max() - 1e-5 * want.max()  # the brightest pixel is one of the plain's

"""The anomaly map's resampling: torch's bilinear upsampling then OpenCV's Gaussian blur (how maps were made before)
against the same maps as two matrix products (core.detectors.postprocess.upsample_and_blur), same process,
alternating rounds. (The bundle multiplies the same matrices with numpy, in a process without torch: timed here
beside torch, numpy's spinning OpenBLAS threads and torch's OpenMP threads slow each other, so it is not timed.)

    .venv/bin/python benchmarks/map_resampling.py

Cases: magnetic_tile's 26 x 26 patch maps to 208 px (sigma 4, 16 maps), deeppcb's 80 x 80 to 640 px (sigma 6, 16
maps), a 12-MP image's 375 x 500 to 3000 x 4000 px (sigma 6, one map). Median wall ms per map over the rounds, the
largest difference from the plain way (relative to the map's maximum), and the matrices' one-off build time per
new size. Prints a table and writes benchmarks/results/map_resampling.json.
"""

from __future__ import annotations

import time

import numpy as np
from common import table, write_result

CASES = {"208 px": ((26, 26), (208, 208), 4.0, 16), "640 px": ((80, 80), (640, 640), 6.0, 16),
         "12 MP": ((375, 500), (3000, 4000), 6.0, 1)}


def plain(patch_maps: np.ndarray, hw: tuple[int, int], sigma: float) -> np.ndarray:
    """The maps as they were made before: torch's bilinear upsampling, then OpenCV's blur map by map."""
    import cv2
    import torch
    import torch.nn.functional as F

    up = F.interpolate(torch.from_numpy(patch_maps)[:, None], size=hw, mode="bilinear", align_corners=False)[:, 0]
    ksize = 2 * int(4.0 * sigma + 0.5) + 1
    return np.stack([cv2.GaussianBlur(m, (ksize, ksize), sigmaX=sigma, sigmaY=sigma) for m in up.numpy()])


def main() -> None:
    import torch

    from core.detectors.postprocess import upsample_and_blur as torch_matrices
    from core.detectors.resize_matrices import map_matrix

    started = time.perf_counter()
    torch.set_num_threads(2)
    ways = {"plain (torch upsample + OpenCV blur)": plain, "two matrix products (torch)": torch_matrices}
    rows, results = [], {}
    for case, (grid, hw, sigma, n) in CASES.items():
        maps = np.random.default_rng(0).gamma(2.0, 1.0, (n, *grid)).astype(np.float32)
        map_matrix.cache_clear()
        t0 = time.perf_counter()
        torch_matrices(maps[:1], hw, sigma)
        build_ms = 1000 * (time.perf_counter() - t0)
        ref = plain(maps, hw, sigma)
        times: dict[str, list[float]] = {w: [] for w in ways}
        for _ in range(7 if n > 1 else 3):
            for way, fn in ways.items():
                t0 = time.perf_counter()
                fn(maps, hw, sigma)
                times[way].append(1000 * (time.perf_counter() - t0) / n)
        base = float(np.median(times[next(iter(ways))]))
        for way, fn in ways.items():
            ms = float(np.median(times[way]))
            diff = float(np.abs(fn(maps, hw, sigma) - ref).max() / np.abs(ref).max())
            results.setdefault(case, {})[way] = {"ms_per_map": ms, "speedup_vs_plain": base / ms, "max_rel_diff": diff}
            rows.append([case, way, ms, base / ms, f"{diff:.1e}"])
        results[case]["matrix_build_ms"] = build_ms
        rows.append([case, "(matrices built once per new size)", build_ms, "", ""])
    print(table(["maps", "way", "ms per map", "x plain", "max rel diff"], rows))
    print("wrote", write_result("map_resampling", {"cases": results}, started))


if __name__ == "__main__":
    main()

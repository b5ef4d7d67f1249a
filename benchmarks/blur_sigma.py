"""Does a wider blur localise better, or only score better? Pixel AUROC and AUPRO of one PatchCore model against
the Gaussian sigma of its anomaly map, on magnetic_tile's ``test`` (MVTec protocol), ``val_mix`` and ``test_mix``.

    .venv/bin/python benchmarks/blur_sigma.py [--sigmas 2,4,6,8,10,12] [--map-neighbors 1]

Fits the default PatchCore (1 % greedy, lite0, 208 px) on train/good once (features from
the disk cache when warm); only the blur of the same patch-distance maps changes between rows (maps from the
``--map-neighbors`` nearest bank patches; 1 reproduces the README's nearest-neighbour table). Writes
benchmarks/results/blur_sigma.json.
"""

from __future__ import annotations

import argparse
import time

from common import MAGNETIC_TILE, patch_distances_on_splits, table, write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sigmas", default="2,4,6,8,10,12")
    ap.add_argument("--map-neighbors", type=int, default=1)
    args = ap.parse_args()
    started = time.perf_counter()
    sigmas = [float(s) for s in args.sigmas.split(",")]

    from core.data import index_dataset
    from core.detectors import PatchCore, PatchCoreConfig
    from core.detectors.postprocess import upsample_and_blur
    from core.features import FeatureCache
    from core.metrics import aupro, pixel_auroc

    index = index_dataset(MAGNETIC_TILE)
    cache = FeatureCache()
    det = PatchCore(PatchCoreConfig())
    det.fit([str(index.abs_path(r)) for r in index.split("train_normal")], cache=cache)
    rows, out = [], {}
    splits = patch_distances_on_splits(det, index, cache, ("test", "val_mix", "test_mix"), args.map_neighbors)
    for split, (masks, usable, dist, grid) in splits.items():
        patch_maps = dist.mean(axis=1).reshape(grid)
        for sigma in sigmas:
            maps = upsample_and_blur(patch_maps, det.image_size, sigma)[usable]
            px, pro = pixel_auroc(masks[usable], maps), aupro(masks[usable], maps)
            out.setdefault(split, {})[str(sigma)] = {"pixel_auroc": px, "aupro": pro}
            rows.append([split, sigma, round(px, 4), round(pro, 4)])
    print(table(["split", "sigma", "pixel AUROC", "AUPRO"], rows))
    write_result("blur_sigma", {"sigmas": sigmas, "map_neighbors": args.map_neighbors,
                                "memory_bank_size": int(len(det.bank)), "results": out}, started)


if __name__ == "__main__":
    main()

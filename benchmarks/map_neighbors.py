"""How many nearest bank patches should a PatchCore anomaly map average? Pixel AUROC and AUPRO against k, on
magnetic_tile's ``val_mix`` (where the default is chosen) and ``test`` (MVTec protocol, reported only).

    .venv/bin/python benchmarks/map_neighbors.py [--ks 1,3,5,9] [--sigma 4]

Fits the default PatchCore (1 % greedy, lite0, 208 px) on train/good once (features from
the disk cache when warm), searches the largest k once, and builds each row's maps from the same distances: k = 1 is
the paper's
nearest-neighbour map, k > 1 the mean over the k nearest (SPADE's pixel score). Also times the search at k = 1 and
the largest k on the same queries. Writes benchmarks/results/map_neighbors.json.
"""

from __future__ import annotations

import argparse
import time

from common import MAGNETIC_TILE, patch_distances_on_splits, table, write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ks", default="1,3,5,9")
    ap.add_argument("--sigma", type=float, default=4.0)
    args = ap.parse_args()
    started = time.perf_counter()
    ks = sorted(int(k) for k in args.ks.split(","))

    from core.data import index_dataset
    from core.detectors import PatchCore, PatchCoreConfig
    from core.detectors.postprocess import upsample_and_blur
    from core.features import FeatureCache
    from core.metrics import aupro, pixel_auroc

    index = index_dataset(MAGNETIC_TILE)
    cache = FeatureCache()
    det = PatchCore(PatchCoreConfig())
    det.fit([str(index.abs_path(r)) for r in index.split("train_normal")], cache=cache)
    splits = patch_distances_on_splits(det, index, cache, ("val_mix", "test"), ks[-1])
    rows, out = [], {}
    for split, (masks, usable, dist, grid) in splits.items():
        for k in ks:
            maps = upsample_and_blur(dist[:, :k].mean(axis=1).reshape(grid), det.image_size, args.sigma)[usable]
            px, pro = pixel_auroc(masks[usable], maps), aupro(masks[usable], maps)
            out.setdefault(split, {})[str(k)] = {"pixel_auroc": px, "aupro": pro}
            rows.append([split, k, round(px, 4), round(pro, 4)])
    print(table(["split", "k", "pixel AUROC", "AUPRO"], rows))

    from core.detectors.embedding import to_patches

    queries = to_patches(det.embed(det.extractor(cache).extract_paths(
        [str(index.abs_path(r)) for r in index.split("test")[:16]]).features))
    search_ms = {}
    for k in (ks[0], ks[-1], ks[0], ks[-1]):  # alternate, keep the second round
        t0 = time.perf_counter()
        det.index.search(queries, k)
        search_ms[str(k)] = 1000 * (time.perf_counter() - t0) / 16
    print(f"search ms/image: k={ks[0]} {search_ms[str(ks[0])]:.1f}, k={ks[-1]} {search_ms[str(ks[-1])]:.1f}")
    write_result("map_neighbors", {"ks": ks, "sigma": args.sigma, "memory_bank_size": int(len(det.bank)),
                                   "search_ms_per_image": search_ms, "results": out}, started)


if __name__ == "__main__":
    main()

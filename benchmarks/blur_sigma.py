"""Does a wider blur localise better, or only score better? Pixel AUROC and AUPRO of one PatchCore model against
the Gaussian sigma of its anomaly map, on magnetic_tile's ``test`` (MVTec protocol), ``val_mix`` and ``test_mix``.

    .venv/bin/python benchmarks/blur_sigma.py [--sigmas 2,4,6,8,10,12]

Fits the default PatchCore (1 % greedy, lite0, 224 px) on train/good once (features from the disk cache when
warm); only the blur of the same patch-distance maps changes between rows. Writes benchmarks/results/blur_sigma.json.
"""

from __future__ import annotations

import argparse
import time

from common import MAGNETIC_TILE, table, write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sigmas", default="2,4,6,8,10,12")
    args = ap.parse_args()
    started = time.perf_counter()
    sigmas = [float(s) for s in args.sigmas.split(",")]

    from core.data import index_dataset
    from core.detectors import PatchCore, PatchCoreConfig
    from core.detectors.postprocess import upsample_and_blur
    from core.evaluation import ground_truth_masks
    from core.features import FeatureCache
    from core.metrics import aupro, pixel_auroc

    index = index_dataset(MAGNETIC_TILE)
    cache = FeatureCache()
    det = PatchCore(PatchCoreConfig())
    det.fit([str(index.abs_path(r)) for r in index.split("train_normal")], cache=cache)
    rows, out = [], {}
    for split in ("test", "val_mix", "test_mix"):
        records = index.split(split)
        feats = det.extractor(cache).extract_paths([str(index.abs_path(r)) for r in records])
        records = [records[i] for i in feats.ok]
        masks, usable = ground_truth_masks(index, records, det.image_size)
        _, patch_maps, _ = det._score_embeddings(feats.features)
        for sigma in sigmas:
            maps = upsample_and_blur(patch_maps, det.image_size, sigma)[usable]
            px, pro = pixel_auroc(masks[usable], maps), aupro(masks[usable], maps)
            out.setdefault(split, {})[str(sigma)] = {"pixel_auroc": px, "aupro": pro}
            rows.append([split, sigma, round(px, 4), round(pro, 4)])
    print(table(["split", "sigma", "pixel AUROC", "AUPRO"], rows))
    write_result("blur_sigma", {"sigmas": sigmas, "memory_bank_size": int(len(det.bank)), "results": out}, started)


if __name__ == "__main__":
    main()

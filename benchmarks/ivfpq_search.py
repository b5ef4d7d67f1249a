"""Flat vs IVF-PQ (with and without exact re-rank) on a PatchCore memory bank of >= 1M vectors.

    .venv/bin/python benchmarks/ivfpq_search.py [--test-images 30] [--nlist 1024] [--nprobe 8,16]

The bank is every locally aware patch of magnetic_tile's train/good images and of their mirror images
(676 x 2 x 784 = 1.06M vectors x 152 dims, no coreset), so that the search, not the coreset, is what is
measured. The same test images (half normal, half defective) are scored with each index: search ms per
image, index memory, image AUROC and its change against flat, recall@1 of the exact nearest neighbour.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import MAGNETIC_TILE, table, write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--test-images", type=int, default=30)
    ap.add_argument("--nprobe", default="8,16")
    ap.add_argument("--nlist", type=int, default=1024)
    args = ap.parse_args()
    started = time.perf_counter()

    from core.config import set_threads
    from core.data import index_dataset, read_image
    from core.detectors import PatchCore, PatchCoreConfig, SearchConfig
    from core.detectors.embedding import patch_embedding, to_patches
    from core.detectors.search import MemoryBankIndex
    from core.features import FeatureCache
    from core.metrics import image_metrics

    set_threads()
    index = index_dataset(MAGNETIC_TILE)
    det = PatchCore(PatchCoreConfig(num_neighbors=1))
    ext = det.extractor(FeatureCache())
    train = [str(index.abs_path(r)) for r in index.split("train_normal")]
    feats = ext.extract_paths(train).features
    parts = [to_patches(patch_embedding(feats, ext.spec.layers, 3))]
    for s in range(0, len(train), 32):  # mirrored images: real extra normal patches
        imgs = [read_image(p)[:, ::-1].copy() for p in train[s : s + 32]]
        parts.append(to_patches(patch_embedding(ext.extract_images(imgs), ext.spec.layers, 3)))
    bank = np.concatenate(parts)
    del parts, feats
    print(f"bank: {bank.shape[0]:,} x {bank.shape[1]}")

    test = index.split("test")
    rng = np.random.default_rng(0)
    good = [r for r in test if r.label == 0]
    bad = [r for r in test if r.label == 1]
    half = args.test_images // 2
    picked = [good[i] for i in rng.choice(len(good), half, replace=False)] + [
        bad[i] for i in rng.choice(len(bad), half, replace=False)
    ]
    labels = np.array([r.label for r in picked])
    tfeats = ext.extract_paths([str(index.abs_path(r)) for r in picked]).features
    queries = to_patches(patch_embedding(tfeats, ext.spec.layers, 3))
    n_img = len(picked)

    configs = [("flat", SearchConfig("flat"))]
    for nbits in (4, 8):
        for nprobe in map(int, args.nprobe.split(",")):
            for rerank in (False, True):
                configs.append((f"ivfpq{nbits}b np{nprobe}{' +rerank' if rerank else ''}",
                                SearchConfig("ivfpq", nlist=args.nlist, nbits=nbits, nprobe=nprobe, rerank=rerank)))
    rows, out = [], {}
    flat_nn = None
    flat_auroc = None
    built: dict[tuple, MemoryBankIndex] = {}
    for name, cfg in configs:
        t0 = time.perf_counter()
        # one trained IVF-PQ per code size; "no re-rank" searches its inner IVF-PQ index directly
        key = (cfg.kind, cfg.nbits)
        idx = built.get(key) or MemoryBankIndex(bank, SearchConfig(**{**cfg.to_dict(), "rerank": True}))
        built[key] = idx
        build_s = time.perf_counter() - t0
        searcher = idx
        if cfg.kind == "ivfpq":
            idx.ivf.nprobe = cfg.nprobe
            searcher = idx if cfg.rerank else idx.ivf
        t0 = time.perf_counter()
        d2, nn = searcher.search(queries, 1)
        search_s = time.perf_counter() - t0
        scores = np.sqrt(d2[:, 0]).reshape(n_img, -1).max(axis=1)
        auroc = image_metrics(labels, scores).auroc
        if flat_nn is None:
            flat_nn, flat_auroc = nn[:, 0].copy(), auroc
        recall = float((nn[:, 0] == flat_nn).mean())
        mem = idx.memory_bytes() if cfg.rerank or cfg.kind == "flat" else idx.ivf_bytes()
        row = dict(build_s=build_s, search_ms_per_image=1000 * search_s / n_img, memory_mb=mem / 1e6,
                   image_auroc=auroc, auroc_change=auroc - flat_auroc, recall_at_1=recall,
                   effective=getattr(idx, "effective", {}))
        out[name] = row
        rows.append([name, row["search_ms_per_image"], row["memory_mb"], auroc, row["auroc_change"], recall, build_s])
        print(rows[-1], flush=True)
    flat_ms = out["flat"]["search_ms_per_image"]
    for r in rows:
        r.insert(2, flat_ms / r[1])
    print(table(["index", "search ms / image", "speed-up vs flat", "memory MB", "image AUROC", "AUROC change",
                 "recall@1", "build s"], rows))
    write_result("ivfpq_search", {"bank_size": int(bank.shape[0]), "dim": int(bank.shape[1]), "test_images": n_img,
                                  "queries": int(len(queries)), "results": out}, started)


if __name__ == "__main__":
    main()

"""Does a larger coreset help PatchCore's image score, and how many patches need re-measuring against it?

    .venv/bin/python benchmarks/rescore_bank.py [--seeds 0,1,2,3,4,5] [--ratios 0.01,0.02,0.03,0.05]
                                                [--candidates 8,16,32]

Greedy k-center picks are a prefix chain: the first 1 % of a 5 % run is the 1 % coreset (same seed). So one run
per seed gives every bank size. For each seed and split (magnetic_tile ``test``, MVTec protocol, and
``val_mix``): every patch's nearest distance to the 1 % bank (the default model's map bank), then the ``T``
patches farthest from it re-measured against the first ``ratio`` of the picks, and the paper's image score (s* of
the farthest of them, reweighted over m*'s 9 neighbours in that bank). ratio 0.01 is the plain model.

Written apart from ``core.detectors.patchcore`` (numpy + faiss on the same features) so it also checks the
product's ``rescore_ratio`` / ``rescore_patches`` against an independent implementation. Prints a table of
image AUROC (mean over seeds) and the re-measuring ms per image; writes benchmarks/results/rescore_bank.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import magnetic_tile_train, table, write_result


def reweighted(bank, index, m_test: np.ndarray, s_star: np.ndarray, nn: np.ndarray, k: int = 9) -> np.ndarray:
    """Paper eq. 7 on ``bank``: (1 - softmax over m*'s k neighbours of ||m_test - m_j||, first term) * s*."""
    _, support = index.search(np.ascontiguousarray(bank[nn]), k)
    d = np.linalg.norm(bank[support] - m_test[:, None, :], axis=2)
    e = np.exp(d - d.max(axis=1, keepdims=True))
    return (1.0 - e[:, 0] / e.sum(axis=1)) * s_star


def _mean_sd(v: np.ndarray) -> str:
    return f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2,3,4,5")
    ap.add_argument("--ratios", default="0.01,0.02,0.03,0.05")
    ap.add_argument("--candidates", default="8,16,32")
    args = ap.parse_args()
    started = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    ratios = [float(r) for r in args.ratios.split(",")]
    cands = [int(t) for t in args.candidates.split(",")]

    import faiss

    from core.detectors import PatchCore, PatchCoreConfig
    from core.detectors.coreset import coreset_size, select_coreset
    from core.detectors.embedding import to_patches
    from core.metrics import image_metrics

    index, cache, train = magnetic_tile_train()
    det = PatchCore(PatchCoreConfig(rescore_ratio=0.0))  # the default features (lite0, 208 px, strides 8 + 16)
    ext = det.extractor(cache)
    train_patches = to_patches(det.embed(ext.extract_paths(train).features))
    splits = {}
    for split in ("test", "val_mix"):
        recs = index.split(split)
        emb = det.embed(ext.extract_paths([str(index.abs_path(r)) for r in recs]).features)
        n, c, h, w = emb.shape
        splits[split] = (to_patches(emb).reshape(n, h * w, c), np.array([r.label for r in recs]))
    n_map = coreset_size(len(train_patches), det.cfg.ratio, None)
    runs = []
    for seed in seeds:
        t0 = time.perf_counter()
        picks = select_coreset(train_patches, "greedy", ratio=max(ratios), projection_dim=0, seed=seed).indices
        coreset_s = time.perf_counter() - t0
        map_bank = np.ascontiguousarray(train_patches[picks[:n_map]])
        map_index = faiss.IndexFlatL2(map_bank.shape[1])
        map_index.add(map_bank)
        for split, (patches, labels) in splits.items():
            n, p, c = patches.shape
            d2, _ = map_index.search(patches.reshape(-1, c), 1)
            order = np.argsort(-d2[:, 0].reshape(n, p), axis=1)
            for ratio in ratios:
                bank = np.ascontiguousarray(train_patches[picks[: coreset_size(len(train_patches), ratio, None)]])
                bank_index = faiss.IndexFlatL2(c)
                bank_index.add(bank)
                for t in cands:
                    top = order[:, :t]
                    q = np.ascontiguousarray(np.take_along_axis(patches, top[:, :, None], axis=1).reshape(-1, c))
                    t1 = time.perf_counter()
                    qd2, qnn = bank_index.search(q, 1)
                    ms = 1000 * (time.perf_counter() - t1) / n
                    dist = np.sqrt(np.maximum(qd2[:, 0], 0)).reshape(n, t)
                    j = dist.argmax(axis=1)
                    rows = np.arange(n)
                    score = reweighted(bank, bank_index, patches[rows, top[rows, j]], dist[rows, j],
                                       qnn[:, 0].reshape(n, t)[rows, j])
                    runs.append({"seed": seed, "split": split, "ratio": ratio, "bank": len(bank), "candidates": t,
                                 "image_auroc": image_metrics(labels, score).auroc, "search_ms_per_image": ms,
                                 "coreset_s": coreset_s})
        print(f"seed {seed}: greedy {max(ratios):.0%} in {coreset_s:.1f} s", flush=True)
    rows = []
    for ratio in ratios:
        for t in cands:
            sel = [r for r in runs if r["ratio"] == ratio and r["candidates"] == t]
            test = np.array([r["image_auroc"] for r in sel if r["split"] == "test"])
            val = np.array([r["image_auroc"] for r in sel if r["split"] == "val_mix"])
            ms = np.mean([r["search_ms_per_image"] for r in sel if r["split"] == "test"])
            rows.append([f"{ratio:.0%}", sel[0]["bank"], t, _mean_sd(val), _mean_sd(test), f"{ms:.2f}"])
    print(table(["rescore bank", "rows", "patches T", "val_mix image AUROC", "test image AUROC",
                 "re-measure ms/image (batched)"], rows))
    write_result("rescore_bank", {"seeds": seeds, "map_bank": n_map, "runs": runs}, started)


if __name__ == "__main__":
    main()

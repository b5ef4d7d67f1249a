"""How many normal images does PatchCore's fit-time threshold need?

    .venv/bin/python benchmarks/calibration_size.py [--fractions 0.1,0.25,0.5,1.0] [--seed 0]

The decision threshold is the 0.99 quantile of normal scores fixed at fit time (training images scored with their
own bank rows left out). A 0.99 quantile of 68 scores (the old 10 % slice of magnetic_tile's 676) is about their
maximum, so it moves with every draw. This fits the default PatchCore once, scores every training image left out
(the same scores ``fit`` computes for its slice), and for each calibration fraction takes the slice ``fit`` would
take (``core.data.splits.holdout``, nested slices) and reports its threshold, the share of ``val_mix`` and ``test``
normals above it (aim: about 1 %), the share of defects above it, and the calibration seconds that fraction costs
(measured per image on the full pass). Writes benchmarks/results/calibration_size.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import magnetic_tile_train, table, write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fractions", default="0.1,0.25,0.5,1.0")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    started = time.perf_counter()
    fractions = [float(f) for f in args.fractions.split(",")]

    from core.data.splits import holdout
    from core.detectors import PatchCore, PatchCoreConfig
    from core.evaluation import score_with_ground_truth

    index, cache, train = magnetic_tile_train()
    det = PatchCore(PatchCoreConfig(seed=args.seed))
    det.fit(train, cache=cache)
    feats = det.extractor(cache).extract_paths(det.train_paths).features
    n = len(det.train_paths)
    t0 = time.perf_counter()
    train_scores = np.concatenate([
        det.score_embeddings({k: v[s : s + 64] for k, v in feats.items()}, leave_out=np.arange(s, min(s + 64, n)))[0]
        for s in range(0, n, 64)
    ])
    per_image_s = (time.perf_counter() - t0) / n
    splits = {name: score_with_ground_truth(det, index, index.split(name), cache) for name in ("val_mix", "test")}
    rows, out = [], []
    for f in fractions:
        _, calib = holdout(list(range(n)), f, f"calibration:{det.seed}")  # the slice fit() takes
        thr = float(np.quantile(train_scores[calib], 0.99))
        r = {"fraction": f, "n_calibration": len(calib), "threshold": thr, "calibrate_s": per_image_s * len(calib)}
        for name, sc in splits.items():
            s, y = sc.result.scores, sc.labels
            r[f"{name}_normals_flagged"] = float((s[y == 0] > thr).mean())
            r[f"{name}_defects_flagged"] = float((s[y == 1] > thr).mean())
            r[f"{name}_n_normals"] = int((y == 0).sum())
        out.append(r)
        rows.append([f, len(calib), round(thr, 2), round(r["calibrate_s"], 1), f"{r['val_mix_normals_flagged']:.3f}",
                     f"{r['test_normals_flagged']:.3f}", f"{r['val_mix_defects_flagged']:.3f}",
                     f"{r['test_defects_flagged']:.3f}"])
    print(table(["fraction", "images", "threshold", "calibrate s", "val_mix normals flagged", "test normals flagged",
                 "val_mix defects flagged", "test defects flagged"], rows))
    write_result("calibration_size", {"seed": args.seed, "runs": out,
                                      "n_normals": {k: r[f"{k}_n_normals"] for k in splits}}, started)


if __name__ == "__main__":
    main()

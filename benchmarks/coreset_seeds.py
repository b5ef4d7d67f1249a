"""How much does PatchCore's accuracy depend on the coreset's random draw? The default model (greedy 1 %, lite0,
208 px) fitted with several seeds (the seed sets the greedy start point and the random
projection), each scored on magnetic_tile's ``test`` (MVTec protocol) and ``val_mix``.

    .venv/bin/python benchmarks/coreset_seeds.py [--seeds 0,1,2,3,4,5] [--projection-dim 0] [--backbone NAME]

Features come from the disk cache when warm, so each seed costs a coreset and two scoring passes. Prints one
row per seed and the mean / standard deviation; writes benchmarks/results/coreset_seeds.json (with
``_proj<D>`` and ``_<backbone>`` suffixes for non-default settings).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import magnetic_tile_train, table, write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2,3,4,5")
    ap.add_argument("--projection-dim", type=int, default=0,
                    help="0: the default (auto: none for lite0's 152 channels); >= 152 also means none")
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    args = ap.parse_args()
    started = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]

    from core.detectors import PatchCore, PatchCoreConfig
    from core.evaluation import score_with_ground_truth
    from core.metrics import image_metrics, pixel_auroc

    index, cache, train = magnetic_tile_train()
    rows, out = [], {}
    for seed in seeds:
        det = PatchCore(PatchCoreConfig(backbone=args.backbone, seed=seed, projection_dim=args.projection_dim))
        det.fit(train, cache=cache)
        for split in ("test", "val_mix"):
            scored = score_with_ground_truth(det, index, index.split(split), cache)
            res = scored.result
            image = image_metrics(scored.labels, res.scores).auroc
            # an alternative image score, for comparison only: the maximum of the blurred 3-NN map
            map_max = image_metrics(scored.labels, res.maps.reshape(len(res.maps), -1).max(axis=1)).auroc
            usable = scored.usable
            pixel = pixel_auroc(scored.masks[usable], res.maps[usable])
            out.setdefault(split, []).append({"seed": seed, "image_auroc": image, "pixel_auroc": pixel,
                                              "image_auroc_map_max": map_max})
            rows.append([seed, split, round(image, 4), round(pixel, 4), round(map_max, 4)])
    summary = {}
    for split, runs in out.items():
        for key in ("image_auroc", "pixel_auroc", "image_auroc_map_max"):
            v = np.array([r[key] for r in runs])
            summary[f"{split}_{key}"] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                                         "min": float(v.min()), "max": float(v.max())}
            rows.append(["mean ± sd", split + " " + key, round(float(v.mean()), 4),
                         round(summary[f"{split}_{key}"]["std"], 4), ""])
    print(table(["seed", "split", "image AUROC", "pixel AUROC", "image AUROC (map max)"], rows))
    name = "coreset_seeds" + (f"_proj{args.projection_dim}" if args.projection_dim else "")
    name += "" if args.backbone == "tf_efficientnet_lite0" else f"_{args.backbone}"
    write_result(name, {"seeds": seeds, "projection_dim": args.projection_dim, "backbone": args.backbone,
                        "runs": out, "summary": summary}, started)


if __name__ == "__main__":
    main()

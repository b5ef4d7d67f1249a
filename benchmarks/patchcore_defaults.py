"""How PatchCore's input size and fine-layer weight were chosen: a grid over both, several coreset seeds each,
scored on magnetic_tile's ``val_mix`` (where defaults are picked) and ``test`` (MVTec protocol, reported).

    .venv/bin/python benchmarks/patchcore_defaults.py [--grid 224:1,224:2,...] [--seeds 0,1,2]

Pixel AUROC and AUPRO are computed on one common grid for every size: maps resized bilinearly to 224 x 224 and compared
with the masks at 224 (nearest), as the side-by-side with anomalib does, so a smaller input does not score on
coarser masks. Everything else is the default (1 % greedy coreset, lite0, k = 9 reweighting, 3-NN map,
sigma 4). Prints one row per setting (mean over seeds) and writes benchmarks/results/patchcore_defaults.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import MAGNETIC_TILE, table, write_result

DEFAULT_GRID = "224:1,224:2,224:0.5,208:1,208:0.75,208:0.5,192:1"
EVAL_SIZE = 224


def at_eval_size(maps: np.ndarray) -> np.ndarray:
    """N x s x s maps -> N x 224 x 224 (bilinear, no blur), the common grid of the pixel metrics."""
    from core.detectors.postprocess import upsample_and_blur

    return maps if maps.shape[-1] == EVAL_SIZE else upsample_and_blur(maps, EVAL_SIZE, sigma=0)


def score_split(det, index, split: str, cache, masks: dict) -> tuple[object, dict[str, float]]:
    """Score ``split`` (features through ``cache``) and measure it: image AUROC on the raw scores, pixel AUROC and
    AUPRO on the common 224 grid. ``masks`` keeps each split's ground truth between calls. Returns the scored
    split (``core.evaluation.score_with_ground_truth``) and the three metrics."""
    from core.evaluation import ground_truth_masks, score_with_ground_truth
    from core.metrics import aupro, image_metrics, pixel_auroc

    scored = score_with_ground_truth(det, index, index.split(split), cache, masks=False)
    if split not in masks:
        masks[split] = ground_truth_masks(index, scored.records, EVAL_SIZE, [])
    gt, usable = masks[split]
    maps = at_eval_size(scored.result.maps)[usable]
    return scored, {"image_auroc": image_metrics(scored.labels, scored.result.scores).auroc,
                    "pixel_auroc": pixel_auroc(gt[usable], maps), "aupro": aupro(gt[usable], maps)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", default=DEFAULT_GRID, help="comma-separated image_size:fine_layer_weight pairs")
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    started = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    grid = [(int(a), float(b)) for a, b in (g.split(":") for g in args.grid.split(","))]

    from core.data import index_dataset
    from core.detectors import PatchCore, PatchCoreConfig
    from core.features import FeatureCache

    index = index_dataset(MAGNETIC_TILE)
    cache = FeatureCache()
    train = [str(index.abs_path(r)) for r in index.split("train_normal")]
    masks = {}
    runs = []
    for size, weight in grid:
        for seed in seeds:
            det = PatchCore(PatchCoreConfig(image_size=size, fine_layer_weight=weight, seed=seed))
            det.fit(train, cache=cache)
            for split in ("val_mix", "test"):
                _, measured = score_split(det, index, split, cache, masks)
                runs.append({"image_size": size, "fine_layer_weight": weight, "seed": seed, "split": split,
                             **measured, "memory_bank_size": int(len(det.bank))})
            done = ", ".join(f"{r['split']} {r['image_auroc']:.4f} / {r['pixel_auroc']:.4f} / {r['aupro']:.4f}"
                             for r in runs[-2:])
            print(f"  {size} px, weight {weight}, seed {seed}: {done}", flush=True)
    summary, rows = [], []
    for size, weight in grid:
        row = {"image_size": size, "fine_layer_weight": weight}
        for split in ("val_mix", "test"):
            mine = [r for r in runs if (r["image_size"], r["fine_layer_weight"], r["split"]) == (size, weight, split)]
            for key in ("image_auroc", "pixel_auroc", "aupro"):
                v = np.array([r[key] for r in mine])
                row[f"{split}_{key}"] = float(v.mean())
                row[f"{split}_{key}_sd"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        summary.append(row)
        rows.append([size, weight] + [f"{row[f'{sp}_{k}']:.4f} ± {row[f'{sp}_{k}_sd']:.4f}"
                                      for sp in ("val_mix", "test") for k in ("image_auroc", "pixel_auroc", "aupro")])
    print(table(["size", "fine weight", "val_mix image AUROC", "val_mix pixel AUROC", "val_mix AUPRO",
                 "test image AUROC", "test pixel AUROC", "test AUPRO"], rows))
    write_result("patchcore_defaults", {"grid": [list(g) for g in grid], "seeds": seeds, "eval_size": EVAL_SIZE,
                                        "summary": summary, "runs": runs}, started)


if __name__ == "__main__":
    main()

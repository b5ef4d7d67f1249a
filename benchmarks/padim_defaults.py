"""How PaDiM's input size, channel count and image score were chosen: a grid over sizes and channel counts, several
channel draws each, scored on magnetic_tile's ``val_mix`` (where defaults are picked) and ``test`` (MVTec
protocol, reported).

    .venv/bin/python benchmarks/padim_defaults.py [--grid 224:100,224:152,...] [--seeds 0,1,2,3,4]

Each fit (``channels`` random channels of blocks.2 + blocks.4's 152, seed = the draw; all 152 need one draw) is
scored two ways from the same
maps: ``grid max``, the largest Mahalanobis distance on the feature grid (the paper), and ``map max``, the
largest value of the upsampled, Gaussian-blurred (sigma 4) anomaly map (anomalib's image score). Pixel AUROC and
AUPRO are computed on a common 224 x 224 grid for every size (as in patchcore_defaults.py). Prints one row per
setting (mean +- sd over seeds) and writes benchmarks/results/padim_defaults.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import MAGNETIC_TILE, table, write_result
from patchcore_defaults import EVAL_SIZE, score_split

DEFAULT_GRID = "192:100,208:100,224:100,256:100,224:152,208:152"
SPLITS = ("val_mix", "test")
SCORES = ("grid max", "map max")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", default=DEFAULT_GRID, help="comma-separated image_size:channels pairs")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    args = ap.parse_args()
    started = time.perf_counter()
    grid = [(int(a), int(b)) for a, b in (g.split(":") for g in args.grid.split(","))]
    seeds = [int(s) for s in args.seeds.split(",")]

    from core.data import index_dataset
    from core.detectors import Padim, PadimConfig
    from core.features import FeatureCache
    from core.metrics import image_metrics

    index = index_dataset(MAGNETIC_TILE)
    cache = FeatureCache()
    train = [str(index.abs_path(r)) for r in index.split("train_normal")]
    masks = {}
    runs = []
    for size, channels in grid:
        for seed in seeds if channels < 152 else seeds[:1]:
            det = Padim(PadimConfig(image_size=size, n_channels=channels, seed=seed))
            det.fit(train, cache=cache)
            for split in SPLITS:
                scored, measured = score_split(det, index, split, cache, masks)
                maps = scored.result.maps
                runs.append({
                    "image_size": size, "channels": channels, "seed": seed, "split": split,
                    "image_auroc grid max": measured.pop("image_auroc"),
                    "image_auroc map max": image_metrics(scored.labels, maps.reshape(len(maps), -1).max(axis=1)).auroc,
                    **measured,
                })
            done = ", ".join(f"{r['split']} {r['image_auroc grid max']:.4f} | {r['image_auroc map max']:.4f} / "
                             f"{r['pixel_auroc']:.4f} / {r['aupro']:.4f}" for r in runs[-2:])
            print(f"  {size} px, {channels} channels, seed {seed} "
                  f"(image AUROC grid max | map max / pixel AUROC / AUPRO): {done}",
                  flush=True)
    keys = [f"image_auroc {k}" for k in SCORES] + ["pixel_auroc", "aupro"]
    summary, rows = [], []
    for size, channels in grid:
        row = {"image_size": size, "channels": channels}
        for split in SPLITS:
            mine = [r for r in runs if (r["image_size"], r["channels"], r["split"]) == (size, channels, split)]
            for key in keys:
                v = np.array([r[key] for r in mine])
                row[f"{split} {key}"] = float(v.mean())
                row[f"{split} {key} sd"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        summary.append(row)
        rows.append([size, channels] + [f"{row[f'{sp} {k}']:.4f} ± {row[f'{sp} {k} sd']:.4f}"
                                        for sp in SPLITS for k in keys])
    print(table(["size", "channels"] + [f"{sp} {k.replace('_', ' ')}" for sp in SPLITS for k in keys], rows))
    write_result("padim_defaults", {"grid": [list(g) for g in grid], "seeds": seeds, "eval_size": EVAL_SIZE,
                                    "summary": summary, "runs": runs}, started)


if __name__ == "__main__":
    main()

"""How long OpenMP threads spin before sleeping (GOMP_SPINCOUNT, beside OMP_WAIT_POLICY=PASSIVE) against scoring time.

    .venv/bin/python benchmarks/thread_policy.py [--spins 0,2000,20000,200000] [--rounds 2] [--images 48]

libgomp reads its settings once, when torch or faiss load it, so each setting runs in its own process. The parent
fits the default PatchCore on magnetic_tile's train/good once (features from the disk cache when warm) and saves
it; each child loads that model and scores ``--images`` test images, decoded beforehand, in batches of 16 and
one at a time (3 passes, median). Settings alternate over ``--rounds`` rounds; the table gives each setting's
median and range and the ratio against PASSIVE alone (spin count 0). Writes benchmarks/results/thread_policy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import MAGNETIC_TILE, REPO, table, write_result


def child(model_dir: str, n_images: int) -> None:
    """Time one setting (this process's environment) and print one JSON line."""
    from core.config import set_threads
    from core.data import index_dataset, read_image
    from core.detectors import load_detector

    set_threads(2)
    det = load_detector(model_dir)
    index = index_dataset(MAGNETIC_TILE)
    test = [str(index.abs_path(r)) for r in index.split("test")]
    pick = np.random.default_rng(0).choice(len(test), n_images, replace=False)
    imgs = [read_image(test[i]) for i in sorted(pick)]
    det.score_images(imgs[:2])  # warm-up
    batched, single, split = [], [], {}
    for _ in range(3):
        t0 = time.perf_counter()
        for s in range(0, len(imgs), 16):
            for k, v in det.score_images(imgs[s : s + 16]).seconds.items():
                split[k] = split.get(k, 0.0) + v
        batched.append(1000 * (time.perf_counter() - t0) / len(imgs))
        t0 = time.perf_counter()
        for im in imgs[:16]:
            det.score_images([im])
        single.append(1000 * (time.perf_counter() - t0) / 16)
    print(json.dumps({"batch16_ms": float(np.median(batched)), "batch1_ms": float(np.median(single)),
                      **{f"{k}_ms": 1000 * v / (3 * len(imgs)) for k, v in split.items()}}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spins", default="0,2000,20000,200000")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.images)
        return
    started = time.perf_counter()
    from core.data import index_dataset
    from core.detectors import PatchCore, PatchCoreConfig
    from core.features import FeatureCache

    spins = [int(s) for s in args.spins.split(",")]
    index = index_dataset(MAGNETIC_TILE)
    det = PatchCore(PatchCoreConfig())
    det.fit([str(index.abs_path(r)) for r in index.split("train_normal")], cache=FeatureCache())
    runs: dict[int, list[dict[str, float]]] = {s: [] for s in spins}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(Path(tmp) / "model")
        det.save(model_dir)
        del det
        for r in range(args.rounds):
            for spin in spins:
                env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", GOMP_SPINCOUNT=str(spin), PYTHONPATH=str(REPO))
                out = subprocess.run([sys.executable, __file__, "--child", model_dir, "--images", str(args.images)],
                                     env=env, capture_output=True, text=True, check=True)
                runs[spin].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"round {r + 1}, GOMP_SPINCOUNT={spin}: {runs[spin][-1]['batch16_ms']:.1f} / "
                      f"{runs[spin][-1]['batch1_ms']:.1f} ms", flush=True)
    base = {b: float(np.median([x[f"{b}_ms"] for x in runs[spins[0]]])) for b in ("batch16", "batch1")}
    rows, results = [], {}
    for spin in spins:
        med = {k: float(np.median([x[k] for x in runs[spin]])) for k in runs[spin][0]}
        results[str(spin)] = {"median": med, "runs": runs[spin]}
        rows.append([spin] + [f"{med[f'{b}_ms']:.1f} ({min(x[f'{b}_ms'] for x in runs[spin]):.1f}-"
                              f"{max(x[f'{b}_ms'] for x in runs[spin]):.1f})" for b in ("batch16", "batch1")]
                    + [round(med.get("backbone_ms", 0.0), 1), round(med.get("search_ms", 0.0), 1)]
                    + [round(base[b] / med[f"{b}_ms"], 2) for b in ("batch16", "batch1")])
    print(table(["GOMP_SPINCOUNT", "batch 16 ms/img median (range)", "one at a time", "backbone ms (b16)",
                 "search ms (b16)", "speed-up b16 vs 0", "speed-up b1 vs 0"], rows))
    write_result("thread_policy", {"spins": spins, "rounds": args.rounds, "images": args.images,
                                   "results": results}, started)


if __name__ == "__main__":
    main()

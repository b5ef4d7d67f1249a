"""End-to-end scoring time per image (decode, backbone, search, map) for PatchCore and PaDiM.

    .venv/bin/python benchmarks/scoring_speed.py [--images 64] [--threads 2] [--dataset DIR] [--detectors patchcore]

Fits each detector on magnetic_tile's (or ``--dataset``'s) train/good (features from the disk cache when warm),
then scores ``--images`` test images from disk without the feature cache, in batches of 16 and one at a time. The
baseline rows are the same PatchCore model with the inference copy as the frozen TorchScript graph instead of
onnxruntime (``frozen graph, no onnxruntime``: ``core/backbones/onnx_feature_graph.py``), run eagerly (``eager
inference copy``: no frozen graph, ``core/backbones/feature_graph.py``), with the backbone as built (``backbone as
built``: BatchNorm as separate layers, TF "same" padding by padded copies) and as built in the plain NCHW layout
(``NCHW, backbone as built``: before any of the backbone speed-ups), timed in the same process in alternating
rounds with the default (the inference copy, BatchNorm folded and padding inside the convolutions, run by
onnxruntime); each row is the median of its rounds, so the ratios are fair on a noisy machine. Thread settings are
the product's (``core/config.py``: OMP_WAIT_POLICY=PASSIVE with GOMP_SPINCOUNT=20000), which no row can switch
inside one process. Writes benchmarks/results/scoring_speed[_DATASET].json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import MAGNETIC_TILE, table, write_result


def time_detector(det, paths: list[str]) -> dict[str, float]:
    from core.data import read_image

    det.score_images([read_image(paths[0])])  # warm-up (lazy init, allocator)
    t0 = time.perf_counter()
    imgs = [read_image(p) for p in paths]
    decode = time.perf_counter() - t0
    split: dict[str, float] = {}
    t0 = time.perf_counter()
    for s in range(0, len(imgs), 16):
        for k, v in det.score_images(imgs[s : s + 16]).seconds.items():
            split[k] = split.get(k, 0.0) + v
    batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for im in imgs[:16]:
        det.score_images([im])
    single = (time.perf_counter() - t0) / 16
    n = len(imgs)
    out = {"decode_ms": 1000 * decode / n, "batch16_ms": 1000 * batched / n, "batch1_ms": 1000 * single}
    out.update({f"{k}_ms": 1000 * v / n for k, v in split.items()})
    out["end_to_end_batch16_ms"] = out["decode_ms"] + out["batch16_ms"]
    out["end_to_end_batch1_ms"] = out["decode_ms"] + out["batch1_ms"]
    return out


VARIANTS = {  # row name -> (channels_last, inference copy, traced, onnxruntime, key of its speed-up ratio)
    "patchcore": (True, True, True, True, ""),
    "patchcore (frozen graph, no onnxruntime)": (True, True, True, False, "frozen_graph"),
    "patchcore (eager inference copy)": (True, True, False, False, "eager_copy"),
    "patchcore (backbone as built)": (True, False, False, False, "as_built"),
    "patchcore (NCHW, backbone as built)": (False, False, False, False, "nchw_as_built"),
}


def backbone_baselines(det, sample: list[str], results: dict, rounds: int = 3) -> None:
    """Time every VARIANTS row ``rounds`` times in alternation; each row becomes the median of its rounds."""
    backbone = det.extractor().backbone
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    runs["patchcore"].append(results["patchcore"])
    for _ in range(rounds):
        for name, (channels_last, folded, traced, onnx, _) in VARIANTS.items():
            backbone.set_channels_last(channels_last)
            backbone.set_batchnorm_folding(folded)
            backbone.trace_features = traced
            backbone.onnx_features = onnx
            runs[name].append(time_detector(det, sample))
    backbone.set_channels_last(True)
    backbone.set_batchnorm_folding(True)
    backbone.trace_features = backbone.onnx_features = True
    for name, rs in runs.items():
        results[name] = {k: float(np.median([r[k] for r in rs])) for k in rs[0]}
    for baseline, (*_, key) in list(VARIANTS.items())[1:]:
        for batch in ("batch1", "batch16"):
            results[f"speedup_vs_{key}_{batch}"] = (
                results[baseline][f"end_to_end_{batch}_ms"] / results["patchcore"][f"end_to_end_{batch}_ms"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dataset", default=str(MAGNETIC_TILE), help="e.g. ../shared/datasets/deeppcb_00041 (640 px)")
    ap.add_argument("--detectors", default="patchcore,padim", help="comma-separated: patchcore,padim")
    args = ap.parse_args()
    started = time.perf_counter()

    from core.config import set_threads
    from core.data import index_dataset
    from core.detectors import Padim, PadimConfig, PatchCore, PatchCoreConfig
    from core.features import FeatureCache

    set_threads(args.threads)
    index = index_dataset(args.dataset)
    train = [str(index.abs_path(r)) for r in index.split("train_normal")]
    test = [str(index.abs_path(r)) for r in index.split("test")]
    rng = np.random.default_rng(0)
    sample = [test[i] for i in sorted(rng.choice(len(test), args.images, replace=False))]
    results = {}
    detectors = {"patchcore": PatchCore(PatchCoreConfig()), "padim": Padim(PadimConfig())}
    for name, det in ((n, detectors[n]) for n in args.detectors.split(",")):
        det.fit(train, cache=FeatureCache())
        results[name] = time_detector(det, sample)
        if name == "patchcore":
            backbone_baselines(det, sample, results)
            results[name]["memory_bank_size"] = int(len(det.bank))
    cols = ["decode_ms", "backbone_ms", "search_ms", "mahalanobis_ms", "map_ms", "end_to_end_batch16_ms",
            "end_to_end_batch1_ms"]
    rows = [[name] + [round(r.get(c, 0.0), 1) for c in cols] for name, r in results.items() if isinstance(r, dict)]
    print(table(["detector"] + cols, rows))
    for key, value in results.items():
        if key.startswith("speedup_vs_"):
            print(f"default backbone {key.replace('_', ' ')}: {value:.2f}x end to end (same process)")
    suffix = "" if Path(args.dataset).resolve() == MAGNETIC_TILE.resolve() else f"_{Path(args.dataset).name}"
    write_result(f"scoring_speed{suffix}", {"dataset": Path(args.dataset).name, "images": args.images,
                                             "threads": args.threads, "results": results}, started)


if __name__ == "__main__":
    main()

"""What the feature cache saves: the same evaluation twice on magnetic_tile, cold cache then warm.

    .venv/bin/python benchmarks/feature_cache.py [--detector patchcore]

Both runs happen in this process with a fresh cache folder; reported: feature extraction time and the
whole fit + evaluate time, cold vs warm, and their ratios.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import MAGNETIC_TILE, table, write_result


def one_run(detector: str, cache_root: str) -> dict[str, float]:
    from core.data import index_dataset
    from core.detectors import Padim, PadimConfig, PatchCore, PatchCoreConfig
    from core.evaluation import evaluate_split
    from core.features import FeatureCache

    cache = FeatureCache(root=cache_root)
    index = index_dataset(MAGNETIC_TILE)
    det = PatchCore(PatchCoreConfig()) if detector == "patchcore" else Padim(PadimConfig())
    t0 = time.perf_counter()
    fit = det.fit([str(index.abs_path(r)) for r in index.split("train_normal")], cache=cache)
    t1 = time.perf_counter()
    ev = evaluate_split(det, index, "test", cache=cache)
    t2 = time.perf_counter()
    return {
        "extract_train_s": fit.seconds["extract"],
        "fit_s": t1 - t0,
        "evaluate_s": t2 - t1,
        "total_s": t2 - t0,
        "cache_hits": cache.stats.hits,
        "cache_misses": cache.stats.misses,
        "image_auroc": ev.metrics["image_auroc"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--detector", default="patchcore", choices=["patchcore", "padim"])
    args = ap.parse_args()
    started = time.perf_counter()
    from core.config import set_threads

    set_threads()
    with tempfile.TemporaryDirectory() as tmp:
        cold = one_run(args.detector, tmp)
        warm = one_run(args.detector, tmp)
    assert abs(cold["image_auroc"] - warm["image_auroc"]) < 1e-9, "cached features changed the result"
    rows = [
        ["cold", cold["extract_train_s"], cold["evaluate_s"], cold["total_s"], cold["cache_hits"],
         cold["cache_misses"]],
        ["warm", warm["extract_train_s"], warm["evaluate_s"], warm["total_s"], warm["cache_hits"],
         warm["cache_misses"]],
        [
            "cold / warm",
            cold["extract_train_s"] / warm["extract_train_s"],
            cold["evaluate_s"] / warm["evaluate_s"],
            cold["total_s"] / warm["total_s"],
            "",
            "",
        ],
    ]
    print(table(["run", "train extraction s", "test scoring s", "fit + evaluate s", "hits", "misses"], rows))
    write_result(
        "feature_cache",
        {
            "detector": args.detector,
            "cold": cold,
            "warm": warm,
            "extraction_speedup": cold["extract_train_s"] / warm["extract_train_s"],
            "evaluate_speedup": cold["evaluate_s"] / warm["evaluate_s"],
            "total_speedup": cold["total_s"] / warm["total_s"],
        },
        started,
    )


if __name__ == "__main__":
    main()

"""Exported bundle (OpenVINO and onnxruntime, no torch in the scoring code) vs the torch path, per image, same
images, same process; and score parity on every magnetic_tile test image.

    .venv/bin/python benchmarks/bundle_speed.py [--detector patchcore] [--train 676] [--images 96] [--rounds 3]
    .venv/bin/python benchmarks/bundle_speed.py --dataset ../shared/datasets/deeppcb_00041   # 640-px boards

Fits the detector on the first ``--train`` train/good images of ``--dataset`` (magnetic_tile by default; product
defaults, so at the automatic scale: 640 px and the high-resolution settings on deeppcb), saves it, exports it
with ``--format onnx --format openvino``, then times ``score_images`` on the same ``--images`` decoded test
images for the torch path and the bundle on each runtime: in batches of 16 and one image at a time, in
``--rounds`` alternating rounds (each row the median of its rounds, so ratios are fair on a shared machine). All
rows use every core (torch: core.config.set_threads; bundle: one thread per core for the runtime and faiss).
Parity: every test image of the dataset scored from disk (``score_paths``) by each path; the largest relative score
difference, decisions that differ, and the largest difference of normalised maps (1 = the pixel threshold).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import MAGNETIC_TILE, table, write_result


def _time(score, images: list[np.ndarray]) -> dict[str, float]:
    n = len(images)
    t0 = time.perf_counter()
    for s in range(0, n, 16):
        score(images[s:s + 16])
    batched = time.perf_counter() - t0
    k = min(16, n)
    t0 = time.perf_counter()
    for im in images[:k]:
        score([im])
    single = time.perf_counter() - t0
    return {"batch16_ms": 1000 * batched / n, "batch1_ms": 1000 * single / k}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--detector", choices=["patchcore", "padim"], default="patchcore")
    ap.add_argument("--train", type=int, default=676)
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dataset", default=str(MAGNETIC_TILE))
    ap.add_argument("--precision", default="float32",
                    help="PatchCore's backbone arithmetic at fit (the bundle's graph is float32 whatever it is)")
    args = ap.parse_args()
    started = time.perf_counter()

    from core.bundle.export import export_bundle
    from core.bundle.runtime import load_bundle
    from core.config import set_threads
    from core.data import index_dataset, read_image
    from core.detectors import Padim, PatchCore, PatchCoreConfig, load_detector
    from core.features import FeatureCache

    set_threads()
    index = index_dataset(args.dataset)
    dataset = Path(index.root).name
    train = [str(index.abs_path(r)) for r in index.split("train_normal")][: args.train]
    test = [str(index.abs_path(r)) for r in index.split("test")]
    tmp = Path(tempfile.mkdtemp(prefix="bundle_speed-"))
    det = PatchCore(PatchCoreConfig(precision=args.precision)) if args.detector == "patchcore" else Padim()
    t0 = time.perf_counter()
    det.fit(train, cache=FeatureCache())
    fit_s = time.perf_counter() - t0
    det.save(tmp / "model")
    t0 = time.perf_counter()
    export_bundle(tmp / "model", tmp / "bundle", ["onnx", "openvino"])
    export_s = time.perf_counter() - t0
    det = load_detector(tmp / "model")
    rows = {"torch": det.score_images}
    for rt in ("openvino", "onnxruntime"):
        rows[rt] = load_bundle(tmp / "bundle", runtime=rt).score_images

    step = max(1, len(test) // args.images)
    images = [read_image(p, keep_gray=True) for p in test[::step][: args.images]]
    for score in rows.values():
        score(images[:2])  # warm-up: lazy graphs, allocators
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in rows}
    for _ in range(args.rounds):
        for name, score in rows.items():
            runs[name].append(_time(score, images))
    timing = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    for name in rows:
        for k in ("batch16_ms", "batch1_ms"):
            timing[name][k.replace("_ms", "_speedup")] = timing["torch"][k] / timing[name][k]

    ref = det.score_paths(test)
    parity = {}
    for rt in ("openvino", "onnxruntime"):
        b = load_bundle(tmp / "bundle", runtime=rt)
        res = b.score_paths(test)
        assert res.ok == ref.ok
        norm = b.normalisation
        parity[rt] = {
            "images": len(res.ok),
            "max_relative_score_difference": float(np.max(np.abs(res.scores - ref.scores) / np.abs(ref.scores))),
            "decisions_differing": int(np.sum((res.scores >= b.threshold) != (ref.scores >= det.threshold))),
            "anomalous_decisions": int(np.sum(ref.scores >= det.threshold)),
            "max_normalised_map_difference": float(
                np.abs(norm.normalise_map(res.maps) - norm.normalise_map(ref.maps)).max()),
        }

    print(f"{args.detector}, fitted on {len(train)} {dataset} train/good images at {det.input_hw[0]} x "
          f"{det.input_hw[1]} px in {fit_s:.1f} s, exported in "
          f"{export_s:.1f} s; {len(images)} test images, median of {args.rounds} alternating rounds\n")
    print(table(["path", "ms/image batch 16", "speed-up", "ms/image batch 1", "speed-up"],
                [[n, t["batch16_ms"], t["batch16_speedup"], t["batch1_ms"], t["batch1_speedup"]]
                 for n, t in timing.items()]))
    print()
    print(table(["runtime", "test images", "max rel. score diff", "decisions differing", "max norm. map diff"],
                [[rt, p["images"], f"{p['max_relative_score_difference']:.2e}", p["decisions_differing"],
                  f"{p['max_normalised_map_difference']:.2e}"] for rt, p in parity.items()]))
    name = (f"bundle_speed_{args.detector}" + ("" if dataset == MAGNETIC_TILE.name else f"_{dataset}")
            + ("" if args.precision == "float32" else f"_{args.precision}"))
    write_result(name, {"args": vars(args), "dataset": dataset, "input_hw": list(det.input_hw), "fit_seconds": fit_s,
                                                    "export_seconds": export_s, "timing": timing, "runs": runs,
                                                    "parity": parity}, started)


if __name__ == "__main__":
    main()

"""Batch scoring into Parquet on Ray vs in-process: throughput with 1 and 2 single-threaded actors, and Ray's
overhead against the in-process run at equal threads.

    .venv/bin/python benchmarks/ray_scoring.py [--images 600] [--batch-size 32] [--memory-images 0]

A PatchCore bundle (ONNX, product defaults) fitted on the demo's train/good; ``--images`` demo test images (256 px
PNGs). Rows, each its own fresh output folder: in-process with 1 thread; Ray (a local cluster on loopback, 4
logical CPUs) with 1 actor x 1 thread, then 2 actors x 1 thread. Ray rows are timed from the moment every actor
has loaded the model (``on_started``) to the last partition written; the in-process row from its first batch.
``--memory-images N`` (e.g. 10000) then scores N more demo images on 2 actors and reports each actor's RSS after
its first and its last batch (``results/ray_scoring_memory.json``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import table, write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--memory-images", type=int, default=0)
    args = ap.parse_args()
    started = time.perf_counter()
    import os

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback (core/scale/ray_scoring.py)
    from core.bundle.export import export_bundle
    from core.data import make_demo_dataset
    from core.detectors import PatchCore
    from core.scale.batch_scoring import load_scorer, score_to_parquet
    from core.scale.ray_scoring import score_on_ray

    tmp = Path(tempfile.mkdtemp(prefix="ray_scoring-"))
    half = args.images // 2
    data = make_demo_dataset(tmp / "data", n_train=40, n_test_good=half, n_test_defect=args.images - half)
    det = PatchCore()
    det.fit(sorted(str(p) for p in (data / "train" / "good").glob("*.png")))
    det.save(tmp / "model")
    export_bundle(tmp / "model", tmp / "bundle", ["onnx"])
    sources = [str(data / "test")]

    rows = {}
    load_scorer(tmp / "bundle", 1)  # warm the file cache and imports before the first timed row
    s = score_to_parquet(tmp / "bundle", sources, tmp / "in_process", batch_size=args.batch_size, threads=1)
    rows["in-process, 1 thread"] = {"seconds": s.seconds, "images": s.scored}
    for n_actors in (1, 2):
        mark: dict = {}
        s = score_on_ray(tmp / "bundle", sources, tmp / f"ray_{n_actors}", actors=n_actors, threads_per_actor=1,
                         batch_size=args.batch_size, on_started=lambda pool: mark.setdefault("t", time.perf_counter()))
        rows[f"ray, {n_actors} actor(s) x 1 thread"] = {"seconds": time.perf_counter() - mark["t"],
                                                       "images": s.scored, "with_start_seconds": s.seconds}
    for r in rows.values():
        r["images_per_second"] = r["images"] / r["seconds"]
    base = rows["in-process, 1 thread"]["images_per_second"]
    one = rows["ray, 1 actor(s) x 1 thread"]["images_per_second"]
    two = rows["ray, 2 actor(s) x 1 thread"]["images_per_second"]
    summary = {"two_vs_one_actor": two / one, "ray_overhead_vs_in_process": base / one - 1.0}
    print(table(["run", "images", "seconds", "images/s"],
                [[k, r["images"], r["seconds"], r["images_per_second"]] for k, r in rows.items()]))
    print(f"\n2 actors vs 1: {summary['two_vs_one_actor']:.2f}x; Ray (1 actor) vs in-process at 1 thread: "
          f"{100 * summary['ray_overhead_vs_in_process']:+.1f} % time")
    if not args.memory_images:
        write_result("ray_scoring", {"args": vars(args), "rows": rows, **summary}, started)
        return
    memory = rss_run(tmp, args.memory_images, args.batch_size)
    write_result("ray_scoring_memory", {"args": vars(args), "rows": rows, **summary, "memory": memory}, started)


def rss_run(tmp: Path, n: int, batch_size: int) -> dict:
    """Score ``n`` fresh demo images on 2 actors; each actor's RSS after its first and last batch."""
    import ray

    from core.config import PROJECT_ROOT
    from core.data import make_demo_dataset
    from core.scale.ray_scoring import score_on_ray, start_ray

    data = make_demo_dataset(tmp / "many", seed=1, n_train=0, n_test_good=n // 2, n_test_defect=n - n // 2)
    start_ray(None, PROJECT_ROOT)  # started here, so the actors outlive score_on_ray for their RSS
    try:
        pools: list = []
        s = score_on_ray(tmp / "bundle", [str(data / "test")], tmp / "many_out", actors=2, batch_size=batch_size,
                         on_started=pools.append)
        hist = [ray.get(a.rss_history.remote()) for a in pools[0]]
    finally:
        ray.shutdown()
    per_actor = [{"batches": len(h), "first_mb": h[0] / 2**20, "last_mb": h[-1] / 2**20,
                  "max_mb": max(h) / 2**20, "growth": h[-1] / h[0] - 1.0} for h in hist if h]
    print(table(["actor", "batches", "RSS after first batch (MB)", "after last (MB)", "max (MB)", "growth"],
                [[i, a["batches"], a["first_mb"], a["last_mb"], a["max_mb"], f"{100 * a['growth']:+.1f} %"]
                 for i, a in enumerate(per_actor)]))
    print(f"{s.scored} images in {s.seconds:.0f} s ({s.scored / s.seconds:.1f} images/s)")
    return {"images": s.scored, "seconds": s.seconds, "actors": per_actor}


if __name__ == "__main__":
    main()

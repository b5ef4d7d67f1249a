"""Soak: N scoring requests through the engine (det.score_images on small images), then M uploads through the app's
upload path (the Score images page under AppTest, real page and model, only the browser's file picker replaced),
each with bounded memory.

    python benchmarks/soak.py [--requests 2000] [--app-uploads 300]

Reports RSS at start (after warm-up) and end (goal: growth < 10 %) and per-request latency p50/p95 for each phase.
Writes benchmarks/results/soak.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import table, write_result  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from tests import fuzz_cases as F  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--app-uploads", type=int, default=300, help="uploads through the Score images page (0: skip)")
    ap.add_argument("--per-rerun", type=int, default=10, help="files per upload (one page rerun each)")
    args = ap.parse_args()
    started = time.perf_counter()
    proc = psutil.Process()
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    det = F.tiny_model(work / "model", image_size=args.image_size)
    rng = np.random.default_rng(0)
    pool = F.good_images(32, seed=5, size=48) + [rng.integers(0, 256, (s, s + 7, 3), dtype=np.uint8)
                                                 for s in (17, 40, 64, 90)]
    for img in pool[:20]:  # warm-up: allocator and thread pools settle
        det.score_images([img])
    rss0 = proc.memory_info().rss
    lat = np.empty(args.requests)
    samples = []
    for i in range(args.requests):
        t = time.perf_counter()
        res = det.score_images([pool[i % len(pool)]])
        lat[i] = (time.perf_counter() - t) * 1000
        assert np.isfinite(res.scores).all()
        if i % 200 == 0:
            samples.append((i, proc.memory_info().rss))
    rss1 = proc.memory_info().rss
    growth = (rss1 - rss0) / rss0
    p50, p95 = np.percentile(lat, [50, 95])
    rows = [["engine", args.requests, rss0 / 1e6, rss1 / 1e6, 100 * growth, float(p50), float(p95)]]
    result = {
        "requests": args.requests, "image_size": args.image_size,
        "rss_start_bytes": rss0, "rss_end_bytes": rss1, "rss_growth": growth,
        "rss_samples": samples, "latency_ms": {"p50": float(p50), "p95": float(p95), "max": float(lat.max())},
        "goal_growth_below": 0.10,
    }
    ok = growth < 0.10
    if args.app_uploads > 0:
        app = app_upload_soak(work, args.app_uploads, args.per_rerun, proc)
        result["app_uploads"] = app
        rows.append(["app uploads", app["uploads"], app["rss_start_bytes"] / 1e6, app["rss_end_bytes"] / 1e6,
                     100 * app["rss_growth"], app["latency_ms_per_image"]["p50"], app["latency_ms_per_image"]["p95"]])
        ok = ok and app["rss_growth"] < 0.10 and app["failed"] == 0
    print(table(["phase", "requests", "RSS start MB", "RSS end MB", "growth %", "p50 ms", "p95 ms"], rows))
    write_result("soak", result, started)
    return 0 if ok else 1


def app_upload_soak(work: Path, uploads: int, per_rerun: int, proc: psutil.Process) -> dict:
    """``uploads`` distinct PNGs through the Score images page, ``per_rerun`` per page run, in one app session."""
    import cv2

    from tests.app_harness import score_page_with_uploads, set_uploads

    rng = np.random.default_rng(7)
    base = F.good_images(8, seed=11, size=96)

    def batch(k: int) -> list[tuple[str, bytes]]:
        out = []
        for j in range(per_rerun):
            img = base[(k + j) % len(base)].astype(np.int16) + rng.integers(-6, 7, base[0].shape, dtype=np.int16)
            ok, png = cv2.imencode(".png", np.clip(img, 0, 255).astype(np.uint8))
            out.append((f"upload_{k:04d}_{j:02d}.png", png.tobytes()))  # every upload new bytes: no cached result
        return out

    at, folder = score_page_with_uploads(work / "app", batch(0), work / "model")
    at.run()  # warm-up: model load, page imports
    rss0 = proc.memory_info().rss
    per_image, failed, done, reruns = [], 0, 0, 0
    while done < uploads:
        set_uploads(folder, batch(reruns + 1))
        t = time.perf_counter()
        at.run()
        wall = (time.perf_counter() - t) * 1000
        reruns += 1
        table_ = at.dataframe[0].value if at.dataframe else None
        good = 0 if table_ is None else int((table_["decision"] != "error").sum())
        failed += per_rerun - good + len(at.exception)
        per_image.append(wall / per_rerun)
        done += per_rerun
    rss1 = proc.memory_info().rss
    p50, p95 = np.percentile(per_image, [50, 95])
    return {
        "uploads": done, "reruns": reruns, "per_rerun": per_rerun, "failed": failed,
        "rss_start_bytes": rss0, "rss_end_bytes": rss1, "rss_growth": (rss1 - rss0) / rss0,
        "latency_ms_per_image": {"p50": float(p50), "p95": float(p95)},
        "note": "page wall time per rerun / files per rerun: decoding, scoring, overlays, table and drawing",
    }

if __name__ == "__main__":
    sys.exit(main())

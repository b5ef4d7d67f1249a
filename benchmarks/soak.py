"""Soak: N scoring requests through the engine (det.score_images on small images) with bounded memory.

    python benchmarks/soak.py [--requests 2000]

Reports RSS at start (after warm-up) and end (goal: growth < 10 %) and per-request latency p50/p95.
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

from core import fuzz as F  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--image-size", type=int, default=64)
    args = ap.parse_args()
    started = time.perf_counter()
    proc = psutil.Process()
    det = F.tiny_model(Path(tempfile.mkdtemp(prefix="soak-")) / "model", image_size=args.image_size)
    rng = np.random.default_rng(0)
    pool = F.good_images(32, seed=5, size=48) + [rng.integers(0, 256, (s, s + 7, 3), dtype=np.uint8) for s in (17, 40, 64, 90)]
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
    print(table(["requests", "RSS start MB", "RSS end MB", "growth %", "p50 ms", "p95 ms"],
                [[args.requests, rss0 / 1e6, rss1 / 1e6, 100 * growth, float(p50), float(p95)]]))
    write_result("soak", {
        "requests": args.requests, "image_size": args.image_size,
        "rss_start_bytes": rss0, "rss_end_bytes": rss1, "rss_growth": growth,
        "rss_samples": samples, "latency_ms": {"p50": float(p50), "p95": float(p95), "max": float(lat.max())},
        "goal_growth_below": 0.10,
    }, started)
    return 0 if growth < 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())

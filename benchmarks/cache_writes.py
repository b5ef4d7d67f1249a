"""Feature-cache writes by location: ``FeatureCache.put`` of one fit's worth of entries into a fresh cache folder.

    .venv/bin/python benchmarks/cache_writes.py [--entries 676] [--rounds 3] [--roots DIR ...]

Each round writes ``--entries`` entries of PaDiM's side-by-side shape (lite0 blocks.2 + blocks.4 at 224 px:
40 x 28 x 28 + 112 x 14 x 14 float32, ~213 KB) into a new folder under each root in turn (alternating, same
process), then deletes it. Default roots: the product's cache root (``core.config.CACHE_DIR``) and the system temp
folder. The product writes under ``CACHE_DIR``; the peer side by side (``peer_anomalib.py``) used to create its
fresh cache under the temp folder, where this machine creates files several times slower. Reports ms per entry
(median and range of rounds) and the ratio against the first root. Writes benchmarks/results/cache_writes.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from common import table, write_result


def write_round(root: Path, entries: list[dict[str, np.ndarray]]) -> float:
    """Seconds to put ``entries`` (random keys) into a fresh cache folder under ``root``."""
    from core.features import FeatureCache

    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cache-writes-", dir=root) as tmp:
        cache = FeatureCache(root=Path(tmp))
        keys = [os.urandom(32).hex() for _ in entries]
        t0 = time.perf_counter()
        for key, entry in zip(keys, entries):
            cache.put(key, entry)
        seconds = time.perf_counter() - t0
        if cache.stats.write_errors:
            raise SystemExit(f"{root}: {cache.stats.write_errors} entries could not be written")
    return seconds


def main() -> None:
    from core.config import CACHE_DIR

    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=676)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--roots", nargs="+", type=Path, default=[CACHE_DIR, Path(tempfile.gettempdir())])
    args = ap.parse_args()
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    batch = {"blocks.2": rng.standard_normal((4, 40, 28, 28), dtype=np.float32),
             "blocks.4": rng.standard_normal((4, 112, 14, 14), dtype=np.float32)}
    entries = [{k: v[i % 4] for k, v in batch.items()} for i in range(args.entries)]
    times: dict[str, list[float]] = {str(r): [] for r in args.roots}
    for _ in range(args.rounds):
        for root in args.roots:
            times[str(root)].append(1000 * write_round(root, entries) / len(entries))
    first = float(np.median(times[str(args.roots[0])]))
    rows, out = [], {}
    for root, ms in times.items():
        med = float(np.median(ms))
        out[root] = {"ms_per_entry": med, "rounds": ms, "ratio_vs_first_root": med / first}
        rows.append([root, f"{med:.2f}", f"{min(ms):.2f}-{max(ms):.2f}", f"{med / first:.2f}"])
    print(table(["root", "ms/entry median", "range", f"vs {args.roots[0]}"], rows))
    write_result("cache_writes", {"entries": args.entries, "entry_bytes": sum(a.nbytes for a in entries[0].values()),
                                  "results": out}, started)


if __name__ == "__main__":
    main()

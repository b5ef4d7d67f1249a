"""GAIN-MTL S1-S6 on magnetic_tile: train on train_normal + train_mix, early stopping on val_mix, report on test_mix.

A thin wrapper over ``python -m core gain compare`` that also stores the table with the machine facts in
``benchmarks/results/gain_compare.json``.

    python benchmarks/gain_compare.py [--out runs/gain_compare] [--epochs 18] [--image-size 192] [--limit N]
"""

from __future__ import annotations

import argparse
import time

from common import MAGNETIC_TILE, write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/gain_compare")
    ap.add_argument("--epochs", type=int, default=18)
    ap.add_argument("--image-size", type=int, default=192)
    ap.add_argument("--limit", type=int, default=None, help="images per class and split (quick check)")
    ap.add_argument("--strategies", default="S1,S2,S3,S4,S5,S6")
    args = ap.parse_args()

    from core.config import set_threads
    from core.data import index_dataset
    from core.gain.config import GainConfig
    from core.gain.evaluate import markdown_table, run_compare

    set_threads()
    t0 = time.perf_counter()
    base = GainConfig(strategy="S1", image_size=args.image_size, max_epochs=args.epochs, limit=args.limit)
    rows = run_compare(index_dataset(MAGNETIC_TILE), args.out, base, args.strategies.split(","))
    print(markdown_table(rows))
    write_result("gain_compare", {"rows": rows, "config": base.to_dict(), "out": args.out}, t0)


if __name__ == "__main__":
    main()

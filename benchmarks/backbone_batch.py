"""The CPU feature pass by batch size and arithmetic, at the tuned small size and at 640 px: what chose
``core.features.extractor.batch_for_pixels`` and the bfloat16 pass of the high-resolution settings.

    .venv/bin/python benchmarks/backbone_batch.py [--rounds 3]

lite0 blocks.2 + blocks.4 (PatchCore's default layers) on 16 real deeppcb boards, resized to 208 and to 640 px,
through ``LoadedBackbone.feature_maps`` (float32: the frozen graph; bfloat16: eager under autocast), batches of 1, 2
and 4; ms per image, the fastest of ``--rounds`` rounds, all in one process. The bfloat16 rows only mean something on
a CPU with AVX512-BF16 or AMX (``bfloat16_is_fast`` is printed); the relative error of their features against
float32 is printed beside them. Prints a table and writes benchmarks/results/backbone_batch.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from common import REPO, table, write_result  # noqa: E402

from core.backbones import bfloat16_is_fast, load_backbone  # noqa: E402
from core.data import read_image  # noqa: E402

BOARDS = sorted((REPO.parent / "shared" / "datasets" / "deeppcb_00041" / "test" / "good").glob("*.jpg"))[:16]
LAYERS = ("blocks.2", "blocks.4")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    started = time.perf_counter()
    lb = load_backbone("tf_efficientnet_lite0")
    images = [read_image(p) for p in BOARDS]
    rows = []
    for size in (208, 640):
        reference = lb.feature_maps(lb.preprocess(images[:2], size), LAYERS)
        for precision in ("float32", "bfloat16"):
            got = lb.feature_maps(lb.preprocess(images[:2], size), LAYERS, precision)
            err = max(float(np.abs(got[n] - reference[n]).mean() / reference[n].abs().mean()) for n in LAYERS)
            for batch in (1, 2, 4):
                def one_round() -> None:
                    for s in range(0, len(images), batch):
                        lb.feature_maps(lb.preprocess(images[s : s + batch], size), LAYERS, precision)

                one_round()  # warm-up (graph build)
                best = float("inf")
                for _ in range(args.rounds):
                    t0 = time.perf_counter()
                    one_round()
                    best = min(best, time.perf_counter() - t0)
                rows.append({"size": size, "precision": precision, "batch": batch,
                             "ms_per_image": 1000 * best / len(images), "feature_rel_error": err})
                print(rows[-1], flush=True)
    base = {r["size"]: r["ms_per_image"] for r in rows if r["precision"] == "float32" and r["batch"] == 4}
    for r in rows:
        r["speed_vs_float32_batch4"] = base[r["size"]] / r["ms_per_image"]
    print(f"\nbfloat16_is_fast: {bfloat16_is_fast()}")
    print(table(["size", "precision", "batch", "ms/image", "vs float32 batch 4", "feature rel. error"],
                [[r["size"], r["precision"], r["batch"], r["ms_per_image"], f"{r['speed_vs_float32_batch4']:.2f}x",
                  f"{r['feature_rel_error']:.3f}"] for r in rows]))
    write_result("backbone_batch", {"bfloat16_is_fast": bfloat16_is_fast(), "images": len(images), "rows": rows},
                 started)


if __name__ == "__main__":
    main()

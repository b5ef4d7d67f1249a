"""The CPU feature pass by runtime, batch size and arithmetic, from the tuned small size to 12 MP: what chose the
onnxruntime pass (``core/backbones/onnx_feature_graph.py``), ``core.features.extractor.batch_for_pixels`` and the
bfloat16 pass of the high-resolution settings.

    .venv/bin/python benchmarks/backbone_batch.py [--rounds 3] [--no-12mp]

lite0 blocks.2 + blocks.4 (PatchCore's default layers) on 16 real deeppcb boards, resized to 208 and to 640 px, and
one board resized to 4000 x 3000 (12 MP), through ``LoadedBackbone.feature_maps``; inputs are preprocessed before
the clock starts. Three passes, all in one process: float32 by onnxruntime (the default), float32 by the frozen
TorchScript graph (the pass before it; eager above 2 MP, where tracing a new size does not pay), bfloat16 (eager
under autocast). Batches of 1, 2 and 4 (12 MP: 1); ms per image, the fastest of ``--rounds`` rounds (12 MP: 2).
The bfloat16 rows only mean something on a CPU with AVX512-BF16 or AMX (``bfloat16_is_fast`` is printed). Beside
each row: the largest relative error of its features against the TorchScript pass. Prints a table and writes
benchmarks/results/backbone_batch.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import time  # noqa: E402

from common import REPO, table, write_result  # noqa: E402

from core.backbones import bfloat16_is_fast, load_backbone  # noqa: E402
from core.data import read_image  # noqa: E402

BOARDS = sorted((REPO.parent / "shared" / "datasets" / "deeppcb_00041" / "test" / "good").glob("*.jpg"))[:16]
LAYERS = ("blocks.2", "blocks.4")


PASSES = ("onnxruntime", "torchscript", "bfloat16")


def _run(lb, x, pass_name: str) -> dict:
    lb.onnx_features = pass_name == "onnxruntime"
    try:
        return lb.feature_maps(x, LAYERS, "bfloat16" if pass_name == "bfloat16" else "float32")
    finally:
        lb.onnx_features = True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-12mp", action="store_true", help="skip the 4000 x 3000 input (about a minute)")
    args = ap.parse_args()
    started = time.perf_counter()
    lb = load_backbone("tf_efficientnet_lite0")
    images = [read_image(p) for p in BOARDS]
    cases = [(208, (1, 2, 4), args.rounds), (640, (1, 2, 4), args.rounds)]
    if not args.no_12mp:
        cases.append(((3000, 4000), (1,), 2))
    rows = []
    for size, batches, rounds in cases:
        n = len(images) if max(batches) > 1 else 1
        inputs = {b: [lb.preprocess(images[s : s + b], size) for s in range(0, n, b)] for b in batches}
        reference = _run(lb, inputs[batches[0]][0], "torchscript")
        for pass_name in PASSES:
            got = _run(lb, inputs[batches[0]][0], pass_name)
            err = max(float((got[k] - reference[k]).abs().max() / reference[k].abs().max()) for k in LAYERS)
            for batch in batches:
                def one_round() -> None:
                    for x in inputs[batch]:
                        _run(lb, x, pass_name)

                one_round()  # warm-up (graph build)
                best = float("inf")
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    one_round()
                    best = min(best, time.perf_counter() - t0)
                label = size if isinstance(size, int) else f"{size[1]}x{size[0]}"
                rows.append({"size": label, "pass": pass_name, "batch": batch, "ms_per_image": 1000 * best / n,
                             "feature_max_rel_error": err})
                print(rows[-1], flush=True)
    base = {(r["size"], r["batch"]): r["ms_per_image"] for r in rows if r["pass"] == "torchscript"}
    for r in rows:
        r["speed_vs_torchscript"] = base[(r["size"], r["batch"])] / r["ms_per_image"]
    print(f"\nbfloat16_is_fast: {bfloat16_is_fast()}")
    print(table(["size", "pass", "batch", "ms/image", "vs torchscript", "feature max rel. error"],
                [[r["size"], r["pass"], r["batch"], r["ms_per_image"], f"{r['speed_vs_torchscript']:.2f}x",
                  f"{r['feature_max_rel_error']:.1e}"] for r in rows]))
    write_result("backbone_batch", {"bfloat16_is_fast": bfloat16_is_fast(), "images": len(images), "rows": rows},
                 started)


if __name__ == "__main__":
    main()

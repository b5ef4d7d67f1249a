"""Backbone feature pass alone: BatchNorm folded into the convolutions vs the model as built, same process.

    .venv/bin/python benchmarks/backbone_speed.py [--backbone tf_efficientnet_lite0] [--rounds 8]

Both variants run channels-last on random 224-px inputs through the default layers, at batch 1 and 16, in
``--rounds`` alternating rounds; the table gives the median and the fastest round per image. Writes
benchmarks/results/backbone_speed.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import table, write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    started = time.perf_counter()

    import torch

    from core.backbones import load_backbone
    from core.config import set_threads

    set_threads(2)
    bb = load_backbone(args.backbone)
    layers = list(bb.info.default_layers)
    x = torch.randn((16, 3, 224, 224), generator=torch.Generator().manual_seed(0))
    times: dict[tuple[bool, int], list[float]] = {(f, b): [] for f in (True, False) for b in (1, 16)}
    for _ in range(args.rounds):
        for folded in (True, False):
            bb.set_batchnorm_folding(folded)
            for batch in (1, 16):
                xb = x[:batch]
                bb.feature_maps(xb, layers)  # warm-up
                reps = max(2, 32 // batch)
                t0 = time.perf_counter()
                for _ in range(reps):
                    bb.feature_maps(xb, layers)
                times[(folded, batch)].append(1000 * (time.perf_counter() - t0) / (reps * batch))
    bb.set_batchnorm_folding(True)
    out, rows = {}, []
    for batch in (1, 16):
        med = {f: float(np.median(times[(f, batch)])) for f in (True, False)}
        out[f"batch{batch}"] = {"folded_ms": med[True], "as_built_ms": med[False], "ratio": med[False] / med[True],
                                "folded_rounds": times[(True, batch)], "as_built_rounds": times[(False, batch)]}
        rows.append([batch, round(med[True], 1), round(min(times[(True, batch)]), 1), round(med[False], 1),
                     round(min(times[(False, batch)]), 1), round(med[False] / med[True], 2)])
    print(table(["batch", "folded median ms/img", "folded best", "as built median", "as built best",
                 "as built / folded"], rows))
    write_result("backbone_speed", {"backbone": args.backbone, "layers": layers, "rounds": args.rounds,
                                    "results": out}, started)


if __name__ == "__main__":
    main()

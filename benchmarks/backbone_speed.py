"""Backbone feature pass alone: the inference copy vs the model as built, same process.

    .venv/bin/python benchmarks/backbone_speed.py [--backbone tf_efficientnet_lite0] [--rounds 8]

Six variants run channels-last on random 224-px inputs through the default layers, at batch 1, 4 (the CPU
extractor's batch) and 16, in ``--rounds`` alternating rounds: the model as built, the copy with BatchNorm
folded only, the inference copy (folded + TF "same" padding inside the convolutions,
``core/backbones/same_padding.py``) run eagerly, and the same copy as the frozen graph the product ran on the CPU
before (``core/backbones/feature_graph.py``): plain frozen, and rewritten for oneDNN; and the same copy run by
onnxruntime (``core/backbones/onnx_feature_graph.py``, the default). The first three run eagerly. The table gives
the median and the fastest round per image and the ratios against the model as built. Writes
benchmarks/results/backbone_speed.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import table, write_result

VARIANTS = ("as built", "folded only", "inference copy", "traced inference copy", "traced, oneDNN", "onnxruntime")
TRACED = VARIANTS[3:5]
BATCHES = (1, 4, 16)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    started = time.perf_counter()

    import torch

    from core.backbones import load_backbone
    from core.backbones.batchnorm_folding import fold_batchnorm
    from core.config import set_threads

    set_threads(2)
    bb = load_backbone(args.backbone)
    layers = list(bb.info.default_layers)
    inference_copy = bb.folded_model
    if inference_copy is None:
        raise SystemExit(f"{args.backbone} has no inference copy (nothing to fold); nothing to compare.")
    fold_only = fold_batchnorm(bb.model)[0].to(memory_format=torch.channels_last)
    models = {"as built": None, "folded only": fold_only, "inference copy": inference_copy,
              "traced inference copy": inference_copy, "traced, oneDNN": inference_copy, "onnxruntime": inference_copy}
    x = torch.randn((16, 3, 224, 224), generator=torch.Generator().manual_seed(0))
    times: dict[tuple[str, int], list[float]] = {(v, b): [] for v in VARIANTS for b in BATCHES}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            if models[variant] is None:
                bb.set_batchnorm_folding(False)
            else:
                bb.folded_model = models[variant]
                bb.set_batchnorm_folding(True)  # drops traced graphs: the warm-up below traces again
            bb.trace_features = variant in TRACED
            bb.onednn_graph = variant == "traced, oneDNN"
            bb.onnx_features = variant == "onnxruntime"
            for batch in BATCHES:
                xb = x[:batch]
                bb.feature_maps(xb, layers)  # warm-up
                reps = max(2, 32 // batch)
                t0 = time.perf_counter()
                for _ in range(reps):
                    bb.feature_maps(xb, layers)
                times[(variant, batch)].append(1000 * (time.perf_counter() - t0) / (reps * batch))
    bb.folded_model = inference_copy
    bb.set_batchnorm_folding(True)
    bb.trace_features = bb.onednn_graph = bb.onnx_features = True
    out, rows = {}, []
    for batch in BATCHES:
        med = {v: float(np.median(times[(v, batch)])) for v in VARIANTS}
        out[f"batch{batch}"] = {
            **{f"{v.replace(' ', '_')}_ms": med[v] for v in VARIANTS},
            "ratio_folded_only": med["as built"] / med["folded only"],
            "ratio_inference_copy": med["as built"] / med["inference copy"],
            "ratio_traced": med["as built"] / med["traced inference copy"],
            "ratio_traced_vs_eager_copy": med["inference copy"] / med["traced inference copy"],
            "ratio_onednn_vs_traced": med["traced inference copy"] / med["traced, oneDNN"],
            "ratio_onnxruntime_vs_onednn": med["traced, oneDNN"] / med["onnxruntime"],
            "rounds": {v: times[(v, batch)] for v in VARIANTS},
        }
        rows.append([batch] + [f"{med[v]:.1f} ({min(times[(v, batch)]):.1f})" for v in VARIANTS]
                    + [round(med["as built"] / med[v], 2) for v in VARIANTS[1:]]
                    + [round(med["inference copy"] / med["traced inference copy"], 2),
                       round(med["traced inference copy"] / med["traced, oneDNN"], 2),
                       round(med["traced, oneDNN"] / med["onnxruntime"], 2)])
    print(table(["batch"] + [f"{v} ms/img median (best)" for v in VARIANTS]
                + [f"as built / {v}" for v in VARIANTS[1:]] + ["eager / traced copy", "traced / oneDNN",
                   "oneDNN / onnxruntime"], rows))
    write_result("backbone_speed", {"backbone": args.backbone, "layers": layers, "rounds": args.rounds,
                                    "results": out}, started)


if __name__ == "__main__":
    main()

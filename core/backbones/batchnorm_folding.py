"""Fold frozen BatchNorm layers into the convolutions before them (an inference-only copy of a CNN).

A frozen BatchNorm is a per-channel affine map, so ``bn(conv(x))`` equals a convolution with scaled weights and a
bias. On 2 CPU cores tf_efficientnet_lite0 spends about a fifth of its feature pass in separate BatchNorm kernels
(measured with cProfile: 13 of 63 ms per image at batch 1); folding them removes that pass and changes the
features only by float rounding (max |diff| ~7e-5 on activations up to ~40). ``benchmarks/backbone_speed.py``
times the model as built, folded only, and the full inference copy side by side (folding alone, 2026-11-28:
1.71x in batches of 16, 1.24x in batches of 4, 1.25x one image at a time).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Rewrite ``conv`` in place so that it computes ``bn(conv(x))`` (BatchNorm in eval mode, no activation)."""
    inv_std = torch.rsqrt(bn.running_var + bn.eps)
    scale = bn.weight.detach() * inv_std if bn.affine else inv_std
    shift = (bn.bias.detach() if bn.affine else 0.0) - bn.running_mean * scale
    bias = shift if conv.bias is None else conv.bias.detach() * scale + shift
    conv.weight = nn.Parameter(conv.weight.detach() * scale.view(-1, 1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter(bias.detach(), requires_grad=False)


def _after_norm(bn: nn.BatchNorm2d) -> nn.Module:
    """What the norm layer still does once its affine part is folded: timm's ``BatchNormAct2d`` keeps its
    dropout and activation; a plain ``BatchNorm2d`` becomes the identity."""
    rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if isinstance(m, nn.Module)]
    return nn.Sequential(*rest) if rest else nn.Identity()


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``model`` with every Conv2d -> BatchNorm2d pair folded; returns (copy, pairs folded).

    A pair is a Conv2d child directly followed, in registration order, by a BatchNorm2d child of the same
    module with matching channels (how timm's EfficientNet/MobileNet blocks are written). Registration order is
    not forward order in every model, so callers must compare the copy's outputs with the original's
    (:func:`outputs_match`) before using it. ``model`` itself is not changed (training code may still use it).
    """
    folded = copy.deepcopy(model).eval()
    pairs = 0
    for parent in list(folded.modules()):
        children = list(parent.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:]):
            if (
                isinstance(conv, nn.Conv2d)
                and isinstance(bn, nn.BatchNorm2d)
                and bn.track_running_stats
                and bn.running_var is not None
                and bn.num_features == conv.out_channels
            ):
                _fold_pair(conv, bn)
                setattr(parent, bn_name, _after_norm(bn))
                pairs += 1
    return folded.requires_grad_(False), pairs


def outputs_match(a: torch.Tensor, b: torch.Tensor, rel_tol: float = 1e-4) -> bool:
    """True when ``b`` equals ``a`` up to float rounding, relative to ``a``'s largest magnitude."""
    if a.shape != b.shape:
        return False
    scale = float(a.abs().max()) or 1.0
    return float((a - b).abs().max()) <= rel_tol * scale

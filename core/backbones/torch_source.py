"""Reading ``.pth`` weight files shipped in PyPI packages, and the key-copying helper the converters share."""

from __future__ import annotations

from pathlib import Path

import torch

BN_PARTS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def load_source(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a torch zip file.

    The product's own files are safetensors; these third-party sources are torch pickles, read with the
    safe loader: ``weights_only=True`` refuses anything in the pickle but tensors and plain containers.
    """
    return torch.load(path, map_location="cpu", weights_only=True)


def copy_bn(out: dict, src: dict, s: str, d: str) -> None:
    """Copy a batch-norm's tensors from source prefix ``s`` to timm prefix ``d``."""
    for part in BN_PARTS:
        key = f"{s}.{part}"
        if key in src:
            out[f"{d}.{part}"] = src[key]

"""The timm hub fallback for names no package ships: used when the hub is reachable (or the model is in the local
Hugging Face cache), never a minute of retries offline."""

from __future__ import annotations

import dataclasses
import os
import socket
from urllib.parse import urlparse

import torch

from core.backbones.sources import BackboneInfo


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub (``HF_ENDPOINT``) accepts a connection within ``timeout`` seconds."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _create_from_hub(name: str):
    """``timm.create_model(name, pretrained=True)``; offline mode (local HF cache only) when the hub is unreachable,
    so that the attempt fails in seconds instead of a minute of retries."""
    import timm

    if hub_reachable():
        return timm.create_model(name, pretrained=True)
    import huggingface_hub.constants as hf_constants

    old_env, old_const = os.environ.get("HF_HUB_OFFLINE"), hf_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hf_constants.HF_HUB_OFFLINE = True
    try:
        return timm.create_model(name, pretrained=True)
    finally:
        hf_constants.HF_HUB_OFFLINE = old_const
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def _state_dict_sha(model: torch.nn.Module) -> str:
    """SHA-256 of the model's weights serialised as safetensors (hub models have no file of ours to hash)."""
    import hashlib

    from safetensors.torch import save as st_save

    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return hashlib.sha256(st_save(sd)).hexdigest()


def _layers_from_model(info: BackboneInfo, model: torch.nn.Module) -> BackboneInfo:
    """Fill in kind and layers for a hub-only model from the built module."""
    if hasattr(model, "patch_embed") and hasattr(model, "blocks") and hasattr(model, "num_prefix_tokens"):
        n = len(model.blocks)
        layers = tuple(f"blocks.{i}" for i in range(n))
        default = (f"blocks.{(2 * n) // 3}", f"blocks.{n - 1}") if n > 1 else layers
        return dataclasses.replace(info, kind="vit", default_layers=default, all_layers=layers)
    feats = getattr(model, "feature_info", None)
    mods: list[tuple[str, int]] = []
    try:
        mods = [(f["module"], int(f["reduction"])) for f in feats]  # type: ignore[union-attr]
    except (TypeError, KeyError):
        mods = []
    all_layers = tuple(m for m, _ in mods if m)
    by_red = {}
    for m, r in mods:
        by_red.setdefault(r, m)
    default = tuple(by_red[r] for r in (8, 16) if r in by_red) or all_layers[-2:]
    return dataclasses.replace(info, kind="cnn", default_layers=default, all_layers=all_layers)



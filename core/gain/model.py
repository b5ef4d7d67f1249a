"""The GAIN-MTL network (pure torch: tensors in, tensors out; pre- and post-processing live elsewhere).

Layout (strides relative to the input)::

    image -> stem (pretrained, frozen: stem conv + blocks up to stride 8)            x8  (B x c8 x H/8 x W/8)
          -> body (pretrained, trained at a smaller step: blocks up to stride 16)
          -> neck (1x1 conv + BN + ReLU), upsampled x2 and added to a lateral 1x1 projection of x8 (FPN-style)
                                                                                    F   (B x width x H/8 x W/8)
          -> attention module: A = sigmoid(conv3x3 -> ReLU -> conv1x1 (F))          A   (B x H/8 x W/8)
             gated features G = F * (1 + A)            (residual attention; S6 blends the GT mask into A)
          -> classifier: a 1x1 conv w, b;  CAM = w . G + b (per-position logit),  logit = mean(CAM)
             (global average pooling followed by a linear layer, written the CAM way: the same numbers)
          -> mask head on G: conv3x3 -> BN -> ReLU -> conv1x1 -> mask logits (stride 8)

The CAM is on a stride-8 grid (24 x 24 at 192 px), not the backbone's stride-32 end (6 x 6): a coarse grid caps the
CAM-IoU any model can reach. Measured on magnetic_tile test_mix at 192 px (``core.metrics.cam.grid_ceiling_iou``:
the mask itself, area-averaged onto the grid, upsampled and binarised at 0.5): 6 x 6 -> 0.37, 12 x 12 -> 0.50,
24 x 24 -> 0.64. The frozen stem is computed once per image by the trainer; ``forward`` runs the whole thing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class GainOutput:
    logit: torch.Tensor  # B: defect logit
    cam: torch.Tensor  # B x h x w: per-position defect logit (stride 8)
    attention: torch.Tensor  # B x h x w: the attention module's gate actually used, in [0, 1]
    mask_logit: torch.Tensor | None  # B x h8 x w8: localisation head (stride 8)


def _split_points(model: nn.Module) -> tuple[int, int, int, int]:
    """Index of the last block at stride 8 and at stride 16, and their channel counts (from timm's feature_info)."""
    info = [(f["module"], int(f["reduction"]), int(f["num_chs"])) for f in model.feature_info]
    by_red = {r: (m, c) for m, r, c in info}
    if 8 not in by_red or 16 not in by_red:
        raise ValueError("the backbone has no stride-8 and stride-16 stages")
    (m8, c8), (m16, c16) = by_red[8], by_red[16]
    return int(m8.split(".")[1]), int(m16.split(".")[1]), c8, c16


class GainNet(nn.Module):
    """Backbone stem/body + neck + attention module + CAM classifier + localisation head."""

    def __init__(self, stem: nn.Module, body: nn.Module, c8: int, c16: int, width: int = 128) -> None:
        super().__init__()
        self.stem = stem
        self.body = body
        self.neck = nn.Sequential(nn.Conv2d(c16, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.lateral = nn.Sequential(nn.Conv2d(c8, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.attention = nn.Sequential(
            nn.Conv2d(width, width // 2, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(width // 2, 1, 1)
        )
        self.classifier = nn.Conv2d(width, 1, 1)
        self.mask_head = nn.Sequential(
            nn.Conv2d(width, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.Conv2d(64, 1, 1),
        )
        for p in self.stem.parameters():
            p.requires_grad_(False)

    # -- parameter groups ------------------------------------------------------------------------
    def head_parameters(self) -> list[nn.Parameter]:
        mods = (self.neck, self.lateral, self.attention, self.classifier, self.mask_head)
        return [p for m in mods for p in m.parameters()]

    def body_parameters(self) -> list[nn.Parameter]:
        return list(self.body.parameters())

    def train(self, mode: bool = True) -> "GainNet":
        """Train mode for the new layers; the pretrained stem and body keep their BatchNorm statistics frozen."""
        super().train(mode)
        self.stem.eval()
        for m in self.body.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    # -- forward ---------------------------------------------------------------------------------
    def encode_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Stride-8 features of preprocessed images (the frozen part, no gradient)."""
        with torch.no_grad():
            return self.stem(x)

    def forward_from_stem(
        self, x8: torch.Tensor, fuse_mask: torch.Tensor | None = None, fuse_weight: float = 0.0,
        with_mask: bool = True,
    ) -> GainOutput:
        """Everything after the frozen stem. With ``fuse_weight > 0`` the attention gate becomes
        ``(1 - fuse_weight) * A + fuse_weight * fuse_mask`` (``fuse_mask``: B x h x w on the CAM grid).
        ``with_mask=False`` skips the localisation head (``mask_logit`` is then None)."""
        f16 = self.neck(self.body(x8))
        f = F.interpolate(f16, size=x8.shape[-2:], mode="bilinear", align_corners=False) + self.lateral(x8)
        a = torch.sigmoid(self.attention(f))[:, 0]
        if fuse_mask is not None and fuse_weight > 0:
            a = (1.0 - fuse_weight) * a + fuse_weight * fuse_mask
        g = f * (1.0 + a[:, None])
        cam = self.classifier(g)[:, 0]
        logit = cam.mean(dim=(1, 2))
        mask_logit = self.mask_head(g)[:, 0] if with_mask else None
        return GainOutput(logit=logit, cam=cam, attention=a, mask_logit=mask_logit)

    @staticmethod
    def cam_grid(x8: torch.Tensor) -> tuple[int, int]:
        """The CAM's (h, w) for stem features ``x8`` (the CAM is on the stride-8 grid)."""
        return int(x8.shape[-2]), int(x8.shape[-1])

    def forward(self, x: torch.Tensor) -> GainOutput:
        return self.forward_from_stem(self.encode_stem(x))


def build_gain_net(timm_model: nn.Module, width: int = 128) -> GainNet:
    """A :class:`GainNet` from a timm EfficientNet/MobileNet (``conv_stem``, ``bn1``, ``blocks``), copying its
    layers (the model passed in is not changed)."""
    for attr in ("conv_stem", "bn1", "blocks", "feature_info"):
        if not hasattr(timm_model, attr):
            raise ValueError(f"backbone has no {attr!r}: GAIN-MTL needs an EfficientNet/MobileNet-style CNN")
    i8, i16, c8, c16 = _split_points(timm_model)
    src = copy.deepcopy(timm_model)
    stem = nn.Sequential(src.conv_stem, src.bn1, *[src.blocks[i] for i in range(i8 + 1)])
    body = nn.Sequential(*[src.blocks[i] for i in range(i8 + 1, i16 + 1)])
    for p in body.parameters():
        p.requires_grad_(True)
    return GainNet(stem, body, c8, c16, width)

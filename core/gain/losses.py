"""GAIN-MTL loss terms and their schedules. Each term is switched on by exactly one strategy flag
(see :mod:`core.gain.config`); a term that is off is not computed at all.

* ``cls``: class-weighted BCE on the image logit (``pos_weight`` = normals / defects in the epoch's sample).
* ``cam_guide`` (S2+): on defect images Dice + BCE of ``sigmoid(CAM)`` (the CAM is a per-position logit) against
  the mask area-averaged onto the CAM grid; on normal images BCE towards 0 (low CAM energy). With
  ``cam_guide_shape`` (the default) the min-max normalised CAM of defect images is also compared with the mask
  (Dice + BCE): that is the map the attention metrics judge, and it asks for a flat background, which the logit
  BCE stops asking for once the background is clearly negative. Measured on magnetic_tile test_mix (S2, 18
  epochs): CAM-IoU@0.5 0.210 -> 0.283, PointGame 0.455 -> 0.571, Energy-Inside 0.136 -> 0.205, at a cost in
  classification (AUROC 0.983 -> 0.958). (Tried alone, instead of the logit version, in an 8-epoch probe: worse.)
* ``am`` (S3+): attention mining (GAIN, Li et al. CVPR 2018). ``A`` = per-image min-max normalised CAM (S6: blended
  with the mask), soft mask ``T(A) = sigmoid(omega (A - sigma))``; the defect image is erased where ``T(A)`` is high
  and ``L_am`` is the classifier's mean defect probability on what is left. The erasing is applied to the frozen
  stem's stride-8 features (the trained part of the network sees exactly the erased input), which saves a second
  pass through the frozen stem on a 2-core CPU.
* ``loc`` (S4+): BCE on all images + Dice on defect images of the mask head (at input resolution);
  ``consist`` (S4+): L1 between the normalised CAM and the (detached) mask head probability on the CAM grid,
  on defect images. Both weights ramp up linearly over the first ``loc_warmup`` of training.
* ``cf`` (S5+): the counterfactual of each defect image (defect region replaced by the same region of a normal
  training image) must be classified normal (BCE towards 0).
* S6 adds no term: the GT mask is blended into the attention gate (and into ``A`` for the erasing) with a weight
  that decays from ``fusion_start`` to 0 at ``fusion_end`` of training (linear, cosine or step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from core.gain.config import GainConfig
from core.gain.model import GainNet


@dataclass
class Batch:
    x8: torch.Tensor  # B x c8 x h8 x w8: frozen stem features
    y: torch.Tensor  # B float labels (1 = defect)
    mask: torch.Tensor  # B x S x S float ground truth (0 on normals)
    cf_x8: torch.Tensor | None = None  # stem features of the counterfactual images (same order), S5+


@dataclass
class LossBreakdown:
    terms: dict[str, torch.Tensor]  # raw value of every active term
    weights: dict[str, float]  # the weight each term enters the total with (at this point of training)
    total: torch.Tensor
    fusion_weight: float = 0.0


def loc_weight_factor(cfg: GainConfig, progress: float) -> float:
    """Linear warm-up factor in [0, 1] for L_loc and L_consist at ``progress`` (0 = start, 1 = end of training)."""
    if cfg.loc_warmup <= 0:
        return 1.0
    return float(min(1.0, max(0.0, progress) / cfg.loc_warmup))


def fusion_weight(cfg: GainConfig, progress: float) -> float:
    """S6's GT weight in the attention at ``progress``: ``fusion_start`` decaying to 0 at ``fusion_end``."""
    if not cfg.flags.gt_fusion:
        return 0.0
    end = max(cfg.fusion_end, 1e-9)
    u = min(1.0, max(0.0, progress) / end)
    if u >= 1.0:
        return 0.0
    if cfg.fusion_schedule == "linear":
        return float(cfg.fusion_start * (1.0 - u))
    if cfg.fusion_schedule == "cosine":
        return float(cfg.fusion_start * 0.5 * (1.0 + math.cos(math.pi * u)))
    steps = 4  # step: start, 3/4, 1/2, 1/4 of it over four equal stretches
    return float(cfg.fusion_start * (1.0 - math.floor(u * steps) / steps))


def soft_dice(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Mean over images of ``1 - (2 |P.T| + eps) / (|P| + |T| + eps)`` (B x H x W in)."""
    p, t = prob.flatten(1), target.flatten(1)
    return (1.0 - (2.0 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def minmax_maps(maps: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-map min-max normalisation to [0, 1] (B x h x w), differentiable."""
    flat = maps.flatten(1)
    lo = flat.min(1, keepdim=True).values
    hi = flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo + eps)).view_as(maps)


def soft_erase_mask(attention01: torch.Tensor, sigma: float, omega: float) -> torch.Tensor:
    """GAIN's soft mask ``T(A) = sigmoid(omega * (A - sigma))``."""
    return torch.sigmoid(omega * (attention01 - sigma))


def cam_grid_mask(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Full-resolution masks (B x S x S) area-averaged onto the CAM grid."""
    return F.adaptive_avg_pool2d(mask[:, None], grid)[:, 0]


def compute_losses(net: GainNet, batch: Batch, cfg: GainConfig, progress: float, pos_weight: float) -> LossBreakdown:
    """All loss terms of ``cfg.strategy`` on one batch, their weights at ``progress`` and the weighted total."""
    flags = cfg.flags
    y = batch.y
    defect = y > 0.5
    alpha = fusion_weight(cfg, progress)
    grid = net.cam_grid(batch.x8)
    mgrid = cam_grid_mask(batch.mask, grid)
    out = net.forward_from_stem(batch.x8, fuse_mask=mgrid if alpha > 0 else None, fuse_weight=alpha,
                                with_mask=flags.localisation)
    terms: dict[str, torch.Tensor] = {}
    weights: dict[str, float] = {}

    pw = torch.tensor(float(pos_weight), device=y.device)
    terms["cls"] = F.binary_cross_entropy_with_logits(out.logit, y, pos_weight=pw)
    weights["cls"] = 1.0

    if flags.cam_guide:
        parts = []
        if defect.any():
            cd, md = out.cam[defect], mgrid[defect]
            parts.append(soft_dice(torch.sigmoid(cd), md) + F.binary_cross_entropy_with_logits(cd, md))
            if cfg.cam_guide_shape:
                ad = minmax_maps(cd).clamp(1e-4, 1.0 - 1e-4)
                parts.append(soft_dice(ad, md) + F.binary_cross_entropy(ad, md))
        if (~defect).any():
            cn = out.cam[~defect]
            parts.append(F.binary_cross_entropy_with_logits(cn, torch.zeros_like(cn)))
        terms["cam_guide"] = torch.stack(parts).sum()
        weights["cam_guide"] = cfg.lambda_cam_guide

    if flags.attention_mining:
        if defect.any():
            a = minmax_maps(out.cam[defect])
            if alpha > 0:
                a = (1.0 - alpha) * a + alpha * mgrid[defect]
            t = soft_erase_mask(a, cfg.am_sigma, cfg.am_omega)
            # no-op at stride 8
            t8 = F.interpolate(t[:, None], size=batch.x8.shape[-2:], mode="bilinear", align_corners=False)
            erased = net.forward_from_stem(batch.x8[defect] * (1.0 - t8), with_mask=False)
            terms["am"] = torch.sigmoid(erased.logit).mean()
        else:
            terms["am"] = out.logit.sum() * 0.0
        weights["am"] = cfg.lambda_am

    if flags.localisation:
        warm = loc_weight_factor(cfg, progress)
        ml = F.interpolate(out.mask_logit[:, None], size=batch.mask.shape[-2:], mode="bilinear",
                           align_corners=False)[:, 0]
        loc = F.binary_cross_entropy_with_logits(ml, batch.mask)
        if defect.any():
            loc = loc + soft_dice(torch.sigmoid(ml[defect]), batch.mask[defect])
            mp = F.adaptive_avg_pool2d(torch.sigmoid(out.mask_logit[defect]).detach()[:, None], grid)[:, 0]
            terms["consist"] = (minmax_maps(out.cam[defect]) - mp).abs().mean()
        else:
            terms["consist"] = out.logit.sum() * 0.0
        terms["loc"] = loc
        weights["loc"] = cfg.lambda_loc * warm
        weights["consist"] = cfg.lambda_consist * warm

    if flags.counterfactual:
        if defect.any() and batch.cf_x8 is not None:
            cf = net.forward_from_stem(batch.cf_x8[defect], with_mask=False)
            terms["cf"] = F.binary_cross_entropy_with_logits(cf.logit, torch.zeros_like(cf.logit))
        else:
            terms["cf"] = out.logit.sum() * 0.0
        weights["cf"] = cfg.lambda_cf

    total = sum(weights[k] * terms[k] for k in terms)
    return LossBreakdown(terms=terms, weights=weights, total=total, fusion_weight=alpha)

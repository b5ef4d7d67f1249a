"""A trained GAIN-MTL model for use: pre-processing, batched prediction (probabilities, CAMs, mask-head maps) and
the model folder (safetensors + JSON via :mod:`core.storage`; never pickle)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from core.errors import ModelFormatError
from core.gain.config import GainConfig
from core.gain.model import GainNet, build_gain_net

KIND = "gain_mtl"


def device() -> torch.device:
    """The GPU when torch sees one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_input(images: np.ndarray, mean, std, dev: torch.device) -> torch.Tensor:
    """uint8 N x S x S x 3 (already at the model's size) -> normalised float N x 3 x S x S on ``dev``."""
    t = torch.from_numpy(np.ascontiguousarray(images)).to(dev).permute(0, 3, 1, 2).float()
    m = torch.tensor(mean, device=dev, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, device=dev, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return (t - m) / s


@dataclass
class Prediction:
    """Per-image outputs at the model's input size S."""

    probs: np.ndarray  # N defect probabilities
    cams: np.ndarray  # N x S x S raw CAM (per-position logit), bilinearly upsampled from the stride-16 grid
    mask_probs: np.ndarray  # N x S x S mask-head probabilities
    cam_grid: int = 0  # side of the CAM grid before upsampling


def predict_from_stem(net: GainNet, x8: torch.Tensor, size: int, batch: int = 64) -> Prediction:
    """Run everything after the frozen stem on precomputed stride-8 features, in eval mode, without gradients."""
    was_training = net.training
    net.eval()
    probs, cams, masks = [], [], []
    grid = 0
    with torch.inference_mode():
        for i in range(0, len(x8), batch):
            out = net.forward_from_stem(x8[i:i + batch])
            grid = int(out.cam.shape[-1])
            probs.append(torch.sigmoid(out.logit).float().cpu())
            cams.append(F.interpolate(out.cam[:, None], size=(size, size), mode="bilinear",
                                      align_corners=False)[:, 0].float().cpu())
            masks.append(torch.sigmoid(F.interpolate(out.mask_logit[:, None], size=(size, size), mode="bilinear",
                                                     align_corners=False)[:, 0]).float().cpu())
    net.train(was_training)
    if not probs:
        z = np.zeros((0, size, size), np.float32)
        return Prediction(np.zeros(0, np.float32), z, z.copy(), grid)
    return Prediction(torch.cat(probs).numpy(), torch.cat(cams).numpy(), torch.cat(masks).numpy(), grid)


def encode_stem(net: GainNet, images: np.ndarray, mean, std, dev: torch.device, batch: int = 64,
                progress=None) -> torch.Tensor:
    """Frozen stride-8 features of uint8 images (N x S x S x 3), in batches."""
    out = []
    net.eval()
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            out.append(net.stem(to_input(images[i:i + batch], mean, std, dev)))
            if progress is not None:
                progress(min(i + batch, len(images)), len(images))
    if not out:
        raise ValueError("no images to encode")
    return torch.cat(out).clone()


@dataclass
class GainModel:
    """A trained network with everything needed to use it (config, normalisation, decision threshold)."""

    net: GainNet
    config: GainConfig
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    threshold: float = 0.5  # decision threshold on the defect probability (F1-best on val_mix)
    meta: dict[str, Any] = field(default_factory=dict)  # dataset, training report, wall time, ...

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def predict(self, images: np.ndarray, batch: int = 32) -> Prediction:
        """Predictions for uint8 images already resized to the model's size (N x S x S x 3)."""
        size = self.config.image_size
        if images.ndim != 4 or images.shape[1:] != (size, size, 3) or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 N x {size} x {size} x 3 images, got {images.dtype} {images.shape}")
        if len(images) == 0:
            return predict_from_stem(self.net, torch.zeros(0), size)
        x8 = encode_stem(self.net, images, self.mean, self.std, self.device, batch)
        return predict_from_stem(self.net, x8, size, batch)

    # -- model folder ----------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``config.json`` + ``arrays.safetensors`` (atomic, hash-checked on load)."""
        from core.storage import save_model_folder

        arrays = {f"net.{k}": v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}
        cfg = {
            "backbone": self.config.backbone,
            "image_size": self.config.image_size,
            "strategy": self.config.strategy,
            "gain": self.config.to_dict(),
            "mean": list(self.mean),
            "std": list(self.std),
            "threshold": float(self.threshold),
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            **self.meta,
        }
        return save_model_folder(folder, KIND, cfg, arrays)


def skeleton(cfg: GainConfig) -> GainNet:
    """The untrained network layout for ``cfg`` (no pretrained weights needed)."""
    import timm

    return build_gain_net(timm.create_model(cfg.backbone, pretrained=False), cfg.width)


def load_gain_model(folder: str | Path, dev: torch.device | None = None) -> GainModel:
    """Load a model folder written by :meth:`GainModel.save`; foreign, tampered or mismatched folders are refused."""
    from core.storage import load_model_folder

    folder = Path(folder)
    cfg_json, arrays = load_model_folder(folder, expect_kind=KIND)
    try:
        cfg = GainConfig.from_dict(cfg_json["gain"])
        mean = tuple(float(x) for x in cfg_json["mean"])
        std = tuple(float(x) for x in cfg_json["std"])
        threshold = float(cfg_json.get("threshold", 0.5))
        net = skeleton(cfg)
    except Exception as exc:  # noqa: BLE001  (any malformed field means: not loadable)
        raise ModelFormatError(f"{folder} has a malformed GAIN-MTL config ({type(exc).__name__}: {exc}).",
                               "Retrain it with `python -m core gain train`.") from None
    state = net.state_dict()
    got = {k[4:]: v for k, v in arrays.items() if k.startswith("net.")}
    missing, extra = sorted(set(state) - set(got)), sorted(set(got) - set(state))
    # BatchNorm counters are scalars whose stored shape (() or (1,)) depends on where the weights came from.
    wrong = sorted(k for k in set(state) & set(got) if tuple(state[k].shape) != tuple(got[k].shape)
                   and not (k.endswith("num_batches_tracked") and state[k].numel() == np.asarray(got[k]).size == 1))
    if missing or extra or wrong:
        raise ModelFormatError(
            f"{folder} does not hold a {cfg.backbone} GAIN-MTL network: missing {missing[:3]}, unexpected "
            f"{extra[:3]}, wrong shape {wrong[:3]}.",
            "Retrain it with `python -m core gain train`.",
        )
    net.load_state_dict({k: torch.from_numpy(np.array(v)).reshape(state[k].shape) for k, v in got.items()})
    net.to(dev or device()).eval()
    meta = {k: v for k, v in cfg_json.items()
            if k not in {"gain", "mean", "std", "threshold", "backbone", "image_size", "strategy"}}
    return GainModel(net=net, config=cfg, mean=mean, std=std, threshold=threshold, meta=meta)

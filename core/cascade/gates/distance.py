"""Feature-distance gate (label-free): mean and max pooled backbone features of the whole image, standardised,
scored by the mean distance to the k nearest normal training embeddings."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from core.cascade.gates.base import LabelFreeGate


class DistanceGate(LabelFreeGate):
    kind = "distance"

    def __init__(self, seed: int = 0, backbone: str = "tf_efficientnet_lite0", size: int = 128,
                 layers: tuple[str, ...] = ("blocks.2", "blocks.4"), k: int = 3) -> None:
        super().__init__(seed)
        self.backbone, self.size, self.layers, self.k = backbone, int(size), tuple(layers), int(k)
        self.bank: np.ndarray | None = None
        self.mu: np.ndarray | None = None
        self.sd: np.ndarray | None = None
        self.weights_sha256 = ""

    def _embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        from core.backbones import load_backbone

        lb = load_backbone(self.backbone)
        x = lb.preprocess(list(images), self.size)
        maps = lb.feature_maps(x, self.layers)
        parts = []
        for name in self.layers:
            m = maps[name].float()
            parts += [m.mean(dim=(2, 3)), m.amax(dim=(2, 3))]
        return torch.cat(parts, 1).cpu().numpy().astype(np.float32)

    def _fit_normals(self, normals, progress):
        from core.backbones import load_backbone

        self.weights_sha256 = load_backbone(self.backbone).weights_sha256
        feats = []
        for i in range(0, len(normals), 32):
            feats.append(self._embed(normals[i:i + 32]))
            progress("distance gate", min(i + 32, len(normals)), len(normals))
        f = np.concatenate(feats)
        self.mu, self.sd = f.mean(0), f.std(0) + 1e-6
        self.bank = ((f - self.mu) / self.sd).astype(np.float32)
        return {"embedding_dim": int(f.shape[1])}

    def _raw(self, images):
        q = torch.from_numpy((self._embed(images) - self.mu) / self.sd)
        d = torch.cdist(q, torch.from_numpy(self.bank))
        k = min(self.k, self.bank.shape[0])
        return d.topk(k, dim=1, largest=False).values.mean(1).numpy()

    def _params(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "size": self.size, "layers": list(self.layers), "k": self.k,
                "weights_sha256": self.weights_sha256}

    def _arrays(self):
        return {"bank": self.bank, "mu": self.mu, "sd": self.sd}

    def _load(self, params, arrays):
        from core.backbones import load_backbone
        from core.errors import ModelFormatError

        self.backbone, self.size, self.layers, self.k = (params["backbone"], int(params["size"]),
                                                         tuple(params["layers"]), int(params["k"]))
        self.weights_sha256 = params.get("weights_sha256", "")
        installed = load_backbone(self.backbone).weights_sha256
        if self.weights_sha256 and installed != self.weights_sha256:
            raise ModelFormatError(f"This distance gate was fitted with other {self.backbone} weights.",
                                   "Refit the gate with the installed weights.")
        self.bank = np.asarray(arrays["bank"], np.float32)
        self.mu, self.sd = np.asarray(arrays["mu"], np.float32), np.asarray(arrays["sd"], np.float32)

"""Autoencoder gate (label-free): reconstruction error of a small convolutional autoencoder trained on normal
images (grey, 64 x 64). Score: mean of the largest 2 % of the locally averaged squared errors, so a small defect
is not drowned by the many well-reconstructed pixels."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from core.cascade.gates.base import LabelFreeGate, to_gray


def _net(width: int = 16, bottleneck: int = 32) -> nn.Module:
    w = width
    return nn.Sequential(
        nn.Conv2d(1, w, 3, 2, 1), nn.LeakyReLU(0.1),
        nn.Conv2d(w, 2 * w, 3, 2, 1), nn.LeakyReLU(0.1),
        nn.Conv2d(2 * w, 4 * w, 3, 2, 1), nn.LeakyReLU(0.1),
        nn.Conv2d(4 * w, bottleneck, 1), nn.LeakyReLU(0.1),
        nn.ConvTranspose2d(bottleneck, 4 * w, 4, 2, 1), nn.LeakyReLU(0.1),
        nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1), nn.LeakyReLU(0.1),
        nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.LeakyReLU(0.1),
        nn.Conv2d(w, 1, 3, 1, 1), nn.Sigmoid(),
    )


class AutoencoderGate(LabelFreeGate):
    kind = "autoencoder"

    def __init__(self, seed: int = 0, size: int = 64, epochs: int = 12, width: int = 16, bottleneck: int = 32,
                 top_fraction: float = 0.02) -> None:
        super().__init__(seed)
        self.size, self.epochs, self.width, self.bottleneck = int(size), int(epochs), int(width), int(bottleneck)
        self.top_fraction = float(top_fraction)
        self.net = _net(self.width, self.bottleneck).eval()

    def _tensor(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack([to_gray(im, self.size) for im in images]))[:, None]

    def _fit_normals(self, normals, progress):
        torch.manual_seed(self.seed)
        self.net = _net(self.width, self.bottleneck)
        x = self._tensor(normals)
        g = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.Adam(self.net.parameters(), lr=2e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.epochs)
        losses = []
        self.net.train()
        for ep in range(self.epochs):
            perm = torch.randperm(len(x), generator=g)
            total = 0.0
            for i in range(0, len(x), 32):
                xb = x[perm[i:i + 32]]
                if torch.rand(1, generator=g).item() < 0.5:
                    xb = xb.flip(3)
                if torch.rand(1, generator=g).item() < 0.5:
                    xb = xb.flip(2)
                loss = nn.functional.mse_loss(self.net(xb), xb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(xb)
            sched.step()
            losses.append(total / len(x))
            progress("autoencoder gate", ep + 1, self.epochs)
        self.net.eval()
        return {"epochs": self.epochs, "final_loss": losses[-1]}

    def _raw(self, images):
        x = self._tensor(images)
        with torch.inference_mode():
            err = (self.net(x) - x) ** 2
            err = nn.functional.avg_pool2d(err, 5, 1, 2).flatten(1)
            k = max(1, int(round(self.top_fraction * err.shape[1])))
            return err.topk(k, dim=1).values.mean(1).numpy()

    def n_parameters(self) -> int:
        return int(sum(p.numel() for p in self.net.parameters()))

    def _params(self) -> dict[str, Any]:
        return {"size": self.size, "epochs": self.epochs, "width": self.width, "bottleneck": self.bottleneck,
                "top_fraction": self.top_fraction}

    def _arrays(self):
        return {f"net.{k}": v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}

    def _load(self, params, arrays):
        self.size, self.epochs = int(params["size"]), int(params["epochs"])
        self.width, self.bottleneck = int(params["width"]), int(params["bottleneck"])
        self.top_fraction = float(params["top_fraction"])
        self.net = _net(self.width, self.bottleneck)
        self.net.load_state_dict({k[4:]: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()
                                  if k.startswith("net.")})
        self.net.eval()

"""PaDiM (Defard et al., ICPR 2021): a Gaussian per feature-map position over a random channel subset.

Covariances are built with torch's batched float64 matrix product, a chunk of positions at a time, and inverted
through a float64 Cholesky factorisation (:func:`gaussian_statistics`), checked against scipy in the tests on the
real sizes, 152 channels included: the peer measured torch's float32 batched LU inverse crashing or silently
wrong there. Torch's batched product beat numpy's stacked ``matmul`` (which does not reach BLAS for transposed
stacks) + ``linalg.inv`` 1.3 s to 2.6-8.4 s on a shared 2-core machine (784 positions, 676 images, 100 channels).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from core.detectors.base import HeatmapDetector
from core.detectors.embedding import patch_embedding
from core.errors import WorkbenchError
from core.progress import ProgressFn


@dataclass
class PadimConfig:
    """PaDiM settings."""

    backbone: str = "tf_efficientnet_lite0"
    layers: tuple[str, ...] = ()  # empty: the backbone's default
    image_size: int = 0  # 0: chosen at fit from the training images (core.detectors.scale; 224 px for small ones)
    # The paper's random subset, kept by benchmarks/padim_defaults.py: all of lite0's 152 gain a little on val_mix
    # for 2.3x the Mahalanobis work and memory; the side-by-side with anomalib uses 100.
    n_channels: int = 100
    regularisation: float = 0.01
    blur_sigma: float = 4.0
    seed: int = 0


def gaussian_statistics(
    x: torch.Tensor, regularisation: float, positions_per_chunk: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Per-position mean and inverse of the regularised covariance of ``x`` (P positions x N samples x d, any
    strides, e.g. a view of a channels-last embedding), float64.

    Works through ``positions_per_chunk`` positions at a time, each chunk copied to float64: the peak stays at
    one chunk (~30 MB for 608 images x 100 channels) instead of float64 copies of all P positions (~0.8 GB), and
    the chunks stay in cache. The inverse comes from a Cholesky factor (the matrices are symmetric positive
    definite once regularised), which is cheaper and better conditioned than a general LU inverse.
    """
    p, n, d = x.shape
    mean = torch.empty((p, d), dtype=torch.float64)
    inv = torch.empty((p, d, d), dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    for p0 in range(0, p, positions_per_chunk):
        xc = x[p0 : p0 + positions_per_chunk].to(torch.float64, memory_format=torch.contiguous_format)
        m = xc.mean(dim=1)
        xc -= m[:, None, :]
        cov = torch.bmm(xc.transpose(1, 2), xc) / max(1, n - 1) + regularisation * eye
        mean[p0 : p0 + len(m)] = m
        # inv(L L^T) = L^-T L^-1. torch.cholesky_inverse (LAPACK potri, one matrix per call) measured 0.55-0.8 s
        # for 784 positions x 100 channels under OMP_WAIT_POLICY=PASSIVE on 2 cores; the batched triangular
        # solve + product 0.21-0.26 s, same values to 2e-15 relative.
        l_inv = torch.linalg.solve_triangular(torch.linalg.cholesky(cov), eye.expand(len(m), d, d), upper=False)
        torch.bmm(l_inv.transpose(1, 2), l_inv, out=inv[p0 : p0 + len(m)])
    return mean.numpy(), inv.numpy()


class Padim(HeatmapDetector):
    """Per-position mean and inverse covariance; map = Mahalanobis distance; image score = map max."""

    kind = "padim"
    config_class = PadimConfig

    @classmethod
    def form_fields(cls) -> tuple:
        from core.detectors.registry import FormField

        return (FormField("n_channels", "Random channels per position", "int", 100, minimum=1, maximum=4096, step=1,
                          help="The paper's 100 of the backbone's channels (lite0's default layers have 152)."),)

    @classmethod
    def add_cli_options(cls, p) -> None:
        p.add_argument("--channels", type=int, default=100,
                       help="PaDiM: random feature channels per position (lite0 has 152; all of them: 152)")

    @classmethod
    def settings_from_cli(cls, args) -> dict[str, Any]:
        return {"n_channels": args.channels}

    def __init__(self, config: PadimConfig = PadimConfig()) -> None:
        if config.n_channels < 1:
            raise WorkbenchError(f"PaDiM needs at least 1 feature channel per position; got {config.n_channels}.",
                                 "Use the default (100) or up to the layers' total (152 on lite0's default layers).")
        auto = not config.image_size
        if auto:
            config = replace(config, image_size=self.default_input_size(config.backbone))
        self.cfg = config
        super().__init__(config.backbone, config.layers, config.image_size, config.blur_sigma, config.seed,
                         auto_scale=auto)
        self.channels: np.ndarray | None = None
        self.mean: np.ndarray | None = None  # P x d
        self.inv_cov: np.ndarray | None = None  # P x d x d
        self.grid: tuple[int, int] = (0, 0)

    def embed(self, features: dict[str, np.ndarray]) -> torch.Tensor:
        return patch_embedding(features, self.layers, neighbourhood=1, channels=self.channels)

    def fit_embeddings(self, features: dict[str, np.ndarray], progress: ProgressFn) -> dict[str, float]:
        t0 = time.perf_counter()
        total = sum(int(features[name].shape[1]) for name in self.layers)
        d = min(self.cfg.n_channels, total)
        rng = np.random.default_rng(self.seed)
        self.channels = np.sort(rng.choice(total, size=d, replace=False)).astype(np.int64)
        emb = self.embed(features)  # N x d x H x W
        n, d, h, w = emb.shape
        self.grid = (h, w)
        x = emb.permute(2, 3, 0, 1).reshape(h * w, n, d)  # P x N x d: a view of the channels-last embedding
        del emb
        progress("padim statistics", 1, 2)
        mean, inv_cov = gaussian_statistics(x, self.cfg.regularisation)
        self.mean, self.inv_cov = mean.astype(np.float32), inv_cov.astype(np.float32)
        progress("padim statistics", 2, 2)
        return {"gaussian": time.perf_counter() - t0}

    def score_embeddings(
        self, features: dict[str, np.ndarray], leave_out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        assert self.mean is not None and self.inv_cov is not None, "fit or load the model first"
        t0 = time.perf_counter()
        emb = self.embed(features)
        n, d, h, w = emb.shape
        # P x N x d, contiguous: torch.bmm on a strided view measured 11 ms/image vs 0.5 (batch 16, 2 cores)
        delta = emb.permute(2, 3, 0, 1).reshape(h * w, n, d) - torch.from_numpy(self.mean)[:, None, :]
        left = torch.bmm(delta, torch.from_numpy(self.inv_cov))  # P x N x d
        m2 = (left * delta).sum(dim=2).clamp_min(0).sqrt().T  # N x P
        maps = m2.reshape(n, h, w).numpy()
        return maps.reshape(n, -1).max(axis=1), maps, {"mahalanobis": time.perf_counter() - t0}

    def learn_normals(self, features: dict[str, np.ndarray], first_index: int) -> dict[str, Any]:
        """New normal images into each position's Gaussian without a refit: the covariance is recovered from its
        stored inverse (less the regularisation), merged with the new samples (exact pooled mean and scatter for
        ``first_index`` earlier images), regularised and inverted again as at fit time."""
        assert self.mean is not None and self.inv_cov is not None, "fit or load the model first"
        emb = self.embed(features)
        m, d, h, w = emb.shape
        x = emb.permute(2, 3, 0, 1).reshape(h * w, m, d).to(torch.float64)  # P x m x d
        n = max(int(first_index), 2)
        eye = torch.eye(d, dtype=torch.float64)
        mean_old = torch.from_numpy(self.mean.astype(np.float64))
        cov_old = torch.linalg.inv(torch.from_numpy(self.inv_cov.astype(np.float64))) - self.cfg.regularisation * eye
        scatter = (n - 1) * cov_old + n * mean_old[:, :, None] * mean_old[:, None, :] + torch.bmm(x.transpose(1, 2), x)
        total = n + m
        mean = (n * mean_old + x.sum(dim=1)) / total
        cov = (scatter - total * mean[:, :, None] * mean[:, None, :]) / (total - 1) + self.cfg.regularisation * eye
        l_inv = torch.linalg.solve_triangular(torch.linalg.cholesky(cov), eye.expand(len(cov), d, d), upper=False)
        self.mean = mean.numpy().astype(np.float32)
        self.inv_cov = torch.bmm(l_inv.transpose(1, 2), l_inv).numpy().astype(np.float32)
        return {"images_in_statistics": total}

    def _on_scale_change(self) -> None:
        self.cfg = replace(self.cfg, image_size=self.image_size)

    def estimate_fit_bytes(self, n_images: int) -> int:
        d = self.cfg.n_channels
        h, w = self.input_hw
        p = -(-h // 8) * -(-w // 8) * 4  # up to a stride-4 grid
        # the float32 embedding, one float64 chunk of gaussian_statistics, the float64 inverses and their float32 copy
        return 4 * p * n_images * d + 8 * 64 * n_images * d + 12 * p * d * d

    def state_params(self) -> dict[str, Any]:
        d = asdict(self.cfg)
        d["layers"] = list(self.layers)
        d["grid"] = list(self.grid)
        return d

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {"channels": self.channels, "mean": self.mean, "inv_cov": self.inv_cov}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.channels = arrays["channels"].astype(np.int64)
        self.mean = arrays["mean"].astype(np.float32)
        self.inv_cov = arrays["inv_cov"].astype(np.float32)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "Padim":
        p = dict(cfg["params"])
        p["layers"] = tuple(p["layers"])
        grid = tuple(p.pop("grid", (0, 0)))
        det = cls(PadimConfig(**p))
        det.grid = grid
        return det

"""Image-statistics gate (label-free, near-zero cost): intensity, texture and edge statistics of a small grey
copy of the image, scored by the Mahalanobis distance to the normal training images (Ledoit-Wolf covariance)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from core.cascade.gates.base import LabelFreeGate, to_gray

FEATURE_NAMES = (
    "mean", "std", "p01", "p05", "p50", "p95", "p99", "skew", "kurtosis", "entropy",
    "grad_mean", "grad_std", "grad_p99", "grad_max", "laplacian_var", "edge_density",
    "block_mean_range", "block_std_max", "block_std_min", "block_mean_dev_max",
)


def image_statistics(img: np.ndarray, size: int = 128) -> np.ndarray:
    import cv2

    g = to_gray(img, size)
    v = g.reshape(-1)
    mu, sd = float(v.mean()), float(v.std()) + 1e-6
    z = (v - mu) / sd
    p = np.percentile(v, [1, 5, 50, 95, 99])
    hist = np.histogram(v, bins=32, range=(0.0, 1.0))[0].astype(np.float64)
    hist /= hist.sum()
    entropy = float(-(hist[hist > 0] * np.log(hist[hist > 0])).sum())
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.sqrt(gx * gx + gy * gy).reshape(-1)
    lap = cv2.Laplacian(g, cv2.CV_32F)
    edges = cv2.Canny((g * 255).astype(np.uint8), 50, 150)
    b = 16
    blocks = g.reshape(size // b, b, size // b, b).transpose(0, 2, 1, 3).reshape(-1, b * b)
    bm, bs = blocks.mean(1), blocks.std(1)
    return np.array([
        mu, sd, *p, float((z ** 3).mean()), float((z ** 4).mean()), entropy,
        float(mag.mean()), float(mag.std()), float(np.percentile(mag, 99)), float(mag.max()),
        float(lap.var()), float((edges > 0).mean()),
        float(np.ptp(bm)), float(bs.max()), float(bs.min()), float(np.abs(bm - np.median(bm)).max()),
    ], np.float64)


class StatsGate(LabelFreeGate):
    kind = "stats"

    def __init__(self, seed: int = 0, size: int = 128) -> None:
        super().__init__(seed)
        self.size = int(size)
        self.center: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.location: np.ndarray | None = None
        self.precision: np.ndarray | None = None

    def _features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        f = np.stack([image_statistics(im, self.size) for im in images])
        return f

    def _fit_normals(self, normals, progress):
        from sklearn.covariance import LedoitWolf

        f = self._features(normals)
        self.center = np.median(f, axis=0)
        q75, q25 = np.percentile(f, [75, 25], axis=0)
        self.scale = np.where(q75 - q25 > 1e-9, q75 - q25, np.maximum(f.std(0), 1e-6))
        z = (f - self.center) / self.scale
        lw = LedoitWolf().fit(z)
        self.location, self.precision = lw.location_, lw.precision_
        progress("stats gate", 1, 1)
        return {"n_features": int(f.shape[1])}

    def _raw(self, images):
        z = (self._features(images) - self.center) / self.scale - self.location
        return np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", z, self.precision, z), 0.0))

    def _params(self) -> dict[str, Any]:
        return {"size": self.size, "features": list(FEATURE_NAMES)}

    def _arrays(self):
        return {"center": self.center, "scale": self.scale, "location": self.location, "precision": self.precision}

    def _load(self, params, arrays):
        self.size = int(params["size"])
        for k in ("center", "scale", "location", "precision"):
            setattr(self, k, np.asarray(arrays[k], np.float64))

"""Post-processing shared by heatmap detectors: anomaly maps at image size, and fixed normalisation.

Normalisation is fixed at fit time from held-out normal images and stored in the model, never taken from
the batch being scored: the replaced system divided by each batch's maximum, so an image's score depended
on its neighbours in the batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from core.detectors.resize_matrices import map_matrices


def upsample_and_blur(patch_maps: np.ndarray, size: int | tuple[int, int], sigma: float = 4.0) -> np.ndarray:
    """N x h x w patch scores -> N x size x size maps (or N x height x width for ``size`` = (height, width)),
    bilinear then Gaussian blur (sigma in pixels), as one matrix per axis (core.detectors.resize_matrices).

    Two matrix products instead of torch's upsampling and then OpenCV's blur: the same maps, faster at the sizes
    measured by `python benchmarks/map_resampling.py`. torch multiplies: its OpenMP threads follow the passive wait
    policy, while numpy's OpenBLAS threads keep spinning after a call and slowed the next backbone pass
    (benchmarks/README.md)."""
    import torch  # imported here: Normalisation, below, is also used by the torch-free bundle scorer

    a_h, a_w = map_matrices(patch_maps.shape[1:], size, sigma)
    maps = torch.as_tensor(np.ascontiguousarray(patch_maps, dtype=np.float32))
    return torch.matmul(torch.matmul(torch.from_numpy(a_h), maps), torch.from_numpy(a_w).T).numpy()


@dataclass
class Normalisation:
    """Fixed statistics of held-out normal images, set when the model is fitted.

    ``image_threshold`` is the default decision threshold on raw scores (the ``quantile`` of held-out
    normal scores) until threshold tuning replaces it. ``normalise`` maps raw scores so that the median
    held-out normal is 0 and the threshold is 1; ``pixel_scale`` scales maps for display the same way.
    """

    image_median: float
    image_threshold: float
    pixel_median: float
    pixel_scale: float
    quantile: float
    n_images: int
    threshold_source: str = "held-out normals"

    @classmethod
    def from_normals(cls, scores: np.ndarray, maps: np.ndarray, quantile: float = 0.99) -> "Normalisation":
        scores = np.asarray(scores, dtype=np.float64)
        pix = np.asarray(maps, dtype=np.float32).ravel()
        if pix.size > 2_000_000:  # a strided sample is enough for a quantile
            pix = pix[:: pix.size // 2_000_000]
        med = float(np.median(scores))
        thr = float(np.quantile(scores, quantile))
        pmed = float(np.median(pix))
        pq = float(np.quantile(pix, 0.999))
        return cls(
            image_median=med,
            image_threshold=thr if thr > med else med + 1e-6,
            pixel_median=pmed,
            pixel_scale=pq if pq > pmed else pmed + 1e-6,
            quantile=quantile,
            n_images=int(len(scores)),
        )

    def normalise(self, scores: np.ndarray) -> np.ndarray:
        """0 = a typical normal image, 1 = the decision threshold. Monotone, batch-independent."""
        return (np.asarray(scores, dtype=np.float64) - self.image_median) / (self.image_threshold - self.image_median)

    def normalise_map(self, maps: np.ndarray) -> np.ndarray:
        """0 = a typical normal pixel, 1 = the 99.9th percentile of normal pixels."""
        return (np.asarray(maps, dtype=np.float32) - self.pixel_median) / (self.pixel_scale - self.pixel_median)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Normalisation":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def score_to_threshold(scores: np.ndarray | float, threshold: float) -> np.ndarray:
    """Raw scores divided by the decision threshold in use: 1 = at the threshold, >= 1 = anomalous.

    The one score scale shown to users (app, CLI and CSV columns ``score_to_threshold``); it follows the threshold
    actually used (saved, tuned in the app, or given on the command line), and is fixed per image, never taken
    from a batch. Heatmap scores are distances (>= 0) with a positive threshold.
    """
    t = float(threshold)
    if not t > 0:
        raise ValueError(f"the decision threshold must be positive to scale scores by it, got {t}")
    return np.asarray(scores, dtype=np.float64) / t

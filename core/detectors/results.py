"""What scoring returns, for detectors and exported bundles alike (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ScoreResult:
    """Raw scores and anomaly maps (N x height x width: the model's input size, ``input_hw``) of the images that
    were read."""

    scores: np.ndarray
    maps: np.ndarray
    ok: list[int]
    errors: dict[int, str]
    seconds: dict[str, float]

    @property
    def ms_per_image(self) -> float:
        n = max(1, len(self.ok))
        return 1000.0 * sum(self.seconds.values()) / n

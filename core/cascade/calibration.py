"""Maps from a gate's raw score to [0, 1], fitted on validation data, so T_low / T_high mean the same for every gate.

* ``NormalQuantileCalibration`` (label-free gates): the empirical distribution of the *validation normals'* raw
  scores. A calibrated score of 0.8 means "80 % of unseen normal images score lower". Piecewise linear between
  the sorted normal scores (strictly increasing, so ranks are kept), with an exponential tail above the largest
  normal score that approaches 1 (so anomalies far beyond the normals still keep their order).
* ``TemperatureCalibration`` (supervised gate): sigmoid(logit / T + b), T and b fitted by log-loss on val_mix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.errors import WorkbenchError


class NormalQuantileCalibration:
    kind = "normal_quantile"

    def __init__(self, knots: np.ndarray | None = None, tail_scale: float = 1.0) -> None:
        self.knots = None if knots is None else np.asarray(knots, np.float64)
        self.tail_scale = float(tail_scale)

    def fit(self, normal_raw: np.ndarray) -> "NormalQuantileCalibration":
        s = np.sort(np.asarray(normal_raw, np.float64).reshape(-1))
        if s.size < 2:
            raise WorkbenchError(
                f"Calibrating a gate needs at least 2 normal validation images; got {s.size}.",
                "Use a dataset whose val_mix split holds normal images.",
            )
        # make knots strictly increasing (ties would make the map a step)
        eps = max(1e-12, 1e-9 * float(np.abs(s).max() or 1.0))
        for i in range(1, s.size):
            if s[i] <= s[i - 1]:
                s[i] = s[i - 1] + eps
        self.knots = s
        iqr = float(np.subtract(*np.percentile(s, [75, 25])))
        self.tail_scale = iqr if iqr > 0 else float(np.ptp(s) or 1.0)
        return self

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        assert self.knots is not None, "calibration not fitted"
        x = np.asarray(raw, np.float64).reshape(-1)
        k = self.knots
        n = k.size
        levels = np.arange(1, n + 1) / (n + 1)  # the i-th normal sits at i/(n+1)
        out = np.interp(x, k, levels)
        lo, hi = x < k[0], x > k[-1]
        # below the smallest normal: linear down to 0 over one tail scale; above the largest: exp tail to 1
        out[lo] = levels[0] * np.exp(-(k[0] - x[lo]) / self.tail_scale)
        out[hi] = 1.0 - (1.0 - levels[-1]) * np.exp(-(x[hi] - k[-1]) / self.tail_scale)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "tail_scale": self.tail_scale}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"calibration_knots": self.knots}

    @classmethod
    def from_saved(cls, d: dict[str, Any], arrays: dict[str, np.ndarray]) -> "NormalQuantileCalibration":
        return cls(arrays["calibration_knots"], d["tail_scale"])


class TemperatureCalibration:
    kind = "temperature"

    def __init__(self, temperature: float = 1.0, bias: float = 0.0) -> None:
        self.temperature = float(temperature)
        self.bias = float(bias)

    def fit(self, logits: np.ndarray, labels: np.ndarray) -> "TemperatureCalibration":
        import torch

        z = torch.as_tensor(np.asarray(logits, np.float64).reshape(-1))
        y = torch.as_tensor(np.asarray(labels, np.float64).reshape(-1))
        if len(set(y.tolist())) < 2:
            raise WorkbenchError(
                "Calibrating the supervised gate needs both classes in val_mix.",
                "Use a dataset whose val_mix split holds normal and defective images.",
            )
        log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([log_t, b], lr=0.1, max_iter=200)

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z / log_t.exp() + b, y)
            loss.backward()
            return loss

        opt.step(closure)
        t = float(log_t.detach().exp())
        if not np.isfinite(t) or t <= 0:
            t, bb = 1.0, 0.0
        else:
            bb = float(b.detach())
        self.temperature, self.bias = min(max(t, 1e-3), 1e3), bb
        return self

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        z = np.asarray(logits, np.float64).reshape(-1) / self.temperature + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "temperature": self.temperature, "bias": self.bias}

    def arrays(self) -> dict[str, np.ndarray]:
        return {}

    @classmethod
    def from_saved(cls, d: dict[str, Any], arrays: dict[str, np.ndarray]) -> "TemperatureCalibration":
        return cls(d["temperature"], d["bias"])

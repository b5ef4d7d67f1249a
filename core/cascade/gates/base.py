"""What every gate shares: fit on a split, score decoded images to a calibrated [0, 1] anomaly score, report its
cost, and save/load as a model folder (safetensors + JSON, never pickle).

A subclass implements ``_fit`` (learn from training images), ``_raw`` (raw scores of a batch, higher = more
anomalous), ``_calibrate`` (fit ``self.calibration`` on validation images) and its arrays.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from core.cascade.calibration import NormalQuantileCalibration, TemperatureCalibration
from core.errors import DatasetError, ModelFormatError
from core.progress import ProgressFn, no_progress
from core.storage import load_model_folder, read_model_config, save_model_folder

GATE_PREFIX = "cascade_gate_"


def to_gray(img: np.ndarray, size: int) -> np.ndarray:
    """uint8 RGB/gray image -> float32 size x size gray in [0, 1] (area interpolation)."""
    import cv2

    g = img if img.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2GRAY)
    g = cv2.resize(g, (size, size), interpolation=cv2.INTER_AREA)
    return g.astype(np.float32) / 255.0


class Gate:
    """A cheap image-level anomaly scorer in front of a heatmap model."""

    kind: ClassVar[str] = ""
    needs_labels: ClassVar[bool] = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self.calibration: NormalQuantileCalibration | TemperatureCalibration | None = None
        self.fit_report: dict[str, Any] = {}
        self.ms_per_image: float | None = None

    # --- to implement ---------------------------------------------------------------------------
    def _fit(self, images: list[np.ndarray], labels: np.ndarray, val_images: list[np.ndarray],
             val_labels: np.ndarray, progress: ProgressFn) -> dict[str, Any]:
        raise NotImplementedError

    def _raw(self, images: Sequence[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        raise NotImplementedError

    def _arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _load(self, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def n_parameters(self) -> int:
        return int(sum(int(np.prod(a.shape)) for a in self._arrays().values()))

    # --- public ---------------------------------------------------------------------------------
    def fit(self, images: Sequence[np.ndarray], labels: Sequence[int], val_images: Sequence[np.ndarray],
            val_labels: Sequence[int], progress: ProgressFn = no_progress) -> dict[str, Any]:
        """Fit on (images, labels) and calibrate on the validation images.

        Label-free gates learn from the label-0 images only and calibrate on the validation normals; the
        supervised gate needs both classes in both sets (refused otherwise).
        """
        images, val_images = list(images), list(val_images)
        y = np.asarray(labels, np.int64).reshape(-1)
        vy = np.asarray(val_labels, np.int64).reshape(-1)
        if len(images) != y.size or len(val_images) != vy.size:
            raise ValueError("one label per image, please")
        if not self.needs_labels:
            if int((y == 0).sum()) < 2:
                raise DatasetError(f"The {self.kind} gate needs at least 2 normal training images; got "
                                   f"{int((y == 0).sum())}.", "Use a dataset with normal training images.")
            if int((vy == 0).sum()) < 2:
                raise DatasetError(f"Calibrating the {self.kind} gate needs at least 2 normal validation images.",
                                   "Use a dataset whose val_mix holds normal images.")
        t0 = time.perf_counter()
        report = dict(self._fit(images, y, val_images, vy, progress))
        report["fit_seconds"] = time.perf_counter() - t0
        report["n_train"] = int(y.size)
        report["n_train_anomalous"] = int(y.sum())
        report["n_val"] = int(vy.size)
        self.ms_per_image = self.measure_ms(val_images[: min(20, len(val_images))])
        report["ms_per_image"] = self.ms_per_image
        self.fit_report = report
        return report

    def raw_scores(self, images: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        images = list(images)
        if not images:
            return np.zeros(0)
        return np.concatenate([np.asarray(self._raw(images[i:i + batch_size]), np.float64).reshape(-1)
                               for i in range(0, len(images), batch_size)])

    def score_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Calibrated anomaly scores in [0, 1] (higher = more anomalous)."""
        if self.calibration is None:
            raise RuntimeError("fit or load the gate first")
        return self.calibration(self.raw_scores(images))

    def score_timed(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Scores and per-image milliseconds, one image at a time (batch 1, decoded images)."""
        scores, ms = np.zeros(len(images)), np.zeros(len(images))
        for i, img in enumerate(images):
            t0 = time.perf_counter()
            scores[i] = self.score_images([img])[0]
            ms[i] = 1000.0 * (time.perf_counter() - t0)
        return scores, ms

    def measure_ms(self, images: Sequence[np.ndarray]) -> float | None:
        if not images:
            return None
        self.score_images([images[0]])  # warm-up
        return float(np.median(self.score_timed(images)[1]))

    def cost(self) -> dict[str, Any]:
        """What one image costs: measured median ms (batch 1, this machine) and the parameter count."""
        return {"gate": self.kind, "ms_per_image": self.ms_per_image, "parameters": self.n_parameters(),
                "needs_labels": self.needs_labels}

    # --- persistence ----------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        if self.calibration is None:
            raise RuntimeError("fit the gate before saving it")
        arrays = dict(self._arrays())
        arrays.update(self.calibration.arrays())
        cfg = {"seed": self.seed, "params": self._params(), "calibration": self.calibration.to_dict(),
               "fit_report": self.fit_report, "ms_per_image": self.ms_per_image}
        return save_model_folder(folder, GATE_PREFIX + self.kind, cfg, arrays)

    @classmethod
    def load(cls, folder: str | Path) -> "Gate":
        cfg, arrays = load_model_folder(folder, expect_kind=GATE_PREFIX + cls.kind)
        try:
            gate = cls(seed=cfg["seed"])
            gate._load(cfg["params"], arrays)
            cal = cfg["calibration"]
            klass = TemperatureCalibration if cal["kind"] == "temperature" else NormalQuantileCalibration
            gate.calibration = klass.from_saved(cal, arrays)
            gate.fit_report = cfg.get("fit_report", {})
            gate.ms_per_image = cfg.get("ms_per_image")
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFormatError(f"{folder}: gate config lacks or mistypes {exc}.", "Refit the gate.") from exc
        return gate


class LabelFreeGate(Gate):
    """Gates that learn from normals only; calibrated by the validation normals' score distribution."""

    def _fit(self, images, labels, val_images, val_labels, progress):
        normals = [im for im, y in zip(images, labels) if y == 0]
        report = self._fit_normals(normals, progress)
        val_normals = [im for im, y in zip(val_images, val_labels) if y == 0]
        self.calibration = NormalQuantileCalibration().fit(self.raw_scores(val_normals))
        report["n_fit_normals"] = len(normals)
        report["n_calibration_normals"] = len(val_normals)
        return report

    def _fit_normals(self, normals: list[np.ndarray], progress: ProgressFn) -> dict[str, Any]:
        raise NotImplementedError


def load_gate(folder: str | Path) -> Gate:
    """Load any saved gate, dispatching on the kind in its config."""
    from core.cascade.gates import GATES

    kind = str(read_model_config(folder).get("kind", ""))
    name = kind[len(GATE_PREFIX):] if kind.startswith(GATE_PREFIX) else ""
    if name not in GATES:
        raise ModelFormatError(f"{folder} holds a {kind!r} model, not a cascade gate.",
                               "Give the gate folder that `python -m core cascade fit` wrote.")
    return GATES[name].load(folder)

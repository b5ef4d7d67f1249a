"""What every heatmap detector shares: features through the cache, held-out normalisation, scoring of
paths or decoded images, and the model folder (safetensors + JSON).

A subclass implements the pure model: ``fit_embeddings`` (learn from normal features) and
``score_embeddings`` (raw image scores and patch-level maps), plus its arrays for saving.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from core.data.splits import holdout
from core.detectors.postprocess import Normalisation, upsample_and_blur
from core.detectors.results import ScoreResult
from core.detectors.scale import ScaleChoice, check_input_pixels, choose_scale, forced_scale
from core.errors import DatasetError, ModelFormatError
from core.features import FeatureCache, FeatureExtractor, FeatureSpec
from core.progress import ProgressFn, no_progress
from core.storage import load_model_folder, save_model_folder

CALIBRATION_CHUNK_PATCHES = 250_000  # finest-layer cells scored per leave-out pass at fit


def default_image_size(detector: str, backbone: str) -> int:
    """The square input size the registered ``detector`` uses on ``backbone`` for small images (see each class's
    :meth:`HeatmapDetector.default_input_size`)."""
    from core.detectors.registry import detector_class

    return detector_class(detector).default_input_size(backbone)


@dataclass
class FitReport:
    """Where fitting spent its time and what it saw."""

    n_fit_images: int
    n_calibration_images: int
    seconds: dict[str, float]
    cache: dict[str, int]
    skipped: dict[str, str] = field(default_factory=dict)  # path -> message
    notes: list[str] = field(default_factory=list)
    scale: dict[str, Any] = field(default_factory=dict)  # the ScaleChoice the model was fitted at

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_seconds"] = self.total_seconds
        return d


class HeatmapDetector:
    """Base class of heatmap detectors, and their contract.

    A subclass sets ``kind`` and ``config_class`` (its settings dataclass, whose fields :meth:`from_settings`
    accepts), and implements the pure model:

    * ``embed(features)``: backbone feature maps -> the patch embedding (N x C x h x w torch tensor);
    * ``fit_embeddings(features, progress)``: learn from normal images' features; returns seconds per stage;
    * ``score_embeddings(features, leave_out=None)``: raw image scores (N,), patch maps (N x h x w) and seconds;
    * ``state_params()`` / ``state_arrays()`` / ``load_state_arrays(arrays)`` and ``from_config(cfg)``: the model
      folder (JSON-able settings, numpy arrays);

    and may override the class hooks that the CLI and the app read: :meth:`default_input_size`,
    :meth:`form_fields`, :meth:`add_cli_options` and :meth:`settings_from_cli`. Everything else (features through
    the cache, scale, calibration, normalisation, scoring of paths or images, save / load) is shared here. The
    contract is tested for every registered detector in ``tests/test_detector_contract.py``.
    """

    kind: ClassVar[str] = ""
    config_class: ClassVar[type] = object
    calibration_fraction: float = 0.1
    # True: fit on every image, calibrate on a slice scored with each image left out of the model
    # (``score_embeddings(..., leave_out=train indices)``); False: hold the slice out of fitting.
    leave_out_calibration: ClassVar[bool] = False

    def __init__(
        self,
        backbone: str,
        layers: Sequence[str] | None,
        image_size: int,
        blur_sigma: float,
        seed: int,
        auto_scale: bool = False,
    ):
        """``image_size``: the square input side; with ``auto_scale`` only the default until :meth:`fit` chooses
        the scale from the training images (``core.detectors.scale``)."""
        self.backbone = backbone
        self.layers: tuple[str, ...] = tuple(layers or ())
        self.auto_scale = bool(auto_scale)
        self.scale = ScaleChoice(int(image_size), int(image_size), "default", "the detector's default size") \
            if auto_scale else forced_scale(int(image_size))
        self.image_size = int(image_size)
        self.blur_sigma = float(blur_sigma)
        self.seed = int(seed)
        self.precision = "float32"  # the backbone's arithmetic (core.backbones.PRECISIONS); subclasses may set it
        self.normalisation: Normalisation | None = None
        self.train_fingerprint: str = ""
        self.train_paths: list[str] = []
        self.weights_sha256: str = ""
        self._extractor: FeatureExtractor | None = None
        self._estimate_memory = True  # off for an outside feature source (use_feature_source)
        self._outside_features = False
        self.fit_notes: list[str] = []  # what the last fit decided beyond the scale, for its report

    # --- class hooks: how the registry, the CLI and the fit form build this detector ------------
    @classmethod
    def default_input_size(cls, backbone: str) -> int:
        """The square input size for small images on ``backbone`` (224 px unless a detector says otherwise)."""
        return 224

    @classmethod
    def form_fields(cls) -> tuple:
        """The detector's own fields on the app's fit form (``core.detectors.registry.FormField``)."""
        return ()

    @classmethod
    def add_cli_options(cls, parser: Any) -> None:
        """Add this detector's own options to an argparse parser (prefixed in their help with its name)."""

    @classmethod
    def settings_from_cli(cls, args: Any) -> dict[str, Any]:
        """This detector's own settings (config field -> value) from parsed CLI options."""
        return {}

    @classmethod
    def from_settings(cls, **settings: Any) -> "HeatmapDetector":
        """A new detector from ``config_class`` field values; an unknown setting is refused with the choices."""
        from dataclasses import fields

        from core.errors import WorkbenchError

        names = {f.name for f in fields(cls.config_class)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise WorkbenchError(f"{cls.kind} has no setting {', '.join(unknown)}.",
                                 f"Use: {', '.join(sorted(names))}.")
        return cls(cls.config_class(**settings))

    # --- scale ----------------------------------------------------------------------------------
    @property
    def input_hw(self) -> tuple[int, int]:
        """(height, width) images are resized to before the backbone; maps come out at this size."""
        return self.scale.hw

    def set_scale(self, scale: ScaleChoice) -> None:
        """Score at ``scale`` from now on (the extractor is rebuilt for the new size on next use)."""
        if scale.hw != self.scale.hw and self._extractor is not None and not self._outside_features:
            self._extractor = None
        self.scale = scale
        self.image_size = max(scale.hw)
        self._on_scale_change()

    def _on_scale_change(self) -> None:
        """Hook for subclasses whose config repeats the size."""

    def adapt_to_scale(self) -> None:
        """Hook, called by :meth:`fit` once the scale is chosen and before any feature is taken: settings that
        follow the scale (PatchCore's HighResolutionSettings), each noted in ``fit_notes``. Never called on load: a
        saved model keeps the settings it was fitted with."""

    # --- features -------------------------------------------------------------------------------
    def extractor(self, cache: FeatureCache | None = None, device: str | None = None) -> FeatureExtractor:
        """The feature extractor for this model's backbone, layers and size (created once)."""
        if self._extractor is None:
            h, w = self.input_hw
            spec = FeatureSpec(self.backbone, self.layers, max(h, w), None if h == w else (h, w), self.precision)
            self._extractor = FeatureExtractor(spec, device=device, cache=cache)
            self.layers = self._extractor.spec.layers
            if self.weights_sha256 and self.weights_sha256 != self._extractor.weights_sha256:
                raise ModelFormatError(
                    f"This model was fitted with other {self.backbone} weights "
                    f"(sha256 {self.weights_sha256[:12]}…, installed {self._extractor.weights_sha256[:12]}…).",
                    "Refit the model with the installed weights, or install the weights it was made with.",
                )
            self.weights_sha256 = self._extractor.weights_sha256
        elif cache is not None:
            self._extractor.cache = cache
        return self._extractor

    def use_feature_source(self, source: Any) -> None:
        """Take features from ``source`` instead of a backbone of this model's own: any object with
        FeatureExtractor's ``spec``, ``weights_sha256``, ``cache``, ``extract_paths`` and ``extract_images`` (e.g.
        the fusion study's view over two backbones). Fitting then skips the memory estimate, which needs one
        backbone to probe."""
        self._extractor = source
        self.layers = tuple(source.spec.layers)
        self.weights_sha256 = source.weights_sha256
        self._estimate_memory = False
        self._outside_features = True
        self.auto_scale = False  # the source's size is the model's
        # The source's size where it says one (a FeatureSpec), else the size this model was made with.
        size = getattr(source.spec, "image_size", None)
        hw = getattr(source.spec, "hw", None) or ((int(size), int(size)) if size else self.input_hw)
        self.set_scale(ScaleChoice(int(hw[0]), int(hw[1]), "forced", "the outside feature source's size"))

    # --- to implement ---------------------------------------------------------------------------
    def fit_embeddings(self, features: dict[str, np.ndarray], progress: ProgressFn) -> dict[str, float]:
        """Learn from normal features; return seconds per stage."""
        raise NotImplementedError

    def score_embeddings(
        self, features: dict[str, np.ndarray], leave_out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """Raw image scores (N,), patch maps (N x h x w) and seconds per stage.

        ``leave_out`` (only where ``leave_out_calibration``): for each image, the index of the training
        image it is, whose contribution to the model must be ignored.
        """
        raise NotImplementedError

    def state_arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def estimate_fit_bytes(self, n_images: int) -> int:
        """Peak bytes fitting on ``n_images`` will need (checked before extraction starts)."""
        return 0

    def learn_normals(self, features: dict[str, np.ndarray], first_index: int) -> dict[str, Any]:
        """Optional: take more normal images into the fitted model without a refit (review feedback). Their
        indices in ``train_paths`` start at ``first_index``. Returns what changed (for the review log)."""
        from core.errors import WorkbenchError

        raise WorkbenchError(f"{self.kind} models cannot learn from review.", "Refit the model with the image "
                             "added to its training folder.")

    # --- fit / score ----------------------------------------------------------------------------
    def fit(
        self,
        paths: Sequence[str | Path],
        cache: FeatureCache | None = None,
        progress: ProgressFn = no_progress,
        fingerprint: str = "",
    ) -> FitReport:
        """Fit on normal images and fix the score normalisation on normal images the model has not seen.

        Detectors that can leave an image out of their own model (PatchCore: ignore the bank rows that came
        from it) fit on every image and calibrate on a ``calibration_fraction`` slice scored that way; the
        others hold that slice out of fitting.
        """
        from core.resources import check_memory

        paths = [str(p) for p in paths]
        if len(paths) < 2:
            raise DatasetError(
                f"Fitting needs at least 2 normal images; got {len(paths)}.",
                "Point the detector at a dataset whose train/good (or normal) folder holds images.",
            )
        self.fit_notes = []
        if self.auto_scale:
            self.set_scale(choose_scale(paths, self.default_size(), self.pixel_budget()))
        self.adapt_to_scale()
        check_input_pixels(self.input_hw)
        salt = f"calibration:{self.seed}"
        fit_paths, calib_paths = ((paths, []) if self.leave_out_calibration
                                  else holdout(paths, self.calibration_fraction, salt))
        if self._estimate_memory:
            check_memory(self.estimate_fit_bytes(len(fit_paths)), f"fitting {self.kind} on {len(fit_paths)} images")
        ext = self.extractor(cache)
        t0 = time.perf_counter()
        res = ext.extract_paths(fit_paths, progress)
        seconds = {"extract": time.perf_counter() - t0}
        skipped = {fit_paths[i]: msg for i, msg in res.errors.items()}
        if len(res.ok) < 2:
            shown = list(skipped.values())[:5]
            more = f" (and {len(skipped) - len(shown)} more)" if len(skipped) > len(shown) else ""
            raise DatasetError(
                f"Fewer than 2 training images could be read ({len(res.ok)} of {len(fit_paths)}): "
                + " ".join(shown) + more,
                "Fix or replace the files named above, or add readable normal images.",
            )
        seconds.update(self.fit_embeddings(res.features, progress))
        self.train_paths = [fit_paths[i] for i in res.ok]
        self.train_fingerprint = fingerprint
        t0 = time.perf_counter()
        if self.leave_out_calibration:
            _, calib = holdout(list(range(len(self.train_paths))), self.calibration_fraction, salt)
            calib_idx = np.array(calib, dtype=np.int64)
            progress("score", 0, len(calib_idx))  # the calibration stage, shown while it runs
            scores, maps = self._score_left_out(res.features, calib_idx)
            progress("score", len(calib_idx), len(calib_idx))
            n_calib = len(calib_idx)
        else:
            cal = self.score_paths(calib_paths, cache=cache, progress=progress)
            skipped.update({calib_paths[i]: msg for i, msg in cal.errors.items()})
            if len(cal.ok) == 0:
                raise DatasetError("No held-out normal image could be read.", "Add readable normal images.")
            scores, maps, n_calib = cal.scores, cal.maps, len(cal.ok)
        self.normalisation = Normalisation.from_normals(scores, maps)
        seconds["calibrate"] = time.perf_counter() - t0
        return FitReport(
            n_fit_images=len(res.ok),
            n_calibration_images=n_calib,
            seconds=seconds,
            cache=res.cache.as_dict(),
            skipped=skipped,
            notes=[self.scale.describe(), *self.fit_notes],
            scale=self.scale.to_dict(),
        )

    def add_normal_images(self, paths: Sequence[str | Path], cache: FeatureCache | None = None) -> dict[str, Any]:
        """Review feedback: images a user marked as normal join the model (``learn_normals``, no refit) and the
        threshold is fixed again as at fit time, on the calibration slice of the (now longer) training list scored
        with each image left out. Detectors that hold calibration images out keep their threshold (noted)."""
        paths = [str(p) for p in paths]
        ext = self.extractor(cache)
        res = ext.extract_paths(paths)
        if res.errors:
            raise DatasetError(" ".join(res.errors.values()), "Mark readable images only.")
        before = self.normalisation
        change = self.learn_normals(res.features, first_index=len(self.train_paths))
        self.train_paths = self.train_paths + paths
        if self.leave_out_calibration:
            everything = ext.extract_paths(self.train_paths)
            if everything.errors:  # a training image moved or vanished since the fit: keep the old threshold
                change["threshold"] = "kept: some training images are no longer readable"
            else:
                _, calib = holdout(list(range(len(self.train_paths))), self.calibration_fraction,
                                   f"calibration:{self.seed}")
                calib_idx = np.array(calib, dtype=np.int64)
                scores, maps = self._score_left_out(everything.features, calib_idx)
                self.normalisation = Normalisation.from_normals(scores, maps)
                change["threshold"] = "fixed again on the calibration slice"
        else:
            change["threshold"] = "kept (this detector holds its calibration images out of the model)"
        change.update(threshold_before=before.image_threshold if before else None,
                      threshold_after=self.normalisation.image_threshold)
        return change

    def _score_left_out(self, features: dict[str, np.ndarray], idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores and maps of training images ``idx``, each left out of the model, in chunks of about
        CALIBRATION_CHUNK_PATCHES patches: a leave-out search holds many neighbours per patch. On deeppcb at 640 px
        the evaluate process peaked at 5.2 GB before this and the streamed fit embedding, 3.3 GB after."""
        per_image = max(1, max(int(np.prod(v.shape[-2:])) for v in features.values()))
        step = max(1, CALIBRATION_CHUNK_PATCHES // per_image)
        scores, maps = [], []
        for s in range(0, len(idx), step):
            part = idx[s : s + step]
            sc, pm, _ = self.score_embeddings({k: v[part] for k, v in features.items()}, leave_out=part)
            scores.append(sc)
            maps.append(upsample_and_blur(pm, self.input_hw, self.blur_sigma))
        return np.concatenate(scores), np.concatenate(maps)

    def default_size(self) -> int:
        """The square size this detector was tuned at (the automatic scale's choice for small images)."""
        return self.default_input_size(self.backbone)

    def pixel_budget(self) -> int:
        """Input pixels the automatic scale may use (see core.detectors.scale)."""
        from core.detectors.scale import DEFAULT_PIXEL_BUDGET

        return DEFAULT_PIXEL_BUDGET

    def _finish(self, features: dict[str, np.ndarray], seconds: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        scores, patch_maps, s = self.score_embeddings(features)
        seconds.update({k: seconds.get(k, 0.0) + v for k, v in s.items()})
        t0 = time.perf_counter()
        maps = upsample_and_blur(patch_maps, self.input_hw, self.blur_sigma)
        seconds["map"] = seconds.get("map", 0.0) + time.perf_counter() - t0
        return scores, maps

    def score_paths(
        self,
        paths: Sequence[str | Path],
        cache: FeatureCache | None = None,
        progress: ProgressFn = no_progress,
        batch_size: int = 64,
    ) -> ScoreResult:
        """Score image files in chunks (bounded memory); unreadable files are reported, not fatal.

        Each image's score depends on that image alone: the model and its stored normalisation are fixed.
        """
        ext = self.extractor(cache)
        all_scores, all_maps, ok, errors = [], [], [], {}
        seconds: dict[str, float] = {}
        paths = [str(p) for p in paths]
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            t0 = time.perf_counter()
            res = ext.extract_paths(chunk)
            seconds["backbone"] = seconds.get("backbone", 0.0) + time.perf_counter() - t0
            errors.update({start + i: m for i, m in res.errors.items()})
            if res.ok:
                s, m = self._finish(res.features, seconds)
                all_scores.append(s)
                all_maps.append(m)
                ok.extend(start + i for i in res.ok)
            progress("score", min(start + batch_size, len(paths)), len(paths))
        return self._result(all_scores, all_maps, ok, errors, seconds)

    def score_images(self, images: Sequence[np.ndarray]) -> ScoreResult:
        """Score decoded uint8 RGB images (uploads), without the disk cache."""
        ext = self.extractor()
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        feats = ext.extract_images(list(images))
        seconds["backbone"] = time.perf_counter() - t0
        s, m = self._finish(feats, seconds)
        return self._result([s], [m], list(range(len(images))), {}, seconds)

    def _result(self, scores, maps, ok, errors, seconds) -> ScoreResult:
        h, w = self.input_hw
        return ScoreResult(
            scores=np.concatenate(scores) if scores else np.zeros(0),
            maps=np.concatenate(maps) if maps else np.zeros((0, h, w), np.float32),
            ok=ok,
            errors=errors,
            seconds=seconds,
        )

    @property
    def threshold(self) -> float:
        """The decision threshold on raw scores (held-out normals' quantile unless tuned)."""
        if self.normalisation is None:
            raise RuntimeError("the model is not fitted")
        return self.normalisation.image_threshold

    # --- persistence ----------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Everything but the arrays, as written to config.json."""
        return {
            "backbone": self.backbone,
            "layers": list(self.layers),
            "image_size": self.image_size,
            "input_hw": list(self.input_hw),
            "scale": self.scale.to_dict(),
            "blur_sigma": self.blur_sigma,
            "precision": self.precision,
            "seed": self.seed,
            "weights_sha256": self.weights_sha256,
            "train_fingerprint": self.train_fingerprint,
            "train_paths": self.train_paths,
            "normalisation": self.normalisation.to_dict() if self.normalisation else None,
            "params": self.state_params(),
        }

    def save(self, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write the model folder atomically (arrays first, config with their hash last)."""
        if self.normalisation is None:
            raise RuntimeError("fit the model before saving it")
        cfg = self.config()
        cfg.update(extra or {})
        return save_model_folder(folder, self.kind, cfg, self.state_arrays())

    def state_params(self) -> dict[str, Any]:
        """The settings saved in config.json's ``params``: the config dataclass (``self.cfg``) and the layers."""
        from dataclasses import asdict

        return {**asdict(self.cfg), "layers": list(self.layers)}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "HeatmapDetector":
        """An unfitted detector with the settings of a saved config (``params``; fields it does not know are
        ignored, so a model saved with an older config loads)."""
        from dataclasses import fields

        names = {f.name for f in fields(cls.config_class)}
        p = {k: v for k, v in cfg["params"].items() if k in names}
        if "layers" in p:
            p["layers"] = tuple(p["layers"])
        return cls(cls.config_class(**p))

    @classmethod
    def load(cls, folder: str | Path) -> "HeatmapDetector":
        """Load a folder written by :meth:`save` of this kind (checks version, hash and kind)."""
        cfg, arrays = load_model_folder(folder, expect_kind=cls.kind)
        try:
            det = cls.from_config(cfg)
            if "scale" in cfg:  # format 2; version-1 models are square at image_size, as from_config made them
                det.set_scale(ScaleChoice.from_dict(cfg["scale"]))
            det.auto_scale = False  # a fitted model keeps its scale
            det.layers = tuple(cfg["layers"])
            det.weights_sha256 = cfg["weights_sha256"]
            det.train_fingerprint = cfg.get("train_fingerprint", "")
            det.train_paths = list(cfg.get("train_paths", []))
            det.normalisation = Normalisation.from_dict(cfg["normalisation"])
            det.load_state_arrays(arrays)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFormatError(f"{folder}: config.json lacks or mistypes {exc}.", "Refit the model.") from exc
        return det

"""Patch-feature extraction from a frozen backbone, through the content-addressed disk cache."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from core.errors import WorkbenchError
from core.features.cache import CacheStats, FeatureCache, feature_key
from core.progress import ProgressFn, no_progress


@dataclass(frozen=True)
class FeatureSpec:
    """What defines a set of features: backbone, layers and the input size (square ``image_size``, or
    ``input_hw`` = (height, width) when the model keeps its images' aspect ratio)."""

    backbone: str
    layers: tuple[str, ...]
    image_size: int = 224
    input_hw: tuple[int, int] | None = None
    precision: str = "float32"  # the backbone's arithmetic (core.backbones.PRECISIONS)

    @property
    def hw(self) -> tuple[int, int]:
        """(height, width) every image is resized to before the backbone."""
        return tuple(self.input_hw) if self.input_hw else (int(self.image_size), int(self.image_size))

    @property
    def size_key(self) -> int | tuple[int, int]:
        """The size as the cache key holds it: an int for a square (the keys made before non-square inputs)."""
        h, w = self.hw
        return h if h == w else (h, w)


@dataclass
class ExtractionResult:
    """Features of the images that could be read, and a message for each that could not."""

    features: dict[str, np.ndarray]  # layer -> N_ok x C x h x w float32
    ok: list[int]  # indices (into the input list) of the images in ``features``
    errors: dict[int, str] = field(default_factory=dict)  # index -> message naming the file and problem
    cache: CacheStats = field(default_factory=CacheStats)


def batch_for_pixels(hw: tuple[int, int], at_224: int) -> int:
    """Images per batch for inputs of ``hw`` (height, width): as many as hold about ``at_224`` images of 224 x 224 px,
    1 to ``at_224``. On a CPU a pass is bound by the cache, not by arithmetic, so large images go one at a time
    (benchmarks/backbone_batch.py for the backbone, benchmarks/bundle_speed.py for bundles)."""
    return max(1, min(at_224, round(at_224 * 224 * 224 / (hw[0] * hw[1]))))


class FeatureExtractor:
    """Runs a backbone on images and returns the feature maps of chosen layers.

    ``extract_paths`` goes through the disk cache (keyed by image bytes); ``extract_images`` does not
    (uploads and one-off scoring, where a cache write would cost more than it saves).
    """

    def __init__(
        self,
        spec: FeatureSpec,
        device: str | None = None,
        cache: FeatureCache | None = None,
        batch_size: int | None = None,
    ) -> None:
        from core.backbones import load_backbone

        self.backbone = load_backbone(spec.backbone, device)
        layers = spec.layers or self.backbone.info.default_layers
        self.spec = FeatureSpec(spec.backbone, tuple(layers), int(spec.image_size),
                                tuple(int(v) for v in spec.input_hw) if spec.input_hw else None, spec.precision)
        self.cache = cache
        # A GPU wants large batches; a CPU 4 images at 208-224 px (lite0: faster than 16), fewer as inputs grow.
        on_gpu = self.backbone.device.type == "cuda"
        self.batch_size = batch_size or (32 if on_gpu else batch_for_pixels(self.spec.hw, 4))

    @property
    def weights_sha256(self) -> str:
        return self.backbone.weights_sha256

    def feature_shapes(self) -> dict[str, tuple[int, int, int]]:
        """(channels, height, width) of each layer's map at this spec's input size, from a small probe pass
        (the backbones are fully convolutional: a map is the input size over the layer's stride, rounded up)."""
        ps = self.backbone.patch_size  # a ViT takes only multiples of its patch size (1 for CNNs)
        probe = 64 if ps == 1 else 16 * ps
        x = self.backbone.preprocess([np.zeros((probe, probe, 3), np.uint8)], probe)
        h, w = self.spec.hw
        out = {}
        for name, m in self.backbone.feature_maps(x, self.spec.layers).items():
            stride = probe // int(m.shape[-1])
            out[name] = (int(m.shape[1]), -(-h // stride), -(-w // stride))
        return out

    def extract_images(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Feature maps for decoded uint8 images, RGB ``H x W x 3`` or grey ``H x W`` (no cache)."""
        from core.data.images import check_scorable

        for i, img in enumerate(images):
            check_scorable(img, f"Image {i + 1} of {len(images)}" if len(images) > 1 else "The image")
        out: dict[str, list[np.ndarray]] = {name: [] for name in self.spec.layers}
        for start in range(0, len(images), self.batch_size):
            x = self.backbone.preprocess(list(images[start : start + self.batch_size]), self.spec.hw)
            maps = self.backbone.feature_maps(x, self.spec.layers, self.spec.precision)
            for name in self.spec.layers:
                out[name].append(maps[name].float().cpu().numpy())
        return {name: parts[0] if len(parts) == 1 else np.concatenate(parts, 0) for name, parts in out.items()}

    def extract_paths(self, paths: Sequence[str | Path], progress: ProgressFn = no_progress) -> ExtractionResult:
        """Feature maps for image files, reading cached entries and writing new ones.

        An unreadable file is reported in ``errors`` and skipped; the others are still extracted.
        """
        from core.data.images import check_scorable, read_image_bytes

        cache = self.cache
        stats_before = cache.stats.as_dict() if cache else {}
        n = len(paths)
        per_image: list[dict[str, np.ndarray] | None] = [None] * n
        errors: dict[int, str] = {}
        pending: list[tuple[int, str, np.ndarray]] = []  # (index, cache key, image)
        done = 0

        def flush() -> None:
            nonlocal done
            if not pending:
                return
            feats = self.extract_images([img for _, _, img in pending])
            for j, (i, key, _) in enumerate(pending):
                entry = {name: feats[name][j] for name in self.spec.layers}
                per_image[i] = entry
                if cache is not None:
                    cache.put(key, entry)
            done += len(pending)
            pending.clear()
            progress("extract features", done, n)

        for i, path in enumerate(paths):
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                errors[i] = f"{path}: cannot be read ({exc.strerror or exc})."
                continue
            key = feature_key(
                hashlib.sha256(data).hexdigest(),
                self.spec.backbone,
                self.spec.layers,
                self.spec.size_key,
                self.weights_sha256,
                self.spec.precision,
            )
            hit = cache.get(key) if cache is not None else None
            if hit is not None and all(name in hit for name in self.spec.layers):
                per_image[i] = hit
                done += 1
                if done % 32 == 0:
                    progress("extract features", done, n)
                continue
            try:
                img = check_scorable(read_image_bytes(data, str(path), keep_gray=True), str(path))
            except WorkbenchError as exc:
                errors[i] = str(exc)
                continue
            pending.append((i, key, img))
            if len(pending) >= self.batch_size:
                flush()
        flush()
        progress("extract features", n, n)
        ok = [i for i in range(n) if per_image[i] is not None]
        feats = {
            name: np.stack([per_image[i][name] for i in ok]).astype(np.float32, copy=False) if ok else np.zeros((0,))
            for name in self.spec.layers
        }
        delta = CacheStats()
        if cache is not None:
            now = cache.stats.as_dict()
            delta = CacheStats(**{k: now[k] - stats_before[k] for k in now})
        return ExtractionResult(features=feats, ok=ok, errors=errors, cache=delta)

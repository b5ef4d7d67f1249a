"""Feature extraction for ``fit`` on a Ray cluster: a feature source (the interface of
:class:`core.features.FeatureExtractor` that ``HeatmapDetector.use_feature_source`` takes) whose ``extract_paths``
spreads batches of images over actors, each with the backbone loaded once and its own feature cache.

The driver receives each batch's feature maps (never the images) and the detector then fits as in-process: the
coreset or the Gaussians on the driver from the gathered features. Actors restart and retry a batch when their
process dies (as in ``ray_scoring``). The driver's features are what one process holds in-process too; the images
are decoded and run through the backbone only on the workers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from core.progress import ProgressFn, no_progress


class FeatureWorker:
    """The actor's body: one FeatureExtractor (backbone loaded once) on ``threads`` threads."""

    def __init__(self, backbone: str, layers: tuple[str, ...], image_size: int, threads: int, use_cache: bool) -> None:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)
        from core.config import set_threads
        from core.features import FeatureCache, FeatureExtractor, FeatureSpec

        set_threads(threads)
        self.ext = FeatureExtractor(FeatureSpec(backbone, tuple(layers), image_size),
                                    cache=FeatureCache() if use_cache else None)

    def info(self) -> tuple[tuple[str, ...], str]:
        return self.ext.spec.layers, self.ext.weights_sha256

    def extract(self, paths: list[str]) -> tuple[dict[str, np.ndarray], list[int], dict[int, str]]:
        res = self.ext.extract_paths(paths)
        return res.features, res.ok, res.errors


class RayFeatureSource:
    """Backbone features computed on Ray actors, for ``detector.use_feature_source`` (fit only)."""

    def __init__(self, backbone: str, layers: Sequence[str], image_size: int, address: str | None = None,
                 actors: int = 2, threads_per_actor: int = 1, batch_size: int = 32, use_cache: bool = True) -> None:
        import ray

        from core.config import PROJECT_ROOT
        from core.features import FeatureSpec
        from core.scale.ray_scoring import start_ray

        self.started = start_ray(address, Path(PROJECT_ROOT))
        remote = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)(FeatureWorker)
        self.pool = [remote.remote(backbone, tuple(layers), int(image_size), threads_per_actor, use_cache)
                     for _ in range(max(1, actors))]
        resolved, self.weights_sha256 = ray.get(self.pool[0].info.remote())
        self.spec = FeatureSpec(backbone, tuple(resolved), int(image_size))
        self.batch_size = batch_size
        self.cache = None

    def extract_paths(self, paths: Sequence[str | Path], progress: ProgressFn = no_progress):
        """Feature maps of image files, extracted on the actors in batches; the result of FeatureExtractor's."""
        import ray

        from core.features.extractor import ExtractionResult

        paths = [str(p) for p in paths]
        batches = [(s, paths[s:s + self.batch_size]) for s in range(0, len(paths), self.batch_size)]
        refs = {self.pool[j % len(self.pool)].extract.remote(b): s for j, (s, b) in enumerate(batches)}
        parts: dict[int, tuple] = {}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            parts[refs[ready[0]]] = ray.get(ready[0])
            progress("extract features", min(len(paths), sum(self.batch_size for _ in parts)), len(paths))
        feats: dict[str, list[np.ndarray]] = {name: [] for name in self.spec.layers}
        ok: list[int] = []
        errors: dict[int, str] = {}
        for start in sorted(parts):
            f, ok_b, err_b = parts[start]
            ok.extend(start + i for i in ok_b)
            errors.update({start + i: m for i, m in err_b.items()})
            if ok_b:
                for name in self.spec.layers:
                    feats[name].append(f[name])
        out = {name: np.concatenate(v) if v else np.zeros((0,)) for name, v in feats.items()}
        return ExtractionResult(features=out, ok=ok, errors=errors)

    def extract_images(self, images):
        raise NotImplementedError("Ray features are for fitting from files; score with the fitted model")

    def close(self) -> None:
        """Shut the cluster down if this source started it."""
        import ray

        if self.started:
            ray.shutdown()

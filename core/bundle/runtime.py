"""Scoring with an exported bundle: numpy + faiss + onnxruntime or the OpenVINO runtime. Never imports torch.

The steps are the torch path's, reproduced and tested to match it (tests/test_bundle.py): decode
(core.data.images), antialiased bilinear resize and normalisation (``resample``), the feature graph (backbone +
patch embedding, exported), then PatchCore's search and scoring (``core.detectors.patch_scoring``, the code the
torch path runs) or PaDiM's Mahalanobis distances, and the map upsampled and blurred (``resample``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.bundle.manifest import FORMATS, RUNTIMES, read_manifest
from core.bundle.resample import resize_image, upsample_and_blur
from core.detectors.postprocess import Normalisation
from core.detectors.results import ScoreResult
from core.errors import ModelFormatError, WorkbenchError
from core.onnx_session import onnx_session
from core.progress import ProgressFn, no_progress

RUNTIME_NAMES = {"onnxruntime": "onnx", "openvino": "openvino"}  # runtime -> the graph format it runs


def _import_runtime(fmt: str):
    module, pip_spec = RUNTIMES[fmt]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise WorkbenchError(
            f"Scoring this bundle's {fmt} graph needs {module}, which is not installed here ({exc}).",
            f"Install it with `pip install {pip_spec}`, or pick the other runtime with --runtime.",
        ) from None


class FeatureGraph:
    """The exported feature graph: B x 3 x S x S normalised float32 -> B x h x w x C patch embeddings."""

    def __init__(self, path: Path, fmt: str, threads: int) -> None:
        self.format = fmt
        rt = _import_runtime(fmt)
        if fmt == "onnx":
            self._session = onnx_session(path, threads)
            self._input = self._session.get_inputs()[0].name
            self.run = lambda x: self._session.run(None, {self._input: x})[0]
        else:
            core = rt.Core()
            # f32 on every CPU: OpenVINO would otherwise pick bf16 where the CPU has it, and scores would drift.
            compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                              "INFERENCE_PRECISION_HINT": "f32"})
            request = compiled.create_infer_request()
            self.run = lambda x: request.infer({0: x})[0].copy()


def _single_thread_blas():
    """A context that keeps numpy's BLAS on one thread: the resize and map products are small, and a BLAS team
    spinning beside the runtime's and faiss's threads slowed whole batches several-fold on 2 cores."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # threadpoolctl is optional: without it BLAS keeps its own threads
        from contextlib import nullcontext

        return nullcontext
    controller = ThreadpoolController()
    return lambda: controller.limit(limits=1, user_api="blas")


class BundleScorer:
    """A loaded bundle with a heatmap detector's scoring interface (``score_paths``, ``score_images``,
    ``threshold``, ``normalisation``), so the CLI and the Ray pipeline use either alike."""

    def __init__(self, folder: str | Path, runtime: str | None = None, threads: int | None = None) -> None:
        from safetensors.numpy import load_file

        self.folder = Path(folder)
        self.manifest = man = read_manifest(self.folder)
        self.kind: str = man["kind"]
        self.image_size = int(man["input"]["size"])
        # (height, width) of the model's input; bundles written before non-square models carry only the square side
        self.input_hw = tuple(int(v) for v in man["input"].get("hw") or (self.image_size, self.image_size))
        self.blur_sigma = float(man["postprocess"]["blur_sigma"])
        self.normalisation = Normalisation.from_dict(man["normalisation"])
        self.pixel_threshold = float(man["thresholds"]["pixel"])
        self._mean = (np.asarray(man["input"]["mean"], np.float32) * 255.0).reshape(3, 1, 1)
        self._std = (np.asarray(man["input"]["std"], np.float32) * 255.0).reshape(3, 1, 1)
        self.batch_size = int(man["input"].get("batch_size", 8))
        threads = threads or os.cpu_count() or 1
        self._blas = _single_thread_blas()
        fmt = self._pick_format(runtime)
        self.graph = FeatureGraph(self.folder / man["graph"][fmt], fmt, threads)
        self.runtime = RUNTIMES[fmt][0]
        arrays = load_file(str(self.folder / man["arrays"]))
        if self.kind == "patchcore":
            self._init_patchcore(arrays, threads)
        elif self.kind == "padim":
            self.mean = np.ascontiguousarray(arrays["mean"], np.float32)
            self.inv_cov = np.ascontiguousarray(arrays["inv_cov"], np.float32)
        else:
            raise ModelFormatError(f"{self.folder} holds a {self.kind!r} bundle; this product scores patchcore and "
                                   "padim bundles.", "Export the model again with this product.")

    def _pick_format(self, runtime: str | None) -> str:
        graphs = self.manifest["graph"]
        have = [f for f in FORMATS if f in graphs]
        if runtime is None:  # OpenVINO when the bundle has it and it is installed: faster here (bundle_speed.py)
            for fmt in ("openvino", "onnx"):
                if fmt in have and importlib.util.find_spec(RUNTIMES[fmt][0]) is not None:
                    return fmt
            return have[0]  # the import below names what to install
        fmt = RUNTIME_NAMES.get(runtime, runtime)
        if fmt not in FORMATS:
            raise WorkbenchError(f"Unknown runtime {runtime!r}.", f"Use one of {', '.join(RUNTIME_NAMES)}.")
        if fmt not in have:
            raise WorkbenchError(f"{self.folder} has no {fmt} graph (it has: {', '.join(have)}).",
                                 f"Export it with `--format {fmt}`, or score with the runtime it has.")
        return fmt

    def _init_patchcore(self, arrays: dict[str, np.ndarray], threads: int) -> None:
        import faiss

        from core.detectors.patch_scoring import PatchScoring
        from core.detectors.search import MemoryBankIndex, SearchConfig

        faiss.omp_set_num_threads(threads)
        p = self.manifest["scoring"]
        scale = np.asarray(arrays["score_scale"], np.float32) if "score_scale" in arrays else None
        self.rule = PatchScoring(int(p["map_neighbors"]), int(p["rescore_patches"]), int(p["num_neighbors"]), scale)
        search = SearchConfig(**self.manifest["search"])
        bank = arrays["bank"]
        score_bank = np.concatenate([bank, arrays["extra_bank"]]) if "extra_bank" in arrays else None
        if scale is not None:  # the image score's distances weight the finest layer (PatchCore.score_scale)
            score_bank = (bank if score_bank is None else score_bank) * scale

        def index_over(rows: np.ndarray, name: str) -> MemoryBankIndex:
            if name in arrays:  # IVF-Flat / IVF-PQ: the fitted index itself (its k-means is not rebuilt)
                ix = faiss.deserialize_index(arrays[name])
                faiss.extract_index_ivf(ix).nprobe = search.nprobe
                return MemoryBankIndex.from_faiss(rows, ix, search.kind, search)
            return MemoryBankIndex(rows, SearchConfig(kind="flat"))

        self.index = index_over(bank, "map_index")
        self.rescore_index = index_over(score_bank, "score_index") if score_bank is not None else None

    # --- scoring --------------------------------------------------------------------------------
    @property
    def threshold(self) -> float:
        """The decision threshold on raw image scores (the model's saved one)."""
        return self.normalisation.image_threshold

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 images (grey H x W or H x W x 3, any sizes) -> B x 3 x height x width float32, as the torch
        path."""
        x = np.stack([resize_image(img, self.input_hw) for img in images])
        return (x - self._mean) / self._std

    def _score_batch(self, images: Sequence[np.ndarray], seconds: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        with self._blas():
            return self._score_batch_timed(images, seconds)

    def _score_batch_timed(self, images: Sequence[np.ndarray],
                           seconds: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        t0 = time.perf_counter()
        emb = self.graph.run(np.ascontiguousarray(self.preprocess(images), dtype=np.float32))
        t1 = time.perf_counter()
        scores, patch_maps = self._patchcore(emb) if self.kind == "patchcore" else self._padim(emb)
        t2 = time.perf_counter()
        maps = upsample_and_blur(patch_maps, self.input_hw, self.blur_sigma)
        t3 = time.perf_counter()
        for k, v in (("backbone", t1 - t0), ("search", t2 - t1), ("map", t3 - t2)):
            seconds[k] = seconds.get(k, 0.0) + v
        return scores, maps

    def _patchcore(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from core.detectors.patch_scoring import score_patches

        n, h, w, c = emb.shape
        patches = np.ascontiguousarray(emb.reshape(n * h * w, c), dtype=np.float32)
        score_index = self.rescore_index or self.index
        return score_patches(patches, (n, h, w), self.rule, len(self.index.bank), self.index.search,
                             score_index.bank, score_index.search,
                             self.rescore_index.search if self.rescore_index is not None else None)

    def _padim(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, h, w, d = emb.shape
        delta = np.ascontiguousarray(emb.reshape(n, h * w, d).transpose(1, 0, 2)) - self.mean[:, None, :]
        left = np.matmul(delta, self.inv_cov)  # P x N x d
        m2 = np.sqrt(np.maximum((left * delta).sum(axis=2), 0.0)).T  # N x P
        maps = m2.reshape(n, h, w)
        return maps.reshape(n, -1).max(axis=1), maps

    def score_images(self, images: Sequence[np.ndarray]) -> ScoreResult:
        """Score decoded uint8 images (grey or RGB)."""
        seconds: dict[str, float] = {}
        parts = [self._score_batch(images[i:i + self.batch_size], seconds)
                 for i in range(0, len(images), self.batch_size)]
        return self._result([p[0] for p in parts], [p[1] for p in parts], list(range(len(images))), {}, seconds)

    def score_paths(self, paths: Sequence[str | Path], cache: Any = None, progress: ProgressFn = no_progress,
                    batch_size: int | None = None) -> ScoreResult:
        """Score image files; an unreadable file gets a message in ``errors`` and the others are scored.
        ``cache`` is accepted for the detector interface and ignored (a bundle has no feature cache)."""
        from core.data.images import read_image_bytes

        batch_size = batch_size or self.batch_size
        paths = [str(p) for p in paths]
        all_scores, all_maps, ok, errors, seconds = [], [], [], {}, {}
        pending: list[tuple[int, np.ndarray]] = []

        def flush() -> None:
            if pending:
                s, m = self._score_batch([img for _, img in pending], seconds)
                all_scores.append(s)
                all_maps.append(m)
                ok.extend(i for i, _ in pending)
                pending.clear()
                progress("score", len(ok) + len(errors), len(paths))

        for i, path in enumerate(paths):
            t0 = time.perf_counter()
            try:
                data = Path(path).read_bytes()
                pending.append((i, read_image_bytes(data, path, keep_gray=True)))
            except OSError as exc:
                errors[i] = f"{path}: cannot be read ({exc.strerror or exc})."
            except WorkbenchError as exc:
                errors[i] = str(exc)
            seconds["decode"] = seconds.get("decode", 0.0) + time.perf_counter() - t0
            if len(pending) >= batch_size:
                flush()
        flush()
        return self._result(all_scores, all_maps, ok, errors, seconds)

    def _result(self, scores, maps, ok, errors, seconds) -> ScoreResult:
        return ScoreResult(
            scores=np.concatenate(scores).astype(np.float64) if scores else np.zeros(0),
            maps=np.concatenate(maps) if maps else np.zeros((0, *self.input_hw), np.float32),
            ok=ok, errors=errors, seconds=seconds,
        )


def load_bundle(folder: str | Path, runtime: str | None = None, threads: int | None = None) -> BundleScorer:
    """Load and check an exported bundle (manifest, version, every file's SHA-256) for scoring.

    ``runtime``: "onnxruntime" or "openvino"; None picks OpenVINO when the bundle has it and it is installed."""
    return BundleScorer(folder, runtime, threads)

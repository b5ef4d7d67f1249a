"""PatchCore (Roth et al., CVPR 2022): a coreset memory bank of locally aware patch features.

Pure model here; features come through the cache (base class), the map is upsampled and blurred in
``postprocess``. Image score: the largest nearest-neighbour distance of a patch, reweighted as in the paper
by how isolated that patch's neighbour is within the bank (``num_neighbors`` support points). Anomaly map: each
patch's mean distance to its ``map_neighbors`` nearest bank patches (1 = the paper's nearest-neighbour map; the
k-NN mean is SPADE's pixel score, Cohen & Hoshen 2020).

Two banks from one greedy run (``rescore_ratio`` > ``ratio``): k-center greedy picks form a prefix chain, so the
first ``ratio`` of a longer run is exactly the ``ratio`` coreset. The map searches that small bank for every patch;
the image score needs only the most anomalous patch, so the ``rescore_patches`` patches farthest from the small
bank are searched again in the whole run (5x the rows at the default) and the paper's score is taken there. It
costs ~1 ms per image instead of the ~5x search a 5 % bank would cost for every patch.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from core.detectors.base import HeatmapDetector
from core.detectors.coreset import coreset_size, greedy_continue, select_coreset
from core.detectors.embedding import fine_channel_scale, local_variance, patch_embedding, to_patches
from core.detectors.patch_scoring import PatchScoring, score_patches
from core.detectors.scale import DEFAULT_PIXEL_BUDGET
from core.detectors.search import INDEX_KINDS, MemoryBankIndex, SearchConfig
from core.progress import ProgressFn


@dataclass
class PatchCoreConfig:
    """PatchCore settings (defaults: the paper's, on a light CPU-friendly backbone)."""

    backbone: str = "tf_efficientnet_lite0"
    layers: tuple[str, ...] = ()  # empty: the backbone's default (strides 8 and 16)
    # 0: chosen at fit from the training images (core.detectors.scale: 208 px square for small images, else their
    # own size up to a pixel budget, aspect ratio kept); > 0: that square size.
    image_size: int = 0
    pixel_budget: int = 0  # the automatic scale's budget in input pixels; 0: scale.DEFAULT_PIXEL_BUDGET
    neighbourhood: int = 3
    # Scale of the finest layer (stride 8) against the coarser one in patch distances: a detection / localisation
    # trade-off, 1.0 (the paper's plain concatenation) by default, chosen by benchmarks/patchcore_defaults.py on
    # magnetic_tile's val_mix. Lower it for image-level detection, raise it for small defects.
    fine_layer_weight: float = 1.0
    coreset: str = "greedy"
    ratio: float = 0.01
    coreset_size: int | None = None
    # The image score's bank: the same greedy run continued to this ratio (k-center picks are a prefix chain, so
    # the map bank above is its first part). The ``rescore_patches`` patches farthest from the map bank are
    # re-measured against it and the paper's score (s*, reweighted) taken there; maps keep the smaller bank.
    # <= ratio: off (one bank, the paper). Chosen by benchmarks/rescore_bank.py (magnetic_tile, seeds 0-5).
    rescore_ratio: float = 0.05
    rescore_patches: int = 8
    # The finest layer's weight in the image score's distances (1.0: the map's distances). Above 1, the
    # ``rescore_patches`` patches farthest from the bank are re-measured with the finest layer weighted this much,
    # against the image-score bank weighted alike: small defects show most in the finest layer, while the map keeps
    # ``fine_layer_weight`` (raising that instead cost localisation; benchmarks/highres_settings.py).
    image_score_fine_weight: float = 1.0
    # Coreset distances in a random projection to this many dimensions; 0 = auto: none up to 256 channels (lite0's
    # 152), else 128 (the paper's). On lite0 the projection only added noise (benchmarks/coreset_seeds.py).
    projection_dim: int = 0
    num_neighbors: int = 9
    # Nearest bank patches averaged into each map cell; k = 3 chosen on magnetic_tile's val_mix by
    # benchmarks/map_neighbors.py (better AUPRO and pixel AUROC than 1, 5 or 9, for ~1 ms more search).
    map_neighbors: int = 3
    blur_sigma: float = 4.0
    index: SearchConfig = SearchConfig()
    # The backbone's arithmetic: "bfloat16" runs it under bfloat16 autocast (fast only where the device computes it
    # natively, core.backbones.bfloat16_is_fast), float32 maps out; fit and scoring use the same.
    precision: str = "float32"
    seed: int = 0


@dataclass(frozen=True)
class HighResolutionSettings:
    """What PatchCore uses instead of its defaults when the automatic scale scores images at (or near) their own
    size (scale mode ``native`` or ``capped``): a setting still at its PatchCoreConfig default takes the value here,
    one a user set is kept.

    At 640 px a defect of a few pixels is one or two stride-8 cells: a denser bank (fewer rare normal patterns left
    uncovered), the nearest bank patch alone for the map (the k-NN mean of 3 spreads a one-cell defect into its
    surroundings) and a wider blur (a 640-px map of 8-px cells) each raised pixel AUROC and AUPRO. The image score
    re-measures the farthest patches with the stride-8 layer weighted double, which raised image AUROC without
    touching the map. The denser bank's costs are bought back: the greedy coreset measures distances in a 64-d
    random projection (its cost is patches x picks x dimensions, and the patches grow with the pixel count), and
    IVF-Flat searches a few cells of the bank in a 64-d PCA projection, its candidates re-ranked by exact distances.
    Chosen on deeppcb_00041 by benchmarks/highres_settings.py. The bfloat16 backbone pass (``precision``) is not
    among them: faster at 640 px (benchmarks/backbone_batch.py) but it cost pixel AUROC and AUPRO on deeppcb
    (benchmarks/highres_pcb.py, its pcb_bf16 run).
    """

    ratio: float = 0.03
    projection_dim: int = 64
    map_neighbors: int = 1
    blur_sigma: float = 6.0
    index: SearchConfig = SearchConfig(kind="ivfflat", nprobe=4, pca_dim=64, rerank_factor=4)
    image_score_fine_weight: float = 2.0


LEAVE_OUT_MARGIN = 16  # extra neighbours of a leave-out search's first, short pass


class PatchCore(HeatmapDetector):
    """Fit on normal images; score = distance of the most anomalous patch to the memory bank."""

    kind = "patchcore"
    config_class = PatchCoreConfig
    # Bank rows remember their source image, so a training image can be scored as if unseen: the bank is
    # built from every image (holding calibration images out of it cost image AUROC on magnetic_tile).
    leave_out_calibration = True
    # Half the training images (scored left out) fix the 0.99-quantile threshold: fewer put it too low
    # (benchmarks/calibration_size.py on magnetic_tile), for a few seconds more fit.
    calibration_fraction = 0.5

    def __init__(self, config: PatchCoreConfig = PatchCoreConfig()) -> None:
        auto = not config.image_size
        if auto:
            config = replace(config, image_size=self.default_input_size(config.backbone))
        self.cfg = config
        super().__init__(config.backbone, config.layers, config.image_size, config.blur_sigma, config.seed,
                         auto_scale=auto)
        from core.backbones import check_precision

        check_precision(config.precision)  # a config.json edited or from elsewhere: refused on load, not at scoring
        self.precision = config.precision
        self.bank: np.ndarray | None = None
        self.bank_source: np.ndarray | None = None  # (image index, row, col) of each bank row in train_paths
        # The image score's bank beyond ``bank`` (greedy picks after the map bank's) and where its rows came from.
        self.extra_bank: np.ndarray | None = None
        self.extra_source: np.ndarray | None = None
        self.rescore_index: MemoryBankIndex | None = None
        self.score_source: np.ndarray | None = None  # bank_source, then extra_source: rows of the image-score bank
        # Per-channel scale of the image score's distances (image_score_fine_weight), None: the map's distances.
        self.score_scale: np.ndarray | None = None
        self.grid: tuple[int, int] = (0, 0)
        self.index: MemoryBankIndex | None = None
        self.coreset_seconds = 0.0

    # --- class hooks (registry, CLI, fit form) ---------------------------------------------------
    @classmethod
    def default_input_size(cls, backbone: str) -> int:
        """208 px on CNNs (chosen on magnetic_tile's val_mix by benchmarks/patchcore_defaults.py: image and pixel
        AUROC at AUPRO within noise of 224 px, fewer patches to search); 224 on ViTs (a multiple of 14)."""
        from core.backbones import get_backbone_info

        return 208 if get_backbone_info(backbone).kind == "cnn" else 224

    @classmethod
    def form_fields(cls) -> tuple:
        from core.backbones import PRECISIONS
        from core.detectors.coreset import METHODS
        from core.detectors.registry import FormField

        return (
            FormField("coreset", "Coreset method", "choice", "greedy",
                      ("greedy", *[m for m in METHODS if m != "greedy"]),
                      help="greedy: k-center greedy (paper); random; variance-weighted greedy."),
            FormField("ratio", "Coreset ratio", "float", 0.01, minimum=0.001, maximum=1.0, step=0.005,
                      help="Share of all training patches kept (left at 0.01, the automatic high-resolution scale "
                           "keeps 0.03)."),
            FormField("precision", "Backbone arithmetic", "choice", "float32", PRECISIONS,
                      help="bfloat16: faster where the CPU has AVX512-BF16 or AMX, or on a GPU; features differ by a "
                           "few %."),
        )

    @classmethod
    def add_cli_options(cls, p) -> None:
        p.add_argument("--pixel-budget", type=float, default=0.0,
                       help="PatchCore's automatic scale: megapixels an input may keep before it is scaled down "
                            "(default 0: 0.41 MP, a 640 x 640 image; raise it to score larger images at their own "
                            "size)")
        p.add_argument("--coreset", choices=["greedy", "random", "variance"], default="greedy", help="PatchCore")
        p.add_argument("--ratio", type=float, default=0.01,
                       help="PatchCore: coreset size as a share of all patches (0.03 at the automatic high-resolution "
                            "scale)")
        p.add_argument("--coreset-size", type=int, default=None,
                       help="PatchCore: absolute coreset size (overrides --ratio)")
        p.add_argument("--rescore-ratio", type=float, default=0.05,
                       help="PatchCore: the image score's bank, the same greedy run continued to this share of "
                            "patches (<= --ratio: one bank, as in the paper)")
        p.add_argument("--rescore-patches", type=int, default=8,
                       help="PatchCore: patches per image re-measured against the image score's bank")
        p.add_argument("--num-neighbors", type=int, default=9,
                       help="PatchCore: bank neighbours for the score reweighting")
        p.add_argument("--map-neighbors", type=int, default=3,
                       help="PatchCore: nearest bank patches averaged into each map cell (1 = the paper's map, and "
                            "the automatic high-resolution scale's)")
        p.add_argument("--fine-layer-weight", type=float, default=1.0,
                       help="PatchCore: scale of the stride-8 features in patch distances (<1 favours image-level "
                            "detection and pixel AUROC, >1 small defects and AUPRO)")
        p.add_argument("--image-score-fine-weight", type=float, default=1.0,
                       help="PatchCore: weight of the stride-8 features in the image score's distances only (the "
                            "--rescore-patches farthest patches re-measured; 2 at the automatic high-resolution "
                            "scale, where it lifts detection of few-pixel defects; the map keeps its distances)")
        p.add_argument("--index", choices=list(INDEX_KINDS), default="flat",
                       help="PatchCore: faiss index (the automatic high-resolution scale uses ivfflat)")
        p.add_argument("--nprobe", type=int, default=8, help="PatchCore: IVF lists searched (--index ivf*)")
        p.add_argument("--pca-dim", type=int, default=0,
                       help="PatchCore, --index ivfflat: search in a PCA projection to this many dimensions and "
                            "re-rank the candidates exactly (64 at the automatic high-resolution scale; 0: off)")
        from core.backbones import PRECISIONS

        p.add_argument("--precision", choices=list(PRECISIONS), default="float32",
                       help="PatchCore: the backbone's arithmetic (bfloat16: faster where the CPU has AVX512-BF16 or "
                            "AMX, or on a GPU; features differ by a few %%)")

    @classmethod
    def settings_from_cli(cls, args) -> dict[str, Any]:
        return {"pixel_budget": int(args.pixel_budget * 1e6), "coreset": args.coreset, "ratio": args.ratio,
                "coreset_size": args.coreset_size, "rescore_ratio": args.rescore_ratio,
                "rescore_patches": args.rescore_patches, "num_neighbors": args.num_neighbors,
                "map_neighbors": args.map_neighbors, "fine_layer_weight": args.fine_layer_weight,
                "image_score_fine_weight": args.image_score_fine_weight,
                "index": SearchConfig(kind=args.index, nprobe=args.nprobe, pca_dim=args.pca_dim),
                "precision": args.precision}

    def pixel_budget(self) -> int:
        return self.cfg.pixel_budget or DEFAULT_PIXEL_BUDGET

    def _on_scale_change(self) -> None:
        self.cfg = replace(self.cfg, image_size=self.image_size)

    def embed(self, features: dict[str, np.ndarray]) -> torch.Tensor:
        return patch_embedding(features, self.layers, self.cfg.neighbourhood, fine_weight=self.cfg.fine_layer_weight)

    def estimate_fit_bytes(self, n_images: int) -> int:
        """Patches x (features + projection + its two padded copies), float32, plus the cached features."""
        shapes = self.extractor().feature_shapes()
        per_image_feats = sum(c * h * w for c, h, w in shapes.values())
        h, w = max((h, w) for _, h, w in shapes.values())
        channels = sum(c for c, _, _ in shapes.values())
        patches = n_images * h * w
        proj = self.projection_dim_for(channels)
        return 4 * (n_images * per_image_feats + patches * (2 * channels + 2 * (proj + 2) + 18))

    def _fit_patches(self, features: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
        """All training patches (rows: image, row, column), their local variance (variance coreset only) and the
        grid, embedded a few images at a time into one array: the embedding of every image is never held beside
        its patch rows (at 640 px that copy alone was 0.55 GB on deeppcb)."""
        n = len(next(iter(features.values())))
        patches = variance = None
        step = 32
        for s in range(0, n, step):
            emb = self.embed({k: v[s : s + step] for k, v in features.items()})
            _, c, h, w = emb.shape
            if patches is None:
                patches = np.empty((n * h * w, c), np.float32)
                variance = np.empty(n * h * w, np.float32) if self.cfg.coreset == "variance" else None
            rows = slice(s * h * w, (s + len(emb)) * h * w)
            patches[rows] = to_patches(emb)
            if variance is not None:
                variance[rows] = local_variance(emb).reshape(-1).numpy()
        return patches, variance, (h, w)

    def projection_dim_for(self, channels: int) -> int:
        """Dimensions the greedy coreset measures distances in, for features ``channels`` wide."""
        if self.cfg.projection_dim > 0:
            return min(channels, self.cfg.projection_dim)
        return channels if channels <= 256 else 128

    def use_high_resolution_settings(self) -> dict[str, Any]:
        """Take :class:`HighResolutionSettings` for every setting left at its default; returns those changed."""
        default, high = PatchCoreConfig(), HighResolutionSettings()
        changed = {f.name: getattr(high, f.name) for f in fields(high)
                   if getattr(self.cfg, f.name) == getattr(default, f.name) != getattr(high, f.name)}
        if changed:
            self.cfg = replace(self.cfg, **changed)
            self.blur_sigma = float(self.cfg.blur_sigma)
        return changed

    def adapt_to_scale(self) -> None:
        if not self.scale.high_resolution:
            return
        changed = self.use_high_resolution_settings()
        if changed:
            self.fit_notes.append("high-resolution settings: " + ", ".join(
                f"{k} {v.kind} (nprobe {v.nprobe}" + (f", PCA {v.pca_dim}, re-rank x{v.rerank_factor})" if v.pca_dim
                                                       else ")") if isinstance(v, SearchConfig)
                else f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in changed.items()))

    def fit_embeddings(self, features: dict[str, np.ndarray], progress: ProgressFn) -> dict[str, float]:
        patches, variance, (h, w) = self._fit_patches(features)
        self.grid = (h, w)
        rescore_ratio = self.cfg.rescore_ratio
        if self.scale.high_resolution and rescore_ratio > self.cfg.ratio:
            # Greedy picks x patches grows with the pixel count squared: at 640 px on deeppcb the 5 % image-score
            # bank meant 45k picks over 902k patches. The automatic high-resolution scale keeps one bank.
            rescore_ratio = 0.0
            self.fit_notes.append(f"one {self.cfg.ratio:.0%} bank at the high-resolution scale, no image-score bank "
                                  "(its greedy cost grows with the pixel count squared)")
        n_map = coreset_size(len(patches), None if self.cfg.coreset_size else self.cfg.ratio, self.cfg.coreset_size)
        n_all = n_map
        if rescore_ratio > 0:
            n_all = max(n_map, coreset_size(len(patches), rescore_ratio, None))
        cs = select_coreset(
            patches,
            self.cfg.coreset,
            ratio=None,
            size=n_all,
            projection_dim=self.projection_dim_for(patches.shape[1]),
            variance=variance,
            seed=self.seed,
            progress=progress,
        )
        self.coreset_seconds = cs.seconds
        self.score_scale = fine_channel_scale({k: v.shape for k, v in features.items()}, self.layers,
                                              float(self.cfg.image_score_fine_weight))
        # select_coreset returns picks in order (greedy) or in random order: any prefix is a coreset of its own.
        self.bank, self.bank_source = _rows_and_sources(patches, cs.indices[:n_map], h, w)
        self.extra_bank, self.extra_source = (
            _rows_and_sources(patches, cs.indices[n_map:], h, w) if n_all > n_map else (None, None)
        )
        t0 = time.perf_counter()
        self._build_indexes()
        return {"coreset": cs.seconds, "index": time.perf_counter() - t0}

    def _build_indexes(self) -> None:
        self.index = MemoryBankIndex(self.bank, self.cfg.index, seed=self.seed)
        self.rescore_index, self.score_source = None, self.bank_source
        rows = self.bank
        if self.extra_bank is not None and len(self.extra_bank):
            rows = np.concatenate([self.bank, self.extra_bank])
            self.score_source = np.concatenate([self.bank_source, self.extra_source])
        if rows is not self.bank or self.score_scale is not None:
            scaled = rows if self.score_scale is None else rows * self.score_scale
            self.rescore_index = MemoryBankIndex(scaled, self.cfg.index, seed=self.seed)

    def _score_bank(self) -> tuple[np.ndarray, np.ndarray, MemoryBankIndex]:
        """The bank the image score is taken in: its rows, their sources and its index."""
        if self.rescore_index is None:
            return self.bank, self.bank_source, self.index
        return self.rescore_index.bank, self.score_source, self.rescore_index

    def _scoring(self) -> PatchScoring:
        return PatchScoring(self.cfg.map_neighbors, self.cfg.rescore_patches, self.cfg.num_neighbors,
                            self.score_scale)

    def score_embeddings(
        self, features: dict[str, np.ndarray], leave_out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        assert self.index is not None and self.bank is not None, "fit or load the model first"
        emb = self.embed(features)
        n, _, h, w = emb.shape
        patches = to_patches(emb)
        t0 = time.perf_counter()
        bank, source, index = self._score_bank()
        if leave_out is None:
            map_search, rescore_search = self.index.search, None
            if self.rescore_index is not None:
                rescore_search = self.rescore_index.search
        else:
            rows = np.asarray(leave_out)
            map_search = lambda q, k: self._search_leaving_out(q, np.repeat(rows, h * w), k)  # noqa: E731
            rescore_search = None
            if self.rescore_index is not None:
                t = max(1, min(int(self.cfg.rescore_patches), h * w))
                rescore_search = lambda q, k: self._search_leaving_out(  # noqa: E731
                    q, np.repeat(rows, t), k, index, source)
        scores, patch_map = score_patches(patches, (n, h, w), self._scoring(), len(self.bank), map_search, bank,
                                          index.search, rescore_search)
        return scores, patch_map, {"search": time.perf_counter() - t0}

    def _search_leaving_out(
        self,
        patches: np.ndarray,
        image_of_row: np.ndarray,
        k: int = 1,
        index: MemoryBankIndex | None = None,
        source: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest bank rows of each patch among rows that did not come from ``image_of_row``'s image
        (Q x k squared distances and indices, nearest first); in the map bank unless ``index`` / ``source``."""
        index = self.index if index is None else index
        source = self.bank_source if source is None else source
        per_image = np.bincount(source[:, 0])
        k_all = int(min(len(source), per_image.max() + k))
        # First a short search: most patches have k neighbours from other images among their k + 16 nearest, and a
        # k_all-wide search of every patch (hundreds of columns at 640 px) dominated the fit. Patches short of k
        # valid neighbours there are searched again k_all wide, so the result is the same as searching all so.
        k_short = min(k_all, k + LEAVE_OUT_MARGIN)
        d2, nn = index.search(patches, k_short)
        valid = (nn >= 0) & (source[np.maximum(nn, 0), 0] != image_of_row[:, None])
        if k_short < k_all:
            redo = np.flatnonzero(valid.sum(axis=1) < k)
            if len(redo):
                d2_all, nn_all = index.search(patches[redo], k_all)
                valid_all = (nn_all >= 0) & (source[np.maximum(nn_all, 0), 0] != image_of_row[redo][:, None])
                d2, nn, valid = (np.pad(a, ((0, 0), (0, k_all - k_short)), constant_values=c)
                                 for a, c in ((d2, np.inf), (nn, -1), (valid, False)))
                d2[redo], nn[redo], valid[redo] = d2_all, nn_all, valid_all
        # A stable sort puts each row's valid columns first, still in distance order. k_all leaves at least k
        # rows from other images whenever the bank has them; otherwise (one training image) own rows fill in.
        order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(d2, order, axis=1), np.take_along_axis(nn, order, axis=1)

    def nearest_patch(self, features_of_one: dict[str, np.ndarray]) -> dict[str, Any]:
        """Where the most anomalous patch of one image is, and the bank patch nearest to it (for the app)."""
        emb = self.embed(features_of_one)
        _, _, h, w = emb.shape
        patches = to_patches(emb)
        d2, nn = self.index.search(patches, 1)
        j = int(d2[:, 0].argmax())
        src = self.bank_source[int(nn[j, 0])]
        return {
            "query_cell": (j // w, j % w),
            "grid": (h, w),
            "distance": float(np.sqrt(d2[j, 0])),
            "train_path": self.train_paths[int(src[0])] if self.train_paths else None,
            "train_cell": (int(src[1]), int(src[2])),
        }

    def state_params(self) -> dict[str, Any]:
        d = asdict(self.cfg)
        d["layers"] = list(self.layers)
        d["grid"] = list(self.grid)
        d["memory_bank_size"] = 0 if self.bank is None else int(len(self.bank))
        d["image_score_bank_size"] = d["memory_bank_size"] + (0 if self.extra_bank is None else len(self.extra_bank))
        d["coreset_seconds"] = self.coreset_seconds
        return d

    def state_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"bank": self.bank, "bank_source": self.bank_source}
        if self.extra_bank is not None and len(self.extra_bank):
            arrays.update(extra_bank=self.extra_bank, extra_source=self.extra_source)
        if self.score_scale is not None:
            arrays["score_scale"] = self.score_scale
        return arrays

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.bank = np.ascontiguousarray(arrays["bank"], dtype=np.float32)
        self.bank_source = arrays["bank_source"]
        self.extra_bank, self.extra_source = None, None
        if "extra_bank" in arrays:
            self.extra_bank = np.ascontiguousarray(arrays["extra_bank"], dtype=np.float32)
            self.extra_source = arrays["extra_source"]
        self.score_scale = None
        if "score_scale" in arrays:
            self.score_scale = np.asarray(arrays["score_scale"], np.float32)
            if self.score_scale.shape != (self.bank.shape[1],):
                raise ValueError(f"score_scale has shape {self.score_scale.shape}, the bank {self.bank.shape[1]} "
                                 "channels")
        self._build_indexes()

    def learn_normals(self, features: dict[str, np.ndarray], first_index: int) -> dict[str, Any]:
        """New normal images into the bank without a refit: the greedy k-center rule continued from the current bank
        (its rows are the centres already chosen) over the new images' patches, as many picks as the coreset ratio
        gives for them; both banks grow by the picks (the image-score bank holds the map bank)."""
        assert self.index is not None and self.bank is not None, "fit or load the model first"
        patches, _, (h, w) = self._fit_patches(features)
        k = coreset_size(len(patches), None if self.cfg.coreset_size else self.cfg.ratio, None)
        picks = greedy_continue(patches, self.index.search(patches, 1)[0][:, 0], k)
        rows, source = _rows_and_sources(patches, picks, h, w)
        source[:, 0] += first_index
        self.bank = np.ascontiguousarray(np.concatenate([self.bank, rows]))
        self.bank_source = np.concatenate([self.bank_source, source])
        self._build_indexes()
        return {"bank_rows_added": len(rows), "memory_bank_size": int(len(self.bank))}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "PatchCore":
        p = dict(cfg["params"])
        p["index"] = SearchConfig(**p["index"])
        p["layers"] = tuple(p["layers"])
        grid = tuple(p.pop("grid", (0, 0)))
        for extra in ("memory_bank_size", "image_score_bank_size", "coreset_seconds"):
            p.pop(extra, None)
        p.setdefault("map_neighbors", 1)  # models saved before the k-NN map keep their nearest-neighbour maps
        p.setdefault("fine_layer_weight", 1.0)  # models saved before layer weighting keep unweighted features
        p.setdefault("rescore_ratio", 0.0)  # models saved before the image-score bank score in their one bank
        p.setdefault("image_score_fine_weight", 1.0)  # ... and before its layer weighting with the map's distances
        det = cls(PatchCoreConfig(**p))
        det.grid = grid
        return det


def _rows_and_sources(patches: np.ndarray, picks: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Bank rows for ``picks`` (indices into all patches, kept in patch order) and their (image, row, col)."""
    idx = np.sort(picks)
    img, rem = np.divmod(idx, h * w)
    return np.ascontiguousarray(patches[idx]), np.stack([img, rem // w, rem % w], axis=1).astype(np.int32)

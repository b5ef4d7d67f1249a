"""Study 3: exact (flat) vs IVF-PQ search of a PatchCore memory bank, with and without exact re-rank.

The bank is every locally aware patch of the training images and of their mirror images (no coreset: on
magnetic_tile 676 x 2 x 784 = 1.06M vectors x 152 dims), so that the search, not the coreset, is measured.
The same test images (half normal, half defective) are scored with each index: search ms per image, index
memory, image AUROC (max patch distance) and its change against flat, and recall@1 of the exact nearest
neighbour. One IVF-PQ is trained per code size; "no re-rank" searches its inner IVF-PQ index directly.

``benchmarks/ivfpq_search.py`` is a thin caller of :func:`run_faiss`.
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from core.data import DatasetIndex, ImageRecord
from core.experiments.common import Column, StudyResult, paths_of, progress_stage, records_of, spread
from core.progress import ProgressFn, no_progress

MIN_POINTS_PER_CENTROID = 39  # faiss warns below this many training points per k-means centroid

COLUMNS = [
    Column("index", "index"),
    Column("search_ms_per_image", "search ms / image", ".1f"),
    Column("speedup", "speed-up vs flat", ".1f"),
    Column("memory_mb", "index MB", ".1f"),
    Column("image_auroc", "image AUROC", ".3f"),
    Column("auroc_change", "AUROC change", "+.3f"),
    Column("recall_at_1", "recall@1", ".3f"),
    Column("build_seconds", "build s", ".1f"),
]


@dataclass
class FaissSettings:
    """What the faiss study runs on."""

    nbits: tuple[int, ...] = (4, 8, 16)
    nprobes: tuple[int, ...] = (1, 4, 8, 16)
    nlist: int = 1024
    test_images: int = 30
    n_train: int | None = None
    mirror: bool = True
    rerank_factor: int = 8
    backbone: str = "tf_efficientnet_lite0"
    image_size: int = 224  # not the 208-px default: 224 px gives the >= 1M-vector bank the study is for (1.06M)
    seed: int = 0
    batch: int = 32

    @classmethod
    def quick(cls) -> "FaissSettings":
        return cls(n_train=8, test_images=2, nlist=16)


@dataclass
class SearchData:
    """The bank, the query patches and the labels of the images they came from."""

    bank: np.ndarray
    queries: np.ndarray
    labels: np.ndarray
    n_images: int
    info: dict[str, Any] = field(default_factory=dict)


def pick_test_images(index: DatasetIndex, n: int, seed: int = 0) -> list[ImageRecord]:
    """``n`` test images, half normal and half defective, drawn at random with ``seed``."""
    test = index.split("test")
    rng = np.random.default_rng(seed)
    good = [r for r in test if r.label == 0]
    bad = [r for r in test if r.label == 1]
    half = n // 2
    return [good[i] for i in rng.choice(len(good), min(half, len(good)), replace=False)] + [
        bad[i] for i in rng.choice(len(bad), min(n - half, len(bad)), replace=False)
    ]


def build_search_data(index: DatasetIndex, s: FaissSettings, cache=None,
                      progress: ProgressFn = no_progress) -> SearchData:
    """Patches of the training images (and their mirror images) as the bank; patches of test images as queries."""
    from core.data import read_image
    from core.detectors import PatchCore, PatchCoreConfig
    from core.detectors.embedding import patch_embedding, to_patches

    det = PatchCore(PatchCoreConfig(backbone=s.backbone, image_size=s.image_size, num_neighbors=1))
    ext = det.extractor(cache)
    layers = ext.spec.layers
    train = paths_of(index, spread(records_of(index, "train_normal"), s.n_train))
    feats = ext.extract_paths(train, progress).features
    parts = [to_patches(patch_embedding(feats, layers, 3))]
    del feats
    if s.mirror:  # mirrored images: real extra normal patches
        for start in range(0, len(train), s.batch):
            imgs = [read_image(p)[:, ::-1].copy() for p in train[start : start + s.batch]]
            parts.append(to_patches(patch_embedding(ext.extract_images(imgs), layers, 3)))
            progress("mirror images", min(start + s.batch, len(train)), len(train))
    bank = np.concatenate(parts)
    del parts
    picked = pick_test_images(index, s.test_images, s.seed)
    tfeats = ext.extract_paths(paths_of(index, picked)).features
    queries = to_patches(patch_embedding(tfeats, layers, 3))
    labels = np.array([r.label for r in picked])
    return SearchData(bank, queries, labels, len(picked),
                      {"layers": list(layers), "n_train_images": len(train), "mirror": s.mirror})


def configs(s: FaissSettings, n_bank: int, dim: int) -> tuple[list[tuple[str, Any]], list[str]]:
    """The index settings to measure, and a reason for each code size that cannot be trained on this bank."""
    from core.detectors import SearchConfig

    out: list[tuple[str, Any]] = [("flat", SearchConfig("flat"))]
    skipped: list[str] = []
    for nbits in s.nbits:
        need = MIN_POINTS_PER_CENTROID * 2**nbits
        if n_bank < need:
            flops = 2.0 * n_bank * 2**nbits * dim * 25
            skipped.append(
                f"IVF-PQ {nbits}-bit not trained: faiss wants >= {MIN_POINTS_PER_CENTROID} training vectors per "
                f"centroid, i.e. {need:,} for 2^{nbits} = {2**nbits:,} codes per sub-quantiser; the bank has "
                f"{n_bank:,} (and its k-means, 25 iterations, would cost about {flops:.0e} flops, not attempted)."
            )
            continue
        for nprobe in s.nprobes:
            for rerank in (False, True):
                out.append((f"ivfpq {nbits}-bit nprobe {nprobe}{' + re-rank' if rerank else ''}",
                            SearchConfig("ivfpq", nlist=s.nlist, nbits=nbits, nprobe=nprobe, rerank=rerank,
                                         rerank_factor=s.rerank_factor)))
    return out, skipped


def measure(data: SearchData, s: FaissSettings, progress: ProgressFn = no_progress) -> tuple[list[dict], list[str]]:
    """Search the queries with each index; one row per setting (flat first: it defines recall and AUROC change)."""
    from core.detectors import SearchConfig
    from core.detectors.search import MemoryBankIndex
    from core.metrics import image_metrics

    todo, skipped = configs(s, *data.bank.shape)
    rows: list[dict] = []
    flat_nn = flat_auroc = flat_ms = None
    built: dict[tuple, MemoryBankIndex] = {}
    for i, (name, cfg) in enumerate(todo):
        progress("faiss settings", i, len(todo))
        key = (cfg.kind, cfg.nbits)
        t0 = time.perf_counter()
        if key not in built:
            built.clear()
            gc.collect()
            built[key] = MemoryBankIndex(data.bank, SearchConfig(**{**cfg.to_dict(), "rerank": True}), seed=s.seed)
        idx = built[key]
        build_s = time.perf_counter() - t0
        searcher = idx
        if cfg.kind == "ivfpq":
            idx.ivf.nprobe = cfg.nprobe
            searcher = idx if cfg.rerank else idx.ivf
        t0 = time.perf_counter()
        d2, nn = searcher.search(data.queries, 1)
        search_s = time.perf_counter() - t0
        scores = np.sqrt(np.maximum(d2[:, 0], 0)).reshape(data.n_images, -1).max(axis=1)
        auroc = image_metrics(data.labels, scores).auroc
        if flat_nn is None:
            flat_nn, flat_auroc = nn[:, 0].copy(), auroc
            flat_ms = 1000 * search_s / data.n_images
        mem = idx.memory_bytes() if (cfg.rerank or cfg.kind == "flat") else idx.ivf_bytes()
        ms = 1000 * search_s / data.n_images
        rows.append({
            "index": name,
            "kind": cfg.kind,
            "nbits": getattr(idx, "effective", {}).get("nbits") if cfg.kind == "ivfpq" else None,
            "nprobe": cfg.nprobe if cfg.kind == "ivfpq" else None,
            "rerank": bool(cfg.rerank) if cfg.kind == "ivfpq" else None,
            "search_ms_per_image": ms,
            "speedup": flat_ms / ms if ms > 0 else None,
            "memory_mb": mem / 1e6,
            "image_auroc": auroc,
            "auroc_change": None if auroc is None or flat_auroc is None else auroc - flat_auroc,
            "recall_at_1": float((nn[:, 0] == flat_nn).mean()),
            "build_seconds": build_s,
            "effective": dict(getattr(idx, "effective", {})),
        })
    built.clear()
    progress("faiss settings", len(todo), len(todo))
    return rows, skipped


def run_faiss(index: DatasetIndex, settings: FaissSettings = FaissSettings(), cache=None,
              progress: ProgressFn = no_progress) -> StudyResult:
    """Build the bank and queries, then measure every index setting."""
    s = settings
    progress_stage(progress, "faiss: bank", 0, 1)
    data = build_search_data(index, s, cache, progress)
    rows, skipped = measure(data, s, progress)
    n_bank, dim = data.bank.shape
    notes = [
        f"Bank: {n_bank:,} x {dim} patch vectors ({data.info['n_train_images']} train/good images"
        f"{' and their mirror images' if s.mirror else ''}, no coreset); {data.n_images} test images "
        f"({len(data.queries):,} query patches); {s.nlist} IVF lists; re-rank: {s.rerank_factor} x k candidates "
        "re-scored exactly. Image score = max patch distance (no neighbourhood reweighting).",
        f"With {data.n_images} test images one AUROC step is "
        f"{1 / max(1, (data.labels == 0).sum() * (data.labels == 1).sum()):.4f}"
        " (one normal/defective pair swapping order).",
        "build s: each code size's IVF-PQ is trained once (its first row); the other rows reuse it.",
        "Memory: IVF-PQ without re-rank = codes + lists + quantiser; with re-rank it also keeps the raw bank.",
        *skipped,
    ]
    return StudyResult(
        study="faiss",
        dataset=str(index.root),
        quick=False,
        rows=rows,
        columns=COLUMNS,
        settings={**asdict(s), "bank_size": int(n_bank), "dim": int(dim), "queries": int(len(data.queries)),
                  "test_images_used": data.n_images, "layers": data.info["layers"]},
        notes=notes,
        figures=_figures(rows),
        extra={"skipped": skipped},
    )


def _figures(rows: list[dict]) -> dict[str, Any]:
    import plotly.graph_objects as go

    fig = go.Figure()
    for group in dict.fromkeys((r["nbits"], r["rerank"]) for r in rows):
        rs = [r for r in rows if (r["nbits"], r["rerank"]) == group]
        name = "flat" if group[0] is None else f"{group[0]}-bit{' + re-rank' if group[1] else ''}"
        fig.add_scatter(x=[r["search_ms_per_image"] for r in rs], y=[r["recall_at_1"] for r in rs],
                        mode="lines+markers+text", name=name,
                        text=[f"np{r['nprobe']}" if r["nprobe"] else "flat" for r in rs], textposition="top center")
    fig.update_layout(xaxis_type="log", xaxis_title="search ms / image", yaxis_title="recall@1",
                      title="Search time vs recall of the exact nearest neighbour")
    return {"speed_vs_recall": fig}

"""Nearest-neighbour search over the memory bank with faiss: exact ``flat``, ``ivfflat`` or ``ivfpq`` with exact
re-rank.

IVF-Flat searches the ``nprobe`` cells nearest each query and measures exact distances to the rows stored there:
a distance is exact whenever the true neighbour lies in a probed cell, and otherwise an over-estimate. With
``pca_dim`` it does so in a PCA projection of the bank (cells and distances in fewer dimensions) and re-ranks the
``rerank_factor * k`` candidates by their exact distances in all dimensions (faiss ``PCAMatrix`` +
``IndexRefineFlat``): returned distances stay exact, for a fraction of the arithmetic. IVF-PQ
alone returns approximate distances; with ``rerank`` it fetches ``rerank_factor * k`` candidates and recomputes
their exact distances against the stored vectors (faiss ``IndexRefineFlat``). A query for which an IVF index finds
fewer than ``k`` rows (its probed cells hold fewer) is searched exactly, so no result carries a missing row.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

INDEX_KINDS = ("flat", "ivfflat", "ivfpq")
# faiss computes a flat search's distances as one GEMM, and faiss-cpu's wheels bundle a single-threaded OpenBLAS
# (its config string ends in SINGLE_THREADED), so that GEMM runs on one core whatever omp_set_num_threads says.
# The same holds for an IVF index's coarse quantiser (a flat search of the cell centroids), which took ~40 % of an
# IVF-Flat search at 640 px. Contiguous slices of the queries searched from several Python threads (faiss releases
# the GIL; its CPU indexes allow concurrent searches) use every core: `python benchmarks/search_threads.py`. Slices
# stay >= this many queries, where faiss takes its GEMM path (smaller searches are OpenMP-parallel over queries
# already).
MIN_QUERIES_PER_SLICE = 64
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _one_openmp_thread() -> None:
    import faiss

    faiss.omp_set_num_threads(1)


def _search_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            # One OpenMP thread per slice: each pool thread would otherwise start its own team of all cores.
            _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="faiss-search",
                                       initializer=_one_openmp_thread)
        return _pool


def query_slices(n_queries: int, threads: int) -> int:
    """How many slices a flat search of ``n_queries`` is split into on ``threads`` threads (1 = not split)."""
    return max(1, min(threads, n_queries // MIN_QUERIES_PER_SLICE))


@dataclass(frozen=True)
class SearchConfig:
    """How the memory bank is searched."""

    kind: str = "flat"
    nlist: int = 0  # IVF cells; 0 = about 4 * sqrt(bank size) (IVF-PQ) or 2 * sqrt(bank size) (IVF-Flat)
    m: int = 0  # PQ sub-quantisers; 0 = largest divisor of the dimension <= dim / 2 (up to 64)
    nbits: int = 8  # bits per sub-quantiser code
    nprobe: int = 8
    rerank: bool = True
    rerank_factor: int = 8
    # IVF-Flat only: cells and candidate distances in a PCA projection to this many dimensions, then the candidates
    # re-ranked exactly (0: all dimensions, no re-rank).
    pca_dim: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _default_m(dim: int) -> int:
    for m in range(min(64, max(1, dim // 2)), 0, -1):
        if dim % m == 0:
            return m
    return 1


class MemoryBankIndex:
    """A faiss index over a memory bank (float32, N x D), L2 distances."""

    def __init__(self, bank: np.ndarray, config: SearchConfig = SearchConfig(), seed: int = 0) -> None:
        import faiss

        if config.kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {config.kind!r}; choose one of {', '.join(INDEX_KINDS)}")
        self.bank = np.ascontiguousarray(bank, dtype=np.float32)
        self.config = config
        self._exact = None  # a flat index over the bank, made when an IVF search first needs an exact one
        n, dim = self.bank.shape
        if config.kind == "flat" or n < 1024:
            self.index = faiss.IndexFlatL2(dim)
            self.index.add(self.bank)
            self.kind = "flat"
            self.effective = {}
            return
        if config.kind == "ivfflat":
            nlist = config.nlist or max(1, min(int(round(2 * np.sqrt(n))), n // 39))
            reduced = config.pca_dim if 0 < config.pca_dim < dim else 0
            factory = f"PCA{reduced},IVF{nlist},Flat,RFlat" if reduced else f"IVF{nlist},Flat"
            index = faiss.index_factory(dim, factory)
            ivf = faiss.extract_index_ivf(index)
            ivf.cp.seed = seed
            index.train(self.bank)
            index.add(self.bank)
            ivf.nprobe = config.nprobe
            if reduced:
                index.k_factor = float(config.rerank_factor)
            self.ivf, self.index = ivf, index
            self.kind = "ivfflat"
            self.effective = {"nlist": nlist, **({"pca_dim": reduced} if reduced else {})}
            return
        nlist = config.nlist or max(1, min(int(4 * np.sqrt(n)), n // 39))
        m = config.m or _default_m(dim)
        # faiss wants >= 39 training points per PQ centroid: on a small bank, use fewer bits (>= 4) rather
        # than train codes on too little data; the bits actually used are kept in ``effective``.
        nbits = int(min(config.nbits, max(4, np.floor(np.log2(max(n, 1) / 39)))))
        self.effective = {"nlist": nlist, "m": m, "nbits": nbits}
        quantizer = faiss.IndexFlatL2(dim)
        ivf = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits)
        ivf.cp.seed = seed
        ivf.pq.cp.seed = seed
        ivf.train(self.bank)
        ivf.nprobe = config.nprobe
        self.ivf = ivf
        if config.rerank:
            index = faiss.IndexRefineFlat(ivf)
            index.k_factor = float(config.rerank_factor)
        else:
            index = ivf
        index.add(self.bank)
        self.index = index
        self.kind = "ivfpq"

    @classmethod
    def from_faiss(cls, bank: np.ndarray, index, kind: str, config: SearchConfig = SearchConfig()) -> "MemoryBankIndex":
        """Wrap a faiss index already built over ``bank`` (an exported bundle's deserialised IVF-PQ index)."""
        self = cls.__new__(cls)
        self.bank = np.ascontiguousarray(bank, dtype=np.float32)
        self.config, self.index, self.kind, self.effective = config, index, kind, {}
        self._exact = None
        if kind != "flat":
            import faiss

            self.ivf = faiss.extract_index_ivf(index)  # the IVF index itself, or the one IndexRefineFlat wraps
        return self

    def to_bytes(self) -> np.ndarray:
        """The faiss index serialised by faiss (uint8), for a bundle to load with ``faiss.deserialize_index``."""
        import faiss

        return faiss.serialize_index(self.index)

    parallel_queries = True  # split the queries over threads (see MIN_QUERIES_PER_SLICE)

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """``(squared L2 distances, indices)`` of the ``k`` nearest bank rows, each Q x k."""
        import faiss

        q = np.ascontiguousarray(queries, dtype=np.float32)
        slices = query_slices(len(q), faiss.omp_get_max_threads()) if self.parallel_queries else 1
        if slices == 1:
            d, i = self.index.search(q, k)
        else:
            parts = list(_search_pool().map(lambda part: self.index.search(part, k), np.array_split(q, slices)))
            d, i = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        if self.kind != "flat":
            short = np.flatnonzero((i[:, : min(k, len(self.bank))] < 0).any(axis=1))
            if len(short):
                d[short], i[short] = self.search_exact(q[short], k)
        return np.maximum(d, 0.0), i

    def search_exact(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Exact ``(squared L2 distances, indices)`` over the whole bank, whatever this index's kind."""
        import faiss

        if self.kind == "flat":
            return self.search(queries, k)
        if self._exact is None:
            self._exact = faiss.IndexFlatL2(self.bank.shape[1])
            self._exact.add(self.bank)
        d, i = self._exact.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return np.maximum(d, 0.0), i

    def ivf_bytes(self) -> int:
        """Bytes of the IVF-PQ part alone (codes, lists, quantiser), without the re-rank copy of the bank."""
        import faiss

        return int(faiss.serialize_index(self.ivf).size)

    def memory_bytes(self) -> int:
        """Bytes the index holds (codes + lists for IVF-PQ; the raw bank for flat or re-rank)."""
        import faiss

        return int(faiss.serialize_index(self.index).size)


"""Coreset subsampling of the PatchCore memory bank: random, greedy k-center, variance-weighted greedy.

The greedy selection is the paper's k-center greedy on a Johnson-Lindenstrauss random projection, but
computed in *batches* with an exactness guarantee, so it picks the same points as the plain one-pick-per-pass
loop (up to floating-point ties) while reading the full bank far less often:

    Each pass takes the ``pool`` points with the largest current distance-to-coreset ``d`` and the next
    largest value ``tau`` outside the pool. Picks are then made *inside the pool* (updating the pool's
    distances after each pick) for as long as the best pool value is >= ``tau``: distances only shrink, so
    no point outside the pool can beat it, and each such pick is exactly the plain loop's next pick. The
    whole bank is then updated once against all picks of the pass with one matrix product.

Measured on magnetic_tile (530k x 152 patches, 1 %): see benchmarks/coreset_speed.py. The plain loop is
kept as ``greedy_reference`` for that benchmark and for the exactness test.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from core.progress import ProgressFn, no_progress

METHODS = ("random", "greedy", "variance")


@dataclass
class CoresetResult:
    """Indices of the chosen rows, and how long choosing took."""

    indices: np.ndarray
    seconds: float
    method: str
    passes: int = 0  # full-bank passes of the batched greedy


def coreset_size(n: int, ratio: float | None, size: int | None) -> int:
    """The bank size from a ratio or an absolute size (at least 1, at most n)."""
    if size is not None:
        k = int(size)
    elif ratio is not None:
        k = int(round(n * float(ratio)))
    else:
        k = n
    return max(1, min(n, k))


PROJECTION_CHUNK_ROWS = 65536


def random_projection(x: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Gaussian JL projection of rows of ``x`` to ``dim`` dimensions (identity when already small)."""
    if dim <= 0 or x.shape[1] <= dim:
        return np.ascontiguousarray(x, dtype=np.float32)
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((x.shape[1], dim)).astype(np.float32) / np.sqrt(dim)
    # In row chunks into one output: the whole product at once took ~3x the input's size in transient memory (the
    # deeppcb fit at 640 px, 902k x 152 patches, peaked at 4.1 GB that way, 3.05 GB chunked); chunks add one chunk.
    out = np.empty((len(x), dim), np.float32)
    for s in range(0, len(x), PROJECTION_CHUNK_ROWS):
        np.matmul(x[s : s + PROJECTION_CHUNK_ROWS].astype(np.float32, copy=False), proj,
                  out=out[s : s + PROJECTION_CHUNK_ROWS])
    return out


def _augment(x: np.ndarray, sq: np.ndarray) -> np.ndarray:
    """Rows ``[x, |x|^2, 1]``: with :func:`_augment_centers` one matrix product gives squared distances."""
    return np.hstack([x, sq[:, None], np.ones((len(x), 1), np.float32)]).astype(np.float32)


def _augment_centers(c: np.ndarray) -> np.ndarray:
    return np.hstack([-2.0 * c, np.ones((len(c), 1), np.float32), np.einsum("ij,ij->i", c, c)[:, None]]).astype(
        np.float32
    )


class _BankDistances:
    """Squared distance of every bank row to its nearest chosen center, updated pass by pass.

    One matrix product per chunk gives all squared distances to the new centers (rows padded with
    ``|x|^2`` and 1, see :func:`_augment`). A lower bound on a leading principal subspace to skip rows was
    tried and measured: on magnetic_tile features it skipped under 10 % of rows once a pass holds dozens
    of new centers, and cost more than it saved, so it is gone.
    """

    def __init__(self, x: np.ndarray, chunk: int = 32768) -> None:
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.full = _augment(self.x, np.einsum("ij,ij->i", self.x, self.x))
        self.chunk = chunk
        self.dist = np.full(len(x), np.inf, dtype=np.float32)

    def update(self, new: np.ndarray) -> None:
        """Lower ``dist`` with the distances to the rows ``new`` (indices)."""
        centers = _augment_centers(self.x[new])
        for s in range(0, len(self.x), self.chunk):
            d = (self.full[s : s + self.chunk] @ centers.T).min(axis=1)
            np.maximum(d, 0.0, out=d)
            np.minimum(self.dist[s : s + self.chunk], d, out=self.dist[s : s + self.chunk])


def greedy_kcenter(
    x: np.ndarray,
    k: int,
    weights: np.ndarray | None = None,
    seed: int = 0,
    pool: int = 2048,
    progress: ProgressFn = no_progress,
) -> tuple[np.ndarray, int]:
    """Exact k-center greedy (optionally weighted: maximise ``weights * d``) in batched passes.

    Returns ``(indices, passes)``. ``x`` should already be projected (float32, N x d).
    """
    n = len(x)
    k = min(k, n)
    bank = _BankDistances(np.asarray(x, dtype=np.float32))
    rng = np.random.default_rng(seed)
    first = int(rng.integers(n))
    chosen = [first]
    bank.update(np.array([first]))
    w = None if weights is None else np.asarray(weights, dtype=np.float32)
    passes = 1
    pool = min(pool, n - 1) if n > 1 else 1
    while len(chosen) < k:
        dist = bank.dist
        score = dist if w is None else dist * w
        if pool >= n - 1:
            cand = np.arange(n)
            tau = -np.inf
        else:
            part = np.argpartition(score, n - pool - 1)
            cand = part[n - pool :]
            tau = float(score[part[n - pool - 1]])
        cx = bank.x[cand]
        csq = np.einsum("ij,ij->i", cx, cx)
        cdist = dist[cand].copy()
        cw = None if w is None else w[cand]
        new: list[int] = []
        while len(chosen) + len(new) < k:
            cscore = cdist if cw is None else cdist * cw
            j = int(np.argmax(cscore))
            if cscore[j] < tau or cscore[j] <= 0.0:
                break
            new.append(int(cand[j]))
            d = csq + csq[j] - 2.0 * (cx @ cx[j])
            np.minimum(cdist, np.maximum(d, 0.0), out=cdist)
        if not new:  # every remaining point coincides with a chosen one
            break
        chosen.extend(new)
        bank.update(np.array(new))
        passes += 1
        progress("coreset", len(chosen), k)
    if len(chosen) < k:  # duplicates exhausted the distinct points: fill with unchosen rows
        rest = np.setdiff1d(np.arange(n), np.array(chosen), assume_unique=False)
        chosen.extend(rest[: k - len(chosen)].tolist())
    progress("coreset", k, k)
    return np.array(chosen[:k], dtype=np.int64), passes


def greedy_continue(x: np.ndarray, dist_to_bank: np.ndarray, k: int) -> np.ndarray:
    """k-center greedy continued from a chosen set: ``dist_to_bank`` holds each row's squared distance to the centres
    already chosen (the current bank); up to ``k`` rows of ``x`` are picked, each the farthest from the bank and the
    picks before it. Stops early once every row coincides with a centre. (Review feedback: new normal images join a
    fitted bank under the rule that built it; ``tests/test_coreset.py`` checks it against the plain loop.)"""
    x = np.asarray(x, dtype=np.float32)
    dist = np.asarray(dist_to_bank, dtype=np.float64).copy()
    sq = np.einsum("ij,ij->i", x, x).astype(np.float64)
    picks: list[int] = []
    for _ in range(min(int(k), len(x))):
        j = int(np.argmax(dist))
        if dist[j] <= 0.0:
            break
        picks.append(j)
        np.minimum(dist, np.maximum(sq + sq[j] - 2.0 * (x @ x[j]).astype(np.float64), 0.0), out=dist)
    return np.array(picks, dtype=np.int64)


def greedy_reference(x: np.ndarray, k: int, weights: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """The plain one-pick-per-pass k-center greedy (as in the paper and anomalib), for tests/benchmarks."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    sq = np.einsum("ij,ij->i", x, x)
    rng = np.random.default_rng(seed)
    idx = int(rng.integers(n))
    chosen = [idx]
    dist = np.full(n, np.inf, dtype=np.float32)
    for _ in range(k - 1):
        d = np.maximum(sq + sq[idx] - 2.0 * (x @ x[idx]), 0.0)
        np.minimum(dist, d, out=dist)
        score = dist if weights is None else dist * weights
        idx = int(np.argmax(score))
        chosen.append(idx)
    return np.array(chosen, dtype=np.int64)


def select_coreset(
    features: np.ndarray,
    method: str = "greedy",
    ratio: float | None = 0.01,
    size: int | None = None,
    projection_dim: int = 128,
    variance: np.ndarray | None = None,
    seed: int = 0,
    progress: ProgressFn = no_progress,
) -> CoresetResult:
    """Choose memory-bank rows of ``features`` (N x C), in pick order: every prefix of the result is the coreset
    of that size (greedy picks form a chain; random draws are returned unsorted).

    ``variance`` (N,) is each patch's local feature variance, required by ``method="variance"``: the greedy
    objective becomes ``(1 + v / mean(v)) * d``, favouring irregular patches (the replaced system's idea).
    """
    if method not in METHODS:
        raise ValueError(f"unknown coreset method {method!r}; choose one of {', '.join(METHODS)}")
    n = len(features)
    k = coreset_size(n, ratio, size)
    t0 = time.perf_counter()
    passes = 0
    if k >= n:
        idx = np.arange(n)
    elif method == "random":
        # In draw order, not sorted: like greedy picks, every prefix is then a coreset of its own (PatchCore's
        # map bank is the prefix of its image-score bank). The set for a given k is the same either way.
        idx = np.random.default_rng(seed).choice(n, size=k, replace=False)
    else:
        weights = None
        if method == "variance":
            if variance is None:
                raise ValueError("the variance coreset needs each patch's local variance")
            v = np.asarray(variance, dtype=np.float32)
            weights = 1.0 + v / max(float(v.mean()), 1e-12)
        proj = random_projection(features, projection_dim, seed)
        idx, passes = greedy_kcenter(proj, k, weights=weights, seed=seed, progress=progress)
    return CoresetResult(indices=idx, seconds=time.perf_counter() - t0, method=method, passes=passes)

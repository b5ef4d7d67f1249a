"""Distribution shift between two sets of feature vectors: maximum mean discrepancy (MMD) with an RBF kernel.

Arrays in, numbers out. The bandwidth is the median heuristic (median pairwise Euclidean distance of the pooled
sample), the statistic is the unbiased MMD^2 estimate (Gretton et al., JMLR 2012, eq. 3), and the p-value comes
from a permutation test: the share of random relabellings of the pooled sample whose MMD^2 is at least the
observed one (with the usual +1 in numerator and denominator, so it is never exactly 0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from core.errors import WorkbenchError


@dataclass
class MMDResult:
    """Unbiased MMD^2, its permutation p-value, the RBF bandwidth used and the sample sizes."""

    mmd2: float
    p_value: float
    bandwidth: float
    n_x: int
    n_y: int
    n_permutations: int

    def to_dict(self) -> dict:
        return asdict(self)


def _as_matrix(a, name: str) -> np.ndarray:
    x = np.asarray(a, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or len(x) < 2:
        raise WorkbenchError(
            f"The {name} set must be a 2-D array of at least 2 feature vectors; got shape {x.shape}.",
            "Pass one row per image (e.g. its mean-pooled patch embedding).",
        )
    if not np.isfinite(x).all():
        raise WorkbenchError(f"The {name} set holds NaN or infinite values.", "Check the features it came from.")
    return x


def pairwise_sq_dists(z: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between all rows of ``z`` (n x n, clipped at 0)."""
    sq = np.einsum("ij,ij->i", z, z)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)
    np.fill_diagonal(d2, 0.0)
    return np.maximum(d2, 0.0)


def median_bandwidth(d2: np.ndarray) -> float:
    """Median heuristic: the median of the off-diagonal pairwise distances (not squared); 1.0 if all are 0."""
    iu = np.triu_indices(len(d2), k=1)
    med = float(np.median(np.sqrt(d2[iu]))) if len(iu[0]) else 0.0
    return med if med > 0 else 1.0


def _mmd2_batch(k: np.ndarray, sx: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 for each column of ``sx`` (n x P, 1 where a row belongs to X, 0 for Y)."""
    n = k.shape[0]
    m = sx.sum(axis=0)
    sy = 1.0 - sx
    ny = n - m
    ks = k @ sx
    kxx = np.einsum("ip,ip->p", sx, ks) - (np.diag(k)[:, None] * sx).sum(axis=0)
    kxy = np.einsum("ip,ip->p", sy, ks)
    kyy = k.sum() - 2.0 * kxy - np.einsum("ip,ip->p", sx, ks) - (np.diag(k)[:, None] * sy).sum(axis=0)
    return kxx / (m * (m - 1)) + kyy / (ny * (ny - 1)) - 2.0 * kxy / (m * ny)


def mmd_test(
    x, y, n_permutations: int = 500, seed: int = 0, bandwidth: float | None = None, batch: int = 100
) -> MMDResult:
    """Unbiased MMD^2 between the rows of ``x`` and ``y`` (RBF kernel) and its permutation-test p-value.

    ``bandwidth`` (sigma in ``exp(-|a-b|^2 / (2 sigma^2))``) defaults to the median heuristic on the pooled
    sample. Cost: one n x n kernel (n = len(x) + len(y)) and one n x n x batch product per batch of permutations.
    """
    xa, ya = _as_matrix(x, "first"), _as_matrix(y, "second")
    if xa.shape[1] != ya.shape[1]:
        raise WorkbenchError(
            f"The two sets have different feature sizes ({xa.shape[1]} vs {ya.shape[1]}).",
            "Compare features of the same backbone and layers.",
        )
    z = np.concatenate([xa, ya])
    d2 = pairwise_sq_dists(z)
    sigma = float(bandwidth) if bandwidth else median_bandwidth(d2)
    k = np.exp(-d2 / (2.0 * sigma * sigma))
    n, m = len(z), len(xa)
    observed = float(_mmd2_batch(k, (np.arange(n) < m).astype(np.float64)[:, None])[0])
    rng = np.random.default_rng(seed)
    exceed = 0
    done = 0
    while done < n_permutations:
        p = min(batch, n_permutations - done)
        sx = np.zeros((n, p))
        for j in range(p):
            sx[rng.permutation(n)[:m], j] = 1.0
        exceed += int((_mmd2_batch(k, sx) >= observed).sum())
        done += p
    p_value = (1.0 + exceed) / (1.0 + n_permutations)
    return MMDResult(observed, float(p_value), sigma, int(m), int(len(ya)), int(n_permutations))

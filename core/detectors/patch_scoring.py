"""PatchCore's image score and patch map from patch embeddings and bank searches, in numpy (no torch).

Shared by :class:`core.detectors.patchcore.PatchCore` and the exported bundle's scorer (core/bundle), so both
compute the same numbers from the same code. Searches are passed in as functions: PatchCore's calibration
searches leaving each training image out of the bank, everything else searches the bank as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# (queries Q x C, k) -> (squared distances Q x k, bank rows Q x k), nearest first
SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class PatchScoring:
    """The scoring settings of a fitted PatchCore (see PatchCoreConfig for what each one means)."""

    map_neighbors: int
    rescore_patches: int
    num_neighbors: int
    # Per-channel scale of the image score's distances (PatchCoreConfig.image_score_fine_weight): the farthest
    # patches are re-measured scaled by it, against an image-score bank scaled the same way. None: the map's.
    score_scale: np.ndarray | None = field(default=None, compare=False)


def score_patches(
    patches: np.ndarray,
    shape: tuple[int, int, int],
    rule: PatchScoring,
    map_bank_size: int,
    map_search: SearchFn,
    score_bank: np.ndarray,
    score_search: SearchFn,
    rescore_search: SearchFn | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw image scores (N,) and patch maps (N x h x w) of ``patches`` ((N*h*w) x C, image then row then column;
    ``shape`` = (N, h, w)).

    ``map_search`` searches the map bank; ``rescore_search`` (None: one bank, the map's distances) the image-score
    bank for the farthest patches, scaled by ``rule.score_scale`` when it is set; ``score_search`` / ``score_bank``
    are the image-score bank's plain search and rows (scaled alike), where the reweighting's support points are
    found.
    """
    n, h, w = shape
    k = max(1, min(int(rule.map_neighbors), int(map_bank_size)))
    d2, nn = map_search(patches, k)
    dist = np.sqrt(d2)
    nearest = dist[:, 0].reshape(n, h * w)
    patch_map = dist.mean(axis=1).reshape(n, h, w)
    per_image = patches.reshape(n, h * w, -1)
    nn0 = nn[:, 0].reshape(n, h * w)
    if rescore_search is not None:
        per_image, nearest, nn0 = rescore_farthest(per_image, nearest, rule.rescore_patches, rescore_search,
                                                   rule.score_scale)
    scores = reweighted_scores(per_image, nearest, nn0, score_bank, score_search, rule.num_neighbors)
    return scores, patch_map


def rescore_farthest(
    patches: np.ndarray, nearest: np.ndarray, rescore_patches: int, search: SearchFn,
    scale: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``rescore_patches`` patches of each image farthest from the map bank (N x T x C, times ``scale`` per
    channel when given), their distances to the image-score bank (N x T) and their nearest rows there (N x T)."""
    n, p, c = patches.shape
    t = max(1, min(int(rescore_patches), p))
    top = np.argsort(-nearest, axis=1, kind="stable")[:, :t]
    picked = np.take_along_axis(patches, top[:, :, None], axis=1)
    picked = np.ascontiguousarray(picked if scale is None else picked * scale.astype(np.float32))
    d2, nn = search(picked.reshape(n * t, c), 1)
    return picked, np.sqrt(d2[:, 0]).reshape(n, t), nn[:, 0].reshape(n, t)


def reweighted_scores(
    patches: np.ndarray, dist: np.ndarray, nn: np.ndarray, bank: np.ndarray, search: SearchFn, num_neighbors: int
) -> np.ndarray:
    """Paper eq. 7: s = (1 - softmax(||m_test - m_j||)_0) * s*, over m*'s neighbours m_j in ``bank``.

    ``patches`` N x P x C, ``dist`` / ``nn`` N x P: each patch's nearest distance and row in ``bank``."""
    rows = np.arange(len(dist))
    worst = dist.argmax(axis=1)
    s_star = dist[rows, worst]
    k = min(int(num_neighbors), len(bank))
    if k <= 1:
        return s_star
    m_star = bank[nn[rows, worst]]
    _, support = search(m_star, k)  # includes m* itself first
    support = np.where(support < 0, nn[rows, worst][:, None], support)
    m_test = patches[rows, worst]
    d = np.linalg.norm(bank[support] - m_test[:, None, :], axis=2)
    d = d - d.max(axis=1, keepdims=True)  # stable softmax
    soft = np.exp(d) / np.exp(d).sum(axis=1, keepdims=True)
    return (1.0 - soft[:, 0]) * s_star

"""The batched greedy coreset picks exactly what the paper's one-pick-per-pass loop picks."""

from __future__ import annotations

import numpy as np
import pytest

from core.detectors.coreset import coreset_size, greedy_kcenter, greedy_reference, select_coreset


def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (50, d))
    return (centers[rng.integers(50, size=n)] + rng.normal(0, 1, (n, d))).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_greedy_equals_plain_loop(seed):
    x = _clustered(6000, 32, seed)
    fast, passes = greedy_kcenter(x, 300, seed=seed, pool=256)
    ref = greedy_reference(x, 300, seed=seed)
    np.testing.assert_array_equal(fast, ref)
    assert passes < 300  # it really batches


def test_weighted_greedy_equals_weighted_plain_loop():
    x = _clustered(4000, 16, 3)
    w = (1.0 + np.random.default_rng(3).random(4000)).astype(np.float32)
    fast, _ = greedy_kcenter(x, 200, weights=w, seed=5, pool=128)
    np.testing.assert_array_equal(fast, greedy_reference(x, 200, weights=w, seed=5))


def test_duplicates_and_sizes():
    x = np.zeros((100, 4), np.float32)  # all identical: still returns k distinct rows
    idx, _ = greedy_kcenter(x, 10)
    assert len(np.unique(idx)) == 10
    assert coreset_size(1000, 0.01, None) == 10 and coreset_size(1000, None, 5000) == 1000
    res = select_coreset(_clustered(1000, 8, 0), "random", ratio=0.1)
    assert len(np.unique(res.indices)) == 100
    with pytest.raises(ValueError, match="variance"):
        select_coreset(_clustered(100, 8, 0), "variance", ratio=0.1)


@pytest.mark.parametrize("method", ["greedy", "variance", "random"])
def test_every_prefix_of_a_longer_selection_is_the_shorter_selection(method):
    """PatchCore's map bank is the first part of its image-score bank: this must be the same set as a direct fit."""
    x = _clustered(5000, 16, 4)
    v = np.random.default_rng(4).random(5000).astype(np.float32)
    short = select_coreset(x, method, ratio=0.01, projection_dim=0, variance=v, seed=7).indices
    long = select_coreset(x, method, ratio=0.05, projection_dim=0, variance=v, seed=7).indices
    if method == "random":  # another size draws another set; the prefix must still be spread, i.e. not sorted
        assert long[: len(short)].max() > len(x) // 2 and long[: len(short)].min() < len(x) // 2
        return
    np.testing.assert_array_equal(long[: len(short)], short)


def test_greedy_continuation_equals_the_plain_loop_from_a_bank():
    """Review feedback's rule: new rows join a bank by k-center greedy continued from the bank's rows."""
    from core.detectors.coreset import greedy_continue

    rng = np.random.default_rng(3)
    bank = rng.normal(size=(40, 6)).astype(np.float32)
    x = np.concatenate([rng.normal(size=(150, 6)), rng.normal(3.0, 1.0, size=(50, 6))]).astype(np.float32)
    d0 = ((x[:, None, :].astype(np.float64) - bank[None].astype(np.float64)) ** 2).sum(-1).min(1)
    picks = greedy_continue(x, d0, 12)
    centres, plain = [*bank.astype(np.float64)], []
    for _ in range(12):  # the plain loop: farthest row from every centre so far, one at a time
        d = np.array([min(((r - c) ** 2).sum() for c in centres) for r in x.astype(np.float64)])
        j = int(np.argmax(d))
        plain.append(j)
        centres.append(x[j].astype(np.float64))
    assert picks.tolist() == plain
    assert (x[picks, 0] > 1.0).mean() > 0.5, "the far cluster, which the bank does not cover, is picked first"
    assert greedy_continue(bank, np.zeros(len(bank)), 5).size == 0, "rows the bank already holds add nothing"

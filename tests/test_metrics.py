"""Tests for core.metrics: hand-checkable image metrics, AUPRO vs a slow reference, pixel AUROC subsampling."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from core.errors import WorkbenchError
from core.metrics import (
    ImageMetrics,
    aupro,
    aupro_reference,
    confusion_at,
    f1_max,
    flag_rate,
    image_metrics,
    latency_summary,
    per_class_metrics,
    pixel_auroc,
    pro_curve,
)
from core.metrics.pixel import _area_to_limit

# ----------------------------------------------------------------------------- image metrics


def test_image_metrics_perfect_and_hand_case():
    m = image_metrics([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert isinstance(m, ImageMetrics)
    assert (m.n, m.n_anomalous, m.n_normal) == (4, 2, 2)
    assert m.auroc == 1.0 and m.ap == 1.0 and m.f1_max == 1.0
    assert m.threshold == 0.8
    # One swapped pair out of four: AUROC = 3/4.
    m = image_metrics([0, 0, 1, 1], [0.1, 0.8, 0.4, 0.9])
    assert m.auroc == pytest.approx(0.75)
    # AP: ranks 0.9(+) 0.8(-) 0.4(+) 0.1(-) -> (1 + 2/3) / 2
    assert m.ap == pytest.approx((1 + 2 / 3) / 2)
    # F1-max: threshold 0.4 -> tp=2, fp=1, fn=0 -> P=2/3, R=1, F1=0.8 (threshold 0.9 gives 2/3).
    assert m.f1_max == pytest.approx(0.8)
    assert m.threshold == 0.4
    d = m.to_dict()
    assert d["auroc"] == pytest.approx(0.75) and set(d) >= {"n", "ap", "f1_max", "threshold", "note"}


def test_raw_scores_not_normalised():
    # Huge, negative raw scores: the threshold must come back in the same units.
    m = image_metrics([0, 1, 0, 1], [-1000.0, 5e6, -3.0, 7e6])
    assert m.auroc == 1.0 and m.threshold == 5e6


def test_inverted_scores_note():
    m = image_metrics([0, 0, 0, 1, 1, 1], [0.9, 0.8, 0.3, 0.2, 0.1, 0.4])
    assert m.auroc < 0.5
    assert "inverted" in m.note and f"{m.auroc:.2f}" in m.note


def test_single_class_sets():
    m = image_metrics([1, 1, 1], [0.2, 0.5, 0.9])
    assert m.auroc is None and m.ap is None and m.f1_max is None and m.threshold is None
    assert "all-anomalous" in m.note and "AUROC undefined" in m.note
    m = image_metrics([0, 0], [0.2, 0.5])
    assert m.auroc is None and "all-normal" in m.note
    with pytest.raises(WorkbenchError):
        f1_max([0, 0], [0.1, 0.2])


def test_f1_max_threshold_reproduced_by_confusion_at():
    rng = np.random.default_rng(3)
    for _ in range(10):
        y = rng.integers(0, 2, 60)
        y[:2] = [0, 1]
        s = rng.normal(size=60) + y * rng.uniform(0, 2)
        f1, thr = f1_max(y, s)
        c = confusion_at(y, s, thr)
        assert c["f1"] == pytest.approx(f1, abs=1e-12)
        # no other threshold does better
        best = max(confusion_at(y, s, t)["f1"] for t in np.unique(s))
        assert best == pytest.approx(f1, abs=1e-12)


def test_confusion_at_counts_and_zero_division():
    c = confusion_at([0, 0, 1, 1], [0.1, 0.6, 0.5, 0.9], 0.5)
    assert (c["tp"], c["fp"], c["tn"], c["fn"]) == (2, 1, 1, 0)
    assert c["precision"] == pytest.approx(2 / 3) and c["recall"] == 1.0
    assert c["specificity"] == 0.5 and c["accuracy"] == 0.75
    c = confusion_at([0, 0], [0.1, 0.2], 1.0)  # nothing predicted, nothing positive
    assert c["precision"] == 0.0 and c["recall"] == 0.0 and c["f1"] == 0.0 and c["specificity"] == 1.0


def test_per_class_flag_rate_latency():
    classes = ["good", "good", "good", "scratch", "scratch", "hole"]
    labels = [0, 0, 0, 1, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.25, 0.9, 0.05]
    pc = per_class_metrics(labels, scores, classes, threshold=0.25)
    assert set(pc) == {"scratch", "hole"}
    assert pc["scratch"]["n"] == 2 and pc["scratch"]["auroc"] == pytest.approx(5 / 6)
    assert pc["scratch"]["recall"] == 1.0
    assert pc["hole"]["auroc"] == 0.0 and pc["hole"]["recall"] == 0.0
    assert per_class_metrics(labels, scores, classes)["hole"]["recall"] is None
    with pytest.raises(WorkbenchError):
        per_class_metrics([1, 0, 0, 1, 1, 1], scores, classes)

    assert flag_rate([0.1, 0.5, 0.7, 0.2], 0.5) == 0.5
    lat = latency_summary([10.0] * 19 + [100.0])
    assert lat["p50"] == 10.0 and lat["max"] == 100.0 and lat["mean"] == pytest.approx(14.5)
    assert 10.0 < lat["p95"] <= 100.0
    assert latency_summary([])["mean"] is None


def test_bad_image_input():
    with pytest.raises(WorkbenchError):
        image_metrics([0, 1], [0.1])
    with pytest.raises(WorkbenchError):
        image_metrics([0, 1], [0.1, float("nan")])
    with pytest.raises(WorkbenchError):
        image_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(WorkbenchError):
        image_metrics([], [])


# ----------------------------------------------------------------------------- AUPRO


def _random_case(rng, n=4, h=20, w=20, strength=1.5):
    """Random blobs (thresholded smoothed noise) as masks, noisy maps correlated with them."""
    raw = ndimage.gaussian_filter(rng.normal(size=(n, h, w)), sigma=(0, 2, 2))
    masks = raw > np.quantile(raw, rng.uniform(0.8, 0.95))
    masks[0] = False  # always one defect-free image (its pixels still count as normal)
    if not masks.any():
        masks[1, 3:6, 3:6] = True
    maps = strength * ndimage.gaussian_filter(masks.astype(float), sigma=(0, 1, 1)) + rng.normal(
        scale=0.5, size=(n, h, w)
    )
    return masks, maps


def test_area_to_limit_hand_cases():
    # y = x: area to 0.3 is 0.045, normalised 0.15; limit between points -> interpolation.
    assert _area_to_limit(np.array([0, 1.0]), np.array([0, 1.0]), 0.3) == pytest.approx(0.15)
    # step to 1 at fpr 0 -> 1.0
    assert _area_to_limit(np.array([0, 0, 1.0]), np.array([0, 1.0, 1.0]), 0.3) == pytest.approx(1.0)
    # limit exactly on a point
    assert _area_to_limit(np.array([0, 0.3, 1.0]), np.array([0.5, 0.5, 1.0]), 0.3) == pytest.approx(0.5)


def test_aupro_matches_reference_same_thresholds():
    rng = np.random.default_rng(0)
    for case in range(24):
        masks, maps = _random_case(rng, strength=rng.uniform(0.0, 3.0))
        fpr_limit = [0.3, 0.05, 1.0][case % 3]
        curve = pro_curve(masks, maps, fpr_limit=fpr_limit, num_thresholds=50)
        thr = curve[2]
        fast = aupro(masks, maps, fpr_limit=fpr_limit, thresholds=thr)
        ref = aupro_reference(masks, maps, fpr_limit=fpr_limit, thresholds=thr)
        assert fast == pytest.approx(ref, abs=1e-6), case
        # and also a plain evenly spaced threshold list that need not reach fpr_limit
        thr2 = np.linspace(maps.max(), np.quantile(maps, 0.9), 17)
        assert aupro(masks, maps, fpr_limit=fpr_limit, thresholds=thr2) == pytest.approx(
            aupro_reference(masks, maps, fpr_limit=fpr_limit, thresholds=thr2), abs=1e-6
        )


def test_aupro_default_thresholds_close_to_exact_curve():
    rng = np.random.default_rng(1)
    for case in range(20):
        masks, maps = _random_case(rng, n=3, h=16, w=16, strength=rng.uniform(0.5, 3.0))
        exact = aupro_reference(masks, maps)  # every distinct score: the exact MVTec curve
        fast = aupro(masks, maps)
        assert fast == pytest.approx(exact, abs=1e-2), case


def test_aupro_perfect_random_and_none():
    rng = np.random.default_rng(2)
    masks, _ = _random_case(rng, n=6, h=32, w=32)
    perfect = masks.astype(float) + 0.01 * rng.random(masks.shape)  # every defect above every normal
    assert aupro(masks, perfect) == pytest.approx(1.0, abs=1e-9)
    assert aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0, abs=1e-9)  # heavy ties
    noise = rng.random(masks.shape)
    r = aupro(masks, noise)
    assert r < 0.3 and r == pytest.approx(0.15, abs=0.06)
    assert aupro(np.zeros((2, 8, 8), bool), noise[:2, :8, :8]) is None
    assert aupro(np.ones((2, 8, 8), bool), noise[:2, :8, :8]) is None  # no normal pixel: FPR undefined


def test_aupro_eight_connectivity_and_regions_weigh_equally():
    # Two diagonal-touching pixels form ONE region; a separate big region is found and fully missed.
    mask = np.zeros((1, 10, 10), bool)
    mask[0, 1, 1] = mask[0, 2, 2] = True
    mask[0, 5:9, 5:9] = True
    score = np.zeros((1, 10, 10))
    score[0, 1, 1] = score[0, 2, 2] = 1.0  # small region found, big one at the normal level
    # Two regions (8-connectivity), one fully detected at FPR 0: curve (0,0) (0,0.5) (1,1) -> PRO 0.65
    # at FPR 0.3, area 0.3 * (0.5 + 0.65) / 2, normalised 0.575. (4-connectivity: 3 regions -> 0.7167.)
    assert aupro(mask, score) == pytest.approx(0.575)
    assert aupro_reference(mask, score) == pytest.approx(0.575)


def test_aupro_speed_300_images():
    rng = np.random.default_rng(4)
    n, h, w = 300, 224, 224
    masks = np.zeros((n, h, w), bool)
    yy, xx = np.ogrid[:h, :w]
    for i in range(0, n, 2):
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.integers(20, 200), rng.integers(20, 200), rng.integers(3, 20)
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    maps = (rng.normal(size=(n, h, w)) + masks).astype(np.float32)
    t0 = time.perf_counter()
    v = aupro(masks, maps)
    elapsed = time.perf_counter() - t0
    assert 0.0 < v < 1.0
    assert elapsed < 4.0, f"aupro took {elapsed:.2f} s on 300 x 224 x 224"  # ~0.7 s measured; 2 shared cores


def test_bad_pixel_input():
    with pytest.raises(WorkbenchError):
        aupro(np.zeros((2, 8, 8), bool), np.zeros((2, 8, 9)))
    with pytest.raises(WorkbenchError):
        pixel_auroc(np.zeros((2, 8, 8), bool), np.full((2, 8, 8), np.nan))
    with pytest.raises(WorkbenchError):
        aupro(np.zeros((2, 8, 8), bool), np.zeros((3, 8, 8)))


# ----------------------------------------------------------------------------- pixel AUROC


def test_pixel_auroc_perfect_and_none():
    rng = np.random.default_rng(5)
    masks, _ = _random_case(rng, n=4, h=32, w=32)
    assert pixel_auroc(masks, masks.astype(float)) == 1.0
    assert pixel_auroc(masks * 255, masks.astype(float)) == 1.0  # 0/255 masks accepted
    assert pixel_auroc(np.zeros((2, 4, 4)), rng.random((2, 4, 4))) is None
    # a list of differently-sized images works too
    assert pixel_auroc([masks[1], masks[2, :20, :24]], [masks[1] * 1.0, masks[2, :20, :24] * 1.0]) == 1.0


def test_pixel_auroc_subsample_close_to_exact():
    rng = np.random.default_rng(6)
    n, h, w = 40, 128, 128  # 655k pixels
    raw = ndimage.gaussian_filter(rng.normal(size=(n, h, w)), sigma=(0, 6, 6))
    masks = raw > np.quantile(raw, 0.97)
    masks[: n // 2] = False
    maps = ndimage.gaussian_filter(masks.astype(np.float32), sigma=(0, 3, 3)) + rng.normal(
        scale=0.25, size=(n, h, w)
    ).astype(np.float32)
    exact = pixel_auroc(masks, maps, max_pixels=10**9)
    sub = pixel_auroc(masks, maps, max_pixels=100_000, seed=0)
    assert 0.7 < exact < 0.99
    assert abs(sub - exact) < 0.005
    assert pixel_auroc(masks, maps, max_pixels=100_000, seed=0) == sub  # deterministic

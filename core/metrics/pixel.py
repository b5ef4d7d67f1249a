"""Pixel-level metrics: ground-truth masks and anomaly maps in, plain numbers out.

``masks`` is N x H x W (bool, or 0/1 or 0/255: anything > 0 is defect), ``maps`` is N x H x W float with
raw scores (higher = more anomalous; never normalised here). A list of per-image 2-D arrays is accepted
too (sizes may differ between images but each mask must match its map). A pixel is predicted anomalous
when ``score >= threshold``.

``pixel_auroc``
    Exact ROC AUC over all pixels when there are at most ``max_pixels`` of them. Above that, a
    deterministic (``seed``) random subsample: every defect pixel and every normal pixel is kept
    independently with a per-class probability (Bernoulli sampling), so the sample is uniform within
    each class, about ``max_pixels`` in size, and holds at least ~10,000 defect pixels (or all of them)
    even when defects are rare. AUROC only depends on the two class-conditional score distributions, so
    this estimate is unbiased; ``tests/test_metrics.py`` checks it stays within 0.005 of the exact value.

``aupro``
    Area under the per-region-overlap (PRO) curve up to ``fpr_limit``, divided by ``fpr_limit``
    (perfect = 1.0, a random map scores about ``fpr_limit / 2``). Regions are the 8-connected components
    of each GT mask; PRO at a threshold is the mean over all regions (of all images) of the share of the
    region's pixels predicted anomalous; FPR is over the normal pixels of ALL images, including
    defect-free ones. The curve is evaluated at a list of thresholds (default: ``num_thresholds``
    quantiles of the normal-pixel scores, i.e. evenly spaced in FPR on [0, fpr_limit], plus the
    threshold just above the largest normal score, so the FPR = 0 point is exact), gets (0, 0) and
    (1, 1) added as in the MVTec AD evaluation code, is clipped at ``fpr_limit`` by linear
    interpolation, and integrated with the trapezoid rule. With explicit ``thresholds`` the result is
    exactly that of :func:`aupro_reference` on the same thresholds.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from core.errors import WorkbenchError

__all__ = ["pixel_auroc", "aupro", "pro_curve", "aupro_reference"]

_EIGHT = np.ones((3, 3), dtype=bool)
_MIN_POS_SAMPLE = 10_000
_QUANTILE_SAMPLE = 1_000_000


# ----------------------------------------------------------------------------- input checks


def _as_list(x, name: str) -> list[np.ndarray]:
    if isinstance(x, np.ndarray):
        if x.ndim == 2:
            return [x]
        if x.ndim == 3:
            return list(x)
        raise WorkbenchError(
            f"The {name} must be N x H x W (or one H x W image); got shape {x.shape}.",
            "Squeeze channel dimensions and stack one 2-D array per image.",
        )
    out = [np.asarray(a) for a in x]
    for a in out:
        if a.ndim != 2:
            raise WorkbenchError(
                f"Each of the {name} must be a 2-D H x W array; got shape {a.shape}.",
                "Squeeze channel dimensions so each image is H x W.",
            )
    return out


def _prepare(masks, maps) -> tuple[list[np.ndarray], list[np.ndarray]]:
    ms = _as_list(masks, "masks")
    mp = _as_list(maps, "maps")
    if len(ms) != len(mp):
        raise WorkbenchError(
            f"There are {len(ms)} masks but {len(mp)} anomaly maps.",
            "Pass one ground-truth mask per anomaly map, in the same order.",
        )
    if not ms:
        raise WorkbenchError("No images to evaluate (no masks or maps).", "Evaluate a non-empty split.")
    out_m, out_p = [], []
    for i, (m, p) in enumerate(zip(ms, mp)):
        if m.shape != p.shape:
            raise WorkbenchError(
                f"Image {i}: mask shape {m.shape} differs from anomaly-map shape {p.shape}.",
                "Resize anomaly maps to the mask size (or masks with nearest-neighbour) before evaluating.",
            )
        if not np.issubdtype(p.dtype, np.floating):
            p = p.astype(np.float64)
        if not np.isfinite(p).all():
            raise WorkbenchError(
                f"Image {i}: the anomaly map contains NaN or infinite values.",
                "Check the detector output for this image.",
            )
        out_m.append(m if m.dtype == bool else m > 0)
        out_p.append(p)
    return out_m, out_p


def _check_thresholds(thresholds) -> np.ndarray:
    t = np.unique(np.asarray(thresholds, dtype=np.float64).reshape(-1))  # sorted ascending
    if t.size == 0 or np.isnan(t).any():
        raise WorkbenchError("The threshold list is empty or contains NaN.", "Pass finite score thresholds.")
    return t


def _check_limit(fpr_limit: float) -> float:
    f = float(fpr_limit)
    if not 0 < f <= 1:
        raise WorkbenchError(f"fpr_limit must be in (0, 1]; got {fpr_limit}.", "Use e.g. 0.3 (the MVTec default).")
    return f


# ----------------------------------------------------------------------------- pixel AUROC


def pixel_auroc(masks, maps, max_pixels: int = 5_000_000, seed: int = 0) -> float | None:
    """ROC AUC over pixels; exact up to ``max_pixels`` pixels, else a seeded per-class subsample.

    None when the masks have no defect pixel or no normal pixel.
    """
    sample = _pixel_sample(masks, maps, max_pixels, seed, per_class=True)
    return None if sample is None else float(roc_auc_score(*sample))


def pixel_ap(masks, maps, max_pixels: int = 5_000_000, seed: int = 0) -> float | None:
    """Average precision over pixels (scikit-learn's, defect pixels positive); exact up to ``max_pixels`` pixels,
    else a seeded sample taking every pixel at the same rate (AP depends on the share of defect pixels, so unlike
    AUROC it must not be sampled per class). None when the masks have no defect pixel or no normal pixel."""
    from sklearn.metrics import average_precision_score

    sample = _pixel_sample(masks, maps, max_pixels, seed, per_class=False)
    return None if sample is None else float(average_precision_score(*sample))


def _pixel_sample(masks, maps, max_pixels: int, seed: int, per_class: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, scores) of all pixels, or of a seeded sample when there are more than ``max_pixels``: per class
    (``per_class``, at least ``_MIN_POS_SAMPLE`` defect pixels) or at one rate for all; None if a class is absent."""
    ms, mp = _prepare(masks, maps)
    total = sum(m.size for m in ms)
    n_pos = sum(int(np.count_nonzero(m)) for m in ms)
    n_neg = total - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    if total <= max_pixels:
        return np.concatenate([m.ravel() for m in ms]), np.concatenate([p.ravel() for p in mp])
    if per_class:
        k_pos = min(n_pos, max(max_pixels * n_pos / total, _MIN_POS_SAMPLE))
        k_neg = min(n_neg, max(max_pixels - k_pos, _MIN_POS_SAMPLE))
        rate_pos, rate_neg = k_pos / n_pos, k_neg / n_neg
    else:
        rate_pos = rate_neg = max_pixels / total
    rng = np.random.default_rng(seed)
    ys, ss = [], []
    for m, p in zip(ms, mp):
        m = m.ravel()
        u = rng.random(m.size)
        keep = np.where(m, u < rate_pos, u < rate_neg)
        ys.append(m[keep])
        ss.append(p.ravel()[keep])
    y, s = np.concatenate(ys), np.concatenate(ss)
    if y.all() or not y.any():  # only possible for absurdly small max_pixels
        return None
    return y, s


# ----------------------------------------------------------------------------- PRO curve


def _area_to_limit(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> float:
    """Trapezoid area under a monotone (fpr, pro) curve from 0 to ``fpr_limit``, divided by the limit.

    The curve is cut at ``fpr_limit`` with linear interpolation between the two points around it
    (as ``trapezoid(..., x_max=...)`` in the MVTec AD evaluation code). ``fpr`` must be sorted
    ascending, start at 0 and end at >= ``fpr_limit``.
    """
    fpr = np.asarray(fpr, dtype=np.float64)
    pro = np.asarray(pro, dtype=np.float64)
    ins = int(np.searchsorted(fpr, fpr_limit, side="right"))  # points [:ins] have fpr <= limit
    x, y = fpr[:ins], pro[:ins]
    if x[-1] < fpr_limit and ins < fpr.size:
        x0, x1, y0, y1 = fpr[ins - 1], fpr[ins], pro[ins - 1], pro[ins]
        y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        x, y = np.r_[x, fpr_limit], np.r_[y, y_lim]
    area = float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))
    return area / fpr_limit


def _close_curve(fpr: np.ndarray, pro: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points at descending thresholds -> curve with (0, 0) first and (1, 1) last (MVTec convention)."""
    fpr = np.clip(fpr, 0.0, 1.0)
    pro = np.clip(pro, 0.0, 1.0)
    return np.r_[0.0, fpr, 1.0], np.r_[0.0, pro, 1.0]


def pro_curve(
    masks,
    maps,
    thresholds=None,
    num_thresholds: int = 200,
    fpr_limit: float = 0.3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The PRO curve as ``(fpr, pro, thresholds)``, thresholds descending, fpr and pro ascending.

    ``fpr``/``pro`` hold one point per threshold (without the added (0, 0) and (1, 1) end points).
    Default thresholds are chosen to sample FPR evenly on [0, ``fpr_limit``] (see module docstring);
    ``fpr_limit`` is only used for that choice. None when there are no defect regions or no normal
    pixels.
    """
    fpr_limit = _check_limit(fpr_limit)
    ms, mp = _prepare(masks, maps)

    # Pass 1: regions, normal-pixel count, and what the default thresholds need.
    labels: list[np.ndarray | None] = []
    n_regions, n_normal = 0, 0
    for m in ms:
        if m.any():
            lab, n = ndimage.label(m, structure=_EIGHT)
            labels.append(lab)
            n_regions += n
        else:
            labels.append(None)
        n_normal += m.size - int(np.count_nonzero(m))
    if n_regions == 0 or n_normal == 0:
        return None

    if thresholds is None:
        num = max(int(num_thresholds), 2)
        step = max(1, math.ceil(n_normal / _QUANTILE_SAMPLE))
        rng = np.random.default_rng(0)
        sample, max_normal, min_all = [], -np.inf, np.inf
        for m, p in zip(ms, mp):
            vals = p[~m] if m.any() else p.ravel()
            min_all = min(min_all, float(p.min()))
            if vals.size:
                max_normal = max(max_normal, float(vals.max()))
                start = int(rng.integers(step)) if step > 1 else 0
                sample.append(vals[start::step])
        sample = np.concatenate(sample).astype(np.float64)
        targets = np.r_[np.linspace(0.0, fpr_limit, num), min(1.0, fpr_limit * 1.05)]
        qs = np.quantile(sample, 1.0 - targets)
        thr = np.r_[qs, np.nextafter(max_normal, np.inf), min_all]
    else:
        thr = thresholds
    thr_asc = _check_thresholds(thr)
    t = thr_asc.size

    # Pass 2: per pixel, how many thresholds it reaches (bin k: score >= thr_asc[:k]); count per class.
    normal_hist = np.zeros(t + 1, dtype=np.int64)
    region_hist = np.zeros((n_regions, t + 1), dtype=np.int64)
    offset = 0
    for m, p, lab in zip(ms, mp, labels):
        bins = np.searchsorted(thr_asc, p.ravel(), side="right")
        if lab is None:
            normal_hist += np.bincount(bins, minlength=t + 1)
            continue
        mf = m.ravel()
        normal_hist += np.bincount(bins[~mf], minlength=t + 1)
        n = int(lab.max())
        rid = lab.ravel()[mf].astype(np.int64) - 1
        region_hist[offset : offset + n] += np.bincount(
            rid * (t + 1) + bins[mf], minlength=n * (t + 1)
        ).reshape(n, t + 1)
        offset += n

    # Pixels reaching threshold j (ascending index) are those in bins j+1..t: reverse cumulative sums.
    fp = np.cumsum(normal_hist[::-1])[::-1][1:]
    hits = np.cumsum(region_hist[:, ::-1], axis=1)[:, ::-1][:, 1:]
    sizes = region_hist.sum(axis=1)
    pro = (hits / sizes[:, None]).mean(axis=0)
    fpr = fp / n_normal
    return fpr[::-1], pro[::-1], thr_asc[::-1]


def aupro(masks, maps, fpr_limit: float = 0.3, num_thresholds: int = 200, thresholds=None) -> float | None:
    """Normalised area under the PRO curve up to ``fpr_limit`` (perfect = 1.0). None if no regions.

    Vectorised (one ``searchsorted`` + ``bincount`` per image). Pass ``thresholds`` to evaluate the
    curve at exactly those score thresholds (then it equals :func:`aupro_reference` on the same list).
    Also None when there is no normal pixel at all (FPR undefined).
    """
    fpr_limit = _check_limit(fpr_limit)
    curve = pro_curve(masks, maps, thresholds=thresholds, num_thresholds=num_thresholds, fpr_limit=fpr_limit)
    if curve is None:
        return None
    fpr, pro, _ = curve
    return _area_to_limit(*_close_curve(fpr, pro), fpr_limit)


def aupro_reference(masks, maps, fpr_limit: float = 0.3, thresholds=None) -> float | None:
    """Slow, loop-by-loop AUPRO for tests. ``thresholds=None``: every distinct score (the exact curve).

    Regions come from ``cv2.connectedComponents`` (8-connectivity), independently of :func:`aupro`.
    """
    import cv2

    fpr_limit = _check_limit(fpr_limit)
    ms, mp = _prepare(masks, maps)
    regions: list[tuple[int, np.ndarray]] = []
    for i, m in enumerate(ms):
        n, lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
        for r in range(1, n):
            regions.append((i, lab == r))
    n_normal = sum(int((~m).sum()) for m in ms)
    if not regions or n_normal == 0:
        return None
    if thresholds is None:
        thresholds = np.unique(np.concatenate([p.ravel() for p in mp]))
    fprs, pros = [], []
    for t in sorted(set(float(x) for x in np.asarray(thresholds).ravel()), reverse=True):
        preds = [p >= t for p in mp]
        false_pos = 0
        for pred, m in zip(preds, ms):
            false_pos += int(np.sum(pred & ~m))
        overlaps = []
        for i, region in regions:
            overlaps.append(np.sum(preds[i] & region) / np.sum(region))
        fprs.append(false_pos / n_normal)
        pros.append(float(np.mean(overlaps)))
    return _area_to_limit(*_close_curve(np.array(fprs), np.array(pros)), fpr_limit)

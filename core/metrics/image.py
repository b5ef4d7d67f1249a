"""Image-level metrics: one label and one raw anomaly score per image in, plain numbers out.

All metrics use the RAW scores as given (never normalised or clamped): AUROC and AP are rank/threshold
based, and thresholds reported here are in the same units as the scores so they can be applied as is.
A score ``>= threshold`` means "predicted anomalous" everywhere in this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from core.errors import WorkbenchError

__all__ = [
    "ImageMetrics",
    "image_metrics",
    "f1_max",
    "per_class_metrics",
    "confusion_at",
    "flag_rate",
    "latency_summary",
]


@dataclass
class ImageMetrics:
    n: int
    n_anomalous: int
    n_normal: int
    auroc: float | None  # None when only one class is present (then `note` explains)
    ap: float | None
    f1_max: float | None
    threshold: float | None  # score threshold achieving f1_max (anomalous when score >= threshold)
    note: str

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- input checks


def _as_scores(scores, name: str = "scores") -> np.ndarray:
    try:
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise WorkbenchError(
            f"The {name} could not be read as numbers ({exc}).",
            "Pass one numeric anomaly score per image.",
        ) from exc
    bad = int(np.count_nonzero(~np.isfinite(s)))
    if bad:
        raise WorkbenchError(
            f"{bad} of {s.size} {name} are NaN or infinite.",
            "Check the detector output for these images (an empty feature map or a division by zero).",
        )
    return s


def _as_labels(labels) -> np.ndarray:
    y = np.asarray(labels).reshape(-1)
    if y.dtype == bool:
        return y.astype(np.int64)
    try:
        yf = y.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise WorkbenchError(
            "The labels are not numbers or booleans.",
            "Pass 1/True for anomalous images and 0/False for normal ones.",
        ) from exc
    if not np.all((yf == 0) | (yf == 1)):
        vals = sorted(set(np.unique(yf[(yf != 0) & (yf != 1)]).tolist()))[:5]
        raise WorkbenchError(
            f"The labels must be 0 (normal) or 1 (anomalous); found other values such as {vals}.",
            "Map class names to 0/1 before computing metrics (per_class_metrics takes the class names).",
        )
    return yf.astype(np.int64)


def _labels_scores(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = _as_labels(labels)
    s = _as_scores(scores)
    if y.size != s.size:
        raise WorkbenchError(
            f"There are {y.size} labels but {s.size} scores.",
            "Pass exactly one label and one score per image, in the same order.",
        )
    if y.size == 0:
        raise WorkbenchError("No images to evaluate (empty labels and scores).", "Evaluate a non-empty split.")
    return y, s


# ----------------------------------------------------------------------------- metrics


def f1_max(labels, scores) -> tuple[float, float]:
    """Best F1 over all score thresholds, and the threshold reaching it.

    Thresholds are the distinct raw scores (sklearn ``precision_recall_curve``); predict anomalous when
    ``score >= threshold``, so ``confusion_at(labels, scores, threshold)["f1"]`` reproduces the F1.
    Needs at least one anomalous image.
    """
    y, s = _labels_scores(labels, scores)
    if not y.any():
        raise WorkbenchError(
            "F1 needs at least one anomalous image; all images are labelled normal.",
            "Use flag_rate() on normal-only sets, or evaluate a split with defects.",
        )
    precision, recall, thresholds = precision_recall_curve(y, s)
    precision, recall = precision[: len(thresholds)], recall[: len(thresholds)]
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    i = int(np.argmax(f1))
    return float(f1[i]), float(thresholds[i])


def image_metrics(labels, scores) -> ImageMetrics:
    """AUROC, AP and F1-max of raw image scores (higher = more anomalous), with a plain-language note."""
    y, s = _labels_scores(labels, scores)
    n, n_anom = int(y.size), int(y.sum())
    n_norm = n - n_anom
    notes: list[str] = []
    if n_anom == 0 or n_norm == 0:
        if n_norm == 0:
            notes.append("all-anomalous set: AUROC undefined; report beside a mixed split")
        else:
            notes.append(
                "all-normal set: AUROC undefined; report the flag rate (false alarms) at a chosen threshold"
            )
        return ImageMetrics(n, n_anom, n_norm, None, None, None, None, "; ".join(notes))

    auroc = float(roc_auc_score(y, s))
    ap = float(average_precision_score(y, s))
    f1, thr = f1_max(y, s)
    if np.ptp(s) == 0:
        notes.append("all scores are equal: the detector does not separate anything")
    elif auroc < 0.5:
        notes.append(f"AUROC {auroc:.2f} < 0.5: scores may be inverted (higher should mean more anomalous)")
    if min(n_anom, n_norm) < 5:
        notes.append(f"only {min(n_anom, n_norm)} images in the smaller class: metrics are very noisy")
    return ImageMetrics(n, n_anom, n_norm, auroc, ap, f1, thr, "; ".join(notes))


def confusion_at(labels, scores, threshold) -> dict:
    """Confusion counts and rates when images with ``score >= threshold`` are called anomalous.

    Rates whose denominator is zero are reported as 0.0 (never NaN, never a warning).
    """
    y, s = _labels_scores(labels, scores)
    t = float(threshold)
    pred = s >= t
    pos = y == 1
    tp = int(np.count_nonzero(pred & pos))
    fp = int(np.count_nonzero(pred & ~pos))
    fn = int(np.count_nonzero(~pred & pos))
    tn = int(np.count_nonzero(~pred & ~pos))

    def div(a: float, b: float) -> float:
        return float(a / b) if b else 0.0

    precision, recall = div(tp, tp + fp), div(tp, tp + fn)
    return {
        "threshold": t,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "accuracy": div(tp + tn, tp + fp + tn + fn),
        "precision": precision,
        "recall": recall,
        "f1": div(2 * precision * recall, precision + recall),
        "specificity": div(tn, tn + fp),
    }


def per_class_metrics(labels, scores, classes, normal_class: str = "good", threshold=None) -> dict[str, dict]:
    """Each defect class against the normal class.

    Returns ``{class_name: {"n", "auroc", "mean_score", "recall"}}`` for every class other than
    ``normal_class`` (sorted by name). ``auroc`` is that class's images vs the ``normal_class`` images
    (None when there are no normal images); ``recall`` is the share of the class with
    ``score >= threshold`` (None when no threshold is given).
    """
    y, s = _labels_scores(labels, scores)
    c = np.asarray(classes).reshape(-1).astype(str)
    if c.size != s.size:
        raise WorkbenchError(
            f"There are {c.size} class names but {s.size} scores.",
            "Pass one class name per image, in the same order as the scores.",
        )
    is_normal = c == str(normal_class)
    if np.any(y[is_normal] == 1) or np.any(y[~is_normal] == 0):
        bad = sorted(set(c[(is_normal & (y == 1)) | (~is_normal & (y == 0))].tolist()))
        raise WorkbenchError(
            f"Labels disagree with class names for class(es) {bad}: images of '{normal_class}' must be "
            "labelled 0 and images of every other class 1.",
            f"Check normal_class (now '{normal_class}') matches the dataset's name for defect-free images.",
        )
    s_norm = s[is_normal]
    out: dict[str, dict] = {}
    for name in sorted(set(c[~is_normal].tolist())):
        s_cls = s[c == name]
        auroc = None
        if s_norm.size:
            yy = np.r_[np.zeros(s_norm.size, np.int64), np.ones(s_cls.size, np.int64)]
            auroc = float(roc_auc_score(yy, np.r_[s_norm, s_cls]))
        out[name] = {
            "n": int(s_cls.size),
            "auroc": auroc,
            "mean_score": float(s_cls.mean()),
            "recall": None if threshold is None else float(np.mean(s_cls >= float(threshold))),
        }
    return out


def flag_rate(scores, threshold) -> float:
    """Share of images called anomalous (``score >= threshold``); for unlabeled or domain-shift sets."""
    s = _as_scores(scores)
    if s.size == 0:
        raise WorkbenchError("No scores to compute a flag rate from.", "Score at least one image first.")
    return float(np.mean(s >= float(threshold)))


def latency_summary(ms: Sequence[float]) -> dict:
    """Mean, median, 95th percentile and max of per-image latencies in milliseconds.

    With no samples every statistic is None (and ``n`` is 0).
    """
    a = _as_scores(ms, name="latencies")
    if a.size == 0:
        return {"n": 0, "mean": None, "p50": None, "p95": None, "max": None}
    return {
        "n": int(a.size),
        "mean": float(a.mean()),
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "max": float(a.max()),
    }

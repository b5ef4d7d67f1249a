"""Metrics: plain arrays in (labels, raw scores, masks, maps), plain numbers out.

No models, torch or streamlit are imported here, so any layer (CLI, app, tests) can use it cheaply.
"""

from core.metrics.cam import attention_metrics, classification_metrics
from core.metrics.image import (
    ImageMetrics,
    confusion_at,
    f1_max,
    flag_rate,
    image_metrics,
    latency_summary,
    per_class_metrics,
)
from core.metrics.pixel import aupro, aupro_reference, pixel_ap, pixel_auroc, pro_curve

__all__ = [
    "ImageMetrics",
    "image_metrics",
    "f1_max",
    "per_class_metrics",
    "confusion_at",
    "flag_rate",
    "latency_summary",
    "pixel_ap",
    "pixel_auroc",
    "aupro",
    "pro_curve",
    "aupro_reference",
    "attention_metrics", "classification_metrics",
]

"""Data: safe image reading, dataset indexing (MVTec and folder-per-label layouts), splits, demo data."""

from core.data.dataset import (
    NORMAL_NAMES,
    DatasetIndex,
    ImageRecord,
    index_dataset,
    load_index,
    save_index,
)
from core.data.demo import demo_root, ensure_demo, make_demo_dataset
from core.data.images import IMAGE_EXTENSIONS, MAX_PIXELS_DEFAULT, read_image, read_image_bytes, read_mask
from core.data.splits import SPLIT_NAMES, hash_unit, holdout

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS_DEFAULT",
    "NORMAL_NAMES",
    "SPLIT_NAMES",
    "DatasetIndex",
    "ImageRecord",
    "demo_root",
    "ensure_demo",
    "hash_unit",
    "holdout",
    "index_dataset",
    "load_index",
    "make_demo_dataset",
    "read_image",
    "read_image_bytes",
    "read_mask",
    "save_index",
]

"""The workbench engine: data, backbones, features, detectors, metrics. Never imports streamlit."""

from core import config as _config  # noqa: F401  (sets the OpenMP wait policy before torch/faiss load)

__version__ = "0.1.0"

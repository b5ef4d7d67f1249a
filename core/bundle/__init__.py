"""Exported bundles: a tuned heatmap model that scores without torch (ONNX / OpenVINO feature graph + numpy + faiss).

``export`` (needs torch) writes a bundle from a model folder; ``runtime`` (never imports torch) scores with one;
``manifest`` reads and checks a bundle's manifest.json. This module imports nothing heavy, so the CLI can tell a
bundle from a model folder without loading torch.
"""

from __future__ import annotations

from pathlib import Path

MANIFEST_NAME = "manifest.json"


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a bundle manifest (a model folder holds config.json instead)."""
    p = Path(path)
    return p.is_dir() and (p / MANIFEST_NAME).is_file()

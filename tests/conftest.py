"""Shared fixtures: real data slices from ../shared/datasets and a temporary feature cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "20000")  # as core/config.py sets it (see there)

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "datasets"
MAGNETIC_TILE = SHARED / "magnetic_tile"


@pytest.fixture(scope="session")
def magnetic_tile() -> Path:
    if not MAGNETIC_TILE.is_dir():
        pytest.fail(f"real test data missing: {MAGNETIC_TILE} (see ../shared/datasets/README.md)")
    return MAGNETIC_TILE


@pytest.fixture()
def tmp_cache(tmp_path):
    from core.features import FeatureCache

    return FeatureCache(root=tmp_path / "features")

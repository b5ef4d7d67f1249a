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


@pytest.fixture(scope="session")
def models_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    old = os.environ.get("WORKBENCH_MODELS_DIR")
    os.environ["WORKBENCH_MODELS_DIR"] = str(root)
    yield root
    if old is None:
        os.environ.pop("WORKBENCH_MODELS_DIR", None)
    else:
        os.environ["WORKBENCH_MODELS_DIR"] = old


@pytest.fixture(scope="session")
def demo_root():
    from core.data import ensure_demo

    return ensure_demo()


@pytest.fixture(scope="session")
def fitted(models_root, demo_root):
    """A real PatchCore model on the demo (coreset ratio 0.05), fitted once for all page tests."""
    from core import workbench as wb

    out = wb.fit_model(demo_root, wb.FitSettings(detector="patchcore", options={"ratio": 0.05}), name="demo-pc")
    assert (out.folder / "config.json").is_file()
    return out.folder


@pytest.fixture(scope="session")
def hub_offline():
    """For tests of the offline path: skipped where the timm hub is reachable (there the fallback would download)."""
    from core.backbones import registry

    if registry.hub_reachable():
        pytest.skip("the timm hub is reachable: this test checks the offline path")


# Modules that fit on real data, train, start processes or a browser: `make test-fast` (-m "not slow") leaves them
# out. Everything else (unit tests, the demo data, the layering checks) runs in about 35 seconds.
SLOW_MODULES = {
    "test_app", "test_app_isolation", "test_browser", "test_bundle", "test_cascade", "test_cascade_views",
    "test_concurrency", "test_detector_contract", "test_detectors", "test_experiments", "test_faults", "test_gain",
    "test_gain_jobs", "test_highres", "test_input_safety", "test_scale", "test_score_images",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rpartition(".")[2] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)

"""One contract for every registered heatmap detector, as anomalib tests every model: fit on a small real slice of
magnetic_tile, score, save, load with the same scores, score each image the same alone and in a batch, and be
offered by the CLI and the app's fit form.

A toy detector written here (per-position mean of normal features; map = distance to it) is registered with one
line and passes the same contract: adding a detector is one module plus one registry line
(``core/detectors/registry.py``), nothing else.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import numpy as np
import pytest

from core.detectors import registry
from core.detectors.base import HeatmapDetector
from core.detectors.embedding import patch_embedding
from core.features import FeatureCache


@dataclass
class ToyConfig:
    backbone: str = "tf_efficientnet_lite0"
    layers: tuple[str, ...] = ()
    image_size: int = 64
    blur_sigma: float = 4.0
    seed: int = 0


class MeanDistance(HeatmapDetector):
    """Per-position mean of the normal images' features; map = Euclidean distance to it; score = map max."""

    kind = "toy-mean"
    config_class = ToyConfig

    def __init__(self, config: ToyConfig = ToyConfig()) -> None:
        self.cfg = config
        super().__init__(config.backbone, config.layers, config.image_size, config.blur_sigma, config.seed)
        self.mean: np.ndarray | None = None

    def embed(self, features):
        return patch_embedding(features, self.layers, neighbourhood=1)

    def fit_embeddings(self, features, progress):
        self.mean = self.embed(features).numpy().mean(axis=0)
        return {"mean": 0.0}

    def score_embeddings(self, features, leave_out=None):
        d = np.sqrt(((self.embed(features).numpy() - self.mean[None]) ** 2).sum(axis=1))
        return d.reshape(len(d), -1).max(axis=1), d, {"distance": 0.0}

    def state_arrays(self):
        return {"mean": self.mean}

    def load_state_arrays(self, arrays):
        self.mean = arrays["mean"].astype(np.float32)


@pytest.fixture()
def toy_registered():
    registry.register("toy-mean", MeanDistance)  # the one line a new detector needs (here at run time)
    yield
    registry.unregister("toy-mean")


# Small settings per detector, so that the contract runs in seconds; every other setting is the default.
QUICK = {"patchcore": {"image_size": 64, "ratio": 0.1, "rescore_ratio": 0.2},
         "padim": {"image_size": 64, "n_channels": 24},
         "toy-mean": {"image_size": 64}}


@pytest.fixture(scope="module")
def tiny_slice(tmp_path_factory, magnetic_tile):
    """10 normal training images and 3 + 3 test images of magnetic_tile, in MVTec layout."""
    root = tmp_path_factory.mktemp("slice") / "tiles"
    picks = {"train/good": sorted((magnetic_tile / "train" / "good").glob("*"))[:10],
             "test/good": sorted((magnetic_tile / "test" / "good").glob("*"))[:3],
             "test/crack": sorted((magnetic_tile / "test" / "crack").glob("*"))[:3]}
    for sub, files in picks.items():
        (root / sub).mkdir(parents=True)
        for f in files:
            shutil.copy(f, root / sub / f.name)
    return root


@pytest.mark.parametrize("kind", [*registry.detector_kinds(), "toy-mean"])
def test_every_detector_keeps_the_contract(kind, toy_registered, tiny_slice, tmp_path):
    cache = FeatureCache(root=tmp_path / "features")
    det = registry.make_detector(kind, **QUICK[kind])
    train = sorted(str(p) for p in (tiny_slice / "train" / "good").iterdir())
    test = sorted(str(p) for p in (tiny_slice / "test").rglob("*.png")) or sorted(
        str(p) for p in (tiny_slice / "test").rglob("*") if p.is_file())
    report = det.fit(train, cache=cache)
    assert report.n_fit_images >= 2 and det.threshold > 0
    res = det.score_paths(test, cache=cache)
    assert res.ok == list(range(len(test))) and np.isfinite(res.scores).all()
    assert res.maps.shape == (len(test), *det.input_hw) and np.isfinite(res.maps).all()
    defect = np.array(["crack" in p for p in test])
    assert res.scores[defect].mean() > res.scores[~defect].mean(), "cracks score above good tiles on average"

    folder = det.save(tmp_path / "model")
    again = registry.load_detector(folder)
    assert type(again) is type(det)
    np.testing.assert_allclose(again.score_paths(test, cache=cache).scores, res.scores, rtol=1e-5)
    alone = np.array([float(det.score_paths([p], cache=cache).scores[0]) for p in test])
    np.testing.assert_allclose(alone, res.scores, rtol=1e-5)  # an image scores the same in any batch


def test_the_cli_and_the_fit_form_offer_every_registered_detector(toy_registered, tiny_slice, tmp_path, capsys):
    from core import workbench as wb
    from core.cli import build_parser
    from core.cli import main as cli_main

    fit = next(a for a in build_parser()._subparsers._group_actions[0].choices["fit"]._actions
               if a.dest == "detector")
    assert set(fit.choices) == set(registry.detector_kinds()) >= {"patchcore", "padim", "toy-mean"}
    assert "toy-mean" in wb.detector_kinds()
    for kind in registry.detector_kinds():
        for f in wb.detector_form(kind):  # every form field builds a detector with its default
            assert wb.FitSettings(detector=kind, options={f.name: f.default}).build().kind == kind
    out = tmp_path / "toy"
    assert cli_main(["fit", str(tiny_slice), "--detector", "toy-mean", "--image-size", "64", "--out", str(out)]) == 0
    assert type(registry.load_detector(out)) is MeanDistance


def test_unknown_detectors_and_settings_are_refused_with_the_choices():
    from core.errors import WorkbenchError

    with pytest.raises(WorkbenchError, match="Choose one of: patchcore, padim"):
        registry.detector_class("resnet-knn")
    with pytest.raises(WorkbenchError, match="has no setting colour"):
        registry.make_detector("padim", colour="red")

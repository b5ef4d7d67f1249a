"""Issue 22, item 4: review feedback on real models. "Mark as normal" lowers a false alarm's score without a refit
(PatchCore: bank rows by the coreset rule; PaDiM: the Gaussians as a refit would make them), fixes the threshold
again, keeps the previous model as a restorable version and logs the decision; "mark as defect" reaches the gate's
training labels."""

from __future__ import annotations

import csv
import hashlib
import io
import shutil

import numpy as np
import pytest

from core import workbench as wb
from core.features import FeatureCache
from tests.test_app import _errors, _no_exceptions, _page


@pytest.fixture()
def model_copy(fitted, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(fitted, folder)
    shutil.rmtree(folder / "review", ignore_errors=True)
    shutil.rmtree(folder / "versions", ignore_errors=True)
    return folder


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _a_false_alarm(folder, demo_root):
    """The highest-scored demo test image: a clear alarm, which the engineer here says is a normal part."""
    det = wb.load_model(folder)
    images = sorted(p for p in (demo_root / "test").rglob("*.png") if p.parent.name != "good")
    scores = det.score_paths([str(p) for p in images], cache=FeatureCache()).scores
    assert scores.max() > det.threshold
    return images[int(np.argmax(scores))], float(scores.max())


def test_mark_as_normal_learns_keeps_a_version_and_restores(model_copy, demo_root):
    original = _sha(model_copy / "arrays.safetensors")
    bank_before = len(wb.load_model(model_copy).bank)
    image, score = _a_false_alarm(model_copy, demo_root)
    out = wb.mark_normal(model_copy, [(image.name, image.read_bytes())], "qa engineer")
    row = out.rows[0]
    assert row["score_before"] == pytest.approx(score, rel=1e-5)
    assert row["score_after"] < row["threshold_after"] < row["score_before"], "the marked image now looks normal"
    det = wb.load_model(model_copy)  # the folder loads with the grown bank and the re-fixed threshold
    assert len(det.bank) == bank_before + out.change["bank_rows_added"] > bank_before
    assert det.threshold == pytest.approx(out.change["threshold_after"])
    assert out.version_kept == 1 and [v["version"] for v in wb.list_versions(model_copy)] == [1]
    log = list(csv.DictReader(io.StringIO(wb.review_log_csv(model_copy))))
    assert log[0]["who"] == "qa engineer" and log[0]["action"] == "mark as normal" and log[0]["image"] == image.name
    kept = wb.restore_version(model_copy, 1, "qa engineer")
    assert kept == 2 and _sha(model_copy / "arrays.safetensors") == original
    assert len(wb.load_model(model_copy).bank) == bank_before
    from core.errors import WorkbenchError

    with pytest.raises(WorkbenchError, match="no version 9"):
        wb.restore_version(model_copy, 9, "qa engineer")


def test_padim_learns_normals_as_a_refit_would(demo_root, tmp_path):
    from core.detectors import Padim, PadimConfig
    from core.detectors.padim import gaussian_statistics

    cache = FeatureCache(root=tmp_path / "features")
    train = sorted(str(p) for p in (demo_root / "train" / "good").glob("*.png"))
    det = Padim(PadimConfig(image_size=64, n_channels=24))
    det.fit(train, cache=cache)
    fitted_on = list(det.train_paths)
    extra = sorted(str(p) for p in (demo_root / "test" / "good").glob("*.png"))[:4]
    det.add_normal_images(extra, cache=cache)
    feats = det.extractor(cache).extract_paths(fitted_on + extra).features
    emb = det.embed(feats)
    n, d, h, w = emb.shape
    mean, inv = gaussian_statistics(emb.permute(2, 3, 0, 1).reshape(h * w, n, d), det.cfg.regularisation)
    np.testing.assert_allclose(det.mean, mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(det.inv_cov, inv, rtol=2e-2, atol=2e-3 * np.abs(inv).max())


def test_review_from_the_heatmaps_page_and_the_gate_learns_the_defect(model_copy):
    at = _page("app_pages/4_Heatmaps.py", model_copy).run()
    _no_exceptions(at)
    at.button(key="hm_rv_normal").click().run()
    _no_exceptions(at)
    assert not _errors(at), _errors(at)
    assert any("Learnt as normal" in s.value for s in at.success)
    assert wb.list_versions(model_copy)
    at.button(key="hm_rv_defect").click().run()
    assert any("as a defect" in s.value for s in at.success)
    assert len(wb.review_labels(model_copy)) == 1
    out = wb.fit_gate(model_copy, "stats")
    assert out.report["review_labels"] == 1
    with pytest.raises(Exception, match="not a usable reviewer name"):
        wb.mark_defect(model_copy, [("x.png", b"")], "../../x" * 20)

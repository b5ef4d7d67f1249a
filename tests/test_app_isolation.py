"""Two app sessions keep separate state, and the app reads datasets only under its configured roots.

Real model (PatchCore on the demo, fitted once by ``tests/test_app.py``'s fixtures), real pages under AppTest.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core import workbench as wb
from core.errors import DatasetError
from tests.test_app import _matrix, _no_exceptions, _page


def test_two_sessions_keep_separate_thresholds(fitted):
    a = _page("app_pages/3_Thresholds.py", fitted).run()
    b = _page("app_pages/3_Thresholds.py", fitted).run()
    _no_exceptions(a)
    _no_exceptions(b)
    start_b = _matrix(b)
    lo = a.slider(key="th_slider").min
    a.slider(key="th_slider").set_value(lo).run()
    assert _matrix(a)[1][1] == 0, "session A calls everything anomalous at its lowest threshold"
    b.run()
    assert _matrix(b) == start_b, "session B's matrix must not follow session A's slider"
    assert b.slider(key="th_slider").value != pytest.approx(lo)
    assert b.number_input(key="th_number").value == pytest.approx(wb.model_info(fitted).threshold)


def test_data_roots_are_enforced(tmp_path, monkeypatch, demo_root):
    import core.data.locate as locate

    root = tmp_path / "roots"
    inside = root / "good_set"
    inside.mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "sneaky").symlink_to(outside, target_is_directory=True)
    monkeypatch.setattr(locate, "DATA_ROOTS", [root])

    assert wb.check_browsable(inside) == inside.resolve()
    assert wb.check_browsable(demo_root) == Path(demo_root).resolve(), "the built-in demo is always readable"
    for bad in (outside, root / "sneaky", root / ".." / "elsewhere", Path("/etc")):
        with pytest.raises(DatasetError) as err:
            wb.check_browsable(bad)
        assert "outside the folders the app may read" in str(err.value) and "WORKBENCH_DATA_ROOTS" in str(err.value)
    with pytest.raises(DatasetError):
        wb.dataset_overview(outside)
    with pytest.raises(DatasetError):
        wb.dataset_splits("/etc")


def test_model_pointing_outside_the_roots_is_not_followed(fitted, models_root, tmp_path):
    """A model folder made elsewhere names the dataset it was fitted on; the pages must not read that folder."""
    foreign = models_root / "foreign-dataset"
    shutil.copytree(fitted, foreign)
    elsewhere = tmp_path / "private"
    shutil.copytree(Path(wb.model_info(fitted).dataset), elsewhere)
    cfg = json.loads((foreign / "config.json").read_text())
    cfg["dataset"] = str(elsewhere)
    (foreign / "config.json").write_text(json.dumps(cfg))
    at = _page("app_pages/2_Scores.py", foreign).run()
    _no_exceptions(at)
    warnings = " ".join(w.value for w in at.warning)
    assert "outside the folders the app may read" in warnings, warnings
    assert str(elsewhere) not in " ".join(str(df.value) for df in at.dataframe)


def test_model_list_skips_the_gain_models_folder(fitted, tmp_path):
    """``<models>/gain/`` holds GAIN-MTL models (the CAM page's); the heatmap model list must not show it as a
    broken model."""
    root = tmp_path / "models"
    shutil.copytree(fitted, root / "pc")
    (root / "gain" / "S1").mkdir(parents=True)
    names = [m.name for m in wb.list_models(root)]
    assert names == ["pc"], names

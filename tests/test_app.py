"""The Streamlit pages, driven headless with streamlit.testing.v1.AppTest on the demo data and a real model.

One small PatchCore model is fitted once per session (ratio 0.05, into a temporary models folder set through
WORKBENCH_MODELS_DIR); nothing about the model is mocked. AppTest has no file_uploader support, so the
upload test replaces ``st.file_uploader`` (only the browser's file picker) with the bytes of real files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core import workbench as wb

ROOT = Path(__file__).resolve().parent.parent

TIMEOUT = 180


def _page(path: str, model_dir: Path | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / path), default_timeout=TIMEOUT)
    if model_dir is not None:
        at.session_state["model_dir"] = str(model_dir)
    return at


def _no_exceptions(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


# ------------------------------------------------------------------------------------------------------------
# Home page: dataset, fitting, model management


def test_home_shows_demo_and_fits_a_model(models_root, demo_root):
    at = _page("app.py").run()
    _no_exceptions(at)
    assert at.selectbox(key="ds_name").value == "demo"
    assert at.dataframe, "the split table is shown"
    splits = at.dataframe[0].value
    assert set(splits["split"]) >= {"train_normal", "val_mix", "test"}
    for key in ("fit_detector", "fit_backbone", "fit_size", "fit_coreset"):
        assert at.selectbox(key=key) is not None
    assert at.number_input(key="fit_ratio").value == pytest.approx(0.01)
    precision = at.selectbox(key="fit_precision")  # the backbone's arithmetic is a form field too
    assert precision.value == "float32" and "bfloat16" in precision.options

    at.selectbox(key="fit_coreset").set_value("random")
    at.number_input(key="fit_ratio").set_value(0.02)
    at.text_input(key="fit_name").set_value("home-fit")
    at.button(key="fit_go").click().run(timeout=TIMEOUT)
    _no_exceptions(at)
    assert not _errors(at), _errors(at)
    assert (models_root / "home-fit" / "config.json").is_file()
    assert json.loads((models_root / "home-fit" / "config.json").read_text())["params"]["precision"] == "float32"
    assert at.session_state["model_dir"] == str(models_root / "home-fit")
    done = " ".join(s.value for s in at.success)
    assert "home-fit" in done and "extraction" in done and "calibration" in done and "hits" in done
    # the message says how many images built the model and how the threshold was calibrated (issue 19, 6)
    assert re.search(r"fitted on all \d+ training images; threshold calibrated on \d+ of them", done), done
    # the sidebar names the new model in the same run, not after the next one (issue 19, 6)
    side = " ".join(c.value for c in at.sidebar.caption)
    assert "home-fit" in side and "No model" not in side, side
    assert any("outlined in magenta" in c.value for c in at.caption), "the thumbnails' legend names their colour"
    models_table = next(df.value for df in at.dataframe if "kind" in df.value.columns)
    assert "details" not in models_table.columns, "the long columns are shown under the table, not cut off in it"


def test_rename_and_delete_with_confirmation(models_root, demo_root, fitted):
    out = wb.fit_model(demo_root, wb.FitSettings(options={"coreset": "random", "ratio": 0.01}), name="to-manage")
    at = _page("app.py").run()
    at.selectbox(key="models_pick").set_value("to-manage").run()
    at.text_input(key="models_newname").set_value("managed")
    at.button(key="models_rename").click().run()
    _no_exceptions(at)
    assert not out.folder.exists() and (models_root / "managed").is_dir()

    at.selectbox(key="models_pick").set_value("managed").run()
    at.button(key="models_delete").click().run()
    assert (models_root / "managed").is_dir(), "nothing is deleted before the confirmation"
    assert any("Delete managed" in w.value for w in at.warning)
    at.button(key="models_delete_yes").click().run()
    _no_exceptions(at)
    assert not (models_root / "managed").exists()
    assert (fitted / "config.json").is_file()


def test_bad_model_name_is_a_message(models_root, fitted):
    at = _page("app.py").run()
    at.text_input(key="fit_name").set_value("../escape")
    at.button(key="fit_go").click().run(timeout=TIMEOUT)
    _no_exceptions(at)
    assert any("not a usable model name" in e for e in _errors(at))


# ------------------------------------------------------------------------------------------------------------
# Scores, Thresholds, Heatmaps


def test_scores_page(fitted):
    at = _page("app_pages/2_Scores.py", fitted).run()
    _no_exceptions(at)
    assert not _errors(at), _errors(at)
    assert at.multiselect(key="sc_splits").value == ["test"]
    charts = [c for c in at.get("plotly_chart")]
    assert len(charts) >= 3, "histogram, ROC and PR"
    table = at.dataframe[0].value
    assert 0.5 <= float(table["AUROC"].iloc[0]) <= 1.0
    at.radio(key="sc_by").set_value("defect").run()
    at.radio(key="sc_log").set_value("log").run()
    _no_exceptions(at)
    assert not _errors(at)


def _matrix(at: AppTest):
    for df in at.dataframe:
        v = df.value
        if "predicted anomalous" in v.columns:
            return v.to_numpy().tolist()
    raise AssertionError("no confusion matrix")


def test_threshold_slider_changes_confusion_and_saves(fitted):
    at = _page("app_pages/3_Thresholds.py", fitted).run()
    _no_exceptions(at)
    assert not _errors(at), _errors(at)
    slider = at.slider(key="th_slider")
    before = _matrix(at)
    lo, hi = slider.min, slider.max
    at.slider(key="th_slider").set_value(lo).run()
    low = _matrix(at)
    assert low[1][1] == 0 and low[0][1] == 0, "everything is called anomalous at the lowest threshold"
    at.slider(key="th_slider").set_value(hi).run()
    high = _matrix(at)
    assert high[0][0] == 0 and high[1][0] == 0, "nothing is called anomalous at the highest threshold"
    assert low != high and (before != low or before != high)
    assert at.number_input(key="th_number").value == pytest.approx(hi)

    at.number_input(key="th_recall").set_value(1.0)
    at.button(key="th_pick").click().run()
    picked = _matrix(at)
    assert picked[0][1] == 0, "recall 1: no missed defect"

    # save a threshold above the normals' median and read it back from config.json
    import json

    cfg = json.loads((fitted / "config.json").read_text())
    target = cfg["normalisation"]["image_median"] + 0.75 * (hi - cfg["normalisation"]["image_median"])
    at.number_input(key="th_number").set_value(target).run()
    at.button(key="th_save").click().run()
    _no_exceptions(at)
    assert not _errors(at), _errors(at)
    cfg2 = json.loads((fitted / "config.json").read_text())
    assert cfg2["normalisation"]["image_threshold"] == pytest.approx(target)
    assert cfg2["arrays_sha256"] == cfg["arrays_sha256"]
    assert wb.load_model(fitted).threshold == pytest.approx(target)


def _cascade_numbers(at: AppTest) -> dict[str, str]:
    out = {m.label: m.value for m in at.metric if m.label in ("Heatmap call rate", "Expected mean latency")}
    out["matrix"] = str(_cascade_matrix(at))
    return out


def _cascade_matrix(at: AppTest):
    hits = [df.value for df in at.dataframe if "predicted anomalous" in df.value.columns]
    assert len(hits) == 2, "heatmap and cascade confusion matrices"
    return hits[1].to_numpy().tolist()


def test_gate_fit_and_cascade_thresholds(fitted, monkeypatch):
    import json

    # no gate yet: the Thresholds page points home
    at = _page("app_pages/3_Thresholds.py", fitted).run()
    _no_exceptions(at)
    assert any("Fit a gate" in i.value for i in at.info)

    # fit the (nearly free) stats gate from the home page
    at = _page("app.py", fitted).run()
    at.selectbox(key="gate_kind").set_value("stats")
    at.button(key="gate_go").click().run(timeout=TIMEOUT)
    _no_exceptions(at)
    assert not _errors(at), _errors(at)
    assert any("Fitted the **stats** gate" in s.value for s in at.success)
    cdir = wb.cascade_dir(fitted)
    assert (cdir / "gate" / "config.json").is_file() and (cdir / "measured_val_mix.csv").is_file()

    # slider moves never call a model: forbid scoring and gate calls from here on
    def boom(*a, **k):
        raise AssertionError("a model was called on a slider move")

    at = _page("app_pages/3_Thresholds.py", fitted).run()
    _no_exceptions(at)
    assert not _errors(at), _errors(at)
    from core.cascade.gates.base import Gate
    from core.detectors import PatchCore

    monkeypatch.setattr(Gate, "score_images", boom)
    monkeypatch.setattr(PatchCore, "score_images", boom)
    monkeypatch.setattr(PatchCore, "score_paths", boom)
    monkeypatch.setattr(wb, "score_split", boom)

    at.slider(key="cas_range").set_value((0.0, 1.0)).run()
    _no_exceptions(at)
    all_heat = _cascade_numbers(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Heatmap call rate"] == "100.0%"
    at.slider(key="cas_range").set_value((0.5, 0.5)).run()
    _no_exceptions(at)
    gate_mostly = _cascade_numbers(at)
    assert gate_mostly != all_heat
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Heatmap call rate"] != "100.0%"
    assert at.number_input(key="cas_low").value == pytest.approx(0.5)

    at.number_input(key="cas_low").set_value(0.1).run()
    assert at.slider(key="cas_range").value == pytest.approx((0.1, 0.5))

    at.number_input(key="cas_recall").set_value(0.5)
    at.button(key="cas_pick").click().run()
    _no_exceptions(at)
    assert at.info, "the pick explains its choice"

    at.slider(key="cas_range").set_value((0.2, 0.7)).run()
    at.button(key="cas_save").click().run()
    _no_exceptions(at)
    assert not _errors(at), _errors(at)
    pol = json.loads((cdir / "cascade.json").read_text())["policy"]
    assert (pol["mode"], pol["t_low"], pol["t_high"]) == ("cascade", pytest.approx(0.2), pytest.approx(0.7))
    from core.cascade import Policy

    Policy(**pol)  # loads as a valid policy


def test_heatmaps_page(fitted):
    at = _page("app_pages/4_Heatmaps.py", fitted).run()
    _no_exceptions(at)
    assert not _errors(at), _errors(at)
    assert len(at.get("imgs")) >= 1
    assert any("most anomalous patch" in s.value for s in at.subheader)
    at.multiselect(key="hm_outcome").set_value(["FN"]).run()
    _no_exceptions(at)
    at.multiselect(key="hm_outcome").set_value(["TP"]).run()
    at.radio(key="hm_sort").set_value("lowest first").run()
    _no_exceptions(at)
    assert not _errors(at)


# ------------------------------------------------------------------------------------------------------------
# Score images (uploads)


def _score_page_with_uploads(tmp_path: Path, files: list[tuple[str, bytes]], model_dir: Path) -> AppTest:
    from tests.app_harness import score_page_with_uploads

    return score_page_with_uploads(tmp_path, files, model_dir, timeout=TIMEOUT)[0]


def test_bad_upload_shows_error_while_good_one_is_scored(fitted, demo_root, tmp_path):
    good = sorted((demo_root / "test" / "scratch").glob("*.png"))[0].read_bytes()
    files = [
        ("good_scratch.png", good),
        ("notes.png", b"this is a text file renamed to png\n" * 3),
        ("broken.png", good[:300]),
    ]
    at = _score_page_with_uploads(tmp_path, files, fitted)
    at.session_state["si_cascade"] = False  # every image to the heatmap model (routing: tests/test_score_images.py)
    at.run()
    _no_exceptions(at)
    errs = _errors(at)
    assert any("notes.png" in e for e in errs) and any("broken.png" in e for e in errs), errs
    assert not any("good_scratch.png" in e for e in errs)
    table = at.dataframe[0].value
    row = table[table["file"] == "good_scratch.png"].iloc[0]
    assert row["decision"] in ("normal", "anomalous") and np.isfinite(row["score"]) and row["ms"] > 0
    assert list(table[table["decision"] == "error"]["file"]) == ["notes.png", "broken.png"]
    assert len(at.get("imgs")) >= 1


def test_pages_without_a_model_point_home(models_root, monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_MODELS_DIR", str(tmp_path / "empty"))
    for page in ("app_pages/2_Scores.py", "app_pages/3_Thresholds.py", "app_pages/4_Heatmaps.py",
                 "app_pages/5_Score_images.py"):
        at = _page(page).run()
        _no_exceptions(at)
        assert any("Fit one on the home page" in i.value for i in at.info), page


# ------------------------------------------------------------------------------------------------------------
# Service layer pieces the pages rely on


def test_zip_extraction_refuses_unsafe_paths(tmp_path, monkeypatch, demo_root):
    import io
    import zipfile

    from core.errors import DatasetError

    monkeypatch.setattr(wb.zip_uploads, "UPLOADS_DIR", tmp_path / "uploads")
    for bad in ("../evil.png", "/abs/evil.png", "ok/../../evil.png", "C:/evil.png"):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("ds/train/good/a.png", b"x")
            zf.writestr(bad, b"x")
        with pytest.raises(DatasetError):
            wb.extract_zip(buf.getvalue(), "bad.zip")
    assert not (tmp_path / "evil.png").exists()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        picks = sorted((demo_root / "train" / "good").glob("*.png"))[:6] + sorted(demo_root.glob("test/*/00*.png"))
        for p in picks:
            zf.write(p, f"mydata/{p.relative_to(demo_root).as_posix()}")
    root = wb.extract_zip(buf.getvalue(), "good.zip")
    assert root.name == "mydata" and (root / "train" / "good").is_dir()
    assert root.resolve().is_relative_to((tmp_path / "uploads").resolve())


def test_threshold_for_recall():
    labels = np.array([0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.5, 0.2, 0.6, 0.7, 0.9])
    assert wb.threshold_for_recall(labels, scores, 1.0) == 0.2
    assert wb.threshold_for_recall(labels, scores, 0.75) == 0.6
    assert wb.threshold_for_recall(labels, scores, 0.5) == 0.7


def test_fast_cascade_sweep_matches_the_engine():
    """The page's prefix-sum sweep gives the engine's rows and Pareto front (p95 latency aside)."""
    from core.cascade import Measured, pareto_front, sweep

    rng = np.random.default_rng(0)
    n = 400
    m = Measured(rng.integers(0, 2, n), np.round(rng.random(n), 2), rng.random(n), rng.normal(30, 2, n),
                 20 + 10 * rng.random(n))
    for thr in (28.0, 30.0, 33.0):
        ref = sweep(m, thr)
        rows, front = wb.cascade_sweep(m, thr)
        assert len(rows) == len(ref)
        for a, b in zip(ref, rows):
            for k, v in a.items():
                if k == "latency_p95_ms" and a["mode"] == "cascade":
                    continue
                assert b[k] == pytest.approx(v, abs=1e-12) if isinstance(v, float) else b[k] == v, (k, a, b)
        key = lambda r: (r["mode"], r["t_low"], r["t_high"], r["gate_threshold"])  # noqa: E731
        assert [key(r) for r in front] == [key(r) for r in pareto_front(ref)]

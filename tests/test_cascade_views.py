"""Issue 22: the Thresholds page's view of the cascade, on a real model (PatchCore on the demo, fitted once by
``tests/test_app.py``'s fixtures) with a real stats gate: the gate-score histogram with the band T_low / T_high
cut it into and its counts, the held-out check on test_mix, and a cascade chart whose every point is computed
with the same definitions at the heatmap threshold in use."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from core import workbench as wb
from tests.test_app import _errors, _no_exceptions, _page
from ui.charts import selected_band


@pytest.fixture(scope="module")
def gated(fitted, tmp_path_factory):
    model = tmp_path_factory.mktemp("gated") / "model"
    shutil.copytree(fitted, model)
    wb.fit_gate(model, "stats")
    return model


def _bands(at) -> dict[str, dict]:
    table = next(df.value for df in at.dataframe if "to heatmap" in df.value.columns)
    return {r["images"]: r for r in table.to_dict("records")}


def test_gate_histogram_counts_follow_the_band(gated):
    at = _page("app_pages/3_Thresholds.py", gated).run()
    _no_exceptions(at)
    assert not _errors(at), _errors(at)
    spec = next(json.loads(c.proto.spec) for c in at.get("arrow_vega_lite_chart") if "T_low" in c.proto.spec)
    assert any(p.get("name") == "band" for p in spec.get("params", [])), \
        "the histogram carries the interval selection that sets T_low / T_high"
    state = wb.load_cascade(gated)
    n_norm, n_def = int((state.measured.labels == 0).sum()), int((state.measured.labels == 1).sum())
    at.number_input(key="cas_low").set_value(0.0).run()
    at.number_input(key="cas_high").set_value(1.0).run()
    wide = _bands(at)
    assert wide["normal"]["total"] == n_norm and wide["defective"]["total"] == n_def
    assert wide["normal"]["gate-normal"] == 0 and wide["defective"]["gate-normal"] == 0
    at.number_input(key="cas_high").set_value(0.5).run()
    at.number_input(key="cas_low").set_value(0.5).run()
    narrow = _bands(at)
    g = state.measured.gate_scores
    assert narrow["normal"]["gate-normal"] + narrow["defective"]["gate-normal"] == int((g < 0.5).sum())
    assert narrow["normal"]["gate-defect"] + narrow["defective"]["gate-defect"] == int((g > 0.5).sum())
    for row in narrow.values():
        assert row["gate-normal"] + row["to heatmap"] + row["gate-defect"] == row["total"]
    at.toggle(key="cas_by_class").set_value(True).run()
    per_class = _bands(at)
    assert set(per_class) - {"normal"} == {d for d, y in zip(state.defects, state.measured.labels) if y == 1}


def test_selected_band_reads_the_charts_selection_state():
    assert selected_band({"selection": {"band": {"bin_start": [0.62, 0.21]}}}) == (0.21, 0.62)
    assert selected_band({"selection": {"band": {}}}) is None
    assert selected_band(None) is None


def test_held_out_check_measures_test_mix_once(gated):
    at = _page("app_pages/3_Thresholds.py", gated).run()
    assert not (wb.cascade_dir(gated) / "measured_test_mix.csv").exists()
    at.button(key="cas_heldout").click().run()
    _no_exceptions(at)
    assert not _errors(at), _errors(at)
    table = next(df.value for df in at.dataframe if "false-alarm rate" in df.value.columns)
    assert list(table["split"]) == ["val_mix (tuned on)", "test_mix (held out)"]
    cached = wb.cascade_dir(gated) / "measured_test_mix.csv"
    assert cached.is_file()
    stamp = cached.stat().st_mtime_ns
    at.run()
    assert cached.stat().st_mtime_ns == stamp, "measured once, read back afterwards"
    _, test = wb.held_out_measurements(gated)
    from core.data import index_dataset

    assert len(test.labels) == len(index_dataset(demo_root_path(gated)).split("test_mix"))


def demo_root_path(model):
    return wb.model_info(model).dataset


def test_every_chart_point_uses_the_same_definitions(gated):
    state = wb.load_cascade(gated)
    heat_thr = float(np.median(state.measured.heat_scores))  # a threshold other than the one chosen at fit
    rows, front = wb.cascade_sweep(state.measured, heat_thr)
    for r in rows:
        if r["mode"] == "cascade":
            p = wb.cascade_point(state.measured, r["t_low"], r["t_high"], heat_thr)
            assert r["recall"] == pytest.approx(p["recall"]) and r["false_alarm_rate"] == pytest.approx(
                p["false_alarm_rate"]) and r["precision"] == pytest.approx(p["precision"])
    marks = wb.operating_marks(state, rows, 0.2, 0.8, heat_thr)
    chosen = state.config["choice"]["chosen"]
    if chosen["mode"] == "cascade":
        again = wb.cascade_point(state.measured, chosen["t_low"], chosen["t_high"], heat_thr)
        assert marks["automatic choice"]["recall"] == pytest.approx(again["recall"])
    y = state.measured.labels
    gate_only = marks["gate only"]
    fired = state.measured.gate_scores >= gate_only["gate_threshold"]
    assert gate_only["false_alarm_rate"] == pytest.approx(float(fired[y == 0].mean())), "false alarms counted"
    at = _page("app_pages/3_Thresholds.py", gated).run()
    at.radio(key="cas_second").set_value("false-alarm rate").run()
    fig = json.loads(next(c.proto.spec for c in at.get("plotly_chart") if "Pareto front" in c.proto.spec))
    names = {t["name"] for t in fig["data"]}
    assert {"heatmap only", "gate only", "current point"} <= names
    assert fig["layout"]["yaxis2"]["title"]["text"].startswith("false-alarm rate")
    front_trace = next(t for t in fig["data"] if t["name"].startswith("Pareto front"))
    assert front_trace["mode"] == "lines+markers"

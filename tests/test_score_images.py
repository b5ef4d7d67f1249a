"""Issue 22, items 2 and 7: the Score images page routes every image through the model's cascade (gate-normal /
heatmap / gate-defect), scores a folder or a zip as well as files, keeps its results until cleared, and writes a
CSV naming the model and thresholds and a thresholds JSON that ``python -m core score --thresholds`` reads.

Real model (PatchCore on the demo) with a real stats gate, real pages under AppTest, real CLI.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import zipfile

import numpy as np
import pytest

from core import workbench as wb
from core.detectors import PatchCore
from core.errors import WorkbenchError
from tests.app_harness import score_page_with_uploads
from tests.test_app import TIMEOUT, _errors, _no_exceptions


@pytest.fixture(scope="module")
def gated(fitted, tmp_path_factory):
    model = tmp_path_factory.mktemp("routed") / "model"
    shutil.copytree(fitted, model)
    shutil.rmtree(wb.cascade_dir(model), ignore_errors=True)
    wb.fit_gate(model, "stats")
    state = wb.load_cascade(model)
    g = np.sort(state.measured.gate_scores)
    # a band that leaves images on both sides of it, so that all three routes occur
    wb.save_cascade_policy(model, float(np.quantile(g, 0.3)), float(np.quantile(g, 0.7)),
                           float(wb.model_info(model).threshold))
    return model


def _demo_files(demo_root, n=12):
    picks = sorted(demo_root.glob("test/*/*.png"))[:: max(1, len(sorted(demo_root.glob("test/*/*.png"))) // n)][:n]
    return [(p.name, p.read_bytes()) for p in picks]


def test_uploads_are_routed_and_gate_decided_images_never_reach_the_heatmap_model(gated, demo_root, tmp_path,
                                                                                  monkeypatch):
    calls = []
    real = PatchCore.score_images

    def counted(self, images):
        calls.append(len(images))
        return real(self, images)

    monkeypatch.setattr(PatchCore, "score_images", counted)  # a spy: the real model still scores
    files = _demo_files(demo_root)
    at, _ = score_page_with_uploads(tmp_path, files, gated, timeout=TIMEOUT)
    at.run()
    _no_exceptions(at)
    assert not _errors(at), _errors(at)
    table = at.dataframe[0].value
    cascade = wb.cascade_for_scoring(gated)
    for _, row in table.iterrows():
        g = row["gate_score"]
        want = "gate-normal" if g < cascade.t_low else "gate-defect" if g > cascade.t_high else "heatmap"
        assert row["route"] == want, row.to_dict()
        assert (row["route"] == "heatmap") == np.isfinite(row["score"]), "a heatmap score only where it was drawn"
    n_heat = int((table["route"] == "heatmap").sum())
    assert set(table["route"]) >= {"heatmap"} and len(set(table["route"])) >= 2, table["route"].tolist()
    assert len(calls) == n_heat, "the heatmap model ran once per routed image and never for the others"
    done = " ".join(s.value for s in at.success)
    assert "heatmap call rate" in done
    # bypass: every image goes to the heatmap model
    at.toggle(key="si_cascade").set_value(False).run()
    assert set(at.dataframe[0].value["route"]) == {"heatmap"}


def test_results_stay_until_cleared_and_name_the_model(gated, demo_root, tmp_path):
    from tests.app_harness import set_uploads

    at, folder = score_page_with_uploads(tmp_path, _demo_files(demo_root, 3), gated, timeout=TIMEOUT)
    at.run()
    first = at.dataframe[0].value
    set_uploads(folder, [])  # the user left the page: the uploader is empty again
    at.run()
    _no_exceptions(at)
    assert at.dataframe and at.dataframe[0].value.equals(first), "results are kept in the session"
    csv_text = next(b for b in at.get("download_button") if b.proto.label.startswith("Download results"))
    assert csv_text is not None
    key, results, context = at.session_state["si_results"]
    rows = list(csv.DictReader(io.StringIO(wb.results_csv(results, 1.0, context))))
    assert rows[0]["model"] == "model" and rows[0]["model_version"] and rows[0]["t_low"] and rows[0]["threshold"]
    at.button(key="si_clear").click().run()
    assert not at.dataframe and any("Choose images" in i.value for i in at.info)


def test_folder_and_zip_sources(gated, demo_root, tmp_path):
    at, _ = score_page_with_uploads(tmp_path, [], gated, timeout=TIMEOUT)
    at.run()
    at.radio(key="si_source").set_value("A folder under the data roots").run()
    at.text_input(key="si_folder").input(str(demo_root / "test" / "good")).run()
    _no_exceptions(at)
    n_good = len(list((demo_root / "test" / "good").glob("*.png")))
    assert len(at.dataframe[0].value) == n_good
    at.text_input(key="si_folder").input("/etc").run()
    assert any("outside the folders the app may read" in e for e in _errors(at)), _errors(at)

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in _demo_files(demo_root, 4):
            zf.writestr(f"batch/{name}", data)
        zf.writestr("batch/readme.txt", b"not an image")
    got = wb.images_from_zip(buf.getvalue(), "batch.zip")
    assert len(got) == 4 and all(n.startswith("batch/") and n.endswith(".png") for n, _ in got)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.png", b"\0" * 40_000_000)
    with pytest.raises(WorkbenchError, match="zip bomb"):
        wb.images_from_zip(bomb.getvalue(), "bomb.zip")


def test_cli_scores_with_a_downloaded_thresholds_file(gated, demo_root, tmp_path, capsys):
    from core.cli import main as cli_main

    info = wb.model_info(gated)
    images = sorted(demo_root.glob("test/*/*.png"))[:6]
    high = tmp_path / "high.json"
    high.write_text(wb.thresholds_json(info, 1e9))
    out = tmp_path / "s.csv"
    argv = ["score", str(gated), *map(str, images), "--thresholds", str(high), "--csv", str(out)]
    assert cli_main([*argv, "--no-cascade"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert rows and {r["decision"] for r in rows} == {"normal"}, "a threshold of 1e9 calls nothing anomalous"
    assert "route" not in rows[0], "--no-cascade: the heatmap model alone"
    # through the cascade, with the file's T_low / T_high: (0, 1) sends every image to the heatmap model
    cascade = wb.CascadeSettings(None, 0.0, 1.0, "stats")
    high.write_text(wb.thresholds_json(info, 1e9, cascade))
    assert cli_main(argv) == 0
    rows = list(csv.DictReader(out.open()))
    assert {r["route"] for r in rows} == {"heatmap"} and {r["decision"] for r in rows} == {"normal"}
    other = json.loads(high.read_text()) | {"model_arrays": "0" * 16}
    high.write_text(json.dumps(other))
    assert cli_main(["score", str(gated), str(images[0]), "--thresholds", str(high)]) == 2
    assert "made for model" in capsys.readouterr().err

"""Issue 19: defects found using the app in a real browser, each pinned by a test on the real pages (AppTest), the
real model (PatchCore on the demo, fitted once by ``tests/test_app.py``'s fixtures) and the real CLI.

1 runs folder confined (reads and writes), 2 zip bombs and image-less zips leave nothing on disk and uploads are
capped, 3 long names, 4 tiny and blank images, 5 one score scale, 6 captions that follow a save, 7 chart colours,
panels and log axes, 8 tuning-split warning, 9 the main menu.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core import workbench as wb
from core.errors import WorkbenchError
from core.experiments import service as ex
from tests.app_harness import page_with_uploads
from tests.test_app import TIMEOUT, _errors, _no_exceptions, _page

ROOT = Path(__file__).resolve().parent.parent


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _no_crash_message(at: AppTest) -> None:
    _no_exceptions(at)
    assert not any("Something went wrong" in e for e in _errors(at)), _errors(at)


# ------------------------------------------------------------------------------------------------------------
# 1. The Experiments page's runs folder


def _fake_run(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"study": "coreset", "dataset": "demo", "quick": True,
                                                     "finished_at": "2026-12-06 00:00:00", "rows": [],
                                                     "columns": []}))
    return folder


@pytest.fixture()
def runs_root(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    _fake_run(root / "coreset" / "inside")
    monkeypatch.setenv("WORKBENCH_EXPERIMENTS_DIR", str(root))
    return root


def test_runs_folder_outside_the_runs_root_is_refused_on_the_page(runs_root, tmp_path):
    outside = _fake_run(tmp_path / "outside" / "run")
    (runs_root / "link").symlink_to(outside.parent, target_is_directory=True)
    at = AppTest.from_file(str(ROOT / "app_pages" / "7_Experiments.py"), default_timeout=TIMEOUT).run()
    _no_crash_message(at)
    assert len(at.dataframe[0].value) == 1, "the run under the runs root is listed"
    for typed in ("/etc", "/usr", "../../", str(outside.parent), str(runs_root / "link"), "x" * 5000):
        at.text_input(key="exp_root").input(typed).run()
        _no_crash_message(at)
        errs = _errors(at)
        assert errs and ("outside the folders the app may use" in errs[0] or "too long" in errs[0]), (typed, errs)
        assert len(errs[0]) < 600, "the message does not echo a 5,000-character path"
        assert not at.dataframe, f"nothing is listed for {typed!r}"
        assert not at.button, f"no quick run can be started into {typed!r}"


def test_runs_service_never_reads_or_writes_outside(runs_root, tmp_path):
    outside = _fake_run(tmp_path / "outside" / "run")
    (runs_root / "linked_dir").symlink_to(outside.parent, target_is_directory=True)
    (runs_root / "linked_file").mkdir()
    (runs_root / "linked_file" / "results.json").symlink_to(outside / "results.json")
    listed = [r.folder for r in ex.list_runs(runs_root)]
    assert listed == [(runs_root / "coreset" / "inside").resolve()], listed
    with pytest.raises(WorkbenchError, match="outside the folders"):
        ex.load_run(outside)
    with pytest.raises(WorkbenchError, match="outside the folders"):
        ex.list_runs("/etc")
    target = tmp_path / "elsewhere"
    with pytest.raises(WorkbenchError, match="outside the folders"):
        ex.start_quick_run("coreset", "demo", target)
    assert not target.exists(), "a refused quick run writes nothing"


# ------------------------------------------------------------------------------------------------------------
# 2. Zip uploads


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _home_with_zip(tmp_path: Path, data: bytes, name: str) -> AppTest:
    at, _ = page_with_uploads(tmp_path / "work", [(name, data)], ROOT / "app.py", timeout=TIMEOUT)
    at.run()
    at.radio(key="ds_source").set_value("Upload a zip (MVTec layout)").run()
    return at


@pytest.fixture()
def uploads(tmp_path, monkeypatch):
    folder = tmp_path / "uploads"
    monkeypatch.setattr(wb.zip_uploads, "UPLOADS_DIR", folder)
    monkeypatch.setenv("WORKBENCH_MODELS_DIR", str(tmp_path / "models"))
    return folder


def _left_on_disk(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


def test_zip_bomb_is_refused_from_its_directory_with_nothing_written(tmp_path, uploads):
    bomb = _zip({"ds/train/good/a.png": b"\0" * 60_000_000, "ds/test/good/b.png": b"\0" * 1000})
    assert len(bomb) < 300_000
    at = _home_with_zip(tmp_path, bomb, "bomb.zip")
    _no_crash_message(at)
    errs = _errors(at)
    assert any("bomb.zip" in e and "100x" in e for e in errs), errs
    assert _left_on_disk(uploads) == [], "nothing was extracted"


def test_zip_without_images_leaves_nothing_behind(tmp_path, uploads):
    data = _zip({f"ds/test/good/notes{i}.txt": b"not an image\n" * 1000 for i in range(5)}
                | {"ds/train/good/readme.txt": b"x"})
    at = _home_with_zip(tmp_path, data, "empty.zip")
    _no_crash_message(at)
    assert any("empty.zip" in e and "no images" in e for e in _errors(at)), _errors(at)
    assert [p for p in _left_on_disk(uploads) if p.is_file()] == [], "the refused extraction was deleted"


def _demo_zip(demo_root: Path, n: int) -> bytes:
    picks = sorted((demo_root / "train" / "good").glob("*.png"))[:n] + sorted(demo_root.glob("test/*/00*.png"))
    return _zip({f"mydata/{p.relative_to(demo_root).as_posix()}": p.read_bytes() for p in picks})


def _old_upload(uploads: Path, name: str, size: int, age_s: float) -> Path:
    folder = uploads / name
    folder.mkdir(parents=True)
    (folder / "blob.bin").write_bytes(b"\1" * size)
    t = time.time() - age_s
    os.utime(folder, (t, t))
    return folder


def test_uploads_are_capped_evicting_the_oldest_unused(uploads, demo_root, monkeypatch):
    data = _demo_zip(demo_root, 6)
    need = sum(i.file_size for i in zipfile.ZipFile(io.BytesIO(data)).infolist())
    old = _old_upload(uploads, "old", 2_000_000, age_s=7200)
    in_use = _old_upload(uploads, "recent", 2_000_000, age_s=10)
    monkeypatch.setattr(wb.zip_uploads, "MAX_UPLOADS_BYTES", 4_000_000 + need // 2)
    root = wb.extract_zip(data, "good.zip")
    assert root.is_dir() and not old.exists() and in_use.exists(), "the oldest unused upload made room"
    # only uploads in use are left, and they leave no room: refused, nothing new written
    shutil.rmtree(root.parent)
    os.utime(in_use)
    monkeypatch.setattr(wb.zip_uploads, "MAX_UPLOADS_BYTES", 2_000_000 + need // 2)
    before = _left_on_disk(uploads)
    with pytest.raises(WorkbenchError, match="Uploads in use already hold"):
        wb.extract_zip(_demo_zip(demo_root, 7), "other.zip")
    assert _left_on_disk(uploads) == before


# ------------------------------------------------------------------------------------------------------------
# 3. Long names


def test_long_names_and_paths_get_a_message(models_root):
    at = AppTest.from_file(str(ROOT / "app_pages" / "6_GAIN_MTL_CAM.py"), default_timeout=TIMEOUT).run()
    at.text_input(key="gain_folder").input("a" * 5000).run()
    _no_crash_message(at)
    text = " ".join(_errors(at) + [w.value for w in at.warning])
    assert "too long" in text and "at most 1024 characters" in text, text
    at.text_input(key="gain_folder").input("b" * 300 + "/models").run()
    text = " ".join(_errors(at) + [w.value for w in at.warning])
    assert "at most 255 bytes" in text, text
    with pytest.raises(WorkbenchError) as err:
        wb.check_model_name("m" * 5000)
    assert "5000 characters" in str(err.value) and len(str(err.value)) < 300


# ------------------------------------------------------------------------------------------------------------
# 4. Images too small or blank to score


def test_tiny_and_blank_uploads_get_a_message_instead_of_a_score(fitted, demo_root, tmp_path):
    from tests.app_harness import score_page_with_uploads

    good = sorted((demo_root / "test" / "scratch").glob("*.png"))[0].read_bytes()
    files = [("one_pixel.png", _png(np.full((1, 1, 3), 200, np.uint8))),
             ("lens_cap.png", _png(np.zeros((96, 128), np.uint8))),
             ("part.png", good)]
    at, _ = score_page_with_uploads(tmp_path, files, fitted, timeout=TIMEOUT)
    at.run()
    _no_crash_message(at)
    errs = " ".join(_errors(at))
    assert "one_pixel.png is 1 x 1 pixels, smaller than the 32 x 32" in errs, errs
    assert "lens_cap.png is blank" in errs, errs
    table = at.dataframe[0].value.set_index("file")
    assert table.loc["one_pixel.png", "decision"] == "error" and pd.isna(table.loc["one_pixel.png", "score"])
    assert table.loc["lens_cap.png", "decision"] == "error"
    assert table.loc["part.png", "decision"] in ("normal", "anomalous")


def test_cli_puts_a_tiny_image_in_the_error_column(fitted, tmp_path, capsys):
    import csv

    from core.cli import main as cli_main

    tiny = tmp_path / "tiny.png"
    tiny.write_bytes(_png(np.full((1, 1), 90, np.uint8)))
    out = tmp_path / "scores.csv"
    assert cli_main(["score", str(fitted), str(tiny), "--csv", str(out)]) == 2, "no image could be scored"
    rows = list(csv.DictReader(out.open()))
    assert rows[0]["decision"] == "error" and rows[0]["score"] == ""
    assert "smaller than the 32 x 32 a model can score" in rows[0]["error"]
    assert "tiny.png" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------
# 5. One score scale: score / threshold in use


def test_heatmaps_score_to_threshold_follows_the_threshold_in_use(fitted):
    def shown(at: AppTest) -> tuple[float, float, str]:
        metrics = {m.label: m for m in at.metric}
        ratio = metrics["Score ÷ threshold"]
        return float(metrics["Score"].value), float(ratio.value), ratio.help

    at = _page("app_pages/4_Heatmaps.py", fitted).run()
    _no_crash_message(at)
    saved = wb.model_info(fitted).threshold
    score, ratio, help_text = shown(at)
    assert ratio == pytest.approx(score / saved, rel=2e-3, abs=1e-3)
    assert "saved" in help_text and "unsaved" not in help_text
    at.session_state[f"threshold::{fitted}"] = saved * 2
    at.run()
    score, ratio, help_text = shown(at)
    assert ratio == pytest.approx(score / (saved * 2), rel=2e-3, abs=1e-3)
    assert "unsaved" in help_text


# ------------------------------------------------------------------------------------------------------------
# 6 and 8. Thresholds page: captions after a save, and the split tuned on


def test_threshold_captions_follow_a_save_in_the_same_run(fitted, tmp_path):
    model = tmp_path / "copy"
    shutil.copytree(fitted, model)
    at = _page("app_pages/3_Thresholds.py", model).run()
    _no_crash_message(at)
    assert at.selectbox(key="th_split").value == "val_mix" and not at.warning
    cfg = json.loads((model / "config.json").read_text())
    target = cfg["normalisation"]["image_median"] + 0.5 * (cfg["normalisation"]["image_threshold"]
                                                           - cfg["normalisation"]["image_median"])
    at.number_input(key="th_number").set_value(target).run()
    assert any("unsaved" in c.value for c in at.caption)
    at.button(key="th_save").click().run()
    _no_crash_message(at)
    captions = " ".join(c.value for c in at.caption)
    assert "unsaved" not in captions and f"threshold {target:.4g} (saved)" in captions, captions
    assert f"Saved threshold: {target:.6g}" in captions, captions
    for split in ("test", "train_normal"):
        at.selectbox(key="th_split").set_value(split).run()
        assert any("optimistic" in w.value or "false alarms" in w.value for w in at.warning), split


def test_cascade_captions_follow_a_save_in_the_same_run(fitted, tmp_path):
    model = tmp_path / "copy"
    shutil.copytree(fitted, model)
    wb.fit_gate(model, "stats")
    at = _page("app_pages/3_Thresholds.py", model).run()
    _no_crash_message(at)
    at.number_input(key="cas_low").set_value(0.125).run()
    at.number_input(key="cas_high").set_value(0.875).run()
    at.button(key="cas_save").click().run()
    _no_crash_message(at)
    saved = next(c.value for c in at.caption if c.value.startswith("Saved: "))
    assert "T_low=0.125, T_high=0.875" in saved, saved


# ------------------------------------------------------------------------------------------------------------
# 7 and 9. Charts and the menu


def test_one_colour_per_split_small_multiples_and_readable_log_axes(fitted):
    at = _page("app_pages/2_Scores.py", fitted).run()
    at.multiselect(key="sc_splits").set_value(["test", "val_mix"])
    at.radio(key="sc_by").set_value("split").run()
    _no_crash_message(at)
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    hist, roc = charts[0], charts[1]
    hist_colour = {t["name"].split(" (")[0]: t["marker"]["color"] for t in hist["data"]}
    roc_colour = {t["name"].split(" (")[0]: t["line"]["color"] for t in roc["data"] if t.get("showlegend") is not False}
    assert hist_colour == roc_colour == {"test": "#E69F00", "val_mix": "#009E73"}
    at.radio(key="sc_by").set_value("defect")
    at.radio(key="sc_log").set_value("log").run()
    hist = json.loads(at.get("plotly_chart")[0].proto.spec)
    axes = [k for k in hist["layout"] if k.startswith("xaxis")]
    defects = {d for d in os.listdir(Path(wb.model_info(fitted).dataset) / "test") if d != "good"}
    assert len(axes) == len(defects) >= 2, "one panel per defect class"
    assert all(hist["layout"]["y" + k[1:]]["dtick"] == 1 for k in axes), "log counts labelled per decade"


def test_log_axes_of_stored_figures_are_labelled_at_their_values():
    from ui.charts import styled

    fig = styled({"data": [{"type": "scatter", "x": [0.5, 1, 2, 5, 10], "y": [0.9, 0.92, 0.95, 0.96, 0.97],
                            "name": "greedy"},
                           {"type": "scatter", "x": [0.5, 1, 2, 5, 10], "y": [0.8, 0.85, 0.9, 0.93, 0.95],
                            "name": "random"}],
                  "layout": {"xaxis": {"type": "log"}}})
    assert list(fig.layout.xaxis.ticktext) == ["0.5", "1", "2", "5", "10"]
    again = styled({"data": [{"type": "scatter", "x": [1, 2], "y": [1, 2], "name": "greedy"}], "layout": {}})
    assert fig.data[0].line.color == again.data[0].line.color, "a method keeps its colour from chart to chart"
    assert fig.data[0].line.color != fig.data[1].line.color


def test_thumbnails_form_an_even_grid(demo_root):
    thumbs = wb.thumbnails(demo_root, per_class=1, size=96)
    assert thumbs and {t[2].shape for t in thumbs} == {(96, 96, 3)}


def test_main_menu_is_available():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["client"]["toolbarMode"] in ("auto", "viewer"), "users keep Rerun and the theme switch"
    assert not (ROOT / "pages").exists(), "a pages/ folder beside app.py makes the first load read 'app'"

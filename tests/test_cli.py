"""The CLI contract: evaluate's outputs, index, cache info, and one-line errors for bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from core.cli import main as cli_main

METRIC_KEYS = {
    "image_auroc", "pixel_auroc", "aupro", "image_ap", "f1_max", "threshold", "fit_seconds",
    "ms_per_image", "backbone", "coreset", "memory_bank_size", "per_class",
}


@pytest.fixture(scope="module")
def demo_eval(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    rc = cli_main(["evaluate", "demo", "--detector", "patchcore", "--ratio", "0.05", "--out", str(out), "--no-cache"])
    assert rc == 0
    return out


def test_evaluate_writes_the_contract(demo_eval):
    m = json.loads((demo_eval / "metrics.json").read_text())
    assert METRIC_KEYS <= set(m)
    assert m["image_auroc"] > 0.8 and m["pixel_auroc"] > 0.8  # demo defects are visible
    assert set(m["per_class"]) == {"crack", "scratch", "spot"}
    rows = list(csv.DictReader((demo_eval / "scores.csv").open()))
    assert len(rows) == m["n_images"] and {"path", "label", "defect", "score", "decision"} <= set(rows[0])
    assert any(p.name.startswith("worst_fn") for p in (demo_eval / "overlays").iterdir())
    cfg = json.loads((demo_eval / "model" / "config.json").read_text())
    assert cfg["params"]["map_neighbors"] == 3 and cfg["params"]["num_neighbors"] == 9


def test_score_with_saved_model_and_heatmaps(demo_eval, tmp_path, capsys):
    from core.data import ensure_demo

    # cracks: the demo's plainly visible class (its subtle spots straddle the 1 %-false-alarm threshold)
    folder = ensure_demo() / "test" / "crack"
    rc = cli_main(["score", str(demo_eval / "model"), str(folder), "--heatmaps", str(tmp_path / "h")])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("path,score,decision")
    assert len(lines) == 1 + len(list(folder.iterdir()))
    assert sum(",anomalous," in line for line in lines) >= 0.8 * (len(lines) - 1)
    threshold = json.loads((demo_eval / "model" / "config.json").read_text())["normalisation"]["image_threshold"]
    for row in csv.DictReader(lines):
        assert (row["decision"] == "anomalous") == (float(row["score"]) > threshold), row
    assert len(list((tmp_path / "h").iterdir())) == len(lines) - 1


def test_bfloat16_model_fits_scores_and_keeps_its_precision(demo_eval, tmp_path, capsys):
    """`fit --precision bfloat16` records the precision, scores with it after loading (not the float32 pass), and
    finds the demo's cracks as the float32 model does."""
    from core.data import ensure_demo, read_image
    from core.detectors import load_detector

    rc = cli_main(["fit", "demo", "--detector", "patchcore", "--ratio", "0.05", "--precision", "bfloat16",
                   "--out", str(tmp_path / "m"), "--no-cache"])
    assert rc == 0
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["precision"] == cfg["params"]["precision"] == "bfloat16"
    b16, f32 = load_detector(tmp_path / "m"), load_detector(demo_eval / "model")
    assert b16.extractor().spec.precision == "bfloat16" and f32.extractor().spec.precision == "float32"
    cracks = [read_image(p) for p in sorted((ensure_demo() / "test" / "crack").iterdir())]
    s16, s32 = b16.score_images(cracks).scores, f32.score_images(cracks).scores
    assert not np.allclose(s16, s32, rtol=1e-6)  # really another arithmetic
    assert (s16 > b16.threshold).mean() >= 0.8 and np.corrcoef(s16, s32)[0, 1] > 0.9


def test_index_and_cache_info(capsys):
    assert cli_main(["index", "demo"]) == 0
    out = capsys.readouterr().out
    assert "train_normal" in out and "test_mix" in out
    assert cli_main(["cache", "info"]) == 0
    assert "entries" in json.loads(capsys.readouterr().out)


def test_missing_dataset_is_one_clear_line(capsys, tmp_path):
    rc = cli_main(["evaluate", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Fix:" in err and "Traceback" not in err


def test_padim_channel_count_is_checked_before_any_work(capsys, tmp_path):
    rc = cli_main(["fit", "demo", "--detector", "padim", "--channels", "0", "--out", str(tmp_path / "m")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "at least 1 feature channel" in err and "Fix:" in err and not (tmp_path / "m").exists()


def test_domain_set_cannot_be_evaluated_alone(capsys, tmp_path):
    from tests.conftest import SHARED

    rc = cli_main(["evaluate", str(SHARED / "neu_seg"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "no normal images" in capsys.readouterr().err


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "core", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "evaluate" in out.stdout

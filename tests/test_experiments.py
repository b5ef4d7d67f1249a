"""The five studies in --quick mode on real slices of magnetic_tile (and neu_seg / neu_det), the MMD statistic, and
the Experiments page under AppTest.

Each study runs once per module through the CLI (``python -m core experiment NAME DATASET --out DIR --quick``),
in-process and through the project's feature cache, so repeated runs reuse extracted features; the checks read
the run folders it writes. Nothing is mocked.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from core.errors import WorkbenchError
from core.experiments import STUDIES
from core.metrics.shift import mmd_test

ROOT = Path(__file__).resolve().parent.parent

FILES = ("results.csv", "results.json", "results.md", "figure.json", "figures.html")
UNIT_KEYS = ("image_auroc", "pixel_auroc", "aupro", "val_auroc", "recall_at_1", "flag_rate", "flag_rate_normal",
             "flag_rate_defect", "mmd_p")
POSITIVE_KEYS = ("fit_seconds", "ms_per_image", "search_ms_per_image", "peak_rss_mb")


@pytest.fixture(scope="module")
def run_quick(tmp_path_factory, magnetic_tile):
    """``run_quick(name)`` -> the run folder of that study's quick run (run once per module)."""
    from core.cli import main

    root = tmp_path_factory.mktemp("experiments")
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            out = root / name / "quick"
            assert main(["experiment", name, str(magnetic_tile), "--out", str(out), "--quick"]) == 0
            done[name] = out
        return done[name]

    get.root = root  # type: ignore[attr-defined]
    return get


def _meta(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def _rows(folder: Path) -> list[dict]:
    return _meta(folder)["rows"]


# ------------------------------------------------------------------------------------------------------------
# MMD on synthetic data


def test_mmd_separates_shifted_gaussians_and_not_equal_ones():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(150, 8)), rng.normal(size=(150, 8))
    shifted = rng.normal(0.6, 1.0, size=(150, 8))
    same = mmd_test(a, b, n_permutations=300)
    diff = mmd_test(a, shifted, n_permutations=300)
    assert abs(same.mmd2) < 0.01 and same.p_value > 0.05
    assert diff.mmd2 > 10 * max(abs(same.mmd2), 1e-3) and diff.p_value < 0.01
    assert diff.p_value >= 1 / 301  # the permutation p-value is never 0
    assert same.bandwidth > 0 and same.n_x == 150 and same.n_y == 150


def test_mmd_matches_the_direct_formula_and_rejects_bad_input():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 3)), rng.normal(0.3, 1.0, size=(25, 3))
    sigma = 1.7
    k = lambda p, q: np.exp(-((p[:, None, :] - q[None, :, :]) ** 2).sum(-1) / (2 * sigma**2))  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    direct = ((kxx.sum() - np.trace(kxx)) / (20 * 19) + (kyy.sum() - np.trace(kyy)) / (25 * 24) - 2 * kxy.mean())
    assert mmd_test(x, y, n_permutations=10, bandwidth=sigma).mmd2 == pytest.approx(direct, rel=1e-9)
    with pytest.raises(WorkbenchError, match="feature sizes"):
        mmd_test(x, rng.normal(size=(5, 4)))
    with pytest.raises(WorkbenchError, match="NaN"):
        mmd_test(np.full((4, 3), np.nan), y)


# ------------------------------------------------------------------------------------------------------------
# Every study: complete and sane outputs


@pytest.mark.parametrize("name", STUDIES)
def test_quick_run_writes_complete_sane_outputs(run_quick, name):
    folder = run_quick(name)
    for f in FILES:
        assert (folder / f).is_file() and (folder / f).stat().st_size > 0, f
    meta = _meta(folder)
    assert meta["study"] == name and meta["quick"] is True
    assert meta["wall_seconds"] > 0 and meta["settings"] and meta["versions"]["torch"] and meta["machine"]["cpu_count"]
    assert "--quick" in meta["command"]
    rows = meta["rows"]
    assert rows
    with (folder / "results.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    md = (folder / "results.md").read_text()
    assert "QUICK RUN" in md and md.count("\n|") >= len(rows) + 1
    for r in rows:
        for k in UNIT_KEYS:
            if r.get(k) is not None:
                assert 0.0 <= r[k] <= 1.0, (k, r)
        for k in POSITIVE_KEYS:
            if r.get(k) is not None:
                assert r[k] > 0 and math.isfinite(r[k]), (k, r)
    figs = json.loads((folder / "figure.json").read_text())
    assert figs and all(f.get("data") for f in figs.values())


def test_backbones_measures_every_offline_backbone_and_lists_the_others(run_quick):
    from core.backbones import list_backbones

    rows = {r["backbone"]: r for r in _rows(run_quick("backbones"))}
    for info in list_backbones():
        r = rows[info.name]
        assert r["status"] == "measured" and r["image_auroc"] is not None and r["bank_size"] > 0
    missing = [r for r in rows.values() if r["status"] == "not available offline"]
    assert {n.split(" ")[0] for n in (r["backbone"] for r in missing)} == {"ResNet50", "CLIP", "ViT-B/16"}
    assert all(r.get("image_auroc") is None and r.get("fit_seconds") is None for r in missing)
    assert "DINOv2 wins" in (run_quick("backbones") / "results.md").read_text()


def test_coreset_grid_and_bank_sizes(run_quick):
    rows = _rows(run_quick("coreset"))
    assert {(r["method"], r["ratio_pct"]) for r in rows} == {
        (m, p) for m in ("random", "greedy", "variance") for p in (0.5, 1, 5, 10)}
    for r in rows:
        assert r["bank_size"] == max(1, round(r["n_patches"] * r["ratio_pct"] / 100))
        assert r["selection_seconds"] >= 0
    greedy = [r for r in rows if r["method"] == "greedy"]
    assert all(r["selection_seconds"] > 0 for r in greedy)


def test_faiss_flat_is_the_reference_and_rerank_never_loses_recall(run_quick):
    folder = run_quick("faiss")
    rows = _rows(folder)
    flat = rows[0]
    assert flat["index"] == "flat" and flat["recall_at_1"] == 1.0 and flat["auroc_change"] == 0.0
    by = {(r["nbits"], r["nprobe"], r["rerank"]): r for r in rows[1:]}
    assert set(by) == {(b, p, rr) for b in (4, 8) for p in (1, 4, 8, 16) for rr in (False, True)}
    for (b, p, rr), r in by.items():
        if rr:
            plain = by[(b, p, False)]
            assert r["recall_at_1"] >= plain["recall_at_1"]  # the approximate top-1 is among the re-ranked
            assert r["memory_mb"] > plain["memory_mb"]  # re-rank keeps the raw bank
    assert "16-bit not trained" in (folder / "results.md").read_text()


def test_fusion_variants_and_adaptive_weights(run_quick):
    rows = _rows(run_quick("fusion"))
    assert {r["family"] for r in rows} == {"within tf_efficientnet_lite0", "across backbones"}
    for fam in {r["family"] for r in rows}:
        variants = [r["variant"] for r in rows if r["family"] == fam]
        assert "concatenation" in variants and "weighted (equal)" in variants
        assert any(v.startswith("adaptive") for v in variants) and "single" in variants
        ad = next(r for r in rows if r["family"] == fam and r["variant"].startswith("adaptive"))
        assert sum(float(w) for w in ad["weights"].split(" / ")) == pytest.approx(1.0, abs=0.02)
    assert "98.3 %" in (run_quick("fusion") / "results.md").read_text()


def test_cross_domain_shift_is_larger_abroad_than_at_home(run_quick):
    rows = _rows(run_quick("cross-domain"))
    control = [r for r in rows if r["role"] == "control"]
    home = next(r for r in rows if r["role"] == "home")
    foreign = [r for r in rows if r["role"].startswith("foreign")]
    assert {r["set"] for r in foreign} == {"neu_seg", "neu_det"}
    assert home["image_auroc"] is not None and home["flag_rate_normal"] is not None  # foreign beside home
    for r in control:
        assert abs(r["mmd2"]) < 0.1, r
    for r in foreign:
        assert r["image_auroc"] is None  # no normal images: no AUROC
        assert r["mmd2"] > max(c["mmd2"] for c in control) + 0.1 and r["mmd_p"] <= 0.05, r
    seg = next(r for r in foreign if r["set"] == "neu_seg")
    assert seg["pixel_auroc"] is not None and 0 <= seg["pixel_auroc"] <= 1


def test_cli_errors_are_one_line(capsys, tmp_path):
    from core.cli import main

    assert main(["experiment", "coreset", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Fix:" in err and "Traceback" not in err
    assert main(["experiment", "coreset", "magnetic_tile", "--set", "ratios=abc", "--quick"]) == 2
    assert "not a valid ratios" in capsys.readouterr().err


def test_set_overrides_are_typed_by_the_settings():
    from core.experiments.cli import parse_overrides

    got = parse_overrides("backbones", ["backbones=a,b", "image_size=336", "n_train=all", "ratio=0.05"])
    assert got == {"backbones": ("a", "b"), "image_size": 336, "n_train": None, "ratio": 0.05}
    with pytest.raises(WorkbenchError, match="no setting 'bogus'"):
        parse_overrides("faiss", ["bogus=1"])


# ------------------------------------------------------------------------------------------------------------
# The page


def test_page_lists_runs_draws_them_and_starts_a_quick_run(run_quick, monkeypatch):
    from streamlit.testing.v1 import AppTest

    for name in STUDIES:
        run_quick(name)
    root = run_quick.root
    monkeypatch.setenv("WORKBENCH_EXPERIMENTS_DIR", str(root))
    at = AppTest.from_file(str(ROOT / "app_pages" / "7_Experiments.py"), default_timeout=180).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    listing = at.dataframe[0].value
    assert set(listing["study"]) == set(STUDIES)
    options = at.selectbox(key="exp_run").options
    assert len(options) == len(STUDIES)
    for i in range(len(options)):
        at.selectbox(key="exp_run").select_index(i).run()
        assert not at.exception, [e.value for e in at.exception]
        assert len(at.dataframe[1].value) > 0
        assert at.get("plotly_chart"), "each run draws its figures"
        assert any("Quick run" in w.value for w in at.warning)
    at.selectbox(key="exp_study").select("cross-domain")
    at.selectbox(key="exp_dataset").select("magnetic_tile")
    at.button(key="exp_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Wrote" in s.value for s in at.success)
    assert len(list(root.rglob("results.json"))) == len(STUDIES) + 1

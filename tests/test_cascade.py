"""The cascade: gates, routing, sweep, automatic choice and reporting - with a test for each old failure.

Old failures: (1) a supervised gate trained on normals only collapsed (< 0.001 for every image, recall 0);
(2) a fixed threshold grid fell where no score lay; (3) a baseline routed everything to the heatmap model and
called everything anomalous; (4) results reported on an all-anomaly split.
"""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from core.cascade.gates import AutoencoderGate, DistanceGate, StatsGate, SupervisedGate, load_gate
from core.cascade.report import check_summary, summary_row, write_summary
from core.cascade.routing import HEATMAP, Cascade, Policy, routes_for
from core.cascade.sweep import Measured, candidate_thresholds, choose, gate_health, pareto_front, sweep
from core.errors import DatasetError, WorkbenchError
from core.metrics import image_metrics

NEU_SEG = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "neu_seg"


# ------------------------------------------------------------------------------------------------ data
@pytest.fixture(scope="module")
def tile(magnetic_tile):
    """A small real slice of magnetic_tile: 48 train normals, ~60 train_mix, ~50 val_mix (stratified)."""
    from core.cascade.pipeline import load_split
    from core.data import index_dataset

    index = index_dataset(magnetic_tile)
    return {s: load_split(index, s, n) for s, n in (("train_normal", 48), ("train_mix", 70), ("val_mix", 60))}


@pytest.fixture(scope="module")
def demo():
    from core.cascade.pipeline import load_split
    from core.data import ensure_demo, index_dataset

    index = index_dataset(ensure_demo())
    return {s: load_split(index, s) for s in ("train_normal", "train_mix", "val_mix", "test_mix")}


def _fit(gate, d):
    tn, tm, val = d["train_normal"], d["train_mix"], d["val_mix"]
    gate.fit(tn.images + tm.images, np.r_[tn.labels, tm.labels], val.images, val.labels)
    return gate


# ------------------------------------------------------------------------------------------------ gates
@pytest.fixture(scope="module")
def supervised(tile):
    return _fit(SupervisedGate(max_epochs=4, patience=2), tile)


def test_supervised_gate_on_real_slice_spreads_over_both_classes(supervised, tile, tmp_path):
    val = tile["val_mix"]
    assert 0 < val.labels.sum() < len(val.labels)
    s = supervised.score_images(val.images)
    assert ((s >= 0) & (s <= 1)).all()
    # old failure 1: every probability < 0.001. Here the scores spread and anomalies score higher.
    assert gate_health(s, val.labels) == []
    assert np.ptp(s) > 0.3 and s.max() > 0.5 and s.min() < 0.5, np.round(np.sort(s), 3)
    assert s[val.labels == 1].mean() > s[val.labels == 0].mean()
    assert image_metrics(val.labels, s).auroc > 0.6
    # a fresh image (train_mix) also gets a spread of scores, not a constant
    assert np.ptp(supervised.score_images(tile["train_mix"].images[:20])) > 0.1
    # save / load round trip
    supervised.save(tmp_path / "g")
    again = load_gate(tmp_path / "g")
    np.testing.assert_allclose(again.score_images(val.images[:5]), s[:5], atol=1e-6)
    cost = again.cost()
    assert cost["gate"] == "supervised" and cost["ms_per_image"] > 0 and cost["parameters"] > 1e6


def test_supervised_gate_refuses_one_class_training(tile):
    tn, val = tile["train_normal"], tile["val_mix"]
    with pytest.raises(DatasetError, match="only one class"):
        SupervisedGate().fit(tn.images, tn.labels, val.images, val.labels)  # normals only: old failure 1
    with pytest.raises(DatasetError, match="only one class"):
        SupervisedGate().fit(tn.images + tile["train_mix"].images, np.r_[tn.labels, tile["train_mix"].labels],
                             [val.images[0]], [0])


def test_supervised_gate_is_deterministic_for_a_seed(tile):
    tn, tm, val = tile["train_normal"], tile["train_mix"], tile["val_mix"]
    imgs, labels = tn.images[:16] + tm.images[:24], np.r_[tn.labels[:16], tm.labels[:24]]
    assert 0 < labels.sum() < len(labels)
    a, b = (SupervisedGate(seed=3, max_epochs=1) for _ in range(2))
    for g in (a, b):
        g.fit(imgs, labels, val.images, val.labels)
    np.testing.assert_array_equal(a.score_images(val.images[:8]), b.score_images(val.images[:8]))


@pytest.mark.parametrize("make", [lambda: StatsGate(), lambda: AutoencoderGate(epochs=3),
                                  lambda: DistanceGate(size=96)], ids=["stats", "autoencoder", "distance"])
def test_label_free_gates_are_calibrated_on_validation_normals(make, demo, tmp_path):
    gate = _fit(make(), demo)
    val = demo["val_mix"]
    s = gate.score_images(val.images)
    assert ((s > 0) & (s < 1)).all()
    # calibrated on the validation normals: their scores are spread uniformly over (0, 1)
    sn = np.sort(s[val.labels == 0])
    np.testing.assert_allclose(sn, np.arange(1, sn.size + 1) / (sn.size + 1), atol=1e-6)
    # training images are not used for calibration; a fresh test image still lands in [0, 1]
    st = gate.score_images(demo["test_mix"].images)
    assert ((st >= 0) & (st <= 1)).all() and np.ptp(st) > 0
    gate.save(tmp_path / "g")
    np.testing.assert_allclose(load_gate(tmp_path / "g").score_images(val.images), s, atol=1e-6)
    assert gate.cost()["ms_per_image"] > 0


# ------------------------------------------------------------------------------------------------ sweep
def _measured(seed=0, n=200, collapsed=False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    g = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.15, n), 0, 1)
    if collapsed:
        g = 1e-4 + 8e-4 * g  # the old gate: every score below 0.001
    h = y * 2.0 + rng.normal(0, 0.6, n)
    return Measured(y, g, np.full(n, 2.0), h, np.full(n, 50.0) + rng.random(n))


def test_sweep_candidates_lie_within_the_observed_scores_even_for_a_squeezed_gate():
    m = _measured(collapsed=True)
    c = candidate_thresholds(m.gate_scores)
    assert c.min() == m.gate_scores.min() and c.max() == m.gate_scores.max()
    assert np.isin(c, m.gate_scores).all()  # every candidate is an observed score
    # the old fixed grid (T_low 0.001-0.05, T_high 0.01-0.5) has no point inside this range at all
    old_grid = np.r_[np.linspace(0.001, 0.05, 11), np.linspace(0.01, 0.5, 16)]
    assert not ((old_grid >= m.gate_scores.min()) & (old_grid <= m.gate_scores.max())).any()
    rows = sweep(m, heat_threshold=1.0)
    casc = [r for r in rows if r["mode"] == "cascade"]
    # candidates cover the observed scores: call rates span from a few images to all of them
    rates = sorted(r["heatmap_call_rate"] for r in casc)
    assert rates[0] < 0.1 and rates[-1] == 1.0 and len(set(rates)) > 20
    # the old gate's squeeze below 0.001 is reported as a collapse; a healthy spread is not
    assert "collapsed" in " ".join(gate_health(m.gate_scores, m.labels))
    assert gate_health(_measured().gate_scores, _measured().labels) == []


def test_routing_counts_add_up_and_heatmap_is_called_only_for_uncertain_images():
    calls = []

    class StubGate:
        kind = "stub"

        def score_images(self, images):
            return np.array([float(im.mean()) / 255 for im in images])

    class StubDetector:
        kind = "stub"

        def score_images(self, images):
            calls.append(len(images))
            return SimpleNamespace(scores=np.array([float(im.mean()) / 255 for im in images]))

    imgs = [np.full((8, 8, 3), v, np.uint8) for v in np.linspace(0, 255, 41).astype(int)]
    res = Cascade(StubGate(), StubDetector(), Policy(t_low=0.3, t_high=0.7, heat_threshold=0.5)).route(imgs)
    counts = res.counts()
    assert sum(counts.values()) == len(imgs)
    assert counts["heatmap"] == len(calls) == int((res.routes == HEATMAP).sum()) and all(c == 1 for c in calls)
    assert 0 < counts["normal"] and 0 < counts["anomalous"]
    assert (res.heatmap_ms[res.routes != HEATMAP] == 0).all() and (res.heatmap_ms[res.routes == HEATMAP] > 0).all()
    assert (res.decisions == (res.final_scores >= 0.5)).all()
    assert res.decisions[res.routes == 0].sum() == 0 and res.decisions[res.routes == 1].all()
    np.testing.assert_array_equal(res.routes, routes_for(res.gate_scores, res.policy))


def test_automatic_choice_never_picks_an_all_uncertain_pair_and_flags_it():
    m = _measured()
    rows = sweep(m, heat_threshold=1.0)
    everything = [r for r in rows if r["mode"] == "cascade" and r["heatmap_call_rate"] == 1.0]
    assert everything and all("routes every image to the heatmap model" in r["note"] for r in everything)
    c = choose(rows, margin=0.02)
    assert c.row["heatmap_call_rate"] < 1.0 and c.row["mode"] == "cascade"
    assert c.row["recall"] >= c.baseline["recall"] - 0.02 and c.row["precision"] >= c.baseline["precision"] - 0.05
    assert c.row["latency_ms"] < c.baseline["latency_ms"]
    kept = choose(rows, margin=0.02, allow_gate_only=False)  # the heatmap model stays in the loop
    assert kept.row["mode"] == "cascade" and 0 < kept.row["heatmap_call_rate"] < 1
    assert kept.row["t_low"] < kept.row["t_high"]
    # old failure 3: everything routed and everything called anomalous is recognised as such
    m3 = Measured(m.labels, m.gate_scores, m.gate_ms, np.full(len(m.labels), 5.0), m.heat_ms)
    r3 = sweep(m3, heat_threshold=1.0)
    base = next(r for r in r3 if r["mode"] == "heatmap_only")
    assert "calls every image anomalous" in base["note"] and base["precision"] == pytest.approx(m.labels.mean())
    # if nothing cheaper meets the target, the all-uncertain pair still loses to heatmap_only
    m4 = Measured(m.labels, np.random.default_rng(1).random(len(m.labels)), m.gate_ms, m.heat_scores, m.heat_ms)
    c4 = choose(sweep(m4, heat_threshold=1.0), margin=0.0, precision_floor=0.99)
    assert c4.row["mode"] == "heatmap_only"
    front = pareto_front(rows)
    assert all(a["latency_ms"] <= b["latency_ms"] and a["recall"] < b["recall"] for a, b in zip(front, front[1:]))


def test_metrics_on_an_all_anomalous_split_are_refused_unless_a_mixed_split_is_beside(tmp_path):
    y1 = np.ones(30, int)
    everything = np.ones(30, int)
    row = summary_row("x:cascade", "domain:neu_seg", y1, everything, np.ones(30), np.full(30, 5.0), 1.0, domain=True)
    assert row["recall"] is None and row["precision"] is None and row["flag_rate"] == 1.0
    with pytest.raises(WorkbenchError, match="one-class"):
        write_summary(tmp_path / "s.csv", [row])
    y = np.r_[np.zeros(20, int), np.ones(10, int)]
    mixed = summary_row("x:cascade", "test_mix", y, np.ones(30, int), np.ones(30), np.full(30, 5.0), 1.0)
    assert mixed["precision"] == pytest.approx(1 / 3) and "calls every image anomalous" in mixed["note"]
    check_summary([mixed, row])
    write_summary(tmp_path / "s.csv", [mixed, row])


# ------------------------------------------------------------------------------------------------ CLI end to end
def test_cli_evaluate_on_demo_writes_every_output(tmp_path, capsys):
    from core.cli import main

    out = tmp_path / "run"
    rc = main(["cascade", "evaluate", "demo", "--gate", "stats", "--detector", "patchcore", "--ratio", "0.05",
               "--image-size", "160", "--no-cache", "--out", str(out), "--domain", str(NEU_SEG),
               "--domain-limit", "9"])
    assert rc == 0
    for name in ("summary.csv", "sweep.csv", "pareto.csv", "cascade.json", "routes_test_mix.csv",
                 "hist_test_mix.png", "hist_val_mix_by_class.png", "hist_domain_neu_seg_by_class.png",
                 "hist_test_mix_by_class.html"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert list(rows[0])[:11] == ["experiment", "split", "accuracy", "precision", "recall", "f1", "auroc", "pr_auc",
                                  "latency_ms", "latency_p95_ms", "heatmap_call_rate"]
    splits = {r["split"] for r in rows}
    assert {"val_mix", "test_mix", "domain:neu_seg"} <= splits
    dom = [r for r in rows if r["split"] == "domain:neu_seg"]
    assert all(r["recall"] == "" and r["flag_rate"] != "" for r in dom)
    routes = list(csv.DictReader(open(out / "routes_test_mix.csv")))
    test_rows = [r for r in rows if r["split"] == "test_mix" and r["experiment"] == "stats:cascade_routed"]
    assert len(routes) == int(test_rows[0]["n"])
    n_heat = sum(r["route"] == "heatmap" for r in routes)
    assert sum(r["route"] in ("normal", "anomalous", "heatmap") for r in routes) == len(routes)
    assert float(test_rows[0]["heatmap_call_rate"]) == pytest.approx(n_heat / len(routes))
    sweep_rows = list(csv.DictReader(open(out / "sweep.csv")))
    val_scores = [float(r["gate_score"]) for r in csv.DictReader(open(out / "measured_val_mix.csv"))]
    for r in sweep_rows:
        for k in ("t_low", "t_high"):
            if r[k]:
                assert min(val_scores) - 1e-9 <= float(r[k]) <= max(val_scores) + 1e-9
    # a second evaluate reuses the saved models and sweep
    assert main(["cascade", "evaluate", "demo", "--gate", "stats", "--detector", "patchcore", "--ratio", "0.05",
                 "--image-size", "160", "--no-cache", "--out", str(out)]) == 0
    assert "using the gate and detector" in capsys.readouterr().err


def test_cli_refuses_a_domain_set_as_the_main_dataset(tmp_path, capsys):
    from core.cli import main

    rc = main(["cascade", "fit", str(NEU_SEG), "--gate", "supervised", "--out", str(tmp_path)])
    assert rc == 2 and "defect images only" in capsys.readouterr().err

"""GAIN-MTL: tiny real runs of every strategy on real magnetic_tile images, loss terms active exactly where their
strategy says, CAM metrics against hand-computed values, model folders, the CLI verb and the CAM page.

Nothing about the model is mocked: the networks are the real pretrained backbone at 64 px on a few images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import ModelFormatError, WorkbenchError
from core.gain.config import STRATEGIES, STRATEGY_NAMES, GainConfig
from core.gain.losses import Batch, compute_losses, fusion_weight, loc_weight_factor
from core.metrics import cam as cm

ROOT = Path(__file__).resolve().parent.parent

SIZE = 64
LIMIT = 3  # images per class and split
EXPECTED_TERMS = {
    "S1": {"cls"},
    "S2": {"cls", "cam_guide"},
    "S3": {"cls", "cam_guide", "am"},
    "S4": {"cls", "cam_guide", "am", "loc", "consist"},
    "S5": {"cls", "cam_guide", "am", "loc", "consist", "cf"},
    "S6": {"cls", "cam_guide", "am", "loc", "consist", "cf"},
}


def tiny(strategy: str, **kw) -> GainConfig:
    return GainConfig(strategy=strategy, image_size=SIZE, max_epochs=1, batch_size=8, limit=LIMIT, **kw)


@pytest.fixture(scope="module")
def index(magnetic_tile):
    from core.data import index_dataset

    return index_dataset(magnetic_tile)


@pytest.fixture(scope="module")
def prepared(index):
    from core.gain.train import prepare

    return prepare(index, tiny("S1"), log=lambda m: None)


@pytest.fixture(scope="module")
def trained(prepared):
    """One tiny real run (one epoch) of every strategy."""
    from core.gain.train import train

    return {s: train(tiny(s), prepared, show_progress=False) for s in STRATEGY_NAMES}


# ------------------------------------------------------------------------------------------------------------
# Strategy table and schedules


def test_each_strategy_adds_exactly_one_flag():
    prev = None
    for name in STRATEGY_NAMES:
        flags = STRATEGIES[name].flags.__dict__
        on = {k for k, v in flags.items() if v}
        if prev is None:
            assert on == set()
        else:
            assert prev < on and len(on - prev) == 1, name
        prev = on
    with pytest.raises(WorkbenchError, match="S1"):
        GainConfig(strategy="S7")


def test_schedules_hand_computed():
    cfg = GainConfig(strategy="S6", fusion_start=1.0, fusion_end=0.5, loc_warmup=0.5)
    assert fusion_weight(cfg, 0.0) == pytest.approx(1.0)
    assert fusion_weight(cfg, 0.25) == pytest.approx(0.5)
    assert fusion_weight(cfg, 0.5) == 0.0 and fusion_weight(cfg, 0.9) == 0.0
    cos = GainConfig(strategy="S6", fusion_schedule="cosine")
    assert fusion_weight(cos, 0.25) == pytest.approx(0.5)  # halfway through the decay: (1 + cos(pi/2)) / 2
    assert fusion_weight(cos, 0.125) == pytest.approx(0.5 * (1 + np.cos(np.pi / 4)))
    step = GainConfig(strategy="S6", fusion_schedule="step")
    assert [fusion_weight(step, p) for p in (0.0, 0.13, 0.26, 0.4, 0.5)] == pytest.approx([1, 0.75, 0.5, 0.25, 0])
    assert fusion_weight(GainConfig(strategy="S5"), 0.0) == 0.0  # no fusion before S6
    assert [loc_weight_factor(cfg, p) for p in (0.0, 0.25, 0.5, 1.0)] == pytest.approx([0, 0.5, 1, 1])


# ------------------------------------------------------------------------------------------------------------
# Loss terms: active (non-zero, with gradient) exactly where the strategy says


def _batch(prepared, rows) -> Batch:
    rows = torch.as_tensor(rows)
    cf = prepared.train_x8[rows].clone()
    for k, r in enumerate(rows.tolist()):
        if prepared.cf_rows[r] >= 0:
            cf[k] = prepared.cf_x8[prepared.cf_rows[r]]
    return Batch(x8=prepared.train_x8[rows], y=torch.from_numpy(prepared.train.labels[rows.numpy()].astype(np.float32)),
                 mask=torch.from_numpy(prepared.train.masks[rows.numpy()].astype(np.float32)), cf_x8=cf)


def _mixed_rows(prepared) -> list[int]:
    labels = prepared.train.labels
    return list(np.flatnonzero(labels == 0)[:3]) + list(np.flatnonzero(prepared.cf_rows >= 0)[:3])


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_loss_terms_active_exactly_per_strategy(prepared, name):
    from core.gain.train import _base_net

    cfg = tiny(name)
    torch.manual_seed(0)
    _, net = _base_net(cfg)
    net.train()
    losses = compute_losses(net, _batch(prepared, _mixed_rows(prepared)), cfg, progress=0.25, pos_weight=1.5)
    assert set(losses.terms) == EXPECTED_TERMS[name]
    params = [p for p in net.parameters() if p.requires_grad]
    for term, value in losses.terms.items():
        assert torch.isfinite(value.detach()) and float(value.detach()) > 0, (name, term)
        assert losses.weights[term] > 0, (name, term)
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        assert any(g is not None and float(g.abs().sum()) > 0 for g in grads), (name, term, "no gradient")
    assert (losses.fusion_weight > 0) == (name == "S6")
    expect_total = sum(losses.weights[k] * float(v.detach()) for k, v in losses.terms.items())
    assert float(losses.total.detach()) == pytest.approx(expect_total, rel=1e-5)
    if name in ("S4", "S5", "S6"):
        assert losses.weights["loc"] == pytest.approx(0.2 * 0.5)  # half-way through the 50 % warm-up
        start = compute_losses(net, _batch(prepared, _mixed_rows(prepared)), cfg, progress=0.0, pos_weight=1.5)
        assert start.weights["loc"] == 0.0 and start.weights["consist"] == 0.0


def test_defect_only_terms_vanish_on_normal_images(prepared):
    """L_am and L_cf are about defect images only: a batch of normals gives them no value and no gradient."""
    from core.gain.train import _base_net

    cfg = tiny("S5")
    torch.manual_seed(0)
    _, net = _base_net(cfg)
    normals = list(np.flatnonzero(prepared.train.labels == 0)[:4])
    losses = compute_losses(net, _batch(prepared, normals), cfg, progress=0.5, pos_weight=1.0)
    for term in ("am", "cf", "consist"):
        assert losses.terms[term].item() == 0.0
        params = [p for p in net.parameters() if p.requires_grad]
        grads = torch.autograd.grad(losses.terms[term], params, retain_graph=True, allow_unused=True)
        assert all(g is None or float(g.abs().sum()) == 0 for g in grads), term
    assert losses.terms["cam_guide"].item() > 0 and losses.terms["loc"].item() > 0  # normals: low CAM / empty mask


def test_cam_guide_shape_option_adds_the_normalised_cam_term(prepared):
    from core.gain.losses import minmax_maps, soft_dice
    from core.gain.train import _base_net

    torch.manual_seed(0)
    _, net = _base_net(tiny("S2"))
    net.eval()
    batch = _batch(prepared, _mixed_rows(prepared))
    plain = compute_losses(net, batch, tiny("S2", cam_guide_shape=False), progress=0.5,
                           pos_weight=1.0).terms["cam_guide"].item()
    shaped = compute_losses(net, batch, tiny("S2", cam_guide_shape=True), progress=0.5, pos_weight=1.0)
    with torch.no_grad():
        out = net.forward_from_stem(batch.x8, with_mask=False)
        d = batch.y > 0.5
        m = torch.nn.functional.adaptive_avg_pool2d(batch.mask[d][:, None], out.cam.shape[-2:])[:, 0]
        a = minmax_maps(out.cam[d]).clamp(1e-4, 1 - 1e-4)
        extra = (soft_dice(a, m) + torch.nn.functional.binary_cross_entropy(a, m)).item()
    assert shaped.terms["cam_guide"].item() == pytest.approx(plain + extra, rel=1e-5)


def test_gt_fusion_changes_the_attention_only_in_s6(prepared):
    from core.gain.train import _base_net

    torch.manual_seed(0)
    _, net = _base_net(tiny("S6"))
    net.eval()
    batch = _batch(prepared, _mixed_rows(prepared))
    s5 = compute_losses(net, batch, tiny("S5"), progress=0.1, pos_weight=1.0)
    s6 = compute_losses(net, batch, tiny("S6"), progress=0.1, pos_weight=1.0)
    s6_late = compute_losses(net, batch, tiny("S6"), progress=0.9, pos_weight=1.0)
    assert s6.fusion_weight == pytest.approx(0.8)
    assert abs(s6.terms["cls"].item() - s5.terms["cls"].item()) > 1e-6  # the GT mask is in the gate
    assert s6_late.terms["cls"].item() == pytest.approx(s5.terms["cls"].item(), rel=1e-6)  # decayed to 0


# ------------------------------------------------------------------------------------------------------------
# Tiny real runs


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_tiny_real_run_of_each_strategy(trained, prepared, name):
    res = trained[name]
    assert len(res.history) == 1 and res.best_epoch == 1
    row = res.history[0]
    for term in EXPECTED_TERMS[name]:
        assert np.isfinite(row[f"loss_{term}"]) and row[f"loss_{term}"] > 0
    assert not any(f"loss_{t}" in row for t in {"cam_guide", "am", "loc", "consist", "cf"} - EXPECTED_TERMS[name])
    assert 0.0 <= res.model.threshold <= 1.0
    pred = res.model.predict(prepared.val.images[:4])
    assert pred.cams.shape == (4, SIZE, SIZE) and pred.cam_grid == SIZE // 8
    assert np.all((pred.probs >= 0) & (pred.probs <= 1)) and np.isfinite(pred.cams).all()


def test_training_is_deterministic(prepared, trained):
    from core.gain.train import train

    again = train(tiny("S3"), prepared, show_progress=False)
    a, b = trained["S3"].model.net.state_dict(), again.model.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_evaluate_on_real_images(trained, index):
    from core.gain.evaluate import evaluate_model

    ev = evaluate_model(trained["S4"].model, index, "test_mix", limit=2)
    m = ev.metrics
    assert m["n_images"] == len(ev.rows) > 0
    for k in ("accuracy", "precision", "recall", "f1", "auroc", "cam_iou@0.3", "cam_iou@0.6", "point_game",
              "energy_inside", "loc_iou"):
        assert m[k] is not None and 0.0 <= m[k] <= 1.0, k
    assert m["cam_grid"] == SIZE // 8
    s1 = evaluate_model(trained["S1"].model, index, "test_mix", limit=2).metrics
    assert s1["loc_iou"] is None  # S1-S3 do not train the mask head: no Loc-IoU


# ------------------------------------------------------------------------------------------------------------
# Metrics against hand-computed values


CAM = np.array([[0, 0, 0, 0], [0, 2, 4, 0], [0, 4, 8, 0], [0, 0, 0, 0]], dtype=float)
MASK = np.array([[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]], dtype=bool)


def test_classification_metrics_hand_computed():
    m = cm.classification_metrics(np.array([0, 0, 1, 1, 1]), np.array([0.1, 0.6, 0.4, 0.8, 0.9]), 0.5)
    assert (m.accuracy, m.precision, m.recall, m.f1) == pytest.approx((0.6, 2 / 3, 2 / 3, 2 / 3))
    assert m.auroc == pytest.approx(5 / 6)
    none = cm.classification_metrics(np.array([0, 1]), np.array([0.1, 0.2]), 0.5)
    assert (none.precision, none.recall, none.f1, none.accuracy) == (0.0, 0.0, 0.0, 0.5)
    assert cm.classification_metrics(np.array([1, 1]), np.array([0.1, 0.9])).auroc is None
    assert cm.f1_best_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.3, 0.2, 0.9])) == pytest.approx(0.2)


def test_cam_metrics_hand_computed():
    c01 = cm.minmax_normalise(CAM)
    assert c01[2, 2] == 1.0 and c01[1, 1] == pytest.approx(0.25)
    # >= 0.5: (1,2), (2,1), (2,2); mask: (1,2), (1,3), (2,2), (2,3) -> 2 / 5
    assert cm.cam_iou(c01, MASK, 0.5) == pytest.approx(0.4)
    assert cm.cam_iou(c01, MASK, 0.3) == pytest.approx(0.4)
    assert cm.cam_iou(c01, MASK, 0.6) == pytest.approx(0.25)
    assert cm.cam_iou(c01, MASK, 0.2) == pytest.approx(2 / 6)
    assert cm.point_game(CAM, MASK) == 1.0
    assert cm.point_game(CAM, ~MASK & (CAM == 0)) == 0.0
    assert cm.energy_inside(c01, MASK) == pytest.approx(1.5 / 2.25)
    probs = np.zeros((4, 4))
    probs[1, 2:] = 0.9
    probs[0, 0] = 0.7
    assert cm.loc_iou(probs, MASK) == pytest.approx(2 / 5)
    flat = cm.minmax_normalise(np.full((4, 4), 3.0))
    assert not flat.any() and cm.energy_inside(flat, MASK) == 0.0 and cm.cam_iou(flat, MASK, 0.5) == 0.0


def test_attention_metrics_average_over_defect_images_and_ignore_offsets():
    cams = np.stack([CAM + 5.0, np.rot90(CAM, 2) * 3.0, CAM])
    masks = np.stack([MASK, MASK, np.zeros_like(MASK)])  # the third has no defect: left out
    out = cm.attention_metrics(cams, masks, mask_probs=np.stack([MASK * 0.9, np.zeros((4, 4)), MASK * 0.9]))
    assert out["n_attention_images"] == 2
    # the rotated CAM, normalised: (1,1) 1, (1,2) 0.5, (2,1) 0.5, (2,2) 0.25. >= 0.5 at (1,1), (1,2), (2,1) ->
    # IoU 1 / 6; max at (1,1), outside the mask; energy inside (1,2) + (2,2) = 0.75 of 2.25
    assert out["cam_iou@0.5"] == pytest.approx((0.4 + 1 / 6) / 2)
    assert out["point_game"] == pytest.approx(0.5)
    assert out["energy_inside"] == pytest.approx((1.5 / 2.25 + 0.75 / 2.25) / 2)
    assert out["loc_iou"] == pytest.approx(0.5)
    per = cm.per_image_attention(cams[:2], masks[:2])
    assert per.cam_iou[0.6] == pytest.approx([0.25, 0.0])
    assert cm.cam_iou_batch(cm.minmax_normalise(cams[:2]), masks[:2], 0.5) == pytest.approx([0.4, 1 / 6])


def test_coarser_cam_grid_caps_cam_iou():
    mask = np.zeros((1, 192, 192), bool)
    mask[0, 40:52, 100:112] = True  # a 12-px defect, like a blowhole
    fine, coarse = cm.grid_ceiling_iou(mask, 12), cm.grid_ceiling_iou(mask, 6)
    assert fine > coarse and fine > 0.3


# ------------------------------------------------------------------------------------------------------------
# Model folders


def test_save_load_round_trip_and_refusals(trained, prepared, tmp_path):
    from core.gain.inference import load_gain_model
    from core.storage import save_model_folder

    model = trained["S6"].model
    folder = model.save(tmp_path / "s6")
    assert {p.name for p in folder.iterdir()} >= {"config.json", "arrays.safetensors"}
    assert not list(folder.glob("*.pt")) and not list(folder.glob("*.pkl"))
    loaded = load_gain_model(folder)
    assert loaded.config == model.config and loaded.threshold == pytest.approx(model.threshold)
    a, b = model.predict(prepared.val.images[:3]), loaded.predict(prepared.val.images[:3])
    np.testing.assert_allclose(a.probs, b.probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.cams, b.cams, rtol=1e-4, atol=1e-5)

    tampered = tmp_path / "tampered"
    model.save(tampered)
    raw = bytearray((tampered / "arrays.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (tampered / "arrays.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ModelFormatError, match="does not match the hash"):
        load_gain_model(tampered)

    foreign = tmp_path / "foreign"
    save_model_folder(foreign, "patchcore", {"backbone": "x"}, {"bank": np.zeros((2, 2), np.float32)})
    with pytest.raises(ModelFormatError, match="patchcore"):
        load_gain_model(foreign)

    wrong = tmp_path / "wrong"
    save_model_folder(wrong, "gain_mtl", {"gain": tiny("S1").to_dict(), "mean": [0, 0, 0], "std": [1, 1, 1]},
                      {"net.something": np.zeros(3, np.float32)})
    with pytest.raises(ModelFormatError, match="does not hold"):
        load_gain_model(wrong)

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "model.pt").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ModelFormatError, match="pickled"):
        load_gain_model(pickled)


# ------------------------------------------------------------------------------------------------------------
# CLI


def test_cli_train_evaluate_compare(magnetic_tile, tmp_path, capsys):
    from core.cli import main

    common = ["--limit", "2", "--image-size", str(SIZE), "--epochs", "1", "--batch-size", "8"]
    assert main(["gain", "train", "--strategy", "S2", str(magnetic_tile), "--out", str(tmp_path / "m"), *common]) == 0
    assert (tmp_path / "m" / "config.json").is_file()
    capsys.readouterr()
    assert main(["gain", "evaluate", str(tmp_path / "m"), str(magnetic_tile), "--limit", "2",
                 "--out", str(tmp_path / "ev")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["strategy"] == "S2" and "cam_iou@0.4" in out and "wall_seconds" in out
    assert (tmp_path / "ev" / "per_image.csv").is_file()
    assert main(["gain", "compare", str(magnetic_tile), "--strategies", "S1,S4", "--out", str(tmp_path / "c"),
                 *common]) == 0
    md = (tmp_path / "c" / "table.md").read_text()
    assert "| S1 |" in md and "| S4 |" in md and "CAM-IoU@0.3" in md
    rows = (tmp_path / "c" / "table.csv").read_text().splitlines()
    assert len(rows) == 3 and "wall_s" in rows[0]
    assert (tmp_path / "c" / "figure.html").stat().st_size > 1000 and (tmp_path / "c" / "S4" / "model").is_dir()
    assert main(["gain", "evaluate", str(tmp_path / "m")]) == 2  # missing dataset: one line, exit 2
    assert "needs a model folder and a dataset" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------
# The CAM page


def test_cam_page_renders_and_reacts(trained, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from core.gain import service as gs

    monkeypatch.setenv("WORKBENCH_MODELS_DIR", str(tmp_path / "models"))
    trained["S4"].model.save(gs.gain_models_root() / "S4")
    other = tmp_path / "models" / "runs"  # a typed folder must lie in the project or the models folder
    trained["S1"].model.save(other / "S1" / "model")

    at = AppTest.from_file(str(ROOT / "app_pages" / "6_GAIN_MTL_CAM.py"), default_timeout=180)
    at.session_state["gain_limit"] = 2
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.multiselect(key="gain_models").value == ["S4"]
    text = " ".join(m.value for m in at.markdown)
    assert "CAM-IoU@0.50" in text and "Loc-IoU" in text

    res = gs.precompute_cams(gs.gain_models_root() / "S4", limit=2)
    want = gs.summary(res, 0.3)["cam_iou"]
    at.slider(key="gain_thr").set_value(0.3).run()
    text = " ".join(m.value for m in at.markdown)
    assert f"CAM-IoU@0.30 **{want:.3f}**" in text

    elsewhere = tmp_path / "elsewhere"
    trained["S1"].model.save(elsewhere / "S1")
    at.text_input(key="gain_folder").set_value(str(elsewhere)).run()
    assert any("outside the folders the app may read models from" in e.value for e in at.error)
    assert at.multiselect(key="gain_models").options == ["S4"], "nothing is read from a folder outside"

    at.text_input(key="gain_folder").set_value(str(other)).run()
    assert "runs/S1/model" in at.multiselect(key="gain_models").options
    at.multiselect(key="gain_models").set_value(["S4", "runs/S1/model"]).run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.dataframe) >= 3  # per-image metrics of each model + the table of matching images
    for kind in gs.FILTERS:
        at.radio(key="gain_filter").set_value(kind).run()
        assert not at.exception, (kind, [e.value for e in at.exception])
        assert not at.error, (kind, [e.value for e in at.error])

"""High-resolution scoring: the scale chosen from the training images, maps at the input's own size, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.data import index_dataset
from core.detectors import PatchCore, PatchCoreConfig, load_detector
from core.detectors.scale import choose_scale
from core.errors import ResourceLimitError
from core.metrics import image_metrics, pixel_auroc

DEEPPCB = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "deeppcb_00041"
N_TRAIN, N_TEST = 24, 10  # boards to fit on; defective and good test boards each


@pytest.fixture(scope="module")
def pcb():
    if not DEEPPCB.is_dir():
        pytest.fail(f"real test data missing: {DEEPPCB} (see ../shared/datasets/README.md)")
    index = index_dataset(DEEPPCB)
    train = [str(index.abs_path(r)) for r in index.split("train_normal")[:N_TRAIN]]
    test = index.split("test")
    picked = [r for r in test if r.label == 1][:N_TEST] + [r for r in test if r.label == 0][:N_TEST]
    return index, train, picked


def _pcb_metrics(det, index, records, cache):
    from core.evaluation import ground_truth_masks

    res = det.score_paths([str(index.abs_path(r)) for r in records], cache=cache)
    labels = np.array([r.label for r in records])
    masks, usable = ground_truth_masks(index, records, det.input_hw)
    assert res.maps.shape[1:] == masks.shape[1:] == det.input_hw
    return image_metrics(labels, res.scores).auroc, pixel_auroc(masks[usable], res.maps[usable])


def test_default_fit_scores_pcb_boards_at_their_own_size_and_beats_208_px(pcb, tmp_cache):
    index, train, test = pcb
    auto = PatchCore(PatchCoreConfig())  # the defaults, as `fit` with no size flag
    report = auto.fit(train, cache=tmp_cache)
    assert auto.input_hw == (640, 640) and report.scale["mode"] == "native"
    assert "640 x 640" in report.notes[0] and "no image-score bank" in report.notes[2]
    # The high-resolution settings replace the defaults, and say so (core.detectors.patchcore.HighResolutionSettings)
    assert report.notes[1].startswith("high-resolution settings: ratio 0.03, projection_dim 64, map_neighbors 1, "
                                   "blur_sigma 6, index ivfflat (nprobe 4, PCA 64, re-rank x4), "
                                   "image_score_fine_weight 2")
    assert auto.score_scale is not None and auto.rescore_index is not None  # the image score weights stride 8 x2
    assert auto.extra_bank is None and len(auto.bank) == round(0.03 * N_TRAIN * 80 * 80)
    assert auto.index.kind == "ivfflat" and auto.cfg.map_neighbors == 1 and auto.blur_sigma == 6.0
    from core.workbench import fit_summary

    summary = fit_summary({**report.to_dict(), "calibration": "left out"})  # the sentence the app shows after a fit
    assert "640 x 640 px (native)" in summary and "high-resolution settings: ratio 0.03" in summary
    small = PatchCore(PatchCoreConfig(image_size=208))
    small.fit(train, cache=tmp_cache)
    assert small.scale.mode == "forced" and small.input_hw == (208, 208)
    auto_img, auto_pix = _pcb_metrics(auto, index, test, tmp_cache)
    small_img, small_pix = _pcb_metrics(small, index, test, tmp_cache)
    assert auto_img >= 0.9 and auto_img > small_img, (auto_img, small_img)
    assert auto_pix >= 0.9 and auto_pix > small_pix + 0.03, (auto_pix, small_pix)


def test_automatic_scale_is_recorded_reproducible_and_survives_save_and_load(pcb, magnetic_tile, tmp_path):
    _, train, _ = pcb
    first, again = choose_scale(train, 208), choose_scale(list(reversed(train)), 208)
    assert first == again and first.hw == (640, 640) and first.mode == "native"
    tiles = index_dataset(magnetic_tile)
    small = choose_scale([str(tiles.abs_path(r)) for r in tiles.split("train_normal")], 208)
    assert small.hw == (208, 208) and small.mode == "default"  # magnetic_tile keeps the tuned default
    det = PatchCore(PatchCoreConfig(map_neighbors=2, rescore_ratio=0.0))  # a setting the user chose is kept
    det.fit(train[:6])  # 1,152 bank rows: enough for IVF cells (under 1,024 the search is flat)
    assert det.cfg.map_neighbors == 2 and det.cfg.ratio == 0.03 and det.index.kind == "ivfflat"
    det.save(tmp_path / "model")
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    assert cfg["format_version"] == 2 and cfg["scale"]["mode"] == "native" and cfg["input_hw"] == [640, 640]
    loaded = load_detector(tmp_path / "model")
    assert loaded.input_hw == (640, 640) and not loaded.auto_scale
    assert (loaded.cfg.ratio, loaded.cfg.map_neighbors, loaded.cfg.index, loaded.blur_sigma) == (
        0.03, 2, det.cfg.index, 6.0) and loaded.index.kind == "ivfflat"
    from core.data import read_image

    img = read_image(train[0])
    np.testing.assert_allclose(loaded.score_images([img]).scores, det.score_images([img]).scores, rtol=1e-5)


def test_model_saved_before_scales_loads_square(pcb, tmp_path):
    _, train, _ = pcb
    det = PatchCore(PatchCoreConfig(image_size=160, ratio=0.01, rescore_ratio=0.0))
    det.fit(train[:3])
    det.save(tmp_path / "model")
    path = tmp_path / "model" / "config.json"
    cfg = json.loads(path.read_text())
    for key in ("scale", "input_hw"):
        del cfg[key]
    cfg["format_version"] = 1
    path.write_text(json.dumps(cfg))
    old = load_detector(tmp_path / "model")
    assert old.input_hw == (160, 160) and old.image_size == 160


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth woven texture with mild noise, uint8 grey H x W."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 2)
    base = 128 + 40 * np.sin(xx / 9.0 + phase[0]) * np.sin(yy / 11.0 + phase[1])
    return np.clip(base + rng.normal(0, 3, (h, w)), 0, 255).astype(np.uint8)


def test_3_px_defect_on_a_3000_x_2000_image_is_found_and_localised(tmp_path):
    h, w = 2000, 3000
    rng = np.random.default_rng(0)
    train = []
    for i in range(2):
        p = tmp_path / f"good_{i}.png"
        cv2.imwrite(str(p), _texture(rng, h, w))
        train.append(str(p))
    normal, defect = _texture(rng, h, w), _texture(rng, h, w)
    y, x = 1234, 2101
    defect[y : y + 3, x : x + 3] = 255  # a 3 x 3 px bright speck
    det = PatchCore(PatchCoreConfig(pixel_budget=6_500_000, ratio=0.005, rescore_ratio=0.0))
    report = det.fit(train)
    assert det.input_hw == (h, w) and report.scale["mode"] == "native"
    res = det.score_images([normal, defect])
    assert res.maps.shape == (2, h, w)  # the map at the image's own size, aspect ratio kept
    assert res.scores[1] > res.scores[0] and res.scores[1] > det.threshold
    peak = np.unravel_index(int(res.maps[1].argmax()), (h, w))
    assert abs(peak[0] - (y + 1)) <= 8 and abs(peak[1] - (x + 1)) <= 8, peak


def test_aspect_ratio_is_kept_and_large_images_are_capped_to_the_budget(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        cv2.imwrite(str(p), np.zeros((1200, 1600), np.uint8))
        paths.append(str(p))
    s = choose_scale(paths, 208)
    assert s.mode == "capped" and s.hw == (544, 736) and s.train_hw == (1200, 1600)
    assert abs(s.width / s.height - 1600 / 1200) < 0.03
    assert choose_scale(paths, 208, pixel_budget=2_000_000).hw == (1200, 1600)  # within budget: its own size


def test_too_large_request_is_refused_before_any_feature_is_taken(pcb, tmp_path, capsys):
    _, train, _ = pcb
    det = PatchCore(PatchCoreConfig(image_size=6000))
    with pytest.raises(ResourceLimitError, match="36.0 MP.*limit") as exc:
        det.fit(train[:2])
    assert "--image-size" in exc.value.fix
    from core.cli import main as cli_main

    code = cli_main(["fit", str(DEEPPCB), "--image-size", "6000", "--out", str(tmp_path / "m")])
    assert code == 2 and "limit" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_worst_region_is_cropped_at_one_to_one_pixels():
    from core.visualize import worst_region, worst_region_crop

    img = np.zeros((2000, 3000, 3), np.uint8)
    amap = np.zeros((2000, 3000), np.float32)
    amap[1500, 2988] = 5.0  # near the right edge: the window shifts inside the image
    crop, box = worst_region_crop(img, amap, crop=256)
    assert crop.shape == (256, 256, 3) and box == (1372, 2744, 1628, 3000)
    y0, x0, y1, x1 = worst_region(amap[::4, ::4], (2000, 3000), 256)  # a map at a quarter size
    assert y1 - y0 == 256 and y0 <= 1500 < y1 and x0 <= 2988 < x1


def test_padim_chooses_the_same_scale_and_maps_at_the_boards_size(pcb, tmp_cache):
    from core.detectors import Padim, PadimConfig

    index, train, test = pcb
    det = Padim(PadimConfig())
    report = det.fit(train, cache=tmp_cache)
    assert det.input_hw == (640, 640) and report.scale["mode"] == "native" and det.grid == (80, 80)
    img, pix = _pcb_metrics(det, index, test, tmp_cache)
    small = Padim(PadimConfig(image_size=224))
    small.fit(train, cache=tmp_cache)
    small_img, small_pix = _pcb_metrics(small, index, test, tmp_cache)
    assert img > small_img and pix > small_pix + 0.03, (img, pix, small_img, small_pix)

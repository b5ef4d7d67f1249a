"""Exported bundles, for real: PatchCore and PaDiM fitted on a magnetic_tile slice, exported to ONNX + OpenVINO,
scored without torch and compared with the torch path on real test images."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core.bundle.export import export_bundle, export_bundle_zip
from core.bundle.manifest import read_manifest
from core.bundle.runtime import load_bundle
from core.cli import main as cli_main
from core.data import index_dataset
from core.detectors import Padim, PadimConfig, PatchCore, PatchCoreConfig, load_detector
from core.detectors.search import SearchConfig
from core.errors import ModelFormatError, WorkbenchError

REPO = Path(__file__).resolve().parent.parent
N_TRAIN = 40


@pytest.fixture(scope="module")
def tile(magnetic_tile):
    index = index_dataset(magnetic_tile)
    train = [str(index.abs_path(r)) for r in index.split("train_normal")[:N_TRAIN]]
    test = [str(index.abs_path(r)) for r in index.split("test")][::8]  # every defect class and good
    return train, test


@pytest.fixture(scope="module", params=["patchcore", "patchcore-ivfflat", "padim"])
def exported(request, tile, tmp_path_factory):
    """(model folder, bundle folder with both graphs, torch-path result on the test slice)."""
    root = tmp_path_factory.mktemp(request.param)
    # PatchCore with the default second (image-score) bank; PaDiM with its default 100 random channels.
    # "patchcore-ivfflat": one 5 % bank (1,352 rows) searched by IVF-Flat in a 64-d PCA projection with exact
    # re-rank, and an image score weighting the finest layer double, as high-resolution models have; the bundle
    # carries the fitted indexes (projection, cells, re-rank rows) and the weighting.
    det = {"patchcore": lambda: PatchCore(PatchCoreConfig(ratio=0.02)),
           "patchcore-ivfflat": lambda: PatchCore(PatchCoreConfig(ratio=0.05, rescore_ratio=0.0,
                                                                  index=SearchConfig("ivfflat", pca_dim=64,
                                                                                     rerank_factor=4),
                                                                  image_score_fine_weight=2.0)),
           "padim": lambda: Padim(PadimConfig())}[request.param]()
    det.fit(tile[0])
    if request.param == "patchcore-ivfflat":
        assert det.index.kind == "ivfflat" and det.rescore_index.kind == "ivfflat"
        assert det.index.effective["pca_dim"] == 64
        assert det.score_scale is not None and set(det.score_scale.tolist()) == {1.0, 2.0}
    det.save(root / "model")
    export_bundle(root / "model", root / "bundle", ["onnx", "openvino"])
    ref = load_detector(root / "model").score_paths(tile[1])
    return root / "model", root / "bundle", ref


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_bundle_scores_as_the_torch_path(exported, tile, runtime):
    model, bundle, ref = exported
    det = load_detector(model)
    scorer = load_bundle(bundle, runtime=runtime)
    assert scorer.runtime == runtime and scorer.threshold == det.threshold
    res = scorer.score_paths(tile[1])
    assert res.ok == ref.ok and len(res.ok) == len(tile[1]) > 80
    np.testing.assert_allclose(res.scores, ref.scores, rtol=1e-4, atol=0)
    decisions, want = res.scores >= scorer.threshold, ref.scores >= det.threshold
    assert np.array_equal(decisions, want)
    assert 0 < want.sum() < len(want)  # both decisions occur: the check is not on one class only
    norm = scorer.normalisation
    assert np.abs(norm.normalise_map(res.maps) - norm.normalise_map(ref.maps)).max() <= 1e-3
    assert scorer.pixel_threshold == det.normalisation.pixel_scale


def test_manifest_lists_every_file_with_its_hash(exported):
    model, bundle, _ = exported
    man = read_manifest(bundle)
    files = sorted(p.name for p in bundle.iterdir())
    assert sorted(man["files"]) + ["manifest.json"] == files
    assert not any(name.endswith((".pkl", ".pt", ".pth")) for name in files)
    cfg = json.loads((model / "config.json").read_text())
    assert man["model"]["arrays_sha256"] == cfg["arrays_sha256"]
    assert man["thresholds"]["image"] == cfg["normalisation"]["image_threshold"]
    assert man["input"]["size"] == cfg["image_size"] and set(man["graph"]) >= {"onnx", "openvino"}


def test_score_cli_reads_a_bundle_without_torch(exported, tile, tmp_path):
    """`python -m core score BUNDLE ...` in a fresh interpreter: same rows as with the model folder, and torch is
    never imported."""
    model, bundle, _ = exported
    paths = tile[1][:12]
    code = ("import runpy, sys\n"
            f"sys.argv = ['core', 'score', {str(bundle)!r}, *{paths!r}, '--csv', {str(tmp_path / 'b.csv')!r}]\n"
            "try:\n    runpy.run_module('core', run_name='__main__')\nexcept SystemExit as e:\n    rc = e.code\n"
            "print('RC', rc, 'TORCH', 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "RC 0 TORCH False" in out.stdout, out.stderr
    assert cli_main(["score", str(model), *paths, "--csv", str(tmp_path / "m.csv")]) == 0
    rows_b = (tmp_path / "b.csv").read_text().splitlines()
    rows_m = (tmp_path / "m.csv").read_text().splitlines()
    assert [r.split(",")[2] for r in rows_b] == [r.split(",")[2] for r in rows_m]  # decisions
    for rb, rm in zip(rows_b[1:], rows_m[1:]):
        assert abs(float(rb.split(",")[1]) / float(rm.split(",")[1]) - 1) < 1e-4


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


def test_tampered_file_is_refused(exported, tmp_path, capsys):
    _, bundle, _ = exported
    b = _copy(bundle, tmp_path)
    data = bytearray((b / "arrays.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (b / "arrays.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="arrays.safetensors does not match the SHA-256"):
        load_bundle(b)
    assert cli_main(["score", str(b), str(bundle / "manifest.json")]) == 2
    assert "does not match the SHA-256" in capsys.readouterr().err


def test_other_format_version_and_missing_file_are_refused(exported, tmp_path):
    _, bundle, _ = exported
    b = _copy(bundle, tmp_path)
    man = json.loads((b / "manifest.json").read_text())
    man["bundle_format_version"] = 3
    (b / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ModelFormatError, match="format version 3; this product reads versions 1, 2"):
        load_bundle(b)
    from safetensors.numpy import load_file

    # what a version-1 bundle can hold (no image-score weighting) still reads
    man["bundle_format_version"] = 1 if "score_scale" not in load_file(b / "arrays.safetensors") else 2
    (b / "manifest.json").write_text(json.dumps(man))
    load_bundle(b)
    (b / "feature.xml").unlink()
    with pytest.raises(ModelFormatError, match="lacks feature.xml"):
        load_bundle(b)


@pytest.mark.parametrize("exported", ["patchcore"], indirect=True)
def test_a_bfloat16_model_is_not_exported(exported, tmp_path):
    """The bundle's graph is float32: a model whose bank came from bfloat16 features would score differently
    there, so its export is refused with the fix, and nothing is written."""
    model, _, _ = exported
    shutil.copytree(model, tmp_path / "model")
    cfg_path = tmp_path / "model" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["params"]["precision"] = "bfloat16"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(WorkbenchError, match="bfloat16.*float32") as err:
        export_bundle(tmp_path / "model", tmp_path / "bundle")
    assert "without --precision" in err.value.fix
    assert not (tmp_path / "bundle").exists()


def test_missing_runtime_names_the_package(exported):
    """A machine without onnxruntime: the import is blocked in a fresh interpreter."""
    _, bundle, _ = exported
    code = ("import sys\nsys.modules['onnxruntime'] = None\n"
            "from core.bundle.runtime import load_bundle\nfrom core.errors import WorkbenchError\n"
            f"try:\n    load_bundle({str(bundle)!r}, runtime='onnxruntime')\n"
            "except WorkbenchError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "ERR" in out.stdout and "pip install onnxruntime==" in out.stdout, out.stdout + out.stderr
    with pytest.raises(WorkbenchError, match="Unknown runtime"):
        load_bundle(bundle, runtime="tensorrt")


def test_export_replaces_a_bundle_and_never_overwrites_other_folders(exported, tmp_path):
    model, _, _ = exported
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(WorkbenchError, match="is not a bundle"):
        export_bundle(model, other)
    assert (other / "keep.txt").read_text() == "mine"
    out = tmp_path / "b"
    export_bundle(model, out, ["onnx"])
    assert "openvino" not in read_manifest(out)["graph"] and not (out / "feature.xml").exists()
    export_bundle(model, out, ["openvino"])  # replaced whole: no onnx graph left behind
    assert sorted(p.name for p in out.iterdir()) == ["arrays.safetensors", "feature.bin", "feature.xml",
                                                     "manifest.json"]
    assert load_bundle(out).runtime == "openvino"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left
    with pytest.raises(WorkbenchError, match="no onnx graph"):
        load_bundle(out, runtime="onnxruntime")


def test_export_zip_for_the_app(exported):
    model, _, _ = exported
    data = export_bundle_zip(model, ["onnx"])
    import io

    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert f"{model.name}-bundle/manifest.json" in names and f"{model.name}-bundle/feature.onnx" in names


def test_numpy_resize_matches_the_torch_preprocessing(tile):
    from core.backbones import load_backbone
    from core.bundle.resample import resize_image
    from core.data import read_image

    lb = load_backbone("tf_efficientnet_lite0")
    mean = np.asarray(lb.mean, np.float32).reshape(3, 1, 1) * 255
    std = np.asarray(lb.std, np.float32).reshape(3, 1, 1) * 255
    rng = np.random.default_rng(0)
    images = [read_image(p, keep_gray=True) for p in tile[1][:6]]
    images += [rng.integers(0, 256, (150, 333, 3), dtype=np.uint8), rng.integers(0, 256, (90, 120), dtype=np.uint8)]
    for img in images:
        want = lb.preprocess([img], 208)[0].numpy()
        assert np.abs((resize_image(img, 208) - mean) / std - want).max() < 1e-4


def test_non_square_model_scores_at_its_own_aspect_ratio(tmp_path):
    """A model whose automatic scale keeps a non-square size (crops of real deeppcb boards, 480 x 288 px) exports
    and scores at that size: the bundle's maps have the model's shape and its scores are the torch path's."""
    import cv2

    boards = sorted((REPO.parent / "shared" / "datasets" / "deeppcb_00041" / "train" / "good").glob("*.jpg"))[:7]
    defect = sorted((REPO.parent / "shared" / "datasets" / "deeppcb_00041" / "test" / "defect").glob("*.jpg"))[0]
    crops = []
    for p in [*boards, defect]:
        out = tmp_path / f"{p.stem}_{p.parent.name}.png"
        cv2.imwrite(str(out), cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)[:288, :480])
        crops.append(str(out))
    det = PatchCore(PatchCoreConfig(rescore_ratio=0.0))
    det.fit(crops[:6])
    assert det.input_hw == (288, 480) and det.scale.mode == "native"
    det.save(tmp_path / "model")
    export_bundle(tmp_path / "model", tmp_path / "bundle", ["onnx"])
    assert read_manifest(tmp_path / "bundle")["input"]["hw"] == [288, 480]
    ref = load_detector(tmp_path / "model").score_paths(crops[6:])
    got = load_bundle(tmp_path / "bundle", runtime="onnxruntime").score_paths(crops[6:])
    assert got.maps.shape == ref.maps.shape == (2, 288, 480)
    np.testing.assert_allclose(got.scores, ref.scores, rtol=1e-4)
    np.testing.assert_allclose(got.maps, ref.maps, rtol=0, atol=1e-3 * float(ref.maps.max()))


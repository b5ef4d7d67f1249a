"""Model folders and atomic writes: round trips, refusal of pickles, tampering and newer versions."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from core.errors import ModelFormatError
from core.storage import FORMAT_VERSION, atomic_write_json, load_model_folder, save_model_folder


def test_round_trip(tmp_path):
    arrays = {"bank": np.arange(12, dtype=np.float32).reshape(3, 4), "src": np.array([1, 2, 3], np.int32)}
    save_model_folder(tmp_path / "m", "patchcore", {"backbone": "x"}, arrays)
    cfg, back = load_model_folder(tmp_path / "m", expect_kind="patchcore")
    assert cfg["backbone"] == "x" and cfg["format_version"] == FORMAT_VERSION
    np.testing.assert_array_equal(back["bank"], arrays["bank"])
    np.testing.assert_array_equal(back["src"], arrays["src"])


def test_refuses_pickle_folder(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "model.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ModelFormatError, match="pickled files are never loaded"):
        load_model_folder(folder)


def test_refuses_tampered_arrays(tmp_path):
    save_model_folder(tmp_path / "m", "padim", {}, {"mean": np.zeros((2, 2), np.float32)})
    blob = bytearray((tmp_path / "m" / "arrays.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (tmp_path / "m" / "arrays.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ModelFormatError, match="does not match the hash"):
        load_model_folder(tmp_path / "m")


def test_refuses_newer_version_and_foreign_config(tmp_path):
    save_model_folder(tmp_path / "m", "padim", {}, {"mean": np.zeros(2, np.float32)})
    cfg_path = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["format_version"] = FORMAT_VERSION + 1
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match="format version"):
        load_model_folder(tmp_path / "m")
    cfg_path.write_text(json.dumps({"model_type": "something else"}))
    with pytest.raises(ModelFormatError, match="not written by this product"):
        load_model_folder(tmp_path / "m")


def test_wrong_kind(tmp_path):
    save_model_folder(tmp_path / "m", "padim", {}, {"mean": np.zeros(2, np.float32)})
    with pytest.raises(ModelFormatError, match="not 'patchcore'"):
        load_model_folder(tmp_path / "m", expect_kind="patchcore")


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]

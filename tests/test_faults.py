"""Kill-safety: a process SIGKILLed at random points while saving a model folder, a JSON file and feature-cache
entries never leaves a torn or mismatched file behind: the previous (or the new) version always loads."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.features import FeatureCache
from core.storage import atomic_write_json, load_model_folder, save_model_folder

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, numpy as np
from pathlib import Path
from core.storage import save_model_folder, atomic_write_json
from core.features import FeatureCache
folder, start = Path(sys.argv[1]), int(sys.argv[2])
cache = FeatureCache(root=folder.parent / "features")
print("ready", flush=True)
i = start
while True:
    i += 1
    arr = np.full(300_000, i, np.float32)          # ~1.2 MB, so a kill often lands mid-write
    save_model_folder(folder, "padim", {"gen": i}, {"a": arr, "b": np.arange(i % 7 + 1)})
    atomic_write_json(folder.parent / "threshold.json", {"gen": i, "pad": list(range(2000))})
    cache.put(f"{i % 5:02d}" + "0" * 62, {"x": np.full((64, 8, 8), i % 5, np.float32)})
"""


def _check_state(folder: Path) -> int:
    cfg, arrays = load_model_folder(folder, expect_kind="padim")
    gen = int(cfg["gen"])
    assert arrays["a"].shape == (300_000,) and (arrays["a"] == gen).all(), "arrays of another save"
    assert len(arrays["b"]) == gen % 7 + 1
    thr = json.loads((folder.parent / "threshold.json").read_text())
    assert thr["pad"] == list(range(2000))
    cache = FeatureCache(root=folder.parent / "features")
    for k in range(5):
        hit = cache.get(f"{k:02d}" + "0" * 62)
        assert hit is None or (hit["x"].shape == (64, 8, 8) and (hit["x"] == k).all())
    assert cache.stats.corrupt == 0
    return gen


def test_sigkill_during_saves_never_corrupts(tmp_path):
    folder = tmp_path / "model"
    save_model_folder(folder, "padim", {"gen": 0}, {"a": np.zeros(300_000, np.float32), "b": np.arange(1)})
    atomic_write_json(tmp_path / "threshold.json", {"gen": 0, "pad": list(range(2000))})
    rng = random.Random(0)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_WAIT_POLICY="PASSIVE")
    gens, start = [], 0
    for _ in range(30):
        p = subprocess.Popen([sys.executable, "-c", CHILD, str(folder), str(start)], stdout=subprocess.PIPE, env=env)
        assert p.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.25))
        p.send_signal(signal.SIGKILL)
        p.wait()
        gen = _check_state(folder)
        gens.append(gen)
        start = gen + 1000  # the next child's generations are new, so an old/new mix would show
    assert len(set(gens)) > 5, f"kills did not land during saves: {gens}"
    leftovers = [p.name for p in folder.iterdir() if p.name not in ("config.json", "arrays.safetensors", ".lock")]
    save_model_folder(folder, "padim", {"gen": 1}, {"a": np.ones(300_000, np.float32), "b": np.arange(2)})
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "arrays.safetensors", "config.json"], leftovers


def test_kill_between_arrays_and_config_loads_old_model(tmp_path):
    """The exact window: new arrays written, config not yet -> the old model still loads (from the backup)."""
    folder = tmp_path / "m"
    save_model_folder(folder, "padim", {"gen": 1}, {"a": np.full(10, 1, np.float32), "b": np.arange(2)})
    code = (
        "import os, numpy as np, core.storage as s\n"
        "real = s.atomic_write_json\n"
        "def die(path, obj):\n"
        "    if str(path).endswith('config.json'): os.kill(os.getpid(), 9)\n"
        "    real(path, obj)\n"
        "s.atomic_write_json = die\n"
        f"s.save_model_folder({str(folder)!r}, 'padim', {{'gen': 2}}, "
        "{'a': np.full(10, 2, np.float32), 'b': np.arange(3)})\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == -signal.SIGKILL
    cfg, arrays = load_model_folder(folder)
    assert cfg["gen"] == 1 and (arrays["a"] == 1).all() and len(arrays["b"]) == 2
    # the next save cleans up and the new model loads
    save_model_folder(folder, "padim", {"gen": 3}, {"a": np.full(10, 3, np.float32), "b": np.arange(4)})
    cfg, arrays = load_model_folder(folder)
    assert cfg["gen"] == 3 and (arrays["a"] == 3).all()
    assert not [p for p in folder.iterdir() if p.name.startswith("arrays.") and p.name != "arrays.safetensors"]


def test_tampered_backup_is_not_used(tmp_path):
    """The fallback checks the hash too: a swapped-in backup file is refused like a tampered arrays file."""
    from core.errors import ModelFormatError

    folder = tmp_path / "m"
    save_model_folder(folder, "padim", {}, {"a": np.zeros(4, np.float32)})
    cfg = json.loads((folder / "config.json").read_text())
    (folder / f"arrays.{cfg['arrays_sha256']}.safetensors").write_bytes(b"evil")
    (folder / "arrays.safetensors").write_bytes(b"also evil")
    with pytest.raises(ModelFormatError, match="does not match the hash"):
        load_model_folder(folder)


def test_threshold_rewrite_keeps_model_loadable(tmp_path):
    """save_threshold (the app's threshold slider) rewrites config.json under the folder lock; the model loads."""
    from core.workbench import save_threshold

    folder = tmp_path / "m"
    save_model_folder(folder, "padim", {"normalisation": {"image_median": 1.0, "image_threshold": 2.0}},
                      {"a": np.zeros(4, np.float32)})
    cfg = save_threshold(folder, 3.5)
    assert cfg["normalisation"]["image_threshold"] == 3.5
    assert load_model_folder(folder)[0]["normalisation"]["image_threshold"] == 3.5


def test_corrupt_cache_entry_dropped_and_stale_temps_removed(tmp_path):
    cache = FeatureCache(root=tmp_path / "f")
    key = "ab" + "1" * 62
    cache.put(key, {"x": np.ones((2, 2), np.float32)})
    path = cache._path(key)
    path.write_bytes(path.read_bytes()[:-3])
    assert cache.get(key) is None and cache.stats.corrupt == 1 and not path.exists()
    stale = path.parent / f".{path.name}.dead.tmp"
    stale.write_bytes(b"partial")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    fresh = path.parent / f".{path.name}.live.tmp"
    fresh.write_bytes(b"in progress")
    cache.evict()
    assert not stale.exists() and fresh.exists()

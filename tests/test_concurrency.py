"""Two processes fitting and scoring at once on the same feature cache and models folder: no corruption, no
wrong cache hit (each process's scores equal a cache-free reference), every saved model loads."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np

from tests import fuzz_cases as F


def _worker(image_size: int, data: str, cache_root: str, models: str, out: str) -> None:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    import torch

    torch.set_num_threads(1)
    from core.features import FeatureCache
    from core.workbench import FitSettings, fit_model, load_model

    cache = FeatureCache(root=Path(cache_root))
    results = {}
    for rep in range(2):
        name = f"m{image_size}-{rep}"
        fit_model(data, FitSettings(image_size=image_size, options={"ratio": 0.05}), name=name, cache=cache,
                  root=Path(models))
        det = load_model(Path(models) / name)
        test = sorted(str(p) for p in (Path(data) / "test").rglob("*.png"))
        res = det.score_paths(test, cache=cache)
        results[name] = res.scores
        # both processes also overwrite one shared folder (serialised by the folder lock)
        det.save(Path(models) / "shared")
    np.savez(out, **results, corrupt=np.array([cache.stats.corrupt]))


def _dataset(root: Path) -> Path:
    imgs = F.good_images(14, seed=11, size=40)
    for i in range(10):
        F.write_png(root / "train" / "good" / f"{i:02d}.png", imgs[i])
    for i in range(2):
        F.write_png(root / "test" / "good" / f"{i:02d}.png", imgs[10 + i])
    for i in range(2):
        bad = imgs[12 + i].copy()
        bad[10:20, 10:20] = 255
        F.write_png(root / "test" / "spot" / f"{i:02d}.png", bad)
    return root


def test_two_processes_share_cache_and_models(tmp_path):
    from core.detectors import load_detector
    from core.features import FeatureCache
    from core.storage import load_model_folder

    data = _dataset(tmp_path / "data")
    cache_root, models = tmp_path / "features", tmp_path / "models"
    models.mkdir()
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_worker,
                    args=(size, str(data), str(cache_root), str(models), str(tmp_path / f"out{size}.npz")))
        for size in (64, 96)  # different input sizes: different cache keys for the same image bytes
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0, f"worker exit code {p.exitcode}"

    test = sorted(str(p) for p in (data / "test").rglob("*.png"))
    for size in (64, 96):
        got = np.load(tmp_path / f"out{size}.npz")
        assert int(got["corrupt"][0]) == 0
        for rep in range(2):
            name = f"m{size}-{rep}"
            det = load_detector(models / name)
            ref = det.score_paths(test, cache=None).scores  # no cache: a wrong hit in the worker would differ
            np.testing.assert_allclose(got[name], ref, rtol=1e-4, atol=1e-4)
    cfg, _ = load_model_folder(models / "shared")  # last writer wins, whole
    assert cfg["image_size"] in (64, 96)
    # every cache entry is intact
    cache = FeatureCache(root=cache_root)
    entries = cache.entries()
    assert entries
    for path, _, _ in entries:
        assert cache.get(path.stem) is not None
    assert cache.stats.corrupt == 0
    assert not list(models.glob(".*.tmp")), "half-written model folders left behind"

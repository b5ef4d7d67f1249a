"""Where PaDiM's fit goes: the side by side's PaDiM fit, repeated, with its extraction split into parts.

    .venv/bin/python benchmarks/padim_fit_profile.py [--rounds 3] [--seed 0]

Fits PaDiM as ``peer_anomalib.py`` does (lite0 blocks.2 + blocks.4, 224 px, 100 channels, all 676 magnetic_tile
training images, a fresh feature cache under ``core.config.CACHE_DIR``) ``--rounds`` times after one warm-up fit,
and reports the fit's own phases (extract / gaussian / calibrate) together with the time spent inside four calls
during the whole fit (calibration's extraction included): decoding (``read_image_bytes``), preprocessing
(``LoadedBackbone.preprocess``: resize + normalise), the backbone (``LoadedBackbone.feature_maps``) and cache
writes (``FeatureCache.put``). The four are timed by wrapping those functions for this process only; what is
left of the fit is reading files, hashing, stacking, the Gaussians and the maps. Writes
benchmarks/results/padim_fit_profile.json.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

import numpy as np
from common import MAGNETIC_TILE, table, write_result

PARTS = {"decode": ("core.data.images", None, "read_image_bytes"),
         "preprocess": ("core.backbones.registry", "LoadedBackbone", "preprocess"),
         "backbone": ("core.backbones.registry", "LoadedBackbone", "feature_maps"),
         "cache_write": ("core.features.cache", "FeatureCache", "put")}


def instrument(spent: dict[str, float]) -> None:
    """Wrap the functions in PARTS so that their time adds up in ``spent``."""
    import importlib

    for part, (module, cls, name) in PARTS.items():
        owner = importlib.import_module(module)
        owner = getattr(owner, cls) if cls else owner
        original = getattr(owner, name)

        def timed(*args, _f=original, _part=part, **kwargs):
            t0 = time.perf_counter()
            try:
                return _f(*args, **kwargs)
            finally:
                spent[_part] += time.perf_counter() - t0

        setattr(owner, name, functools.wraps(original)(timed))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    started = time.perf_counter()

    from core.config import CACHE_DIR
    from core.detectors import Padim, PadimConfig
    from core.features import FeatureCache

    paths = sorted(str(p) for p in (MAGNETIC_TILE / "train" / "good").iterdir())
    spent = {part: 0.0 for part in PARTS}
    instrument(spent)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    runs = []
    for r in range(args.rounds + 1):
        for part in spent:
            spent[part] = 0.0
        det = Padim(PadimConfig(layers=("blocks.2", "blocks.4"), image_size=224, n_channels=100, seed=args.seed))
        with tempfile.TemporaryDirectory(prefix="padim-fit-profile-", dir=CACHE_DIR) as tmp:
            t0 = time.perf_counter()
            rep = det.fit(paths, cache=FeatureCache(root=Path(tmp)))
            total = time.perf_counter() - t0
        if r == 0:
            continue  # warm-up: loads the backbone and builds its feature graph
        runs.append({"total_s": total, **{f"{k}_s": v for k, v in rep.seconds.items()},
                     **{f"{k}_s": v for k, v in spent.items()}})
        print(f"round {r}: fit {total:.2f} s", flush=True)
    keys = list(runs[0])
    rows = [[k[:-2], f"{np.median([x[k] for x in runs]):.2f}",
             f"{min(x[k] for x in runs):.2f}-{max(x[k] for x in runs):.2f}",
             f"{1000 * np.median([x[k] for x in runs]) / len(paths):.2f}"] for k in keys]
    print(table(["part", "s median", "range", "ms per image"], rows))
    write_result("padim_fit_profile", {"images": len(paths), "rounds": runs}, started)


if __name__ == "__main__":
    main()

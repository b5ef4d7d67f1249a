"""The cascade gate of a saved model: fitted beside it, measured once per val_mix image, read back for tuning.

Layout (the same as ``python -m core cascade`` writes, with the model folder itself as the detector)::

    <model>/cascade/gate/                  the gate (config.json + arrays.safetensors)
    <model>/cascade/measured_val_mix.csv   per val_mix image: label, gate score + ms, heatmap score + ms (batch 1)
    <model>/cascade/sweep.csv, pareto.csv  every (T_low, T_high) pair on val_mix, and the fronts
    <model>/cascade/cascade.json           the automatic choice; ``policy`` is what the app saves

The folder is written under a temporary name and swapped in, so a half-fitted gate is never read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.errors import DatasetError, ModelFormatError, WorkbenchError
from core.workbench.models import load_model, model_info

CASCADE_DIRNAME = "cascade"
GATE_ORDER = ("stats", "supervised", "distance", "autoencoder")  # cheapest to fit first
GATE_HELP = {
    "stats": "Robust image statistics + Mahalanobis distance to the normals; fits in a second, label-free.",
    "supervised": "A small classifier trained on train_normal + train_mix defects (needs labels); slower to fit.",
    "distance": "Distance to the training normals in a small embedding; label-free.",
    "autoencoder": "Reconstruction error of a tiny autoencoder on the normals; label-free, slowest to fit.",
}


def gate_kinds() -> list[str]:
    """Gate kinds that can be fitted here, cheapest to fit first."""
    from core.cascade import GATES

    return [g for g in GATE_ORDER if g in GATES] + [g for g in GATES if g not in GATE_ORDER]


def cascade_dir(folder: str | Path) -> Path:
    """The cascade folder beside a model: ``<model>/cascade``."""
    return Path(folder) / CASCADE_DIRNAME


def cascade_stamp(folder: str | Path) -> str | None:
    """Changes whenever the cascade folder is rewritten or its policy saved (a cache key); None: no gate."""
    d = cascade_dir(folder)
    try:
        a = (d / "cascade.json").stat().st_mtime_ns
        b = (d / "measured_val_mix.csv").stat().st_mtime_ns
    except OSError:
        return None
    return f"{a}:{b}"


@dataclass
class GateFitOutcome:
    """What :func:`fit_gate` returns: the cascade folder, the gate kind, its report, wall time, images measured."""

    folder: Path
    kind: str
    report: dict[str, Any]
    wall_seconds: float
    n_measured: int


def fit_gate(
    model_folder: str | Path,
    kind: str = "stats",
    progress: Callable[[str, int, int], None] | None = None,
    det=None,
    limit: int | None = None,
    seed: int = 0,
) -> GateFitOutcome:
    """Fit a cascade gate for a saved model and measure it once, per image.

    The gate learns on train_normal + train_mix (label-free gates on the normals only) and is calibrated on
    val_mix; then every val_mix image is scored by the gate and by the model one at a time (batch 1, decoded
    images, no feature cache) and timed. Those measurements are what the Thresholds page tunes on: moving
    ``T_low``/``T_high`` afterwards never calls a model.
    """
    from core.cascade import make_gate
    from core.cascade.pipeline import CascadeOptions, check_mixed, load_split, run_sweep
    from core.data import index_dataset

    folder = Path(model_folder)
    info = model_info(folder)
    if info.error:
        raise ModelFormatError(info.error, "Pick a model that loads.")
    if not info.dataset or not Path(info.dataset).is_dir():
        raise DatasetError(f"The dataset this model was fitted on ({info.dataset or 'unknown'}) is not here.",
                           "Restore that folder, or fit a model on a dataset that is here.")
    if kind not in gate_kinds():
        raise WorkbenchError(f"Unknown gate {kind!r}.", f"Choose one of: {', '.join(gate_kinds())}.")
    prog = progress or (lambda *_: None)
    t0 = time.perf_counter()
    index = index_dataset(info.dataset)
    check_mixed(index)
    data = {}
    for i, split in enumerate(("train_normal", "train_mix", "val_mix")):
        prog("load images", i, 3)
        data[split] = load_split(index, split, limit)
    prog("load images", 3, 3)
    tn, tm, val = data["train_normal"], data["train_mix"], data["val_mix"]
    gate = make_gate(kind, seed=seed)
    from core.workbench.review import review_label_images

    extra_images, extra_labels = review_label_images(folder)  # misses marked as defects on the review pages
    report = gate.fit(tn.images + tm.images + extra_images, np.r_[tn.labels, tm.labels, extra_labels].astype(np.int64),
                      val.images, val.labels, prog)
    report["review_labels"] = len(extra_labels)
    det = det if det is not None else load_model(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{CASCADE_DIRNAME}.", suffix=".tmp", dir=folder))
    try:
        gate.save(tmp / "gate")
        result = run_sweep(gate, det, val, CascadeOptions(gate=kind, limit=limit, seed=seed), out=tmp,
                           progress=lambda s, d, n: prog("measure (batch 1)", d, n))
        from core.storage import atomic_write_json

        atomic_write_json(tmp / "fit.json", {"gate": kind, "dataset": str(index.root), "model": folder.name,
                                             "model_stamp": info.stamp.split(":")[0], "limit": limit,
                                             "gate_report": report, "created": time.strftime("%Y-%m-%d %H:%M:%S")})
        final = cascade_dir(folder)
        old = None
        if final.exists():
            old = folder / f".{CASCADE_DIRNAME}-old-{time.time_ns()}"
            os.rename(final, old)
        os.rename(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return GateFitOutcome(final, kind, {**report, "choice": result["choice"], "gate_health": result["gate_health"]},
                          time.perf_counter() - t0, len(val.labels))


@dataclass
class CascadeState:
    """What the Thresholds page tunes on: cached per-image measurements and the saved cascade settings."""

    folder: Path
    gate: str
    measured: Any  # core.cascade.Measured (val_mix)
    defects: list[str]
    config: dict[str, Any]  # cascade.json
    stamp: str

    @property
    def saved_policy(self) -> dict[str, Any]:
        return dict(self.config.get("policy") or {})

    def __len__(self) -> int:
        return int(len(self.measured.labels))


def load_cascade(folder: str | Path) -> CascadeState | None:
    """The model's gate measurements and settings, or None when no gate was fitted for it."""
    import json

    from core.cascade.pipeline import read_measured

    d = cascade_dir(folder)
    stamp = cascade_stamp(folder)
    if stamp is None:
        return None
    try:
        cfg = json.loads((d / "cascade.json").read_text())
        defects, m = read_measured(d / "measured_val_mix.csv")
    except (OSError, ValueError, KeyError) as exc:
        raise ModelFormatError(f"The cascade files in {d} cannot be read ({exc}).",
                               "Fit the gate again from the Data & models page.") from None
    return CascadeState(Path(folder), str(cfg.get("gate", "")), m, defects, cfg, stamp)

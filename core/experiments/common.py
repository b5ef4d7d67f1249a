"""What every study shares: data slices, a peak-memory probe, and writing a run's results.

A run folder holds ``results.csv`` (one row per measured setting), ``results.json`` (rows, settings, package
versions, machine, load average at start and end, wall time, command), ``figure.json`` (plotly figures, drawn by the
Experiments page), ``figures.html`` (the same, self-contained) and ``results.md`` (the table README includes, with
the command, wall time and notes).
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.data import DatasetIndex, ImageRecord
from core.storage import atomic_write_json, atomic_write_text

STUDIES = ("backbones", "coreset", "faiss", "fusion", "cross-domain")
QUICK_NOTE = "QUICK RUN (a small slice, for tests): never quote these numbers in README."


@dataclass
class Column:
    """One table column: the row key, its header, and how to print it (a format spec or '' for str)."""

    key: str
    header: str
    fmt: str = ""


@dataclass
class StudyResult:
    """What a study returns: rows (plain dicts), the table's columns, settings, notes and plotly figures."""

    study: str
    dataset: str
    quick: bool
    rows: list[dict[str, Any]]
    columns: list[Column]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)  # name -> plotly Figure
    extra: dict[str, Any] = field(default_factory=dict)  # anything else worth keeping in results.json


# --------------------------------------------------------------------------------------------------------------
# Data slices


def size_text(image_size: int) -> str:
    """How a study's ``image_size`` setting reads in its notes (0 = PatchCore's defaults)."""
    if image_size:
        return f"{image_size} px"
    return "PatchCore's default input (208 px on CNNs, 224 on ViTs)"


def records_of(index: DatasetIndex, split: str) -> list[ImageRecord]:
    """The split's records, or [] when the split is empty (domain sets have no mixed splits)."""
    return [index.records[i] for i in index.splits.get(split, [])]


def spread(items: Sequence, n: int | None) -> list:
    """``n`` items evenly spread over ``items`` (deterministic; all of them when ``n`` is None or large)."""
    items = list(items)
    if n is None or n >= len(items):
        return items
    if n <= 0:
        return []
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in sorted(set(idx.tolist()))]


def balanced(records: Sequence[ImageRecord], n: int | None) -> list[ImageRecord]:
    """Up to ``n`` records, half normal and half defective, spread over each (all when ``n`` is None)."""
    if n is None:
        return list(records)
    good = [r for r in records if r.label == 0]
    bad = [r for r in records if r.label == 1]
    k = n // 2
    return spread(good, k) + spread(bad, n - min(k, len(good)))


def paths_of(index: DatasetIndex, records: Sequence[ImageRecord]) -> list[str]:
    return [str(index.abs_path(r)) for r in records]


# --------------------------------------------------------------------------------------------------------------
# Measuring


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every ``interval`` s by a thread).

    Use as ``with PeakRSS() as mem: ...``; then ``mem.peak_mb`` and ``mem.start_mb``. Process-wide: memory held
    from before the block counts too, so studies free what they can between settings.
    """

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.start_mb = 0.0
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._proc.memory_info().rss / 1e6)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.start_mb = self.peak_mb = self._proc.memory_info().rss / 1e6
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mb = max(self.peak_mb, self._proc.memory_info().rss / 1e6)


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def versions() -> dict[str, str]:
    """Versions of the packages the numbers depend on."""
    out = {"python": platform.python_version()}
    for name in ("numpy", "torch", "timm", "faiss", "sklearn", "scipy", "cv2"):
        try:
            mod = __import__(name)
            out[name] = str(getattr(mod, "__version__", "?"))
        except ImportError:
            out[name] = "not installed"
    return out


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import psutil
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }


# --------------------------------------------------------------------------------------------------------------
# Writing


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    if isinstance(v, str):
        return v
    if spec:
        try:
            return format(v, spec)
        except (TypeError, ValueError):
            return str(v)
    return str(v)


def markdown_table(columns: Sequence[Column], rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub markdown table of ``rows`` with ``columns`` (missing values print as '-')."""
    lines = ["| " + " | ".join(c.header for c in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c.key), c.fmt).replace("|", "/") for c in columns) + " |")
    return "\n".join(lines)


def _csv_text(columns: Sequence[Column], rows: Sequence[dict[str, Any]]) -> str:
    keys = [c.key for c in columns] + sorted({k for r in rows for k in r} - {c.key for c in columns})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(keys)
    for r in rows:
        w.writerow(["" if r.get(k) is None else (json.dumps(r[k]) if isinstance(r[k], (dict, list)) else r[k])
                    for k in keys])
    return buf.getvalue()


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if np.isfinite(f) else None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, Path):
        return str(v)
    return v


@dataclass
class RunClock:
    """Wall time and load average of a run, started when created."""

    started: float = field(default_factory=time.perf_counter)
    started_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    load_start: list[float] | None = field(default_factory=load_average)

    def seconds(self) -> float:
        return time.perf_counter() - self.started


def write_results(result: StudyResult, out_dir: str | Path, clock: RunClock, command: str | None = None) -> Path:
    """Write results.csv, results.json, figure.json, figures.html and results.md into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wall = clock.seconds()
    command = command or "python -m core " + " ".join(sys.argv[1:])
    load_end = load_average()
    meta = {
        "study": result.study,
        "dataset": result.dataset,
        "quick": result.quick,
        "command": command,
        "started_at": clock.started_at,
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "wall_seconds": wall,
        "load_average_start": clock.load_start,
        "load_average_end": load_end,
        "settings": result.settings,
        "versions": versions(),
        "machine": machine(),
        "columns": [asdict(c) for c in result.columns],
        "rows": result.rows,
        "notes": result.notes,
        "extra": result.extra,
        "figures": sorted(result.figures),
    }
    atomic_write_json(out / "results.json", _jsonable(meta))
    atomic_write_text(out / "results.csv", _csv_text(result.columns, result.rows))
    figs = {name: json.loads(fig.to_json()) for name, fig in result.figures.items()}
    atomic_write_text(out / "figure.json", json.dumps(figs))
    html = []
    for i, (name, fig) in enumerate(result.figures.items()):
        html.append(f"<h2>{name}</h2>" + fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    atomic_write_text(out / "figures.html", "<html><head><meta charset='utf-8'></head><body>" + "".join(html)
                      + "</body></html>")
    atomic_write_text(out / "results.md", results_markdown(meta, result))
    return out


def results_markdown(meta: dict[str, Any], result: StudyResult) -> str:
    """The markdown README includes: title, command, wall time and load, the table, then the notes."""
    load = ""
    if meta.get("load_average_start") and meta.get("load_average_end"):
        load = (f"; 1-min load average {meta['load_average_start'][0]} at start, {meta['load_average_end'][0]} at end "
                f"on {meta['machine']['cpu_count']} cores")
    lines = [f"### Experiment: {result.study} on `{Path(result.dataset).name}`", ""]
    if result.quick:
        lines += [f"**{QUICK_NOTE}**", ""]
    lines += [f"Command: `{meta['command']}` (wall {meta['wall_seconds']:.0f} s, {meta['finished_at']}{load}).", ""]
    lines += [markdown_table(result.columns, result.rows), ""]
    lines += [f"- {n}" for n in result.notes]
    return "\n".join(lines).rstrip() + "\n"


def progress_stage(progress, stage: str, done: int, total: int) -> None:
    """Report a study step (guarding against callers that pass None)."""
    if progress is not None:
        progress(stage, done, total)


# --------------------------------------------------------------------------------------------------------------
# Fitting and scoring on record lists (slices of splits)


@dataclass
class Scored:
    """Raw scores, maps and labels of a list of records, with the metrics computed on them."""

    paths: list[str]
    labels: np.ndarray
    defects: list[str]
    scores: np.ndarray
    maps: np.ndarray
    image_auroc: float | None
    pixel_auroc: float | None
    aupro: float | None
    seconds: dict[str, float]


def score_records(det, index: DatasetIndex, records: Sequence[ImageRecord], cache=None, progress=None,
                  pixel: bool = True, with_aupro: bool = True) -> Scored:
    """Score ``records`` with a fitted detector; image AUROC (when both classes are present), pixel AUROC and
    AUPRO (when masks exist) on raw scores and maps."""
    from core.evaluation import score_with_ground_truth
    from core.metrics import aupro, image_metrics, pixel_auroc
    from core.progress import no_progress

    sr = score_with_ground_truth(det, index, records, cache, progress or no_progress, masks=pixel)
    res, labels = sr.result, sr.labels
    auroc = image_metrics(labels, res.scores).auroc if len(set(labels.tolist())) == 2 else None
    pa = ap = None
    if sr.has_pixels:
        pa = pixel_auroc(sr.masks[sr.usable], res.maps[sr.usable])
        if with_aupro:
            ap = aupro(sr.masks[sr.usable], res.maps[sr.usable])
    return Scored(sr.paths, labels, [r.defect for r in sr.records], res.scores, res.maps, auroc, pa, ap,
                  dict(res.seconds))

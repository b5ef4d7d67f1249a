"""Running studies and reading their run folders: what the CLI verb and the Experiments page call."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from core.config import PROJECT_ROOT
from core.errors import WorkbenchError
from core.experiments.common import STUDIES, RunClock, StudyResult, write_results
from core.paths import is_within
from core.progress import ProgressFn, no_progress


@dataclass(frozen=True)
class Study:
    """A study: its run function and its settings class (with a ``quick()`` constructor)."""

    name: str
    run: Callable[..., StudyResult]
    settings: type
    summary: str


def studies() -> dict[str, Study]:
    """Every study by CLI name (imported lazily: they pull in torch and faiss)."""
    from core.experiments.backbones import BackboneSettings, run_backbones
    from core.experiments.coreset_study import CoresetSettings, run_coreset
    from core.experiments.cross_domain import CrossDomainSettings, run_cross_domain
    from core.experiments.faiss_study import FaissSettings, run_faiss
    from core.experiments.fusion import FusionSettings, run_fusion

    return {
        "backbones": Study("backbones", run_backbones, BackboneSettings, "PatchCore per offline backbone"),
        "coreset": Study("coreset", run_coreset, CoresetSettings, "random / greedy / variance at 0.5-10 %"),
        "faiss": Study("faiss", run_faiss, FaissSettings, "flat vs IVF-PQ, nprobe, re-rank"),
        "fusion": Study("fusion", run_fusion, FusionSettings, "single / concat / weighted / adaptive layers"),
        "cross-domain": Study("cross-domain", run_cross_domain, CrossDomainSettings,
                              "fit at home, flag rate and MMD on foreign sets"),
    }


def default_runs_root() -> Path:
    """Where runs are kept: ``$WORKBENCH_EXPERIMENTS_DIR``, else ``runs/experiments`` in the project."""
    env = os.environ.get("WORKBENCH_EXPERIMENTS_DIR")
    return Path(env) if env else PROJECT_ROOT / "runs" / "experiments"


def runs_roots() -> list[Path]:
    """The folders the app may list runs from and write quick runs into: the runs root and ``<project>/runs``."""
    from core.paths import runs_dir

    return list(dict.fromkeys([default_runs_root(), runs_dir()]))


def check_runs_folder(folder: str | Path) -> Path:
    """``folder`` resolved (relative to the project), if it lies under :func:`runs_roots`; else a WorkbenchError.

    The Experiments page reads and writes only there: a typed ``/etc`` or ``../..`` or a link leading out is
    refused before anything is listed or written.
    """
    from core.paths import confine

    return confine(folder, runs_roots(), "runs folder",
                   "Type a folder under the runs root (e.g. runs/experiments), or set WORKBENCH_EXPERIMENTS_DIR "
                   "and restart the app.")


def start_quick_run(study: str, dataset: str | Path, root: str | Path, progress: ProgressFn = no_progress
                    ) -> tuple[StudyResult, Path]:
    """What the page's "Run quick" does: a ``--quick`` run written into a new folder under the checked ``root``."""
    checked = check_runs_folder(root)
    out = default_out(study, dataset, True, checked)
    return run_study(study, dataset, out, quick=True, progress=progress,
                     command=f"page: python -m core experiment {study} {dataset} --quick --out {out}")


def default_out(study: str, dataset: str | Path, quick: bool, root: Path | None = None) -> Path:
    """``ROOT/<study>/<dataset>-<time>[-quick]``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return (root or default_runs_root()) / study / f"{Path(dataset).name}-{stamp}{'-quick' if quick else ''}"


def run_study(name: str, dataset: str | Path, out: str | Path, quick: bool = False, cache: Any = "default",
              progress: ProgressFn = no_progress, overrides: dict[str, Any] | None = None,
              command: str | None = None) -> tuple[StudyResult, Path]:
    """Run study ``name`` on ``dataset`` (a folder or a name under the data roots) and write its run folder.

    ``cache``: a FeatureCache, None for none, or "default" for the project's cache. ``overrides`` replace
    fields of the (full or quick) settings.
    """
    from core.config import set_threads
    from core.data import index_dataset
    from core.data.locate import resolve_dataset

    table = studies()
    if name not in table:
        raise WorkbenchError(f"Unknown study {name!r}.", f"Choose one of: {', '.join(STUDIES)}.")
    study = table[name]
    clock = RunClock()
    set_threads()
    if cache == "default":
        from core.features import FeatureCache

        cache = FeatureCache()
    settings = study.settings.quick() if quick else study.settings()
    if overrides:
        unknown = set(overrides) - set(settings.__dataclass_fields__)
        if unknown:
            raise WorkbenchError(f"Study {name} has no setting {', '.join(sorted(unknown))}.",
                                 f"Use: {', '.join(settings.__dataclass_fields__)}.")
        settings = replace(settings, **overrides)
    index = index_dataset(resolve_dataset(dataset))
    result = study.run(index, settings, cache=cache, progress=progress)
    result.quick = quick
    if quick:
        result.notes.insert(0, "Quick run: a small slice for tests; not a result.")
    folder = write_results(result, out, clock, command=command)
    return result, folder


# --------------------------------------------------------------------------------------------------------------
# Reading runs back


@dataclass
class RunInfo:
    """One run folder as listed on the page."""

    folder: Path
    study: str
    dataset: str
    quick: bool
    wall_seconds: float | None
    finished_at: str
    error: str = ""


@dataclass
class RunData:
    """Everything a page draws for one run."""

    info: RunInfo
    meta: dict[str, Any]
    rows: list[dict[str, Any]]
    columns: list[dict[str, str]]
    figures: dict[str, dict] = field(default_factory=dict)
    markdown: str = ""


def _info(folder: Path, meta: dict[str, Any]) -> RunInfo:
    return RunInfo(folder, str(meta.get("study", "?")), Path(str(meta.get("dataset", "?"))).name,
                   bool(meta.get("quick")), meta.get("wall_seconds"), str(meta.get("finished_at", "")))


def list_runs(root: str | Path | None = None) -> list[RunInfo]:
    """Every run folder (one holding results.json) under ``root``, newest first; unreadable ones with an error."""
    root = check_runs_folder(root) if root else default_runs_root().resolve()
    if not root.is_dir():
        return []
    out = []
    for f in root.rglob("results.json"):
        if not is_within(f, [root]):  # a link under the runs folder that leads out is not followed
            continue
        try:
            out.append(_info(f.parent, json.loads(f.read_text())))
        except (OSError, ValueError) as exc:
            out.append(RunInfo(f.parent, "?", "?", False, None, "", error=f"{f}: unreadable ({exc})"))
    return sorted(out, key=lambda r: (r.finished_at, str(r.folder)), reverse=True)


def load_run(folder: str | Path) -> RunData:
    """A run's metadata, rows, columns, figures (plotly dicts) and markdown (only under :func:`runs_roots`)."""
    folder = check_runs_folder(folder)
    try:
        meta = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError) as exc:
        raise WorkbenchError(f"{folder / 'results.json'} cannot be read ({exc}).",
                             "Rerun the study into that folder.") from exc
    figures: dict[str, dict] = {}
    fig_file = folder / "figure.json"
    if fig_file.is_file():
        try:
            figures = json.loads(fig_file.read_text())
        except ValueError:
            figures = {}
    md = (folder / "results.md").read_text() if (folder / "results.md").is_file() else ""
    return RunData(_info(folder, meta), meta, list(meta.get("rows", [])), list(meta.get("columns", [])), figures, md)


def table_rows(run: RunData) -> list[dict[str, Any]]:
    """The run's rows with its table's headers as keys, in column order (for a dataframe)."""
    return [{c["header"]: r.get(c["key"]) for c in run.columns} for r in run.rows]

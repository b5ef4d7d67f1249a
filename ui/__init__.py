"""What every page shares: error display, the session's model, cached loading and scoring.

The pages live in ``app_pages/``, not ``pages/``: Streamlit lists a ``pages/`` folder beside the entry point as
pages of its own (before ``st.navigation`` runs), so on the first load the sidebar and the tab read "app".
State is kept in ``st.session_state`` only (one browser session never sees another's choices); loaded models
and scores are shared read-only through ``st.cache_resource`` (no copy per rerun: with thousands of scored images and
their maps, unpickling a cache_data copy on every slider move would cost more than the page itself).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import streamlit as st

from core import workbench as wb
from core.errors import WorkbenchError
from ui.charts import (  # noqa: F401  (re-exported)
    BAND_PARAM,
    band_histogram,
    fast_figure,
    histogram,
    log_axis,
    selected_band,
    styled,
    threshold_line,
)

HOME = "app.py"
HOME_PAGE = None  # the home st.Page, set by app.py (the navigation) on every run


def setup(title: str, icon: str = "🔍") -> None:
    """Page config and title (call first on every page)."""
    try:
        st.set_page_config(page_title=f"{title} - Anomaly workbench", page_icon=icon, layout="wide")
    except Exception:  # noqa: BLE001  (already set in this run)
        pass
    st.title(title)


def show_error(exc: BaseException) -> None:
    """A user-fixable error as is; anything else as a short message, never a traceback."""
    if isinstance(exc, WorkbenchError):
        st.error(str(exc))
    elif isinstance(exc, MemoryError):
        st.error("Out of memory. Fix: use fewer or smaller images, a smaller image size or a smaller coreset ratio.")
    else:
        st.error(
            f"Something went wrong ({type(exc).__name__}: {str(exc)[:300]}). "
            "Fix: retry; if it happens again, report it with the steps that led here."
        )


def show_flash(prefix: str, note: Callable[[str], Any] = st.info) -> None:
    """Messages that a button's callback left for the run after it: ``{prefix}_message`` (drawn with ``note``),
    ``{prefix}_saved`` (success) and ``{prefix}_save_error`` (an exception, shown as :func:`show_error` does)."""
    if msg := st.session_state.pop(f"{prefix}_message", None):
        note(msg)
    if msg := st.session_state.pop(f"{prefix}_saved", None):
        st.success(msg)
    if exc := st.session_state.pop(f"{prefix}_save_error", None):
        show_error(exc)


def guarded(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Run a page body; errors reach the page as messages (st.stop/rerun pass through: they are BaseException)."""

    @functools.wraps(fn)
    def run() -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001
            show_error(exc)
            return None

    return run


def link_home(label: str = "Go to Data & models") -> None:
    """A link to the home page (plain text where the page runs outside a multipage app, e.g. in AppTest)."""
    try:
        st.page_link(HOME_PAGE or HOME, label=label, icon=":material/home:")
    except Exception:  # noqa: BLE001
        st.caption(f"{label}: the first page in the sidebar.")


def current_model() -> Path | None:
    """The model this session works with (set on the home page), if it still exists."""
    p = st.session_state.get("model_dir")
    if p and Path(p).is_dir():
        return Path(p)
    return None


def set_model(folder: str | Path | None) -> None:
    st.session_state["model_dir"] = None if folder is None else str(folder)


def current_or_newest_model(where: str = "on the home page") -> Path | None:
    """The session's model; when it has none, the newest saved model that loads (said in a caption), else None."""
    folder = current_model()
    if folder is None:
        good = [m for m in wb.list_models() if not m.error]
        if good:
            set_model(good[0].folder)
            folder = good[0].folder
            st.caption(f"Using the newest saved model, {good[0].name!r} (change it {where}).")
    return folder


def require_model() -> tuple[Path, wb.ModelInfo]:
    """The session's model and its info, or a hint to pick one on the home page (and the page stops)."""
    folder = current_or_newest_model()
    if folder is None:
        st.info("No model yet. Fit one on the home page: one click fits PatchCore on the built-in demo.")
        link_home()
        st.stop()
    info = wb.model_info(folder)
    if info.error:
        st.error(info.error)
        st.stop()
    return folder, info


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def load_model(folder: str, stamp: str):
    """A loaded detector, shared by sessions; ``stamp`` changes when the folder changes (e.g. a new threshold)."""
    return wb.load_model(folder)


def model(folder: Path, info: wb.ModelInfo):
    return load_model(str(folder), info.stamp)


@st.cache_resource(show_spinner="Scoring the split (features come from the disk cache after the first time)…",
                   max_entries=24)
def split_scores(folder: str, arrays_key: str, dataset: str, split: str, limit: int | None = None) -> wb.SplitScores:
    """Scores of one split: keyed by model folder + arrays hash + dataset + split, so moving a threshold or
    saving one never rescores (the threshold is not part of the key)."""
    info = wb.model_info(folder)
    det = load_model(folder, info.stamp)
    return wb.score_split(folder, dataset, split, det=det, limit=limit)


def scores_for(folder: Path, info: wb.ModelInfo, dataset: str | Path, split: str, limit: int | None = None):
    return split_scores(str(folder), info.stamp.split(":")[0], str(dataset), split, limit)


@st.cache_resource(show_spinner=False, max_entries=8)
def _cascade_state(folder: str, stamp: str) -> wb.CascadeState | None:
    return wb.load_cascade(folder)


def cascade_state(folder: Path) -> wb.CascadeState | None:
    """The model's fitted gate and its per-image measurements (read once per cascade stamp, shared read-only)."""
    stamp = wb.cascade_stamp(folder)
    return None if stamp is None else _cascade_state(str(folder), stamp)


@st.cache_resource(show_spinner=False, max_entries=32)
def _cascade_sweep(folder: str, stamp: str, heat_threshold: float, heat_scale: float):
    state = _cascade_state(folder, stamp)
    return wb.cascade_sweep(state.measured, heat_threshold, heat_scale)


def cascade_sweep(state: wb.CascadeState, heat_threshold: float) -> tuple[list[dict], list[dict]]:
    """Sweep rows and Pareto front at this heatmap threshold: computed once per threshold, not per slider move."""
    return _cascade_sweep(str(state.folder), state.stamp, float(heat_threshold),
                          float(state.saved_policy.get("heat_scale", 1.0)))


@st.cache_data(show_spinner=False, ttl=60, max_entries=32)
def splits_of(root: str) -> list[str]:
    """Non-empty splits of a dataset (indexed at most once a minute, not on every slider move)."""
    return wb.dataset_splits(root)


def model_dataset(info: wb.ModelInfo) -> str | None:
    """The dataset the model was fitted on, when that folder still exists and the app may read it."""
    if not (info.dataset and Path(info.dataset).is_dir()):
        return None
    try:
        wb.check_browsable(info.dataset)
    except WorkbenchError as exc:  # a model made elsewhere pointing at a folder outside the data roots
        st.warning(f"Model {info.name}: {exc}")
        return None
    return info.dataset


def threshold_key(folder: Path) -> str:
    return f"threshold::{folder}"


def working_threshold(folder: Path, info: wb.ModelInfo) -> float:
    """The decision threshold this session is trying out (Thresholds page), else the model's saved one."""
    t = st.session_state.get(threshold_key(folder))
    return float(t) if t is not None else float(info.threshold)


def model_badge(info: wb.ModelInfo, threshold: float | None = None) -> None:
    t = info.threshold if threshold is None else threshold
    st.caption(f"Model **{info.name}** · {info.kind} · {info.backbone} · {info.image_size}px · "
               f"threshold {t:.4g} ({wb.threshold_origin(info, t)})")


def progress_sink(bar) -> Callable[[str, int, int], None]:
    """A progress callback for a long job drawn on ``bar`` (an st.progress): the stage, done / total, and an
    estimate of the time left within the stage (from the pace so far; shown once a few steps are done)."""
    import time

    started: dict[str, float] = {}

    def sink(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        t0 = started.setdefault(stage, now)
        text = f"{stage}: {done}/{total}"
        if 0 < done < total and now - t0 > 1.0:
            left = (now - t0) / done * (total - done)
            text += f" · about {left:.0f} s left" if left < 120 else f" · about {left / 60:.0f} min left"
        bar.progress(min(1.0, done / max(total, 1)), text=text)

    return sink

"""What every page shares: error display, the session's model, cached loading and scoring.

Streamlit lists every ``pages/*.py`` except ``__init__.py`` as a page, so this module is a helper, not a page.
State is kept in ``st.session_state`` only (one browser session never sees another's choices); loaded models
are shared read-only through ``st.cache_resource`` and scores through ``st.cache_data``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from core import workbench as wb
from core.errors import WorkbenchError

HOME = "app.py"


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


def current_model() -> Path | None:
    """The model this session works with (set on the home page), if it still exists."""
    p = st.session_state.get("model_dir")
    if p and Path(p).is_dir():
        return Path(p)
    return None


def set_model(folder: str | Path | None) -> None:
    st.session_state["model_dir"] = None if folder is None else str(folder)


def require_model() -> tuple[Path, wb.ModelInfo]:
    """The session's model and its info, or a hint to pick one on the home page (and the page stops)."""
    folder = current_model()
    if folder is None:
        models = wb.list_models()
        good = [m for m in models if not m.error]
        if good:
            set_model(good[0].folder)
            folder = good[0].folder
            st.caption(f"Using the newest saved model, {good[0].name!r} (change it on the home page).")
        else:
            st.info("No model yet. Fit one on the home page: one click fits PatchCore on the built-in demo.")
            st.page_link(HOME, label="Go to Data & models", icon="🏠")
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


@st.cache_data(show_spinner="Scoring the split (features come from the disk cache after the first time)…",
               max_entries=24)
def split_scores(folder: str, arrays_key: str, dataset: str, split: str, limit: int | None = None) -> wb.SplitScores:
    """Scores of one split: keyed by model folder + arrays hash + dataset + split, so moving a threshold or
    saving one never rescores (the threshold is not part of the key)."""
    info = wb.model_info(folder)
    det = load_model(folder, info.stamp)
    return wb.score_split(folder, dataset, split, det=det, limit=limit)


def scores_for(folder: Path, info: wb.ModelInfo, dataset: str | Path, split: str, limit: int | None = None):
    return split_scores(str(folder), info.stamp.split(":")[0], str(dataset), split, limit)


def model_dataset(info: wb.ModelInfo) -> str | None:
    """The dataset the model was fitted on, when that folder still exists."""
    if info.dataset and Path(info.dataset).is_dir():
        return info.dataset
    return None


def threshold_key(folder: Path) -> str:
    return f"threshold::{folder}"


def working_threshold(folder: Path, info: wb.ModelInfo) -> float:
    """The decision threshold this session is trying out (Thresholds page), else the model's saved one."""
    t = st.session_state.get(threshold_key(folder))
    return float(t) if t is not None else float(info.threshold)


def model_badge(info: wb.ModelInfo, threshold: float | None = None) -> None:
    t = info.threshold if threshold is None else threshold
    extra = "" if threshold is None or abs(threshold - info.threshold) < 1e-12 else " (unsaved, from the Thresholds page)"
    st.caption(f"Model **{info.name}** · {info.kind} · {info.backbone} · {info.image_size}px · "
               f"threshold {t:.4g}{extra}")


def histogram(groups: dict[str, np.ndarray], threshold: float, log: bool) -> go.Figure:
    colours = wb.group_colours(list(groups))
    allv = np.concatenate(list(groups.values()))
    lo, hi = float(allv.min()), float(allv.max())
    size = (hi - lo) / 40 if hi > lo else 1.0
    fig = go.Figure()
    for name, vals in groups.items():
        fig.add_trace(go.Histogram(
            x=vals, name=f"{name} ({len(vals)})", marker_color=colours[name], opacity=0.6,
            xbins=dict(start=lo, end=hi + size, size=size),
        ))
    fig.add_vline(x=threshold, line_dash="dash", line_color="#000000",
                  annotation_text=f"threshold {threshold:.4g}", annotation_position="top")
    fig.update_layout(barmode="overlay", xaxis_title="raw anomaly score", yaxis_title="images",
                      legend_title_text="", height=380, margin=dict(t=30, b=40))
    if log:
        fig.update_yaxes(type="log")
    return fig

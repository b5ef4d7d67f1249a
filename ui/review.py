"""The review controls the Heatmaps and Score images pages share: mark an image as normal (the model learns it)
or as a defect (for the gate), the model's versions with a restore, and the review log as CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd
import streamlit as st

from core import workbench as wb
from ui import show_error


def review_controls(folder: Path, name: str, data: Callable[[], bytes], outcome: str, key: str) -> None:
    """Buttons for one image (``data()`` gives its file bytes, read only when a button is pressed, not on every
    rerun); the outcome (FP, FN, ...) decides which is suggested."""
    st.subheader("Review: tell the model")
    c1, c2, c3 = st.columns([2, 2, 2])
    who = c1.text_input("Reviewer", value=st.session_state.get("rv_who", "engineer"), key=f"{key}_who",
                        help="Written into the model's review log with each decision.")
    st.session_state["rv_who"] = who
    normal = c2.button("Mark as normal (the model learns it)", key=f"{key}_normal",
                       type="primary" if outcome == "FP" else "secondary",
                       help="For a false alarm: the image joins the model's normal set without a refit and the "
                            "threshold is fixed again. The model as it was is kept as a version.")
    defect = c3.button("Mark as defect (for the gate)", key=f"{key}_defect",
                       type="primary" if outcome == "FN" else "secondary",
                       help="For a miss: the image joins the labels the cascade's gate trains on at its next fit.")
    try:
        if normal:
            with st.spinner("Adding the image to the model and fixing the threshold again…"):
                out = wb.mark_normal(folder, [(name, data())], who)
            st.session_state["rv_last"] = out
            st.rerun()
        if defect:
            wb.mark_defect(folder, [(name, data())], who)
            st.session_state["rv_last"] = wb.ReviewOutcome("mark as defect", None, [{"image": name}])
            st.rerun()
    except Exception as exc:  # noqa: BLE001
        show_error(exc)
    last = st.session_state.pop("rv_last", None)
    if last is not None and last.action == "mark as normal":
        st.success(f"Learnt as normal (the model before is version {last.version_kept}; "
                   f"{last.change.get('bank_rows_added', '')} bank rows added; "
                   f"threshold {last.change.get('threshold')}).")
        st.dataframe(pd.DataFrame(last.rows), hide_index=True, key=f"{key}_before_after")
    elif last is not None:
        st.success(f"Marked {last.rows[0]['image']} as a defect: the gate learns it at its next fit "
                   "(Data & models, section 4).")
    versions_panel(folder, key)


def versions_panel(folder: Path, key: str) -> None:
    """The model's kept versions (restore one) and the review log (download)."""
    versions = wb.list_versions(folder)
    with st.expander(f"Model versions ({len(versions)} kept) and the review log"):
        if versions:
            st.dataframe(pd.DataFrame(versions), hide_index=True, key=f"{key}_versions")
            c1, c2 = st.columns([1, 3])
            pick = c1.selectbox("Version", [v["version"] for v in versions], key=f"{key}_pick")
            if c2.button(f"Restore version {pick}", key=f"{key}_restore",
                         help="The model as it is now is kept as a new version first."):
                try:
                    kept = wb.restore_version(folder, int(pick), st.session_state.get("rv_who", "engineer"))
                    st.session_state["rv_restored"] = (int(pick), kept)
                    st.rerun()
                except Exception as exc:  # noqa: BLE001
                    show_error(exc)
        if restored := st.session_state.pop("rv_restored", None):
            st.success(f"Restored version {restored[0]}; the model before it is version {restored[1]}.")
        st.download_button("Download the review log (CSV)", wb.review_log_csv(folder),
                           file_name=f"{Path(folder).name}-review.csv", mime="text/csv", key=f"{key}_log")

"""Thresholds: try a decision threshold on cached scores (live confusion matrix), pick one for a target recall,
save it into the model folder.

Moving the slider never recomputes features or scores: the split's scores come from st.cache_data keyed by
model folder + split; only the counts are recomputed.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core import workbench as wb
from pages import (
    guarded,
    histogram,
    model_badge,
    model_dataset,
    require_model,
    scores_for,
    setup,
    show_error,
    threshold_key,
)

setup("Thresholds", "🎚️")


@guarded
def main() -> None:
    folder, info = require_model()
    root = model_dataset(info)
    if root is None:
        st.warning(f"The dataset this model was fitted on ({info.dataset or 'unknown'}) is not on this machine, "
                   "so there are no labelled scores to tune on. Fix: restore the folder, or fit a model here.")
        return
    key = threshold_key(folder)
    if st.session_state.get(key) is None:
        st.session_state[key] = float(info.threshold)
    model_badge(info, st.session_state[key])

    splits = wb.dataset_splits(root)
    pref = "val_mix" if "val_mix" in splits else splits[0]
    split = st.selectbox("Tune on split", splits, index=splits.index(pref), key="th_split",
                         help="val_mix is the split meant for tuning; report on test_mix.")
    res = scores_for(folder, info, root, split)
    if len(res) == 0:
        st.warning("No image of this split could be scored.")
        return

    lo = float(min(res.scores.min(), st.session_state[key], info.threshold))
    hi = float(max(res.scores.max(), st.session_state[key], info.threshold))
    pad = 0.02 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    step = max((hi - lo) / 1000, 1e-9)

    def clamp(v: float) -> float:
        return float(min(hi, max(lo, v)))

    def from_slider() -> None:
        st.session_state[key] = float(st.session_state["th_slider"])

    def from_number() -> None:
        st.session_state[key] = float(st.session_state["th_number"])

    def pick_recall() -> None:
        try:
            st.session_state[key] = wb.threshold_for_recall(res.labels, res.scores, st.session_state["th_recall"])
        except Exception as exc:  # noqa: BLE001
            st.session_state["th_message"] = str(exc)

    def reset() -> None:
        st.session_state[key] = float(info.threshold)

    st.session_state["th_slider"] = clamp(st.session_state[key])
    st.session_state["th_number"] = float(st.session_state[key])
    c1, c2 = st.columns([3, 1])
    c1.slider("Decision threshold (raw score; anomalous when score ≥ threshold)", min_value=lo, max_value=hi,
              step=step, key="th_slider", on_change=from_slider, format="%.4f")
    c2.number_input("Exact value", key="th_number", on_change=from_number, format="%.5f", step=step)
    c3, c4, c5, c6 = st.columns(4)
    c3.number_input("Target recall", min_value=0.0, max_value=1.0, value=0.95, step=0.01, key="th_recall")
    c4.button("Pick for target recall", on_click=pick_recall, key="th_pick",
              help="The highest threshold that still finds this share of the split's anomalous images.")
    c5.button("Back to saved", on_click=reset, key="th_reset")
    save = c6.button("Save into model", type="primary", key="th_save")
    if msg := st.session_state.pop("th_message", None):
        st.error(msg)

    thr = float(st.session_state[key])
    if save:
        try:
            wb.save_threshold(folder, thr, source=f"set in the app on {split}")
            st.success(f"Saved threshold {thr:.6g} into {folder / 'config.json'}.")
            info = wb.model_info(folder)
        except Exception as exc:  # noqa: BLE001
            show_error(exc)

    cm = wb.confusion(res.labels, res.scores, thr)
    m1, m2, m3, m4, m5 = st.columns(5)
    m1.metric("Accuracy", f"{cm['accuracy']:.3f}")
    m2.metric("Precision", f"{cm['precision']:.3f}")
    m3.metric("Recall", f"{cm['recall']:.3f}")
    m4.metric("F1", f"{cm['f1']:.3f}")
    m5.metric("False-alarm rate", f"{1 - cm['specificity']:.3f}")
    st.caption(f"Confusion matrix on {split} ({len(res)} images) at threshold {thr:.6g}")
    st.dataframe(
        pd.DataFrame(
            {"predicted anomalous": [cm["tp"], cm["fp"]], "predicted normal": [cm["fn"], cm["tn"]]},
            index=["actual anomalous", "actual normal"],
        )
    )
    if not (res.labels == 1).any() or not (res.labels == 0).any():
        st.info("This split has only one class; precision/recall or false alarms are not both defined.")
    st.plotly_chart(histogram(wb.group_scores([res], "label"), thr, False), key="th_hist")
    saved = info.threshold
    st.caption(f"Saved threshold: {saved:.6g} ({info.threshold_source}).")


main()

"""Thresholds: the heatmap model's decision threshold, and the cascade's gate thresholds T_low / T_high.

Heatmap threshold: try one on cached scores (live confusion matrix), pick one for a target recall, save it into
the model folder.

Cascade (when a gate was fitted on the home page): gate score < T_low -> normal, > T_high -> anomalous, otherwise
the heatmap model decides. Live confusion matrix, metrics, heatmap call rate and expected mean latency, the sweep's
Pareto front with the current point, "pick for target recall" from the cascade's automatic choice, and an atomic
save into ``<model>/cascade/cascade.json``.

No slider move recomputes features or calls a model: split scores come from the cache keyed by model folder +
split, and the cascade numbers from per-image gate/heatmap scores and timings measured once when the gate was
fitted (pure numpy on those arrays).
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core import workbench as wb
from ui import (
    BAND_PARAM,
    band_histogram,
    cascade_state,
    cascade_sweep,
    fast_figure,
    guarded,
    link_home,
    model_badge,
    model_dataset,
    require_model,
    scores_for,
    selected_band,
    setup,
    show_error,
    show_flash,
    splits_of,
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

    splits = splits_of(root)
    pref = "val_mix" if "val_mix" in splits else splits[0]
    split = st.selectbox("Tune on split", splits, index=splits.index(pref), key="th_split",
                         help="val_mix is the split meant for tuning; report on test_mix.")
    if warning := wb.tuning_split_warning(split, splits):
        st.warning(warning)
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

    def from_chart() -> None:
        band = selected_band(st.session_state.get("th_hist"))
        if band is not None:
            st.session_state[key] = float(band[0])

    def save() -> None:  # a callback: the rerun that follows draws every caption from the saved model
        thr_now = float(st.session_state[key])
        try:
            wb.save_threshold(folder, thr_now, source=f"set in the app on {split}")
            st.session_state["th_saved"] = f"Saved threshold {thr_now:.6g} into {folder / 'config.json'}."
        except Exception as exc:  # noqa: BLE001
            st.session_state["th_save_error"] = exc

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
    c6.button("Save into model", type="primary", key="th_save", on_click=save)
    show_flash("th", st.error)

    thr = float(st.session_state[key])

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
    lo_s, hi_s = float(min(res.scores.min(), thr)), float(max(res.scores.max(), thr))
    st.altair_chart(
        band_histogram(wb.score_bins(res.scores, res.labels, lo_s, hi_s), f"raw anomaly score ({split})",
                       (lo_s, hi_s), [(thr, f"threshold {thr:.4g}")]),
        key="th_hist", on_select=from_chart, selection_mode=BAND_PARAM, width="stretch")
    st.caption("Drag across the histogram to move the threshold to the left edge of what you drag: everything "
               "from there up is called anomalous.")
    saved = info.threshold
    st.caption(f"Saved threshold: {saved:.6g} ({info.threshold_source}).")
    cascade_section(folder, thr)


# ------------------------------------------------------------------------------------------------------------
def _pair(policy: dict) -> tuple[float, float]:
    """A saved policy as a (T_low, T_high) slider position."""
    mode = policy.get("mode", "cascade")
    if mode == "cascade" and policy.get("t_low") is not None and policy.get("t_high") is not None:
        return float(policy["t_low"]), float(policy["t_high"])
    if mode == "gate_only" and policy.get("gate_threshold") is not None:
        t = float(policy["gate_threshold"])
        return t, t
    return 0.0, 1.0


def _fmt_pair(lo: float, hi: float) -> str:
    return f"T_low={lo:.3f}, T_high={hi:.3f}"


SECOND_AXES = {"precision": "precision", "false-alarm rate": "false_alarm_rate"}


def pareto_figure(rows: list[dict], front: list[dict], marks: dict[str, dict], second: str) -> go.Figure:
    """Every operating point with the same definitions at the heatmap threshold in use: recall (left) and
    ``second`` (precision or false-alarm rate, right) against mean latency; the front as a line; the end points,
    the automatic and saved choices and the current point recomputed from the cached measurements."""
    key = SECOND_AXES[second]
    casc = [r for r in rows if r["mode"] == "cascade"]
    traces: list[dict] = []
    for col, metric in ((1, "recall"), (2, key)):
        ax = "" if col == 1 else "2"
        first = col == 1

        def pts(rs: list[dict], name: str, marker: dict, mode: str = "markers", **extra) -> dict:
            return {"type": "scatter", "x": [r["latency_ms"] for r in rs], "y": [r[metric] for r in rs],
                    "mode": mode, "name": name, "marker": marker, "xaxis": f"x{ax}", "yaxis": f"y{ax}",
                    "legendgroup": name, "showlegend": first, **extra}

        traces.append(pts(casc, "swept (T_low, T_high) pairs", {"color": "#BBBBBB", "size": 6},
                          text=[_fmt_pair(r["t_low"], r["t_high"]) for r in casc], hoverinfo="text+x+y"))
        traces.append(pts(front, "Pareto front (recall vs mean latency)", {"color": "#0072B2", "size": 8},
                          "lines+markers", line={"color": "#0072B2", "width": 2.5}))
        styles = {"heatmap only": ("#000000", "diamond", 12), "gate only": ("#E69F00", "square", 12),
                  "automatic choice": ("#009E73", "triangle-up", 13), "saved": ("#CC79A7", "circle-open", 16),
                  "current point": ("#D55E00", "star", 18)}
        for name, r in marks.items():
            colour, symbol, size = styles[name]
            traces.append(pts([r], name, {"color": colour, "symbol": symbol, "size": size,
                                          "line": {"color": "#000000", "width": 1}}))
    layout = {"xaxis": {"domain": [0, 0.47], "title": {"text": "mean latency per image (ms, batch 1)"}},
              "xaxis2": {"domain": [0.53, 1], "anchor": "y2", "matches": "x",
                         "title": {"text": "mean latency per image (ms, batch 1)"}},
              "yaxis": {"title": {"text": "recall (val_mix)"}},
              "yaxis2": {"anchor": "x2", "title": {"text": f"{second} (val_mix)"}},
              "height": 400, "margin": {"t": 30, "b": 40}, "legend": {"orientation": "h", "y": -0.3}}
    return fast_figure(traces, layout)


def cascade_section(folder, heat_thr: float) -> None:
    st.divider()
    st.header("Cascade: gate thresholds")
    state = cascade_state(folder)
    if state is None:
        st.info("No gate for this model yet. Fit one on the Data & models page (section 'Fit a gate'): the gate "
                "decides the clear images, the heatmap model only the uncertain ones.")
        link_home()
        return
    m = state.measured
    if len(state) == 0:
        st.warning("The gate's measurements are empty. Fix: fit the gate again.")
        return
    st.caption(f"Gate **{state.gate}**, measured once on val_mix ({len(state)} images, batch 1): gate "
               f"{float(m.gate_ms.mean()):.2f} ms, heatmap model {float(m.heat_ms.mean()):.1f} ms per image on "
               "average. "
               "Gate score < T_low → normal; > T_high → anomalous; in between the heatmap model decides at the "
               f"heatmap threshold above ({heat_thr:.4g}). Moving these sliders only re-reads those cached numbers.")
    key = f"cascade::{folder}"
    saved = _pair(state.saved_policy)
    if st.session_state.get(key) is None:
        st.session_state[key] = saved
    rows, front = cascade_sweep(state, heat_thr)

    def set_pair(lo: float, hi: float) -> None:
        lo, hi = float(min(max(lo, 0.0), 1.0)), float(min(max(hi, 0.0), 1.0))
        st.session_state[key] = (min(lo, hi), max(lo, hi))

    def from_range() -> None:
        set_pair(*st.session_state["cas_range"])

    def from_low() -> None:
        set_pair(st.session_state["cas_low"], max(st.session_state["cas_low"], st.session_state[key][1]))

    def from_high() -> None:
        set_pair(min(st.session_state["cas_high"], st.session_state[key][0]), st.session_state["cas_high"])

    def pick() -> None:
        lo, hi, note = wb.cascade_pick_for_recall(rows, st.session_state["cas_recall"])
        set_pair(lo, hi)
        st.session_state["cas_message"] = note

    def reset() -> None:
        st.session_state[key] = saved

    def from_chart() -> None:
        band = selected_band(st.session_state.get("cas_hist"))
        if band is not None:
            set_pair(*band)

    def save() -> None:  # a callback: the rerun that follows reads the saved policy back for every caption
        lo_now, hi_now = st.session_state[key]
        try:
            wb.save_cascade_policy(folder, lo_now, hi_now, heat_thr, source="set in the app on val_mix")
            st.session_state["cas_saved"] = (f"Saved {_fmt_pair(lo_now, hi_now)} (heatmap threshold "
                                             f"{heat_thr:.6g}) into {wb.cascade_dir(folder) / 'cascade.json'}.")
        except Exception as exc:  # noqa: BLE001
            st.session_state["cas_save_error"] = exc

    lo, hi = st.session_state[key]
    st.session_state["cas_range"] = (lo, hi)
    st.session_state["cas_low"] = lo
    st.session_state["cas_high"] = hi
    c1, c2, c3 = st.columns([4, 1, 1])
    c1.slider("T_low / T_high (calibrated gate score, 0-1)", min_value=0.0, max_value=1.0, step=0.001,
              key="cas_range", on_change=from_range, format="%.3f")
    c2.number_input("T_low", min_value=0.0, max_value=1.0, step=0.001, format="%.4f", key="cas_low",
                    on_change=from_low)
    c3.number_input("T_high", min_value=0.0, max_value=1.0, step=0.001, format="%.4f", key="cas_high",
                    on_change=from_high)
    c4, c5, c6, c7 = st.columns(4)
    c4.number_input("Target recall (cascade)", min_value=0.0, max_value=1.0, value=0.95, step=0.01, key="cas_recall")
    c5.button("Pick for target recall", key="cas_pick", on_click=pick,
              help="The cascade's automatic choice: the lowest mean latency whose val_mix recall reaches the "
                   "target and whose precision stays within 0.05 of the heatmap model alone.")
    c6.button("Back to saved", key="cas_reset", on_click=reset)
    c7.button("Save T_low/T_high into model", type="primary", key="cas_save", on_click=save)
    show_flash("cas", st.info)
    lo, hi = st.session_state[key]
    gate_distribution(state, lo, hi, from_chart)

    p = wb.cascade_point(m, lo, hi, heat_thr)
    base = next(r for r in rows if r["mode"] == "heatmap_only")
    k1, k2, k3, k4, k5, k6 = st.columns(6)
    k1.metric("Accuracy", f"{p['accuracy']:.3f}")
    k2.metric("Precision", f"{p['precision']:.3f}")
    k3.metric("Recall", f"{p['recall']:.3f}", f"{p['recall'] - base['recall']:+.3f} vs heatmap only",
              delta_color="normal")
    k4.metric("F1", f"{p['f1']:.3f}")
    k5.metric("Heatmap call rate", f"{p['heatmap_call_rate']:.1%}")
    k6.metric("Expected mean latency", f"{p['latency_ms']:.1f} ms",
              f"{p['latency_ms'] - base['latency_ms']:+.1f} ms vs heatmap only", delta_color="inverse")
    st.caption(f"Cascade confusion matrix on val_mix ({len(state)} images) at {_fmt_pair(lo, hi)}: gate says normal "
               f"{p['gate_normal_rate']:.0%}, anomalous {p['gate_anomalous_rate']:.0%}, heatmap model decides "
               f"{p['heatmap_call_rate']:.0%}.")
    st.dataframe(
        pd.DataFrame(
            {"predicted anomalous": [p["tp"], p["fp"]], "predicted normal": [p["fn"], p["tn"]]},
            index=["actual anomalous", "actual normal"],
        ),
        key="cas_matrix",
    )
    second = st.radio("Second axis", list(SECOND_AXES), horizontal=True, key="cas_second")
    st.plotly_chart(pareto_figure(rows, front, wb.operating_marks(state, rows, lo, hi, heat_thr), second),
                    key="cas_pareto")
    src = state.config.get("policy_source") or "the automatic choice when the gate was fitted"
    st.caption(f"Saved: {_fmt_pair(*saved)} ({src}). The sweep and its front use the heatmap threshold above.")
    held_out_check(folder, state, lo, hi, heat_thr, p)


def gate_distribution(state, lo: float, hi: float, on_select) -> None:
    """The gate's val_mix scores, normal vs defective, with T_low / T_high, the uncertain band shaded and counts."""
    m = state.measured
    st.subheader("Gate scores on val_mix")
    chart = band_histogram(wb.score_bins(m.gate_scores, m.labels, 0.0, 1.0), "calibrated gate score (val_mix)",
                           (0.0, 1.0), [(lo, "T_low"), (hi, "T_high")], shade=(lo, hi))
    st.altair_chart(chart, key="cas_hist", on_select=on_select, selection_mode=BAND_PARAM, width="stretch")
    by_class = st.toggle("Counts per defect class", key="cas_by_class")
    st.caption("Drag across the histogram to set T_low and T_high to the band's edges. Below T_low the gate calls "
               "the image normal, above T_high defective; only the shaded band goes to the heatmap model.")
    st.dataframe(pd.DataFrame(wb.band_counts(m.labels, state.defects, m.gate_scores, lo, hi, by_class)),
                 hide_index=True, key="cas_bands")


@st.cache_resource(show_spinner=False, max_entries=8)
def _held_out(folder: str, stamp: str):
    return wb.held_out_measurements(folder)


def held_out_check(folder, state, lo: float, hi: float, heat_thr: float, val_point: dict) -> None:
    """The thresholds chosen on val_mix, applied to test_mix: measured once per gate, never used for tuning."""
    with st.expander("Held-out check on test_mix (a report, not for tuning)"):
        cached = (wb.cascade_dir(folder) / "measured_test_mix.csv").is_file()
        if not cached and not st.button("Measure test_mix once (every image through the gate and the model)",
                                        key="cas_heldout"):
            st.caption("Scores each test_mix image once, one at a time as on val_mix; "
                       "the result is kept with the gate.")
            return
        try:
            if cached:
                _, test = _held_out(str(folder), state.stamp)
            else:
                bar = st.progress(0.0, text="Measuring test_mix…")
                _, test = wb.held_out_measurements(
                    folder, progress=lambda s, d, n: bar.progress(min(1.0, d / max(n, 1)), text=f"{s}: {d}/{n}"))
                bar.empty()
        except Exception as exc:  # noqa: BLE001
            show_error(exc)
            return
        t = wb.cascade_point(test, lo, hi, heat_thr)
        rows = [{"split": name, "images": n, "recall": round(x["recall"], 3), "precision": round(x["precision"], 3),
                 "false-alarm rate": round(x["fp"] / max(x["fp"] + x["tn"], 1), 3),
                 "heatmap call rate": f"{x['heatmap_call_rate']:.0%}", "mean latency ms": round(x["latency_ms"], 1)}
                for name, n, x in (("val_mix (tuned on)", len(state), val_point), ("test_mix (held out)",
                                                                                  len(test.labels), t))]
        st.dataframe(pd.DataFrame(rows), hide_index=True, key="cas_heldout_table")
        st.caption(f"At {_fmt_pair(lo, hi)} and heatmap threshold {heat_thr:.4g}. Do not tune on these numbers: "
                   "that would make test_mix a second validation split.")


main()

"""GAIN-MTL CAM: where a trained defect classifier looks. Pick one strategy (or two side by side), browse test images
with the CAM overlay, ground-truth contour and mask-head output, move the CAM binarisation threshold (CAM-IoU
updates live) and filter by correct / incorrect / "right answer, wrong reason"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from core import workbench as wb
from ui import fast_figure, guarded, setup, show_error

gs = wb.gain

setup("GAIN-MTL CAM", "👁")

LEGEND = ("CAM min-max normalised per image (viridis: dark = low, yellow = the image's maximum); ground truth in "
          "magenta, CAM at the threshold (left) and mask head at 0.5 (right) in white.")
SWEEP = np.round(np.arange(0.05, 0.96, 0.05), 2)


@st.cache_resource(show_spinner="Computing CAMs and masks for the split (once per model)…", max_entries=6)
def _results(folder: str, stamp: str, split: str, limit: int | None) -> gs.CamResults:
    return gs.precompute_cams(folder, split=split, limit=limit)


@st.cache_resource(show_spinner=False, max_entries=12)
def _sweep(folder: str, stamp: str, split: str, limit: int | None) -> np.ndarray:
    return gs.iou_sweep(_results(folder, stamp, split, limit), SWEEP)


def _models() -> list[gs.GainModelEntry]:
    entries = gs.find_gain_models(gs.gain_models_root(), missing_ok=True)
    typed = st.session_state.get("gain_folder", "").strip()
    if typed:
        try:
            known = {x.folder.resolve() for x in entries}
            for e in gs.find_gain_models(gs.check_model_search_folder(typed)):
                if e.folder.resolve() not in known:
                    e.name = f"{Path(typed).name}/{e.name}" if e.name != Path(typed).name else e.name
                    entries.append(e)
        except Exception as exc:  # noqa: BLE001  (a bad folder must not hide the other models)
            show_error(exc)
    return entries


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def training_section() -> None:
    """Train a model in the background: the report's knobs with its defaults; jobs listed with progress and cancel."""
    with st.expander("Train a GAIN-MTL model (runs in the background; other sessions stay free)",
                     expanded=bool(st.session_state.get("gain_train_open"))):
        from core import workbench as wb

        datasets = {n: str(p) for n, p in wb.list_datasets().items() if n not in ("neu_seg", "neu_det")}
        names = list(datasets)
        c1, c2, c3 = st.columns(3)
        ds = c1.selectbox("Dataset (needs defect masks)", names,
                          index=names.index("magnetic_tile") if "magnetic_tile" in names else 0, key="gt_dataset")
        strategy = c2.selectbox("Strategy", list(gs.STRATEGY_CHOICES), index=5, key="gt_strategy",
                                format_func=lambda k: f"{k}: {gs.STRATEGY_CHOICES[k]}")
        epochs = c3.number_input("Epochs (at most; early stopping on val_mix)", 1, 100, 18, key="gt_epochs")
        d = gs.TrainRequest(dataset="")
        c4, c5, c6, c7 = st.columns(4)
        lcg = c4.number_input("lambda_cam_guide", 0.0, 10.0, d.lambda_cam_guide, 0.05, key="gt_lcg")
        lg = c5.number_input("lambda_guide (attention mining)", 0.0, 10.0, d.lambda_guide, 0.05, key="gt_lg")
        ll = c6.number_input("lambda_loc", 0.0, 10.0, d.lambda_loc, 0.05, key="gt_ll")
        wu = c7.number_input("Warm-up share (lambda_loc)", 0.0, 1.0, d.loc_warmup, 0.05, key="gt_wu")
        c8, c9 = st.columns([2, 1])
        name = c8.text_input("Model name", key="gt_name", placeholder=f"{ds}-{strategy}-<time>")
        limit = int(c9.number_input("Images per class and split (0 = all)", 0, 100_000, 0, key="gt_limit")) or None
        if st.button("Start training", type="primary", key="gt_start"):
            st.session_state["gain_train_open"] = True
            try:
                job = gs.start_training(gs.TrainRequest(datasets[ds], strategy, int(epochs), lcg, lg, ll, wu,
                                                        name.strip(), limit))
                st.success(f"Started: {job.title}.")
            except Exception as exc:  # noqa: BLE001
                show_error(exc)
    jobs_panel()


@st.fragment(run_every=2.0)
def jobs_panel() -> None:
    """Training jobs (all sessions'), refreshed every 2 s; a job that finishes reruns the page so its model shows."""
    jobs = gs.training_jobs()
    if not jobs:
        return
    seen = st.session_state.setdefault("gain_job_states", {})
    finished_now = False
    for job in jobs[:5]:
        if job.state == "running":
            c1, c2 = st.columns([5, 1])
            stage = job.progress.get("stage", "starting")
            c1.progress(job.fraction, text=f"{job.title} · {stage} ({job.progress.get('done', 0)}/"
                                           f"{job.progress.get('total', '?')})")
            if c2.button("Cancel", key=f"gt_cancel_{job.id}"):
                gs.cancel_training(job.id)
                st.rerun(scope="fragment")
        elif job.state == "done":
            st.caption(f"✅ {job.title}: done; pick it below.")
        elif job.state == "failed":
            st.error(f"{job.title}: failed. {job.message}")
        else:
            st.caption(f"⏹ {job.title}: {job.state}.")
        finished_now |= seen.get(job.id) == "running" and job.state == "done"
        seen[job.id] = job.state
    if finished_now:
        st.rerun(scope="app")


@guarded
def main() -> None:
    training_section()
    st.text_input("Folder with GAIN-MTL models (optional)", key="gain_folder",
                  help=f"Models are also found under {gs.gain_models_root()}; e.g. runs/gain_compare holds S1..S6.")
    entries = _models()
    if not entries:
        st.info("No GAIN-MTL model found. Train one, e.g. `python -m core gain train --strategy S6 magnetic_tile "
                f"--out {gs.gain_models_root() / 'S6'}`, or type the folder of a `gain compare` run above.")
        return
    by_name = {e.name: e for e in entries}
    names = list(by_name)
    c1, c2, c3 = st.columns([3, 1, 1])
    picked = c1.multiselect("Strategies (one, or two side by side)", names, default=names[:1], max_selections=2,
                            key="gain_models")
    split = c2.selectbox("Split", ["test_mix", "val_mix"], key="gain_split")
    limit = int(c3.number_input("Images at most (0 = all)", 0, 10_000, 0, key="gain_limit")) or None
    if not picked:
        st.info("Pick at least one model.")
        return
    results = {n: _results(str(by_name[n].folder), by_name[n].stamp, split, limit) for n in picked}
    c4, c5 = st.columns([2, 2])
    thr = c4.slider("CAM binarisation threshold", 0.05, 0.95, 0.5, 0.05, key="gain_thr")
    kind = c5.radio("Show", list(gs.FILTERS), horizontal=True, key="gain_filter",
                    help="'Right answer, wrong reason': classified correctly, but the CAM's maximum is outside the "
                         "defect (PointGame miss). Filters use the first picked model.")

    cols = st.columns(len(picked))
    for col, name in zip(cols, picked):
        res = results[name]
        s = gs.summary(res, thr)
        col.markdown(f"**{name}** ({res.strategy}) · {s['n_images']} images, {s['n_with_mask']} with masks · "
                     f"decision threshold {res.threshold:.3f}")
        col.markdown(f"accuracy {_fmt(s['accuracy'])} · recall {_fmt(s['recall'])} · AUROC {_fmt(s['auroc'])}  \n"
                     f"CAM-IoU@{thr:.2f} **{_fmt(s['cam_iou'])}** · PointGame {_fmt(s['point_game'])} · "
                     f"Energy-Inside {_fmt(s['energy_inside'])} · Loc-IoU {_fmt(s['loc_iou'])} · "
                     f"right answer, wrong reason: {s['right_answer_wrong_reason']}")
    traces = [{"type": "scatter", "x": SWEEP.tolist(), "y": _sweep(str(by_name[n].folder), by_name[n].stamp, split,
                                                                   limit).tolist(), "name": n, "mode": "lines+markers"}
              for n in picked]
    layout = {"height": 260, "margin": {"t": 20, "b": 40}, "xaxis": {"title": {"text": "CAM threshold"}},
              "yaxis": {"title": {"text": "mean CAM-IoU"}, "range": [0, 1]},
              "shapes": [{"type": "line", "x0": thr, "x1": thr, "xref": "x", "y0": 0, "y1": 1, "yref": "paper",
                          "line": {"dash": "dash", "color": "#000000"}}]}
    st.plotly_chart(fast_figure(traces, layout), key="gain_sweep")

    first = results[picked[0]]
    idx = gs.filter_indices(first, kind)
    st.caption(f"{len(idx)} of {len(first)} images match '{kind}'. {LEGEND}")
    if not idx:
        st.info("No image matches this filter.")
        return
    labels = [f"{Path(first.paths[i]).name} ({first.defects[i]})" for i in idx]
    pos = st.selectbox("Image", range(len(idx)), format_func=lambda k: labels[k], key="gain_image")
    i = idx[int(pos) if pos is not None and int(pos) < len(idx) else 0]
    cols = st.columns(len(picked))
    for col, name in zip(cols, picked):
        res = results[name]
        col.image([gs.cam_overlay(res, i, thr), gs.mask_overlay(res, i)], caption=["CAM", "mask head"], width=256)
        col.dataframe([gs.image_metrics(res, i, thr)], hide_index=True)
    with st.expander("All matching images"):
        rows = []
        for j in idx:
            row = gs.image_metrics(first, j, thr)
            for name in picked[1:]:
                other = gs.image_metrics(results[name], j, thr)
                row.update({f"{k} ({name})": other[k] for k in ("p(defect)", "correct", "CAM-IoU", "PointGame")})
            rows.append(row)
        st.dataframe(rows, hide_index=True)


main()

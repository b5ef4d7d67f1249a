"""Data & models (the home page): pick a dataset, look at it, fit a detector, manage saved models, fit a cascade
gate."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from core import workbench as wb
from ui import current_model, current_or_newest_model, guarded, progress_sink, set_model, setup, show_error


# ------------------------------------------------------------------------------------------------------------
@st.cache_data(show_spinner=False, ttl=30)
def _datasets() -> dict[str, str]:
    return {k: str(v) for k, v in wb.list_datasets().items()}


@st.cache_data(show_spinner=False, max_entries=16)
def _overview(root: str, _stamp: float) -> wb.DatasetOverview:
    return wb.dataset_overview(root)


@st.cache_data(show_spinner=False, max_entries=16)
def _thumbs(root: str, _stamp: float):
    return wb.thumbnails(root, per_class=2, size=128)


def _stamp(root: str) -> float:
    try:
        return Path(root).stat().st_mtime
    except OSError:
        return 0.0


def dataset_section() -> str | None:
    st.header("1 · Dataset")
    source = st.radio("Source", ["Dataset folder", "Upload a zip (MVTec layout)"], horizontal=True, key="ds_source")
    root: str | None = None
    if source.startswith("Upload"):
        up = st.file_uploader("Zip of a dataset folder (train/good, test/good, test/<defect>, ground_truth/)",
                              type=["zip"], key="ds_zip")
        if up is not None and st.session_state.get("uploaded_zip") != (up.name, up.size):
            try:
                with st.spinner(f"Extracting {up.name}…"):
                    st.session_state["uploaded_root"] = str(wb.extract_zip(up.getvalue(), up.name))
                    st.session_state["uploaded_zip"] = (up.name, up.size)
                _datasets.clear()
            except Exception as exc:  # noqa: BLE001
                show_error(exc)
                st.session_state.pop("uploaded_root", None)
        root = st.session_state.get("uploaded_root")
        if root is not None:
            wb.touch_upload(root)  # in use: not evicted to make room for other uploads
        if root is None:
            st.caption("Extracted safely into cache/uploads/ (no absolute or '..' paths, no links, size-limited).")
            return None
        st.session_state["dataset_root"] = root
    else:
        names = list(_datasets())
        if not names:
            st.warning("No dataset found. Fix: run `python -m core demo`, or put a folder under the data root.")
            return None
        remembered = st.session_state.get("dataset_name", "demo")
        name = st.selectbox(
            "Dataset", names, index=names.index(remembered) if remembered in names else 0, key="ds_name",
            help="The built-in demo, folders under the data roots (incl. ../shared/datasets) and uploaded zips.",
        )
        st.session_state["dataset_name"] = name
        root = _datasets()[name]
        st.session_state["dataset_root"] = root

    ov = _overview(root, _stamp(root))
    c1, c2, c3 = st.columns(3)
    c1.metric("Images", ov.n_images)
    c2.metric("Layout", ov.layout)
    c3.metric("Classes", len(ov.classes))
    st.caption(f"Folder: `{ov.root}`")
    if ov.is_domain_set:
        st.warning(
            "This is a domain set: it has no normal images, so no model can be fitted on it and metrics on it "
            "alone would reward a detector that flags everything. Overlay it on the Scores page beside a mixed split."
        )
    st.dataframe(pd.DataFrame(ov.split_rows), hide_index=True, width="stretch")
    if ov.warnings:
        with st.expander(f"{len(ov.warnings)} note(s) from indexing"):
            for w in ov.warnings:
                st.write("- " + w)
    thumbs = _thumbs(root, _stamp(root))
    if thumbs:
        st.caption("Examples per class (ground truth outlined in magenta):")
        cols = st.columns(min(8, len(thumbs)))
        for i, (cls, rel, img) in enumerate(thumbs):
            name = Path(rel).name
            short = name if len(name) <= 18 else f"{name[:8]}…{name[-9:]}"  # a long name would break mid-word
            cols[i % len(cols)].image(img, caption=f"{cls} · {short}", width="stretch")
    return root


# ------------------------------------------------------------------------------------------------------------
def fit_section(root: str | None) -> None:
    st.header("2 · Fit a detector")
    if root is None:
        st.info("Pick a dataset first.")
        return
    ov = _overview(root, _stamp(root))
    c1, c2, c3 = st.columns(3)
    detector = c1.selectbox("Detector", wb.detector_kinds(), key="fit_detector")
    backbones = wb.backbone_choices() or ["tf_efficientnet_lite0"]
    backbone = c2.selectbox("Backbone", backbones, key="fit_backbone",
                            help="Offline ImageNet CNNs and a DINOv2 ViT; tf_efficientnet_lite0 is the fastest.")
    size = c3.selectbox("Input size", [0, *wb.image_size_choices(backbone, detector)], key="fit_size",
                        format_func=lambda v: "automatic (from the training images)" if v == 0 else f"{v} px square",
                        help="Automatic: the detector's default for small images, else the images' own size up to "
                             "a pixel budget (aspect ratio kept), so defects of a few pixels stay visible. The fit "
                             "report says what it chose and why.")
    fields = wb.detector_form(detector)
    cols = [c for _ in range(len(fields) // 3 + 1) for c in st.columns(3)]  # rows of three; the name comes last
    options = {}
    for col, f in zip(cols, fields):
        if f.kind == "choice":
            options[f.name] = col.selectbox(f.label, list(f.choices), key=f"fit_{f.name}", help=f.help)
        else:
            cast = float if f.kind == "float" else int
            options[f.name] = col.number_input(f.label, min_value=cast(f.minimum), max_value=cast(f.maximum),
                                               value=cast(f.default), step=cast(f.step), key=f"fit_{f.name}",
                                               help=f.help, format="%.3f" if f.kind == "float" else "%d")
    name = cols[len(fields)].text_input("Model name", value="", placeholder=wb.default_model_name(ov.name, detector),
                                        key="fit_name")
    disabled = ov.is_domain_set
    if st.button(f"Fit {detector} on {ov.name}", type="primary", disabled=disabled, key="fit_go"):
        bar = st.progress(0.0, text="Starting…")
        log = st.empty()
        tracker = wb.FitProgress(progress_sink(bar))
        try:
            settings = wb.FitSettings(detector=detector, backbone=backbone, image_size=int(size), options=options)
            out = wb.fit_model(root, settings, name=name.strip() or None, progress=tracker)
        except Exception as exc:  # noqa: BLE001
            bar.empty()
            show_error(exc)
            return
        bar.progress(1.0, text="done")
        set_model(out.folder)
        rep = out.report
        cache = rep.get("cache", {})
        log.success(
            f"Fitted **{out.folder.name}** in {out.wall_seconds:.1f} s: {wb.fit_summary(rep)}. Feature cache: "
            f"{cache.get('hits', 0)} hits, {cache.get('misses', 0)} misses. Stages: {' → '.join(tracker.stages)}."
        )
        st.session_state["last_fit"] = {"name": out.folder.name, "seconds": rep.get("seconds", {}),
                                         "cache": cache, "skipped": rep.get("skipped", {})}
    last = st.session_state.get("last_fit")
    if last:
        with st.expander(f"Last fit: {last['name']}", expanded=False):
            st.dataframe(pd.DataFrame([{"stage": k, "seconds": round(v, 2)} for k, v in last["seconds"].items()]),
                         hide_index=True)
            st.write(f"Cache hits {last['cache'].get('hits', 0)}, misses {last['cache'].get('misses', 0)}")
            for msg in last["skipped"].values():
                st.warning(msg)


# ------------------------------------------------------------------------------------------------------------
def models_section() -> None:
    st.header("3 · Saved models")
    models = wb.list_models()
    st.caption(f"Folder: `{wb.models_dir()}`")
    if not models:
        st.info("No saved models yet: fit one above (the defaults fit PatchCore on the demo in seconds).")
        return
    table = pd.DataFrame([m.row() for m in models])
    # The table fits the page: the long columns of one model (details, threshold source) are shown under it.
    wide = ["details", "threshold from"] + ([] if table["problem"].astype(bool).any() else ["problem"])
    st.dataframe(table.drop(columns=wide), hide_index=True, width="stretch",
                 column_config={"name": st.column_config.TextColumn(width="large"),
                                "problem": st.column_config.TextColumn(width="large")})
    names = [m.name for m in models]
    cur = current_model()
    idx = names.index(cur.name) if cur is not None and cur.name in names else 0
    chosen = st.selectbox("Model", names, index=idx, key="models_pick")
    info = next(m for m in models if m.name == chosen)
    if not info.error:
        st.caption(f"{info.details} · threshold {info.threshold:.4g} from {info.threshold_source or 'the fit'}")
    c1, c2, c3 = st.columns([1, 2, 1])
    if c1.button("Use this model", key="models_load", disabled=bool(info.error)):
        set_model(info.folder)
        st.rerun()
    new = c2.text_input("New name", value="", key="models_newname", placeholder=chosen)
    if c2.button("Rename", key="models_rename"):
        try:
            dst = wb.rename_model(chosen, new)
            if cur is not None and cur.name == chosen:
                set_model(dst)
            st.session_state.pop("models_pick", None)
            st.rerun()
        except Exception as exc:  # noqa: BLE001
            show_error(exc)
    if st.session_state.get("confirm_delete") == chosen:
        c3.warning(f"Delete {chosen} for good?")
        if c3.button("Yes, delete", key="models_delete_yes", type="primary"):
            try:
                wb.delete_model(chosen)
                if cur is not None and cur.name == chosen:
                    set_model(None)
                st.session_state.pop("confirm_delete", None)
                st.session_state.pop("models_pick", None)
                st.rerun()
            except Exception as exc:  # noqa: BLE001
                show_error(exc)
        if c3.button("Cancel", key="models_delete_no"):
            st.session_state.pop("confirm_delete", None)
            st.rerun()
    elif c3.button("Delete…", key="models_delete"):
        st.session_state["confirm_delete"] = chosen
        st.rerun()
    export_section(info)


def export_section(info: wb.ModelInfo) -> None:
    """The selected model as a bundle that scores without torch (ONNX graph + arrays + manifest), for the line."""
    if info.error or info.kind not in ("patchcore", "padim"):
        return
    key = f"bundle::{info.folder}::{info.stamp}"
    c1, c2 = st.columns([1, 3])
    if c1.button("Export bundle", key="models_export",
                 help="A folder that scores without torch (onnxruntime), with the threshold set here: "
                      "`python -m core score BUNDLE IMAGES` on the line PC."):
        try:
            with st.spinner("Exporting the feature graph to ONNX and checking it against the model…"):
                st.session_state[key] = wb.export_bundle_zip(info.folder)
        except Exception as exc:  # noqa: BLE001
            show_error(exc)
    if key in st.session_state:
        c2.download_button(f"Download {info.name}-bundle.zip ({len(st.session_state[key]) / 1e6:.1f} MB)",
                           st.session_state[key], file_name=f"{info.name}-bundle.zip", mime="application/zip",
                           key="models_export_dl")


# ------------------------------------------------------------------------------------------------------------
def gate_section() -> None:
    st.header("4 · Fit a gate (cascade)")
    cur = current_model()
    if cur is None:
        st.info("Fit or pick a model above first: the gate sits in front of that model.")
        return
    st.caption(f"A cheap gate in front of **{cur.name}**: it decides the clear images, the model's heatmap only the "
               "uncertain ones. Fitted on train_normal + train_mix, calibrated on val_mix, then every val_mix image "
               "is scored and timed once by the gate and by the model (batch 1); the Thresholds page tunes "
               f"T_low/T_high on those cached numbers. Saved in `{wb.cascade_dir(cur)}`.")
    state = wb.load_cascade(cur) if wb.cascade_stamp(cur) else None
    if state is not None:
        pol = state.saved_policy
        st.caption(f"Current gate: **{state.gate}**, measured on {len(state)} val_mix images; policy "
                   f"{pol.get('mode')} T_low={pol.get('t_low')}, T_high={pol.get('t_high')}.")
    kinds = wb.gate_kinds()
    c1, c2 = st.columns([1, 3])
    kind = c1.selectbox("Gate", kinds, key="gate_kind",
                        help=" · ".join(f"{k}: {wb.GATE_HELP.get(k, '')}" for k in kinds))
    c2.caption(wb.GATE_HELP.get(kind, ""))
    label = f"Fit the {kind} gate" + (" (replaces the current one)" if state is not None else "")
    if st.button(label, key="gate_go", type="primary"):
        bar = st.progress(0.0, text="Loading images…")
        try:
            out = wb.fit_gate(cur, kind, progress=progress_sink(bar))
        except Exception as exc:  # noqa: BLE001
            bar.empty()
            show_error(exc)
            return
        bar.progress(1.0, text="done")
        chosen = out.report.get("choice", {}).get("chosen", {})
        msg = (f"Fitted the **{kind}** gate in {out.wall_seconds:.1f} s and measured {out.n_measured} val_mix images. "
               f"Automatic choice: {chosen.get('mode', '?')}")
        if chosen.get("mode") == "cascade":
            msg += f" T_low={chosen['t_low']:.3f}, T_high={chosen['t_high']:.3f}"
        if chosen:
            msg += (f" (recall {chosen['recall']:.3f}, heatmap call rate {chosen['heatmap_call_rate']:.0%}, "
                    f"{chosen['latency_ms']:.1f} ms/image). Tune it on the Thresholds page.")
        st.success(msg)
        for note in out.report.get("gate_health") or []:
            st.warning(f"Gate health: {note}")
        st.session_state.pop(f"cascade::{cur}", None)


@guarded
def main() -> None:
    setup("Data & models", "🏠")
    model_slot = st.sidebar.empty()  # filled last: a fit or a pick below changes the session's model
    current_or_newest_model("under Saved models")  # as every other page: the newest model until one is picked
    root = dataset_section()
    fit_section(root)
    models_section()
    gate_section()
    cur = current_model()
    model_slot.caption(f"Model: **{cur.name}**" if cur else "No model loaded yet")



main()

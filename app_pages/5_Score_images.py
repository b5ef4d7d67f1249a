"""Score images: files, a folder under the data roots, or a zip of images. With a fitted cascade each image goes
through the gate first (gate-normal / heatmap / gate-defect) unless the toggle bypasses it. Score, route, decision,
heatmap and time per image; results kept in this session until cleared; a CSV naming the model and thresholds, and
the thresholds themselves as JSON for ``python -m core score --thresholds``.

A bad file (corrupt, text renamed .png, too large, too small, blank) gets an error naming it; the others are scored.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import streamlit as st

from core import workbench as wb
from ui import guarded, model, model_badge, progress_sink, require_model, setup, show_error, working_threshold
from ui.review import review_controls

setup("Score images", "🖼️")

TYPES = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"]
SOURCES = ["Files", "A folder under the data roots", "A zip of images"]
MAX_OVERLAYS = 60  # images whose picture and map are kept for overlays; the table holds every result


@st.cache_resource(show_spinner=False, max_entries=8)
def _cascade(folder: str, stamp: str | None) -> wb.CascadeSettings | None:
    return wb.cascade_for_scoring(folder) if stamp else None


def _files() -> list[tuple[str, bytes]] | None:
    """The images the user chose, as (name, bytes), or None while nothing is chosen."""
    source = st.radio("Images from", SOURCES, horizontal=True, key="si_source")
    try:
        if source == SOURCES[0]:
            ups = st.file_uploader("Images to score", type=TYPES, accept_multiple_files=True, key="si_files",
                                   help=f"Up to {wb.MAX_UPLOAD_IMAGE_BYTES / 1e6:.0f} MB per image.")
            return [(u.name, u.getvalue()) for u in ups] if ups else None
        if source == SOURCES[1]:
            typed = st.text_input("Folder", key="si_folder", placeholder="e.g. ../shared/datasets/magnetic_tile/test",
                                  help=f"Every image below it, at most {wb.MAX_BATCH_IMAGES}.")
            return wb.images_from_folder(typed) if typed.strip() else None
        up = st.file_uploader("Zip of images", type=["zip"], key="si_zip",
                              help="Read in memory (nothing is extracted to disk), "
                                   f"at most {wb.MAX_BATCH_IMAGES} images.")
        return wb.images_from_zip(up.getvalue(), up.name) if up is not None else None
    except Exception as exc:  # noqa: BLE001
        show_error(exc)
        return None


@guarded
def main() -> None:
    folder, info = require_model()
    thr = working_threshold(folder, info)
    model_badge(info, thr)
    cascade = _cascade(str(folder), wb.cascade_stamp(folder))
    use_cascade = cascade is not None and st.toggle(
        "Route through the cascade", value=True, key="si_cascade",
        help="The gate decides the clear images; only those between T_low and T_high reach the heatmap model.")
    if cascade is not None:
        st.caption(f"Cascade: {cascade.gate_kind} gate, T_low={cascade.t_low:.3f}, T_high={cascade.t_high:.3f}"
                   + ("" if use_cascade else " (bypassed: every image goes to the heatmap model)") + ".")
    files = _files()
    if files:
        digest = hashlib.sha256()
        for name, data in files:
            digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        run_key = (str(folder), info.stamp, f"{thr:.12g}", use_cascade, digest.hexdigest())
        cached = st.session_state.get("si_results")
        if cached is None or cached[0] != run_key:
            bar = st.progress(0.0, text="Scoring…")
            results = wb.score_uploads(model(folder, info), files, threshold=thr, progress=progress_sink(bar),
                                       cascade=cascade if use_cascade else None)
            bar.empty()
            for r in results[MAX_OVERLAYS:]:
                r.image = r.raw_map = None  # bounded memory per session: the table keeps every row
            context = {"model": info.name, "model_version": info.stamp.split(":")[0]}
            if use_cascade:
                context.update({"t_low": f"{cascade.t_low:.6g}", "t_high": f"{cascade.t_high:.6g}"})
            st.session_state["si_results"] = (run_key, results, context)
    saved = st.session_state.get("si_results")
    if saved is None:
        st.info("Choose images above: files, a folder or a zip.")
        return
    run_key, results, context = saved
    if not files:
        st.caption("Results of the last run in this session (kept until cleared).")
    if st.button("Clear results", key="si_clear"):
        st.session_state.pop("si_results", None)
        st.rerun()
    show_results(folder, info, results, context, thr, cascade if run_key[3] else None)


def show_results(folder, info, results: list[wb.UploadResult], context: dict, thr: float, cascade) -> None:
    for r in results:
        if not r.ok:
            st.error(r.error if r.name in r.error else f"{r.name}: {r.error}")
    s = wb.scoring_summary(results)
    if s["scored"]:
        text = (f"Scored {s['scored']} image(s): {s['anomalous']} anomalous, {s['scored'] - s['anomalous']} normal at "
                f"threshold {thr:.4g} · {s['mean_ms']:.0f} ms per image on average")
        if cascade is not None:
            text += (f" · routes: gate-normal {s['routes']['gate-normal']}, heatmap {s['routes']['heatmap']}, "
                     f"gate-defect {s['routes']['gate-defect']} (heatmap call rate {s['heatmap_call_rate']:.0%})")
        st.success(text + ".")
    st.dataframe(pd.DataFrame([r.row() for r in results]), hide_index=True, width="stretch", key="si_table")
    c1, c2 = st.columns(2)
    c1.download_button("Download results (CSV)", wb.results_csv(results, thr, context), file_name="scores.csv",
                       mime="text/csv", key="si_csv")
    c2.download_button("Download thresholds (JSON)", wb.thresholds_json(info, thr, cascade),
                       file_name=f"{info.name}-thresholds.json", mime="application/json", key="si_thresholds",
                       help="`python -m core score MODEL IMAGES --thresholds FILE` scores with these thresholds.")
    reviewable = [r for r in results if r.ok and r.image is not None]
    if reviewable:
        names = [r.name for r in reviewable]
        pick = st.selectbox("Review one image", names, key="si_rv_pick",
                            format_func=lambda n: f"{n} · {next(r.decision for r in reviewable if r.name == n)}")
        r = next(r for r in reviewable if r.name == pick)
        if r.raw_map is not None:
            zoom, (y0, x0, y1, x1) = wb.worst_region_view(r.image, r.raw_map, wb.normalisation_of(folder))
            st.image(zoom, width=zoom.shape[1], caption=f"{r.name}: the worst region at 1:1 (pixels {x0}-{x1} x "
                                                        f"{y0}-{y1} of the image's own)")
        review_controls(folder, Path(r.name).name, lambda: wb.png_bytes(r.image),
                        "FP" if r.decision == "anomalous" else "FN", "si_rv")
    drawn = [r for r in results if r.ok and r.raw_map is not None and r.image is not None]
    if not drawn:
        return
    norm = wb.normalisation_of(folder)
    pix = st.number_input("Pixel threshold", 0.1, 5.0, 1.0, 0.1, key="si_pix",
                          help="On the normalised map: 1 = the 99.9th percentile of held-out normal pixels.")
    shown = f" (the first {MAX_OVERLAYS})" if len(results) > MAX_OVERLAYS else ""
    st.caption(f"Heatmaps of the images the heatmap model scored{shown}; the gate's own decisions have none.")
    cols = st.columns(3)
    for j, r in enumerate(drawn):
        cols[j % 3].image(
            wb.upload_overlay(r, norm, float(pix)),
            caption=f"{r.name} · {r.decision} · score {r.score:.4g} ({r.to_threshold:.2f} × threshold) · {r.ms:.0f} ms",
        )


main()

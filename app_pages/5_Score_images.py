"""Score images: upload one or many images, get score, decision, heatmap overlay and time per image; CSV out.

A bad upload (corrupt, text renamed .png, too large) gets an error naming the file; the others are scored.
"""

from __future__ import annotations

import hashlib

import pandas as pd
import streamlit as st

from core import workbench as wb
from ui import guarded, model, model_badge, require_model, setup, working_threshold

setup("Score images", "🖼️")

TYPES = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"]


@guarded
def main() -> None:
    folder, info = require_model()
    thr = working_threshold(folder, info)
    model_badge(info, thr)
    uploads = st.file_uploader("Images to score", type=TYPES, accept_multiple_files=True, key="si_files",
                               help=f"Up to {wb.MAX_UPLOAD_IMAGE_BYTES / 1e6:.0f} MB per image.")
    if not uploads:
        st.info("Upload one or more images (png, jpg, bmp, tif).")
        return
    files = [(u.name, u.getvalue()) for u in uploads]
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    run_key = (str(folder), info.stamp, f"{thr:.12g}", digest.hexdigest())
    cached = st.session_state.get("si_results")
    if cached is None or cached[0] != run_key:
        det = model(folder, info)
        bar = st.progress(0.0, text="Scoring…")
        results = wb.score_uploads(
            det, files, threshold=thr,
            progress=lambda _s, d, t: bar.progress(min(1.0, d / max(t, 1)), text=f"Scoring {d}/{t}"),
        )
        bar.empty()
        st.session_state["si_results"] = (run_key, results)
    else:
        results = cached[1]

    bad = [r for r in results if not r.ok]
    for r in bad:
        st.error(r.error if r.name in r.error else f"{r.name}: {r.error}")
    good = [r for r in results if r.ok]
    if good:
        n_anom = sum(r.decision == "anomalous" for r in good)
        ms = [r.ms for r in good]
        st.success(f"Scored {len(good)} image(s): {n_anom} anomalous, {len(good) - n_anom} normal at threshold "
                   f"{thr:.4g} · {sum(ms) / len(ms):.0f} ms per image on average.")
    st.dataframe(pd.DataFrame([r.row() for r in results]), hide_index=True, width="stretch")
    st.download_button("Download results (CSV)", wb.results_csv(results, thr), file_name="scores.csv",
                       mime="text/csv", key="si_csv")
    if good:
        norm = wb.normalisation_of(folder)
        pix = st.number_input("Pixel threshold", 0.1, 5.0, 1.0, 0.1, key="si_pix",
                              help="On the normalised map: 1 = the 99.9th percentile of held-out normal pixels.")
        cols = st.columns(3)
        for j, r in enumerate(good):
            cols[j % 3].image(
                wb.upload_overlay(r, norm, float(pix)),
                caption=f"{r.name} · {r.decision} · score {r.score:.4g} ({r.to_threshold:.2f} × threshold) "
                        f"· {r.ms:.0f} ms",
            )


main()

"""Heatmaps: a gallery of overlays filtered by outcome, defect class and score; one image large, with the
reason (PatchCore: the most anomalous patch beside its nearest normal patch from the memory bank)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from core import workbench as wb
from ui import (
    guarded,
    model,
    model_badge,
    model_dataset,
    require_model,
    scores_for,
    setup,
    show_error,
    splits_of,
    working_threshold,
)
from ui.review import review_controls

setup("Heatmaps", "🔥")

LEGEND = ("Heatmap on a fixed scale (viridis, colour-blind safe: dark purple = typical normal, "
          "yellow = twice the 99.9th percentile of normal pixels); "
          "ground truth in magenta, predicted region (normalised map ≥ pixel threshold) in white.")


@st.cache_data(show_spinner=False, max_entries=512)
def _tile(path: str, raw_map: np.ndarray, norm_key: str, _norm, mask: str | None, pix: float) -> np.ndarray:
    return wb.overlay_image(path, raw_map, _norm, mask, pix, thumb=224)


@guarded
def main() -> None:
    folder, info = require_model()
    thr = working_threshold(folder, info)
    model_badge(info, thr)
    root = model_dataset(info)
    if root is None:
        st.warning(f"The dataset this model was fitted on ({info.dataset or 'unknown'}) is not on this machine. "
                   "Fix: restore it, or use the Score images page for single images.")
        return
    norm = wb.normalisation_of(folder)
    splits = splits_of(root)
    c1, c2, c3 = st.columns([1, 2, 2])
    split = c1.selectbox("Split", splits, index=0, key="hm_split")
    res = scores_for(folder, info, root, split)
    if len(res) == 0:
        st.warning("No image of this split could be scored.")
        return
    outs = wb.outcomes(res.labels, res.scores, thr)
    kinds = c2.multiselect("Outcome at the threshold", ["FP", "FN", "TP", "TN"], default=["FP", "FN", "TP", "TN"],
                           key="hm_outcome", help="FP: false alarm; FN: missed defect.")
    classes = sorted(set(res.defects))
    cls = c3.multiselect("Class", classes, default=classes, key="hm_class")
    c4, c5, c6, c7 = st.columns([2, 1, 1, 1])
    lo, hi = float(res.scores.min()), float(res.scores.max())
    if hi <= lo:
        hi = lo + 1e-6
    rng = c4.slider("Score range", min_value=lo, max_value=hi, value=(lo, hi), key="hm_range", format="%.3f")
    order = c5.radio("Sort", ["highest first", "lowest first"], key="hm_sort")
    pix = c6.number_input("Pixel threshold", 0.1, 5.0, 1.0, 0.1, key="hm_pix",
                          help="On the normalised map: 1 = the 99.9th percentile of held-out normal pixels.")
    per_page = int(c7.selectbox("Shown", [8, 12, 24, 50], index=1, key="hm_n"))

    idx = [i for i in range(len(res)) if outs[i] in kinds and res.defects[i] in cls
           and rng[0] - 1e-9 <= res.scores[i] <= rng[1] + 1e-9]
    idx.sort(key=lambda i: res.scores[i], reverse=order.startswith("highest"))
    counts = {k: outs.count(k) for k in ("TP", "FP", "FN", "TN")}
    st.caption(f"{len(idx)} of {len(res)} images match · at threshold {thr:.4g}: "
               + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" · {LEGEND}")
    if not idx:
        st.info("No image matches these filters.")
        return
    cols = st.columns(4)
    norm_key = f"{info.stamp}"
    for j, i in enumerate(idx[:per_page]):
        try:
            tile = _tile(res.paths[i], res.maps[i].astype(np.float32), norm_key, norm, res.masks[i], float(pix))
        except Exception as exc:  # noqa: BLE001
            cols[j % 4].error(f"{res.rel_paths[i]}: {exc}")
            continue
        cols[j % 4].image(tile, caption=f"{outs[i]} · {res.defects[i]} · {res.scores[i]:.4g} · "
                                        f"{Path(res.rel_paths[i]).name}")

    st.divider()
    labels = [f"{outs[i]} · {res.scores[i]:.4g} · {res.rel_paths[i]}" for i in idx]
    pick = st.selectbox("Inspect one image", range(len(idx)), format_func=lambda k: labels[k], key="hm_pick")
    i = idx[int(pick)]
    det = model(folder, info)
    try:
        detail = wb.score_one(det, res.paths[i], threshold=thr)
    except Exception as exc:  # noqa: BLE001
        show_error(exc)
        return
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Score", f"{detail.score:.4g}")
    m2.metric("Score ÷ threshold", f"{detail.to_threshold:.3f}",
              help=f"The score divided by the threshold in use ({thr:.4g}, {wb.threshold_origin(info, thr)}): "
                   "1 = at the threshold, ≥ 1 = anomalous.")
    m3.metric("Decision", "anomalous" if detail.score >= thr else "normal", outs[i], delta_color="off")
    m4.metric("Time", f"{detail.ms:.0f} ms", help="Rescored now (features from the disk cache when present).")
    a, b, c = st.columns(3)
    a.image(wb.read_image(res.paths[i]), caption=f"{res.rel_paths[i]} ({res.defects[i]})")
    b.image(wb.overlay_image(res.paths[i], detail.raw_map, norm, res.masks[i], float(pix)), caption="overlay")
    c.image(wb.heat_only(detail.raw_map, norm), caption="anomaly map (fixed scale)")
    zoom, (y0, x0, y1, x1) = wb.worst_region_view(res.paths[i], detail.raw_map, norm, res.masks[i])
    st.image(zoom, width=zoom.shape[1], caption=f"The worst region at 1:1: pixels {x0}-{x1} x {y0}-{y1} of the "
                                                "image's own, one screen pixel each (a 2-px defect stays 2 px)")
    review_controls(folder, Path(res.rel_paths[i]).name, Path(res.paths[i]).read_bytes, outs[i], "hm_rv")
    if wb.explains_patches(info.kind):
        st.subheader("Why: the most anomalous patch and its nearest normal patch")
        try:
            ex = wb.explain_patchcore(det, res.paths[i])
        except Exception as exc:  # noqa: BLE001
            show_error(exc)
            return
        st.caption(f"Patch {ex.query_cell} of a {ex.grid[0]}x{ex.grid[1]} grid; its nearest memory-bank patch is "
                   f"{ex.train_cell} of `{Path(ex.train_path).name if ex.train_path else '?'}` at distance "
                   f"{ex.distance:.4g}. Crops show the 3x3-cell neighbourhood the patch feature sees.")
        q1, q2, t1, t2 = st.columns(4)
        q1.image(ex.query_box, caption="this image (orange box)")
        q2.image(ex.query_crop, caption="most anomalous patch", width=160)
        if ex.train_crop is not None:
            t1.image(ex.train_crop, caption="nearest normal patch", width=160)
            t2.image(ex.train_box, caption=f"from training image {Path(ex.train_path).name} (blue box)")
        if ex.note:
            st.info(ex.note)
    else:
        st.caption("Patch-level reasons are shown for PatchCore models; PaDiM's map is a per-position "
                   "Mahalanobis distance.")


main()

"""Scores: histograms per split, class and defect type with the threshold drawn; ROC and PR curves."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core import workbench as wb
from ui import (
    guarded,
    histogram,
    model_badge,
    model_dataset,
    require_model,
    scores_for,
    setup,
    show_error,
    working_threshold,
)

setup("Scores", "📊")


@st.cache_data(show_spinner=False, ttl=60)
def _datasets_by_kind() -> tuple[dict[str, str], dict[str, str]]:
    """(datasets with normal images, domain sets) as name -> folder."""
    normal, domain = {}, {}
    for name, path in wb.list_datasets().items():
        try:
            ov = wb.dataset_overview(path)
        except Exception:  # noqa: BLE001  (an unreadable folder is simply not offered)
            continue
        (domain if ov.is_domain_set else normal)[name] = str(path)
    return normal, domain


@st.cache_data(show_spinner="Pixel metrics (masks read once)…", max_entries=32)
def _pixel(folder: str, arrays_key: str, dataset: str, split: str, _res: wb.SplitScores) -> dict | None:
    return wb.pixel_metrics(_res)


def curve_figs(results: list[wb.SplitScores]) -> tuple[go.Figure, go.Figure, list[dict]]:
    roc, pr, rows = go.Figure(), go.Figure(), []
    colours = wb.series_colours([r.split for r in results])
    for r in results:
        c = wb.curves(r.labels, r.scores)
        if c is None:
            rows.append({"split": r.split, "images": len(r), "AUROC": None, "AP": None,
                         "note": "one class only: curves undefined"})
            continue
        colour = colours[r.split]
        roc.add_trace(go.Scatter(x=c["fpr"], y=c["tpr"], mode="lines", line_color=colour,
                                 name=f"{r.split} (AUROC {c['auroc']:.3f})"))
        pr.add_trace(go.Scatter(x=c["recall"], y=c["precision"], mode="lines", line_color=colour,
                                name=f"{r.split} (AP {c['ap']:.3f})"))
        rows.append({"split": r.split, "images": len(r), "AUROC": round(c["auroc"], 4), "AP": round(c["ap"], 4),
                     "note": f"{int(r.labels.sum())} anomalous / {int((r.labels == 0).sum())} normal"})
    roc.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#999999"),
                             name="chance", showlegend=False))
    roc.update_layout(title="ROC", xaxis_title="false positive rate", yaxis_title="true positive rate",
                      height=380, margin=dict(t=40, b=40))
    pr.update_layout(title="Precision-recall", xaxis_title="recall", yaxis_title="precision",
                     height=380, margin=dict(t=40, b=40), yaxis_range=[0, 1.02])
    return roc, pr, rows


@guarded
def main() -> None:
    folder, info = require_model()
    thr = working_threshold(folder, info)
    model_badge(info, thr)
    normal, domain = _datasets_by_kind()
    names = list(normal)
    own = model_dataset(info)
    default = next((n for n, p in normal.items() if own and Path(p).resolve() == Path(own).resolve()), None)
    c1, c2, c3 = st.columns([2, 2, 1])
    if not names:
        st.warning("No dataset with normal images is available.")
        return
    ds_name = c1.selectbox("Dataset", names, index=names.index(default) if default in names else 0, key="sc_dataset")
    root = normal[ds_name]
    splits = wb.dataset_splits(root)
    chosen = c2.multiselect("Splits", splits, default=[s for s in splits if s == "test"][:1] or splits[:1],
                            key="sc_splits")
    by = c3.radio("Group by", ["label", "defect", "split"], key="sc_by",
                  help="label: normal vs anomalous; defect: normal vs each defect type; split: one series per split")
    c4, c5, c6 = st.columns([1, 2, 1])
    log = c4.radio("Counts", ["linear", "log"], horizontal=True, key="sc_log") == "log"
    overlay = c5.selectbox("Overlay a domain set (no normals)", ["none", *domain], key="sc_domain")
    limit = c6.number_input("Domain sample", 20, 5000, 200, step=50, key="sc_limit",
                            help="Images scored from the domain set (an even sample), to keep it quick.")
    if not chosen:
        st.info("Pick at least one split.")
        return
    results = [scores_for(folder, info, root, s) for s in chosen]
    shown = list(results)
    if overlay != "none":
        try:
            shown.append(scores_for(folder, info, domain[overlay], "test", int(limit)))
        except Exception as exc:  # noqa: BLE001
            show_error(exc)
    for r in shown:
        if r.errors:
            with st.expander(f"{len(r.errors)} unreadable image(s) in {Path(r.dataset).name}/{r.split}"):
                for msg in r.errors.values():
                    st.write("- " + msg)
    groups = wb.group_scores(shown, by)
    st.plotly_chart(histogram(groups, thr, log), key="sc_hist")
    dom = [r for r in shown if r.is_domain_set]
    for r in dom:
        sample = f" (sample of {len(r)} from {r.subsampled_from})" if r.subsampled_from else ""
        st.info(f"Domain set {Path(r.dataset).name}{sample}: {wb.flag_rate(r.scores, thr):.1%} flagged anomalous "
                "at this threshold. Read it only beside the mixed split: flagging everything would score 100 %.")
    roc, pr, rows = curve_figs(results)
    for row, r in zip(rows, results):
        px = _pixel(str(folder), info.stamp.split(":")[0], str(r.dataset), r.split, r)
        if px:
            row.update({"pixel AUROC": px["pixel_auroc"], "pixel AP": px["pixel_ap"], "AUPRO": px["aupro"]})
    st.dataframe(pd.DataFrame(rows).round(4), hide_index=True)
    if any("pixel AP" in row for row in rows):
        st.caption(f"Pixel metrics on the {wb.MAP_STORE_SIZE}-px maps kept for the galleries; "
                   "`python -m core evaluate` reports them on full-size maps.")
    a, b = st.columns(2)
    a.plotly_chart(roc, key="sc_roc")
    b.plotly_chart(pr, key="sc_pr")
    for r in results:
        if (r.labels == 0).any() and (r.labels == 1).any():
            pc = wb.per_class_metrics(r.labels, r.scores, r.defects, threshold=thr)
            st.caption(f"Per defect type on {r.split} (each vs normal; recall at the threshold)")
            st.dataframe(pd.DataFrame([{"defect": k, **v} for k, v in pc.items()]).round(4), hide_index=True)


main()

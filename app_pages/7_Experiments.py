"""Experiments: list study runs (backbones, coreset, faiss, fusion, cross-domain), draw their tables and figures,
and start a ``--quick`` run with a progress bar.

Runs are folders written by ``python -m core experiment NAME DATASET --out DIR``; the page looks for them under a
runs folder (default ``runs/experiments``, or ``$WORKBENCH_EXPERIMENTS_DIR``). Full runs belong on the command
line (they take minutes to an hour); the page only starts quick ones.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from core import workbench as wb
from ui import guarded, setup, styled

setup("Experiments", "🧪")
ex = wb.experiments


def _label(run: ex.RunInfo) -> str:
    kind = "quick" if run.quick else "full"
    wall = f"{run.wall_seconds:.0f} s" if run.wall_seconds is not None else "?"
    return f"{run.study} · {run.dataset} · {kind} · {wall} · {run.finished_at} · {run.folder.name}"


def _start_quick(root: Path) -> None:
    with st.expander("Start a quick run (a small slice: seconds to a minute; never a result to quote)"):
        names = [n for n in wb.list_datasets() if n not in ("neu_seg", "neu_det")]
        pref = names.index("magnetic_tile") if "magnetic_tile" in names else 0
        c1, c2 = st.columns(2)
        study = c1.selectbox("Study", ex.STUDIES, key="exp_study")
        dataset = c2.selectbox("Dataset (fit on its train/good)", names, index=pref, key="exp_dataset")
        if st.button("Run quick", key="exp_start", type="primary"):
            bar = st.progress(0.0, text="starting…")

            def progress(stage: str, done: int, total: int) -> None:
                bar.progress(min(1.0, done / max(1, total)), text=f"{stage}: {done} / {total}")

            _, folder = ex.start_quick_run(study, dataset, root, progress=progress)
            bar.progress(1.0, text="done")
            st.success(f"Wrote {folder}.")
            st.session_state["exp_new"] = str(folder)


def _show(run: ex.RunData) -> None:
    meta = run.meta
    if run.info.quick:
        st.warning("Quick run: a small slice for tests. Its numbers are not results.")
    load = ""
    if meta.get("load_average_start") and meta.get("load_average_end"):
        load = f" · load {meta['load_average_start'][0]} → {meta['load_average_end'][0]}"
    st.caption(f"`{meta.get('command', '')}` · wall {meta.get('wall_seconds', 0):.0f} s · "
               f"finished {meta.get('finished_at', '')}{load}")
    st.dataframe(pd.DataFrame(ex.table_rows(run)), hide_index=True, width="stretch")
    for note in meta.get("notes", []):
        st.markdown(f"- {note}")
    for name, fig in run.figures.items():
        st.plotly_chart(styled(fig), width="stretch", key=f"fig_{name}")
    with st.expander("Settings, versions and machine"):
        st.json({k: meta.get(k) for k in ("settings", "versions", "machine", "extra")}, expanded=False)
    with st.expander("results.md (what README includes)"):
        st.code(run.markdown, language="markdown")


@guarded
def main() -> None:
    typed = st.text_input("Runs folder", value=str(ex.default_runs_root()), key="exp_root",
                          help="Folders holding results.json below this one are listed. Only folders under "
                               + " or ".join(f"`{r}`" for r in ex.runs_roots()) + " may be used.")
    root = ex.check_runs_folder(typed)  # a refused folder stops the page here with the message
    _start_quick(root)
    runs = ex.list_runs(root)
    if not runs:
        st.info(f"No runs under {root} yet. Start a quick one above, or on the command line: "
                "`python -m core experiment coreset magnetic_tile --out runs/experiments/coreset`.")
        return
    bad = [r for r in runs if r.error]
    for r in bad:
        st.warning(r.error)
    good = [r for r in runs if not r.error]
    st.dataframe(pd.DataFrame([{"study": r.study, "dataset": r.dataset, "quick": r.quick,
                                "wall s": None if r.wall_seconds is None else round(r.wall_seconds, 1),
                                "finished": r.finished_at, "folder": str(r.folder)} for r in good]),
                 hide_index=True, width="stretch")
    by_label = {_label(r): r.folder for r in good}
    new = st.session_state.pop("exp_new", None)
    if new is not None:
        st.session_state["exp_run"] = next((k for k, f in by_label.items() if str(f) == new), None)
    if st.session_state.get("exp_run") not in by_label:
        st.session_state["exp_run"] = next(iter(by_label))
    chosen = st.selectbox("Run", list(by_label), key="exp_run")
    _show(ex.load_run(by_label[chosen]))


main()

"""Charts the pages share: score histograms (small multiples by defect class), threshold lines, and the styling
that keeps one colour per split or method and readable log axes on every chart.

Colours come from ``core.visualize.series_colours`` (through ``wb``): the same name, the same colour, on every
page.
"""

from __future__ import annotations

import math
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core import workbench as wb

PANEL_COLUMNS = 3
# Small multiples beyond this many series: overlapping translucent histograms stop being readable.
MAX_OVERLAID = 3


def fast_figure(traces: list[dict], layout: dict) -> go.Figure:
    """A plotly figure from plain dicts without plotly's per-property validation (tens of ms per rerun otherwise:
    the pages redraw their charts on every slider move). The dicts are written by hand here, so they are valid."""
    return go.Figure(data=traces, layout=layout, _validate=False)


def threshold_line(x: float, text: str, axis: str = "") -> tuple[dict, dict]:
    """A dashed vertical line at ``x`` and its label (a layout shape and annotation, like ``add_vline``), on the
    x axis ``x{axis}`` of a panel (``""`` for the first)."""
    return ({"type": "line", "x0": x, "x1": x, "xref": f"x{axis}", "y0": 0, "y1": 1, "yref": f"y{axis} domain",
             "line": {"dash": "dash", "color": "#000000"}},
            {"x": x, "xref": f"x{axis}", "y": 1, "yref": f"y{axis} domain", "text": text, "showarrow": False,
             "yanchor": "bottom"})


def log_axis(values: Any = None) -> dict:
    """A log axis labelled in plain numbers: at the data's own values when there are a few (e.g. coreset ratios),
    else at powers of ten; never plotly's default of a label on every minor tick ("5 6 7 8 9 1 2")."""
    vals = sorted({float(v) for v in np.ravel(np.asarray(values, dtype=float))} if values is not None else set())
    vals = [v for v in vals if v > 0 and math.isfinite(v)]
    if 0 < len(vals) <= 8:
        return {"type": "log", "tickmode": "array", "tickvals": vals, "ticktext": [f"{v:g}" for v in vals]}
    return {"type": "log", "dtick": 1, "tickformat": "~g"}


def histogram(groups: dict[str, np.ndarray], threshold: float, log: bool) -> go.Figure:
    """Score histograms with the threshold drawn: overlaid for up to three series (e.g. normal vs anomalous),
    else small multiples, one panel per series beside the normal images (e.g. one per defect class)."""
    colours = wb.series_colours(list(groups))
    allv = np.concatenate(list(groups.values()))
    lo, hi = float(allv.min()), float(allv.max())
    size = (hi - lo) / 40 if hi > lo else 1.0
    bins = {"start": lo, "end": hi + size, "size": size}
    label = f"threshold {threshold:.4g}"
    counts_axis = {"title": {"text": "images"}, **(log_axis() if log else {})}
    if len(groups) <= MAX_OVERLAID:
        traces = [{"type": "histogram", "x": vals, "name": f"{name} ({len(vals)})",
                   "marker": {"color": colours[name]}, "opacity": 0.6, "xbins": bins}
                  for name, vals in groups.items()]
        shape, note = threshold_line(threshold, label)
        layout = {"barmode": "overlay", "xaxis": {"title": {"text": "raw anomaly score"}}, "yaxis": counts_axis,
                  "legend": {"title": {"text": ""}}, "height": 380, "margin": {"t": 30, "b": 40},
                  "shapes": [shape], "annotations": [note]}
        return fast_figure(traces, layout)
    return _panels(groups, colours, bins, threshold, counts_axis, (lo, hi + size))


def _panels(groups: dict[str, np.ndarray], colours: dict[str, str], bins: dict, threshold: float,
            counts_axis: dict, x_range: tuple[float, float]) -> go.Figure:
    """One small panel per non-normal series, each with the normal images behind it, on shared axes."""
    base = next((k for k in groups if k in ("normal", "good")), None)
    series = [k for k in groups if k != base]
    rows = math.ceil(len(series) / PANEL_COLUMNS)
    gap_x, gap_y = 0.06, 0.55 / max(rows, 1) / 2
    width = (1 - gap_x * (PANEL_COLUMNS - 1)) / PANEL_COLUMNS
    height = (1 - gap_y * (rows - 1)) / rows
    anomalous = wb.series_colours(["anomalous"])["anomalous"]
    traces, shapes, notes, layout = [], [], [], {}
    for k, name in enumerate(series):
        r, c = divmod(k, PANEL_COLUMNS)
        ax = "" if k == 0 else str(k + 1)
        x0 = c * (width + gap_x)
        y1 = 1 - r * (height + gap_y)
        layout[f"xaxis{ax}"] = {"domain": [x0, x0 + width], "anchor": f"y{ax}", "range": list(x_range),
                                "title": {"text": "raw anomaly score" if r == rows - 1 else ""}}
        layout[f"yaxis{ax}"] = {**counts_axis, "domain": [max(0.0, y1 - height), y1], "anchor": f"x{ax}",
                                "title": {"text": "images" if c == 0 else ""}}
        if base is not None:
            traces.append({"type": "histogram", "x": groups[base], "xaxis": f"x{ax}", "yaxis": f"y{ax}",
                           "name": f"{base} ({len(groups[base])})", "legendgroup": base, "showlegend": k == 0,
                           "marker": {"color": colours[base]}, "opacity": 0.5, "xbins": bins})
        traces.append({"type": "histogram", "x": groups[name], "xaxis": f"x{ax}", "yaxis": f"y{ax}",
                       "name": f"{name} ({len(groups[name])})", "opacity": 0.75, "xbins": bins,
                       "marker": {"color": anomalous if base is not None else colours[name]}, "showlegend": False})
        shapes.append(threshold_line(threshold, "", ax)[0])
        notes.append({"text": f"<b>{name}</b> ({len(groups[name])})", "showarrow": False, "x": 0.5,
                      "xref": f"x{ax} domain", "y": 1.0, "yref": f"y{ax} domain", "yanchor": "bottom"})
    layout.update({"barmode": "overlay", "height": 230 * rows + 60, "margin": {"t": 40, "b": 40},
                   "shapes": shapes, "annotations": notes,
                   "title": {"text": f"each class beside the normal images · dashed: threshold {threshold:.4g}",
                             "font": {"size": 13}}})
    return fast_figure(traces, layout)


def styled(figure: dict) -> go.Figure:
    """A stored plotly figure (e.g. a study's figure.json) with the shared colours by trace name and readable
    log axes, so that every chart of the Experiments page reads the same way."""
    fig = go.Figure(figure)
    names = [t.name for t in fig.data if t.name]
    colours = wb.series_colours(list(dict.fromkeys(names)))
    for t in fig.data:
        if not t.name or t.name not in colours:
            continue
        if getattr(t, "line", None) is not None:
            t.line.color = colours[t.name]
        if getattr(t, "marker", None) is not None:
            t.marker.color = colours[t.name]
    for axis_name in [k for k in fig.layout.to_plotly_json() if k.startswith(("xaxis", "yaxis"))]:
        axis = fig.layout[axis_name]
        if axis.type == "log":
            letter = axis_name[0]
            suffix = axis_name[5:]
            ref = f"{letter}{suffix}"
            vals = [v for t in fig.data if (getattr(t, f"{letter}axis", None) or letter) == ref
                    for v in (getattr(t, letter) or []) if isinstance(v, (int, float))]
            fig.layout[axis_name].update(log_axis(vals))
    return fig


# ------------------------------------------------------------------------------------------------------------
# Histograms whose x range can be dragged (altair interval selection, read back by st.altair_chart(on_select=...))

BAND_PARAM = "band"


def band_histogram(rows: list[dict], x_title: str, domain: tuple[float, float], rules: list[tuple[float, str]],
                   shade: tuple[float, float] | None = None, height: int = 240) -> alt.Chart:
    """Normal and defective images as two overlaid histograms (rows from ``wb.score_bins``), the thresholds as thin
    black bars, an optional shaded band, and an x-interval selection named ``band`` that the page reads back.

    One chart, not a layer of several: Streamlit reads selections back from single-view charts only, so the
    thresholds and the band are drawn as bars of the same chart (groups of their own, at full height).
    """
    groups = list(dict.fromkeys(r["group"] for r in rows)) or ["normal", "defective"]
    colours = wb.series_colours(groups)
    top = max([r["count"] for r in rows] or [1])
    width = (domain[1] - domain[0]) / 300 or 1e-3
    marks = ([{"bin_start": shade[0], "bin_end": shade[1], "count": top, "group": "uncertain band"}] if shade else [])
    marks += [{"bin_start": v - width, "bin_end": v + width, "count": top, "group": label} for v, label in rules]
    names = [m["group"] for m in marks] + groups
    palette = ["#999999" if m["group"] == "uncertain band" else "#000000" for m in marks] + [colours[g] for g in groups]
    opacity = [0.18 if m["group"] == "uncertain band" else 1.0 for m in marks] + [0.65] * len(groups)
    brush = alt.selection_interval(encodings=["x"], name=BAND_PARAM)
    return (alt.Chart(pd.DataFrame(marks + rows, columns=["bin_start", "bin_end", "count", "group"]))
            .mark_bar(binSpacing=0)
            .encode(x=alt.X("bin_start:Q", title=x_title, scale=alt.Scale(domain=list(domain), nice=False)),
                    x2="bin_end:Q", y=alt.Y("count:Q", stack=None, title="images"), y2=alt.datum(0),
                    color=alt.Color("group:N", title=None, legend=alt.Legend(orient="top"),
                                    scale=alt.Scale(domain=names, range=palette), sort=names),
                    opacity=alt.Opacity("group:N", scale=alt.Scale(domain=names, range=opacity), legend=None),
                    tooltip=["group:N", alt.Tooltip("bin_start:Q", format=".3f", title="from"),
                             alt.Tooltip("bin_end:Q", format=".3f", title="to"), "count:Q"])
            .add_params(brush).properties(height=height))


def selected_band(event: Any) -> tuple[float, float] | None:
    """The (low, high) score range dragged on a :func:`band_histogram`, from st.altair_chart's selection state
    (``{"selection": {"band": {"bin_start": [lo, hi]}}}``); None when nothing is selected."""
    try:
        sel = (event or {}).get("selection", {}).get(BAND_PARAM) or {}
    except AttributeError:
        return None
    values = next((v for v in sel.values() if isinstance(v, (list, tuple)) and len(v) == 2), None)
    if values is None:
        return None
    lo, hi = float(min(values)), float(max(values))
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None

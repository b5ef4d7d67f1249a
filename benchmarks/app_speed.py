"""App responsiveness: server time per rerun of the Thresholds and Heatmaps pages, driven by AppTest.

Targets: with 5,000 scored images, a threshold slider move costs <= 200 ms of server time per rerun; opening the
Heatmaps page with 50 overlays <= 1 s.

Setup (all on the built-in demo, nothing from magnetic_tile): a real PatchCore model (coreset ratio 0.01) and a
real stats gate are fitted into a temporary models folder. Then 5,000 synthetic-but-realistic scores are injected
through the same cache paths the pages read:

* split scores: ``core.workbench.score_split`` (what the pages' cached ``split_scores`` calls) is replaced by one
  returning 5,000 images whose scores, labels (20 % anomalous) and 112 x 112 maps are resampled, with jitter, from
  the model's real scores and maps of the demo's test split; paths point at the real demo images;
* cascade measurements: ``<model>/cascade/measured_val_mix.csv`` is rewritten with 5,000 rows (gate scores and
  timings resampled from the gate's real val_mix measurements, heatmap scores/timings from the real model).

The first run of each page fills the caches (not timed as a slider move); each timed rerun is one ``at.run()``
after one widget change, i.e. the whole script run plus AppTest's own overhead (an upper bound on server time).

    python benchmarks/app_speed.py [--n 5000] [--moves 10]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from common import REPO, table, write_result

TARGET_SLIDER_MS = 200.0
TARGET_HEATMAPS_S = 1.0


def synthetic_scores(real, n: int, rng: np.random.Generator):
    """``n`` images resampled from a real SplitScores: 20 % anomalous, jittered scores and maps."""
    from core import workbench as wb

    y = (rng.random(n) < 0.2).astype(np.int64)
    pos, neg = np.flatnonzero(real.labels == 1), np.flatnonzero(real.labels == 0)
    src = np.where(y == 1, rng.choice(pos, n), rng.choice(neg, n))
    spread = float(np.std(real.scores[neg])) or 1.0
    scores = real.scores[src] + rng.normal(0, 0.25 * spread, n)
    maps = real.maps[src].astype(np.float32)
    maps += rng.normal(0, 0.02 * spread, (n, 1, 1)).astype(np.float32)
    return wb.SplitScores(
        dataset=real.dataset, split=real.split, paths=[real.paths[i] for i in src],
        rel_paths=[real.rel_paths[i] for i in src], labels=y, defects=[real.defects[i] for i in src],
        masks=[real.masks[i] for i in src], scores=scores.astype(np.float64), maps=maps.astype(np.float16),
        errors={}, ms_per_image=real.ms_per_image, is_domain_set=False,
    )


def synthetic_measured(folder: Path, n: int, rng: np.random.Generator) -> None:
    """Rewrite the gate's measurements with ``n`` rows resampled from its real val_mix measurements."""
    from core import workbench as wb
    from core.cascade import Measured
    from core.cascade.pipeline import write_measured

    st = wb.load_cascade(folder)
    m = st.measured
    y = (rng.random(n) < 0.3).astype(np.int64)
    pos, neg = np.flatnonzero(m.labels == 1), np.flatnonzero(m.labels == 0)
    src = np.where(y == 1, rng.choice(pos, n), rng.choice(neg, n))
    jit = lambda a, s: np.asarray(a)[src] * np.exp(rng.normal(0, s, n))  # noqa: E731
    gate = np.clip(m.gate_scores[src] + rng.normal(0, 0.05, n), 0, 1)
    heat = m.heat_scores[src] + rng.normal(0, 0.25 * (float(np.std(m.heat_scores[m.labels == 0])) or 1.0), n)
    big = Measured(y, gate, jit(m.gate_ms, 0.2), heat, jit(m.heat_ms, 0.2))
    split = SimpleNamespace(paths=[f"synthetic/{i:05d}.png" for i in range(n)],
                            defects=["good" if v == 0 else "defect" for v in y])
    write_measured(wb.cascade_dir(folder) / "measured_val_mix.csv", split, big)


def timed(at, action, moves: int) -> list[float]:
    out = []
    for k in range(moves):
        action(at, k)
        t0 = time.perf_counter()
        at.run()
        out.append(1000 * (time.perf_counter() - t0))
        assert not at.exception, [e.value for e in at.exception]
    return out


def stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)), "max_ms": float(a.max()),
            "n": int(a.size)}


def main() -> None:
    started = time.perf_counter()
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000, help="scored images injected")
    ap.add_argument("--moves", type=int, default=10, help="timed reruns per kind of move")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="app_speed."))
    os.environ["WORKBENCH_MODELS_DIR"] = str(tmp / "models")
    from streamlit.testing.v1 import AppTest

    from core import workbench as wb
    from core.data import ensure_demo

    demo = ensure_demo()
    t0 = time.perf_counter()
    folder = wb.fit_model(demo, wb.FitSettings(detector="patchcore", options={"ratio": 0.01}), name="bench").folder
    wb.fit_gate(folder, "stats")
    setup_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    real = wb.score_split(folder, demo, "test")
    big = synthetic_scores(real, args.n, rng)
    synthetic_measured(folder, args.n, rng)
    calls = []

    def injected_score_split(*a, **k):
        calls.append(a)
        return big

    wb.score_split = injected_score_split  # the pages' cached split_scores calls this

    # A server's Runtime keeps one ScriptCache (compiled page bytecode) across reruns; AppTest makes a new one per
    # run, recompiling the page each time. Share one, so the timing is the rerun a server does.
    import streamlit.testing.v1.app_test as _at_mod
    import streamlit.testing.v1.local_script_runner as _lsr_mod

    shared_cache = _at_mod.ScriptCache()
    _at_mod.ScriptCache = _lsr_mod.ScriptCache = lambda: shared_cache

    def page(path: str, **state) -> AppTest:
        at = AppTest.from_file(str(REPO / path), default_timeout=300)
        at.session_state["model_dir"] = str(folder)
        for k, v in state.items():
            at.session_state[k] = v
        return at

    # ---- Thresholds
    at = page("app_pages/3_Thresholds.py")
    t0 = time.perf_counter()
    at.run()
    first_ms = 1000 * (time.perf_counter() - t0)
    assert not at.exception, [e.value for e in at.exception]
    n_scored = len(big)
    pairs = [(0.05 * k, min(1.0, 0.05 * k + 0.3)) for k in range(args.moves)]
    cas = timed(at, lambda a, k: a.slider(key="cas_range").set_value(pairs[k]), args.moves)
    cas_num = timed(at, lambda a, k: a.number_input(key="cas_low").set_value(round(0.02 * k, 3)), args.moves)
    sl = at.slider(key="th_slider")
    lo, hi = float(sl.min), float(sl.max)
    heat_vals = list(np.linspace(lo + 0.3 * (hi - lo), lo + 0.7 * (hi - lo), args.moves))
    heat = timed(at, lambda a, k: a.slider(key="th_slider").set_value(float(heat_vals[k])), args.moves)
    # back to a heat threshold seen before: the sweep comes from the cache
    heat_back = timed(at, lambda a, k: a.slider(key="th_slider").set_value(float(heat_vals[k % 2])), args.moves)
    assert len(calls) == 1, f"scores were computed {len(calls)} times"

    # ---- Heatmaps with 50 overlays
    import streamlit as st

    st.cache_data.clear()  # cold overlay tiles (the split's scores are re-injected)
    at = page("app_pages/4_Heatmaps.py", hm_n=50)
    t0 = time.perf_counter()
    at.run()
    hm_cold = 1000 * (time.perf_counter() - t0)
    assert not at.exception, [e.value for e in at.exception]
    tiles = len(at.get("imgs"))
    at2 = page("app_pages/4_Heatmaps.py", hm_n=50)
    t0 = time.perf_counter()
    at2.run()
    hm_warm = 1000 * (time.perf_counter() - t0)
    hm_moves = timed(at2, lambda a, k: a.number_input(key="hm_pix").set_value(1.0 if k % 2 else 1.1), 3)

    res = {
        "n_scored_images": n_scored,
        "n_measured_images": args.n,
        "setup_seconds": setup_s,
        "thresholds_first_open_ms": first_ms,
        "cascade_range_slider": stats(cas),
        "cascade_number_input": stats(cas_num),
        "heat_threshold_slider_new_value": stats(heat),
        "heat_threshold_slider_seen_value": stats(heat_back),
        "heatmaps_open_cold_ms": hm_cold,
        "heatmaps_open_warm_ms": hm_warm,
        "heatmaps_rerun_pixel_threshold": stats(hm_moves),
        "heatmaps_image_elements": tiles,
        "targets": {"slider_ms": TARGET_SLIDER_MS, "heatmaps_open_s": TARGET_HEATMAPS_S},
        "note": "AppTest at.run() wall time per rerun (script + AppTest overhead); server-side only, no browser "
                "rendering. Heatmaps cold = overlay cache cleared, includes rescoring the inspected image and its "
                "PatchCore patch explanation.",
    }
    rows = [
        ["Thresholds: T_low/T_high range slider", f"{args.n} measured", res["cascade_range_slider"]["median_ms"],
         res["cascade_range_slider"]["max_ms"], f"<= {TARGET_SLIDER_MS:.0f}"],
        ["Thresholds: T_low number input", f"{args.n} measured", res["cascade_number_input"]["median_ms"],
         res["cascade_number_input"]["max_ms"], f"<= {TARGET_SLIDER_MS:.0f}"],
        ["Thresholds: heatmap threshold, new value (re-sweeps)", f"{n_scored} scored",
         res["heat_threshold_slider_new_value"]["median_ms"], res["heat_threshold_slider_new_value"]["max_ms"],
         f"<= {TARGET_SLIDER_MS:.0f}"],
        ["Thresholds: heatmap threshold, seen value", f"{n_scored} scored",
         res["heat_threshold_slider_seen_value"]["median_ms"], res["heat_threshold_slider_seen_value"]["max_ms"],
         f"<= {TARGET_SLIDER_MS:.0f}"],
        ["Heatmaps: open with 50 overlays, cold tiles", f"{n_scored} scored", hm_cold, hm_cold,
         f"<= {TARGET_HEATMAPS_S * 1000:.0f}"],
        ["Heatmaps: open with 50 overlays, warm", f"{n_scored} scored", hm_warm, hm_warm,
         f"<= {TARGET_HEATMAPS_S * 1000:.0f}"],
        ["Heatmaps: pixel-threshold rerun (50 new tiles)", f"{n_scored} scored",
         res["heatmaps_rerun_pixel_threshold"]["median_ms"], res["heatmaps_rerun_pixel_threshold"]["max_ms"], "-"],
    ]
    print(table(["rerun", "data", "median ms", "max ms", "target ms"], rows))
    write_result("app_speed", res, started)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

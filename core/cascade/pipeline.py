"""fit / sweep / evaluate: the cascade's three steps on a dataset, writing everything into one folder.

* fit: the gate on train_normal + train_mix (label-free gates use the normals only), calibrated on val_mix; the
  heatmap detector on train_normal.
* sweep: every val_mix image is scored by the gate and the heatmap model one at a time (batch 1, decoded images,
  no feature cache) and timed; the heatmap threshold (F1-max or a target recall) and the (T_low, T_high) pair are
  chosen on val_mix only.
* evaluate: the chosen operating point is reported on test_mix, never tuned there, next to heatmap_only and
  gate_only measured in the same run, plus an end-to-end routed run; a domain set only as an extra row.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.cascade.gates import Gate, make_gate
from core.cascade.report import histogram_html, histogram_png, summary_row, write_csv, write_summary
from core.cascade.routing import HEATMAP, Cascade, Policy, decisions_for, final_scores, routes_for
from core.cascade.sweep import SWEEP_COLUMNS, Measured, choose, gate_health, pareto_front, sweep
from core.errors import DatasetError, WorkbenchError
from core.progress import ProgressFn, no_progress
from core.storage import atomic_write_json


@dataclass
class CascadeOptions:
    gate: str = "supervised"
    margin: float = 0.02  # recall margin below heatmap-only (0.02 = 2 points)
    precision_floor: float | None = None  # None: heatmap-only precision - 0.05
    heat_target_recall: float | None = None  # None: the heatmap threshold is F1-max on val_mix
    limit: int | None = None  # cap images per split (stratified), for quick runs
    domain_limit: int = 120
    allow_gate_only: bool = True  # False: the chosen point must call the heatmap model for some images
    seed: int = 0
    gate_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class SplitImages:
    name: str
    paths: list[str]
    images: list[np.ndarray]
    labels: np.ndarray
    defects: list[str]


def load_split(index, split: str, limit: int | None = None) -> SplitImages:
    """Decode a split (optionally a stratified slice of at most ``limit`` images: the first of each class)."""
    from core.data import read_image

    recs = index.split(split)
    if limit is not None and len(recs) > limit:
        by: dict[str, list] = {}
        for r in recs:
            by.setdefault(r.defect, []).append(r)
        keep = []
        for name in sorted(by):
            keep += by[name][: max(1, math.floor(limit * len(by[name]) / len(recs)))]
        recs = keep
    images, ok = [], []
    for r in recs:
        try:
            images.append(read_image(index.abs_path(r)))
            ok.append(r)
        except WorkbenchError:
            continue
    return SplitImages(split, [str(index.abs_path(r)) for r in ok], images, np.array([r.label for r in ok], np.int64),
                       [r.defect for r in ok])


def check_mixed(index) -> None:
    if index.is_domain_set:
        raise DatasetError(
            f"{index.root} holds defect images only (a domain set): the cascade needs normal images to fit and a "
            "mixed split to report on.",
            "Fit and report on a dataset with normal images; pass this one as --domain to get its flag rate.",
        )
    for split in ("train_normal", "val_mix", "test_mix"):
        if not index.splits.get(split):
            raise DatasetError(f"{index.root} has an empty {split} split.", "Use a dataset in MVTec layout.")


# ------------------------------------------------------------------------------------------------ fit
def fit_models(index, detector, opts: CascadeOptions, out: Path | None = None, cache=None,
               progress: ProgressFn = no_progress,
               data: dict[str, SplitImages] | None = None) -> tuple[Gate, Any, dict]:
    """Fit the gate and the heatmap detector; save both under ``out`` when given."""
    check_mixed(index)
    data = data or {}
    tn = data.get("train_normal") or load_split(index, "train_normal", opts.limit)
    tm = data.get("train_mix") or load_split(index, "train_mix", opts.limit)
    val = data.get("val_mix") or load_split(index, "val_mix", opts.limit)
    gate = make_gate(opts.gate, seed=opts.seed, **opts.gate_kwargs)
    gate_report = gate.fit(tn.images + tm.images, np.r_[tn.labels, tm.labels], val.images, val.labels, progress)
    report = {"gate": gate_report}
    if detector.normalisation is None:
        t0 = time.perf_counter()
        fr = detector.fit(tn.paths, cache=cache, progress=progress, fingerprint=index.fingerprint("train_normal"))
        report["detector"] = {**fr.to_dict(), "wall_seconds": time.perf_counter() - t0}
    if out is not None:
        out = Path(out)
        gate.save(out / "gate")
        detector.save(out / "detector", extra={"dataset": str(index.root)})
        atomic_write_json(out / "fit.json", {"dataset": str(index.root), "gate": opts.gate, "detector": detector.kind,
                                             "limit": opts.limit, **report})
    return gate, detector, report


# ------------------------------------------------------------------------------------------------ measure
def measure_heatmap(detector, images: Sequence[np.ndarray], progress: ProgressFn = no_progress,
                    stage: str = "heatmap") -> tuple[np.ndarray, np.ndarray]:
    """Raw heatmap scores and milliseconds per image (batch 1, decoded images, no feature cache)."""
    n = len(images)
    s, ms = np.zeros(n), np.zeros(n)
    if n:
        detector.score_images([images[0]])  # warm-up (first call builds the extractor)
    for i, img in enumerate(images):
        t0 = time.perf_counter()
        s[i] = float(detector.score_images([img]).scores[0])
        ms[i] = 1000.0 * (time.perf_counter() - t0)
        progress(stage, i + 1, n)
    return s, ms


def measure_gate(gate: Gate, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if images:
        gate.score_images([images[0]])  # warm-up
    return gate.score_timed(images)


def measure(gate: Gate, detector, split: SplitImages, progress: ProgressFn = no_progress,
            heat: tuple[np.ndarray, np.ndarray] | None = None) -> Measured:
    """Per-image gate and heatmap scores and times of a split. ``heat`` reuses heatmap measurements made in the
    same run (e.g. one detector shared by several gates)."""
    gs, gms = measure_gate(gate, split.images)
    hs, hms = heat if heat is not None else measure_heatmap(detector, split.images, progress, f"heatmap {split.name}")
    return Measured(split.labels, gs, gms, hs, hms)


def heat_threshold(labels: np.ndarray, heat_scores: np.ndarray, target_recall: float | None = None) -> float:
    """The heatmap model's own threshold on val_mix: F1-max, or the highest threshold reaching ``target_recall``."""
    from core.metrics import f1_max

    y = np.asarray(labels)
    if not ((y == 1).any() and (y == 0).any()):
        raise DatasetError("Choosing the heatmap threshold needs both classes in val_mix.", "Use a mixed dataset.")
    if target_recall is None:
        return f1_max(y, heat_scores)[1]
    a = np.sort(np.asarray(heat_scores)[y == 1])[::-1]
    k = min(len(a) - 1, max(0, math.ceil(target_recall * len(a)) - 1))
    return float(a[k])


def heat_scale(labels: np.ndarray, heat_scores: np.ndarray) -> float:
    s = np.asarray(heat_scores)[np.asarray(labels) == 0]
    return float(np.std(s) or np.std(heat_scores) or 1.0)


def write_measured(path: Path, split: SplitImages, m: Measured) -> None:
    rows = [{"path": p, "label": int(y), "defect": d, "gate_score": float(g), "gate_ms": float(gm),
             "heat_score": float(h), "heat_ms": float(hm)}
            for p, y, d, g, gm, h, hm in zip(split.paths, m.labels, split.defects, m.gate_scores, m.gate_ms,
                                              m.heat_scores, m.heat_ms)]
    write_csv(path, rows, ("path", "label", "defect", "gate_score", "gate_ms", "heat_score", "heat_ms"))


def read_measured(path: Path) -> tuple[list[str], Measured]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    col = lambda k, t=float: np.array([t(r[k]) for r in rows])  # noqa: E731
    return [r["defect"] for r in rows], Measured(col("label", int), col("gate_score"), col("gate_ms"),
                                                  col("heat_score"), col("heat_ms"))


# ------------------------------------------------------------------------------------------------ sweep
def run_sweep(gate: Gate, detector, val: SplitImages, opts: CascadeOptions, out: Path | None = None,
              progress: ProgressFn = no_progress, measured: Measured | None = None) -> dict[str, Any]:
    """Measure val_mix, choose the heatmap threshold and the operating point there; write sweep.csv, pareto.csv."""
    m = measured or measure(gate, detector, val, progress)
    thr = heat_threshold(m.labels, m.heat_scores, opts.heat_target_recall)
    scale = heat_scale(m.labels, m.heat_scores)
    rows = sweep(m, thr, scale)
    choice = choose(rows, opts.margin, opts.precision_floor, allow_gate_only=opts.allow_gate_only)
    policy = choice.policy(thr, scale)
    front_lat = pareto_front(rows, "latency_ms")
    front_call = pareto_front(rows, "heatmap_call_rate")
    health = gate_health(m.gate_scores, m.labels)
    result = {"policy": policy.to_dict(), "choice": choice.to_dict(), "heat_threshold": thr, "gate_health": health,
              "n_pairs": len(rows), "gate_cost": gate.cost(), "val_gate_score_range": [float(m.gate_scores.min()),
                                                                                      float(m.gate_scores.max())]}
    if out is not None:
        out = Path(out)
        write_csv(out / "sweep.csv", rows, SWEEP_COLUMNS)
        pareto = [{"front": "recall_vs_latency", **r} for r in front_lat] + \
                 [{"front": "recall_vs_call_rate", **r} for r in front_call]
        write_csv(out / "pareto.csv", pareto, ("front",) + SWEEP_COLUMNS)
        write_measured(out / "measured_val_mix.csv", val, m)
        atomic_write_json(out / "cascade.json", {"gate": gate.kind, "detector": detector.kind, **result})
    result["measured"] = m
    result["rows"] = rows
    return result


# ------------------------------------------------------------------------------------------------ evaluate
def rows_for(experiment_prefix: str, split: str, m: Measured, policies: dict[str, Policy]) -> list[dict[str, Any]]:
    out = []
    for name, pol in policies.items():
        routes = routes_for(m.gate_scores, pol)
        dec = decisions_for(m.gate_scores, m.heat_scores, routes, pol)
        fs = final_scores(m.gate_scores, m.heat_scores, routes, pol)
        out.append(summary_row(f"{experiment_prefix}{name}", split, m.labels, dec, fs, m.latency(routes, pol.mode),
                               float((routes == HEATMAP).mean())))
    return out


def policies_for(sweep_result: dict[str, Any]) -> dict[str, Policy]:
    pol = Policy(**sweep_result["policy"])
    gate_only = next(r for r in sweep_result.get("rows", []) if r["mode"] == "gate_only") \
        if sweep_result.get("rows") else None
    gt = gate_only["gate_threshold"] if gate_only else sweep_result.get("gate_threshold")
    common = dict(heat_threshold=pol.heat_threshold, heat_scale=pol.heat_scale)
    return {"heatmap_only": Policy(mode="heatmap_only", **common),
            "gate_only": Policy(mode="gate_only", gate_threshold=gt, **common),
            "cascade": pol}


def run_evaluate(cascade: Cascade, sweep_result: dict[str, Any], test: SplitImages, opts: CascadeOptions,
                 out: Path | None = None, val: tuple[list[str], Measured] | None = None,
                 domain: SplitImages | None = None, progress: ProgressFn = no_progress,
                 heat: tuple[np.ndarray, np.ndarray] | None = None, routed: bool = True) -> dict[str, Any]:
    """Report the chosen point on test_mix beside heatmap_only and gate_only (one run), plus an end-to-end routed
    run of the cascade and, when given, the domain set's flag rate."""
    if test.labels.min() == test.labels.max():
        raise DatasetError(f"{test.name} holds one class only; the cascade is reported on a mixed split.",
                           "Report on test_mix of a dataset with normal and defective images.")
    gname = cascade.gate.kind
    policies = policies_for(sweep_result)
    m = measure(cascade.gate, cascade.detector, test, progress, heat=heat)
    rows = []
    if val is not None:
        rows += rows_for(f"{gname}:", "val_mix", val[1], policies)
    rows += rows_for(f"{gname}:", test.name, m, policies)
    routed_res = None
    if routed:
        routed_res = cascade.route(test.images)
        rows.append(summary_row(f"{gname}:cascade_routed", test.name, test.labels, routed_res.decisions,
                                routed_res.final_scores, routed_res.latency_ms, routed_res.call_rate))
        rows[-1]["note"] = (rows[-1]["note"] + "; " if rows[-1]["note"] else "") + \
            "end-to-end routing run (gate, then heatmap model only where routed)"
    dm = None
    if domain is not None:
        dm = measure(cascade.gate, cascade.detector, domain, progress)
        for r in rows_for(f"{gname}:", f"domain:{domain.name}", dm,
                          {k: policies[k] for k in ("heatmap_only", "cascade")}):
            r["note"] = "domain set (defects only, other product): " + r["note"]
            rows.append(r)
    if out is not None:
        out = Path(out)
        write_summary(out / "summary.csv", rows)
        write_measured(out / f"measured_{test.name}.csv", test, m)
        if routed_res is not None:
            rr = routed_res.rows()
            for r, p, y in zip(rr, test.paths, test.labels):
                r.update(path=p, label=int(y))
            write_csv(out / f"routes_{test.name}.csv", rr, ("path", "label", "gate_score", "route", "decision",
                                                           "final_score", "heat_score", "gate_ms", "heatmap_ms"))
        pol = policies["cascade"]
        lines = {"T_low": pol.t_low, "T_high": pol.t_high} if pol.mode == "cascade" else \
            ({"T_gate": pol.gate_threshold} if pol.mode == "gate_only" else {})
        hist = {}
        if val is not None:
            hist["val_mix"] = (val[0], val[1].gate_scores)
        hist[test.name] = (test.defects, m.gate_scores)
        if domain is not None:
            hist[f"domain_{domain.name}"] = (domain.defects, dm.gate_scores)
        for split, (defects, scores) in hist.items():
            by = {}
            for d in sorted(set(defects), key=lambda x: (x != "good", x)):
                by[d] = scores[np.array(defects) == d]
            title = f"{gname} gate scores on {split}"
            histogram_png(out / f"hist_{split}_by_class.png", by, title, lines)
            histogram_html(out / f"hist_{split}_by_class.html", by, title, lines)
            y = np.array([d != "good" for d in defects])
            if y.any() and (~y).any():
                histogram_png(out / f"hist_{split}.png", {"good": scores[~y], "defect": scores[y]}, title, lines)
        atomic_write_json(out / "evaluate.json", {"rows": rows, "policy": pol.to_dict(),
                                                  "routed_counts": routed_res.counts() if routed_res else None})
    return {"rows": rows, "measured": m, "routed": routed_res}

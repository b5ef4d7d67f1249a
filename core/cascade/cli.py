"""`python -m core cascade fit|sweep|evaluate DATASET --gate ... --detector ... --out DIR`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _opts(args):
    from core.cascade.pipeline import CascadeOptions

    return CascadeOptions(gate=args.gate, margin=args.target_recall_margin, precision_floor=args.precision_floor,
                          heat_target_recall=args.heatmap_target_recall, limit=args.limit,
                          domain_limit=args.domain_limit, seed=args.seed,
                          allow_gate_only=not args.no_gate_only)


def _models(args, index, out: Path, progress, data):
    """Load the gate and detector from ``out`` when they match the options, else fit them."""
    from core.cascade.gates import load_gate
    from core.cascade.pipeline import fit_models
    from core.cli.options import detector_from_args, feature_cache
    from core.detectors import load_detector

    if args.action != "fit" and (out / "gate").is_dir() and (out / "detector").is_dir():
        gate, det = load_gate(out / "gate"), load_detector(out / "detector")
        if gate.kind == args.gate and det.kind == args.detector:
            print(f"using the gate and detector in {out}", file=sys.stderr)
            return gate, det
    gate, det, report = fit_models(index, detector_from_args(args), _opts(args), out, feature_cache(args), progress,
                                   data)
    print(json.dumps({"gate": {k: v for k, v in report["gate"].items() if k != "val_loss_history"},
                      "detector_seconds": report.get("detector", {}).get("total_seconds")}, indent=2, default=str))
    return gate, det


def cmd_cascade(args: argparse.Namespace) -> int:
    from core.cascade.pipeline import check_mixed, load_split, read_measured, run_evaluate, run_sweep
    from core.cascade.routing import Cascade, Policy
    from core.config import set_threads
    from core.data import index_dataset
    from core.data.locate import resolve_dataset
    from core.progress import TqdmProgress

    set_threads()
    progress = TqdmProgress()
    index = index_dataset(resolve_dataset(args.dataset))
    check_mixed(index)
    out = Path(args.out)
    opts = _opts(args)
    data = {"val_mix": load_split(index, "val_mix", opts.limit)}
    gate, det = _models(args, index, out, progress, data)
    if args.action == "fit":
        print(f"wrote {out / 'gate'}, {out / 'detector'} and {out / 'fit.json'}")
        return 0
    sweep_file = out / "cascade.json"
    sweep_result = None
    if args.action == "evaluate" and sweep_file.is_file() and (out / "measured_val_mix.csv").is_file():
        saved = json.loads(sweep_file.read_text())
        if saved.get("gate") == gate.kind and saved.get("detector") == det.kind:
            from core.cascade.sweep import sweep

            defects, vm = read_measured(out / "measured_val_mix.csv")
            pol = Policy(**saved["policy"])
            sweep_result = {**saved, "rows": sweep(vm, pol.heat_threshold, pol.heat_scale)}
            val = (defects, vm)
    if sweep_result is None:
        sweep_result = run_sweep(gate, det, data["val_mix"], opts, out, progress)
        val = (data["val_mix"].defects, sweep_result["measured"])
        c = sweep_result["choice"]
        print(json.dumps({"chosen": c["chosen"], "heatmap_only": c["heatmap_only"], "note": c["note"],
                          "gate_health": sweep_result["gate_health"]}, indent=2, default=str))
        print(f"wrote {out / 'sweep.csv'} ({sweep_result['n_pairs']} points), {out / 'pareto.csv'}, {sweep_file}")
    if args.action == "sweep":
        return 0
    domain = None
    if args.domain:
        dindex = index_dataset(resolve_dataset(args.domain))
        split = "test_mix" if dindex.splits.get("test_mix") else "test"
        domain = load_split(dindex, split, args.domain_limit)
        domain.name = Path(dindex.root).name
    test = load_split(index, "test_mix", opts.limit)
    res = run_evaluate(Cascade(gate, det, Policy(**sweep_result["policy"])), sweep_result, test, opts, out, val,
                       domain, progress)
    cols = ("experiment", "split", "recall", "precision", "f1", "latency_ms", "heatmap_call_rate", "flag_rate")
    for r in res["rows"]:
        print("  ".join(f"{c}={r[c]:.4g}" if isinstance(r.get(c), float) else f"{c}={r.get(c)}" for c in cols))
    print(f"wrote {out / 'summary.csv'}, histograms and evaluate.json")
    return 0


def add_cascade_parser(sub) -> None:
    """Register `cascade` on the CLI's sub-parsers (called from core.cli.build_parser)."""
    from core.cli.options import add_detector_options

    p = sub.add_parser("cascade", help="gate + heatmap cascade: fit, sweep thresholds on val_mix, evaluate on test_mix")
    p.add_argument("action", choices=["fit", "sweep", "evaluate"])
    add_detector_options(p)
    p.add_argument("--gate", choices=["supervised", "distance", "stats", "autoencoder"], default="supervised")
    p.add_argument("--out", required=True, help="folder for models, sweep.csv, pareto.csv, summary.csv, histograms")
    p.add_argument("--target-recall-margin", type=float, default=0.02,
                   help="allowed recall loss vs heatmap-only on val_mix (0.02 = 2 points)")
    p.add_argument("--precision-floor", type=float, default=None,
                   help="minimum val_mix precision (default: heatmap-only precision - 0.05)")
    p.add_argument("--heatmap-target-recall", type=float, default=None,
                   help="heatmap threshold: reach this val_mix recall (default: F1-max on val_mix)")
    p.add_argument("--no-gate-only", action="store_true",
                   help="never choose gate_only: keep the heatmap model in the loop for an uncertain band")
    p.add_argument("--domain", default=None, help="a domain set (defects only) reported as an extra flag-rate row")
    p.add_argument("--domain-limit", type=int, default=120, help="at most this many domain images")
    p.add_argument("--limit", type=int, default=None, help="at most this many images per split (quick runs)")
    p.set_defaults(func=cmd_cascade)

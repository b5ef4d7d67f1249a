"""`python -m core experiment NAME DATASET --out DIR [--quick]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from core.errors import WorkbenchError
from core.experiments.common import STUDIES


def parse_overrides(study: str, pairs: list[str]) -> dict[str, Any]:
    """``["image_size=336", "backbones=a,b"]`` -> typed overrides of the study's settings (by their defaults' types)."""
    from core.experiments.service import studies

    table = studies()
    if study not in table:
        raise WorkbenchError(f"Unknown study {study!r}.", f"Choose one of: {', '.join(STUDIES)}.")
    defaults = table[study].settings()
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in defaults.__dataclass_fields__:
            raise WorkbenchError(f"--set {pair!r}: the {study} study has no setting {key!r}.",
                                 f"Use KEY=VALUE with KEY one of: {', '.join(defaults.__dataclass_fields__)}.")
        default = getattr(defaults, key)
        try:
            if isinstance(default, tuple):
                items = [x.strip() for x in raw.split(",") if x.strip()]
                kind = type(default[0]) if default else str
                out[key] = tuple(kind(x) for x in items)
            elif isinstance(default, bool):
                out[key] = raw.strip().lower() in ("1", "true", "yes", "on")
            elif default is None:
                out[key] = None if raw.strip().lower() in ("", "none", "all") else int(raw)
            else:
                out[key] = type(default)(raw)
        except ValueError as exc:
            raise WorkbenchError(f"--set {pair!r}: {raw!r} is not a valid {key} ({exc}).",
                                 f"Give a value like the default, {default!r}.") from exc
    return out


def cmd_experiment(args: argparse.Namespace) -> int:
    from core.experiments.service import default_out, run_study
    from core.progress import TqdmProgress

    overrides = parse_overrides(args.name, args.set)
    if args.timm:
        if args.name != "backbones":
            print("note: --timm only applies to the backbones study; ignored", file=sys.stderr)
        else:
            overrides["timm_names"] = tuple(n for n in args.timm.split(",") if n)
    if args.foreign:
        if args.name != "cross-domain":
            print("note: --foreign only applies to the cross-domain study; ignored", file=sys.stderr)
        else:
            overrides["foreign"] = tuple(n for n in args.foreign.split(",") if n)
    out = Path(args.out) if args.out else default_out(args.name, args.dataset, args.quick)
    cache = None if args.no_cache else "default"
    command = " ".join(["python -m core experiment", args.name, str(args.dataset), "--out", str(out)]
                       + ["--quick"] * args.quick + [f"--timm {args.timm}"] * bool(args.timm)
                       + [f"--foreign {args.foreign}"] * bool(args.foreign) + [f"--set {kv}" for kv in args.set]
                       + ["--no-cache"] * args.no_cache)
    _, folder = run_study(args.name, args.dataset, out, quick=args.quick, cache=cache, progress=TqdmProgress(),
                          overrides=overrides, command=command)
    print((folder / "results.md").read_text())
    print(f"wrote {folder}/results.csv, results.json, results.md, figure.json, figures.html")
    return 0


def add_experiment_parser(sub) -> None:
    """Register the ``experiment`` verb on the main CLI's subparsers."""
    p = sub.add_parser("experiment", help="run a study: " + ", ".join(STUDIES))
    p.add_argument("name", choices=STUDIES)
    p.add_argument("dataset", help="dataset folder or name under the data roots (fit on its train/good)")
    p.add_argument("--out", default=None, help="run folder (default: runs/experiments/<study>/<dataset>-<time>)")
    p.add_argument("--quick", action="store_true", help="a small slice (for tests); never quote its numbers")
    p.add_argument("--timm", default="", help="backbones: extra timm names, run only when the hub is reachable")
    p.add_argument("--foreign", default="", help="cross-domain: comma-separated datasets (default neu_seg,neu_det)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one of the study's settings, e.g. --set image_size=336 --set backbones=a,b "
                        "(repeatable; tuples take comma-separated values)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    p.set_defaults(func=cmd_experiment)

"""`python -m core gain train|evaluate|compare ...`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.gain.config import GainConfig


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _config(args: argparse.Namespace, strategy: str) -> "GainConfig":
    from core.gain.config import GainConfig

    return GainConfig(strategy=strategy, backbone=args.backbone, image_size=args.image_size, max_epochs=args.epochs,
                      patience=args.patience, batch_size=args.batch_size, seed=args.seed, limit=args.limit,
                      fusion_schedule=args.fusion_schedule, normals_per_defect=args.normals_per_defect,
                      cam_guide_shape=args.cam_guide_shape, lambda_cam_guide=args.lambda_cam_guide,
                      lambda_am=args.lambda_guide, lambda_loc=args.lambda_loc, loc_warmup=args.loc_warmup)


def _index(dataset: str):
    from core.data import index_dataset
    from core.data.locate import resolve_dataset

    return index_dataset(resolve_dataset(dataset))


def cmd_gain(args: argparse.Namespace) -> int:
    from core.config import set_threads

    set_threads()
    if args.action == "train":
        from core.gain.train import prepare, train
        from core.jobs import ProgressFile
        from core.progress import no_progress

        t0 = time.perf_counter()
        progress = ProgressFile(args.progress_file) if args.progress_file else no_progress
        cfg = _config(args, args.strategy)
        progress("preparing images (features of the frozen stem)", 0, 1)
        data = prepare(_index(args.dataset), cfg, _log)
        res = train(cfg, data, True, _log, progress)
        progress("saving the model", 1, 1)
        res.model.meta["wall_seconds"] = time.perf_counter() - t0
        res.model.save(args.out)
        summary = {k: v for k, v in res.report.items() if k != "history"}
        print(json.dumps({"model": str(args.out), "wall_seconds": round(time.perf_counter() - t0, 1), **summary},
                         indent=2, default=str))
        return 0
    if args.action == "evaluate":
        from core.gain.evaluate import evaluate_model, write_evaluation
        from core.gain.inference import load_gain_model

        t0 = time.perf_counter()
        model = load_gain_model(args.model)
        ev = evaluate_model(model, _index(args.dataset), args.split, args.limit)
        ev.metrics["wall_seconds"] = time.perf_counter() - t0
        if args.out:
            write_evaluation(args.out, ev)
            _log(f"wrote {Path(args.out) / 'metrics.json'} and per_image.csv")
        print(json.dumps(ev.metrics, indent=2, default=str))
        return 0
    from core.gain.config import STRATEGY_NAMES, strategy
    from core.gain.evaluate import run_compare

    names = [strategy(s).name for s in args.strategies.split(",")] if args.strategies else list(STRATEGY_NAMES)
    t0 = time.perf_counter()
    rows = run_compare(_index(args.dataset), args.out, _config(args, "S1"), names, True, _log)
    from core.gain.evaluate import markdown_table

    print(markdown_table(rows))
    print(f"total wall time {time.perf_counter() - t0:.0f} s; wrote {Path(args.out) / 'table.csv'}, table.md, "
          "figure.html, figure.json, compare.json and one folder per strategy")
    return 0


def add_gain_parser(sub) -> None:
    """Register `gain` on the CLI's sub-parsers (called from core.cli.build_parser)."""
    p = sub.add_parser("gain", help="GAIN-MTL: supervised defect classifier with guided attention (S1-S6)")
    p.add_argument("action", choices=["train", "evaluate", "compare"])
    p.add_argument("first", metavar="MODEL_OR_DATASET",
                   help="train/compare: DATASET; evaluate: MODEL folder (then DATASET)")
    p.add_argument("second", nargs="?", default=None, metavar="DATASET", help="evaluate: the dataset")
    p.add_argument("--strategy", default="S6", help="train: S1..S6")
    p.add_argument("--strategies", default="", help="compare: comma-separated subset (default all six)")
    p.add_argument("--out", default=None, help="train: model folder; compare: results folder; evaluate: optional")
    p.add_argument("--split", default="test_mix", help="evaluate: split to report on")
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=192)
    p.add_argument("--epochs", type=int, default=18, help="maximum epochs (early stopping on val_mix)")
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--normals-per-defect", type=float, default=1.5)
    p.add_argument("--fusion-schedule", choices=["linear", "cosine", "step"], default="linear")
    p.add_argument("--cam-guide-shape", action=argparse.BooleanOptionalAction, default=True,
                   help="L_cam_guide also on the min-max normalised CAM, what the attention metrics judge "
                        "(default: on)")
    p.add_argument("--limit", type=int, default=None, help="at most this many images per class and split")
    from core.gain.config import GainConfig  # torch-free: the defaults are the report's

    d = GainConfig()
    p.add_argument("--lambda-cam-guide", type=float, default=d.lambda_cam_guide, help="weight of L_cam_guide (S2+)")
    p.add_argument("--lambda-guide", type=float, default=d.lambda_am,
                   help="weight of the attention-mining loss L_am (S3+; the report's lambda_guide)")
    p.add_argument("--lambda-loc", type=float, default=d.lambda_loc, help="weight of L_loc (S4+)")
    p.add_argument("--loc-warmup", type=float, default=d.loc_warmup,
                   help="share of training over which lambda_loc ramps up (S4+)")
    p.add_argument("--progress-file", default=None, help=argparse.SUPPRESS)  # written for the app's job view
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_dispatch)


def _dispatch(args: argparse.Namespace) -> int:
    from core.errors import WorkbenchError

    if args.action == "evaluate":
        if args.second is None:
            raise WorkbenchError("`gain evaluate` needs a model folder and a dataset.",
                                 "Run: python -m core gain evaluate MODEL_DIR DATASET")
        args.model, args.dataset = args.first, args.second
    else:
        if args.second is not None:
            raise WorkbenchError(f"`gain {args.action}` takes one dataset, got {args.first!r} and {args.second!r}.",
                                 f"Run: python -m core gain {args.action} DATASET --out DIR")
        if not args.out:
            raise WorkbenchError(f"`gain {args.action}` needs --out.", f"Add --out DIR (where to write the "
                                 f"{'model' if args.action == 'train' else 'models and the table'}).")
        args.dataset = args.first
    return cmd_gain(args)

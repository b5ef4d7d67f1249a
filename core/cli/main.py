"""The CLI's verbs: one per thing a user does in the app. Errors a user can fix print one clear line (exit 2)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from core.cli.options import add_detector_options, detector_from_args, feature_cache
from core.errors import WorkbenchError


def cmd_backbones(args: argparse.Namespace) -> int:
    from core.backbones.verify import main_backbones

    return main_backbones(verify=args.verify)


def cmd_cache(args: argparse.Namespace) -> int:
    from core.features import FeatureCache

    cache = FeatureCache()
    if args.action == "clear":
        print(f"removed {cache.clear()} entries from {cache.root}")
    else:
        info = cache.info()
        print(json.dumps(info, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from core.data import ensure_demo, make_demo_dataset

    path = make_demo_dataset(Path(args.out), seed=args.seed) if args.out else ensure_demo()
    print(path)
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from core.data import index_dataset
    from core.data.locate import resolve_dataset

    index = index_dataset(resolve_dataset(args.dataset))
    print(index.summary())
    for name in index.splits:
        print(f"  {name:>12}: {len(index.splits[name]):5d}  {index.class_counts(name) if index.splits[name] else ''}")
    for w in index.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from core.config import set_threads
    from core.data import index_dataset
    from core.data.locate import resolve_dataset
    from core.evaluation import check_can_fit
    from core.progress import TqdmProgress

    set_threads()
    index = index_dataset(resolve_dataset(args.dataset))
    check_can_fit(index)
    det = detector_from_args(args)
    paths = [str(index.abs_path(r)) for r in index.split("train_normal")]
    source = None
    if args.ray is not None:  # features extracted on Ray actors; the coreset / Gaussians here, from them
        from core.scale.ray_features import RayFeatureSource

        source = RayFeatureSource(det.backbone, det.layers, det.image_size, address=args.ray or None,
                                  actors=args.actors, use_cache=not args.no_cache)
        det.use_feature_source(source)
    try:
        report = det.fit(paths, cache=feature_cache(args), progress=TqdmProgress(),
                         fingerprint=index.fingerprint("train_normal"))
    finally:
        if source is not None:
            source.close()
    for path, msg in report.skipped.items():
        print(f"skipped: {msg}", file=sys.stderr)
    det.save(args.out, extra={"dataset": str(index.root), "fit_report": report.to_dict()})
    print(json.dumps({"model": str(args.out), **report.to_dict()}, indent=2))
    print(_scale_line(report.scale))
    return 0


def _scale_line(scale: dict | None) -> str:
    """The chosen scale and why, for the fit and evaluate output."""
    from core.detectors.scale import ScaleChoice

    return ScaleChoice.from_dict(scale).describe() if scale else "scale: not recorded"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from core.config import set_threads
    from core.data.locate import resolve_dataset
    from core.evaluation import run_evaluate
    from core.progress import TqdmProgress

    set_threads()
    det = detector_from_args(args)
    m = run_evaluate(resolve_dataset(args.dataset), det, args.out, split=args.split, cache=feature_cache(args),
                     progress=TqdmProgress())
    keys = ["image_auroc", "pixel_auroc", "pixel_ap", "aupro", "image_ap", "f1_max", "fit_seconds", "ms_per_image",
            "memory_bank_size", "image_score_bank_size"]
    print(json.dumps({k: m.get(k) for k in keys}, indent=2))
    print(_scale_line(m.get("scale")))
    if m.get("warning"):
        print(f"WARNING: {m['warning']}", file=sys.stderr)
    for msg in m.get("mask_problems", []):
        print(f"WARNING: {msg}", file=sys.stderr)
    print(f"wrote {Path(args.out) / 'metrics.json'}, scores.csv, overlays/ and model/")
    return 0


def _expand(paths: list[str]) -> list[Path]:
    from core.data.images import IMAGE_EXTENSIONS

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS and q.is_file()))
        else:
            out.append(p)
    return out


def _scorer(args: argparse.Namespace):
    """The model to score with: an exported bundle (never loads torch) or a model folder."""
    from core.bundle import is_bundle

    if is_bundle(args.model):
        from core.bundle.runtime import load_bundle

        return load_bundle(args.model, runtime=args.runtime)
    from core.config import set_threads
    from core.detectors import load_detector

    set_threads()
    return load_detector(args.model)


def _score_to_parquet(args: argparse.Namespace) -> int:
    from core.progress import TqdmProgress
    from core.scale.batch_scoring import score_to_parquet, summary_json

    if args.ray is not None:
        from core.scale.ray_scoring import score_on_ray

        s = score_on_ray(args.model, args.paths, args.out, address=args.ray or None, actors=args.actors,
                         threads_per_actor=args.threads_per_actor, batch_size=args.batch_size, progress=TqdmProgress())
    else:
        s = score_to_parquet(args.model, args.paths, args.out, batch_size=args.batch_size, progress=TqdmProgress())
    print(summary_json(s))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    if args.out:
        return _score_to_parquet(args)
    if args.ray is not None:
        raise WorkbenchError("--ray writes Parquet partitions and needs --out.", "Add --out results.parquet.")
    det = _scorer(args)
    files = _expand(args.paths)
    if not files:
        raise WorkbenchError(f"No images found in {', '.join(args.paths)}.", "Give image files or folders of them.")
    thr = det.threshold
    from core.bundle import is_bundle

    if is_bundle(args.model):
        if args.thresholds:
            raise WorkbenchError("--thresholds applies to model folders; a bundle carries the thresholds it was "
                                 "exported with.", "Save the thresholds into the model in the app, then export again.")
    else:  # a model folder: the thresholds file and the cascade (the workbench layer loads torch; bundles never do)
        from core.workbench import cascade_for_scoring, model_info, read_thresholds

        payload = (read_thresholds(args.thresholds, model_info(args.model).stamp.split(":")[0])
                   if args.thresholds else {})
        thr = float(payload.get("threshold", thr))
        cascade = None if args.no_cascade else cascade_for_scoring(args.model)
        if cascade is not None:
            if payload.get("t_low") is not None:
                cascade.t_low, cascade.t_high = float(payload["t_low"]), float(payload["t_high"])
            return _score_routed(args, det, files, thr, cascade)
    from core.detectors.postprocess import score_to_threshold

    res = det.score_paths([str(f) for f in files], cache=None)
    ratio = score_to_threshold(res.scores, thr)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "score", "decision", "score_to_threshold", "error"])
    by_index = {i: k for k, i in enumerate(res.ok)}
    for i, f in enumerate(files):
        if i in by_index:
            k = by_index[i]
            s = float(res.scores[k])
            w.writerow([str(f), f"{s:.6g}", "anomalous" if s >= thr else "normal", f"{ratio[k]:.4f}", ""])
        else:
            w.writerow([str(f), "", "error", "", res.errors[i]])
            print(f"error: {res.errors[i]}", file=sys.stderr)
    if args.heatmaps:
        _write_heatmaps(Path(args.heatmaps), det, files, res)
    _emit(args, buf.getvalue(), f"{len(res.ok)} scored, {len(res.errors)} unreadable")
    return 0 if res.ok else 2


def _score_routed(args: argparse.Namespace, det, files: list[Path], thr: float, cascade) -> int:
    """``score`` through the model's cascade: the same per-image path as the app's Score images page."""
    from core.workbench import score_uploads, scoring_summary

    buf = io.StringIO()
    w = csv.writer(buf)
    cols = ["path", "score", "decision", "score_to_threshold", "error", "route", "gate_score", "gate_ms", "heatmap_ms"]
    w.writerow(cols)
    results = []
    for start in range(0, len(files), 64):  # bounded memory: 64 files' bytes at a time
        chunk = files[start:start + 64]
        scored = score_uploads(det, [(str(f), f.read_bytes()) for f in chunk], threshold=thr, cascade=cascade,
                               max_bytes=2**31)  # files on disk: the pixel limit of decoding still applies
        for f, r in zip(chunk, scored):
            row = {**r.row(), "path": str(f)}
            w.writerow(["" if row.get(c) is None else row[c] for c in cols])
            if not r.ok:
                print(f"error: {r.error}", file=sys.stderr)
            r.image = None if r.raw_map is None or not args.heatmaps else r.image
            results.append(r)
    s = scoring_summary(results)
    if args.heatmaps:
        from core.visualize import write_png
        from core.workbench import upload_overlay

        folder = Path(args.heatmaps)
        folder.mkdir(parents=True, exist_ok=True)
        for r in results:
            if r.raw_map is not None and r.image is not None:
                write_png(folder / f"{Path(r.name).stem}_overlay.png", upload_overlay(r, det.normalisation))
    _emit(args, buf.getvalue(), f"{s['scored']} scored ({s['routes']['gate-normal']} gate-normal, "
                                f"{s['routes']['heatmap']} heatmap, {s['routes']['gate-defect']} gate-defect; "
                                f"heatmap call rate {s['heatmap_call_rate']:.0%}), {s['errors']} unreadable")
    return 0 if s["scored"] else 2


def _emit(args: argparse.Namespace, text: str, summary: str) -> None:
    if args.csv:
        from core.storage import atomic_write_text

        atomic_write_text(args.csv, text)
        print(f"wrote {args.csv}: {summary}")
    else:
        sys.stdout.write(text)
        print(summary, file=sys.stderr)


def cmd_export(args: argparse.Namespace) -> int:
    from core.bundle.export import export_bundle
    from core.bundle.manifest import read_manifest

    out = export_bundle(args.model, args.out, args.format or ["onnx"])
    man = read_manifest(out)
    print(json.dumps({"bundle": str(out), "kind": man["kind"], "formats": [f for f in ("onnx", "openvino")
                      if f in man["graph"]], "image_threshold": man["thresholds"]["image"],
                      "files": man["files"]}, indent=2))
    if man.get("cascade"):
        print(f"note: {man['cascade']['note']}", file=sys.stderr)
    return 0


def _write_heatmaps(folder: Path, det, files: list[Path], res) -> None:
    from core.data import read_image
    from core.visualize import overlay, side_by_side, write_png

    for k, i in enumerate(res.ok):
        img = read_image(files[i])
        amap = det.normalisation.normalise_map(res.maps[k])
        write_png(folder / f"{files[i].stem}_heatmap.png", side_by_side(img, overlay(img, amap, predicted=amap >= 1.0)))


def _add_score_parser(sub) -> None:
    p = sub.add_parser("score", help="score images or folders with a saved model or an exported bundle")
    p.add_argument("model", help="model folder, or bundle folder (scored without torch)")
    p.add_argument("paths", nargs="+")
    p.add_argument("--csv", default=None)
    p.add_argument("--heatmaps", default=None, help="folder for heatmap overlays")
    p.add_argument("--thresholds", default=None,
                   help="model folders: a thresholds JSON downloaded from the Score images page (decision threshold, "
                        "T_low/T_high)")
    p.add_argument("--no-cascade", action="store_true",
                   help="model folders: score every image with the heatmap model even when the model has a cascade")
    p.add_argument("--runtime", choices=["onnxruntime", "openvino"], default=None,
                   help="bundles only: the runtime (default: OpenVINO when the bundle has it and it is installed)")
    p.add_argument("--out", default=None,
                   help="Parquet folder of results (resumable: a rerun skips images already written); paths may "
                        "then also be list files (.txt) or globs")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="with --out: score on Ray (no ADDRESS: a local cluster on this machine)")
    p.add_argument("--actors", type=int, default=2, help="--ray: scoring actors (the model is loaded once in each)")
    p.add_argument("--threads-per-actor", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64, help="--out: images per batch and per Parquet partition")
    p.set_defaults(func=cmd_score)


def _bundle_score_parser() -> argparse.ArgumentParser:
    """The parser for `score BUNDLE ...` alone: the full parser imports the verbs' modules, some of which load torch."""
    ap = argparse.ArgumentParser(prog="python -m core", description="Visual anomaly-detection workbench engine.")
    _add_score_parser(ap.add_subparsers(dest="verb", required=True))
    return ap


def _is_bundle_score(argv: list[str]) -> bool:
    from core.bundle import is_bundle

    return len(argv) >= 2 and argv[0] == "score" and not argv[1].startswith("-") and is_bundle(argv[1])


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the README's CLI section)."""
    ap = argparse.ArgumentParser(prog="python -m core", description="Visual anomaly-detection workbench engine.")
    sub = ap.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("backbones", help="list offline backbones; --verify runs each on a cat photo")
    p.add_argument("--verify", action="store_true")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("cache", help="feature cache: info or clear")
    p.add_argument("action", choices=["info", "clear"])
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("demo", help="build the built-in demo dataset (deterministic)")
    p.add_argument("--out", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("index", help="show a dataset's layout, splits and class counts")
    p.add_argument("dataset")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("fit", help="fit a heatmap detector on a dataset's normal training images")
    add_detector_options(p)
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="extract the training features on Ray (no ADDRESS: a local cluster on this machine)")
    p.add_argument("--actors", type=int, default=2, help="--ray: feature-extraction actors")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("evaluate", help="fit on train/good, measure on a split, write metrics.json + scores.csv")
    add_detector_options(p)
    p.add_argument("--split", default="test", help="'test' (MVTec protocol: all of test/) or test_mix / val_mix")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_evaluate)

    _add_score_parser(sub)

    p = sub.add_parser("export", help="export a model folder to a bundle that scores without torch")
    p.add_argument("model", help="model folder (PatchCore or PaDiM) written by fit or the app")
    p.add_argument("--format", action="append", choices=["onnx", "openvino"],
                   help="feature graph format; repeat for both (default: onnx)")
    p.add_argument("--out", required=True, help="bundle folder to write (new, or an older bundle to replace)")
    p.set_defaults(func=cmd_export)

    from core.cascade.cli import add_cascade_parser

    add_cascade_parser(sub)
    from core.gain.cli import add_gain_parser
    add_gain_parser(sub)
    from core.experiments.cli import add_experiment_parser
    add_experiment_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = (_bundle_score_parser() if _is_bundle_score(argv) else build_parser()).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

"""Fuzz the engine's entry points with >= 1,000 bad inputs of many kinds; report tried / accepted / rejected
with a message / crashes by entry point and kind. Writes benchmarks/results/fuzz_inputs.json.

    python benchmarks/fuzz_inputs.py [--per-kind 30]

Mostly upload scoring (core.workbench.score_uploads: cheap for bad inputs), plus files through score_paths,
read_image/read_mask, dataset indexing and fitting, zip extraction, model loading and the CLI.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

from common import table, write_result  # noqa: E402  (puts the repo on sys.path)

from tests import fuzz_cases as F  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-kind", type=int, default=30, help="upload inputs per image kind")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="fuzz-"))
    report = F.FuzzReport()
    stages: dict[str, float] = {}
    try:
        t = time.perf_counter()
        det = F.tiny_model(work / "model")
        stages["fit tiny model"] = time.perf_counter() - t

        t = time.perf_counter()
        F.run_uploads(report, det, F.image_cases(args.per_kind, seed=args.seed))
        stages["upload"] = time.perf_counter() - t

        t = time.perf_counter()
        files = F.image_cases(4, seed=args.seed + 1)
        F.run_score_paths(report, det, work / "paths", files)
        F.run_read_image(report, work / "read", files)
        stages["score_paths + readers"] = time.perf_counter() - t

        t = time.perf_counter()
        ds = F.dataset_cases(work / "datasets", seed=args.seed, copies=2)
        F.run_index(report, ds)
        (work / "models").mkdir()
        F.run_fit(report, [c for c in ds if "set0" in str(c.root)], work / "models")
        stages["index + fit"] = time.perf_counter() - t

        t = time.perf_counter()
        from core.workbench import zip_uploads

        zip_uploads.MAX_UNZIPPED_BYTES = 2_000_000
        F.run_zips(report, F.zip_cases(3, seed=args.seed, unzipped_limit=2_000_000), work / "up" / "uploads")
        stages["extract_zip"] = time.perf_counter() - t

        t = time.perf_counter()
        F.run_models(report, work / "model", work / "bad_models", copies=2)
        stages["models"] = time.perf_counter() - t

        t = time.perf_counter()
        F.run_cli(report, ["score", str(work / "model"), str(work / "paths"), "--csv", str(work / "o.csv")],
                  "cli_score_folder", str(work / "paths"))
        F.run_cli(report, ["fit", str(work / "datasets" / "set0" / "empty"), "--out", str(work / "m2"),
                           "--image-size", "64"], "cli_fit_empty", str(work / "datasets" / "set0" / "empty"), "reject")
        F.run_cli(report, ["score", str(work / "bad_models" / "0_tampered_arrays"), str(work / "paths")],
                  "cli_score_tampered_model", "0_tampered_arrays", "reject")
        F.run_cli(report, ["index", str(work / "datasets" / "set0" / "symlink_loop")], "cli_index_symlink_loop",
                  "symlink_loop", "either")
        stages["cli"] = time.perf_counter() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = report.by_kind()
    print(table(["entry", "kind", "tried", "accepted", "rejected", "crash"],
                [[r["entry"], r["kind"], r["tried"], r["accepted"], r["rejected"], r["crash"]] for r in rows]))
    tot = report.totals()
    print()
    print(table(["tried", "kinds", "accepted", "rejected with message", "crashes"],
                [[tot["tried"], tot["kinds"], tot["accepted"], tot["rejected"], tot["crash"]]]))
    for o in report.crashes[:20]:
        print(f"CRASH {o.entry}/{o.kind} {o.name!r}: {o.message[:300]}", file=sys.stderr)
    write_result("fuzz_inputs", {
        "totals": tot,
        "by_kind": rows,
        "crashes": [o.__dict__ for o in report.crashes],
        "stage_seconds": stages,
        "per_kind": args.per_kind,
    }, started)
    return 1 if report.crashes else 0


if __name__ == "__main__":
    sys.exit(main())

"""The default PatchCore fit + evaluate on deeppcb_00041 (640-px boards, defects of a few pixels) and on
magnetic_tile, each in a fresh process with a fresh feature cache (what a new user's first run costs), beside
deeppcb at the old fixed 208 px as the baseline run by the same script.

    .venv/bin/python benchmarks/highres_pcb.py [--runs pcb,pcb208,pcb_bf16,tile]

Each row is ``python -m core evaluate DATASET --detector patchcore --out TMP [extra]`` with WORKBENCH_CACHE pointing
to an empty folder: image AUROC, pixel AUROC, AUPRO, fit seconds, ms per image (batches of 16 decoded images,
``core.evaluation.timing_probe``), the process's peak RSS, and the scale the model chose. Prints a table and writes
benchmarks/results/highres_pcb.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import MAGNETIC_TILE, REPO, table, write_result

DEEPPCB = REPO.parent / "shared" / "datasets" / "deeppcb_00041"
RUNS = {
    "pcb": (DEEPPCB, []),
    "pcb208": (DEEPPCB, ["--image-size", "208"]),
    "pcb_bf16": (DEEPPCB, ["--precision", "bfloat16"]),
    "tile": (MAGNETIC_TILE, []),
}
# Runs core.cli in the child and reports the child's own peak RSS (ru_maxrss, KiB on Linux).
CHILD = ("import json, resource, sys\nfrom core.cli import main\nrc = main(sys.argv[1:])\n"
         "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\nsys.exit(rc)")


def run_one(name: str, dataset: Path, extra: list[str]) -> dict:
    """One evaluate in a fresh process and cache; its metrics, peak RSS and command."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        args = ["evaluate", str(dataset), "--detector", "patchcore", "--out", str(out), *extra]
        env = {**__import__("os").environ, "WORKBENCH_CACHE": str(Path(tmp) / "cache")}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        rss_kb = int(next(line.split()[1] for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB")))
        m = json.loads((out / "metrics.json").read_text())
    rel = Path("..") / dataset.relative_to(REPO.parent)
    return {
        "run": name,
        "command": f"python -m core evaluate {rel} --detector patchcore --out runs/{name} {' '.join(extra)}".strip(),
        "image_auroc": m["image_auroc"],
        "pixel_auroc": m["pixel_auroc"],
        "aupro": m["aupro"],
        "fit_seconds": m["fit_seconds"],
        "ms_per_image": m["ms_per_image"],
        "ms_per_image_batch1": m["ms_per_image_batch1"],
        "ms_backbone": m.get("ms_backbone"),
        "ms_search": m.get("ms_search"),
        "peak_rss_gb": rss_kb / 1024**2,
        "scale": m.get("scale"),
        "memory_bank_size": m.get("memory_bank_size"),
        "image_score_bank_size": m.get("image_score_bank_size"),
        "fit_breakdown": m["fit_breakdown"]["seconds"],
        "process_wall_seconds": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="pcb,pcb208,pcb_bf16,tile", help=f"comma-separated, of {', '.join(RUNS)}")
    args = ap.parse_args()
    started = time.perf_counter()
    rows = []
    for name in args.runs.split(","):
        dataset, extra = RUNS[name]
        r = run_one(name, dataset, extra)
        rows.append(r)
        print(f"{name}: image {r['image_auroc']:.4f} pixel {r['pixel_auroc']:.4f} AUPRO {r['aupro']:.4f} "
              f"fit {r['fit_seconds']:.1f} s {r['ms_per_image']:.0f} ms/image RSS {r['peak_rss_gb']:.2f} GB",
              flush=True)
    print()
    print(table(
        ["run", "scale", "image AUROC", "pixel AUROC", "AUPRO", "fit s", "ms/image", "peak RSS GB", "bank"],
        [[r["run"], f"{r['scale']['height']}x{r['scale']['width']} {r['scale']['mode']}", r["image_auroc"],
          r["pixel_auroc"], r["aupro"], r["fit_seconds"], r["ms_per_image"], r["peak_rss_gb"],
          r["memory_bank_size"]] for r in rows],
    ))
    write_result("highres_pcb", {"rows": rows}, started)


if __name__ == "__main__":
    main()

"""Side-by-side runs over several seeds, summarised: mean, sd and range of each system's AUROCs and each ratio.

    for s in 0 1 2 3 4; do .venv/bin/python benchmarks/peer_anomalib.py --models padim --seed $s \\
        --out benchmarks/results/peer_padim_seeds/seed$s.json; done
    .venv/bin/python benchmarks/peer_seeds_summary.py benchmarks/results/peer_padim_seeds

One ``peer_anomalib.py`` run fits and times both systems with one seed (PatchCore: the coreset start; PaDiM: the
random channel draw, each system drawing its own way), so a single run compares two draws. This reads every
``*.json`` such run in a folder and writes ``summary.json`` there. Reads results only; measures nothing itself.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import table

METRICS = ("image_auroc", "pixel_auroc")
RATIOS = ("fit", "ms_per_image", "ms_per_image_batch1", "score_all")


def _stats(values: list[float]) -> dict[str, float]:
    v = np.array(values, dtype=float)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    args = ap.parse_args()
    runs = []
    for path in sorted(args.folder.glob("*.json")):
        if path.name == "summary.json":
            continue
        data = json.loads(path.read_text())
        for model, res in data["results"].items():
            runs.append({"file": path.name, "model": model, "seed": data["settings"].get("seed", 0),
                         "commit": data["versions"]["product"].get("commit"),
                         **{f"{side}_{m}": res[side][m] for side in ("product", "peer") for m in METRICS},
                         **{f"ratio_{r}": res["ratios"][r] for r in RATIOS}})
    if not runs:
        raise SystemExit(f"no peer_anomalib.py results in {args.folder}")
    summary = {}
    rows = []
    for model in sorted({r["model"] for r in runs}):
        mine = [r for r in runs if r["model"] == model]
        keys = [k for k in mine[0] if k.startswith(("product_", "peer_", "ratio_"))]
        summary[model] = {"seeds": [r["seed"] for r in mine], **{k: _stats([r[k] for r in mine]) for k in keys}}
        for k in keys:
            s = summary[model][k]
            rows.append([model, k, f"{s['mean']:.4f} ± {s['sd']:.4f}", f"{s['min']:.4f}-{s['max']:.4f}",
                         " ".join(f"{r[k]:.4f}" for r in mine)])
    print(table(["model", "quantity", "mean ± sd", "range", "per seed (" + ", ".join(
        str(r["seed"]) for r in runs) + ")"], rows))
    from core.storage import atomic_write_json

    out = args.folder / "summary.json"
    atomic_write_json(out, {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": runs, "summary": summary})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""The product against anomalib 2.7.0's tiled ensemble of PatchCore models (issue 20), side by side in one run.

    .venv/bin/python benchmarks/peer_tiled_ensemble.py        # deeppcb_00041 (141 train / 160 test), 640 x 640 in 3 x 3
                                                              # tiles of 256 px, stride 192: ~40 min on 2 cores
                                                              # -> results/peer_anomalib_tiled_deeppcb_00041.json
    .venv/bin/python benchmarks/peer_tiled_ensemble.py --n-train 10 --n-test 10   # a debug subset, ~3 min
    # the product's row taken from an earlier run of peer_anomalib.py on the same lists instead of fitted here:
    .venv/bin/python benchmarks/peer_tiled_ensemble.py \\
        --product-from benchmarks/results/peer_anomalib_deeppcb_00041_peer224_productauto.json

The peer runs in ``.venv-peer`` as ``benchmarks/peer/run_tiled_ensemble.py`` (anomalib's tiled-ensemble pipeline on
CPU: one PatchCore per tile position, coreset 1 %, k = 9, ``tf_efficientnet_lite0`` blocks.2 + blocks.4 with the
product's converted weights and mean = std = 0.5, as ``peer_anomalib.py`` gives the plain PatchCore; tiles merged and
their seams smoothed by anomalib). Tiles: ``--tile-size`` 256 is PatchCore's own default input in anomalib
(``Patchcore.configure_pre_processor``) and the tile of anomalib 1.x's ``ens_config.yaml`` (2.x's example config halves
a 256-px image into 128-px tiles, which would cut a 640-px board into 25 tiles of 128 px, each seen by lite0 at 16 x 16
patches); ``--stride`` 192 tiles the native 640 x 640 board exactly ((640 - 256) / 192 = 2: 3 x 3 tiles, 64 px overlap,
no padding or resize), and with overlap anomalib's seam smoothing (``ens_config.yaml``: on, sigma 2, width 0.1) has
seams to act on.

The product (``--product-from`` absent): PatchCore at its automatic scale (``image_size=0``: 640 x 640 native on
deeppcb_00041), fitted and timed in this process by ``peer_anomalib.run_product`` on the same lists before the peer.
Metrics for both: ``peer_anomalib.metrics`` (core.metrics: image AUROC on raw scores, exact pixel AUROC, AUPRO) on the
test images' own grid; the ensemble's image score is anomalib's (mean of the tile scores); the JSON also gives the
image AUROC of the max of its merged map. Times and peak RSS as in ``peer_anomalib.py`` (ms/image from decoded images
at batch 32 and batch 1, medians of 5 rounds; test pass from files; VmHWM per process).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "20000")  # as core/config.py sets it (see there)

import argparse  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer_anomalib as pa  # noqa: E402  (benchmarks/ is the script folder)

DATASET = pa.ROOT.parent / "shared" / "datasets" / "deeppcb_00041"
PLAIN_PEER = pa.RESULTS / "peer_anomalib_deeppcb_00041_peer224_productauto.json"  # anomalib's plain PatchCore, 224


def run_tiled_peer(weights: Path, manifest: Path, ref: Path, tmp: Path, args: argparse.Namespace, image_size: int,
                   labels: np.ndarray, masks: np.ndarray) -> dict:
    """run_tiled_ensemble.py in the peer venv; its raw scores and maps scored here like the product's."""
    out, dump, work = tmp / "tiled.json", tmp / "tiled.npz", tmp / "work"
    work.mkdir()
    cmd = [str(pa.PEER_PY), str(pa.PEER_DIR / "run_tiled_ensemble.py"), "--weights", str(weights),
           "--manifest", str(manifest), "--work", str(work), "--out", str(out), "--dump", str(dump),
           "--check-features", str(ref), "--image-size", str(image_size), "--tile-size", str(args.tile_size),
           "--stride", str(args.stride), "--batch", str(pa.PROBE_BATCH), "--probe-images", str(pa.PROBE_IMAGES),
           "--probe-single", str(pa.PROBE_SINGLE), "--probe-rounds", str(pa.PROBE_ROUNDS),
           "--threads", str(pa.THREADS), "--seed", str(args.seed)]
    env = dict(os.environ, TQDM_DISABLE="1")
    t0 = time.perf_counter()
    # Lightning writes to stdout: the peer's messages go to this process's stderr, its result to --out.
    proc = subprocess.run(cmd, stdout=sys.stderr, env=env, cwd=pa.ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"the tiled ensemble failed (exit {proc.returncode}); see its messages above")
    peer = json.loads(out.read_text())
    peer["process_wall_s"] = time.perf_counter() - t0
    if not peer["feature_check"].get("all_match"):
        raise SystemExit(f"anomalib's features differ from the product's: {peer['feature_check']}")
    d = np.load(dump)
    peer["input_hw"] = [image_size, image_size]
    peer.update(pa.metrics(labels, d["scores"], masks, d["maps"]))
    from core.metrics import image_metrics

    peer["image_auroc_map_max"] = image_metrics(labels, d["maps"].max(axis=(1, 2))).auroc
    pa.log(f"tiled ensemble: fit {peer['fit']['total_s']:.1f} s, image AUROC {peer['image_auroc']:.4f} "
           f"(map max {peer['image_auroc_map_max']:.4f}), pixel AUROC {pa._f(peer['pixel_auroc'])}, "
           f"AUPRO {pa._f(peer['aupro'])}")
    return peer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=str(DATASET))
    ap.add_argument("--n-train", type=int, help="a subset: the lowest-hash training images (as peer_anomalib.py)")
    ap.add_argument("--n-test", type=int, help="a subset of the test images, stratified per class")
    ap.add_argument("--tile-size", type=int, default=256)
    ap.add_argument("--stride", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--product-from", help="take the product's row from this peer_anomalib.py result (same lists) "
                                           "instead of fitting it here")
    ap.add_argument("--out", help="result JSON (default benchmarks/results/peer_anomalib_tiled_<dataset>"
                                  "[_train<N>_test<N>].json)")
    args = ap.parse_args()
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    wall0, load0 = time.perf_counter(), os.getloadavg()
    pa.ensure_peer_venv()

    from core import config
    from core.backbones import weights_file
    from core.data import index_dataset
    from core.evaluation import ground_truth_masks

    config.set_threads(pa.THREADS)
    weights = weights_file(pa.BACKBONE)
    index = index_dataset(args.dataset)
    train, test = pa.choose_subset(index, args.n_train, args.n_test)
    train_paths = [str(index.abs_path(r)) for r in train]
    test_paths = [str(index.abs_path(r)) for r in test]
    labels = np.array([r.label for r in test])
    metric_hw, _, metric_why = pa.metric_grid(index, index.split("test"), "native")
    if metric_hw[0] != metric_hw[1]:
        raise SystemExit(f"the test images are {metric_hw[0]} x {metric_hw[1]}; this benchmark tiles squares")
    image_size = int(metric_hw[0])
    masks, usable = ground_truth_masks(index, test, metric_hw)
    if not usable.all():
        raise SystemExit(f"{int((~usable).sum())} defect test images have no mask")
    subset = args.n_train is not None or args.n_test is not None
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(index.root).resolve().name)
    path = Path(args.out) if args.out else pa.RESULTS / (
        f"peer_anomalib_tiled_{name}" + (f"_train{len(train_paths)}_test{len(test_paths)}" if subset else "")
        + ".json")
    pa.log(f"{index.root}: {len(train_paths)} train, {len(test_paths)} test ({int(labels.sum())} defective); "
           f"metrics on {metric_hw[0]} x {metric_hw[1]} ({metric_why}); writing {path}")

    with tempfile.TemporaryDirectory(prefix="peer-tiled-") as tmp:
        tmp = Path(tmp)
        manifest = tmp / "manifest.json"
        pa.write_manifest(manifest, index, train_paths, test, test_paths)
        ref = tmp / "features.npz"
        pa.feature_reference(ref, test_paths[:2], args.tile_size)
        if args.product_from:
            src = json.loads(Path(args.product_from).read_text())
            if src["settings"]["n_train"] != len(train_paths) or src["settings"]["n_test"] != len(test_paths):
                raise SystemExit(f"{args.product_from} ran on other lists ({src['settings']['n_train']} / "
                                 f"{src['settings']['n_test']} images)")
            prod = src["results"]["patchcore"]["product"]
            commit = src["versions"]["product"].get("commit")
            product_source = f"{args.product_from} (written {src['when']}, commit {commit})"
        else:
            pa.log("=== product PatchCore (automatic scale)")
            prod = pa.run_product("patchcore", train_paths, test_paths, labels, masks, args.seed, "auto")
            product_source = "fitted and timed in this run, before the peer"
        pa.log("=== peer: anomalib tiled ensemble")
        peer = run_tiled_peer(weights, manifest, ref, tmp, args, image_size, labels, masks)

    results = {"patchcore": {"product": prod, "peer": peer, "ratios": pa.ratios(prod, peer)}}
    cpu = os.times()
    plain = None  # anomalib's plain PatchCore from peer_anomalib.py, when that ran on these very lists
    plain_src = json.loads(PLAIN_PEER.read_text()) if PLAIN_PEER.exists() else None
    if (plain_src and not subset and plain_src["settings"]["subset"] is None
            and Path(plain_src["dataset"]).resolve() == Path(index.root).resolve()):
        plain = {"source": str(PLAIN_PEER.relative_to(pa.ROOT)), **plain_src["summary"]["patchcore"]["peer"]}
    out = {
        "benchmark": "peer_anomalib_tiled",
        "command": command,
        "cwd": os.getcwd(),
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_s": time.perf_counter() - wall0,
        "dataset": str(index.root),
        "settings": {
            "backbone": pa.BACKBONE, "layers": list(pa.LAYERS), "mean_std": [0.5, 0.5],
            "coreset_ratio": 0.01, "num_neighbors": 9, "tiling": peer["settings"]["tiling"],
            "seam_smoothing": peer["settings"]["seam_smoothing"], "product_size": "auto",
            "product_source": product_source, "metric_hw": list(metric_hw), "metric_grid": metric_why,
            "weights_file": str(weights), "n_train": len(train_paths), "n_test": len(test_paths),
            "n_test_defective": int(labels.sum()),
            "subset": f"lowest sha1('{pa.SUBSET_SEED}:path') per split; test stratified per class" if subset else None,
            "seed": args.seed, "threads": pa.THREADS,
            "peer_image_score": "anomalib's merge: mean of the tile models' scores (image_auroc); "
                                "image_auroc_map_max: the max of the merged, smoothed map",
            "metrics": "both systems: core.metrics via peer_anomalib.metrics on the test images' own grid",
        },
        "summary": {**pa.summary(results)["patchcore"],
                    "peer_image_auroc_map_max": peer["image_auroc_map_max"],
                    "plain_anomalib_patchcore_224": plain},
        "versions": {"product": pa.versions_product(), "peer": peer["versions"]},
        "machine": pa.machine(),
        "load_average": {"start": list(load0), "end": list(os.getloadavg()),
                         "note": "1/5/15-min load averages of this machine (2 cores, shared) at start and end"},
        "cpu_seconds": {"this_process": cpu.user + cpu.system, "peer_process": cpu.children_user + cpu.children_system,
                        "note": "user + system CPU time; over the process's wall time, ~2 (its 2 threads) when it "
                                "had both cores, less when something else ran (product: this process's wall_s "
                                "less the peer's process_wall_s)"},
        "results": results,
    }
    path.write_text(json.dumps(out, indent=2) + "\n")
    t = peer["settings"]["tiling"]
    print(pa.table(results))
    print(f"\nTiled ensemble: {t['grid'][0]} x {t['grid'][1]} tiles of {t['tile_size']} px, stride {t['stride']}, "
          f"on {t['image_size']} x {t['image_size']}; seam smoothing {peer['settings']['seam_smoothing']}; image "
          f"AUROC of its map max {peer['image_auroc_map_max']:.4f}. Product row: {product_source}.")
    if plain:
        print(f"anomalib's plain PatchCore at 224 ({plain['source']}): image AUROC {plain['image_auroc']:.4f}, "
              f"pixel AUROC {pa._f(plain['pixel_auroc'])}, AUPRO {pa._f(plain['aupro'])}, fit {plain['fit_s']:.1f} s, "
              f"{plain['ms_per_image']:.1f} ms/image, peak RSS {pa._gb(plain['peak_rss_bytes'])}")
    print(f"\nwall {out['wall_s']:.0f} s; written {path}")


if __name__ == "__main__":
    main()

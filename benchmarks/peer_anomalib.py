"""The product against anomalib 2.7.0 (the library users would otherwise pick), side by side in one run.

    .venv/bin/python benchmarks/peer_anomalib.py --quick          # ~120 train / 120 test images, a few minutes
    .venv/bin/python benchmarks/peer_anomalib.py                  # full MVTec protocol (676 / 668; ~35 min:
                                                                  # the peer's PatchCore coreset alone ~23 min)
    .venv/bin/python benchmarks/peer_anomalib.py --models padim   # one model
    # another dataset, sizes chosen per side (the JSON name then carries the dataset and the sizes):
    .venv/bin/python benchmarks/peer_anomalib.py --dataset ../shared/datasets/deeppcb_00041 --models patchcore \
        --peer-size 224 --product-size auto       # -> results/peer_anomalib_deeppcb_00041_peer224_productauto.json

For each model (PatchCore coreset 1 %, k = 9; PaDiM 100 random channels) on ``shared/datasets/magnetic_tile``
(``--dataset``: any MVTec-layout folder) with ``tf_efficientnet_lite0`` layers blocks.2 + blocks.4, mean = std = 0.5;
the peer at ``--peer-size`` square (224 x 224 by default), the product at ``--product-size``: by default its own
default configuration (PatchCore: its automatic scale, 208 x 208 on magnetic_tile's small tiles; PaDiM: the peer's
size), ``auto`` for the product's automatic scale chosen at fit (``image_size=0``: e.g. 640 x 640 native on
deeppcb_00041's boards, core/detectors/scale.py), or an int for that square size:

* the product runs in this process: ``det.fit(train, cache=FeatureCache(<fresh folder under CACHE_DIR>))`` (so its
  fit time includes feature extraction; it holds out ~10 % of the same training list to fix its score normalisation),
  then ``det.score_paths(test, cache=None)``;
* the peer runs in its own venv ``.venv-peer`` (created here from benchmarks/peer/requirements.txt when missing)
  as ``.venv-peer/bin/python benchmarks/peer/run_peer.py``, on the same image lists, with the product's converted
  ImageNet weights loaded into anomalib's feature extractor; its feature maps are checked against the product's
  on the same input tensor before anything is timed.

Both sides: 2 torch threads, ``OMP_WAIT_POLICY=PASSIVE``, ``GOMP_SPINCOUNT=20000`` (the product's setting,
given to the peer too so that it gains the same; see core/config.py). Image AUROC (raw scores), pixel AUROC and AUPRO
are computed here for both systems with the same code (``core.metrics``) at one common resolution, ``--metric-size``
(default: the test images' own size when they all share one, e.g. 640 x 640 on deeppcb_00041, else 224 x 224 as on
magnetic_tile): each system's maps are resized bilinearly onto that grid, the masks read at it (nearest; normal
images all-zero); pixel AUROC exact over all pixels, AUPRO as core.evaluation computes it (FPR up to 0.3, 200
thresholds). Times: fit (features + coreset / Gaussian), a full pass over the test files, and ms per image from
decoded images at batch 32 and batch 1 (median of 5 rounds). Peak RSS: VmHWM, reset before each product model
(``/proc/self/clear_refs``), the peer's own process for the peer.

Writes ``benchmarks/results/peer_anomalib[_quick].json`` for magnetic_tile at the default sizes, else
``peer_anomalib_<dataset>_peer<N>_product<auto|N|default>[_metric<N>][_quick|_train<N>_test<N>].json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "20000")  # as core/config.py sets it (see there)

import argparse  # noqa: E402
import gc  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from peer.proc_stats import peak_rss_bytes  # noqa: E402  (benchmarks/ is the script folder)

PEER_DIR = ROOT / "benchmarks" / "peer"
PEER_VENV = ROOT / ".venv-peer"
PEER_PY = PEER_VENV / "bin" / "python"
PEER_REQS = PEER_DIR / "requirements.txt"
RESULTS = ROOT / "benchmarks" / "results"
DATASET = ROOT.parent / "shared" / "datasets" / "magnetic_tile"
BACKBONE = "tf_efficientnet_lite0"
LAYERS = ("blocks.2", "blocks.4")
SIZE = 224  # the peer's default input side, and the metric grid when the test images' sizes vary
THREADS = 2
# Batch 1 over 32 images x 5 rounds: 16 x 3 moved 40.8-59.0 ms for one side in one run, too wide for a ratio near 2x.
PROBE_IMAGES, PROBE_BATCH, PROBE_SINGLE, PROBE_ROUNDS = 64, 32, 32, 5
SUBSET_SEED = "peer-anomalib"


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# peer venv


def ensure_peer_venv() -> None:
    """Create .venv-peer from benchmarks/peer/requirements.txt when missing or when the requirements changed."""
    stamp = PEER_VENV / ".installed"
    want = hashlib.sha256(PEER_REQS.read_bytes()).hexdigest()
    if PEER_PY.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return
    if not PEER_PY.exists():
        base = shutil.which("python3") or sys.executable
        log(f"creating {PEER_VENV} with {base}")
        subprocess.run([base, "-m", "venv", str(PEER_VENV)], check=True)
    log(f"installing {PEER_REQS.relative_to(ROOT)} into {PEER_VENV.name} (several minutes the first time)")
    subprocess.run([str(PEER_PY), "-m", "pip", "install", "-q", "-r", str(PEER_REQS)], check=True)
    stamp.write_text(want + "\n")


# ---------------------------------------------------------------------------------------------------------------
# data


def _u(path: str) -> float:
    from core.data.splits import hash_unit

    return hash_unit(path, SUBSET_SEED)


def choose_subset(index, n_train: int | None, n_test: int | None):
    """Train records and test records; a subset is the lowest-hash images (test: stratified per class)."""
    train = list(index.split("train_normal"))
    test = list(index.split("test"))
    if n_train is not None and n_train < len(train):
        train = sorted(train, key=lambda r: (_u(r.path), r.path))[:n_train]
    if n_test is not None and n_test < len(test):
        from core.data.splits import allocate

        groups: dict[str, list] = defaultdict(list)
        for r in test:
            groups[r.defect].append(r)
        names = sorted(groups)
        counts = allocate(n_test, [len(groups[c]) / len(test) for c in names])
        picked = []
        for c, k in zip(names, counts):
            picked += sorted(groups[c], key=lambda r: (_u(r.path), r.path))[: max(1, k)]
        test = picked
    train = sorted(train, key=lambda r: r.path)
    test = sorted(test, key=lambda r: r.path)
    return train, test


def write_manifest(path: Path, index, train_paths: list[str], test, test_paths: list[str]) -> None:
    """The image lists the peer reads: train paths, test paths with label, defect class and mask path."""
    path.write_text(json.dumps({
        "train": train_paths,
        "test": [{"path": p, "label": int(r.label), "defect": r.defect,
                  "mask": str(index.mask_path(r)) if index.mask_path(r) else None}
                 for p, r in zip(test_paths, test)],
    }))


# ---------------------------------------------------------------------------------------------------------------
# measurements


def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass




def metrics(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray, maps: np.ndarray) -> dict:
    """Image AUROC on raw scores, exact pixel AUROC and AUPRO on the masks' grid, with the product's metric code,
    for either system: maps of another size are resized onto the masks' grid bilinearly (no blur)."""
    from core.metrics import aupro, image_metrics, pixel_auroc

    im = image_metrics(labels, scores)
    map_hw = [int(v) for v in maps.shape[-2:]]
    if tuple(maps.shape[-2:]) != tuple(masks.shape[-2:]):
        from core.detectors.postprocess import upsample_and_blur

        maps = upsample_and_blur(maps, tuple(masks.shape[-2:]), sigma=0)
    return {
        "image_auroc": im.auroc,
        "image_ap": im.ap,
        "f1_max": im.f1_max,
        "pixel_auroc": pixel_auroc(masks, maps, max_pixels=masks.size + 1),  # exact: every pixel
        "aupro": aupro(masks, maps),  # core.evaluation's settings (the defaults: FPR up to 0.3, 200 thresholds)
        "map_hw": map_hw,
        "metric_hw": [int(v) for v in masks.shape[-2:]],
    }


def make_detector(model: str, seed: int = 0, product_size: int | str | None = None, peer_size: int = SIZE):
    """``product_size`` None: the product's default (PatchCore: its default config, whose automatic scale gives
    208 px on magnetic_tile, benchmarks/patchcore_defaults.py; PaDiM: the peer's size); "auto": the automatic scale
    chosen at fit (image_size=0); an int: that square size."""
    from core.detectors import Padim, PadimConfig, PatchCore, PatchCoreConfig

    if model == "patchcore":
        size = {} if product_size is None else {"image_size": 0 if product_size == "auto" else int(product_size)}
        return PatchCore(PatchCoreConfig(backbone=BACKBONE, layers=LAYERS, ratio=0.01, num_neighbors=9, seed=seed,
                                         **size))
    size = peer_size if product_size is None else 0 if product_size == "auto" else int(product_size)
    return Padim(PadimConfig(backbone=BACKBONE, layers=LAYERS, image_size=size, n_channels=100, seed=seed))


def run_product(model: str, train_paths: list[str], test_paths: list[str], labels, masks, seed: int = 0,
                product_size: int | str | None = None, peer_size: int = SIZE) -> dict:
    from core.config import CACHE_DIR
    from core.data import read_image
    from core.features import FeatureCache

    gc.collect()
    reset_peak_rss()
    det = make_detector(model, seed, product_size, peer_size)
    # A fresh feature cache where the product keeps its cache (core.config.CACHE_DIR, in the project folder unless
    # WORKBENCH_CACHE says otherwise), not under /tmp: this machine's /tmp measured ~4x slower at creating files
    # (benchmarks/cache_writes.py), a cost no user of the product pays.
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="peer-bench-cache-", dir=CACHE_DIR) as tmp:
        cache = FeatureCache(root=Path(tmp))
        t0 = time.perf_counter()
        rep = det.fit(train_paths, cache=cache)
        fit_s = time.perf_counter() - t0
    # The extractor keeps the cache it was given (score_paths(cache=None) does not detach it): without this the
    # test pass below wrote every test image's features into the deleted folder, re-creating it under CACHE_DIR.
    det.extractor().cache = None
    log(f"product {model}: fit {fit_s:.1f} s ({', '.join(f'{k} {v:.1f}' for k, v in rep.seconds.items())}); "
        f"{det.scale.describe()}")
    t0 = time.perf_counter()
    res = det.score_paths(test_paths, cache=None)
    score_s = time.perf_counter() - t0
    if res.errors or len(res.ok) != len(test_paths):
        raise SystemExit(f"product could not score {len(res.errors)} test images: {list(res.errors.values())[:3]}")
    # Timing probe: decoded images in memory, batch 32 then batch 1 (same images and rounds as the peer's probe);
    # the median of PROBE_ROUNDS passes is reported (the machine is shared: single passes move a lot).
    # Decoded as the product decodes files it scores (core.features.extractor: keep_gray=True, a grey file as one
    # channel); the peer decodes as anomalib does (PIL, RGB). Until 2026-12-07 this fed the product RGB copies of
    # grey files, which its own file path never makes (three channels resized instead of one).
    imgs = [read_image(p, keep_gray=True) for p in test_paths[:PROBE_IMAGES]]
    singles = imgs[:PROBE_SINGLE]
    det.score_images(imgs[:2])  # warm-up
    batched, single = [], []
    for _ in range(PROBE_ROUNDS):
        t0 = time.perf_counter()
        for s in range(0, len(imgs), PROBE_BATCH):
            det.score_images(imgs[s : s + PROBE_BATCH])
        batched.append(1000 * (time.perf_counter() - t0) / len(imgs))
        t0 = time.perf_counter()
        for im in singles:
            det.score_images([im])
        single.append(1000 * (time.perf_counter() - t0) / len(singles))
    peak = peak_rss_bytes()
    params = det.state_params()
    out = {
        "system": "product",
        "model": model,
        "input_hw": [int(v) for v in det.input_hw],
        "requested_size": "default" if product_size is None else product_size,
        "scale": det.scale.to_dict(),
        "fit": {"total_s": fit_s, "breakdown_s": rep.seconds, "n_fit_images": rep.n_fit_images,
                "n_calibration_images": rep.n_calibration_images,
                "note": "extract (90 % of the list, written to a fresh feature cache) + model + calibrate "
                        "(scores the held-out 10 %)"},
        "score_all": {"seconds": score_s, "ms_per_image": 1000 * score_s / len(test_paths),
                      "breakdown_s": res.seconds, "note": "from files, cache=None, score_paths batch 64"},
        "timing": {"ms_per_image": float(np.median(batched)), "batch": PROBE_BATCH, "n_images": len(imgs),
                   "ms_per_image_batch1": float(np.median(single)), "n_images_batch1": len(singles),
                   "rounds": PROBE_ROUNDS, "ms_per_image_rounds": batched, "ms_per_image_batch1_rounds": single},
        "peak_rss_bytes": peak,
        "params": {k: v for k, v in params.items() if k not in ("index",)},
        **metrics(labels, res.scores, masks, res.maps),
    }
    own = det.__class__.__name__
    del det, res
    gc.collect()
    log(f"product {own}: image AUROC {out['image_auroc']:.4f}, pixel AUROC {_f(out['pixel_auroc'])}, "
        f"AUPRO {_f(out['aupro'])}")
    return out


def feature_reference(path: Path, image_paths: list[str], size: int = SIZE) -> None:
    """The product's input tensor (``size`` square: the peer's input) and feature maps for two images, for the
    peer's feature check."""
    from core.backbones import load_backbone
    from core.data import read_image

    lb = load_backbone(BACKBONE)
    x = lb.preprocess([read_image(p) for p in image_paths], size)
    maps = lb.feature_maps(x, LAYERS)
    np.savez(path, x=x.cpu().numpy(), **{k: v.cpu().numpy() for k, v in maps.items()})


def run_peer(model: str, weights: Path, manifest: Path, masks_file: Path, ref: Path, dump: Path,
             labels, masks, seed: int = 0, peer_size: int = SIZE) -> dict:
    """``masks_file``: ground truth at the peer's size, for its self-reported pixel AUROC; ``masks``: at the metric
    size, for the common metrics."""
    cmd = [str(PEER_PY), str(PEER_DIR / "run_peer.py"), "--model", model, "--size", str(peer_size),
           "--weights", str(weights),
           "--manifest", str(manifest), "--masks", str(masks_file), "--check-features", str(ref),
           "--dump", str(dump), "--batch", str(PROBE_BATCH), "--probe-images", str(PROBE_IMAGES),
           "--probe-single", str(PROBE_SINGLE), "--probe-rounds", str(PROBE_ROUNDS), "--threads", str(THREADS),
           "--seed", str(seed)]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", GOMP_SPINCOUNT=os.environ["GOMP_SPINCOUNT"], TQDM_DISABLE="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"peer {model} failed (exit {proc.returncode}); see its messages above")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = time.perf_counter() - t0
    fc = out.get("feature_check", {})
    if not fc.get("all_match"):
        raise SystemExit(f"peer {model}: anomalib's features differ from the product's: {fc}")
    d = np.load(dump)
    out["self_reported"] = {"image_auroc": out.pop("image_auroc"), "pixel_auroc": out.pop("pixel_auroc"),
                            "pixel_hw": out.pop("self_report_hw", None)}
    out["input_hw"] = [peer_size, peer_size]
    out.update(metrics(labels, d["scores"], masks, d["maps"]))
    log(f"peer {model}: fit {out['fit']['total_s']:.1f} s, image AUROC {out['image_auroc']:.4f}, "
        f"pixel AUROC {_f(out['pixel_auroc'])}, AUPRO {_f(out['aupro'])}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# report


def versions_product() -> dict:
    import sklearn
    import timm
    import torch

    v = {"torch": torch.__version__, "timm": timm.__version__, "numpy": np.__version__,
         "sklearn": sklearn.__version__, "python": platform.python_version()}
    try:
        import faiss

        v["faiss"] = faiss.__version__
    except ImportError:
        pass
    try:
        v["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                     text=True, check=True).stdout.strip()
        # Code only: results written by earlier runs of a series (benchmarks/results) do not count as changes.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks/results"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        v["worktree_modified"] = bool(dirty)
    except (OSError, subprocess.CalledProcessError):
        pass
    return v


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(), "memory_bytes": mem}


def _gb(b: int) -> str:
    return f"{b / 1e9:.2f} GB"


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _d(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _sd(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.4f}"


def ratios(prod: dict, peer: dict) -> dict:
    """Peer / product for times and memory (> 1: the product is faster or leaner); product - peer for the metrics."""
    return {
        "fit": peer["fit"]["total_s"] / prod["fit"]["total_s"],
        "ms_per_image": peer["timing"]["ms_per_image"] / prod["timing"]["ms_per_image"],
        "ms_per_image_batch1": peer["timing"]["ms_per_image_batch1"] / prod["timing"]["ms_per_image_batch1"],
        "score_all": peer["score_all"]["ms_per_image"] / prod["score_all"]["ms_per_image"],
        "peak_rss": peer["peak_rss_bytes"] / prod["peak_rss_bytes"],
        "image_auroc_delta": prod["image_auroc"] - peer["image_auroc"],
        "pixel_auroc_delta": _d(prod["pixel_auroc"], peer["pixel_auroc"]),
        "aupro_delta": _d(prod["aupro"], peer["aupro"]),
    }


def table(results: dict) -> str:
    head = ("model", "system", "input", "image AUROC", "pixel AUROC", "AUPRO", "fit s",
            f"ms/image (batch {PROBE_BATCH})", "ms/image (batch 1)", "test pass ms/image", "peak RSS")
    rows = [head, tuple("---" for _ in head)]
    metric_hw = None
    for model, r in results.items():
        for key in ("product", "peer"):
            x = r[key]
            name = "product" if key == "product" else x["system"]
            metric_hw = x["metric_hw"]
            rows.append((model, name, "x".join(str(v) for v in x["input_hw"]), f"{x['image_auroc']:.4f}",
                         _f(x["pixel_auroc"]), _f(x["aupro"]),
                         f"{x['fit']['total_s']:.1f}", f"{x['timing']['ms_per_image']:.1f}",
                         f"{x['timing']['ms_per_image_batch1']:.1f}", f"{x['score_all']['ms_per_image']:.1f}",
                         _gb(x["peak_rss_bytes"])))
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("")
    if metric_hw:
        lines.append(f"Pixel metrics of both systems on one {metric_hw[0]} x {metric_hw[1]} grid (maps bilinear, "
                     "masks nearest).")
    lines.append("Ratios (peer / product; > 1 means the product is faster or leaner):")
    for model, r in results.items():
        q = r["ratios"]
        lines.append(f"  {model}: fit {q['fit']:.2f}x, ms/image batch {PROBE_BATCH} {q['ms_per_image']:.2f}x, "
                     f"batch 1 {q['ms_per_image_batch1']:.2f}x, test pass {q['score_all']:.2f}x, "
                     f"peak RSS {q['peak_rss']:.2f}x; AUROC delta (product - peer): image "
                     f"{q['image_auroc_delta']:+.4f}, pixel {_sd(q['pixel_auroc_delta'])}, "
                     f"AUPRO {_sd(q['aupro_delta'])}")
    return "\n".join(lines)


def _size_arg(text: str) -> int | str:
    """--product-size: "auto" or a square side in pixels."""
    if text.strip().lower() == "auto":
        return "auto"
    return _side_arg(text)


def _metric_arg(text: str) -> int | str:
    """--metric-size: "native" (the test images' one common size) or a square side in pixels."""
    if text.strip().lower() == "native":
        return "native"
    return _side_arg(text)


def _side_arg(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size in pixels, got {text!r}") from None
    if v < 32:
        raise argparse.ArgumentTypeError(f"a size of at least 32 px, got {v}")
    return v


def metric_grid(index, records, requested: int | str | None) -> tuple[tuple[int, int], tuple[int, int], str]:
    """(grid used, grid by default, why): ``requested`` int -> that square; else the test images' own size when all of
    ``records`` share one (``native``), else SIZE square (the default only; ``native`` then stops)."""
    from core.data.images import image_shape

    shapes = {image_shape(index.abs_path(r)) for r in records}
    if len(shapes) == 1 and None not in shapes:
        default = next(iter(shapes))
        why = f"the test images' own size ({default[0]} x {default[1]}: all share it)"
    elif requested == "native":
        raise SystemExit(f"--metric-size native: the test images have {len(shapes)} different sizes; give a size")
    else:
        default = (SIZE, SIZE)
        why = f"{SIZE} x {SIZE} (the test images' sizes vary)"
    if isinstance(requested, int):
        return (requested, requested), default, f"{requested} x {requested}, as requested"
    return default, default, why


def default_out_name(args, dataset_root: Path, metric_hw, metric_default, n_train: int, n_test: int) -> str:
    """peer_anomalib[_quick].json for magnetic_tile at the default sizes (as before), else a name that carries the
    dataset, the sizes and the subset, so that runs of other settings do not overwrite each other."""
    if (dataset_root.resolve() == DATASET.resolve() and args.peer_size == SIZE and args.product_size is None
            and metric_hw == metric_default):
        return "peer_anomalib_quick.json" if args.quick else "peer_anomalib.json"
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset_root.resolve().name)
    product = "default" if args.product_size is None else str(args.product_size)
    parts = ["peer_anomalib", name, f"peer{args.peer_size}", f"product{product}"]
    if metric_hw != metric_default:
        h, w = metric_hw
        parts.append(f"metric{h}" if h == w else f"metric{h}x{w}")
    if args.n_train is None and args.n_test is None and args.quick:
        parts.append("quick")
    elif args.quick or args.n_train is not None or args.n_test is not None:
        parts.append(f"train{n_train}_test{n_test}")
    return "_".join(parts) + ".json"


def summary(results: dict) -> dict:
    """Per model and side: the input size used, fit seconds, ms/image (batch and batch 1), peak RSS, the metrics."""
    keys = ("input_hw", "image_auroc", "pixel_auroc", "aupro")
    return {model: {side: {**{k: r[side][k] for k in keys}, "fit_s": r[side]["fit"]["total_s"],
                           "ms_per_image": r[side]["timing"]["ms_per_image"],
                           "ms_per_image_batch1": r[side]["timing"]["ms_per_image_batch1"],
                           "peak_rss_bytes": r[side]["peak_rss_bytes"]}
                    for side in ("product", "peer")}
            for model, r in results.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description="The product against anomalib 2.7.0 on one dataset, in one run.")
    ap.add_argument("--quick", action="store_true", help="120 train / 120 test images (stratified): minutes")
    ap.add_argument("--models", default="patchcore,padim", help="comma-separated: patchcore,padim")
    ap.add_argument("--n-train", type=int, help="override the number of training images")
    ap.add_argument("--n-test", type=int, help="override the number of test images")
    ap.add_argument("--dataset", default=str(DATASET))
    ap.add_argument("--peer-size", type=_side_arg, default=SIZE,
                    help="the peer's square input side (default %(default)s); the feature check runs at it")
    ap.add_argument("--product-size", type=_size_arg, default=None,
                    help="the product's input: 'auto' (its automatic scale chosen at fit, image_size=0) or a square "
                         "side; default: the product's default configuration (PatchCore: its automatic scale, "
                         "208 px on magnetic_tile; PaDiM: the peer's size)")
    ap.add_argument("--metric-size", type=_metric_arg, default=None,
                    help="square grid of the pixel metrics for both systems (maps bilinear, masks nearest), or "
                         f"'native'; default: the test images' own size when they share one, else {SIZE}")
    ap.add_argument("--seed", type=int, default=0,
                    help="both sides: PatchCore's coreset start / PaDiM's channel draw (each side draws its own way)")
    ap.add_argument("--out", help="result JSON (default benchmarks/results/peer_anomalib[_quick].json on magnetic_tile "
                                  "at the default sizes, else a name with the dataset and the sizes)")
    args = ap.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in ("patchcore", "padim")]
    if bad or not models:
        ap.error(f"--models takes patchcore and/or padim, got {args.models!r}")
    n_train = args.n_train if args.n_train is not None else (120 if args.quick else None)
    n_test = args.n_test if args.n_test is not None else (120 if args.quick else None)
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))

    wall0 = time.perf_counter()
    ensure_peer_venv()

    from core import config
    from core.backbones import weights_file
    from core.data import index_dataset
    from core.evaluation import ground_truth_masks

    config.set_threads(THREADS)
    weights = weights_file(BACKBONE)
    index = index_dataset(args.dataset)
    train, test = choose_subset(index, n_train, n_test)
    train_paths = [str(index.abs_path(r)) for r in train]
    test_paths = [str(index.abs_path(r)) for r in test]
    labels = np.array([r.label for r in test])
    # The default grid from the whole test split, so that a subset does not change it.
    metric_hw, metric_default, metric_why = metric_grid(index, index.split("test"), args.metric_size)
    masks, usable = ground_truth_masks(index, test, metric_hw)
    if not usable.all():
        raise SystemExit(f"{int((~usable).sum())} defect test images have no mask")
    peer_hw = (args.peer_size, args.peer_size)
    peer_masks = masks if tuple(metric_hw) == peer_hw else ground_truth_masks(index, test, peer_hw)[0]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = Path(args.out) if args.out else RESULTS / default_out_name(
        args, Path(index.root), metric_hw, metric_default, len(train_paths), len(test_paths))
    log(f"{index.root}: {len(train_paths)} train, {len(test_paths)} test ({int(labels.sum())} defective); "
        f"weights {weights}")
    log(f"peer input {args.peer_size} x {args.peer_size}; product input "
        f"{'its default' if args.product_size is None else args.product_size}; pixel metrics on "
        f"{metric_hw[0]} x {metric_hw[1]} ({metric_why}); writing {path}")

    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="peer-bench-") as tmp:
        tmp = Path(tmp)
        manifest = tmp / "manifest.json"
        write_manifest(manifest, index, train_paths, test, test_paths)
        masks_file = tmp / "masks.npy"
        np.save(masks_file, peer_masks)  # the peer's self-report, at its own size
        ref = tmp / "features.npz"
        feature_reference(ref, test_paths[:2], args.peer_size)
        for model in models:
            log(f"=== {model}: product")
            prod = run_product(model, train_paths, test_paths, labels, masks, args.seed, args.product_size,
                               args.peer_size)
            log(f"=== {model}: peer (anomalib)")
            peer = run_peer(model, weights, manifest, masks_file, ref, tmp / f"{model}.npz", labels, masks, args.seed,
                            args.peer_size)
            results[model] = {"product": prod, "peer": peer, "ratios": ratios(prod, peer)}

    product_inputs = {m: "x".join(str(v) for v in r["product"]["input_hw"]) for m, r in results.items()}
    out = {
        "benchmark": "peer_anomalib",
        "command": command,
        "cwd": os.getcwd(),
        "quick": bool(args.quick),
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_s": time.perf_counter() - wall0,
        "dataset": str(index.root),
        "settings": {
            "backbone": BACKBONE, "layers": list(LAYERS), "image_size": args.peer_size, "mean_std": [0.5, 0.5],
            "peer_size": args.peer_size,
            "product_size": "default" if args.product_size is None else args.product_size,
            "product_input_hw": product_inputs,
            "metric_hw": list(metric_hw), "metric_grid": metric_why,
            "weights_file": str(weights), "n_train": len(train_paths), "n_test": len(test_paths),
            "n_test_defective": int(labels.sum()),
            "subset": None if n_train is None and n_test is None else
            f"lowest sha1('{SUBSET_SEED}:path') per split; test stratified per class",
            "seed": args.seed, "threads": THREADS, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
            "patchcore": {"coreset_ratio": 0.01, "num_neighbors": 9,
                          "product_image_size": f"{product_inputs.get('patchcore', 'not run')} "
                          f"(requested: {'the default' if args.product_size is None else args.product_size}), "
                          f"maps resized bilinearly to {metric_hw[0]} x {metric_hw[1]} for the pixel metrics"},
            "padim": {"n_channels": 100},
            "timing": f"ms/image from decoded images: {PROBE_IMAGES} test images in batches of {PROBE_BATCH}, "
                      f"then {PROBE_SINGLE} one at a time, median of {PROBE_ROUNDS} rounds; "
                      "test pass = all test files incl. decoding",
            "metrics": "both systems: core.metrics.image_metrics on raw scores; exact pixel AUROC over all pixels and "
                       "AUPRO (core.metrics.aupro, FPR up to 0.3, 200 thresholds, as core.evaluation) on one "
                       f"{metric_hw[0]} x {metric_hw[1]} grid: maps resized bilinearly, masks nearest, normal images "
                       "all-zero",
            "product_preprocess": "decode (grey files as one channel, as the product reads files), torch bilinear "
                                  "resize with antialiasing to the product's input size",
            "peer_preprocess": f"PIL decode, RGB, PIL bilinear resize to {args.peer_size} x {args.peer_size}",
        },
        "summary": summary(results),
        "versions": {"product": versions_product(),
                     "peer": next(iter(results.values()))["peer"]["versions"] if results else {}},
        "machine": machine(),
        "results": results,
    }
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(table(results))
    print(f"\nwall {out['wall_s']:.0f} s; written {path}")


if __name__ == "__main__":
    main()

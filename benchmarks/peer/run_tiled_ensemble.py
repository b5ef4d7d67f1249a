"""Run anomalib 2.7's tiled ensemble of PatchCore models on a fixed image list; write one JSON object and an .npz.

Runs inside ``.venv-peer``; started by ``benchmarks/peer_tiled_ensemble.py``, which passes the image lists, the
product's converted ImageNet weights (timm safetensors for ``tf_efficientnet_lite0``) and the product's feature maps
at the tile size. Nothing from the product is imported here.

The ensemble is anomalib's own code (``anomalib.pipelines.tiled_ensemble``), driven as its train and eval pipelines
drive it on CPU, one ``SerialRunner`` per stage: ``TrainModelJobGenerator`` (an ``EnsembleTiler`` + ``TileCollater``
datamodule and a fresh ``Patchcore`` per tile position, each fitted by a ``TiledEnsembleEngine``), then
``PredictJobGenerator(PredictData.TEST)`` on the engines just trained (as the train pipeline's own validation step
does, instead of reloading the checkpoints), ``MergeJobGenerator`` (tiles untiled into a full map, overlaps averaged;
image score = mean of the tile scores) and ``SmoothingJobGenerator`` (Gaussian blur on the seams). The data come in
through anomalib's ``Folder`` datamodule over a tree of symlinks to the manifest's images (numbered names so that the
masks pair with their images in anomalib's sorted order); ``num_workers=0``. Two things are set on each tile's model
before it is trained, both through anomalib's objects: the product's weights are loaded into its feature extractor
(the state of one ``PatchcoreModel`` loaded and checked by ``run_peer.build_model``), and its pre-processor's ImageNet
``Normalize`` becomes mean = std = 0.5 (``tf_efficientnet_lite0``'s, as the harness gives the plain PatchCore);
anomalib's ``get_model`` only imports anomalib's own classes, so a ``Patchcore`` subclass cannot be named instead.

Not run: the train pipeline's validation stage (predict on a validation split + statistics for normalisation and
thresholds) and the eval pipeline's normalisation, thresholding, visualisation and metrics jobs; the benchmark uses the
raw scores and maps (``normalization_stage: none``), as for the plain PatchCore, and computes its metrics itself.

Times: fit = the training stage (datamodule set-up, decoding, tiling, features, coreset, checkpoint per tile); test
pass = predict + merge + smoothing over all test files; ms/image from decoded images (tile, the 9 models' forward
through anomalib's ``AnomalibModule.forward``, ``PredictionMergingMechanism``, ``SmoothingJob``), batches of
``--batch`` then one at a time, median of ``--probe-rounds``. Peak RSS: VmHWM of this process (after the fit and at
the end: the eval stage keeps every tile prediction in memory, ``EnsemblePredictions``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "20000")  # as core/config.py sets it (see there)
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from proc_stats import peak_rss_bytes  # noqa: E402  (same folder)
from run_peer import BACKBONE, LAYERS, build_model, check_features  # noqa: E402  (same folder)


def log(msg: str) -> None:
    print(f"[peer-tiled] {msg}", file=sys.stderr, flush=True)


def link_tree(manifest: dict, root: Path) -> dict[str, str]:
    """Symlinks in anomalib's Folder layout to the manifest's images; returns link path -> original path."""
    back: dict[str, str] = {}

    def link(src: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to(Path(src).resolve())
        back[str(dest)] = src

    for i, p in enumerate(manifest["train"]):
        link(p, root / "train" / "good" / f"{i:05d}{Path(p).suffix}")
    for i, t in enumerate(manifest["test"]):
        if t["label"]:
            if not t.get("mask"):
                raise SystemExit(f"defective test image without a mask: {t['path']}")
            link(t["path"], root / "test" / "defect" / f"{i:05d}{Path(t['path']).suffix}")
            link(t["mask"], root / "ground_truth" / "defect" / f"{i:05d}_mask{Path(t['mask']).suffix}")
        else:
            link(t["path"], root / "test" / "good" / f"{i:05d}{Path(t['path']).suffix}")
    return back


def ensemble_config(args: argparse.Namespace, data_root: Path, work: Path) -> dict:
    """The pipeline's config, as tools/tiled_ensemble/ens_config.yaml lays it out."""
    return {
        "seed": args.seed,
        "accelerator": "cpu",
        "default_root_dir": str(work / "results"),
        "tiling": {"image_size": [args.image_size, args.image_size], "tile_size": [args.tile_size, args.tile_size],
                   "stride": args.stride},
        "normalization_stage": "none",
        "thresholding_stage": "image",
        "data": {"class_path": "anomalib.data.Folder", "init_args": {
            "name": "peer", "root": str(data_root), "normal_dir": "train/good", "abnormal_dir": "test/defect",
            "normal_test_dir": "test/good", "mask_dir": "ground_truth/defect",
            "train_batch_size": args.batch, "eval_batch_size": args.batch, "num_workers": 0,
            "train_augmentations": None, "val_augmentations": None, "test_augmentations": None, "augmentations": None,
            "test_split_mode": "from_dir", "val_split_mode": "none", "seed": args.seed}},
        "SeamSmoothing": {"apply": args.smoothing, "sigma": args.smooth_sigma, "width": args.smooth_width},
        "TrainModels": {
            "model": {"class_path": "Patchcore", "init_args": {
                "backbone": BACKBONE, "layers": list(LAYERS), "pre_trained": False,
                "coreset_sampling_ratio": args.ratio, "num_neighbors": 9}},
            # val_split_mode none: the train pipeline skips its validation stage, but Lightning's fit still asks
            # anomalib's datamodule for a val_dataloader (AttributeError: no val_data) unless validation is off.
            "trainer": {"enable_progress_bar": False, "logger": False, "enable_model_summary": False,
                        "limit_val_batches": 0},
        },
    }


def prepare_tile_model(model: Any, extractor_state: dict) -> None:
    """The product's weights into the tile model's extractor, and mean = std = 0.5 in its pre-processor."""
    from anomalib.pre_processing.utils.transform import get_exportable_transform
    from torchvision.transforms.v2 import Compose, Normalize

    model.model.feature_extractor.load_state_dict(extractor_state, strict=True)
    pre = model.pre_processor
    steps = list(pre.transform.transforms) if isinstance(pre.transform, Compose) else [pre.transform]
    norms = [s for s in steps if isinstance(s, Normalize)]
    if len(norms) != 1:
        raise SystemExit(f"expected one Normalize in anomalib's PatchCore pre-processor, found {steps}")
    pre.transform = Compose([Normalize(mean=[0.5] * 3, std=[0.5] * 3) if isinstance(s, Normalize) else s
                             for s in steps])
    pre.export_transform = get_exportable_transform(pre.transform)


def score_decoded(engines: dict, tiler: Any, x: torch.Tensor, smoothing: dict) -> tuple[np.ndarray, np.ndarray]:
    """Scores and full maps of a decoded batch (B x 3 x H x W in [0, 1]) through anomalib's tiling, the tile
    models' forward, anomalib's merging and seam smoothing."""
    from anomalib.data import ImageBatch
    from anomalib.pipelines.tiled_ensemble.components.smoothing import SmoothingJob
    from anomalib.pipelines.tiled_ensemble.components.utils.prediction_data import EnsemblePredictions
    from anomalib.pipelines.tiled_ensemble.components.utils.prediction_merging import PredictionMergingMechanism

    tiles = tiler.tile(x)
    store = EnsemblePredictions()
    with torch.no_grad():
        for (i, j), engine in sorted(engines.items()):
            out = engine.model(tiles[i, j])
            store.add_tile_prediction((i, j), [ImageBatch(  # the merge stitches gt_mask too: it must be there
                image=tiles[i, j], gt_mask=torch.zeros(tiles.shape[2], *tiles.shape[-2:], dtype=torch.bool),
                anomaly_map=out.anomaly_map, pred_score=out.pred_score,
                pred_label=out.pred_label, pred_mask=out.pred_mask)])
        merged = [PredictionMergingMechanism(store, tiler).merge_tile_predictions(0)]
        if smoothing["apply"]:
            merged = SmoothingJob("cpu", merged, smoothing["width"], smoothing["sigma"], tiler).run()
    b = merged[0]
    return (b.pred_score.reshape(-1).float().numpy(),
            b.anomaly_map.reshape(x.shape[0], *b.anomaly_map.shape[-2:]).float().numpy())


def decode(path: str) -> torch.Tensor:
    from anomalib.data.utils import read_image

    return read_image(path, as_tensor=True)


def timing_probe(engines: dict, tiler: Any, paths: list[str], n: int, batch: int, n_single: int, rounds: int,
                 smoothing: dict, size: int) -> dict:
    """ms per image from decoded images in memory (resize to the ensemble's image size as its datamodule does, tile,
    forward, merge, smooth); ``rounds`` passes of n images in batches then n_single one at a time; medians."""
    from torchvision.transforms.v2.functional import resize

    imgs = [decode(p) for p in paths[:n]]
    singles = imgs[:n_single]

    def run(group: list[torch.Tensor]) -> None:
        x = torch.stack([im if tuple(im.shape[-2:]) == (size, size) else resize(im, [size, size]) for im in group])
        score_decoded(engines, tiler, x, smoothing)

    run(imgs[:2])  # warm-up
    batched, single = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for s in range(0, len(imgs), batch):
            run(imgs[s : s + batch])
        batched.append(1000 * (time.perf_counter() - t0) / len(imgs))
        t0 = time.perf_counter()
        for im in singles:
            run([im])
        single.append(1000 * (time.perf_counter() - t0) / len(singles))
    return {"ms_per_image": float(np.median(batched)), "batch": batch, "n_images": len(imgs),
            "ms_per_image_batch1": float(np.median(single)), "n_images_batch1": len(singles),
            "rounds": rounds, "ms_per_image_rounds": batched, "ms_per_image_batch1_rounds": single}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True, help="timm safetensors for tf_efficientnet_lite0 (the product's)")
    ap.add_argument("--manifest", required=True,
                    help='JSON {"train": [path...], "test": [{"path", "label", "defect", "mask"}...]}')
    ap.add_argument("--work", required=True, help="an empty folder for the symlink tree and anomalib's workspace")
    ap.add_argument("--out", required=True, help="result JSON")
    ap.add_argument("--dump", required=True, help="scores and merged maps (.npz, test order of the manifest)")
    ap.add_argument("--check-features", required=True,
                    help=".npz with x (B x 3 x tile x tile) and the product's maps per layer")
    ap.add_argument("--image-size", type=int, default=640, help="tiling.image_size (square)")
    ap.add_argument("--tile-size", type=int, default=256, help="tiling.tile_size (square)")
    ap.add_argument("--stride", type=int, default=192, help="tiling.stride")
    ap.add_argument("--no-smoothing", dest="smoothing", action="store_false", help="SeamSmoothing.apply: False")
    ap.add_argument("--smooth-sigma", type=float, default=2.0, help="SeamSmoothing.sigma (ens_config: 2)")
    ap.add_argument("--smooth-width", type=float, default=0.1, help="SeamSmoothing.width (ens_config: 0.1)")
    ap.add_argument("--ratio", type=float, default=0.01, help="coreset_sampling_ratio of each tile's PatchCore")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--probe-images", type=int, default=64)
    ap.add_argument("--probe-single", type=int, default=32)
    ap.add_argument("--probe-rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    wall0 = time.perf_counter()
    import anomalib
    import sklearn
    import timm
    from anomalib.pipelines.components.runners import SerialRunner
    from anomalib.pipelines.tiled_ensemble.components import (
        MergeJobGenerator,
        NormalizationStage,
        PredictData,
        PredictJobGenerator,
        SmoothingJobGenerator,
        TrainModelJobGenerator,
    )
    from anomalib.pipelines.tiled_ensemble.components.utils.ensemble_engine import TiledEnsembleEngine
    from anomalib.pipelines.tiled_ensemble.components.utils.helper_functions import get_ensemble_tiler

    manifest = json.loads(Path(args.manifest).read_text())
    test_paths = [t["path"] for t in manifest["test"]]
    work = Path(args.work)
    back = link_tree(manifest, work / "data")
    cfg = ensemble_config(args, work / "data", work)
    tiler = get_ensemble_tiler(cfg["tiling"])
    tiling = {"image_size": args.image_size, "tile_size": args.tile_size, "stride": args.stride,
              "grid": [tiler.num_patches_h, tiler.num_patches_w], "tiles": tiler.num_tiles,
              "resized_hw": [tiler.resized_h, tiler.resized_w]}
    log(f"tiling {tiling}")

    ref = build_model("patchcore", args.weights, 100, args.seed)  # loads and checks the weights file
    feature_check = check_features(ref, args.check_features)
    log(f"feature check at the tile size: all_match={feature_check['all_match']}")
    extractor_state = ref.feature_extractor.state_dict()
    del ref

    class TrainWithProductWeights(TrainModelJobGenerator):
        """anomalib's training jobs, each tile's model given the product's weights and mean = std = 0.5 first."""

        def generate_jobs(self, args: dict | None = None, prev_stage_result: Any = None):  # noqa: ANN202
            for job in super().generate_jobs(args, prev_stage_result):
                prepare_tile_model(job.model, extractor_state)
                yield job

    norm = NormalizationStage(cfg["normalization_stage"])
    root_dir = TiledEnsembleEngine.setup_ensemble_workspace(cfg)
    common = {"seed": args.seed, "accelerator": "cpu", "root_dir": root_dir, "tiling_args": cfg["tiling"],
              "data_args": cfg["data"]}
    log(f"training {tiler.num_tiles} tile models on {len(manifest['train'])} images")
    t0 = time.perf_counter()
    # anomalib 2.7.0's get_ensemble_model calls get_model(model_args, pre_processor=<PreProcessor>), which updates the
    # model's init_args (an OmegaConf DictConfig) with that object: OmegaConf refuses it (UnsupportedValueType) unless
    # the config allows objects, so upstream only runs a model given without init_args (all defaults).
    from omegaconf import OmegaConf

    train_args = {**cfg["TrainModels"],
                  "model": OmegaConf.create(cfg["TrainModels"]["model"], flags={"allow_objects": True})}
    engines = SerialRunner(TrainWithProductWeights(normalization_stage=norm, **common)).run(train_args)
    fit_s = time.perf_counter() - t0
    peak_fit = peak_rss_bytes()
    banks = {f"{i}_{j}": list(e.model.model.memory_bank.shape) for (i, j), e in sorted(engines.items())}
    log(f"fit {fit_s:.1f} s; memory banks {banks}")

    log(f"scoring {len(test_paths)} test images")
    t0 = time.perf_counter()
    preds = SerialRunner(PredictJobGenerator(PredictData.TEST, model_args=cfg["TrainModels"]["model"],
                                             normalization_stage=norm, **common)).run({}, engines)
    t_predict = time.perf_counter() - t0
    merged = SerialRunner(MergeJobGenerator(tiling_args=cfg["tiling"], data_args=cfg["data"])).run({}, preds)
    t_merge = time.perf_counter() - t0 - t_predict
    if args.smoothing:
        merged = SerialRunner(SmoothingJobGenerator(accelerator="cpu", tiling_args=cfg["tiling"],
                                                    data_args=cfg["data"])).run(cfg["SeamSmoothing"], merged)
    score_s = time.perf_counter() - t0
    del preds

    by_path: dict[str, tuple[float, np.ndarray]] = {}
    for b in merged:
        maps = b.anomaly_map.reshape(len(b.image_path), *b.anomaly_map.shape[-2:]).float().numpy()
        for p, s, m in zip(b.image_path, b.pred_score.reshape(-1).tolist(), maps):
            by_path[back[str(p)]] = (float(s), m)
    del merged
    missing = [p for p in test_paths if p not in by_path]
    if missing:
        raise SystemExit(f"the ensemble returned no prediction for {len(missing)} test images, e.g. {missing[:2]}")
    scores = np.array([by_path[p][0] for p in test_paths], dtype=np.float32)
    maps = np.stack([by_path[p][1] for p in test_paths]).astype(np.float32)
    del by_path
    smoothing = cfg["SeamSmoothing"]

    # The in-memory path used for the timing probe must give what the pipeline gave (Lightning's predict hands the
    # modules back in training mode, where PatchCore's forward stores embeddings instead of scoring).
    for engine in engines.values():
        engine.model.eval()
    k = min(4, len(test_paths))
    s_probe, m_probe = score_decoded(engines, tiler, torch.stack([decode(p) for p in test_paths[:k]]), smoothing)
    probe_check = {"n_images": k, "max_abs_score_diff": float(np.abs(s_probe - scores[:k]).max()),
                   "max_abs_map_diff": float(np.abs(m_probe - maps[:k]).max()),
                   "max_abs_map": float(np.abs(maps[:k]).max())}
    log(f"in-memory path vs pipeline: {probe_check}")
    timing = timing_probe(engines, tiler, test_paths, args.probe_images, args.batch, args.probe_single,
                          args.probe_rounds, smoothing, args.image_size)

    result = {
        "system": f"anomalib {anomalib.__version__} tiled ensemble",
        "model": "patchcore",
        "versions": {"anomalib": anomalib.__version__, "torch": torch.__version__, "timm": timm.__version__,
                     "numpy": np.__version__, "sklearn": sklearn.__version__, "python": platform.python_version()},
        "settings": {"backbone": BACKBONE, "layers": list(LAYERS), "mean": 0.5, "std": 0.5,
                     "coreset_ratio": args.ratio, "num_neighbors": 9, "threads": torch.get_num_threads(),
                     "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                     "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"), "seed": args.seed,
                     "tiling": tiling, "seam_smoothing": smoothing, "normalization_stage": "none",
                     "pipeline_config": cfg},
        "n_train": len(manifest["train"]),
        "n_test": len(test_paths),
        "feature_check": feature_check,
        "memory_banks": banks,
        "fit": {"total_s": fit_s, "note": f"anomalib's training stage: {tiler.num_tiles} tile models, each its own "
                                          "datamodule pass over the train files (decode, tile), features, coreset, "
                                          "checkpoint"},
        "score_all": {"seconds": score_s, "ms_per_image": 1000 * score_s / max(1, len(test_paths)),
                      "breakdown_s": {"predict": t_predict, "merge": t_merge,
                                      "smoothing": score_s - t_predict - t_merge},
                      "note": f"anomalib's predict (each of {tiler.num_tiles} tile positions: a pass over all test "
                              "files) + merge + seam smoothing, batch " + str(args.batch)},
        "timing": timing,
        "probe_check": probe_check,
        "peak_rss_after_fit_bytes": peak_fit,
        "peak_rss_bytes": peak_rss_bytes(),
        "score_stats": {"min": float(scores.min()), "max": float(scores.max()),
                        "finite": bool(np.isfinite(scores).all() and np.isfinite(maps).all())},
    }
    np.savez(args.dump, scores=scores, maps=maps)
    result["wall_s"] = time.perf_counter() - wall0
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    log(f"done in {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()

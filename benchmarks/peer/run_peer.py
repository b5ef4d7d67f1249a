"""Run anomalib 2.7's PatchCore or PaDiM torch model on a fixed image list and print one JSON object to stdout.

Runs inside ``.venv-peer`` (benchmarks/peer/requirements.txt); started by ``benchmarks/peer_anomalib.py``, which
passes the image lists, the ground-truth masks and the product's converted ImageNet weights (a timm safetensors
file for ``tf_efficientnet_lite0``). Nothing from the product is imported here.

The models are built as anomalib builds them (``TimmFeatureExtractor`` = timm ``features_only`` model) with
``pre_trained=False`` (no hub access), then the timm state dict is loaded into that feature extractor: every tensor
the extractor has must be in the file (only the classifier head is left over). ``--check-features`` compares the
extractor's feature maps on a given input with the product's maps for the same input.

Pipeline, as a user of anomalib's torch models would write it: PIL decode, RGB, resize to ``--size`` square
(224 x 224 by default) bilinear, /255, (x - 0.5) / 0.5; fit = forward passes in training mode over all training
images (feature extraction), then ``subsample_embedding`` (PatchCore, k-center greedy coreset) or ``fit`` (PaDiM,
Gaussian per position); scores = ``InferenceBatch.pred_score`` and ``anomaly_map`` of the eval-mode forward (raw,
not normalised; the map at the input size).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "20000")  # as core/config.py sets it (see there)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from proc_stats import peak_rss_bytes  # noqa: E402  (same folder)
import torch  # noqa: E402
from PIL import Image  # noqa: E402

SIZE = 224  # the default input side (--size)
BACKBONE = "tf_efficientnet_lite0"
LAYERS = ["blocks.2", "blocks.4"]


def log(msg: str) -> None:
    print(f"[peer] {msg}", file=sys.stderr, flush=True)




def decode(path: str) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def to_tensor(images: list[Image.Image], size: int = SIZE) -> torch.Tensor:
    """PIL RGB images -> B x 3 x size x size, bilinear resize, /255, (x - 0.5) / 0.5."""
    arr = np.stack([np.asarray(im.resize((size, size), Image.BILINEAR), dtype=np.float32) for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).div_(255.0)
    return (x - 0.5) / 0.5


def load_batch(paths: list[str], size: int = SIZE) -> torch.Tensor:
    return to_tensor([decode(p) for p in paths], size)


def read_mask(path: str | None, size: int = SIZE) -> np.ndarray:
    if not path:
        return np.zeros((size, size), dtype=bool)
    with Image.open(path) as m:
        m = m.convert("L").resize((size, size), Image.NEAREST)
        return np.asarray(m) > 0


# ----------------------------------------------------------------------------------------------------------------


def build_model(name: str, weights: str, n_features: int, seed: int) -> torch.nn.Module:
    from safetensors.torch import load_file

    torch.manual_seed(seed)  # PaDiM draws its random channel subset with torch.randperm at construction
    if name == "patchcore":
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        model = PatchcoreModel(layers=LAYERS, backbone=BACKBONE, pre_trained=False, num_neighbors=9)
    elif name == "padim":
        from anomalib.models.image.padim.torch_model import PadimModel

        model = PadimModel(backbone=BACKBONE, layers=list(LAYERS), pre_trained=False, n_features=n_features)
    else:
        raise SystemExit(f"unknown model {name!r}")
    extractor = model.feature_extractor.feature_extractor  # timm EfficientNetFeatures (features_only)
    state = load_file(weights)
    res = extractor.load_state_dict(state, strict=False)
    head_only = {"conv_head.weight", "classifier.weight", "classifier.bias"} | {
        f"bn2.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    }
    if res.missing_keys or set(res.unexpected_keys) - head_only:
        raise SystemExit(
            f"weights {weights} do not fit anomalib's {BACKBONE} feature extractor: missing {res.missing_keys[:5]}, "
            f"unexpected {sorted(set(res.unexpected_keys) - head_only)[:5]}"
        )
    model.eval()
    return model


def check_features(model: torch.nn.Module, ref_file: str) -> dict:
    """Max |difference| between anomalib's feature maps and the product's on the same input tensor."""
    ref = np.load(ref_file)
    x = torch.from_numpy(ref["x"])
    with torch.no_grad():
        feats = model.feature_extractor(x)
    out = {}
    for layer in LAYERS:
        a = feats[layer].numpy()
        b = ref[layer]
        if a.shape != b.shape:
            out[layer] = {"shape_peer": list(a.shape), "shape_product": list(b.shape), "match": False}
            continue
        diff = float(np.abs(a - b).max())
        scale = float(np.abs(b).max())
        out[layer] = {"shape": list(a.shape), "max_abs_diff": diff, "max_abs_product": scale,
                      "match": diff <= 1e-3 * max(scale, 1.0)}
    # The same input through a randomly initialised extractor, to show the loaded weights matter.
    from anomalib.models.components import TimmFeatureExtractor

    torch.manual_seed(0)
    rnd = TimmFeatureExtractor(backbone=BACKBONE, layers=list(LAYERS), pre_trained=False).eval()
    with torch.no_grad():
        r = rnd(x)
    for layer in LAYERS:
        if "max_abs_diff" in out[layer]:
            out[layer]["max_abs_diff_random_init"] = float(np.abs(r[layer].numpy() - ref[layer]).max())
    out["all_match"] = all(v["match"] for k, v in out.items() if isinstance(v, dict))
    return out


# ----------------------------------------------------------------------------------------------------------------


def fit(model, name: str, paths: list[str], batch: int, ratio: float, size: int = SIZE) -> dict:
    model.train()  # anomalib's training_step: forward in train mode stores embeddings (extractor stays in eval)
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(paths), batch):
            model(load_batch(paths[s : s + batch], size))
    t_extract = time.perf_counter() - t0
    t1 = time.perf_counter()
    bank = {}
    if name == "patchcore":
        n_patches = sum(int(e.shape[0]) for e in model.embedding_store)
        model.subsample_embedding(ratio)
        bank = {"patches": n_patches, "memory_bank": int(model.memory_bank.shape[0]),
                "dim": int(model.memory_bank.shape[1])}
    else:
        model.fit()
        bank = {"channels": int(model.n_features), "of_channels": int(model.n_features_original),
                "positions": int(model.gaussian.mean.shape[-1])}
    t_model = time.perf_counter() - t1
    model.eval()
    return {"extract_s": t_extract, "model_s": t_model, "total_s": t_extract + t_model, **bank}


def score(model, paths: list[str], batch: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray, float]:
    scores, maps = [], []
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(paths), batch):
            out = model(load_batch(paths[s : s + batch], size))
            scores.append(out.pred_score.reshape(-1).float().numpy())
            maps.append(out.anomaly_map.reshape(-1, size, size).float().numpy())
    return np.concatenate(scores), np.concatenate(maps), time.perf_counter() - t0


def timing_probe(model, paths: list[str], n: int, batch: int, n_single: int, rounds: int, size: int = SIZE) -> dict:
    """ms per image from decoded images in memory (resize + normalise + forward incl. anomaly map).

    ``rounds`` passes of (n images in batches, then n_single one at a time); the median pass is reported.
    """
    imgs = [decode(p) for p in paths[:n]]
    for im in imgs:
        im.load()
    singles = imgs[:n_single]
    batched, single = [], []
    with torch.no_grad():
        model(to_tensor(imgs[:2], size))  # warm-up
        for _ in range(rounds):
            t0 = time.perf_counter()
            for s in range(0, len(imgs), batch):
                model(to_tensor(imgs[s : s + batch], size))
            batched.append(1000 * (time.perf_counter() - t0) / len(imgs))
            t0 = time.perf_counter()
            for im in singles:
                model(to_tensor([im], size))
            single.append(1000 * (time.perf_counter() - t0) / len(singles))
    return {"ms_per_image": float(np.median(batched)), "batch": batch, "n_images": len(imgs),
            "ms_per_image_batch1": float(np.median(single)), "n_images_batch1": len(singles),
            "rounds": rounds, "ms_per_image_rounds": batched, "ms_per_image_batch1_rounds": single}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["patchcore", "padim"], required=True)
    ap.add_argument("--weights", required=True, help="timm safetensors for tf_efficientnet_lite0 (the product's)")
    ap.add_argument("--manifest", required=True,
                    help='JSON {"train": [path...], "test": [{"path", "label", "defect", "mask"}...]}')
    ap.add_argument("--size", type=int, default=SIZE, help="square input side (default %(default)s)")
    ap.add_argument("--masks", help="N x H x W .npy ground truth in test order, for the self-reported pixel AUROC "
                    "(maps resized bilinearly to H x W when they differ; else masks read with PIL nearest at --size)")
    ap.add_argument("--check-features", help=".npz with x (B x 3 x size x size) and the product's maps per layer")
    ap.add_argument("--dump", help="write raw scores and maps here (.npz) for the orchestrator")
    ap.add_argument("--ratio", type=float, default=0.01, help="PatchCore coreset ratio")
    ap.add_argument("--n-features", type=int, default=100, help="PaDiM random channels")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--probe-images", type=int, default=64)
    ap.add_argument("--probe-single", type=int, default=16)
    ap.add_argument("--probe-rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(args.threads)
    wall0 = time.perf_counter()
    import anomalib
    import sklearn
    import timm
    from sklearn.metrics import roc_auc_score

    manifest = json.loads(Path(args.manifest).read_text())
    train = list(manifest["train"])
    test = list(manifest["test"])
    labels = np.array([int(t["label"]) for t in test])

    t0 = time.perf_counter()
    model = build_model(args.model, args.weights, args.n_features, args.seed)
    build_s = time.perf_counter() - t0
    result: dict = {
        "system": f"anomalib {anomalib.__version__}",
        "model": args.model,
        "versions": {"anomalib": anomalib.__version__, "torch": torch.__version__, "timm": timm.__version__,
                     "numpy": np.__version__, "sklearn": sklearn.__version__, "python": platform.python_version()},
        "settings": {"backbone": BACKBONE, "layers": LAYERS, "image_size": args.size, "mean": 0.5, "std": 0.5,
                     "resize": "PIL bilinear", "batch": args.batch, "threads": torch.get_num_threads(),
                     "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                     "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"), "seed": args.seed,
                     **({"coreset_ratio": args.ratio, "num_neighbors": 9} if args.model == "patchcore"
                        else {"n_features": args.n_features})},
        "n_train": len(train),
        "n_test": len(test),
        "build_s": build_s,
    }
    if args.check_features:
        result["feature_check"] = check_features(model, args.check_features)
        log(f"feature check: all_match={result['feature_check']['all_match']}")

    # anomalib leaves its coreset unseeded (torch.randint start point; sklearn sample_without_replacement with
    # random_state=None, i.e. numpy's global RNG, for the projection): seed both so reruns agree.
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    log(f"{args.model}: fitting on {len(train)} images")
    result["fit"] = fit(model, args.model, train, args.batch, args.ratio, args.size)
    log(f"{args.model}: fit {result['fit']['total_s']:.1f} s; scoring {len(test)} images")
    scores, maps, score_s = score(model, [t["path"] for t in test], args.batch, args.size)
    result["score_all"] = {"seconds": score_s, "ms_per_image": 1000 * score_s / max(1, len(test)),
                           "batch": args.batch, "note": "from files: decode + resize + forward + map"}
    result["timing"] = timing_probe(model, [t["path"] for t in test], args.probe_images, args.batch,
                                    args.probe_single, args.probe_rounds, args.size)
    result["peak_rss_bytes"] = peak_rss_bytes()

    if args.masks:
        masks = np.load(args.masks).astype(bool)
    else:
        masks = np.stack([read_mask(t.get("mask") if t["label"] else None, args.size) for t in test])
    result["image_auroc"] = float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else None
    y = masks.reshape(-1)
    own = maps
    if own.shape[-2:] != masks.shape[-2:]:  # the self-report only: maps onto the masks' grid, bilinear
        own = torch.nn.functional.interpolate(torch.from_numpy(maps)[:, None], size=masks.shape[-2:],
                                              mode="bilinear", align_corners=False)[:, 0].numpy()
    result["pixel_auroc"] = (float(roc_auc_score(y, own.reshape(-1))) if 0 < y.sum() < y.size else None)
    result["self_report_hw"] = list(masks.shape[-2:])
    del own
    result["score_stats"] = {"min": float(scores.min()), "max": float(scores.max()),
                             "finite": bool(np.isfinite(scores).all() and np.isfinite(maps).all())}
    if args.dump:
        np.savez(args.dump, scores=scores.astype(np.float32), maps=maps.astype(np.float32))
    result["wall_s"] = time.perf_counter() - wall0
    print(json.dumps(result))


if __name__ == "__main__":
    main()

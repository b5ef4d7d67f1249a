"""Which PatchCore settings to use at the automatic high-resolution scale (core.detectors.patchcore's
HighResolutionSettings), measured on deeppcb_00041 at its own 640 x 640 px.

    .venv/bin/python benchmarks/highres_settings.py [--rows before,k1,...] [--seed N]

The features of the 141 training and 160 test boards are taken once (lite0 blocks.2 + blocks.4, 640 px, float32);
each row then fits PatchCore on them with the settings shown (``fit_embeddings``: coreset and index) and scores the
test boards (``score_embeddings`` + the map's upsampling and blur), all settings written out, so the rows differ only
where the table says. Image AUROC on raw scores, pixel AUROC and AUPRO on the box masks at 640 px (core.metrics).
The same metrics on ``val_mix`` (16 good and 16 defective boards, a subset of ``test``) are reported beside them:
the settings were first explored on ``test``, and val_mix shows whether the choice holds on a split a user would
tune on. Coreset seconds and search ms per board are same-process times (2 cores, noisy); compare them within one
run.
Prints a table and writes benchmarks/results/highres_settings.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from common import REPO, table, write_result  # noqa: E402

from core.data import index_dataset  # noqa: E402
from core.detectors import PatchCore, PatchCoreConfig  # noqa: E402
from core.detectors.postprocess import upsample_and_blur  # noqa: E402
from core.detectors.scale import ScaleChoice  # noqa: E402
from core.detectors.search import SearchConfig  # noqa: E402
from core.evaluation import ground_truth_masks  # noqa: E402
from core.features import FeatureExtractor, FeatureSpec  # noqa: E402
from core.metrics import aupro, image_metrics, pixel_auroc  # noqa: E402
from core.progress import no_progress  # noqa: E402

DEEPPCB = REPO.parent / "shared" / "datasets" / "deeppcb_00041"
LAYERS = ("blocks.2", "blocks.4")
SIZE = 640
FLAT, IVF8, IVF4, IVF2 = (SearchConfig("flat"), *(SearchConfig("ivfflat", nprobe=p) for p in (8, 4, 2)))
IVF4_PCA64 = SearchConfig("ivfflat", nprobe=4, pca_dim=64, rerank_factor=4)
# name -> (what it is, settings); every row spells out what differs from PatchCoreConfig's defaults.
ROWS = {
    "before": ("the defaults (what 640 px used before)", dict(ratio=0.01, map_neighbors=3, blur_sigma=4.0, index=FLAT)),
    "k1": ("map from the nearest bank patch", dict(ratio=0.01, map_neighbors=1, blur_sigma=4.0, index=FLAT)),
    "k1s6": ("... and blur sigma 6", dict(ratio=0.01, map_neighbors=1, blur_sigma=6.0, index=FLAT)),
    "r2": ("... and a 2 % bank", dict(ratio=0.02, map_neighbors=1, blur_sigma=6.0, index=FLAT)),
    "r2ivf": ("... searched by IVF-Flat, 8 cells", dict(ratio=0.02, map_neighbors=1, blur_sigma=6.0, index=IVF8)),
    "r3ivf": ("3 % bank, IVF-Flat", dict(ratio=0.03, map_neighbors=1, blur_sigma=6.0, index=IVF8)),
    "proj64": ("3 %, coreset in a 64-d projection, IVF-Flat",
               dict(ratio=0.03, projection_dim=64, map_neighbors=1, blur_sigma=6.0, index=IVF8)),
    "ivf4": ("... 4 cells searched",
             dict(ratio=0.03, projection_dim=64, map_neighbors=1, blur_sigma=6.0, index=IVF4)),
    "ivf2": ("ivf4 with 2 cells searched",
             dict(ratio=0.03, projection_dim=64, map_neighbors=1, blur_sigma=6.0, index=IVF2)),
    "fine15": ("ivf4 with the stride-8 layer weighted 1.5 everywhere (--fine-layer-weight)",
               dict(ratio=0.03, projection_dim=64, map_neighbors=1, blur_sigma=6.0, index=IVF4, fine_layer_weight=1.5)),
    "score15": ("ivf4, the image score's distances with the stride-8 layer weighted 1.5 (--image-score-fine-weight)",
                dict(ratio=0.03, projection_dim=64, map_neighbors=1, blur_sigma=6.0, index=IVF4,
                     image_score_fine_weight=1.5)),
    "score2": ("... weighted 2",
               dict(ratio=0.03, projection_dim=64, map_neighbors=1, blur_sigma=6.0, index=IVF4,
                    image_score_fine_weight=2.0)),
    "score3": ("... weighted 3",
               dict(ratio=0.03, projection_dim=64, map_neighbors=1, blur_sigma=6.0, index=IVF4,
                    image_score_fine_weight=3.0)),
    "chosen": ("score2, IVF-Flat in a 64-d PCA projection, 4 candidates per neighbour re-ranked exactly "
               "(HighResolutionSettings)",
               dict(ratio=0.03, projection_dim=64, map_neighbors=1, blur_sigma=6.0, index=IVF4_PCA64,
                    image_score_fine_weight=2.0)),
}


def features(paths: list[str]) -> dict[str, np.ndarray]:
    res = FeatureExtractor(FeatureSpec("tf_efficientnet_lite0", LAYERS, SIZE)).extract_paths(paths)
    if res.errors:
        raise SystemExit(f"unreadable: {res.errors}")
    return res.features


def split_metrics(scores, maps, labels, masks, usable, rows) -> dict[str, float]:
    """Image AUROC, pixel AUROC and AUPRO over ``rows`` (indices into the scored boards)."""
    keep = rows[usable[rows]]
    return {"image_auroc": image_metrics(labels[rows], scores[rows]).auroc,
            "pixel_auroc": pixel_auroc(masks[keep], maps[keep]), "aupro": aupro(masks[keep], maps[keep])}


def run_row(name: str, settings: dict, train: dict, test: dict, labels, masks, usable, val_rows, seed: int = 0) -> dict:
    det = PatchCore(PatchCoreConfig(image_size=SIZE, layers=LAYERS, rescore_ratio=0.0, seed=seed, **settings))
    det.set_scale(ScaleChoice(SIZE, SIZE, "forced", "highres_settings"))  # forced: no automatic settings
    seconds = det.fit_embeddings(train, no_progress)
    t0 = time.perf_counter()
    scores, patch_maps, _ = det.score_embeddings(test)
    search = time.perf_counter() - t0
    maps = upsample_and_blur(patch_maps, (SIZE, SIZE), det.blur_sigma)
    return {
        "row": name,
        "what": ROWS[name][0],
        "settings": {k: (v.to_dict() if isinstance(v, SearchConfig) else v) for k, v in settings.items()},
        "bank": len(det.bank),
        **split_metrics(scores, maps, labels, masks, usable, np.arange(len(labels))),
        "val_mix": split_metrics(scores, maps, labels, masks, usable, val_rows),
        "coreset_seconds": seconds["coreset"],
        "search_ms_per_image": 1000 * search / len(labels),
    }


def _three(m: dict) -> str:
    return f"{m['image_auroc']:.4f} / {m['pixel_auroc']:.4f} / {m['aupro']:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    ap.add_argument("--seed", type=int, default=0,
                    help="the coreset's seed (its random start); not 0: results/highres_settings_seed<N>.json")
    args = ap.parse_args()
    started = time.perf_counter()
    index = index_dataset(DEEPPCB)
    records = index.split("test")
    train = features([str(index.abs_path(r)) for r in index.split("train_normal")])
    test = features([str(index.abs_path(r)) for r in records])
    labels = np.array([r.label for r in records])
    masks, usable = ground_truth_masks(index, records, SIZE)
    position = {i: n for n, i in enumerate(index.splits["test"])}
    val_rows = np.array([position[i] for i in index.splits["val_mix"]])  # val_mix is drawn from test's boards
    rows = []
    for name in args.rows.split(","):
        r = run_row(name, ROWS[name][1], train, test, labels, masks, usable, val_rows, args.seed)
        rows.append(r)
        print(f"{name}: image {r['image_auroc']:.4f} pixel {r['pixel_auroc']:.4f} AUPRO {r['aupro']:.4f} "
              f"bank {r['bank']} coreset {r['coreset_seconds']:.1f} s search {r['search_ms_per_image']:.1f} ms",
              flush=True)
    print()
    print(table(["row", "what", "bank", "test image / pixel AUROC / AUPRO", "val_mix image / pixel AUROC / AUPRO",
                 "coreset s", "search ms/board"],
                [[r["row"], r["what"], r["bank"], _three(r), _three(r["val_mix"]), r["coreset_seconds"],
                  r["search_ms_per_image"]] for r in rows]))
    write_result("highres_settings" + (f"_seed{args.seed}" if args.seed else ""),
                 {"dataset": "deeppcb_00041", "size": SIZE, "layers": list(LAYERS), "seed": args.seed, "rows": rows},
                 started)


if __name__ == "__main__":
    main()

"""Greedy coreset speed on magnetic_tile's real patch features: batched exact greedy vs the plain loop.

    .venv/bin/python benchmarks/coreset_speed.py [--ratio 0.01] [--images 676] [--reference-picks 600]

Both run in this process on the same features, in the dimensions the default PatchCore measures coreset distances
in (lite0's 152 channels unprojected; ``--projection-dim 128`` for the paper's projection). The plain loop (one full
pass per pick) is timed
on its first ``--reference-picks`` picks and extrapolated linearly (its cost per pick is constant); the
indices are checked to agree on those picks.
"""

from __future__ import annotations

import argparse
import time

from common import MAGNETIC_TILE, table, write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratio", type=float, default=0.01)
    ap.add_argument("--images", type=int, default=676)
    ap.add_argument("--reference-picks", type=int, default=600)
    ap.add_argument("--projection-dim", type=int, default=0, help="0: PatchCore's default for these features")
    args = ap.parse_args()
    started = time.perf_counter()

    from core.config import set_threads
    from core.data import index_dataset
    from core.detectors import PatchCore, PatchCoreConfig
    from core.detectors.coreset import greedy_kcenter, greedy_reference, random_projection, select_coreset
    from core.detectors.embedding import patch_embedding, to_patches
    from core.features import FeatureCache, FeatureExtractor, FeatureSpec

    set_threads()
    index = index_dataset(MAGNETIC_TILE)
    paths = [str(index.abs_path(r)) for r in index.split("train_normal")[: args.images]]
    ext = FeatureExtractor(FeatureSpec("tf_efficientnet_lite0", (), 224), cache=FeatureCache())
    feats = ext.extract_paths(paths).features
    patches = to_patches(patch_embedding(feats, ext.spec.layers, 3))
    n = len(patches)
    k = int(round(n * args.ratio))
    dim = PatchCore(PatchCoreConfig(projection_dim=args.projection_dim)).projection_dim_for(patches.shape[1])
    print(f"{n:,} patches x {patches.shape[1]} channels (distances in {dim}); coreset {k:,} ({args.ratio:.1%})")

    t0 = time.perf_counter()
    res = select_coreset(patches, "greedy", ratio=args.ratio, projection_dim=dim)
    ours = time.perf_counter() - t0

    proj = random_projection(patches, dim, 0)
    m = min(args.reference_picks, k)
    t0 = time.perf_counter()
    ref = greedy_reference(proj, m)
    ref_part = time.perf_counter() - t0
    ref_full = ref_part * (k - 1) / (m - 1)
    fast_m, _ = greedy_kcenter(proj, m)
    agree = float((fast_m == ref).mean())

    rows = [
        ["batched exact greedy (product)", n, k, ours, res.passes, 1.0],
        [f"plain loop (reference, {m} picks timed)", n, k, ref_full, k, ref_full / ours],
    ]
    print(table(["method", "patches", "picks", "seconds", "full-bank passes", "reference / this"], rows))
    print(f"same picks as the plain loop on the first {m}: {agree:.1%}")
    write_result(
        "coreset_speed",
        {
            "patches": n,
            "channels": int(patches.shape[1]),
            "distance_dims": dim,
            "picks": k,
            "ratio": args.ratio,
            "product_seconds": ours,
            "product_passes": res.passes,
            "reference_seconds_extrapolated": ref_full,
            "reference_picks_timed": m,
            "reference_seconds_timed": ref_part,
            "speedup": ref_full / ours,
            "agreement_first_picks": agree,
        },
        started,
    )


if __name__ == "__main__":
    main()

"""How fast anomalib's PatchCore coreset picks at a given input size (run in the peer's venv, .venv-peer).

    .venv-peer/bin/python benchmarks/peer/coreset_rate.py --weights W --dataset ../shared/datasets/deeppcb_00041 \
        --size 640 --picks 200

At 640 px a full run of the peer on deeppcb_00041 (1 % of ~902k patches: ~9,000 greedy picks, one pass over every
patch per pick) takes too long to run beside everything else, so this measures what it costs: the peer's own
feature pass over ``train/good`` at ``--size``, then anomalib's ``KCenterGreedy`` (the sampler its
``subsample_embedding`` uses, same projection) asked for ``--picks`` picks over all the patches. Each pick is one
pass over all patches, so the seconds per pick measured here times the picks a 1 % coreset needs is what that
coreset would take; the script prints both and labels the second an estimate. Writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_peer import build_model, load_batch  # noqa: E402  (this folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--picks", type=int, default=200)
    ap.add_argument("--ratio", type=float, default=0.01, help="the full coreset's ratio, for the estimate")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    from anomalib.models.components.sampling import KCenterGreedy

    train = sorted(str(p) for p in (Path(args.dataset) / "train" / "good").iterdir())
    model = build_model("patchcore", args.weights, 100, 0)
    model.train()  # anomalib's training_step: forward in train mode stores embeddings
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(train), 8):
            model(load_batch(train[s : s + 8], args.size))
    extract_s = time.perf_counter() - t0
    embedding = torch.vstack(model.embedding_store)
    n = int(embedding.shape[0])
    t0 = time.perf_counter()
    sampler = KCenterGreedy(embedding=embedding, sampling_ratio=args.picks / n)
    picked = sampler.sample_coreset()
    pick_s = time.perf_counter() - t0
    full_picks = int(n * args.ratio)
    out = {
        "system": "anomalib KCenterGreedy", "size": args.size, "train_images": len(train), "patches": n,
        "dim": int(embedding.shape[1]), "extract_seconds": extract_s, "picks": int(picked.shape[0]),
        "pick_seconds": pick_s, "seconds_per_pick": pick_s / max(1, int(picked.shape[0])),
        "full_coreset_picks": full_picks,
        "estimated_full_coreset_seconds": full_picks * pick_s / max(1, int(picked.shape[0])),
        "command": " ".join([".venv-peer/bin/python", *sys.argv]),
    }
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

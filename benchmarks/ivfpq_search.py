"""Flat vs IVF-PQ (with and without exact re-rank) on a PatchCore memory bank of >= 1M vectors.

    .venv/bin/python benchmarks/ivfpq_search.py [--test-images 30] [--nlist 1024] [--nprobe 8,16] [--nbits 4,8]
        [--train-images N]

A thin caller of the faiss study (``core/experiments/faiss_study.py``, also ``python -m core experiment faiss``):
the bank is every locally aware patch of magnetic_tile's train/good images and of their mirror images
(676 x 2 x 784 = 1.06M vectors x 152 dims, no coreset); the same test images (half normal, half defective) are
scored with each index: search ms per image, index memory, image AUROC and its change against flat, recall@1.
"""

from __future__ import annotations

import argparse
import time

from common import MAGNETIC_TILE, table, write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--test-images", type=int, default=30)
    ap.add_argument("--nprobe", default="8,16")
    ap.add_argument("--nbits", default="4,8")
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--train-images", type=int, default=None,
                    help="bank from this many train/good images (default all)")
    args = ap.parse_args()
    started = time.perf_counter()

    from core.config import set_threads
    from core.data import index_dataset
    from core.experiments.faiss_study import FaissSettings, run_faiss
    from core.features import FeatureCache

    set_threads()
    settings = FaissSettings(nbits=tuple(map(int, args.nbits.split(","))),
                             nprobes=tuple(map(int, args.nprobe.split(","))), nlist=args.nlist,
                             test_images=args.test_images, n_train=args.train_images)
    res = run_faiss(index_dataset(MAGNETIC_TILE), settings, cache=FeatureCache(),
                    progress=lambda stage, done, total: None)
    keys = ["search_ms_per_image", "speedup", "memory_mb", "image_auroc", "auroc_change", "recall_at_1",
            "build_seconds"]
    print(table(["index", "search ms / image", "speed-up vs flat", "memory MB", "image AUROC", "AUROC change",
                 "recall@1", "build s"], [[r["index"], *(r[k] for k in keys)] for r in res.rows]))
    for note in res.notes:
        print(f"- {note}")
    st = res.settings
    write_result("ivfpq_search", {"bank_size": st["bank_size"], "dim": st["dim"], "test_images": st["test_images_used"],
                                  "queries": st["queries"], "results": {r["index"]: r for r in res.rows}}, started)


if __name__ == "__main__":
    main()

"""faiss search with the queries split over threads vs one call, same process, alternating rounds.

    .venv/bin/python benchmarks/search_threads.py [--rounds 8]

faiss-cpu's wheels bundle a single-threaded OpenBLAS (printed below when it can be found), so one flat search does
its distance GEMM on one core. ``MemoryBankIndex`` splits the queries into contiguous slices searched from a thread
pool (``core/detectors/search.py``). This times both on PatchCore's default shapes: a 4,570 x 152 map bank
(1 % greedy at 208 px) and the 22,849-row image-score bank, 676 queries (one image's patches) and 16 x 676 (a
batch), k = 3; and the high-resolution scale's IVF-Flat search (4 of 329 cells) of a 27,072-row bank (3 % at 640 px
on deeppcb) with 6,400 queries per image, k = 1, where the coarse quantiser's centroid search is the GEMM, in all 152
dimensions and in a 64-d PCA projection with 4 candidates re-ranked (the high-resolution default). Random
data (the time of an exact search does not depend on the values; an IVF search's does, through the cell sizes).
Also checks that both return the same neighbours. Writes benchmarks/results/search_threads.json.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import time

import numpy as np
from common import table, write_result


def faiss_blas_config() -> str:
    """The config string of the OpenBLAS bundled with faiss-cpu, or '' when it is not found."""
    import faiss

    libs = glob.glob(os.path.join(os.path.dirname(faiss.__file__), "..", "faiss_cpu.libs", "libopenblas*.so*"))
    if not libs:
        return ""
    lib = ctypes.CDLL(libs[0])
    lib.openblas_get_config.restype = ctypes.c_char_p
    return lib.openblas_get_config().decode()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    started = time.perf_counter()

    import faiss

    from core.config import set_threads
    from core.detectors.search import MemoryBankIndex, SearchConfig, query_slices

    set_threads(2)
    rng = np.random.default_rng(0)
    cases = {}
    for rows, kind, per_image, k in ((4570, "flat", 676, 3), (22849, "flat", 676, 3), (27072, "ivfflat", 6400, 1),
                                     (27072, "ivfflat+pca64", 6400, 1)):
        config = SearchConfig(kind.split("+")[0], nprobe=4, pca_dim=64 if "pca" in kind else 0, rerank_factor=4)
        index = MemoryBankIndex(rng.standard_normal((rows, 152)).astype(np.float32), config)
        for images in (1, 16):
            queries = rng.standard_normal((per_image * images, 152)).astype(np.float32)
            cases[(rows, kind, images)] = (index, queries, k)
    times: dict[tuple, dict[bool, list[float]]] = {c: {True: [], False: []} for c in cases}
    same = {}
    for _ in range(args.rounds):
        for case, (index, q, k) in cases.items():
            out = {}
            for parallel in (True, False):
                MemoryBankIndex.parallel_queries = parallel
                index.search(q[:676], k)  # warm-up
                reps = 3 if case[2] == 1 else 1
                t0 = time.perf_counter()
                for _ in range(reps):
                    out[parallel] = index.search(q, k)
                times[case][parallel].append(1000 * (time.perf_counter() - t0) / (reps * case[2]))
            same[case] = bool((out[True][1] == out[False][1]).all())
    MemoryBankIndex.parallel_queries = True
    rows, results = [], []
    for (bank, kind, images), t in times.items():
        split, one = float(np.median(t[True])), float(np.median(t[False]))
        queries = len(cases[(bank, kind, images)][1])
        n_slices = query_slices(queries, faiss.omp_get_max_threads())
        results.append({"bank_rows": bank, "kind": kind, "images": images, "queries": queries, "slices": n_slices,
                        "split_ms_per_image": split, "one_call_ms_per_image": one, "ratio": one / split,
                        "same_neighbours": same[(bank, kind, images)],
                        "rounds": {"split": t[True], "one_call": t[False]}})
        rows.append([bank, kind, images, queries, n_slices, round(one, 2), round(split, 2), round(one / split, 2),
                     same[(bank, kind, images)]])
    blas = faiss_blas_config()
    print(f"faiss's OpenBLAS: {blas or 'not found'}")
    print(table(["bank rows", "search", "images", "queries", "slices", "one call ms/image", "split ms/image",
                 "one call / split", "same neighbours"], rows))
    write_result("search_threads", {"faiss_openblas": blas, "rounds": args.rounds, "results": results}, started)


if __name__ == "__main__":
    main()

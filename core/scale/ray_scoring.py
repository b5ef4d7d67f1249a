"""Batch scoring on a Ray cluster: a pool of scoring actors, the model loaded once per actor, partitions written by
the driver as batches come back (core/scale/batch_scoring.py: resumable, one partition per batch).

Actors restart when their process dies (``max_restarts=-1``) and a call that was running on a dead actor is
retried on its restarted self (``max_task_retries=-1``): a killed worker costs its batch's time, never a row.
Rows are returned to the driver rather than written by the actors, so the workers need to read the images but
not to share the output folder, and each batch's partition is written exactly once per result.

``address=None`` starts a local cluster with ``LOCAL_CPUS`` logical CPUs (more than this machine's 2 cores: with
only as many CPUs as actors, nothing else Ray schedules can run and the pool waits forever), on loopback.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Sequence

from core.scale.batch_scoring import BatchSummary, batch_id, load_scorer, plan, score_rows, write_partition

LOCAL_CPUS = 4
IN_FLIGHT_PER_ACTOR = 2  # one batch scoring, one queued: the actor never waits on the driver


class ScoringWorker:
    """The actor's body: holds one loaded model and scores batches of paths into rows."""

    def __init__(self, model: str, sha: str, threads: int) -> None:
        # One OpenMP / BLAS team per actor, of ``threads`` threads: actors share the node's cores.
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)
        self.sha = sha
        self.scorer = load_scorer(model, threads)
        self.rss: list[int] = []  # bytes after each batch (benchmarks/ray_scoring.py checks it stays flat)

    def pid(self) -> int:
        return os.getpid()

    def rss_history(self) -> list[int]:
        return list(self.rss)

    def score(self, bid: str, paths: list[str]) -> tuple[str, dict[str, list]]:
        import psutil

        rows = score_rows(self.scorer, paths, self.sha)
        self.rss.append(int(psutil.Process().memory_info().rss))
        return bid, rows


def start_ray(address: str | None, repo_root: Path):
    """Connect to ``address`` (a running cluster), or start a local one on loopback; the workers import this
    repository's ``core`` through PYTHONPATH."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    local = address is None or address.split(":")[0] in {"127.0.0.1", "localhost"}
    if local:
        # Loopback only: Ray otherwise rewrites 127.0.0.1 to this host's network address (read when ray is
        # first imported, so set before that).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    env = {"env_vars": {"PYTHONPATH": str(repo_root), "OMP_WAIT_POLICY": "PASSIVE", "RAY_USAGE_STATS_ENABLED": "0"}}
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, runtime_env=env, logging_level="WARNING", log_to_driver=False)
    else:
        ray.init(num_cpus=LOCAL_CPUS, include_dashboard=False, runtime_env=env, logging_level="WARNING",
                 log_to_driver=False, _node_ip_address="127.0.0.1")
    return True


def make_actors(model: str | Path, sha: str, n_actors: int, threads_per_actor: int) -> list:
    import ray

    remote = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)(ScoringWorker)
    return [remote.remote(str(model), sha, threads_per_actor) for _ in range(n_actors)]


def score_on_ray(model: str | Path, sources: Sequence[str], out: str | Path, address: str | None = None,
                 actors: int = 2, threads_per_actor: int = 1, batch_size: int = 64,
                 on_started: Callable[[list], None] | None = None,
                 progress: Callable[[str, int, int], None] | None = None) -> BatchSummary:
    """Score every image of ``sources`` on Ray into the Parquet folder ``out`` (resumable; see the module doc).

    ``on_started(actors)`` is called once the actors exist (the fault test kills one through it). A cluster this
    call started is shut down at the end; one it connected to is left running."""
    import ray

    from core.config import PROJECT_ROOT

    t0 = time.perf_counter()
    batches, total, already, sha = plan(sources, model, out, batch_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = start_ray(address, PROJECT_ROOT)
    try:
        pool = make_actors(model, sha, max(1, actors), threads_per_actor)
        ray.get([a.pid.remote() for a in pool])  # models loaded before the clock of the first batch
        if on_started is not None:
            on_started(pool)
        todo = list(enumerate(batches))[::-1]
        pending: dict = {}  # object ref -> actor index

        def submit(k: int) -> None:
            if todo:
                _, batch = todo.pop()
                pending[pool[k].score.remote(batch_id(batch), batch)] = k

        for k in range(len(pool)):
            for _ in range(IN_FLIGHT_PER_ACTOR):
                submit(k)
        scored = errors = written = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            k = pending.pop(ready[0])
            bid, cols = ray.get(ready[0])
            write_partition(out, bid, cols)
            written += 1
            scored += len(cols["path"])
            errors += sum(1 for e in cols["error"] if e)
            if progress:
                progress("score", written, len(batches))
            submit(k)
    finally:
        if started:
            ray.shutdown()
    return BatchSummary(str(out), total, already, scored, errors, len(batches), time.perf_counter() - t0, "ray",
                        workers=len(pool))

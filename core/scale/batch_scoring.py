"""Batch scoring into a Parquet folder, resumable: the part of the job that is the same in-process and on Ray.

The output is a folder of partitions ``part-<id>.parquet``, one per batch of images, each written atomically as
its batch finishes. A batch's id is a hash of its paths, so a batch that is scored twice (a retried Ray task
after a killed worker) writes the same partition again instead of adding rows; a rerun after a crash reads the
paths already written and scores only the others. Columns: path, score, decision, score_to_threshold, route,
error, model_sha. Rows of unreadable images carry the error and no score.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from core.errors import WorkbenchError

COLUMNS = ("path", "score", "decision", "score_to_threshold", "route", "error", "model_sha")
PART_PREFIX = "part-"


@dataclass
class BatchSummary:
    """What a batch-scoring run did."""

    out: str
    total: int  # images in the source
    already_done: int  # found in the output folder and skipped (resume)
    scored: int
    errors: int
    batches: int
    seconds: float
    mode: str  # "in-process" or "ray"
    workers: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_source(sources: Sequence[str]) -> list[str]:
    """Image paths of ``sources``: folders (searched recursively), list files (``.txt`` / ``.lst``: one path a
    line, relative ones taken from the list's folder), globs, or image files. Sorted, without duplicates."""
    from core.data.images import IMAGE_EXTENSIONS

    out: list[str] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            out.extend(str(q) for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS and q.is_file())
        elif p.is_file() and p.suffix.lower() in {".txt", ".lst"}:
            for line in p.read_text(encoding="utf-8").splitlines():
                if line.strip() and not line.startswith("#"):
                    q = Path(line.strip())
                    out.append(str(q if q.is_absolute() else p.parent / q))
        elif any(c in src for c in "*?["):
            out.extend(q for q in glob.glob(src, recursive=True) if Path(q).suffix.lower() in IMAGE_EXTENSIONS)
        else:
            out.append(str(p))  # a file (an unreadable one gets an error row)
    return sorted(dict.fromkeys(out))


def model_sha(model: str | Path) -> str:
    """Identifies the model in every row: the bundle manifest's SHA-256, or the model folder's arrays hash."""
    from core.bundle import MANIFEST_NAME, is_bundle
    from core.storage import read_model_config, sha256_file

    if is_bundle(model):
        return sha256_file(Path(model) / MANIFEST_NAME)
    return str(read_model_config(model).get("arrays_sha256", ""))


def load_scorer(model: str | Path, threads: int | None = None):
    """A bundle's scorer (no torch) or a model folder's detector, using ``threads`` threads."""
    from core.bundle import is_bundle

    if is_bundle(model):
        from core.bundle.runtime import load_bundle

        return load_bundle(model, threads=threads)
    from core.config import set_threads
    from core.detectors import load_detector

    set_threads(threads)
    return load_detector(model)


def score_rows(scorer, paths: Sequence[str], sha: str) -> dict[str, list]:
    """Score ``paths`` (in order) and return the rows, column by column."""
    res = scorer.score_paths(list(paths), cache=None)
    from core.detectors.postprocess import score_to_threshold  # torch-free: bundles score through here too

    thr = scorer.threshold
    ratio = score_to_threshold(res.scores, thr)
    by_index = {i: k for k, i in enumerate(res.ok)}
    cols: dict[str, list] = {c: [] for c in COLUMNS}
    for i, path in enumerate(paths):
        k = by_index.get(i)
        s = float(res.scores[k]) if k is not None else None
        cols["path"].append(str(path))
        cols["score"].append(s)
        cols["decision"].append("error" if s is None else ("anomalous" if s >= thr else "normal"))
        cols["score_to_threshold"].append(float(ratio[k]) if k is not None else None)
        cols["route"].append("" if s is None else "heatmap")  # no gate in front: every image is the heatmap's
        cols["error"].append(res.errors.get(i, ""))
        cols["model_sha"].append(sha)
    return cols


def batch_id(paths: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(paths).encode("utf-8")).hexdigest()[:20]


def write_partition(out: Path, bid: str, cols: dict[str, list]) -> Path:
    """One batch's rows as ``out/part-<bid>.parquet``, atomically (a retried batch rewrites the same file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from core.storage import atomic_write_bytes

    schema = pa.schema([("path", pa.string()), ("score", pa.float64()), ("decision", pa.string()),
                        ("score_to_threshold", pa.float64()), ("route", pa.string()), ("error", pa.string()),
                        ("model_sha", pa.string())])
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pydict(cols, schema=schema), buf)
    path = out / f"{PART_PREFIX}{bid}.parquet"
    atomic_write_bytes(path, buf.getvalue())
    return path


def done_paths(out: Path, sha: str) -> set[str]:
    """Paths already in the output folder (a rerun skips them). Refuses a folder written with another model."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    if not out.is_dir():
        return done
    for part in sorted(out.glob(f"{PART_PREFIX}*.parquet")):
        t = pq.read_table(part, columns=["path", "model_sha"])
        shas = set(t.column("model_sha").to_pylist())
        if shas - {sha}:
            raise WorkbenchError(f"{out} holds results of another model (model_sha {sorted(shas)[0][:12]}…).",
                                 "Write to a new --out folder, or remove the old results.")
        done.update(t.column("path").to_pylist())
    return done


def plan(sources: Sequence[str], model: str | Path, out: str | Path,
         batch_size: int) -> tuple[list[list[str]], int, int, str]:
    """(batches still to score, images in the source, images already done, model sha)."""
    if batch_size < 1:
        raise WorkbenchError(f"Batch size {batch_size} is not valid.", "Give --batch-size 1 or more.")
    paths = list_source(sources)
    if not paths:
        raise WorkbenchError(f"No images found in {', '.join(map(str, sources))}.",
                             "Give a folder, a list file (.txt) or a glob of images.")
    sha = model_sha(model)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise WorkbenchError(f"{out} exists and is not a folder.", "Give a folder for the Parquet partitions.")
    done = done_paths(out, sha)
    todo = [p for p in paths if p not in done]
    return [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)], len(paths), len(paths) - len(todo), sha


def score_to_parquet(model: str | Path, sources: Sequence[str], out: str | Path, batch_size: int = 64,
                     threads: int | None = None,
                     progress: Callable[[str, int, int], None] | None = None) -> BatchSummary:
    """Score every image of ``sources`` in this process into the Parquet folder ``out`` (resumable)."""
    t0 = time.perf_counter()
    batches, total, already, sha = plan(sources, model, out, batch_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scorer = load_scorer(model, threads)
    scored = errors = 0
    for j, batch in enumerate(batches):
        cols = score_rows(scorer, batch, sha)
        write_partition(out, batch_id(batch), cols)
        errors += sum(1 for e in cols["error"] if e)
        scored += len(batch)
        if progress:
            progress("score", j + 1, len(batches))
    return BatchSummary(str(out), total, already, scored, errors, len(batches), time.perf_counter() - t0, "in-process")


def read_results(out: str | Path):
    """All partitions of ``out`` as one pyarrow table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = sorted(Path(out).glob(f"{PART_PREFIX}*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in parts]) if parts else None


def summary_json(s: BatchSummary) -> str:
    return json.dumps(s.to_dict(), indent=2)

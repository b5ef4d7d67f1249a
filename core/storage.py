"""Atomic writes and model folders (safetensors arrays + JSON config). No pickle anywhere.

A model folder holds ``config.json`` and ``arrays.safetensors``. The config carries the format version,
the kind of model and the SHA-256 of the arrays file, so a tampered, foreign or newer folder is refused
with a message instead of being half-loaded. Saves are kill-safe (see :func:`save_model_folder`): a folder
may briefly hold ``arrays.<sha256>.safetensors``, the previous arrays, which the loader falls back to.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows: saves are not serialised across processes)
    fcntl = None  # type: ignore[assignment]

import numpy as np

from core.errors import ModelFormatError

# 2: heatmap models may score at a non-square input (config "scale" / "input_hw"); version 1 folders still load
# (square ``image_size``), and a product that reads only version 1 refuses a version-2 model instead of squashing it.
FORMAT_VERSION = 2
CONFIG_NAME = "config.json"
ARRAYS_NAME = "arrays.safetensors"
LOCK_NAME = ".lock"
PRODUCT = "anomaly-workbench"


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True, make_parent: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a torn one.

    Temp file in the same folder, fsync, rename, fsync of the folder. ``durable=False`` skips both fsyncs (the
    rename still keeps readers from a torn file) for data that is checked on read and can be recomputed, such
    as feature-cache entries: the two fsyncs cost ~1 ms per image on this machine's disk. ``make_parent=False``
    skips creating the folder, for a caller that knows it exists.
    """
    path = Path(path)
    if make_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically write a text file (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextmanager
def model_folder_lock(folder: str | Path) -> Iterator[None]:
    """Exclusive lock on a model folder (``.lock`` inside it, flock), held while its files are rewritten.

    Serialises :func:`save_model_folder` and config rewrites (a new threshold) across processes, so two
    writers cannot interleave their arrays and configs. Released by the kernel if the process dies.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _backup_name(sha: str) -> str:
    return f"arrays.{sha}.safetensors"


def save_model_folder(folder: str | Path, kind: str, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Save a model as ``config.json`` + ``arrays.safetensors``, so that a crash at any point leaves a
    folder that loads as the old model or the new one, never a hash mismatch.

    Under the folder's lock: (1) the current arrays file is hard-linked to ``arrays.<old sha>.safetensors``;
    (2) the new arrays are written atomically; (3) the new config (with their hash) is written atomically;
    (4) the backup and temp files of killed saves are removed. A crash between (2) and (3) leaves the old
    config next to the new arrays: :func:`load_model_folder` then finds the old arrays in the backup.
    """
    from safetensors.numpy import save as st_save

    folder = Path(folder)
    blob = st_save({k: np.ascontiguousarray(v) for k, v in arrays.items()})
    full = dict(config)
    full.update(
        product=PRODUCT,
        format_version=FORMAT_VERSION,
        kind=kind,
        arrays_sha256=hashlib.sha256(blob).hexdigest(),
    )
    with model_folder_lock(folder):
        _backup_current_arrays(folder)
        atomic_write_bytes(folder / ARRAYS_NAME, blob)
        atomic_write_json(folder / CONFIG_NAME, full)
        _remove_leftovers(folder)
    return folder


def _backup_current_arrays(folder: Path) -> None:
    cur = folder / ARRAYS_NAME
    try:
        old_sha = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8")).get("arrays_sha256")
    except (OSError, ValueError, AttributeError):
        return
    if not isinstance(old_sha, str) or not re.fullmatch(r"[0-9a-f]{64}", old_sha) or not cur.is_file():
        return
    backup = folder / _backup_name(old_sha)
    if backup.exists():
        return
    try:
        os.link(cur, backup)
    except OSError:  # no hard links here: copy instead (atomically)
        atomic_write_bytes(backup, cur.read_bytes())
    _fsync_dir(folder)


def _remove_leftovers(folder: Path) -> None:
    """Backups and temp files of earlier (killed) saves; called under the lock, after the config is in place."""
    for p in folder.iterdir():
        n = p.name
        if (n.startswith("arrays.") and n.endswith(".safetensors") and n != ARRAYS_NAME) or (
            n.startswith((f".{ARRAYS_NAME}.", f".{CONFIG_NAME}.")) and n.endswith(".tmp")
        ):
            p.unlink(missing_ok=True)


def read_product_json(path: Path, fix: str, foreign_fix: str) -> dict[str, Any]:
    """A JSON object this product wrote (a model config, a bundle manifest), or ModelFormatError naming the file:
    ``fix`` for a file that is not valid JSON, ``foreign_fix`` for one another program wrote."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{path} is not valid JSON ({exc}).", fix) from exc
    if not isinstance(obj, dict) or obj.get("product") != PRODUCT:
        raise ModelFormatError(f"{path} was not written by this product.", foreign_fix)
    return obj


def read_model_config(folder: str | Path) -> dict[str, Any]:
    """Read and check a model folder's config without loading its arrays."""
    folder = Path(folder)
    cfg_path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise ModelFormatError(f"Model folder {folder} does not exist.", "Give the folder that `fit` wrote.")
    if not cfg_path.is_file():
        stray = sorted(p.name for p in folder.iterdir() if p.suffix in {".pkl", ".pickle", ".pt", ".pth", ".ckpt"})
        hint = f" It holds {', '.join(stray)}: pickled files are never loaded, they can run code." if stray else ""
        raise ModelFormatError(
            f"{folder} is not a workbench model: it has no {CONFIG_NAME}.{hint}",
            "Fit a model with `python -m core fit` (or in the app) and load the folder it writes.",
        )
    cfg = read_product_json(cfg_path, "Refit the model.", "Refit the model with this product.")
    version = cfg.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFormatError(
            f"{folder} has model format version {version!r}; this product reads up to {FORMAT_VERSION}.",
            "Update the product, or refit the model with this version.",
        )
    return cfg


def load_model_folder(folder: str | Path,
                      expect_kind: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Load ``(config, arrays)`` from a model folder, checking product, version, kind and hash."""
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    folder = Path(folder)
    cfg = read_model_config(folder)
    if expect_kind is not None and cfg.get("kind") != expect_kind:
        raise ModelFormatError(
            f"{folder} holds a {cfg.get('kind')!r} model, not {expect_kind!r}.", f"Load it as {cfg.get('kind')!r}."
        )
    arr_path = folder / ARRAYS_NAME
    want = cfg.get("arrays_sha256")
    blob = None
    for attempt in range(3):
        blob = _read_arrays(folder, arr_path, want)
        if blob is not None:
            break
        if attempt < 2:  # a save may be in progress: read the config again
            time.sleep(0.05 * (attempt + 1))
            cfg = read_model_config(folder)
            want = cfg.get("arrays_sha256")
    if blob is None:
        if not arr_path.is_file():
            raise ModelFormatError(f"{folder} has no {ARRAYS_NAME}.", "Refit the model; the folder is incomplete.")
        raise ModelFormatError(
            f"{arr_path} does not match the hash in {CONFIG_NAME}: it was changed or only partly written.",
            "Refit the model, or restore the folder from a backup.",
        )
    try:
        arrays = st_load(blob)
    except SafetensorError as exc:
        raise ModelFormatError(f"{arr_path} is not a valid safetensors file ({exc}).", "Refit the model.") from exc
    return cfg, arrays


def _read_arrays(folder: Path, arr_path: Path, want: Any) -> bytes | None:
    """The arrays bytes whose hash is ``want``: the arrays file, else the backup a killed save left."""
    candidates = [arr_path]
    if isinstance(want, str) and re.fullmatch(r"[0-9a-f]{64}", want):
        candidates.append(folder / _backup_name(want))
    for p in candidates:
        try:
            blob = p.read_bytes()
        except OSError:
            continue
        if hashlib.sha256(blob).hexdigest() == want:
            return blob
    return None

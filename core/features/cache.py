"""Content-addressed disk cache of backbone feature maps.

One safetensors file per (image bytes, backbone, layers, input size, weights hash). Each entry stores the
SHA-256 of its tensor bytes in the header metadata; a corrupt entry is detected on read, dropped and
recomputed by the caller. Writes are atomic (temp file + rename), so several processes may share the cache:
the worst case of a race is the same entry computed twice. A size limit is enforced by evicting the least
recently used entries (hits refresh an entry's mtime). The folder is scanned for that only when this object's
writes may have crossed the limit, and at least every ``RESCAN_WRITES`` writes (other processes write too): a
full cache holds ~37,000 entries, and a scan every 64 writes cost more than the writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.config import FEATURE_CACHE_DIR
from core.storage import atomic_write_bytes

DEFAULT_LIMIT_BYTES = int(float(os.environ.get("WORKBENCH_CACHE_LIMIT_GB", "8")) * 1e9)
RESCAN_WRITES = 1024


# Bump when LoadedBackbone.preprocess changes what a backbone sees (v2: antialiased resize).
PREPROCESSING_VERSION = "resize-bilinear-antialias/2"


def feature_key(
    image_sha256: str, backbone: str, layers: tuple[str, ...], size: int | tuple[int, int], weights_sha256: str,
    precision: str = "float32",
) -> str:
    """The cache key: every input that changes the features is in it (preprocessing version included).

    ``size``: the square side, or (height, width) for a non-square input. ``precision`` joins the key only when it
    is not float32 (float32 keys are the ones made before there was a choice)."""
    size_part = int(size) if isinstance(size, (int, np.integer)) else [int(v) for v in size]
    parts = [image_sha256, backbone, list(layers), size_part, weights_sha256, PREPROCESSING_VERSION]
    spec = json.dumps(parts if precision == "float32" else [*parts, precision])
    return hashlib.sha256(spec.encode()).hexdigest()


def _payload_digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.shape).encode() + str(a.dtype).encode())
        h.update(a.reshape(-1).view(np.uint8))  # the same bytes as tobytes(), without copying them
    return h.hexdigest()


@dataclass
class CacheStats:
    """Hits, misses and corrupt entries seen by one cache object."""

    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    evicted: int = 0
    write_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(hits=self.hits, misses=self.misses, corrupt=self.corrupt, evicted=self.evicted,
                    write_errors=self.write_errors)


@dataclass
class FeatureCache:
    """Disk cache of ``{layer: array}`` entries keyed by :func:`feature_key`."""

    root: Path = FEATURE_CACHE_DIR
    limit_bytes: int = DEFAULT_LIMIT_BYTES
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self._written_since_check = 0
        self._bytes_at_check: int | None = None  # the folder's size at the last scan; None: not scanned yet
        self._bytes_since_check = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        """The cached arrays, or None on a miss or a corrupt entry (which is deleted)."""
        from safetensors import safe_open

        path = self._path(key)
        try:
            with safe_open(str(path), framework="numpy") as fh:
                meta = fh.metadata() or {}
                arrays = {name: fh.get_tensor(name) for name in fh.keys()}
        except FileNotFoundError:
            self.stats.misses += 1
            return None
        except Exception:  # unreadable header or truncated body: treat as corrupt
            arrays, meta = None, {}
        if arrays is None or meta.get("sha256") != _payload_digest(arrays):
            self.stats.corrupt += 1
            self.stats.misses += 1
            path.unlink(missing_ok=True)
            return None
        self.stats.hits += 1
        try:
            os.utime(path)  # mark as recently used for LRU eviction
        except OSError:
            pass
        return arrays

    def put(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        """Store arrays atomically, then evict old entries if the cache may be over its limit (module notes)."""
        from safetensors.numpy import save

        arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        blob = save(arrays, metadata={"sha256": _payload_digest(arrays)})
        try:
            self._write(self._path(key), blob)
        except OSError as exc:  # disk full, read-only or no rights: the features are still returned, not cached
            self.stats.write_errors += 1
            if self.stats.write_errors == 1:
                warnings.warn(
                    f"Feature cache {self.root} cannot be written ({exc}); features are computed without caching. "
                    "Fix: free disk space or point WORKBENCH_CACHE at a writable folder.",
                    RuntimeWarning, stacklevel=2,
                )
            return
        self._written_since_check += 1
        self._bytes_since_check += len(blob)
        known = self._bytes_at_check
        due = self._written_since_check >= (64 if known is None else RESCAN_WRITES)
        if due or (known is not None and known + self._bytes_since_check > self.limit_bytes):
            # down to 90 %: a cache at its limit then takes 10 % of it in new entries before the next scan
            self.evict(int(0.9 * self.limit_bytes))

    def _write(self, path: Path, blob: bytes) -> None:
        # Not fsynced: an entry a power cut leaves damaged fails its digest on read and is recomputed. The folder
        # is made only when the write finds it missing (new, or removed by ``cache clear`` elsewhere), not with a
        # mkdir per entry.
        try:
            atomic_write_bytes(path, blob, durable=False, make_parent=False)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, blob, durable=False, make_parent=False)

    def entries(self) -> list[tuple[Path, int, float]]:
        """``(path, bytes, mtime)`` of every entry."""
        out = []
        if not self.root.is_dir():
            return out
        for path in self.root.glob("*/*.safetensors"):
            try:
                st = path.stat()
            except FileNotFoundError:  # removed by another process meanwhile
                continue
            out.append((path, st.st_size, st.st_mtime))
        return out

    def evict(self, limit_bytes: int | None = None) -> int:
        """Delete least recently used entries until the cache is under the limit; returns how many."""
        limit = self.limit_bytes if limit_bytes is None else limit_bytes
        self._remove_stale_temps()
        entries = sorted(self.entries(), key=lambda e: e[2])
        total = sum(e[1] for e in entries)
        removed = 0
        for path, size, _ in entries:
            if total <= limit:
                break
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        self.stats.evicted += removed
        self._bytes_at_check, self._bytes_since_check, self._written_since_check = total, 0, 0
        return removed

    def _remove_stale_temps(self, max_age_s: float = 3600.0) -> int:
        """Temp files of writers killed mid-write (``.<key>.safetensors.*.tmp``) older than ``max_age_s``.

        A live writer renames its temp file within moments, so an hour-old one belongs to a dead process.
        """
        if not self.root.is_dir():
            return 0
        now, n = time.time(), 0
        for path in self.root.glob("*/.*.tmp"):
            try:
                if now - path.stat().st_mtime > max_age_s:
                    path.unlink(missing_ok=True)
                    n += 1
            except OSError:
                continue
        return n

    def info(self) -> dict[str, object]:
        """Entry count, size and limit, for ``python -m core cache info``."""
        entries = self.entries()
        return {
            "root": str(self.root),
            "entries": len(entries),
            "bytes": sum(e[1] for e in entries),
            "limit_bytes": self.limit_bytes,
            "oldest": time.strftime("%Y-%m-%d %H:%M", time.localtime(min(e[2] for e in entries))) if entries else None,
        }

    def clear(self) -> int:
        """Delete every entry; returns how many."""
        n = 0
        for path, _, _ in self.entries():
            path.unlink(missing_ok=True)
            n += 1
        return n

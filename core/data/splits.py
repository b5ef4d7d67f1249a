"""Deterministic, stratified splits by a hash of each record's relative path.

Every record gets ``u = sha1(f"{seed}:{path}")`` read as a number in [0, 1). Within each defect class
the records are ordered by ``u`` and cut at the ratios, so every class - even a class of 3 images -
is spread over the splits in proportion, and the assignment depends only on the paths and the seed
(not on file-system order, machine or Python version). Adding one image moves at most the images
at a cut point of its own class.

Splits (indices into ``records``, ascending):

``train_normal``
    MVTec: every normal image under ``train/``. Folder layout: half of the normal images (the lower
    half by hash; with an odd count the extra one goes to training), the rest join the test pool.
    Empty for domain sets (no normal images).
``train_mix`` / ``val_mix`` / ``test_mix``
    The test pool (all of ``test/`` for MVTec) cut per class at ``ratios`` (default 40/20/40): for the
    supervised parts, threshold tuning and reporting. Disjoint, and their union is the test pool.
``test``
    The whole test pool: the standard MVTec protocol (fit on train/good, report on all of test/).
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from typing import Any, Iterable, Sequence

from core.errors import DatasetError

SPLIT_NAMES = ("train_normal", "train_mix", "val_mix", "test_mix", "test")
MIX_SPLITS = ("train_mix", "val_mix", "test_mix")
DEFAULT_RATIOS = (0.4, 0.2, 0.4)
# When rounding leaves an image to place, prefer reporting, then training, then validation.
_TIE_ORDER = (2, 0, 1)


def hash_unit(key: str, seed: int | str = 0) -> float:
    """``sha1(f"{seed}:{key}")`` as a uniform number in [0, 1)."""
    digest = hashlib.sha1(f"{seed}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    """Validate and normalise (train, val, test) ratios so they sum to 1."""
    try:
        r = tuple(float(x) for x in ratios)
    except (TypeError, ValueError):
        r = ()
    if len(r) != 3 or any(not math.isfinite(x) or x < 0 for x in r) or sum(r) <= 0:
        raise DatasetError(
            f"Split ratios {tuple(ratios) if isinstance(ratios, (list, tuple)) else ratios!r} are not valid.",
            "Give three non-negative numbers for train_mix / val_mix / test_mix, e.g. 0.4, 0.2, 0.4.",
        )
    total = sum(r)
    return (r[0] / total, r[1] / total, r[2] / total)


def allocate(n: int, ratios: Sequence[float]) -> list[int]:
    """Split ``n`` items into counts proportional to ``ratios`` (largest remainder, ties to test first)."""
    exact = [n * r for r in ratios]
    counts = [math.floor(x) for x in exact]
    left = n - sum(counts)
    order = sorted(range(len(ratios)), key=lambda i: (-(exact[i] - counts[i]), _TIE_ORDER.index(i) if i < 3 else i))
    for i in order[:left]:
        counts[i] += 1
    return counts


def _path_of(item: Any) -> str:
    path = getattr(item, "path", None)
    return str(path) if path is not None else str(item)


def compute_splits(
    records: Sequence[Any], layout: str, ratios: Sequence[float] = DEFAULT_RATIOS, seed: int = 0
) -> dict[str, list[int]]:
    """The splits for ``records`` (objects with ``path``, ``label``, ``defect``, ``origin``)."""
    ratios = check_ratios(ratios)
    u = [hash_unit(r.path, seed) for r in records]
    by_hash = lambda idx: (u[idx], records[idx].path)  # noqa: E731

    train_normal: list[int] = []
    pool: list[int] = []
    if layout == "mvtec":
        for i, r in enumerate(records):
            if r.origin == "train":
                if r.label == 0:
                    train_normal.append(i)
            else:
                pool.append(i)
    else:
        normals = sorted((i for i, r in enumerate(records) if r.label == 0), key=by_hash)
        n_train = len(normals) - len(normals) // 2
        train_normal = normals[:n_train]
        pool = normals[n_train:] + [i for i, r in enumerate(records) if r.label != 0]

    groups: dict[str, list[int]] = defaultdict(list)
    for i in pool:
        groups[records[i].defect].append(i)
    mix: dict[str, list[int]] = {name: [] for name in MIX_SPLITS}
    for cls in sorted(groups):
        members = sorted(groups[cls], key=by_hash)
        counts = allocate(len(members), ratios)
        start = 0
        for name, c in zip(MIX_SPLITS, counts):
            mix[name].extend(members[start : start + c])
            start += c

    return {
        "train_normal": sorted(train_normal),
        "train_mix": sorted(mix["train_mix"]),
        "val_mix": sorted(mix["val_mix"]),
        "test_mix": sorted(mix["test_mix"]),
        "test": sorted(pool),
    }


def holdout(records_or_indices: Iterable[Any], fraction: float, salt: str) -> tuple[list, list]:
    """Deterministically hold out ``fraction`` of the items: returns ``(kept, held_out)``.

    Items are ranked by ``sha1(f"{salt}:{key}")`` where ``key`` is ``item.path`` for records and
    ``str(item)`` otherwise (indices, paths); the lowest ``round(fraction * n)`` are held out. With
    ``0 < fraction < 1`` and at least two items, both parts get at least one item. Both lists keep the
    input order. Use it e.g. to hold out a calibration slice of ``train_normal``.
    """
    items = list(records_or_indices)
    f = float(fraction)
    if not math.isfinite(f) or not 0.0 <= f <= 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1], got {fraction!r}")
    n = len(items)
    k = int(math.floor(f * n + 0.5))
    if n >= 2 and 0.0 < f < 1.0:
        k = min(max(k, 1), n - 1)
    ranked = sorted(range(n), key=lambda i: (hash_unit(_path_of(items[i]), salt), _path_of(items[i]), i))
    held = set(ranked[:k])
    kept_list = [items[i] for i in range(n) if i not in held]
    held_list = [items[i] for i in range(n) if i in held]
    return kept_list, held_list

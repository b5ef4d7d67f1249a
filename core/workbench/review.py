"""Review feedback: what an engineer tells a model from the Heatmaps and Score images pages.

"Mark as normal" on a false alarm adds the image to the model's normal set without a refit (PatchCore: its
patches join the bank by the coreset rule; PaDiM: its Gaussians are updated) and fixes the threshold again;
"mark as defect" on a miss adds the image to the labels the supervised gate trains on. Every change first keeps
the model as it was as a version (``<model>/versions/vNNN/``: config.json + arrays.safetensors, restorable), and
every decision is a row of ``<model>/review/log.csv`` (who, what, when, scores before and after). Marked images are
copied into ``<model>/review/images/`` so the model never depends on an upload that is gone.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from core.errors import WorkbenchError
from core.storage import ARRAYS_NAME, CONFIG_NAME, atomic_write_bytes, atomic_write_json, model_folder_lock

LOG_COLUMNS = ("time", "who", "action", "image", "score_before", "score_after", "threshold_before",
               "threshold_after", "version_kept", "note")
_WHO_RE = re.compile(r"^[\w .@-]{1,60}$")
STORAGE_KEYS = ("product", "format_version", "kind", "arrays_sha256")


@dataclass
class ReviewOutcome:
    """What a mark did: the version kept, and each image's score before and after."""

    action: str
    version_kept: int | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    change: dict[str, Any] = field(default_factory=dict)


def _review_dir(folder: Path) -> Path:
    return Path(folder) / "review"


def check_reviewer(who: str) -> str:
    """A reviewer's name as typed: 1-60 letters, digits, spaces, '.', '@', '_' or '-'."""
    who = (who or "").strip()
    if not _WHO_RE.match(who):
        raise WorkbenchError(f"{who[:60]!r} is not a usable reviewer name.",
                             "Type 1-60 letters, digits, spaces, '.', '@', '_' or '-'.")
    return who


def _keep_image(folder: Path, name: str, data: bytes) -> Path:
    """A copy of a marked image inside the model folder (name from its content hash, so a re-mark is one file)."""
    from core.data.images import IMAGE_EXTENSIONS, check_scorable, read_image_bytes

    check_scorable(read_image_bytes(data, name), name)
    suffix = Path(name).suffix.lower() if Path(name).suffix.lower() in IMAGE_EXTENSIONS else ".png"
    dest = _review_dir(folder) / "images" / f"{hashlib.sha256(data).hexdigest()[:16]}{suffix}"
    if not dest.exists():
        atomic_write_bytes(dest, data)
    return dest


# ------------------------------------------------------------------------------------------------------------
# Versions


def _versions_dir(folder: Path) -> Path:
    return Path(folder) / "versions"


def list_versions(folder: str | Path) -> list[dict[str, Any]]:
    """Kept versions, newest first: number, when, why."""
    root = _versions_dir(Path(folder))
    out = []
    for d in sorted(root.glob("v[0-9][0-9][0-9]"), reverse=True):
        try:
            meta = json.loads((d / "version.json").read_text())
        except (OSError, ValueError):
            meta = {}
        out.append({"version": int(d.name[1:]), "kept": meta.get("time", ""), "before": meta.get("before", ""),
                    "who": meta.get("who", "")})
    return out


def keep_version(folder: str | Path, before: str, who: str) -> int:
    """Copy the model as it is now into ``versions/vNNN`` (the next number) and return NNN."""
    folder = Path(folder)
    root = _versions_dir(folder)
    n = 1 + max((int(d.name[1:]) for d in root.glob("v[0-9][0-9][0-9]")), default=0)
    tmp = root / f".v{n:03d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with model_folder_lock(folder):
        for name in (CONFIG_NAME, ARRAYS_NAME):
            shutil.copy2(folder / name, tmp / name)
    atomic_write_json(tmp / "version.json", {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "before": before,
                                             "who": who})
    tmp.rename(root / f"v{n:03d}")
    return n


def restore_version(folder: str | Path, version: int, who: str) -> int:
    """Make version ``version`` the model again; the model as it was is kept as a new version first (returned)."""
    folder = Path(folder)
    who = check_reviewer(who)
    src = _versions_dir(folder) / f"v{int(version):03d}"
    if not (src / CONFIG_NAME).is_file() or not (src / ARRAYS_NAME).is_file():
        raise WorkbenchError(f"{folder.name} has no version {version}.", "Pick one from the list of versions.")
    kept = keep_version(folder, f"restore of version {version}", who)
    with model_folder_lock(folder):
        atomic_write_bytes(folder / ARRAYS_NAME, (src / ARRAYS_NAME).read_bytes())
        atomic_write_bytes(folder / CONFIG_NAME, (src / CONFIG_NAME).read_bytes())
    _log(folder, who, "restore", f"version {version}", note=f"the model before the restore is version {kept}",
         version_kept=kept)
    return kept


# ------------------------------------------------------------------------------------------------------------
# Marks


def mark_normal(folder: str | Path, images: Sequence[tuple[str, bytes]], who: str, cache=None) -> ReviewOutcome:
    """The images are normal: they join the model (no refit), the threshold is fixed again, and the scores of the
    marked images before and after are returned; the previous model is kept as a version."""
    from core.features import FeatureCache
    from core.storage import read_model_config
    from core.workbench.models import load_model

    folder = Path(folder)
    who = check_reviewer(who)
    kept_paths = [_keep_image(folder, name, data) for name, data in images]
    cache = cache if cache is not None else FeatureCache()
    det = load_model(folder)
    before = det.score_paths([str(p) for p in kept_paths], cache=cache).scores
    version = keep_version(folder, f"mark as normal: {', '.join(n for n, _ in images)[:200]}", who)
    change = det.add_normal_images([str(p) for p in kept_paths], cache=cache)
    after = det.score_paths([str(p) for p in kept_paths], cache=cache).scores
    cfg = read_model_config(folder)
    extras = {k: v for k, v in cfg.items() if k not in det.config() and k not in STORAGE_KEYS}
    extras.setdefault("review", {})
    extras["review"] = {**extras["review"], "normals_added": int(extras["review"].get("normals_added", 0))
                        + len(kept_paths)}
    det.normalisation.threshold_source = f"fixed again after review by {who} ({time.strftime('%Y-%m-%d %H:%M')})"
    det.save(folder, extra=extras)
    out = ReviewOutcome("mark as normal", version, change=change)
    for (name, _), p, b, a in zip(images, kept_paths, before, after):
        row = {"image": name, "kept_as": p.name, "score_before": float(b), "score_after": float(a),
               "threshold_before": change.get("threshold_before"), "threshold_after": change.get("threshold_after")}
        out.rows.append(row)
        _log(folder, who, "mark as normal", name, b, a, change.get("threshold_before"), change.get("threshold_after"),
             version, change.get("threshold", ""))
    return out


def mark_defect(folder: str | Path, images: Sequence[tuple[str, bytes]], who: str) -> ReviewOutcome:
    """The images are defective (missed): they join the labels the cascade's gate trains on at its next fit."""
    folder = Path(folder)
    who = check_reviewer(who)
    out = ReviewOutcome("mark as defect", None)
    labels = _review_dir(folder) / "labels.csv"
    rows = review_labels(folder)
    for name, data in images:
        p = _keep_image(folder, name, data)
        if not any(r["path"] == p.name for r in rows):
            rows.append({"path": p.name, "label": 1, "image": name})
        out.rows.append({"image": name, "kept_as": p.name})
        _log(folder, who, "mark as defect", name, note="for the gate's next fit")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["path", "label", "image"])
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(labels, buf.getvalue().encode())
    return out


def review_labels(folder: str | Path) -> list[dict[str, Any]]:
    """Images marked as defects (``path`` relative to ``review/images``, ``label`` 1)."""
    path = _review_dir(Path(folder)) / "labels.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [{"path": r["path"], "label": int(r["label"]), "image": r.get("image", "")} for r in csv.DictReader(fh)]


def review_label_images(folder: str | Path) -> tuple[list, list[int]]:
    """The decoded images and labels of :func:`review_labels` (for the gate's training set)."""
    from core.data import read_image

    images, labels = [], []
    for r in review_labels(folder):
        images.append(read_image(_review_dir(Path(folder)) / "images" / r["path"]))
        labels.append(int(r["label"]))
    return images, labels


# ------------------------------------------------------------------------------------------------------------
# The log


def _log(folder: Path, who: str, action: str, image: str, score_before=None, score_after=None,
         threshold_before=None, threshold_after=None, version_kept=None, note: str = "") -> None:
    path = _review_dir(folder) / "log.csv"
    old = path.read_text() if path.is_file() else ""
    buf = io.StringIO()
    w = csv.writer(buf)
    if not old:
        w.writerow(LOG_COLUMNS)
    fmt = lambda v: "" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))  # noqa: E731
    w.writerow([time.strftime("%Y-%m-%d %H:%M:%S"), who, action, image, fmt(score_before), fmt(score_after),
                fmt(threshold_before), fmt(threshold_after), fmt(version_kept), note])
    atomic_write_bytes(path, (old + buf.getvalue()).encode())


def review_log_csv(folder: str | Path) -> str:
    """The review decisions as CSV text (the header alone when there are none)."""
    path = _review_dir(Path(folder)) / "log.csv"
    return path.read_text() if path.is_file() else ",".join(LOG_COLUMNS) + "\n"

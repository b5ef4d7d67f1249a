"""Uploaded dataset zips: extracted safely, size-limited, into ``<cache>/uploads/<sha256 prefix>/``.

``UPLOADS_DIR`` and the size limits are read at call time from this module; tests that move them patch
``core.workbench.zip_uploads`` (a patch on the package's re-exported copy reaches nothing).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath

from core.config import CACHE_DIR
from core.errors import DatasetError

UPLOADS_DIR = CACHE_DIR / "uploads"
MAX_ZIP_BYTES = int(float(os.environ.get("WORKBENCH_MAX_ZIP_MB", "500")) * 1e6)  # the zip itself
MAX_UNZIPPED_BYTES = int(float(os.environ.get("WORKBENCH_MAX_UNZIPPED_MB", "2000")) * 1e6)
MAX_ZIP_MEMBERS = 50_000
# Images barely compress (PNG/JPEG are compressed already); a zip that would grow over 100x is a zip bomb.
# Checked only past MIN_RATIO_CHECK_BYTES, so a small zip of flat masks or BMPs is never refused for its ratio.
MAX_COMPRESSION_RATIO = float(os.environ.get("WORKBENCH_MAX_ZIP_RATIO", "100"))
MIN_RATIO_CHECK_BYTES = 20_000_000
# All extracted uploads together; the oldest not used for IN_USE_SECONDS are evicted to make room.
MAX_UPLOADS_BYTES = int(float(os.environ.get("WORKBENCH_MAX_UPLOADS_MB", "4000")) * 1e6)
IN_USE_SECONDS = 30 * 60


def _safe_member_path(name: str, zip_name: str = "The zip") -> PurePosixPath | None:
    """The member's relative path, or None for a folder entry; raises for unsafe names."""
    raw = name.replace("\\", "/")
    if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw) or "\x00" in raw:
        raise DatasetError(
            f"{zip_name} holds an entry with an absolute path ({name!r}); it was not extracted.",
            "Zip the dataset folder with relative paths (e.g. `cd parent && zip -r data.zip mydataset`).",
        )
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise DatasetError(
            f"{zip_name} holds an entry that climbs out of its folder ({name!r}); it was not extracted.",
            "Zip the dataset folder with relative paths and no '..' parts.",
        )
    if not parts or raw.endswith("/"):
        return None
    return PurePosixPath(*parts)


def extract_zip(data: bytes, name: str = "upload.zip") -> Path:
    """Extract an uploaded dataset zip safely into ``cache/uploads/<hash>/`` and return the dataset folder.

    Refused from the zip's directory, before anything is written: absolute paths, ``..`` parts, symlinks, more
    than ``MAX_ZIP_MEMBERS`` entries, more than ``MAX_UNZIPPED_BYTES`` of declared content, and a compression
    ratio over ``MAX_COMPRESSION_RATIO`` (a zip bomb). While extracting, the bytes are counted again (a lying
    header cannot bypass the limit). The extraction goes to a temporary folder that is renamed into place only
    once it holds a dataset with images; on every refusal it is deleted, so nothing is left on disk. Older
    uploads not used for ``IN_USE_SECONDS`` are evicted to keep all uploads under ``MAX_UPLOADS_BYTES``.
    """
    if len(data) > MAX_ZIP_BYTES:
        raise DatasetError(
            f"{name} is {len(data) / 1e6:.0f} MB; uploads are limited to {MAX_ZIP_BYTES / 1e6:.0f} MB.",
            "Upload a smaller zip, or copy the folder under the data root (../shared/datasets) instead.",
        )
    digest = hashlib.sha256(data).hexdigest()[:16]
    target = UPLOADS_DIR / digest
    if target.is_dir():
        root = _find_dataset_root(target)
        if root is not None:
            touch_upload(root)
            return root
        shutil.rmtree(target, ignore_errors=True)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{name} is not a readable zip file ({exc}).",
                           "Upload a .zip of the dataset folder.") from None
    with zf:
        members = zf.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            raise DatasetError(
                f"{name} holds {len(members)} entries; at most {MAX_ZIP_MEMBERS} are extracted.",
                "Upload a smaller dataset or put the folder under the data root.",
            )
        plan: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        declared = 0
        for m in members:
            rel = _safe_member_path(m.filename, name)
            if rel is None:
                continue
            mode = (m.external_attr >> 16) & 0o170000
            if mode == stat.S_IFLNK:
                raise DatasetError(
                    f"{name} holds a symbolic link ({m.filename!r}); links are not extracted.",
                    "Zip the real files (zip -r without --symlinks).",
                )
            if rel.parts[0] == "__MACOSX" or rel.name.startswith("._"):
                continue
            declared += m.file_size
            plan.append((m, rel))
        check_zip_sizes(name, len(data), declared, sum(m.compress_size for m, _ in plan))
        _make_room(declared)
        UPLOADS_DIR.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest}.", dir=UPLOADS_DIR))
        try:
            written = 0
            base = tmp.resolve()
            for m, rel in plan:
                dest = (tmp / Path(*rel.parts)).resolve()
                if base not in dest.parents:  # belt and braces after the name checks
                    raise DatasetError(f"Zip entry {m.filename!r} of {name} would land outside its folder.",
                                       "Re-zip the folder.")
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(dest, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > MAX_UNZIPPED_BYTES:
                            raise DatasetError(
                                f"{name} unpacks to more than {MAX_UNZIPPED_BYTES / 1e6:.0f} MB "
                                "(more than its headers declare).",
                                "Upload a smaller, well-formed zip.",
                            )
                        out.write(chunk)
            found = _find_dataset_root(tmp)
            if found is None:
                raise DatasetError(
                    f"{name} does not hold a dataset in MVTec layout (no train/good or test/ folder found).",
                    "Zip a folder that holds train/good/, test/good/, test/<defect>/ (and optionally ground_truth/).",
                )
            _check_indexable(found, name)
            try:
                os.rename(tmp, target)
            except OSError:  # another session extracted the same zip meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
        except zipfile.BadZipFile as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DatasetError(f"{name} is damaged ({exc}).", "Zip the folder again and upload it.") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    root = _find_dataset_root(target)
    assert root is not None
    touch_upload(root)
    return root


def check_zip_sizes(name: str, zip_bytes: int, declared: int, packed: int) -> None:
    """Refuse, from the zip's directory alone, content over ``MAX_UNZIPPED_BYTES`` and a compression ratio over
    ``MAX_COMPRESSION_RATIO`` (a zip bomb): before anything is read or written."""
    if declared > MAX_UNZIPPED_BYTES:
        raise DatasetError(
            f"{name} unpacks to {declared / 1e6:.0f} MB; the limit is {MAX_UNZIPPED_BYTES / 1e6:.0f} MB.",
            "Upload a smaller dataset or put the folder under the data root.",
        )
    if declared > MIN_RATIO_CHECK_BYTES and declared > MAX_COMPRESSION_RATIO * max(packed, 1):
        raise DatasetError(
            f"{name} would unpack {zip_bytes / 1e6:.1f} MB into {declared / 1e6:.0f} MB "
            f"({declared / max(packed, 1):.0f}x); zips that grow more than {MAX_COMPRESSION_RATIO:.0f}x are "
            "refused (images barely compress, so this is a zip bomb or not a zip of images).",
            "Upload a zip of the image files themselves.",
        )


def _check_indexable(root: Path, name: str) -> None:
    """Index the extracted folder now, so a zip that holds no images is refused before it is kept."""
    from core.data import index_dataset

    try:
        index_dataset(root)
    except DatasetError as exc:
        raise DatasetError(f"{name}: {exc.problem}", exc.fix) from None


def _upload_folder(path: Path) -> Path | None:
    """The top folder (``UPLOADS_DIR/<hash>``) that ``path`` lies in, if it is under the uploads folder."""
    try:
        rel = Path(path).resolve().relative_to(UPLOADS_DIR.resolve())
    except ValueError:
        return None
    return UPLOADS_DIR / rel.parts[0] if rel.parts else None


def touch_upload(path: str | Path) -> None:
    """Mark an extracted upload as in use now (the app calls it on every run that shows it): it is not evicted
    while used within ``IN_USE_SECONDS``."""
    top = _upload_folder(Path(path))
    if top is not None and top.is_dir():
        try:
            os.utime(top)
        except OSError:
            pass


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def uploads_bytes() -> int:
    """Bytes held by all extracted uploads."""
    return _folder_bytes(UPLOADS_DIR) if UPLOADS_DIR.is_dir() else 0


def _make_room(needed: int) -> None:
    """Evict the oldest uploads not in use until ``needed`` more bytes fit under ``MAX_UPLOADS_BYTES``;
    refuse (nothing written yet) when the uploads in use leave no room."""
    if needed > MAX_UPLOADS_BYTES:
        raise DatasetError(
            f"The zip unpacks to {needed / 1e6:.0f} MB, over the {MAX_UPLOADS_BYTES / 1e6:.0f} MB kept for uploads.",
            "Put the dataset under a data root instead (or raise WORKBENCH_MAX_UPLOADS_MB and restart).",
        )
    if not UPLOADS_DIR.is_dir():
        return
    folders = sorted((p for p in UPLOADS_DIR.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    sizes = {p: _folder_bytes(p) for p in folders}
    total = sum(sizes.values())
    now = time.time()
    for p in folders:
        if total + needed <= MAX_UPLOADS_BYTES:
            return
        if p.name.startswith(".") or now - p.stat().st_mtime < IN_USE_SECONDS:
            continue  # being extracted, or in use: never evicted
        shutil.rmtree(p, ignore_errors=True)
        total -= sizes[p]
    if total + needed > MAX_UPLOADS_BYTES:
        raise DatasetError(
            f"Uploads in use already hold {total / 1e6:.0f} MB; this zip needs {needed / 1e6:.0f} MB more than the "
            f"{MAX_UPLOADS_BYTES / 1e6:.0f} MB kept for uploads.",
            "Try again later, or put the dataset under a data root.",
        )


def _find_dataset_root(folder: Path, depth: int = 3) -> Path | None:
    """``folder`` if it is in MVTec layout, else the first such folder up to ``depth`` levels below."""
    if (folder / "train" / "good").is_dir() or (folder / "test").is_dir():
        return folder
    if depth <= 0:
        return None
    try:
        subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX")))
    except OSError:
        return None
    for sub in subs:
        found = _find_dataset_root(sub, depth - 1)
        if found is not None:
            return found
    return None

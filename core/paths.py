"""Where the product keeps things, and the one check every typed or uploaded path goes through.

Everything a user types that becomes a path (a folder box in the app, a name that becomes a folder) is checked
here before the file system sees it: its length first (a 5,000-character name would otherwise end in an
``OSError: File name too long``), then, once resolved with symbolic links followed, that it lies under one of the
folders allowed for that use. A link under an allowed folder that leads outside is refused like the outside
path itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from core.config import PROJECT_ROOT
from core.errors import WorkbenchError

MAX_PATH_CHARS = 1024  # a typed path
MAX_PART_BYTES = 255  # one folder or file name (the limit of common Linux file systems)


def models_dir() -> Path:
    """Where saved models live (``WORKBENCH_MODELS_DIR`` or ``<project>/models``), created on demand."""
    root = Path(os.environ.get("WORKBENCH_MODELS_DIR") or PROJECT_ROOT / "models")
    root.mkdir(parents=True, exist_ok=True)
    return root


def runs_dir() -> Path:
    """Where run folders (experiments, evaluations, GAIN comparisons) are written: ``<project>/runs``."""
    return PROJECT_ROOT / "runs"


def short(text: str, limit: int = 60) -> str:
    """``text`` quoted for a message, cut to ``limit`` characters (a message must not echo 5,000 of them)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"… ({len(text)} characters)"


def check_typed_path(text: str | Path, what: str = "folder") -> Path:
    """``text`` as a Path if its length and characters can be a path here; else a WorkbenchError saying why.

    Nothing on disk is touched: this is the check that comes before ``resolve()`` or ``is_dir()``.
    """
    s = str(text).strip()
    if not s:
        raise WorkbenchError(f"The {what} is empty.", f"Type the path of a {what}.")
    if "\x00" in s or any(ord(ch) < 32 for ch in s):
        raise WorkbenchError(f"The {what} {short(s)} holds control characters.", "Type a plain path.")
    if len(s) > MAX_PATH_CHARS:
        raise WorkbenchError(f"The {what} {short(s)} is too long.",
                             f"Use a path of at most {MAX_PATH_CHARS} characters.")
    long_part = next((p for p in Path(s).expanduser().parts if len(p.encode("utf-8", "replace")) > MAX_PART_BYTES),
                     None)
    if long_part is not None:
        raise WorkbenchError(f"The {what} {short(s)} has a name of {len(long_part)} characters.",
                             f"Each folder or file name may have at most {MAX_PART_BYTES} bytes.")
    return Path(s).expanduser()


def is_within(path: Path, roots: Iterable[Path]) -> bool:
    """True when the resolved ``path`` is one of ``roots`` (resolved) or lies below one."""
    p = path.resolve()
    return any(p == r or r in p.parents for r in (Path(r).resolve() for r in roots))


def confine(text: str | Path, roots: Iterable[Path], what: str, fix: str, base: Path = PROJECT_ROOT,
            purpose: str = "use") -> Path:
    """``text`` resolved (relative paths against ``base``, links followed) if it lies under one of ``roots``.

    Else a WorkbenchError naming the allowed folders (what the app may ``purpose``) and ``fix``. Used for reads and
    writes alike.
    """
    p = check_typed_path(text, what)
    p = (p if p.is_absolute() else base / p).resolve()
    allowed = [Path(r).resolve() for r in roots]
    if any(p == r or r in p.parents for r in allowed):
        return p
    raise WorkbenchError(
        f"The {what} {short(str(text))} is outside the folders the app may {purpose} "
        f"({', '.join(map(str, allowed))}).",
        fix,
    )

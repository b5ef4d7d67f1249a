"""Finding a dataset by path or by name under the configured data roots ("demo" is the built-in one)."""

from __future__ import annotations

import os
from pathlib import Path

from core.config import DATA_ROOTS
from core.errors import DatasetError


def available_datasets() -> dict[str, Path]:
    """Name -> folder for the demo and every dataset folder under the data roots, each folder listed once."""
    from core.data.demo import ensure_demo

    found: dict[str, Path] = {"demo": ensure_demo()}
    seen = {found["demo"].resolve()}  # a folder reachable under two names (demo = demo_data/demo_surface) once
    for root in DATA_ROOTS:
        if not root.is_dir():
            continue
        for sub in sorted(root.iterdir()):
            if sub.is_dir() and not sub.name.startswith(".") and ((sub / "test").is_dir() or (sub / "train").is_dir()):
                if sub.name not in found and sub.resolve() not in seen:
                    seen.add(sub.resolve())
                    found[sub.name] = sub
    return found


def resolve_dataset(name_or_path: str | Path) -> Path:
    """A dataset folder from a path, or from a name under the data roots (``demo`` builds the demo)."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    if str(name_or_path) == "demo":
        from core.data.demo import ensure_demo

        return ensure_demo()
    for root in DATA_ROOTS:
        if (root / str(name_or_path)).is_dir():
            return root / str(name_or_path)
    names = ", ".join(available_datasets())
    raise DatasetError(
        f"No dataset folder {str(name_or_path)!r}: it is neither a folder nor a name under "
        f"{', '.join(str(r) for r in DATA_ROOTS)}.",
        f"Give a folder in MVTec or folder-per-label layout, or one of: {names}.",
    )


def browsable_roots(extra: tuple[Path, ...] = ()) -> list[Path]:
    """The folders the app may read datasets from: the data roots, the demo and ``extra`` (e.g. the uploads)."""
    from core.data.demo import demo_root

    return [Path(p).resolve() for p in (*DATA_ROOTS, demo_root(), *extra)]


def check_browsable(path: str | Path, extra: tuple[Path, ...] = ()) -> Path:
    """``path`` resolved, if it lies under one of :func:`browsable_roots`; else a DatasetError.

    The app reads dataset folders named by session state and by model files (a model records the folder it
    was fitted on); a model made elsewhere must not point the app at an arbitrary folder on this machine.
    Symbolic links are resolved first, so a link under a data root that leads outside is refused too.
    """
    from core.paths import check_typed_path

    p = check_typed_path(path, "dataset folder").resolve()
    roots = browsable_roots(extra)
    if any(p == r or r in p.parents for r in roots):
        return p
    raise DatasetError(
        f"The folder {str(path)!r} is outside the folders the app may read ({', '.join(map(str, roots))}).",
        "Put the dataset under a data root (or list its parent in WORKBENCH_DATA_ROOTS, separated by "
        f"{os.pathsep!r}) and restart the app, or upload it as a zip.",
    )

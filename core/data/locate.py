"""Finding a dataset by path or by name under the configured data roots ("demo" is the built-in one)."""

from __future__ import annotations

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

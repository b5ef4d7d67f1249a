"""Memory checks made before a big job starts, so it is refused with advice instead of being killed."""

from __future__ import annotations

from core.errors import ResourceLimitError


def available_bytes() -> int:
    """Memory the process can still use (psutil's ``available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(needed: int, what: str, fix: str = "", headroom: float = 0.8) -> None:
    """Raise ResourceLimitError when ``needed`` bytes exceed ``headroom`` of the available memory."""
    avail = available_bytes()
    if needed > headroom * avail:
        raise ResourceLimitError(
            f"{what} needs about {needed / 1e9:.1f} GB, but only {avail / 1e9:.1f} GB is free.",
            fix or "Use fewer or smaller images (image size), fewer layers, or a smaller coreset ratio.",
        )

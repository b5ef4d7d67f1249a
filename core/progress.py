"""A tiny progress protocol shared by the CLI (tqdm) and the app (st.progress).

Long jobs call ``progress(stage, done, total)``; the engine never knows who draws it.
"""

from __future__ import annotations

from typing import Callable, Protocol


class Progress(Protocol):
    def __call__(self, stage: str, done: int, total: int) -> None: ...


def no_progress(stage: str, done: int, total: int) -> None:
    """The default: report nothing."""


class TqdmProgress:
    """One tqdm bar per stage, for the CLI (writes to stderr)."""

    def __init__(self) -> None:
        self._bars: dict[str, object] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self._bars.get(stage)
        if bar is None and done >= total:  # a repeated final report of a finished stage
            return
        if bar is None:
            bar = self._bars[stage] = tqdm(total=total, desc=stage, unit="it", leave=True, dynamic_ncols=True)
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()
            self._bars.pop(stage, None)


ProgressFn = Callable[[str, int, int], None]

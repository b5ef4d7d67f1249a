"""User-facing errors: each names the problem and the fix, so the CLI and the app can show it as is."""

from __future__ import annotations


class WorkbenchError(Exception):
    """An error caused by input or environment that a user can fix.

    ``problem`` says what is wrong (naming the file or setting), ``fix`` says what to do.
    The CLI prints ``str(err)`` without a traceback; the app shows it in an error box.
    """

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}" + (f" Fix: {fix}" if fix else ""))


class ImageReadError(WorkbenchError):
    """An image file could not be decoded or is unsafe to decode."""


class DatasetError(WorkbenchError):
    """A dataset folder is missing, empty or laid out in a way the product cannot read."""


class ModelFormatError(WorkbenchError):
    """A model folder is foreign, tampered with, of an unknown version, or made with other weights."""


class BackboneUnavailableError(WorkbenchError):
    """No weights can be had for a backbone (offline and no package that ships them)."""


class ResourceLimitError(WorkbenchError):
    """A job would need more memory or pixels than allowed; refused before starting."""

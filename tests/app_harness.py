"""Drive a page under AppTest with real uploaded bytes (AppTest cannot drive ``st.file_uploader``).

The harness script replaces only ``st.file_uploader`` (the browser's file picker) with the files found in a folder
at each rerun, then runs the real page; everything after the upload is the real page and the real model. Used by
``tests/test_app.py``, ``tests/test_input_safety.py`` and by ``benchmarks/soak.py`` (uploads through the app's path).
The harness lives in a temporary folder beside a link to ``app_pages/``, because ``st.Page`` paths (the home
page's navigation) are resolved against the folder of the script AppTest runs.
"""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
SCORE_PAGE = ROOT / "app_pages" / "5_Score_images.py"

_HARNESS = """
from pathlib import Path

import streamlit as st


class _Upload:
    def __init__(self, path):
        self.name = path.name.split("__", 1)[1]  # files are stored as NNNN__name to keep the upload order
        self._data = path.read_bytes()
        self.size = len(self._data)

    def getvalue(self):
        return self._data


def _uploads(*a, **k):
    files = [_Upload(p) for p in sorted(Path(FOLDER).iterdir())]
    if k.get("accept_multiple_files"):
        return files
    return files[0] if files else None


_real = st.file_uploader
st.file_uploader = _uploads
try:
    with open(PAGE, encoding="utf-8") as fh:
        exec(compile(fh.read(), PAGE, "exec"), {"__name__": "__main__", "__file__": PAGE})
finally:
    st.file_uploader = _real
"""


def set_uploads(folder: Path, files: list[tuple[str, bytes]]) -> None:
    """Make ``files`` (name, bytes) the upload the page sees at its next run."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for i, (name, data) in enumerate(files):
        (folder / f"{i:04d}__{name}").write_bytes(data)


def page_with_uploads(work: Path, files: list[tuple[str, bytes]], page: Path,
                      timeout: float = 180) -> tuple[AppTest, Path]:
    """``page`` under AppTest with ``files`` as what its file uploader returns; returns the AppTest and the upload
    folder (call :func:`set_uploads` on it and ``at.run()`` to upload other files in the same session)."""
    work.mkdir(parents=True, exist_ok=True)
    folder = work / "uploads"
    set_uploads(folder, files)
    pages = work / "app_pages"
    if not pages.exists():
        pages.symlink_to(ROOT / "app_pages", target_is_directory=True)
    script = work / f"harness_{page.stem}.py"
    script.write_text(f"FOLDER = {str(folder)!r}\nPAGE = {str(page)!r}\n" + _HARNESS)
    return AppTest.from_file(str(script), default_timeout=timeout), folder


def score_page_with_uploads(work: Path, files: list[tuple[str, bytes]], model_dir: Path,
                            timeout: float = 180) -> tuple[AppTest, Path]:
    """The Score images page for ``model_dir`` with ``files`` uploaded (see :func:`page_with_uploads`)."""
    at, folder = page_with_uploads(work, files, SCORE_PAGE, timeout)
    at.session_state["model_dir"] = str(model_dir)
    return at, folder

"""A bundle's manifest.json: what the bundle holds, how its input is prepared, and the SHA-256 of every file.

Checked on load, before any file is used: the product, the bundle format version (a bundle of another version is
refused, not half-read), every listed file present with its hash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.bundle import MANIFEST_NAME
from core.errors import ModelFormatError
from core.storage import read_product_json, sha256_file

# 2: the arrays may hold ``score_scale`` (the image score's layer weighting), which a version-1 reader would ignore
# and so score differently; version-1 bundles read as before.
BUNDLE_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
FORMATS = ("onnx", "openvino")
# Runtime per format, with the pip requirement its error message names (pins as in requirements.txt).
RUNTIMES = {"onnx": ("onnxruntime", "onnxruntime==1.23.2"), "openvino": ("openvino", "openvino==2026.4.1")}


def read_manifest(folder: str | Path, check_files: bool = True) -> dict[str, Any]:
    """The checked manifest of the bundle in ``folder``: product, format version and (``check_files``) the
    SHA-256 of every file it lists."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ModelFormatError(f"{folder} is not an exported bundle: it has no {MANIFEST_NAME}.",
                               "Export one with `python -m core export MODEL_DIR --out BUNDLE_DIR`.")
    man = read_product_json(path, "Export the bundle again.", "Export the bundle with this product.")
    version = man.get("bundle_format_version")
    if version not in READABLE_FORMAT_VERSIONS:
        raise ModelFormatError(
            f"{folder} is a bundle of format version {version!r}; this product reads versions "
            f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))}.",
            "Export the model again with this product version (or score it with the version that exported it).",
        )
    files = man.get("files")
    if not isinstance(files, dict) or not files:
        raise ModelFormatError(f"{path} lists no files.", "Export the bundle again.")
    if check_files:
        check_files_match(folder, files)
    return man


def check_files_match(folder: Path, files: dict[str, str]) -> None:
    """Every file present, inside the bundle, with the SHA-256 the manifest gives."""
    for name, want in files.items():
        p = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ModelFormatError(f"{folder / MANIFEST_NAME} names a file outside the bundle ({name}).",
                                   "Export the bundle again; do not edit its manifest.")
        if not p.is_file():
            raise ModelFormatError(f"{folder} lacks {name}, which its manifest lists.",
                                   "Copy the whole bundle folder, or export it again.")
        got = sha256_file(p)
        if got != want:
            raise ModelFormatError(
                f"{p} does not match the SHA-256 in {MANIFEST_NAME} (file {got[:12]}…, manifest {str(want)[:12]}…): "
                "it was changed or only partly copied.",
                "Copy the bundle again from where it was exported, or export it again.",
            )

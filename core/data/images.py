"""Safe image and mask reading: every input becomes uint8 H x W x 3 RGB, or a clear error.

Rules, in order:

1. The header is read lazily (``Image.open``) and its pixel count checked against ``max_pixels``
   *before* any pixel data is decoded, so a decompression bomb (a tiny file claiming 50000 x 50000
   pixels) is refused with :class:`ResourceLimitError` instead of eating the machine's memory.
   Pillow's own bomb guard (about 179 Mpx) also applies, whatever ``max_pixels`` says.
2. Only raster formats that Pillow decodes itself are accepted (PNG, JPEG, BMP, TIFF, WebP, GIF,
   PNM); formats that would call out to other programs (EPS via Ghostscript, ...) are never opened.
3. EXIF orientation is applied (``ImageOps.exif_transpose``), so a phone photo reads upright.
   Masks get the same treatment so they stay aligned with their images.
4. Colour modes are converted to RGB: gray ("L", "1") is replicated to three channels, palette
   images are expanded, alpha ("RGBA", "LA", "PA") is dropped (the colour values under it are kept),
   CMYK/YCbCr use Pillow's conversion. High bit-depth single-channel modes ("I;16*", "I", "F") are
   scaled **per image** by the image's own range: ``(v - min) / (max - min) * 255``, rounded; a
   constant image becomes all zeros. This keeps the contrast of 12/16-bit industrial cameras that
   use only part of the 16-bit range, at the cost of absolute intensities not being comparable
   between images.
5. Any decoding failure (empty file, truncated data, text with an image extension, unknown format,
   bad EXIF, ...) becomes :class:`ImageReadError` naming the file, the problem and a fix. No raw
   PIL/OSError traceback escapes.
"""

from __future__ import annotations

import io
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import DatasetError, ImageReadError, ResourceLimitError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
MAX_PIXELS_DEFAULT = 40_000_000
# The smallest side a heatmap model scores: two cells of the coarsest (stride-16) feature layer. A smaller
# image is upsampled from a handful of pixels into a score that means nothing (a 1 x 1 PNG scored 45.4).
MIN_SCORABLE_SIDE = 32

# Formats Pillow decodes in-process. Anything else (EPS -> Ghostscript, ...) is refused.
# (JPEG files with several pictures open as MPO through the JPEG entry.)
_WANTED_FORMATS = ("PNG", "JPEG", "BMP", "DIB", "TIFF", "WEBP", "GIF", "PPM")
_allowed: list[str] | None = None


def _allowed_formats() -> list[str]:
    global _allowed
    if _allowed is None:
        Image.init()
        _allowed = [f for f in _WANTED_FORMATS if f in Image.OPEN]
    return _allowed
_HIGH_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F", "I;16S", "I;32", "I;32B", "I;32L"}
_FIX_REEXPORT = "Open the file in an image viewer; if it does not show, re-copy or re-export it as PNG or JPEG."


def read_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS_DEFAULT, keep_gray: bool = False) -> np.ndarray:
    """Read an image file as a uint8 ``H x W x 3`` RGB array (see the module notes for the rules).

    ``keep_gray``: single-channel images come back as ``H x W`` (the same values each RGB channel would hold).
    For the feature pass, whose preprocessing resizes one channel and repeats it instead of resizing three.
    """
    path = Path(path)
    name = str(path)
    _check_file(path, name)
    with _open_checked(path, name, max_pixels) as im:
        return _to_pixels(im, name, keep_gray)


def read_image_bytes(
    data: bytes, name: str, *, max_pixels: int = MAX_PIXELS_DEFAULT, keep_gray: bool = False
) -> np.ndarray:
    """Like :func:`read_image`, for an upload held in memory; ``name`` is used in messages."""
    if not data:
        raise ImageReadError(
            f"Cannot read image {name}: the upload is empty (0 bytes).",
            "Upload the file again; it was probably cut off during the transfer.",
        )
    with _open_checked(io.BytesIO(data), name, max_pixels, head=bytes(data[:64])) as im:
        return _to_pixels(im, name, keep_gray)


def check_scorable(img: np.ndarray, name: str, min_side: int = MIN_SCORABLE_SIDE) -> np.ndarray:
    """``img`` unchanged if a model can score it; an ImageReadError for a too small or a blank image.

    Blank: every pixel holds the same value (a lens cap, a dead camera, an empty frame); such an image is an
    acquisition fault to report, not a part to call normal or anomalous.
    """
    h, w = img.shape[:2]
    if min(h, w) < min_side:
        raise ImageReadError(
            f"{name} is {w} x {h} pixels, smaller than the {min_side} x {min_side} a model can score.",
            f"Score images at least {min_side} pixels on each side (the camera's full frame or a larger crop).",
        )
    if img.size and img.min() == img.max():
        raise ImageReadError(
            f"{name} is blank: every pixel has the value {int(img.flat[0])}, so there is no part to score.",
            "Check the camera, lighting and file export; score the image once it shows the part.",
        )
    return img


def read_mask(
    path: str | os.PathLike,
    shape: tuple[int, int] | None = None,
    *,
    max_pixels: int = MAX_PIXELS_DEFAULT,
) -> np.ndarray:
    """Read a ground-truth mask as a bool ``H x W`` array.

    A pixel is defect where any channel is non-zero (0/255 and 0/1 masks both work); for lossy
    JPEG masks the cut is at half range (>= 128) so compression noise is not counted.
    If ``shape`` (H, W) is given and differs from the mask's size a :class:`DatasetError` names both
    sizes: masks are never resized silently.
    """
    path = Path(path)
    name = str(path)
    _check_file(path, name, what="mask")
    with _open_checked(path, name, max_pixels) as im:
        fmt = (im.format or "").upper()
        try:
            arr = _mask_values(im)
        except Exception as exc:  # noqa: BLE001  (any conversion failure is a bad file)
            raise ImageReadError(
                f"Cannot read mask {name}: its colour mode {im.mode!r} could not be converted ({exc}).",
                "Save the mask as an 8-bit gray PNG with 0 for good and 255 for defect pixels.",
            ) from None
    if fmt in {"JPEG", "MPO"} and arr.dtype == np.uint8:
        mask = arr >= 128
    else:
        mask = arr > 0
    if shape is not None:
        want = (int(shape[0]), int(shape[1]))
        if mask.shape != want:
            raise DatasetError(
                f"Mask {name} is {mask.shape[1]}x{mask.shape[0]} (W x H) but its image is "
                f"{want[1]}x{want[0]}.",
                "Masks must have exactly the size of their image; re-export the mask at the image's size "
                "(it is not resized automatically, that would misplace defect pixels).",
            )
    return np.ascontiguousarray(mask)


# --------------------------------------------------------------------------------------------------


def _check_file(path: Path, name: str, what: str = "image") -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageReadError(
            f"Cannot read {what} {name}: the file does not exist.",
            "Check the path and that the dataset folder is mounted; re-index the dataset if files moved.",
        ) from None
    except OSError as exc:
        raise ImageReadError(
            f"Cannot read {what} {name}: {exc.strerror or exc}.", "Check the file's permissions."
        ) from None
    if path.is_dir():
        raise ImageReadError(f"Cannot read {what} {name}: it is a folder, not a file.", "Give an image file.")
    if st.st_size == 0:
        raise ImageReadError(
            f"Cannot read {what} {name}: the file is empty (0 bytes).",
            "Re-copy the file; it was probably cut off during a copy or download.",
        )


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def _read_head(source) -> bytes:
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as fh:
                return fh.read(64)
        return b""
    except OSError:
        return b""


@contextmanager
def _open_checked(source, name: str, max_pixels: int, head: bytes | None = None) -> Iterator[Image.Image]:
    """Open lazily, check the size before decoding, decode, apply EXIF orientation."""
    try:
        im = Image.open(source, formats=_allowed_formats())
    except Image.DecompressionBombError as exc:
        m = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(m.group(1)) if m else None
        size = f"{pixels:,} pixels" if pixels else "too many pixels"
        limit = max_pixels if pixels is None or pixels > max_pixels else 2 * int(Image.MAX_IMAGE_PIXELS or 0)
        raise ResourceLimitError(
            f"Refused to decode image {name}: its header claims {size}, over the limit of {limit:,} pixels "
            "(a possible decompression bomb).",
            "Downscale or tile the image before loading it; if it is genuine, raise max_pixels.",
        ) from None
    except UnidentifiedImageError:
        head = head if head is not None else _read_head(source)
        if _looks_like_text(head):
            preview = head[:24].decode("utf-8", "replace").strip().replace("\n", " ")
            problem = f"the file is text, not an image (it starts with {preview!r})"
        else:
            problem = "its format is not recognised (supported: PNG, JPEG, BMP, TIFF)"
        raise ImageReadError(f"Cannot read image {name}: {problem}.", _FIX_REEXPORT) from None
    except PermissionError as exc:
        raise ImageReadError(f"Cannot read image {name}: permission denied ({exc.strerror}).",
                             "Check the file's permissions.") from None
    except MemoryError:
        raise ResourceLimitError(f"Ran out of memory opening image {name}.", "Downscale the image.") from None
    except Exception as exc:  # noqa: BLE001  (corrupt headers raise all kinds of errors)
        raise ImageReadError(f"Cannot read image {name}: the header is corrupt ({_short(exc)}).",
                             _FIX_REEXPORT) from None
    try:
        w, h = im.size
        if w <= 0 or h <= 0:
            raise ImageReadError(f"Cannot read image {name}: its header gives a size of {w}x{h}.", _FIX_REEXPORT)
        if w * h > max_pixels:
            raise ResourceLimitError(
                f"Refused to decode image {name}: it is {w}x{h} = {w * h:,} pixels, over the limit of "
                f"{max_pixels:,} pixels.",
                "Downscale or tile the image before loading it, or raise max_pixels if the machine has the memory.",
            )
        try:
            im.load()
            out = ImageOps.exif_transpose(im)
            if out is None:  # pragma: no cover  (in_place=False always returns an image)
                out = im
            out.load()
        except MemoryError:
            raise ResourceLimitError(
                f"Ran out of memory decoding image {name} ({w}x{h}).", "Downscale the image or lower max_pixels."
            ) from None
        except Exception as exc:  # noqa: BLE001
            msg = str(exc)
            if "truncated" in msg or "broken data stream" in msg or isinstance(exc, EOFError):
                problem = f"the image data is truncated or corrupt ({_short(exc)})"
                fix = "Re-copy the file; it was probably cut off during a copy, download or upload."
            else:
                problem = f"decoding failed ({_short(exc)})"
                fix = _FIX_REEXPORT
            raise ImageReadError(f"Cannot read image {name}: {problem}.", fix) from None
        yield out
    finally:
        im.close()


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Per-image min-max scaling of a high bit-depth single-channel array to 0..255."""
    a = arr.astype(np.float64, copy=False)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, np.uint8)
    lo = float(a[finite].min())
    hi = float(a[finite].max())
    a = np.where(finite, a, lo)
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.clip(np.rint((a - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


_GRAY_MODES = {"L", "1", "LA", "La"}


def _to_pixels(im: Image.Image, name: str, keep_gray: bool) -> np.ndarray:
    """uint8 H x W x 3 RGB, or H x W for a single-channel image when ``keep_gray``."""
    try:
        mode = im.mode
        if mode in _HIGH_DEPTH_MODES or mode.startswith("I;"):
            gray = _scale_to_uint8(np.asarray(im))
            if gray.ndim != 2:
                raise ValueError(f"unexpected array shape {gray.shape}")
            pixels = gray if keep_gray else np.repeat(gray[:, :, None], 3, axis=2)
        elif keep_gray and mode in _GRAY_MODES:
            pixels = np.asarray(im if mode == "L" else im.convert("L"), dtype=np.uint8)
        else:
            if mode == "RGB":
                conv = im
            elif mode in {"P", "PA"}:
                conv = im.convert("RGBA").convert("RGB")
            elif mode in {"1", "LA", "La"}:
                conv = im.convert("L").convert("RGB")
            else:  # L, RGBA, RGBa, CMYK, YCbCr, LAB, HSV, RGBX, ...
                conv = im.convert("RGB")
            pixels = np.asarray(conv, dtype=np.uint8)
        if not (pixels.ndim == 3 and pixels.shape[2] == 3 or keep_gray and pixels.ndim == 2):
            raise ValueError(f"unexpected array shape {pixels.shape}")
        return np.array(pixels, dtype=np.uint8, order="C", copy=True)
    except MemoryError:
        raise ResourceLimitError(f"Ran out of memory converting image {name}.", "Downscale the image.") from None
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(
            f"Cannot read image {name}: its colour mode {im.mode!r} could not be converted to RGB ({_short(exc)}).",
            "Re-export the image as 8-bit RGB or gray PNG.",
        ) from None


def _mask_values(im: Image.Image) -> np.ndarray:
    """2-D array of mask values: the max over channels, in the file's own integer range."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.uint8)
    if mode in _HIGH_DEPTH_MODES or mode.startswith("I;"):
        arr = np.asarray(im)
        arr = np.where(np.isfinite(arr), arr, 0) if arr.dtype.kind == "f" else arr
        return arr
    if mode == "L":
        return np.asarray(im, dtype=np.uint8)
    if mode in {"LA", "La"}:
        return np.asarray(im.convert("L"), dtype=np.uint8)
    if mode in {"P", "PA"}:
        im = im.convert("RGBA").convert("RGB")
    elif mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).max(axis=2)


def image_shape(path: str | os.PathLike) -> tuple[int, int] | None:
    """(H, W) from the image header (nothing decoded), as :func:`read_image` will return it (EXIF rotation by 90
    degrees swaps W and H), or None when it cannot be read (the image itself is then reported where it is read)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):
                w, h = h, w
            return int(h), int(w)
    except Exception:  # noqa: BLE001
        return None

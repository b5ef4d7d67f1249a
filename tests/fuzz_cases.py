"""Bad-input generator and harness, shared by ``tests/test_fuzz_inputs.py`` and ``benchmarks/fuzz_inputs.py``.

Every generated input has a *kind* (zero-byte file, truncated JPEG, 50000 x 50000 header, zip-slip, tampered
model, ...) and an expectation: ``reject`` (must be refused with a message), ``accept`` (an odd but valid
input that must be read) or ``either`` (e.g. a corrupt JPEG whose damage may or may not be decodable).

The harness feeds inputs to the engine's entry points and classifies each outcome:

* ``accepted``  - read/scored without an error;
* ``rejected``  - refused with a :class:`WorkbenchError` (or an error row) whose message names the input;
* ``crash``     - any other exception, an error message that does not name the input, or a broken
  expectation (a bomb accepted, an RGBA image refused).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import traceback
import zipfile
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from PIL import Image

from core.errors import WorkbenchError

# ------------------------------------------------------------------------------------------------------------
# Image bytes


def _png(arr: np.ndarray, mode: str | None = None, **kw) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(buf, "PNG", **kw)
    return buf.getvalue()


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _rgb(rng: np.random.Generator, h: int = 32, w: int = 32) -> np.ndarray:
    base = rng.normal(128, 12, (h, w, 3))
    return base.clip(0, 255).astype(np.uint8)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_header_bomb(w: int, h: int, mode_byte: int = 2) -> bytes:
    """A valid-looking PNG whose IHDR claims ``w x h`` pixels, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, mode_byte, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def jpeg_with_size(src: bytes, w: int, h: int) -> bytes:
    """``src`` (a baseline JPEG) with its SOF0 frame header patched to claim ``w x h``."""
    i = src.find(b"\xff\xc0")
    if i < 0:
        return src
    b = bytearray(src)
    b[i + 5 : i + 7] = struct.pack(">H", h)
    b[i + 7 : i + 9] = struct.pack(">H", w)
    return bytes(b)


def bmp_header_bomb(w: int, h: int) -> bytes:
    data = b"\x00" * 64
    header = struct.pack("<2sIHHI", b"BM", 54 + len(data), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, len(data), 2835, 2835, 0, 0)
    return header + info + data


def png_text_bomb() -> bytes:
    """A small PNG with a zTXt chunk that inflates to 64 MB (Pillow's text-chunk limit must refuse it)."""
    good = _png(np.zeros((8, 8, 3), np.uint8))
    ztxt = b"Comment\x00\x00" + zlib.compress(b"A" * (64 << 20), 9)
    end = good.rfind(b"IEND") - 4
    return good[:end] + _chunk(b"zTXt", ztxt) + good[end:]


def exif_rotated_jpeg(rng: np.random.Generator, orientation: int) -> bytes:
    im = Image.fromarray(_rgb(rng, 24, 40))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(im, "JPEG", exif=exif.tobytes(), quality=90)


def bad_exif_jpeg(rng: np.random.Generator) -> bytes:
    good = _save(Image.fromarray(_rgb(rng)), "JPEG", quality=90)
    junk = bytes(rng.integers(0, 256, 40, dtype=np.uint8))
    app1 = b"Exif\x00\x00MM\x00\x2a" + junk
    seg = b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1
    return good[:2] + seg + good[2:]


def _flip(data: bytes, rng: np.random.Generator, n: int, start: int) -> bytes:
    b = bytearray(data)
    for pos in rng.integers(min(start, len(b) - 1), len(b), n):
        b[pos] ^= int(rng.integers(1, 256))
    return bytes(b)


@dataclass
class ImageCase:
    kind: str
    name: str  # file name (with extension); used as the upload name and the file name on disk
    data: bytes
    expect: str  # "reject" | "accept" | "either"


UNICODE_NAMES = ["défaut_ñ_画像", "Überprüfung—ок", "😀 emoji", "ﬁle\u200bzero-width", "日本語 テスト"]

# kind -> (expectation, maker(rng, i) -> (stem, ext, bytes))
def _image_makers() -> dict[str, tuple[str, Callable[[np.random.Generator, int], tuple[str, str, bytes]]]]:
    def good_png(rng):
        return _png(_rgb(rng))

    def good_jpeg(rng):
        return _save(Image.fromarray(_rgb(rng)), "JPEG", quality=90)

    def truncated(fmt):
        def make(rng, i):
            data = good_png(rng) if fmt == "png" else good_jpeg(rng)
            cut = int(rng.integers(1, len(data) - 1))
            return f"truncated_{i}", f".{fmt}", data[:cut]
        return make

    def corrupt(fmt):
        def make(rng, i):
            data = good_png(rng) if fmt == "png" else good_jpeg(rng)
            return f"corrupt_{i}", f".{fmt}", _flip(data, rng, int(rng.integers(1, 12)), 8 if fmt == "png" else 2)
        return make

    def text(rng, i):
        samples = [b"hello, this is not an image\n", b"<svg xmlns='http://www.w3.org/2000/svg'></svg>",
                   b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", b"{\"json\": true}",
                   "défaut,ok\n1,2\n".encode()]
        ext = [".png", ".jpg", ".jpeg", ".tif", ".bmp"][i % 5]
        return f"text_{i}", ext, samples[i % len(samples)] * int(rng.integers(1, 4))

    def random_bytes(rng, i):
        return (f"random_{i}", [".png", ".jpg", ".tiff", ".bmp"][i % 4],
                bytes(rng.integers(0, 256, int(rng.integers(1, 4000)), dtype=np.uint8)))

    def tiff16(rng, i):
        arr = rng.integers(0, 4096 if i % 2 else 65535, (24, 24)).astype(np.uint16)
        if i % 3 == 0:
            arr[:] = 1000  # constant image
        return f"gray16_{i}", ".tif", _save(Image.fromarray(arr), "TIFF")

    def png16(rng, i):
        arr = rng.integers(0, 65535, (20, 20)).astype(np.uint16)
        return f"png16_{i}", ".png", _save(Image.fromarray(arr), "PNG")

    def tiff_float(rng, i):
        arr = rng.normal(0, 1, (16, 16)).astype(np.float32)
        if i % 3 == 1:
            arr[0, :4] = [np.nan, np.inf, -np.inf, np.nan]
        if i % 3 == 2:
            arr[:] = np.nan
        return f"float_{i}", ".tiff", _save(Image.fromarray(arr, "F"), "TIFF")

    def rgba(rng, i):
        arr = np.concatenate([_rgb(rng), rng.integers(0, 256, (32, 32, 1), dtype=np.uint8)], axis=2)
        return f"rgba_{i}", ".png", _png(arr, "RGBA")

    def la(rng, i):
        arr = rng.integers(0, 256, (16, 16, 2), dtype=np.uint8)
        return f"la_{i}", ".png", _save(Image.fromarray(arr, "LA"), "PNG")

    def cmyk(rng, i):
        return f"cmyk_{i}", ".jpg", _save(Image.fromarray(_rgb(rng)).convert("CMYK"), "JPEG", quality=85)

    def palette(rng, i):
        im = Image.fromarray(_rgb(rng)).convert("P", palette=Image.Palette.ADAPTIVE, colors=int(rng.integers(2, 256)))
        if i % 2:
            im.info["transparency"] = 0
            return f"palette_{i}", ".png", _save(im, "PNG", transparency=0)
        return f"palette_{i}", ".png", _save(im, "PNG")

    def bilevel(rng, i):
        return f"bilevel_{i}", ".png", _save(Image.fromarray(rng.integers(0, 2, (16, 16)).astype(bool)), "PNG")

    def one_pixel(rng, i):
        arr = rng.integers(0, 256, (1, 1, 3), dtype=np.uint8)
        return (f"onepx_{i}", [".png", ".jpg", ".bmp", ".tif"][i % 4],
                _save(Image.fromarray(arr), ["PNG", "JPEG", "BMP", "TIFF"][i % 4]))

    def bomb(rng, i):
        w, h = [(50_000, 50_000), (60_000, 1_000), (1_000, 60_000), (65_535, 65_535)][i % 4]
        kind = i % 3
        if kind == 0:
            return f"bomb_{i}", ".png", png_header_bomb(w, h)
        if kind == 1:
            return f"bomb_{i}", ".jpg", jpeg_with_size(good_jpeg(rng), w, h)
        return f"bomb_{i}", ".bmp", bmp_header_bomb(w, h)

    def zero_size_header(rng, i):
        return f"zerodim_{i}", ".png", png_header_bomb(0 if i % 2 else 10, 10 if i % 2 else 0)

    def text_chunk_bomb(rng, i):
        return f"ztxt_bomb_{i}", ".png", _PNG_TEXT_BOMB

    def exif_rot(rng, i):
        return f"exif_rot{i % 8 + 1}_{i}", ".jpg", exif_rotated_jpeg(rng, i % 8 + 1)

    def exif_bad(rng, i):
        return f"badexif_{i}", ".jpg", bad_exif_jpeg(rng)

    def unicode_name(rng, i):
        return f"{UNICODE_NAMES[i % len(UNICODE_NAMES)]}_{i}", ".png", good_png(rng)

    def space_name(rng, i):
        return ["   ", " a b  c ", "name with  spaces", "\t tab"][i % 4] + f" {i} ", ".png", good_png(rng)

    def wrong_ext(rng, i):
        return f"pngasjpg_{i}", [".jpg", ".tif", ".bmp"][i % 3], good_png(rng)

    def aspect(rng, i):
        w, h = [(4000, 1), (1, 4000), (3000, 2)][i % 3]
        return f"aspect_{i}", ".png", _png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))

    def gif(rng, i):
        frames = [Image.fromarray(_rgb(rng, 12, 12)).convert("P") for _ in range(3)]
        buf = io.BytesIO()
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
        return f"anim_{i}", ".png", buf.getvalue()

    return {
        "zero_byte": ("reject", lambda rng, i: (f"empty_{i}", [".png", ".jpg", ".tif"][i % 3], b"")),
        "truncated_jpeg": ("either", truncated("jpg")),
        "truncated_png": ("either", truncated("png")),
        "corrupt_jpeg": ("either", corrupt("jpg")),
        "corrupt_png": ("either", corrupt("png")),
        "text_as_image": ("reject", text),
        "random_bytes": ("reject", random_bytes),
        "tiff_16bit": ("accept", tiff16),
        "png_16bit": ("accept", png16),
        "tiff_float": ("accept", tiff_float),
        "rgba": ("accept", rgba),
        "gray_alpha": ("accept", la),
        "cmyk_jpeg": ("accept", cmyk),
        "palette_png": ("accept", palette),
        "bilevel_png": ("accept", bilevel),
        "one_pixel": ("accept", one_pixel),
        "bomb_header": ("reject", bomb),
        "zero_size_header": ("reject", zero_size_header),
        "png_text_bomb": ("reject", text_chunk_bomb),
        "exif_rotated": ("accept", exif_rot),
        "bad_exif": ("either", exif_bad),
        "unicode_name": ("accept", unicode_name),
        "space_name": ("accept", space_name),
        "wrong_extension": ("accept", wrong_ext),
        "extreme_aspect": ("accept", aspect),
        "animated_gif": ("either", gif),
    }


_PNG_TEXT_BOMB = png_text_bomb()
IMAGE_KINDS = tuple(_image_makers())


def image_cases(per_kind: int, seed: int = 0, kinds: Iterable[str] | None = None) -> list[ImageCase]:
    """``per_kind`` bad/odd image files of every kind (deterministic for a seed)."""
    makers = _image_makers()
    rng = np.random.default_rng(seed)
    out = []
    for kind in kinds or makers:
        expect, make = makers[kind]
        for i in range(per_kind):
            stem, ext, data = make(rng, i)
            out.append(ImageCase(kind, stem + ext, data, expect))
    return out


def good_images(n: int, seed: int = 1, size: int = 48) -> list[np.ndarray]:
    """Tiny 'normal' images: smooth noise around mid-grey with a faint texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for _ in range(n):
        tex = 10 * np.sin(xx / 3.0 + rng.uniform(0, 6)) + rng.normal(0, 4, (size, size))
        out.append(np.repeat((128 + tex)[:, :, None], 3, axis=2).clip(0, 255).astype(np.uint8))
    return out


def write_png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


# ------------------------------------------------------------------------------------------------------------
# Datasets (folders)


@dataclass
class DatasetCase:
    kind: str
    root: Path
    expect: str  # "reject" (index or fit must raise naming the folder) | "accept" | "warn" (indexed, warning given)
    fit_expect: str = "either"  # fitting: "reject" | "accept" | "either"


def dataset_cases(base: Path, seed: int = 0, copies: int = 1) -> list[DatasetCase]:
    """Bad or odd dataset folders under ``base``."""
    goods = good_images(6, seed=seed + 7, size=32)
    out: list[DatasetCase] = []

    def mvtec(root: Path, n_train: int = 4, defects: tuple[str, ...] = ("scratch",)) -> Path:
        for i in range(n_train):
            write_png(root / "train" / "good" / f"{i:03d}.png", goods[i % len(goods)])
        for i in range(2):
            write_png(root / "test" / "good" / f"{i:03d}.png", goods[(i + 3) % len(goods)])
        for d in defects:
            for i in range(2):
                write_png(root / "test" / d / f"{i:03d}.png", goods[i])
        return root

    for c in range(copies):
        b = base / f"set{c}"
        # empty folder
        (b / "empty").mkdir(parents=True)
        out.append(DatasetCase("empty_folder", b / "empty", "reject", "reject"))
        # missing path and a file given as dataset
        out.append(DatasetCase("missing_folder", b / "does_not_exist", "reject", "reject"))
        (b / "afile.png").write_bytes(b"x")
        out.append(DatasetCase("file_not_folder", b / "afile.png", "reject", "reject"))
        # only hidden files
        (b / "hidden" / ".cache").mkdir(parents=True)
        write_png(b / "hidden" / ".cache" / "x.png", goods[0])
        out.append(DatasetCase("only_hidden", b / "hidden", "reject", "reject"))
        # no train/good: test only (domain set) -> index ok, fit refused
        r = b / "no_train_good"
        for i in range(3):
            write_png(r / "test" / "scratch" / f"{i}.png", goods[i])
        out.append(DatasetCase("no_train_good", r, "accept", "reject"))
        # train/good exists but is empty
        r = mvtec(b / "empty_train_good", n_train=0)
        (r / "train" / "good").mkdir(parents=True, exist_ok=True)
        out.append(DatasetCase("empty_train_good", r, "accept", "reject"))
        # one class only (folders layout: good/ only; mvtec: train/good only)
        r = b / "one_class_folders"
        for i in range(4):
            write_png(r / "good" / f"{i}.png", goods[i])
        out.append(DatasetCase("one_class", r, "accept", "either"))
        r = b / "one_class_mvtec"
        for i in range(4):
            write_png(r / "train" / "good" / f"{i}.png", goods[i])
        out.append(DatasetCase("one_class", r, "accept", "either"))
        # loose images with no label folders
        r = b / "loose"
        for i in range(3):
            write_png(r / f"{i}.png", goods[i])
        out.append(DatasetCase("no_label_folders", r, "reject", "reject"))
        # symlink loops
        r = mvtec(b / "symlink_loop")
        try:
            os.symlink("..", r / "train" / "good" / "loop")
            os.symlink(r / "test", r / "test" / "scratch" / "back")
            os.symlink("nowhere.png", r / "test" / "good" / "broken.png")
            os.symlink("self.png", r / "test" / "good" / "self.png")
        except OSError:
            pass
        out.append(DatasetCase("symlink_loop", r, "warn", "accept"))
        # masks of the wrong size, corrupt masks
        r = mvtec(b / "bad_masks")
        write_png(r / "ground_truth" / "scratch" / "000_mask.png", np.zeros((7, 9), np.uint8))
        (r / "ground_truth" / "scratch" / "001_mask.png").write_bytes(b"not a mask")
        out.append(DatasetCase("mask_wrong_size", r, "accept", "accept"))
        # unicode and spaces in folder and file names
        r = b / "dätä sét 画像"
        for i in range(4):
            write_png(r / "train" / "good" / f" ïmg {i} .png", goods[i])
        write_png(r / "test" / "krätzer 1" / "a b.png", goods[0])
        out.append(DatasetCase("unicode_dataset", r, "accept", "accept"))
        # all training images unreadable
        r = b / "all_corrupt"
        for i, case in enumerate(image_cases(1, seed=seed + c,
                                             kinds=["zero_byte", "text_as_image", "bomb_header", "random_bytes"])):
            p = r / "train" / "good" / f"{i}_{case.name}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(case.data)
        out.append(DatasetCase("all_train_corrupt", r, "accept", "reject"))
        # a mix: good training images plus one of every bad kind -> fit goes on with the good ones
        r = mvtec(b / "mixed", n_train=5)
        for case in image_cases(1, seed=seed + 100 + c):
            if case.expect == "accept":
                continue
            p = r / "train" / "good" / f"bad_{case.kind}_{case.name}"
            p.write_bytes(case.data)
        out.append(DatasetCase("mixed_bad_train", r, "accept", "accept"))
        # a folder of datasets (user pointed one level too high)
        r = b / "datasets_parent"
        mvtec(r / "a")
        mvtec(r / "b")
        out.append(DatasetCase("folder_of_datasets", r, "reject", "reject"))
        # foreign formats only
        r = b / "webp_only"
        (r / "good").mkdir(parents=True)
        for i in range(3):
            (r / "good" / f"{i}.webp").write_bytes(b"RIFF0000WEBP")
        out.append(DatasetCase("foreign_formats_only", r, "reject", "reject"))
    return out


# ------------------------------------------------------------------------------------------------------------
# Zips


@dataclass
class ZipCase:
    kind: str
    name: str
    data: bytes
    expect: str  # "reject" | "accept"


def _zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def _good_tree(prefix: str = "ds/") -> list[tuple[str, bytes]]:
    g = good_images(3, seed=3, size=16)
    return [(f"{prefix}train/good/{i}.png", _png(g[i])) for i in range(3)] + [(f"{prefix}test/good/0.png", _png(g[0]))]


def zip_cases(per_kind: int, seed: int = 0, unzipped_limit: int = 2_000_000) -> list[ZipCase]:
    """Hostile or broken zips. ``unzipped_limit`` should match ``MAX_UNZIPPED_BYTES`` of
    ``core.workbench.zip_uploads`` in the run."""
    rng = np.random.default_rng(seed)
    out: list[ZipCase] = []
    for i in range(per_kind):
        tree = _good_tree()
        out.append(ZipCase("zip_slip", f"slip_{i}.zip",
                           _zip(tree + [(["../evil.png", "ds/../../evil.png", "a/../../../etc/x"][i % 3], b"x")]),
                           "reject"))
        out.append(ZipCase("zip_absolute", f"abs_{i}.zip",
                           _zip(tree + [(["/tmp/evil.png", "C:/evil.png", "\\\\evil.png"][i % 3], b"x")]), "reject"))
        info = zipfile.ZipInfo(f"ds/train/good/link{i}.png")
        info.external_attr = (0o120777 << 16)
        out.append(ZipCase("zip_symlink", f"link_{i}.zip", _zip(tree + [(info, b"/etc/passwd")]), "reject"))
        # a zip bomb: highly compressible content well over the unzipped limit
        out.append(ZipCase("zip_bomb", f"bomb_{i}.zip",
                           _zip(tree + [("ds/train/good/big.png", b"\0" * (unzipped_limit + 1_000_000))]), "reject"))
        # lying header: declared sizes small, real content large
        lying = bytearray(_zip(tree + [("ds/train/good/liar.png", b"\0" * (unzipped_limit + 500_000))]))
        out.append(ZipCase("zip_bomb_lying_header", f"liar_{i}.zip", _patch_zip_sizes(bytes(lying)), "reject"))
        out.append(ZipCase("not_a_zip", f"notzip_{i}.zip", bytes(rng.integers(0, 256, 200, dtype=np.uint8)), "reject"))
        good = _zip(tree)
        out.append(ZipCase("truncated_zip", f"trunc_{i}.zip", good[: int(rng.integers(10, len(good) - 10))], "reject"))
        out.append(ZipCase("zip_no_dataset", f"nodata_{i}.zip",
                           _zip([("readme.txt", b"hi"), ("pics/a.png", _png(good_images(1)[0]))]), "reject"))
        out.append(ZipCase("zip_empty", f"empty_{i}.zip", _zip([]), "reject"))
        out.append(ZipCase("zip_unicode_ok", f"ünï cödé {i}.zip",
                           _zip(_good_tree("dätä sét/") + [("__MACOSX/._x", b"junk")]), "accept"))
    return out


def _patch_zip_sizes(data: bytes) -> bytes:
    """Rewrite every declared uncompressed size to 1 KB (local and central headers)."""
    b = bytearray(data)
    i = 0
    while (i := b.find(b"PK\x03\x04", i)) >= 0:
        b[i + 22 : i + 26] = struct.pack("<I", 1024)
        i += 4
    i = 0
    while (i := b.find(b"PK\x01\x02", i)) >= 0:
        b[i + 24 : i + 28] = struct.pack("<I", 1024)
        i += 4
    return bytes(b)


# ------------------------------------------------------------------------------------------------------------
# Model folders


MODEL_KINDS = (
    "pickle_only", "tampered_arrays", "newer_version", "missing_config", "garbage_config", "config_not_object",
    "foreign_product", "missing_arrays", "truncated_arrays", "arrays_not_safetensors", "missing_fields",
    "wrong_array_names", "unknown_kind", "not_a_folder", "empty_folder",
)


def make_bad_model(kind: str, folder: Path, good: Path) -> Path:
    """A broken copy of the good model folder ``good`` at ``folder`` (hashes fixed up where the kind needs)."""
    import hashlib
    import shutil

    from core.storage import CONFIG_NAME, read_model_config

    if kind == "not_a_folder":
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.write_bytes(b"model")
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    if kind in ("empty_folder",):
        return folder
    if kind == "pickle_only":
        (folder / "model.pkl").write_bytes(pickle.dumps({"bank": [1, 2, 3]}))
        return folder
    for p in good.iterdir():
        if p.is_file() and not p.name.startswith("."):
            shutil.copyfile(p, folder / p.name)
    cfg = read_model_config(good)
    arrays_name = cfg.get("arrays_file", "arrays.safetensors")
    arr = folder / arrays_name

    def write_cfg(c: Any) -> None:
        (folder / CONFIG_NAME).write_text(json.dumps(c))

    if kind == "tampered_arrays":
        b = bytearray(arr.read_bytes())
        b[-1] ^= 0xFF
        arr.write_bytes(bytes(b))
    elif kind == "newer_version":
        write_cfg({**cfg, "format_version": int(cfg["format_version"]) + 1})
    elif kind == "missing_config":
        (folder / CONFIG_NAME).unlink()
    elif kind == "garbage_config":
        (folder / CONFIG_NAME).write_bytes(b"\xff\xfe{not json")
    elif kind == "config_not_object":
        write_cfg([1, 2, 3])
    elif kind == "foreign_product":
        write_cfg({**cfg, "product": "other-tool"})
    elif kind == "missing_arrays":
        arr.unlink()
    elif kind == "truncated_arrays":
        data = arr.read_bytes()[:100]
        arr.write_bytes(data)
        write_cfg({**cfg, "arrays_sha256": hashlib.sha256(data).hexdigest()})
    elif kind == "arrays_not_safetensors":
        data = b"PK\x03\x04 this is a torch zip, not safetensors"
        arr.write_bytes(data)
        write_cfg({**cfg, "arrays_sha256": hashlib.sha256(data).hexdigest()})
    elif kind == "missing_fields":
        c = dict(cfg)
        for k in ("normalisation", "params", "layers"):
            c.pop(k, None)
        write_cfg(c)
    elif kind == "wrong_array_names":
        from safetensors.numpy import save as st_save

        data = st_save({"something": np.zeros((2, 2), np.float32)})
        arr.write_bytes(data)
        write_cfg({**cfg, "arrays_sha256": hashlib.sha256(data).hexdigest()})
    elif kind == "unknown_kind":
        write_cfg({**cfg, "kind": "autoencoder"})
    return folder


# ------------------------------------------------------------------------------------------------------------
# Report


@dataclass
class Outcome:
    entry: str
    kind: str
    name: str
    result: str  # "accepted" | "rejected" | "crash"
    message: str = ""


@dataclass
class FuzzReport:
    outcomes: list[Outcome] = field(default_factory=list)

    def add(self, entry: str, kind: str, name: str, result: str, message: str = "") -> Outcome:
        o = Outcome(entry, kind, name, result, message)
        self.outcomes.append(o)
        return o

    @property
    def crashes(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.result == "crash"]

    def by_kind(self) -> list[dict[str, Any]]:
        agg: dict[tuple[str, str], dict[str, int]] = defaultdict(
            lambda: {"tried": 0, "accepted": 0, "rejected": 0, "crash": 0})
        for o in self.outcomes:
            a = agg[(o.entry, o.kind)]
            a["tried"] += 1
            a[o.result] += 1
        return [{"entry": e, "kind": k, **v} for (e, k), v in sorted(agg.items())]

    def totals(self) -> dict[str, int]:
        t = {"tried": len(self.outcomes), "kinds": len({o.kind for o in self.outcomes})}
        for r in ("accepted", "rejected", "crash"):
            t[r] = sum(o.result == r for o in self.outcomes)
        return t


def names_input(message: str, *names: str | os.PathLike) -> bool:
    """True when ``message`` names one of ``names`` (full path, or file name)."""
    for n in names:
        s = str(n)
        if s and (s in message or (os.path.basename(s.rstrip("/")) and os.path.basename(s.rstrip("/")) in message)):
            return True
    return False


def classify_error(exc: BaseException, *names: str | os.PathLike) -> tuple[str, str]:
    if isinstance(exc, WorkbenchError):
        msg = str(exc)
        if names_input(msg, *names):
            return "rejected", msg
        return "crash", f"message does not name {names[0]!s}: {msg}"
    tb = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return "crash", f"{type(exc).__name__} escaped: {tb}"


MIN_SCORABLE_SIDE = 32  # the product's rule, stated again here: smaller or blank images get a message, no score


def scoring_expectation(c: ImageCase) -> str:
    """What scoring must do with a case: a decodable image under 32 px a side or with one value everywhere
    (a 1 x 1 PNG, a 4000 x 1 strip, a constant 16-bit TIFF) is refused with a message, never scored."""
    if c.expect != "accept":
        return c.expect
    from core.data import read_image_bytes

    try:
        img = read_image_bytes(c.data, c.name)
    except Exception:  # noqa: BLE001  (read_image's own entry judges decoding)
        return c.expect
    if min(img.shape[:2]) < MIN_SCORABLE_SIDE or img.min() == img.max():
        return "reject"
    return "accept"


def check_expectation(result: str, message: str, expect: str) -> tuple[str, str]:
    """Turn a broken expectation into a crash (a bomb that was accepted, an RGBA image that was refused)."""
    if result == "accepted" and expect == "reject":
        return "crash", "accepted an input that must be refused"
    if result == "rejected" and expect == "accept":
        return "crash", f"refused a valid input: {message}"
    return result, message


# ------------------------------------------------------------------------------------------------------------
# Entry points


def run_uploads(report: FuzzReport, det, cases: list[ImageCase], batch: int = 16, good: bytes | None = None,
                max_bytes: int | None = None) -> None:
    """Feed cases to ``core.workbench.score_uploads`` in batches, each with a good image that must still score."""
    from core.workbench import score_uploads

    good = good or _png(good_images(1)[0])
    for start in range(0, len(cases), batch):
        chunk = cases[start : start + batch]
        files = [(c.name, c.data) for c in chunk] + [("control.png", good)]
        kw = {} if max_bytes is None else {"max_bytes": max_bytes}
        try:
            results = score_uploads(det, files, **kw)
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, KeyboardInterrupt):
                raise
            # find the culprit one by one
            for c in chunk:
                try:
                    rs = score_uploads(det, [(c.name, c.data)], **kw)
                    _record_upload(report, c, rs[0])
                except Exception as exc1:  # noqa: BLE001
                    report.add("upload", c.kind, c.name, *classify_error(exc1, c.name))
            continue
        for c, r in zip(chunk, results):
            _record_upload(report, c, r)
        ctrl = results[-1]
        if not ctrl.ok:
            report.add("upload", "control", "control.png", "crash",
                       f"good image not scored next to bad ones: {ctrl.error}")


def _record_upload(report: FuzzReport, c: ImageCase, r) -> None:
    if r.ok:
        ok_map = r.raw_map is not None and np.isfinite(r.raw_map).all() and np.isfinite(r.score)
        res, msg = ("accepted", "") if ok_map else ("crash", "non-finite score or map")
    elif names_input(r.error, c.name):
        res, msg = "rejected", r.error
    else:
        res, msg = "crash", f"error row does not name {c.name!r}: {r.error}"
    report.add("upload", c.kind, c.name, *check_expectation(res, msg, scoring_expectation(c)))


def write_cases(folder: Path, cases: list[ImageCase]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, c in enumerate(cases):
        p = folder / f"{i:04d}_{c.name}"
        p.write_bytes(c.data)
        paths.append(p)
    return paths


def run_score_paths(report: FuzzReport, det, folder: Path, cases: list[ImageCase], cache=None) -> None:
    """Cases as files on disk through ``det.score_paths`` (the CLI's and the app's path)."""
    paths = write_cases(folder, cases)
    good = write_png(folder / "control.png", good_images(1)[0])
    try:
        res = det.score_paths([str(p) for p in paths] + [str(good)], cache=cache)
    except Exception as exc:  # noqa: BLE001
        for c, p in zip(cases, paths):
            report.add("score_paths", c.kind, c.name, *classify_error(exc, p))
        return
    ok = set(res.ok)
    for i, (c, p) in enumerate(zip(cases, paths)):
        if i in ok:
            res_, msg = "accepted", ""
        elif names_input(res.errors.get(i, ""), p):
            res_, msg = "rejected", res.errors[i]
        else:
            res_, msg = "crash", f"no message naming {p}: {res.errors.get(i)}"
        report.add("score_paths", c.kind, c.name, *check_expectation(res_, msg, scoring_expectation(c)))
    if len(paths) not in ok:
        report.add("score_paths", "control", "control.png", "crash", "good image not scored next to bad ones")


def run_read_image(report: FuzzReport, folder: Path, cases: list[ImageCase]) -> None:
    from core.data import read_image, read_mask

    paths = write_cases(folder, cases)
    for c, p in zip(cases, paths):
        for entry, fn in (("read_image", read_image), ("read_mask", read_mask)):
            try:
                fn(p)
                res, msg = "accepted", ""
            except Exception as exc:  # noqa: BLE001
                res, msg = classify_error(exc, p)
            report.add(entry, c.kind, c.name, *check_expectation(res, msg, c.expect))


def run_index(report: FuzzReport, cases: list[DatasetCase]) -> None:
    from core.data import index_dataset

    for c in cases:
        try:
            idx = index_dataset(c.root)
            res, msg = "accepted", "; ".join(idx.warnings)
            if c.expect == "warn" and not idx.warnings:
                res, msg = "crash", "indexed without the expected warning"
        except Exception as exc:  # noqa: BLE001
            res, msg = classify_error(exc, c.root)
        report.add("index", c.kind, str(c.root),
                   *check_expectation(res, msg, "accept" if c.expect == "warn" else c.expect))


def run_fit(report: FuzzReport, cases: list[DatasetCase], models_root: Path, settings=None, cache=None) -> None:
    """``core.workbench.fit_model`` on each dataset (the app's fit button)."""
    from core.workbench import FitSettings, fit_model

    settings = settings or FitSettings(image_size=64, options={"ratio": 0.05})
    for i, c in enumerate(cases):
        try:
            out = fit_model(c.root, settings, name=f"fuzz-{i}", cache=cache, root=models_root)
            skipped = out.report.get("skipped", {})
            bad = [m for p, m in skipped.items() if not names_input(m, p)]
            res, msg = (("crash", f"skip messages without file names: {bad}") if bad
                        else ("accepted", f"{len(skipped)} skipped"))
        except Exception as exc:  # noqa: BLE001
            # fit errors about the whole dataset name its folder; "fewer than 2 readable" names no file, so
            # accept the dataset folder or any of its files
            res, msg = classify_error(exc, c.root)
        report.add("fit", c.kind, str(c.root), *check_expectation(res, msg, c.fit_expect))


def run_cli(report: FuzzReport, argv: list[str], kind: str, name: str, expect: str = "either") -> None:
    """One CLI call in-process: must end in exit code 0 or 2 with a one-line error naming ``name``."""
    import contextlib

    from core.cli import main

    err = io.StringIO()
    out = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code if isinstance(exc.code, int) else 2
    except Exception as exc:  # noqa: BLE001
        report.add("cli", kind, name, *classify_error(exc, name))
        return
    text = err.getvalue()
    if rc == 0 and "error" not in text:
        res, msg = "accepted", ""
    elif "Traceback" in text:
        res, msg = "crash", text[-500:]
    elif names_input(text, name):
        res, msg = "rejected", text.strip()
    else:
        res, msg = "crash", f"exit {rc}, message does not name {name}: {text.strip()[:300]}"
    report.add("cli", kind, name, *check_expectation(res, msg, expect))


def run_zips(report: FuzzReport, cases: list[ZipCase], uploads_dir: Path) -> None:
    """``core.workbench.extract_zip`` with its uploads folder pointed at ``uploads_dir``; checks nothing escaped."""
    from core.workbench import zip_uploads

    old = zip_uploads.UPLOADS_DIR
    zip_uploads.UPLOADS_DIR = uploads_dir
    outside = uploads_dir.parent
    outside.mkdir(parents=True, exist_ok=True)
    before = set(outside.iterdir())
    try:
        for c in cases:
            try:
                root = zip_uploads.extract_zip(c.data, c.name)
                res, msg = "accepted", str(root)
                if uploads_dir.resolve() not in Path(root).resolve().parents:
                    res, msg = "crash", f"extracted outside the uploads folder: {root}"
            except Exception as exc:  # noqa: BLE001
                res, msg = classify_error(exc, c.name)
            after = set(outside.iterdir())
            if after - before - {uploads_dir}:
                res, msg = "crash", f"files escaped the uploads folder: {sorted(map(str, after - before))}"
            report.add("extract_zip", c.kind, c.name, *check_expectation(res, msg, c.expect))
    finally:
        zip_uploads.UPLOADS_DIR = old


def run_models(report: FuzzReport, good: Path, base: Path, copies: int = 1) -> None:
    """Broken model folders through ``core.workbench.load_model`` and ``model_info``."""
    from core.workbench import load_model, model_info

    for c in range(copies):
        for kind in MODEL_KINDS:
            folder = make_bad_model(kind, base / f"{c}_{kind}", good)
            try:
                load_model(folder)
                res, msg = "accepted", ""
            except Exception as exc:  # noqa: BLE001
                res, msg = classify_error(exc, folder)
            report.add("load_model", kind, str(folder), *check_expectation(res, msg, "reject"))
            try:
                info = model_info(folder)
                ok = bool(info.error) or kind in ("tampered_arrays", "missing_arrays", "truncated_arrays",
                                                   "arrays_not_safetensors", "missing_fields", "wrong_array_names",
                                                   "unknown_kind")
                report.add("model_info", kind, str(folder), "rejected" if info.error else "accepted",
                           info.error) if ok else report.add("model_info", kind, str(folder), "crash", "no error shown")
            except Exception as exc:  # noqa: BLE001
                report.add("model_info", kind, str(folder), *classify_error(exc, folder))


def tiny_model(folder: Path, n: int = 10, image_size: int = 64, cache=None):
    """PatchCore (coreset 5 %) fitted on ``n`` generated 48 px normals, saved to ``folder``; returns the detector."""
    from core.detectors import PatchCore, PatchCoreConfig

    imgs = good_images(n)
    paths = [str(write_png(folder.parent / f"{folder.name}_train" / f"{i:02d}.png", a)) for i, a in enumerate(imgs)]
    det = PatchCore(PatchCoreConfig(ratio=0.05, image_size=image_size))
    det.fit(paths, cache=cache)
    det.save(folder)
    return det

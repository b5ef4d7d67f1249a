"""Tests for core.data: image reading, dataset indexing, splits and the demo generator (fast, CPU only)."""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from core.data import (
    DatasetIndex,
    holdout,
    index_dataset,
    load_index,
    make_demo_dataset,
    read_image,
    read_image_bytes,
    read_mask,
    save_index,
)
from core.data.demo import render_sample
from core.data.splits import MIX_SPLITS, allocate
from core.errors import DatasetError, ImageReadError, ResourceLimitError, WorkbenchError

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "datasets"
SMALL = dict(n_train=6, n_test_good=6, n_test_defect=9, size=64)


def _shared(name: str) -> Path:
    p = SHARED / name
    if not p.is_dir():
        pytest.fail(f"real test data missing: {p} (see ../shared/datasets/README.md)")
    return p


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), seed=3, **SMALL)


# ------------------------------------------------------------------------------------------------
# images


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG") if mode else Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_read_image_modes(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    # gray
    Image.fromarray(rgb[:, :, 0]).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    assert np.array_equal(out[:, :, 0], rgb[:, :, 0]) and np.array_equal(out[:, :, 2], rgb[:, :, 0])
    # RGBA: alpha dropped, colour kept
    rgba = np.dstack([rgb, np.full((20, 30), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png"), rgb)
    # palette
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    # CMYK JPEG
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    out = read_image(tmp_path / "c.jpg")
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    # 1-bit
    Image.fromarray(rgb[:, :, 0] > 128).save(tmp_path / "b.bmp")
    out = read_image(tmp_path / "b.bmp")
    assert set(np.unique(out)) <= {0, 255}


def test_keep_gray_gives_the_same_pixels_and_features(tmp_path):
    """``keep_gray`` (the feature pass's decode) returns single-channel images as H x W holding exactly what each
    RGB channel holds, and the backbone's preprocessing of it equals that of the RGB copy bit for bit (it resizes
    one channel and repeats it); colour images are unchanged."""
    from core.backbones import load_backbone

    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (37, 51), dtype=np.uint8)
    deep = np.linspace(1000, 5000, 37 * 51).reshape(37, 51).astype(np.uint16)
    files = {"g.png": Image.fromarray(gray), "g.jpg": Image.fromarray(gray), "b.bmp": Image.fromarray(gray > 99),
             "la.png": Image.fromarray(gray).convert("LA"), "d.tif": Image.fromarray(deep)}
    for name, im in files.items():
        im.save(tmp_path / name)
        g, rgb = read_image(tmp_path / name, keep_gray=True), read_image(tmp_path / name)
        assert g.shape == (37, 51) and g.dtype == np.uint8, name
        assert all(np.array_equal(g, rgb[:, :, c]) for c in range(3)), name
    Image.fromarray(rng.integers(0, 256, (37, 51, 3), dtype=np.uint8)).save(tmp_path / "c.png")
    assert read_image(tmp_path / "c.png", keep_gray=True).shape == (37, 51, 3)
    bb = load_backbone("tf_efficientnet_lite0", "cpu")
    grays = [read_image(tmp_path / n, keep_gray=True) for n in ("g.png", "g.jpg", "d.tif")]
    for size in (32, 224):
        a = bb.preprocess(grays, size)
        b = bb.preprocess([np.repeat(g[:, :, None], 3, axis=2) for g in grays], size)
        assert torch.equal(a, b), size


def test_read_16bit_tiff_scales_per_image(tmp_path):
    arr = np.linspace(1000, 5000, 40 * 50).reshape(40, 50).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.tif")
    assert Image.open(tmp_path / "deep.tif").mode.startswith("I;16")
    out = read_image(tmp_path / "deep.tif")
    assert out.dtype == np.uint8 and out.shape == (40, 50, 3)
    assert out.min() == 0 and out.max() == 255  # own range, not /257
    assert np.all(np.diff(out[:, :, 0].ravel().astype(int)) >= 0)
    # float image
    f = np.linspace(-1.0, 1.0, 12).reshape(3, 4).astype(np.float32)
    Image.fromarray(f, mode="F").save(tmp_path / "f.tif")
    out = read_image(tmp_path / "f.tif")
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    # constant 16-bit image -> zeros, no division by zero
    Image.fromarray(np.full((5, 5), 300, np.uint16)).save(tmp_path / "flat.tif")
    assert read_image(tmp_path / "flat.tif").max() == 0


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :10] = 255  # left half white
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    im.save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = read_image(tmp_path / "o.jpg")
    assert out.shape == (20, 10, 3)
    assert out[:10].mean() > 200 and out[10:].mean() < 50  # left became top


@pytest.mark.parametrize(
    "content, expect",
    [
        (b"", "empty"),
        (b"hello, this is not an image\n", "text"),
        (b"\x00\x01\x02\x03garbage" * 10, "not recognised"),
    ],
)
def test_unreadable_images(tmp_path, content, expect):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(ImageReadError) as ei:
        read_image(p)
    msg = str(ei.value)
    assert str(p) in msg and expect in msg and "Fix:" in msg
    if content:
        with pytest.raises(ImageReadError, match=expect):
            read_image_bytes(content, "upload.png")


def test_truncated_png(tmp_path):
    rng = np.random.default_rng(1)
    data = _png_bytes(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    p = tmp_path / "cut.png"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as ei:
        read_image(p)
    assert "cut.png" in str(ei.value) and "truncated" in str(ei.value) and "Fix:" in str(ei.value)
    with pytest.raises(ImageReadError, match="upload.png"):
        read_image_bytes(data[: len(data) // 2], "upload.png")


def test_missing_and_folder_paths(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)
    with pytest.raises(ImageReadError, match="empty"):
        read_image_bytes(b"", "up.png")


def test_decompression_bomb_refused_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(_bomb_png(50000, 50000))
    assert p.stat().st_size < 200
    with pytest.raises(ResourceLimitError) as ei:
        read_image(p)
    msg = str(ei.value)
    assert "bomb.png" in msg and "2,500,000,000" in msg and "limit" in msg
    # over our limit but under Pillow's own guard: our check, with W x H
    p2 = tmp_path / "big.png"
    p2.write_bytes(_bomb_png(8000, 8000))
    with pytest.raises(ResourceLimitError) as ei:
        read_image(p2)
    assert "8000x8000" in str(ei.value) and "40,000,000" in str(ei.value)
    with pytest.raises(ResourceLimitError, match="upload"):
        read_image_bytes(p2.read_bytes(), "upload")
    # a custom limit
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(tmp_path / "s.png")
    with pytest.raises(ResourceLimitError, match="100"):
        read_image(tmp_path / "s.png", max_pixels=100)


def test_read_mask(tmp_path):
    m = np.zeros((12, 16), np.uint8)
    m[3:6, 4:9] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    out = read_mask(tmp_path / "m.png", (12, 16))
    assert out.dtype == bool and out.sum() == 15
    Image.fromarray((m > 0).astype(np.uint8)).save(tmp_path / "m01.png")  # 0/1 masks work too
    assert read_mask(tmp_path / "m01.png").sum() == 15
    rgb = np.zeros((12, 16, 3), np.uint8)
    rgb[3:6, 4:9, 0] = 255
    Image.fromarray(rgb).save(tmp_path / "mrgb.png")
    assert read_mask(tmp_path / "mrgb.png").sum() == 15
    with pytest.raises(DatasetError) as ei:
        read_mask(tmp_path / "m.png", (24, 32))
    msg = str(ei.value)
    assert "16x12" in msg and "32x24" in msg and "m.png" in msg
    (tmp_path / "bad_mask.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_mask(tmp_path / "bad_mask.png")


# ------------------------------------------------------------------------------------------------
# splits


def test_allocate_small_classes():
    r = (0.4, 0.2, 0.4)
    assert allocate(1, r) == [0, 0, 1]
    assert allocate(2, r) == [1, 0, 1]
    assert allocate(3, r) == [1, 1, 1]
    assert allocate(5, r) == [2, 1, 2]
    for n in range(0, 40):
        assert sum(allocate(n, r)) == n


def _check_splits(ix: DatasetIndex) -> None:
    pool = set(ix.splits["test"])
    mixes = [set(ix.splits[s]) for s in MIX_SPLITS]
    assert not (mixes[0] & mixes[1]) and not (mixes[0] & mixes[2]) and not (mixes[1] & mixes[2])
    assert mixes[0] | mixes[1] | mixes[2] == pool
    assert not (set(ix.splits["train_normal"]) & pool)
    assert all(ix.records[i].label == 0 for i in ix.splits["train_normal"])
    for name, idx in ix.splits.items():
        assert idx == sorted(idx), name


def test_splits_deterministic_disjoint_stratified():
    ix1 = index_dataset(_shared("magnetic_tile"))
    ix2 = index_dataset(_shared("magnetic_tile"))
    assert ix1.splits == ix2.splits and ix1.records == ix2.records
    assert ix1.fingerprint() == ix2.fingerprint()
    _check_splits(ix1)
    # stratified: each class spread ~40/20/40, within one image of its share
    pool_counts = ix1.class_counts("test")
    for name, ratio in zip(MIX_SPLITS, (0.4, 0.2, 0.4)):
        counts = ix1.class_counts(name)
        for cls, n in pool_counts.items():
            assert abs(counts.get(cls, 0) - n * ratio) <= 1, (name, cls)
    # another seed gives other splits, same pool
    ix3 = index_dataset(_shared("magnetic_tile"), seed=1)
    assert ix3.splits["test"] == ix1.splits["test"] and ix3.splits["val_mix"] != ix1.splits["val_mix"]
    assert ix1.fingerprint("test_mix") != ix1.fingerprint("val_mix")


def test_holdout():
    items = [f"img_{i}.png" for i in range(50)]
    kept, held = holdout(items, 0.2, "calib")
    assert len(held) == 10 and len(kept) == 40 and set(kept) | set(held) == set(items) and not set(kept) & set(held)
    assert holdout(items, 0.2, "calib") == (kept, held)
    assert holdout(items, 0.2, "other")[1] != held
    assert kept == [x for x in items if x in set(kept)]  # order kept
    assert holdout([1, 2], 0.01, "s")[1] and holdout([1, 2], 0.99, "s")[0]  # both sides non-empty
    assert holdout(list(range(5)), 0.0, "s") == (list(range(5)), [])
    with pytest.raises(ValueError):
        holdout(items, 1.5, "s")


# ------------------------------------------------------------------------------------------------
# dataset indexing


def test_magnetic_tile_matches_readme():
    ix = index_dataset(_shared("magnetic_tile"))
    assert ix.layout == "mvtec" and ix.name == "magnetic_tile" and not ix.is_domain_set
    assert len(ix.split("train_normal")) == 676
    test = ix.split("test")
    assert sum(r.label == 0 for r in test) == 276
    defects = [r for r in test if r.label == 1]
    assert len(defects) == 392
    assert ix.class_counts("test") == {"blowhole": 115, "break": 85, "crack": 57, "fray": 32, "good": 276,
                                       "uneven": 103}
    assert all(r.mask and ix.mask_path(r).is_file() for r in defects)
    assert all(r.mask is None for r in ix.records if r.label == 0)
    assert ix.warnings == []
    r = defects[0]
    img = read_image(ix.abs_path(r))
    m = read_mask(ix.mask_path(r), img.shape[:2])
    assert m.any()


@pytest.mark.parametrize("name, classes, n", [("neu_seg", 3, 900), ("neu_det", 6, 1800)])
def test_neu_domain_sets(name, classes, n):
    ix = index_dataset(_shared(name))
    assert ix.is_domain_set and ix.layout == "mvtec"
    assert len(ix.records) == n and all(r.label == 1 for r in ix.records)
    assert len(ix.class_counts()) == classes and set(ix.class_counts().values()) == {300}
    assert all(r.mask is not None for r in ix.records)
    assert ix.splits["train_normal"] == [] and len(ix.split("test")) == n
    _check_splits(ix)
    with pytest.raises(DatasetError) as ei:
        ix.split("train_normal")
    assert "train_normal" in str(ei.value) and "no normal" in str(ei.value) and "Fix:" in str(ei.value)


def test_index_demo_and_save_load(demo, tmp_path):
    ix = index_dataset(demo)
    assert ix.layout == "mvtec" and ix.warnings == []
    assert ix.class_counts() == {"crack": 3, "good": 12, "scratch": 3, "spot": 3}
    assert len(ix.split("train_normal")) == 6 and len(ix.split("test")) == 15
    _check_splits(ix)
    # every class of 3 is spread 1/1/1
    for s in MIX_SPLITS:
        c = ix.class_counts(s)
        assert c["crack"] == c["scratch"] == c["spot"] == 1
    p = save_index(ix, tmp_path / "idx" / "index.json")
    back = load_index(p)
    assert back.records == ix.records and back.splits == ix.splits and back.root == ix.root
    assert back.fingerprint() == ix.fingerprint()
    (tmp_path / "junk.json").write_text('{"format": "other"}')
    with pytest.raises(DatasetError, match="not a dataset index"):
        load_index(tmp_path / "junk.json")
    with pytest.raises(DatasetError, match="does not exist"):
        load_index(tmp_path / "none.json")


def test_fingerprint_changes_with_files(tmp_path, demo):
    root = tmp_path / "copy"
    shutil.copytree(demo, root)
    ix = index_dataset(root)
    before = ix.fingerprint()
    f = ix.abs_path(ix.split("test")[0])
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))
    assert ix.fingerprint() != before


def test_folder_per_label_layout(tmp_path, demo):
    root = tmp_path / "folders"
    for i in range(4):
        (root / "OK").mkdir(parents=True, exist_ok=True)
        shutil.copy(demo / "test" / "good" / f"{i:03d}.png", root / "OK" / f"ok{i}.png")
    (root / "scratch" / "line2").mkdir(parents=True)
    (root / "masks" / "scratch").mkdir(parents=True)
    for i in range(2):
        shutil.copy(demo / "test" / "scratch" / f"{i:03d}.png", root / "scratch" / f"s{i}.png")
        shutil.copy(demo / "ground_truth" / "scratch" / f"{i:03d}_mask.png",
                    root / "masks" / "scratch" / f"s{i}_mask.png")
    shutil.copy(demo / "test" / "scratch" / "002.png", root / "scratch" / "line2" / "deep.png")  # nested, no mask
    (root / "ng").mkdir()
    shutil.copy(demo / "test" / "spot" / "000.png", root / "ng" / "x.PNG")
    (root / "ng" / "notes.txt").write_text("ignored")
    (root / "ng" / ".hidden.png").write_bytes(b"")
    (root / "ng" / "photo.webp").write_bytes(b"RIFF")
    (root / "ng" / "loop").symlink_to(root / "ng", target_is_directory=True)  # must not hang

    ix = index_dataset(root)
    assert ix.layout == "folders"
    assert ix.class_counts() == {"good": 4, "ng": 1, "scratch": 3}
    paths = [r.path for r in ix.records]
    assert paths == sorted(paths) and "scratch/line2/deep.png" in paths and "ng/x.PNG" in paths
    assert not any(".hidden" in p or p.endswith(".txt") or "loop/" in p for p in paths)
    masks = {r.path: r.mask for r in ix.records}
    assert masks["scratch/s0.png"] == "masks/scratch/s0_mask.png" and masks["scratch/line2/deep.png"] is None
    assert any(".webp" in w for w in ix.warnings) and any("scratch/" in w and "no mask" in w for w in ix.warnings)
    assert len(ix.split("train_normal")) == 2  # half of the normals
    assert all(ix.records[i].label == 0 for i in ix.splits["train_normal"])
    _check_splits(ix)
    assert index_dataset(root).splits == ix.splits
    img = read_image(ix.abs_path(ix.records[0]))
    assert img.shape == (64, 64, 3)


def test_clear_dataset_errors(tmp_path, demo):
    (tmp_path / "real_data").mkdir()
    with pytest.raises(DatasetError) as ei:
        index_dataset(tmp_path / "missing_data")
    msg = str(ei.value)
    assert "missing_data" in msg and "does not exist" in msg and "real_data" in msg and "Check the path" in msg

    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        index_dataset(tmp_path / "empty")

    (tmp_path / "only_text" / "good").mkdir(parents=True)
    (tmp_path / "only_text" / "good" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="no images"):
        index_dataset(tmp_path / "only_text")

    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(demo / "test" / "good" / "000.png", loose / "a.png")
    with pytest.raises(DatasetError, match="no label folders"):
        index_dataset(loose)

    parent = tmp_path / "many"
    shutil.copytree(demo, parent / "one")
    shutil.copytree(demo, parent / "two")
    with pytest.raises(DatasetError, match="folder of datasets"):
        index_dataset(parent)

    with pytest.raises(DatasetError, match="not valid"):
        index_dataset(demo, ratios=(0.5, -1, 0.5))

    # empty split: a tiny test pool
    tiny = tmp_path / "tiny"
    shutil.copytree(demo / "train", tiny / "train")
    (tiny / "test" / "spot").mkdir(parents=True)
    shutil.copy(demo / "test" / "spot" / "000.png", tiny / "test" / "spot" / "000.png")
    ix = index_dataset(tiny)
    assert any("no mask" in w for w in ix.warnings)
    with pytest.raises(DatasetError) as ei:
        ix.split("train_mix")
    msg = str(ei.value)
    assert "train_mix" in msg and "empty" in msg and "only 1 image" in msg and "Fix:" in msg
    with pytest.raises(DatasetError, match="no split 'bogus'"):
        ix.split("bogus")
    assert isinstance(ei.value, WorkbenchError)


# ------------------------------------------------------------------------------------------------
# demo generator


def test_demo_deterministic_and_cached(demo, tmp_path):
    again = make_demo_dataset(tmp_path, seed=3, **SMALL)
    files = sorted(p.relative_to(demo) for p in demo.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (demo / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = make_demo_dataset(tmp_path / "b", seed=4, **SMALL)
    assert (other / "train/good/000.png").read_bytes() != (demo / "train/good/000.png").read_bytes()
    # complete folder is returned as is, without regenerating
    marker_mtime = (again / "demo_params.json").stat().st_mtime_ns
    assert make_demo_dataset(tmp_path, seed=3, **SMALL) == again
    assert (again / "demo_params.json").stat().st_mtime_ns == marker_mtime
    # an incomplete folder (no marker) is replaced
    (again / "demo_params.json").unlink()
    assert make_demo_dataset(tmp_path, seed=3, **SMALL) == again and (again / "demo_params.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".demo_surface")]


def test_demo_masks_align(demo):
    ix = index_dataset(demo)
    for rec in ix.records:
        img = read_image(ix.abs_path(rec))
        if rec.label == 0:
            assert rec.mask is None
            continue
        m = read_mask(ix.mask_path(rec), img.shape[:2])
        assert 0 < m.mean() < 0.2, rec.path
        # defect pixels deviate from the local background much more than the rest
        g = img.mean(axis=2).astype(np.float32)
        dev = np.abs(g - cv2.medianBlur(img, 15).mean(axis=2))
        assert dev[m].mean() > 2.0 * dev[~m].mean(), rec.path
    for kind in ("scratch", "spot", "crack"):
        for i in range(6):
            clean, final, mask = render_sample(0, "test_defect", i, 128, kind)
            diff = np.abs(final.astype(int) - clean.astype(int)).max(axis=2)
            strong = diff >= 15  # > 20 % of the strongest contrast (55) + rounding and tint
            assert mask.any() and strong.any()
            assert not (strong & ~mask).any(), (kind, i)
            assert diff[mask].mean() > 8
    clean, final, mask = render_sample(0, "test_good", 0, 64)
    assert mask is None and np.array_equal(clean, final)

"""A small synthetic dataset in MVTec layout, so the product runs on a fresh machine with no data.

Surfaces are brushed metal: a base gray level, low-frequency mottling, streaks along a random direction
(mostly near-horizontal, sometimes vertical), fine sensor noise, an illumination gradient and a faint
colour tint, all varied per image. Defects come in three kinds, each with a 0/255 pixel mask:

* ``scratch`` - a thin, slightly curved line, darker or brighter than the surface;
* ``spot``    - a soft-edged elliptical blob (stain or pit), darker or brighter;
* ``crack``   - a dark jagged polyline, sometimes with a branch.

Their contrast (about 20-55 gray levels) is above the texture's noise but comparable to the streaks
and mottling, so they are visible without being trivial. Every image is drawn from its own
``numpy`` generator seeded by ``(seed, part, number)``, so the output is the same bytes for the same
seed (on the same numpy/OpenCV/zlib versions) and does not depend on how many images are asked for.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from core.config import PROJECT_ROOT

DEMO_NAME = "demo_surface"
MARKER_NAME = "demo_params.json"
GENERATOR_VERSION = 1
KINDS = ("scratch", "spot", "crack")
_PART_IDS = {"train_good": 0, "test_good": 1, "test_defect": 2}
_MASK_LEVEL = 0.2  # a pixel is defect where the drawn defect layer reaches 20 % of its full contrast


def demo_root() -> Path:
    """Where the built-in demo data lives: ``PROJECT_ROOT/demo_data``."""
    return PROJECT_ROOT / "demo_data"


def ensure_demo() -> Path:
    """The demo dataset folder, generated with default parameters if it is missing."""
    return make_demo_dataset(demo_root())


# ------------------------------------------------------------------------------------------------
# Drawing


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    s = size
    base = rng.uniform(95.0, 155.0)
    low = cv2.GaussianBlur(rng.standard_normal((s, s)).astype(np.float32), (0, 0), sigmaX=rng.uniform(6.0, 12.0))
    low *= rng.uniform(5.0, 10.0) / (float(low.std()) + 1e-6)

    big = int(np.ceil(s * 1.5))
    streak = rng.standard_normal((big, big)).astype(np.float32)
    k = int(rng.integers(25, 61))
    streak = cv2.blur(streak, (k, 1))
    streak = cv2.GaussianBlur(streak, (0, 0), sigmaX=0.7)
    angle = rng.uniform(-25.0, 25.0) + (90.0 if rng.random() < 0.3 else 0.0)
    rot = cv2.getRotationMatrix2D((big / 2.0, big / 2.0), angle, 1.0)
    streak = cv2.warpAffine(streak, rot, (big, big), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    off = (big - s) // 2
    streak = streak[off : off + s, off : off + s]
    streak *= rng.uniform(3.0, 8.0) / (float(streak.std()) + 1e-6)

    fine = rng.standard_normal((s, s)).astype(np.float32) * rng.uniform(1.5, 3.5)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s - 0.5
    g = rng.uniform(-1.0, 1.0, 2)
    grad = (g[0] * xx + g[1] * yy) * rng.uniform(0.0, 25.0)
    return (base + low + streak + fine + grad).astype(np.float32)


def _layer_from(canvas: np.ndarray, sigma: float) -> np.ndarray:
    layer = canvas.astype(np.float32) / 255.0
    if sigma > 0:
        layer = cv2.GaussianBlur(layer, (0, 0), sigmaX=sigma)
    peak = float(layer.max())
    return layer / peak if peak > 0 else layer


def _walk(rng: np.random.Generator, start: np.ndarray, theta: float, n: int, step: tuple[float, float],
          jitter: float, pull: float) -> np.ndarray:
    pts = [start.astype(np.float64)]
    heading = theta
    for _ in range(n):
        heading += rng.uniform(-jitter, jitter) + pull * (theta - heading)
        length = rng.uniform(*step)
        pts.append(pts[-1] + length * np.array([np.cos(heading), np.sin(heading)]))
    return np.array(pts)


def _draw_defect(rng: np.random.Generator, kind: str, size: int) -> tuple[np.ndarray, float]:
    """A defect layer in [0, 1] (peak 1) and its signed contrast in gray levels."""
    s = size
    canvas = np.zeros((s, s), np.uint8)
    margin = s * 0.2
    start = rng.uniform(margin, s - margin, 2)
    theta = rng.uniform(0, 2 * np.pi)
    if kind == "scratch":
        length = rng.uniform(0.15, 0.5) * s
        n = 12
        pts = _walk(rng, start, theta, n, (length / n, length / n), 0.06, 0.0)
        thick = int(rng.integers(1, 3))
        cv2.polylines(canvas, [np.round(pts).astype(np.int32)], False, 255, thick, cv2.LINE_AA)
        layer = _layer_from(canvas, 0.6)
        amp = rng.uniform(22.0, 40.0) * (1.0 if rng.random() < 0.4 else -1.0)
    elif kind == "spot":
        axes = (int(rng.uniform(0.02, 0.05) * s) + 2, int(rng.uniform(0.015, 0.04) * s) + 2)
        center = tuple(int(v) for v in np.round(start))
        cv2.ellipse(canvas, center, axes, float(np.degrees(theta)), 0, 360, 255, -1, cv2.LINE_AA)
        layer = _layer_from(canvas, rng.uniform(1.2, 2.2))
        amp = rng.uniform(25.0, 45.0) * (1.0 if rng.random() < 0.3 else -1.0)
    elif kind == "crack":
        n = int(rng.integers(14, 26))
        step = (0.012 * s, 0.035 * s)
        pts = _walk(rng, start, theta, n, step, 1.3, 0.5)
        cv2.polylines(canvas, [np.round(pts).astype(np.int32)], False, 255, int(rng.integers(1, 3)), cv2.LINE_AA)
        if rng.random() < 0.5:
            j = int(rng.integers(2, len(pts) - 1))
            branch = _walk(rng, pts[j], theta + rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.2),
                           int(rng.integers(4, 10)), step, 1.3, 0.5)
            cv2.polylines(canvas, [np.round(branch).astype(np.int32)], False, 255, 1, cv2.LINE_AA)
        layer = _layer_from(canvas, 0.5)
        amp = -rng.uniform(30.0, 55.0)
    else:
        raise ValueError(f"unknown defect kind {kind!r}")
    return layer, float(amp)


def _to_rgb8(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    tint = (1.0 + rng.uniform(-0.04, 0.04, 3)).astype(np.float32)
    return np.clip(np.rint(gray[:, :, None] * tint[None, None, :]), 0, 255).astype(np.uint8)


def render_sample(seed: int, part: str, number: int, size: int = 256,
                  kind: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Draw one image: ``(clean_rgb, final_rgb, mask)``; ``mask`` (bool) is None for good images.

    ``part`` is ``train_good``, ``test_good`` or ``test_defect`` (then ``kind`` picks the defect).
    """
    rng = np.random.default_rng([int(seed), _PART_IDS[part], int(number)])
    tex = _texture(rng, size)
    tint_rng = np.random.default_rng([int(seed), _PART_IDS[part], int(number), 1])
    clean = _to_rgb8(tex, tint_rng)
    if part != "test_defect":
        return clean, clean, None
    layer, amp = _draw_defect(rng, kind or KINDS[number % len(KINDS)], size)
    tint_rng = np.random.default_rng([int(seed), _PART_IDS[part], int(number), 1])
    final = _to_rgb8(tex + amp * layer, tint_rng)
    return clean, final, layer >= _MASK_LEVEL


def _png(arr: np.ndarray) -> bytes:
    img = arr[:, :, ::-1] if arr.ndim == 3 else arr  # RGB -> BGR for OpenCV
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:  # pragma: no cover
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


# ------------------------------------------------------------------------------------------------
# Dataset


def _params(seed: int, n_train: int, n_test_good: int, n_test_defect: int, size: int) -> dict:
    return {
        "generator": "anomaly-workbench demo",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "n_train": int(n_train),
        "n_test_good": int(n_test_good),
        "n_test_defect": int(n_test_defect),
        "size": int(size),
    }


def _is_complete(folder: Path, params: dict) -> bool:
    try:
        return json.loads((folder / MARKER_NAME).read_text(encoding="utf-8")) == params
    except (OSError, ValueError):
        return False


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def _generate(folder: Path, p: dict) -> None:
    seed, size = p["seed"], p["size"]
    (folder / "train" / "good").mkdir(parents=True)
    (folder / "test" / "good").mkdir(parents=True)
    for i in range(p["n_train"]):
        _write(folder / "train" / "good" / f"{i:03d}.png", _png(render_sample(seed, "train_good", i, size)[1]))
    for i in range(p["n_test_good"]):
        _write(folder / "test" / "good" / f"{i:03d}.png", _png(render_sample(seed, "test_good", i, size)[1]))
    counters = {k: 0 for k in KINDS}
    for j in range(p["n_test_defect"]):
        kind = KINDS[j % len(KINDS)]
        stem = f"{counters[kind]:03d}"
        counters[kind] += 1
        _, img, mask = render_sample(seed, "test_defect", j, size, kind)
        _write(folder / "test" / kind / f"{stem}.png", _png(img))
        _write(folder / "ground_truth" / kind / f"{stem}_mask.png", _png(mask.astype(np.uint8) * 255))
    readme = (
        "Synthetic brushed-metal surfaces made by core.data.demo (MVTec layout).\n"
        f"Defects: {', '.join(KINDS)}; masks in ground_truth/<defect>/<stem>_mask.png (0/255).\n"
    )
    _write(folder / "README.txt", readme.encode())
    _write(folder / MARKER_NAME, (json.dumps(p, indent=2, sort_keys=True) + "\n").encode())


def make_demo_dataset(out_dir: str | Path, *, seed: int = 0, n_train: int = 60, n_test_good: int = 20,
                      n_test_defect: int = 30, size: int = 256) -> Path:
    """Write the demo dataset to ``out_dir/demo_surface`` (MVTec layout) and return that folder.

    If it already exists complete with the same parameters it is returned as is. Otherwise it is
    generated in a temporary sibling folder and renamed into place, so a reader never sees a half
    written dataset (a different earlier version is replaced).
    """
    for label, v, lo in (("n_train", n_train, 0), ("n_test_good", n_test_good, 0),
                         ("n_test_defect", n_test_defect, 0), ("size", size, 64)):
        if int(v) != v or v < lo:
            raise ValueError(f"{label} must be an integer >= {lo}, got {v!r}")
    params = _params(seed, n_train, n_test_good, n_test_defect, size)
    out_dir = Path(out_dir)
    target = out_dir / DEMO_NAME
    if _is_complete(target, params):
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEMO_NAME}.", suffix=".tmp", dir=out_dir))
    try:
        _generate(tmp, params)
        if target.exists() or target.is_symlink():
            if _is_complete(target, params):  # another process finished first
                shutil.rmtree(tmp, ignore_errors=True)
                return target
            trash = out_dir / f".{DEMO_NAME}.old-{os.getpid()}-{time.time_ns()}"
            os.rename(target, trash)
            os.rename(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            try:
                os.rename(tmp, target)
            except OSError:
                if _is_complete(target, params):
                    shutil.rmtree(tmp, ignore_errors=True)
                    return target
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target

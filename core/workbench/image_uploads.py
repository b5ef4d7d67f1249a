"""Scoring images on the Score images page: uploaded files, a folder under the data roots or a zip of images; one
result row per file, routed through the model's cascade when it has one; overlays, a CSV naming the model and the
thresholds used, and the thresholds as a small JSON that ``python -m core score --thresholds`` reads back."""

from __future__ import annotations

import csv
import io
import json
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from core.errors import DatasetError, WorkbenchError

MAX_UPLOAD_IMAGE_BYTES = int(float(os.environ.get("WORKBENCH_MAX_IMAGE_MB", "25")) * 1e6)
MAX_BATCH_IMAGES = int(os.environ.get("WORKBENCH_MAX_BATCH_IMAGES", "2000"))  # a folder or zip scored at once
THRESHOLDS_FORMAT = "workbench-thresholds/1"


@dataclass
class UploadResult:
    """One file: its scores and decision (and the cascade's route when one decided), or the error that stopped it.

    ``score`` is the heatmap model's raw score, None when the cascade's gate decided the image on its own.
    """

    name: str
    ok: bool
    error: str = ""
    score: float | None = None
    to_threshold: float | None = None  # score / the threshold used
    decision: str = ""
    ms: float | None = None
    image: np.ndarray | None = None
    raw_map: np.ndarray | None = None
    size: tuple[int, int] | None = None
    gate_score: float | None = None  # cascade only
    route: str = ""  # "gate-normal" | "heatmap" | "gate-defect" (cascade) or "heatmap" (no cascade)
    gate_ms: float | None = None
    heatmap_ms: float | None = None

    def row(self) -> dict[str, Any]:
        r = lambda v, k: None if v is None else round(v, k)  # noqa: E731
        return {
            "file": self.name,
            "decision": self.decision if self.ok else "error",
            "route": self.route,
            "gate_score": r(self.gate_score, 4),
            "score": r(self.score, 6),
            "score_to_threshold": r(self.to_threshold, 4),
            "ms": r(self.ms, 1),
            "gate_ms": r(self.gate_ms, 1),
            "heatmap_ms": r(self.heatmap_ms, 1),
            "error": self.error,
        }


@dataclass
class CascadeSettings:
    """What routing an image needs: the fitted gate and the saved T_low / T_high."""

    gate: Any
    t_low: float
    t_high: float
    gate_kind: str = ""


ROUTE_NAMES = {0: "gate-normal", 1: "gate-defect", 2: "heatmap"}  # core.cascade.routing codes


def cascade_for_scoring(folder: str | Path) -> CascadeSettings | None:
    """The model's gate and saved (T_low, T_high), or None when it has no fitted cascade policy."""
    from core.cascade import load_gate
    from core.workbench.cascade_gate import cascade_dir

    d = cascade_dir(folder)
    try:
        cfg = json.loads((d / "cascade.json").read_text())
    except (OSError, ValueError):
        return None
    pol = cfg.get("policy") or {}
    if pol.get("mode") != "cascade" or pol.get("t_low") is None or pol.get("t_high") is None:
        return None
    return CascadeSettings(load_gate(d / "gate"), float(pol["t_low"]), float(pol["t_high"]), str(cfg.get("gate", "")))


def score_uploads(
    det,
    files: Sequence[tuple[str, bytes]],
    threshold: float | None = None,
    max_bytes: int = MAX_UPLOAD_IMAGE_BYTES,
    progress: Callable[[str, int, int], None] | None = None,
    cascade: CascadeSettings | None = None,
) -> list[UploadResult]:
    """Score images one by one (time per image includes decoding); bad files get an error row.

    A file that is too large, empty, corrupt, not an image (e.g. text renamed .png), over the pixel limit, too
    small or blank is reported by name; the others are still scored. With ``cascade`` every image goes through the
    gate first: below T_low it is normal and above T_high defective without the heatmap model; only the band in
    between is scored by ``det`` at ``threshold``.
    """
    from core.cascade import Cascade, Policy
    from core.data.images import check_scorable, read_image_bytes
    from core.detectors.postprocess import score_to_threshold

    thr = det.threshold if threshold is None else float(threshold)
    router = None
    if cascade is not None:
        router = Cascade(cascade.gate, det, Policy(mode="cascade", t_low=cascade.t_low, t_high=cascade.t_high,
                                                    heat_threshold=thr))
    out: list[UploadResult] = []
    for i, (name, data) in enumerate(files):
        if progress:
            progress("score images", i, len(files))
        if len(data) > max_bytes:
            out.append(UploadResult(name, False, f"{name} is {len(data) / 1e6:.1f} MB, over the "
                                    f"{max_bytes / 1e6:.0f} MB limit per image. Fix: downscale or crop it."))
            continue
        t0 = time.perf_counter()
        try:
            img = check_scorable(read_image_bytes(bytes(data), name), name)
            if router is None:
                res = det.score_images([img])
                heat, amap, route, gate_score, gate_ms = float(res.scores[0]), res.maps[0], "heatmap", None, None
                decision = "anomalous" if heat >= thr else "normal"
            else:
                rr = router.route([img])
                route = ROUTE_NAMES[int(rr.routes[0])]
                heat = None if route != "heatmap" else float(rr.heat_scores[0])
                amap, gate_score, gate_ms = rr.maps[0], float(rr.gate_scores[0]), float(rr.gate_ms[0])
                decision = "anomalous" if rr.decisions[0] else "normal"
        except WorkbenchError as exc:
            out.append(UploadResult(name, False, str(exc)))
            continue
        ms = 1000 * (time.perf_counter() - t0)
        out.append(UploadResult(
            name, True, score=heat, to_threshold=None if heat is None else float(score_to_threshold(heat, thr)),
            decision=decision, ms=ms, image=img, raw_map=amap, size=(int(img.shape[1]), int(img.shape[0])),
            gate_score=gate_score, route=route, gate_ms=gate_ms,
            heatmap_ms=None if heat is None else ms - (gate_ms or 0.0),
        ))
    if progress:
        progress("score images", len(files), len(files))
    return out


def scoring_summary(results: Sequence[UploadResult]) -> dict[str, Any]:
    """Counts a page shows above the table: scored, errors, anomalous, per route, heatmap call rate, mean ms."""
    good = [r for r in results if r.ok]
    routes = {name: sum(r.route == name for r in good) for name in ("gate-normal", "heatmap", "gate-defect")}
    return {"scored": len(good), "errors": len(results) - len(good),
            "anomalous": sum(r.decision == "anomalous" for r in good), "routes": routes,
            "heatmap_call_rate": routes["heatmap"] / len(good) if good else 0.0,
            "mean_ms": float(np.mean([r.ms for r in good])) if good else 0.0}


# ------------------------------------------------------------------------------------------------------------
# Sources besides single files: a folder under the data roots, a zip of images


def _image_files(folder: Path) -> list[Path]:
    from core.data.images import IMAGE_EXTENSIONS

    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not p.is_symlink())


def images_from_folder(folder: str | Path, limit: int = MAX_BATCH_IMAGES) -> list[tuple[str, bytes]]:
    """(relative name, bytes) of the image files below ``folder``, which must lie under the data roots."""
    from core.workbench.datasets import check_browsable

    root = check_browsable(folder)
    if not root.is_dir():
        raise DatasetError(f"{folder} is not a folder.", "Type a folder under the data roots that holds images.")
    files = _image_files(root)
    if not files:
        raise DatasetError(f"{root} holds no image files (png, jpg, bmp, tif).", "Pick a folder with images.")
    if len(files) > limit:
        raise DatasetError(f"{root} holds {len(files)} images; the page scores at most {limit} at once.",
                           "Pick a sub-folder, or score the folder with `python -m core score FOLDER --csv out.csv`.")
    return [(p.relative_to(root).as_posix(), p.read_bytes()) for p in files]


def images_from_zip(data: bytes, name: str, limit: int = MAX_BATCH_IMAGES) -> list[tuple[str, bytes]]:
    """(member name, bytes) of the images in a zip, read in memory with the upload checks of dataset zips
    (sizes and compression ratio from the directory first, then counted while reading); nothing is written."""
    from core.data.images import IMAGE_EXTENSIONS
    from core.workbench import zip_uploads as zu

    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{name} is not a readable zip file ({exc}).", "Upload a .zip of image files.") from None
    with zf:
        members = [m for m in zf.infolist() if (rel := zu._safe_member_path(m.filename, name)) is not None
                   and rel.suffix.lower() in IMAGE_EXTENSIONS and not rel.name.startswith("._")
                   and rel.parts[0] != "__MACOSX"]
        if not members:
            raise DatasetError(f"{name} holds no image files (png, jpg, bmp, tif).", "Zip the images themselves.")
        if len(members) > limit:
            raise DatasetError(f"{name} holds {len(members)} images; the page scores at most {limit} at once.",
                               "Split the zip, or score a folder with `python -m core score`.")
        zu.check_zip_sizes(name, len(data), sum(m.file_size for m in members), sum(m.compress_size for m in members))
        out, total = [], 0
        for m in sorted(members, key=lambda m: m.filename):
            with zf.open(m) as fh:
                blob = fh.read(MAX_UPLOAD_IMAGE_BYTES + 1)
            total += len(blob)
            if total > zu.MAX_UNZIPPED_BYTES:
                raise DatasetError(f"{name} unpacks to more than its headers declare.", "Upload a well-formed zip.")
            out.append((m.filename, blob))
        return out


# ------------------------------------------------------------------------------------------------------------
# What goes out: overlays, the CSV, the thresholds


def png_bytes(image: np.ndarray) -> bytes:
    """A decoded image as PNG bytes (lossless): what review feedback keeps of an upload."""
    import cv2

    arr = image if image.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise WorkbenchError("The image could not be encoded as PNG.", "Upload it again.")
    return buf.tobytes()


def upload_overlay(result: UploadResult, norm, pixel_threshold: float = 1.0) -> np.ndarray:
    """The uploaded image with its normalised heatmap and the region where the map reaches ``pixel_threshold``."""
    from core.visualize import overlay

    amap = norm.normalise_map(result.raw_map)
    return overlay(result.image, amap, predicted=amap >= pixel_threshold)


def results_csv(results: Sequence[UploadResult], threshold: float | None = None,
                context: dict[str, Any] | None = None) -> str:
    """The rows of :meth:`UploadResult.row` as CSV text, each with the threshold and ``context`` (model name,
    version, T_low / T_high) it was scored with."""
    buf = io.StringIO()
    w = csv.writer(buf)
    extra = dict(context or {})
    if threshold is not None:
        extra["threshold"] = f"{threshold:.6g}"
    cols = list(UploadResult("", False).row()) + list(extra)
    w.writerow(cols)
    for r in results:
        row = {**r.row(), **extra}
        w.writerow(["" if row.get(c) is None else row[c] for c in cols])
    return buf.getvalue()


def thresholds_json(info, threshold: float, cascade: CascadeSettings | None = None) -> str:
    """The thresholds in use as JSON for ``python -m core score --thresholds FILE`` (tied to the model's arrays)."""
    payload: dict[str, Any] = {"format": THRESHOLDS_FORMAT, "model": info.name,
                               "model_arrays": info.stamp.split(":")[0], "threshold": float(threshold)}
    if cascade is not None:
        payload.update({"t_low": cascade.t_low, "t_high": cascade.t_high, "gate": cascade.gate_kind})
    return json.dumps(payload, indent=2) + "\n"


def read_thresholds(path: str | Path, arrays_key: str | None = None) -> dict[str, Any]:
    """A thresholds file written by :func:`thresholds_json`; refused with a message when it is foreign, damaged or
    made for another model (``arrays_key``: the first 16 hex digits of the model's ``arrays_sha256``)."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise WorkbenchError(f"The thresholds file {path} cannot be read ({exc}).",
                             "Download it again from the Score images page.") from None
    if not isinstance(payload, dict) or payload.get("format") != THRESHOLDS_FORMAT:
        raise WorkbenchError(f"{path} is not a thresholds file of this workbench.",
                             "Download one from the Score images page.")
    thr = payload.get("threshold")
    if not isinstance(thr, (int, float)) or not np.isfinite(thr) or thr <= 0:
        raise WorkbenchError(f"{path} holds no valid threshold.", "Download it again from the Score images page.")
    if arrays_key and payload.get("model_arrays") and payload["model_arrays"] != arrays_key:
        raise WorkbenchError(f"{path} was made for model {payload.get('model')!r}, not this one.",
                             "Use the thresholds file downloaded for this model.")
    return payload

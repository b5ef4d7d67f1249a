"""What the GAIN-MTL CAM page needs (plain Python, no streamlit): finding trained models, computing every image's
CAM and mask once, per-image metrics at a binarisation threshold (fast, for a slider), filters and overlays.

Models are looked for under ``<models dir>/gain/`` (``WORKBENCH_MODELS_DIR`` or ``<project>/models``, see
:func:`core.workbench.models_dir`) and in any folder the user names (e.g. the output of ``gain compare``): every
folder below it, up to three levels deep, whose ``config.json`` says ``kind: gain_mtl``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.errors import WorkbenchError
from core.gain.inference import KIND
from core.workbench.datasets import check_browsable

FILTERS = ("all", "correct", "incorrect", "right answer, wrong reason")


def gain_models_root() -> Path:
    """``<models dir>/gain`` (not created here: training writes it)."""
    from core.paths import models_dir

    return models_dir() / "gain"


def check_model_search_folder(folder: str | Path) -> Path:
    """``folder`` resolved, if the app may look for models there (inside the project, e.g. ``runs/``, or the
    models folder); else a WorkbenchError. Keeps a typed path from walking the whole disk."""
    from core.config import PROJECT_ROOT
    from core.paths import confine, models_dir

    return confine(folder, [PROJECT_ROOT, models_dir()], "folder with GAIN-MTL models",
                   "Copy or train the models under the project (e.g. runs/) or the models folder "
                   "(WORKBENCH_MODELS_DIR).", purpose="read models from")


@dataclass
class GainModelEntry:
    name: str  # path relative to the folder searched
    folder: Path
    strategy: str = ""
    backbone: str = ""
    image_size: int = 0
    dataset: str = ""
    created: str = ""
    stamp: str = ""  # changes when the arrays or config change (a cache key)


def find_gain_models(root: str | Path, depth: int = 3, missing_ok: bool = False) -> list[GainModelEntry]:
    """Every GAIN-MTL model folder at or below ``root`` (at most ``depth`` levels), sorted by name."""
    from core.storage import CONFIG_NAME, read_model_config

    root = Path(root).expanduser()
    if missing_ok and not root.exists():
        return []
    if not root.is_dir():
        raise WorkbenchError(f"{root} is not a folder.",
                             "Give a folder that holds GAIN-MTL models (e.g. runs/gain_compare).")
    found: list[GainModelEntry] = []
    base_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if len(here.parts) - base_depth >= depth:
            dirnames[:] = []
        if CONFIG_NAME not in filenames:
            continue
        try:
            cfg = read_model_config(here)
        except WorkbenchError:
            continue
        if cfg.get("kind") != KIND:
            continue
        st = (here / CONFIG_NAME).stat()
        rel = here.relative_to(root).as_posix()
        found.append(GainModelEntry(
            name=root.name if rel == "." else rel, folder=here, strategy=str(cfg.get("strategy", "")),
            backbone=str(cfg.get("backbone", "")), image_size=int(cfg.get("image_size", 0) or 0),
            dataset=str(cfg.get("dataset", "")), created=str(cfg.get("created", "")),
            stamp=f"{str(cfg.get('arrays_sha256', ''))[:16]}:{st.st_mtime_ns}",
        ))
    return sorted(found, key=lambda e: e.name)


@dataclass
class CamResults:
    """Every image of a split with the model's outputs, computed once (the page's slider only re-thresholds)."""

    model_name: str
    strategy: str
    loc_trained: bool  # whether the mask head was trained (S4+): Loc-IoU is meaningful
    threshold: float  # decision threshold on the defect probability
    paths: list[str]
    labels: np.ndarray
    defects: list[str]
    probs: np.ndarray
    images: np.ndarray  # N x S x S x 3 uint8
    cams01: np.ndarray  # N x S x S float16, per-image min-max normalised CAM
    mask_probs: np.ndarray  # N x S x S float16
    masks: np.ndarray  # N x S x S bool
    has_mask: np.ndarray  # defect image with a non-empty mask
    point_game: np.ndarray  # per image, NaN where has_mask is False
    energy_inside: np.ndarray
    loc_iou: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def predicted(self) -> np.ndarray:
        return (self.probs >= self.threshold).astype(int)

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.labels


def precompute_cams(folder: str | Path, dataset: str | Path | None = None, split: str = "test_mix",
                    limit: int | None = None) -> CamResults:
    """Load the model in ``folder``, read ``split`` of ``dataset`` (default: the one it was trained on) and compute
    probabilities, normalised CAMs, mask-head maps and the threshold-free per-image metrics."""
    from core.data import index_dataset
    from core.data.locate import resolve_dataset
    from core.gain.data import load_split
    from core.gain.inference import load_gain_model
    from core.metrics.cam import minmax_normalise, per_image_attention

    model = load_gain_model(folder)
    ds = dataset or model.meta.get("dataset")
    if not ds:
        raise WorkbenchError(f"The model in {folder} does not say which dataset it was trained on.",
                             "Pick the dataset by hand.")
    try:
        root = resolve_dataset(ds)
    except WorkbenchError as exc:
        raise WorkbenchError(f"The dataset of this model ({ds}) is not on this machine: {exc.problem}",
                             "Restore the dataset folder or pick another dataset.") from None
    check_browsable(root)  # a model made elsewhere must not point the app at an arbitrary folder
    data = load_split(index_dataset(root), split, model.config.image_size, limit)
    pred = model.predict(data.images)
    has_mask = (data.labels == 1) & data.masks.reshape(len(data), -1).any(axis=1)
    per = per_image_attention(pred.cams, data.masks, pred.mask_probs, thresholds=())
    nan = np.full(len(data), np.nan)
    return CamResults(
        model_name=Path(folder).name, strategy=model.config.strategy, loc_trained=model.config.flags.localisation,
        threshold=model.threshold, paths=data.paths, labels=data.labels, defects=data.defects, probs=pred.probs,
        images=data.images, cams01=minmax_normalise(pred.cams).astype(np.float16),
        mask_probs=pred.mask_probs.astype(np.float16), masks=data.masks, has_mask=has_mask,
        point_game=np.where(has_mask, per.point_game, nan), energy_inside=np.where(has_mask, per.energy_inside, nan),
        loc_iou=np.where(has_mask, per.loc_iou, nan),
    )


def cam_iou_at(res: CamResults, threshold: float) -> np.ndarray:
    """Per-image CAM-IoU at ``threshold`` (NaN for images without a defect mask)."""
    from core.metrics.cam import cam_iou_batch

    out = np.full(len(res), np.nan)
    if res.has_mask.any():
        out[res.has_mask] = cam_iou_batch(res.cams01[res.has_mask], res.masks[res.has_mask], threshold)
    return out


def iou_sweep(res: CamResults, thresholds: np.ndarray) -> np.ndarray:
    """Mean CAM-IoU over the defect images at each threshold."""
    return np.array([float(np.nanmean(cam_iou_at(res, float(t)))) if res.has_mask.any() else np.nan
                     for t in thresholds])


def filter_indices(res: CamResults, kind: str) -> list[int]:
    """Images matching ``kind``: all, correct, incorrect, or "right answer, wrong reason" (a defect image classified
    defective whose CAM maximum lies outside the mask: PointGame miss)."""
    if kind not in FILTERS:
        raise WorkbenchError(f"Unknown filter {kind!r}.", f"Use one of: {', '.join(FILTERS)}.")
    ok = res.correct
    if kind == "all":
        sel = np.ones(len(res), bool)
    elif kind == "correct":
        sel = ok
    elif kind == "incorrect":
        sel = ~ok
    else:
        sel = ok & res.has_mask & (np.nan_to_num(res.point_game, nan=1.0) < 0.5)
    return [int(i) for i in np.flatnonzero(sel)]


def summary(res: CamResults, threshold: float) -> dict[str, Any]:
    """Headline numbers of one model on the loaded split at a CAM threshold."""
    from core.metrics.cam import classification_metrics

    cls = classification_metrics(res.labels, res.probs, res.threshold)
    ious = cam_iou_at(res, threshold)
    mean = (lambda a: float(np.nanmean(a)) if res.has_mask.any() else None)  # noqa: E731
    return {
        "accuracy": cls.accuracy, "recall": cls.recall, "precision": cls.precision, "auroc": cls.auroc,
        "cam_iou": mean(ious), "point_game": mean(res.point_game), "energy_inside": mean(res.energy_inside),
        "loc_iou": mean(res.loc_iou) if res.loc_trained else None,
        "right_answer_wrong_reason": len(filter_indices(res, "right answer, wrong reason")),
        "n_images": len(res), "n_with_mask": int(res.has_mask.sum()),
    }


def image_metrics(res: CamResults, i: int, threshold: float) -> dict[str, Any]:
    """One image's label, prediction and attention metrics (CAM-IoU at ``threshold``)."""
    m = bool(res.has_mask[i])

    def num(a):
        return None if not m or np.isnan(a[i]) else round(float(a[i]), 3)

    return {
        "file": Path(res.paths[i]).name, "class": res.defects[i], "label": "defect" if res.labels[i] else "normal",
        "p(defect)": round(float(res.probs[i]), 3), "predicted": "defect" if res.predicted[i] else "normal",
        "correct": bool(res.correct[i]),
        "CAM-IoU": num(cam_iou_at_one(res, i, threshold)), "PointGame": num(res.point_game),
        "Energy-Inside": num(res.energy_inside), "Loc-IoU": num(res.loc_iou) if res.loc_trained else None,
    }


def cam_iou_at_one(res: CamResults, i: int, threshold: float) -> np.ndarray:
    out = np.full(len(res), np.nan)
    if res.has_mask[i]:
        from core.metrics.cam import cam_iou

        out[i] = cam_iou(res.cams01[i], res.masks[i], threshold)
    return out


def _contour(img: np.ndarray, region: np.ndarray, colour: tuple[int, int, int]) -> None:
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(img, contours, -1, colour, 1)


def cam_overlay(res: CamResults, i: int, threshold: float, alpha: float = 0.45) -> np.ndarray:
    """The image with its normalised CAM (viridis), the ground truth contour (magenta) and the CAM binarised at
    ``threshold`` (white contour)."""
    from core.visualize import heat_colours

    img = res.images[i]
    out = cv2.addWeighted(img, 1.0 - alpha, heat_colours(res.cams01[i].astype(np.float32)), alpha, 0.0)
    _contour(out, res.masks[i], (255, 0, 255))
    _contour(out, res.cams01[i] >= threshold, (255, 255, 255))
    return out


def mask_overlay(res: CamResults, i: int, alpha: float = 0.45) -> np.ndarray:
    """The image with the mask head's probability (viridis), ground truth (magenta) and the head's mask at 0.5
    (white contour)."""
    from core.visualize import heat_colours

    img = res.images[i]
    mp = res.mask_probs[i].astype(np.float32)
    out = cv2.addWeighted(img, 1.0 - alpha, heat_colours(mp), alpha, 0.0)
    _contour(out, res.masks[i], (255, 0, 255))
    _contour(out, mp >= 0.5, (255, 255, 255))
    return out


# --------------------------------------------------------------------------------------------------------------
# Training from the app: a background job (core.jobs) running `python -m core gain train`

JOB_KIND = "gain-train"


@dataclass
class TrainRequest:
    """What the training form asks for; the defaults are the report's (``GainConfig``)."""

    dataset: str
    strategy: str = "S6"
    epochs: int = 18
    lambda_cam_guide: float = 0.3
    lambda_guide: float = 0.5  # the attention-mining weight (GainConfig.lambda_am)
    lambda_loc: float = 0.2
    loc_warmup: float = 0.5
    name: str = ""
    limit: int | None = None  # images per class and split (quick runs)


def start_training(req: TrainRequest):
    """Check the request, then start the training job; the model lands in ``<models>/gain/<name>``."""
    from core.data import index_dataset
    from core.gain.config import GainConfig
    from core.jobs import start_job
    from core.workbench.models import check_model_name

    root = check_browsable(req.dataset)
    index = index_dataset(root)
    GainConfig(strategy=req.strategy, max_epochs=int(req.epochs), lambda_cam_guide=float(req.lambda_cam_guide),
               lambda_am=float(req.lambda_guide), lambda_loc=float(req.lambda_loc), loc_warmup=float(req.loc_warmup))
    if not (0.0 <= float(req.loc_warmup) <= 1.0) or min(req.lambda_cam_guide, req.lambda_guide, req.lambda_loc) < 0:
        raise WorkbenchError("The loss weights must be >= 0 and the warm-up share between 0 and 1.",
                             "Use the report's defaults (0.3, 0.5, 0.2, 0.5) or values near them.")
    name = check_model_name(req.name or f"{index.name}-{req.strategy}-{time.strftime('%Y%m%d-%H%M%S')}")
    out = gain_models_root() / name
    if out.exists() or any(j.output == str(out) and j.state == "running" for j in training_jobs()):
        raise WorkbenchError(f"A GAIN-MTL model named {name!r} exists or is being trained.", "Choose another name.")
    argv = ["gain", "train", str(root), "--strategy", req.strategy, "--epochs", str(int(req.epochs)),
            "--lambda-cam-guide", f"{req.lambda_cam_guide:g}", "--lambda-guide", f"{req.lambda_guide:g}",
            "--lambda-loc", f"{req.lambda_loc:g}", "--loc-warmup", f"{req.loc_warmup:g}", "--out", str(out)]
    if req.limit:
        argv += ["--limit", str(int(req.limit))]
    return start_job(JOB_KIND, f"{req.strategy} on {index.name} → {name}", argv, out)


def training_jobs():
    """Every GAIN-MTL training job, newest first (running, done, failed or cancelled)."""
    from core.jobs import list_jobs

    return list_jobs(JOB_KIND)


def cancel_training(job_id: str):
    """Stop a training job; nothing is saved (the model folder is written only when training ends)."""
    from core.jobs import cancel_job

    return cancel_job(job_id)


def _strategy_choices() -> dict[str, str]:
    from core.gain.config import STRATEGIES

    return {k: v.adds for k, v in STRATEGIES.items()}


STRATEGY_CHOICES = _strategy_choices()

"""GAIN-MTL training: train_normal + train_mix, early stopping on val_mix, decision threshold from val_mix.

To fit six strategies into an hour on a 2-core CPU, the pretrained stem (up to stride 8) is frozen and its
features are computed once per image (:func:`prepare`; :mod:`core.gain.evaluate` shares them between strategies).
Every epoch uses all defect images of the training set plus ``normals_per_defect`` times as many normal images
drawn afresh (balanced sampling); random horizontal/vertical flips are applied to features and masks together.
Deterministic for a seed (CPU).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from core.data import DatasetIndex
from core.gain.config import GainConfig
from core.gain.data import SplitData, check_two_classes, concat, counterfactual_images, load_split
from core.gain.inference import GainModel, device, encode_stem, predict_from_stem
from core.gain.losses import Batch, compute_losses
from core.gain.model import GainNet, build_gain_net
from core.metrics.cam import attention_metrics, classification_metrics, f1_best_threshold
from core.progress import ProgressFn, no_progress


@dataclass
class PreparedData:
    """Training and validation data with the frozen stem's features (shared by strategies with the same backbone,
    image size and seed)."""

    backbone: str
    image_size: int
    seed: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_sha256: str
    train: SplitData
    val: SplitData
    train_x8: torch.Tensor
    val_x8: torch.Tensor
    cf_x8: torch.Tensor  # counterfactuals of the training defect images, rows in the order of cf_rows
    cf_rows: np.ndarray  # training row -> row of cf_x8, or -1 (normal / defect without a mask)
    seconds: float = 0.0
    dataset: str = ""
    fingerprint: str = ""

    def matches(self, cfg: GainConfig) -> bool:
        return (self.backbone, self.image_size, self.seed) == (cfg.backbone, cfg.image_size, cfg.seed)


def _base_net(cfg: GainConfig):
    from core.backbones import load_backbone

    lb = load_backbone(cfg.backbone, "cpu")
    return lb, build_gain_net(lb.model, cfg.width)


def prepare(index: DatasetIndex, cfg: GainConfig, log: Callable[[str], None] = print) -> PreparedData:
    """Read train_normal + train_mix and val_mix at the model size, make the counterfactuals and encode all of them
    with the frozen pretrained stem."""
    t0 = time.perf_counter()
    size = cfg.image_size
    train = concat("train", [load_split(index, "train_normal", size, cfg.limit),
                             load_split(index, "train_mix", size, cfg.limit)])
    val = load_split(index, "val_mix", size, cfg.limit)
    check_two_classes(train, "training set (train_normal + train_mix)")
    check_two_classes(val, "validation set (val_mix)")
    for path, msg in {**train.skipped, **val.skipped}.items():
        log(f"skipped: {msg}")
    lb, net = _base_net(cfg)
    dev = device()
    net.to(dev)
    normals = train.images[train.labels == 0]
    cf_all = counterfactual_images(train, normals, cfg.seed)
    rows = np.flatnonzero((train.labels == 1) & train.masks.reshape(len(train), -1).any(axis=1))
    cf_rows = np.full(len(train), -1, dtype=np.int64)
    cf_rows[rows] = np.arange(len(rows))
    log(f"encoding {len(train)} training, {len(val)} validation and {len(rows)} counterfactual images "
        f"with the frozen {cfg.backbone} stem at {size} px")
    train_x8 = encode_stem(net, train.images, lb.mean, lb.std, dev)
    val_x8 = encode_stem(net, val.images, lb.mean, lb.std, dev)
    cf_x8 = encode_stem(net, cf_all[rows], lb.mean, lb.std, dev) if len(rows) else train_x8[:0]
    return PreparedData(cfg.backbone, size, cfg.seed, tuple(lb.mean), tuple(lb.std), lb.weights_sha256, train, val,
                        train_x8, val_x8, cf_x8, cf_rows, time.perf_counter() - t0, str(index.root),
                        index.fingerprint())


@dataclass
class TrainResult:
    model: GainModel
    history: list[dict[str, Any]]
    best_epoch: int
    seconds: float
    report: dict[str, Any] = field(default_factory=dict)


def _flip(t: torch.Tensor, h: bool, v: bool) -> torch.Tensor:
    dims = ([t.ndim - 1] if h else []) + ([t.ndim - 2] if v else [])
    return t.flip(dims) if dims else t


def validation_scores(net: GainNet, data: PreparedData, cfg: GainConfig) -> dict[str, Any]:
    """val_mix metrics of the current network and the early-stopping score (AUROC + CAM-IoU, + Loc-IoU in S4+)."""
    pred = predict_from_stem(net, data.val_x8, cfg.image_size)
    labels = data.val.labels
    cls = classification_metrics(labels, pred.probs, 0.5)
    d = labels == 1
    att = attention_metrics(pred.cams[d], data.val.masks[d], pred.mask_probs[d] if cfg.flags.localisation else None,
                            thresholds=(cfg.cam_threshold,))
    cam_iou = att.get(f"cam_iou@{cfg.cam_threshold:g}") or 0.0
    score = (cls.auroc or 0.0) + cam_iou + ((att.get("loc_iou") or 0.0) if cfg.flags.localisation else 0.0)
    return {"val_auroc": cls.auroc, "val_f1@0.5": cls.f1, f"val_cam_iou@{cfg.cam_threshold:g}": cam_iou,
            "val_point_game": att.get("point_game"), "val_loc_iou": att.get("loc_iou"), "val_score": score,
            "_probs": pred.probs}


def train(cfg: GainConfig, data: PreparedData, show_progress: bool = True,
          log: Callable[[str], None] = print, progress: ProgressFn = no_progress) -> TrainResult:
    """Train ``cfg.strategy`` on prepared data; the best epoch on val_mix is kept. One tqdm bar per epoch shows the
    running mean of every active loss term; ``progress`` gets one call per batch (steps over the epoch budget;
    early stopping may end sooner)."""
    from tqdm import tqdm

    if not data.matches(cfg):
        raise ValueError("prepared data were made for another backbone, image size or seed")
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    dev = device()
    _, net = _base_net(cfg)
    net.to(dev).train()
    opt = torch.optim.AdamW(
        [{"params": net.head_parameters(), "lr": cfg.lr},
         {"params": net.body_parameters(), "lr": cfg.lr * cfg.backbone_lr_scale}],
        weight_decay=cfg.weight_decay,
    )
    labels = data.train.labels
    def_idx = np.flatnonzero(labels == 1)
    norm_idx = np.flatnonzero(labels == 0)
    n_norm = int(min(len(norm_idx), max(1, round(cfg.normals_per_defect * len(def_idx)))))
    per_epoch = len(def_idx) + n_norm
    steps_per_epoch = math.ceil(per_epoch / cfg.batch_size)
    total_steps = cfg.max_epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    pos_weight = n_norm / max(1, len(def_idx))
    masks = torch.from_numpy(data.train.masks.astype(np.float32)).to(dev)
    y_all = torch.from_numpy(labels.astype(np.float32)).to(dev)
    cf_rows = torch.from_numpy(data.cf_rows)
    g = torch.Generator().manual_seed(cfg.seed)
    best_score, best_state, best_epoch, history = -float("inf"), None, 0, []
    step = 0
    for ep in range(cfg.max_epochs):
        te = time.perf_counter()
        chosen_norm = norm_idx[torch.randperm(len(norm_idx), generator=g)[:n_norm].numpy()]
        order = np.concatenate([def_idx, chosen_norm])[torch.randperm(per_epoch, generator=g).numpy()]
        sums: dict[str, float] = {}
        bar = tqdm(total=steps_per_epoch, desc=f"{cfg.strategy} epoch {ep + 1}/{cfg.max_epochs}", unit="batch",
                   leave=True, dynamic_ncols=True, disable=not show_progress)
        net.train()
        for b in range(steps_per_epoch):
            idx = torch.from_numpy(order[b * cfg.batch_size:(b + 1) * cfg.batch_size])
            flips = torch.rand(2, generator=g) < 0.5
            h, v = bool(flips[0]), bool(flips[1])
            cf_x8 = None
            if cfg.flags.counterfactual:
                rows = cf_rows[idx]
                cf_x8 = data.train_x8[idx].clone()
                has = rows >= 0
                if has.any():
                    cf_x8[has.to(cf_x8.device)] = data.cf_x8[rows[has].to(data.cf_x8.device)]
                cf_x8 = _flip(cf_x8, h, v)
            batch = Batch(x8=_flip(data.train_x8[idx.to(data.train_x8.device)], h, v),
                          y=y_all[idx.to(dev)], mask=_flip(masks[idx.to(dev)], h, v), cf_x8=cf_x8)
            losses = compute_losses(net, batch, cfg, step / total_steps, pos_weight)
            opt.zero_grad(set_to_none=True)
            losses.total.backward()
            opt.step()
            sched.step()
            step += 1
            for k, val in losses.terms.items():
                sums[k] = sums.get(k, 0.0) + float(val.detach())
            sums["total"] = sums.get("total", 0.0) + float(losses.total.detach())
            post = {k: f"{s / (b + 1):.3f}" for k, s in sums.items()}
            if cfg.flags.gt_fusion:
                post["gt_w"] = f"{losses.fusion_weight:.2f}"
            bar.set_postfix(post, refresh=False)
            bar.update(1)
            progress(f"training {cfg.strategy}: epoch {ep + 1} of at most {cfg.max_epochs}", step, total_steps)
        bar.close()
        val = validation_scores(net, data, cfg)
        row = {"epoch": ep + 1, **{f"loss_{k}": s / steps_per_epoch for k, s in sums.items()},
               **{k: v for k, v in val.items() if not k.startswith("_")}, "seconds": time.perf_counter() - te}
        history.append(row)
        if show_progress:
            log(f"  {cfg.strategy} epoch {ep + 1}: " + ", ".join(
                f"{k}={v:.3f}" for k, v in row.items()
                if isinstance(v, float) and k.startswith(("val_", "loss_total"))))
        if val["val_score"] > best_score + 1e-6:
            best_score, best_epoch = val["val_score"], ep + 1
            best_state = copy.deepcopy({k: t.detach().clone() for k, t in net.state_dict().items()})
        elif ep + 1 - best_epoch >= cfg.patience:
            break
    net.load_state_dict(best_state)
    net.eval()
    val = validation_scores(net, data, cfg)
    threshold = f1_best_threshold(data.val.labels, val["_probs"])
    seconds = time.perf_counter() - t0
    report = {
        "epochs_run": len(history), "best_epoch": best_epoch, "best_val_score": best_score,
        "threshold_from": "F1-best on val_mix", "train_seconds": seconds, "prepare_seconds": data.seconds,
        "n_train": int(len(labels)), "n_train_defect": int(len(def_idx)), "n_val": int(len(data.val)),
        "normals_per_epoch": n_norm, "pos_weight": pos_weight, "device": str(dev), "history": history,
    }
    meta = {"dataset": data.dataset, "dataset_fingerprint": data.fingerprint, "weights_sha256": data.weights_sha256,
            "train_report": report}
    model = GainModel(net=net, config=cfg, mean=data.mean, std=data.std, threshold=threshold, meta=meta)
    return TrainResult(model=model, history=history, best_epoch=best_epoch, seconds=seconds, report=report)

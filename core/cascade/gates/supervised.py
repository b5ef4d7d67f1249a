"""Supervised gate: a small pretrained CNN fine-tuned on both classes.

Trained on train_normal + train_mix (both classes: a one-class training set is refused), with the positive class
weighted by the imbalance (pos_weight = n_normal / n_anomalous), early stopping on the val_mix loss, and the
probabilities calibrated on val_mix (temperature and bias on the logit). To keep CPU training short only the last
blocks, the head and the new one-logit classifier train; the frozen stem's outputs are computed once (random
flips are applied to them as augmentation). BatchNorm statistics stay frozen. Deterministic for a seed.

Scoring runs the fitted network through its inference copy (``core/backbones/inference_copy.py``: BatchNorm
folded, NHWC, a frozen graph per input size on the CPU), the fast path the detectors' backbone takes.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from core.cascade.calibration import TemperatureCalibration
from core.cascade.gates.base import Gate
from core.errors import DatasetError


def _auroc(labels, scores) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def _build(backbone: str) -> nn.Module:
    import timm

    from core.backbones import weights_file

    return timm.create_model(backbone, pretrained=True, num_classes=1,
                             pretrained_cfg_overlay=dict(file=str(weights_file(backbone))))


class SupervisedGate(Gate):
    kind = "supervised"
    needs_labels = True

    def __init__(self, seed: int = 0, backbone: str = "mobilenetv2_100", size: int = 128, frozen_blocks: int = 5,
                 max_epochs: int = 12, patience: int = 3, lr: float = 1e-3, batch_size: int = 32) -> None:
        super().__init__(seed)
        self.backbone, self.size, self.frozen_blocks = backbone, int(size), int(frozen_blocks)
        self.max_epochs, self.patience, self.lr, self.batch_size = (int(max_epochs), int(patience), float(lr),
                                                                    int(batch_size))
        self.model: nn.Module | None = None
        self._mean = self._std = None
        self._fast = None  # InferenceCopy of the fitted model, built on first scoring

    # --- model pieces ---------------------------------------------------------------------------
    def _preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        from core.backbones import load_backbone

        return load_backbone(self.backbone, "cpu").preprocess(list(images), self.size)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.bn1(m.conv_stem(x))
        for i in range(self.frozen_blocks):
            x = m.blocks[i](x)
        return x

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        m = self.model
        for i in range(self.frozen_blocks, len(m.blocks)):
            h = m.blocks[i](h)
        h = m.bn2(m.conv_head(h))
        return m.classifier(m.global_pool(h)).reshape(-1)

    def _trainable(self) -> list[dict[str, Any]]:
        """Parameter groups: the pretrained blocks that train get a 10x smaller step than the new classifier
        (Adam moves every weight by about lr per step; at 1e-3 the pretrained features are destroyed)."""
        m = self.model
        mods = [m.blocks[i] for i in range(self.frozen_blocks, len(m.blocks))] + [m.conv_head, m.bn2]
        return [{"params": [p for mod in mods for p in mod.parameters()], "lr": self.lr * 0.1},
                {"params": list(m.classifier.parameters()), "lr": self.lr}]

    def _stem_features(self, images: list[np.ndarray]) -> torch.Tensor:
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), 64):
                out.append(self._stem(self._preprocess(images[i:i + 64])))
        return torch.cat(out).clone()

    def logits(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """One logit per image, through the inference copy of the fitted network."""
        from core.backbones.inference_copy import InferenceCopy

        x = self._preprocess(images)
        if self._fast is None:
            self._fast = InferenceCopy(self.model, x)
        return self._fast(x).reshape(-1).double().numpy()

    # --- fit ------------------------------------------------------------------------------------
    def _fit(self, images, labels, val_images, val_labels, progress):
        for name, y in (("training set (train_normal + train_mix)", labels), ("validation set (val_mix)", val_labels)):
            n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
            if n_pos == 0 or n_neg == 0:
                raise DatasetError(
                    f"The supervised gate's {name} holds only one class ({n_neg} normal, {n_pos} anomalous): a "
                    "classifier trained on one class learns to call everything that class.",
                    "Train it on train_normal + train_mix of a dataset with defective images in test/ (or use a "
                    "label-free gate: distance, stats or autoencoder).",
                )
        torch.manual_seed(self.seed)
        self.model = _build(self.backbone).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        params = self._trainable()
        for group in params:
            for p in group["params"]:
                p.requires_grad_(True)
        progress("supervised gate: features", 0, 2)
        x, vx = self._stem_features(images), self._stem_features(val_images)
        progress("supervised gate: features", 2, 2)
        y = torch.as_tensor(labels, dtype=torch.float32)
        vy = torch.as_tensor(val_labels, dtype=torch.float32)
        pos_weight = torch.tensor(float((y == 0).sum()) / float((y == 1).sum()))
        vpos_weight = torch.tensor(float((vy == 0).sum()) / float((vy == 1).sum()))
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=1e-4)
        g = torch.Generator().manual_seed(self.seed)
        best, best_state, best_epoch, history, aurocs = float("inf"), None, -1, [], []
        for ep in range(self.max_epochs):
            perm = torch.randperm(len(x), generator=g)
            for i in range(0, len(x), self.batch_size):
                idx = perm[i:i + self.batch_size]
                xb = x[idx]
                flip = torch.rand(2, generator=g)
                if flip[0] < 0.5:
                    xb = xb.flip(3)
                if flip[1] < 0.5:
                    xb = xb.flip(2)
                loss = nn.functional.binary_cross_entropy_with_logits(self._head(xb), y[idx], pos_weight=pos_weight)
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                vlog = torch.cat([self._head(vx[i:i + 128]) for i in range(0, len(vx), 128)])
                vloss = float(nn.functional.binary_cross_entropy_with_logits(vlog, vy, pos_weight=vpos_weight))
            history.append(vloss)
            auc = _auroc(val_labels, vlog.numpy())
            aurocs.append(auc)
            progress("supervised gate: epochs", ep + 1, self.max_epochs)
            if vloss < best - 1e-4:
                best, best_epoch = vloss, ep
                best_state = copy.deepcopy({k: v.detach().clone() for k, v in self.model.state_dict().items()})
            elif ep - best_epoch >= self.patience:
                break
        self.model.load_state_dict(best_state)
        self._fast = None  # the weights changed: any inference copy is stale
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        with torch.inference_mode():
            vlog = torch.cat([self._head(vx[i:i + 128]) for i in range(0, len(vx), 128)]).double().numpy()
        self.calibration = TemperatureCalibration().fit(vlog, val_labels)
        return {"epochs_run": len(history), "best_epoch": best_epoch + 1, "val_loss_history": history,
                "val_auroc_history": aurocs, "pos_weight": float(pos_weight), "calibration": self.calibration.to_dict()}

    def _raw(self, images):
        return self.logits(images)

    def n_parameters(self) -> int:
        return int(sum(p.numel() for p in self.model.parameters())) if self.model is not None else 0

    def _params(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "size": self.size, "frozen_blocks": self.frozen_blocks,
                "max_epochs": self.max_epochs, "patience": self.patience, "lr": self.lr, "batch_size": self.batch_size}

    def _arrays(self):
        return {f"model.{k}": v.detach().cpu().numpy() for k, v in self.model.state_dict().items()}

    def _load(self, params, arrays):
        import timm

        self.backbone, self.size, self.frozen_blocks = (params["backbone"], int(params["size"]),
                                                        int(params["frozen_blocks"]))
        self.max_epochs, self.patience = int(params["max_epochs"]), int(params["patience"])
        self.lr, self.batch_size = float(params["lr"]), int(params["batch_size"])
        self.model = timm.create_model(self.backbone, pretrained=False, num_classes=1)
        self.model.load_state_dict({k[6:]: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()
                                    if k.startswith("model.")})
        self.model.eval().requires_grad_(False)
        self._fast = None

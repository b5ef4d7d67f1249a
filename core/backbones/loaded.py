"""A loaded backbone at run time: the model as built (for training), its inference copy (BatchNorm folded, NHWC;
on the CPU run by onnxruntime, one graph per input size class, else as a frozen TorchScript graph per input size),
preprocessing and the feature pass; cached per (name, device)."""

from __future__ import annotations

import logging
import threading
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from core import config
from core.backbones.catalogue import get_backbone_info
from core.backbones.hub import _create_from_hub, _layers_from_model, _state_dict_sha
from core.backbones.sources import _SOURCES, IMAGENET_MEAN, IMAGENET_STD, BackboneInfo
from core.backbones.vit_pos_embed import _pos_embed_no_antialias
from core.backbones.weight_cache import _missing_package_error, _weights_file_and_sha
from core.errors import BackboneUnavailableError, WorkbenchError

if TYPE_CHECKING:
    from core.backbones.onnx_feature_graph import OnnxFeatureGraph

log = logging.getLogger(__name__)


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
    # CPU feature pass of the inference copy run by onnxruntime (onnx_feature_graph.py); else, or where that graph
    # is not kept, as a frozen TorchScript graph (feature_graph.py)
    onnx_features: bool = True
    trace_features: bool = True
    onednn_graph: bool = True  # ... rewritten for oneDNN where that reproduces the eager pass (ditto)
    _strides: dict[str, int] = field(default_factory=dict, repr=False)
    _graphs: dict[tuple, torch.jit.ScriptModule | None] = field(default_factory=dict, repr=False)
    _onnx_graphs: dict[tuple, OnnxFeatureGraph | None] = field(default_factory=dict, repr=False)
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
        self._onnx_graphs.clear()
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
        return out.sub_(mean).div_(std)  # in place: at 12 MP each copy is 144 MB

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` validated, on the device and in the torch pass's layout (``_torch_layout``)."""
        return self._torch_layout(self._validated(x))

    def _torch_layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in NHWC when the CNN runs channels-last (the onnxruntime pass reads NCHW as it is)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _validated(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the device, or a WorkbenchError naming what is wrong with its shape."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise WorkbenchError(f"Backbone input has shape {tuple(x.shape)}; expected B x 3 x H x W.",
                                 "Use LoadedBackbone.preprocess to make the input.")
        ps = self.patch_size
        if ps > 1 and (x.shape[-2] % ps or x.shape[-1] % ps):
            raise WorkbenchError(
                f"{self.info.name} needs an input size that is a multiple of {ps}; got {x.shape[-2]} x {x.shape[-1]}.",
                f"Use a size such as {ps * 16} or {ps * 32}.",
            )
        return x.to(self.device)

    def feature_maps(
        self, x: torch.Tensor, layers: Sequence[str], precision: str = "float32"
    ) -> dict[str, torch.Tensor]:
        """B x C x h x w feature maps of the named modules; the forward pass stops after the deepest one.

        For ViT blocks the tokens are reshaped to B x C x (H / patch) x (W / patch), class/register tokens dropped.
        On the CPU a CNN's inference copy runs by onnxruntime (``onnx_feature_graph.py``), else as a frozen graph per
        input size (``feature_graph.py``), each checked against this eager pass when built. ``precision="bfloat16"``
        runs the pass under bfloat16 autocast (eager; float32 maps out): fast only where the device computes bfloat16
        natively (``bfloat16_is_fast``).
        """
        check_precision(precision)
        layers = tuple(dict.fromkeys(layers))
        if not layers:
            return {}
        x = self._validated(x)
        for name in layers:
            try:
                self.inference_model.get_submodule(name)
            except AttributeError:
                raise WorkbenchError(
                    f"{self.info.name} has no layer {name!r}.",
                    f"Choose from: {', '.join(self.info.all_layers) or 'its module names'}.",
                ) from None
        if precision == "bfloat16":
            maps = self._eager_feature_maps(self._torch_layout(x), layers, bfloat16=True)
            return {n: self._to_map(t, x).float() for n, t in maps.items()}
        onnx_graph = self._onnx_graph(layers, x)
        if onnx_graph is not None:
            return dict(zip(layers, onnx_graph(x)))
        x = self._torch_layout(x)
        graph = self._feature_graph(layers, x)
        if graph is not None:
            with torch.inference_mode():
                outputs = graph(x)
            return {n: self._to_map(t, x) for n, t in zip(layers, outputs)}
        return {n: self._to_map(t, x) for n, t in self._eager_feature_maps(x, layers).items()}

    def _onnx_graph(self, layers: tuple[str, ...], x: torch.Tensor) -> OnnxFeatureGraph | None:
        """The onnxruntime feature pass for ``x``'s size class (built and checked on first use), or None: torch."""
        if not (self.onnx_features and self.use_folded and self.device.type == "cpu" and self.info.kind != "vit"):
            return None
        from core.backbones.onnx_feature_graph import build_onnx_feature_graph, size_class

        key = (layers, size_class(int(x.shape[-2]), int(x.shape[-1])))
        with self._graph_lock:
            if key not in self._onnx_graphs:
                self._onnx_graphs[key] = build_onnx_feature_graph(
                    self.inference_model, layers, int(x.shape[-2]), int(x.shape[-1]), torch.get_num_threads())
            return self._onnx_graphs[key]

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

    def _eager_feature_maps(self, x: torch.Tensor, layers: Sequence[str], bfloat16: bool = False
                            ) -> dict[str, torch.Tensor]:
        """Raw outputs of ``layers`` from a forward pass stopped after the deepest of them (hooks)."""
        from core.backbones.feature_graph import capture_layers

        if bfloat16 and self.info.kind != "vit":
            x = x.contiguous(memory_format=torch.channels_last)  # oneDNN's bfloat16 convolutions want NHWC
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bfloat16):
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


PRECISIONS = ("float32", "bfloat16")


def check_precision(precision: str) -> None:
    """ValueError naming the choices unless ``precision`` is one of PRECISIONS."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")


def bfloat16_is_fast(device: str | torch.device | None = None) -> bool:
    """Whether ``device`` (None: the one backbones load on) computes bfloat16 natively: a CUDA GPU that supports it,
    or a CPU with AVX512-BF16 or AMX, read from the Linux CPU flags (False where there are none). Elsewhere bfloat16
    autocast is emulated, and slower than float32."""
    dev = config.torch_device(str(device) if device is not None else None)
    if dev.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool(_CPU_BF16_FLAGS & _cpu_flags())


_CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


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

"""The CPU feature pass of a CNN's inference copy, run by onnxruntime.

Why: on the 2-core CPU, onnxruntime ran lite0's feature pass (inference copy up to the default layers) 1.7-2.5x
faster than the frozen TorchScript graph or the eager pass, the gap growing with the input: a 4000 x 3000 image
took about a third of the time. ``benchmarks/backbone_speed.py`` (224 px) and ``benchmarks/backbone_batch.py``
(640 px up to 12 MP) time it against the TorchScript graph in the same process.

The graph is the same capture as the TorchScript one (``feature_graph.capture_layers``: it stops after the
deepest requested layer), exported once per *size class* with height, width and batch as free axes. An ONNX
export records Python integers as constants, and in these CNNs the only size-dependent integers are the TF
"same" paddings (``same_padding.py``: whether an axis gets the extra right/bottom pixel depends on its parity at
each stride-2 stage). Inputs whose height and width agree modulo 64 have equal parities at every stage up to
stride 32, so a graph exported on a small probe of the input's class serves every input of that class.

A graph is kept only when it reproduces the eager pass (``outputs_match``) on two inputs of its class that differ
in height, width and batch size; else None, and the TorchScript graph or the eager pass runs. Without
onnxruntime installed, or for a model the exporter cannot follow, the same. Like the TorchScript graph it is a
snapshot of the weights, so only inference copies are exported.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from core.backbones.batchnorm_folding import outputs_match
from core.backbones.feature_graph import LayerOutputs, capture_layers
from core.onnx_session import ONNX_OPSET, onnx_session

log = logging.getLogger(__name__)

# After a run over more input pixels than this, the memory arena hands its free buffers back to the system: a
# 12-MP pass leaves ~2.5 GB in it otherwise, on top of what scoring needs next (benchmarks/highres_synthetic.py).
SHRINK_ABOVE_PIXELS = 4_000_000
# Heights and widths equal modulo this get the same "same" padding at every stride-2 stage up to stride 32.
SIZE_MODULUS = 64


def size_class(height: int, width: int) -> tuple[int, int]:
    """The key of the graph that serves ``height`` x ``width`` inputs (see the module docstring)."""
    return height % SIZE_MODULUS, width % SIZE_MODULUS


class OnnxFeatureGraph:
    """``graph(x)`` = the ``layers`` outputs of the eager pass for a B x 3 x H x W float32 CPU tensor (NCHW), as a
    tuple of NCHW float32 tensors, up to float rounding."""

    def __init__(self, session: Any, layers: Sequence[str]) -> None:
        self.session = session
        self.layers = tuple(layers)
        self._input = session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        arr = x.detach().contiguous().numpy()  # onnxruntime reads NCHW: a copy only for a channels-last input
        big = arr.shape[0] * arr.shape[2] * arr.shape[3] > SHRINK_ABOVE_PIXELS
        outputs = self.session.run(None, {self._input: arr}, _shrink_options() if big else None)
        return tuple(torch.from_numpy(o) for o in outputs)


def build_onnx_feature_graph(
    model: torch.nn.Module, layers: Sequence[str], height: int, width: int, threads: int
) -> OnnxFeatureGraph | None:
    """The checked onnxruntime graph for inputs of ``height`` x ``width``'s size class, or None (run the torch
    pass); ``model`` is an inference copy on the CPU."""
    rh, rw = size_class(height, width)
    gen = torch.Generator().manual_seed(0)
    export_probe = torch.randn((2, 3, SIZE_MODULUS + rh, SIZE_MODULUS + rw), generator=gen)
    check_probe = torch.randn((3, 3, 2 * SIZE_MODULUS + rh, 3 * SIZE_MODULUS + rw), generator=gen)
    try:
        session = onnx_session(_export(model, layers, export_probe), threads)
    except ImportError:
        log.info("onnxruntime is not installed; the feature pass runs in torch")
        return None
    except Exception as exc:  # noqa: BLE001  (any exporter or runtime failure means: the torch pass)
        log.info("feature pass not exported to ONNX (%s: %s); it runs in torch", type(exc).__name__, exc)
        return None
    graph = OnnxFeatureGraph(session, layers)
    for probe in (export_probe, check_probe):
        if not _reproduces(graph, model, layers, probe):
            log.warning("the ONNX feature pass differed from the eager one on a %s input; it runs in torch",
                        tuple(probe.shape))
            return None
    return graph


def _export(model: torch.nn.Module, layers: Sequence[str], probe: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    names = [f"layer{i}" for i in range(len(layers))]
    free = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings: the paddings become constants (one graph per size class)
        torch.onnx.export(LayerOutputs(model, layers).eval(), (probe,), buf, dynamo=False,
                          opset_version=ONNX_OPSET, input_names=["image"], output_names=names,
                          dynamic_axes={"image": free, **{n: free for n in names}})
    return buf.getvalue()


def _reproduces(graph: OnnxFeatureGraph, model: torch.nn.Module, layers: Sequence[str], probe: torch.Tensor) -> bool:
    with torch.inference_mode():
        eager = capture_layers(model, layers, probe)
    try:
        outputs = graph(probe)
    except Exception as exc:  # noqa: BLE001
        log.info("ONNX feature pass failed on its check (%s: %s)", type(exc).__name__, exc)
        return False
    return len(outputs) == len(layers) and all(outputs_match(eager[n], o) for n, o in zip(layers, outputs))


def _shrink_options() -> Any:
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options

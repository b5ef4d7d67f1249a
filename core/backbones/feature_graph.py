"""The feature pass of a CNN's inference copy as one frozen TorchScript graph (CPU), and the layer capture it shares
with the eager pass and the onnxruntime pass. On the CPU the onnxruntime pass (``onnx_feature_graph.py``) runs
first; this graph runs where that one is off or was not kept.

Eager PyTorch pays Python and dispatcher overhead on every module call: lite0's feature pass makes ~180 of them
per batch, which at batch 1 on 2 CPU cores is a quarter of its ~13 ms. A traced, frozen graph runs the same
kernels from TorchScript's C++ interpreter. It is traced from the same layer capture as the eager pass
(``capture_layers``), which stops after the deepest requested layer, so the head is never in the graph.
``benchmarks/backbone_speed.py`` times it against the eager pass in the same process.

Tracing records one input size; the graph is kept per (layers, height, width) and checked before first use: on
a batch of two it must reproduce the eager pass bit for bit up to float rounding (``outputs_match``), so a
graph that specialised on the batch size, or a model the tracer cannot follow, falls back to the eager pass
instead of returning wrong features. Only inference copies are traced: freezing snapshots the weights, and the
inference copy is already a snapshot (the model as built, which training may change, always runs eagerly).

``torch.jit`` is deprecated in favour of ``torch.compile`` / ``torch.export``; compile needs a C++ toolchain at
run time and tens of seconds per shape on 2 cores, export runs its graph from Python. Any failure here (a torch
without ``torch.jit`` included) only means the eager pass.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from core.backbones.batchnorm_folding import outputs_match

log = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by the last layer hook: nothing after the deepest requested layer needs computing."""


def capture_layers(model: torch.nn.Module, layers: Sequence[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs of the modules named ``layers`` (first element of a tuple output) from one forward pass of ``model``
    (``forward_features`` where it has one), stopped after the deepest of them. Layers that did not run are missing
    from the result. Used by the eager pass and, under the tracer, to build the graph (which so never sees the
    head)."""
    modules = {name: model.get_submodule(name) for name in layers}
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_module, _inputs, output):
            captured[name] = output[0] if isinstance(output, (tuple, list)) else output
            if len(captured) == len(modules):
                raise _StopForward

        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in modules.items()]
    try:
        (model.forward_features if hasattr(model, "forward_features") else model)(x)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return captured


class LayerOutputs(torch.nn.Module):
    """``capture_layers`` as a module returning a tuple, the form ``torch.jit.trace`` takes."""

    def __init__(self, model: torch.nn.Module, layers: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.layers = list(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        captured = capture_layers(self.model, self.layers, x)
        return tuple(captured[n] for n in self.layers)


def trace_feature_graph(
    model: torch.nn.Module,
    layers: Sequence[str],
    example: torch.Tensor,
    eager: dict[str, torch.Tensor],
    onednn: bool = True,
) -> torch.jit.ScriptModule | None:
    """A frozen graph mapping ``example``-sized inputs to the ``layers`` outputs of ``model``, or None when it
    cannot be built or does not reproduce ``eager`` (the eager outputs for ``example``, a batch of >= 2).

    ``onednn``: also try the graph rewritten by ``torch.jit.optimize_for_inference`` (convolutions on oneDNN with
    weights packed once, activations fused, NCHW output without a layout copy), kept when it reproduces ``eager``
    too; else the plain frozen graph. ``benchmarks/backbone_speed.py`` times both.
    """
    return checked_graph(LayerOutputs(model, layers), example, [eager[n] for n in layers], onednn)


def checked_graph(
    module: torch.nn.Module, example: torch.Tensor, reference: Sequence[torch.Tensor], onednn: bool = True
) -> torch.jit.ScriptModule | None:
    """``module`` (returning a tensor or a tuple of them) traced and frozen for ``example``'s size, kept only when
    it reproduces ``reference`` (the eager outputs for ``example``, a batch of >= 2); else None: run eagerly.

    The same rules as the feature pass: the oneDNN rewrite is tried first and the plain frozen graph only if the
    rewrite is not kept. Used by the feature pass and by the supervised gate's whole-network inference pass.
    """
    try:
        with _tracing():
            traced = torch.jit.trace(module.eval(), example[:1].clone(), check_trace=False)
            traced.eval()
    except Exception as exc:  # noqa: BLE001  (any tracer failure means: run eagerly)
        log.info("pass not traced (%s: %s); running it eagerly", type(exc).__name__, exc)
        return None
    for rewrite in (True, False) if onednn else (False,):  # the plain graph is frozen only if the rewrite is not kept
        graph = _frozen(traced, rewrite)
        if graph is not None and _reproduces(graph, example, reference):
            return graph
    log.warning("the traced pass could not be frozen or differed from the eager one; running it eagerly")
    return None


@contextmanager
def _tracing() -> Iterator[None]:
    # The tracer warns that shape arithmetic becomes constants (intended: one graph per input size) and that
    # torch.jit is deprecated (see the module docstring).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.inference_mode(False), torch.no_grad():
            yield


def _frozen(traced: torch.jit.ScriptModule, onednn: bool) -> torch.jit.ScriptModule | None:
    """``traced`` frozen, and rewritten for oneDNN when asked; None when that fails (e.g. a torch without oneDNN)."""
    try:
        with _tracing():
            graph = torch.jit.freeze(traced)
            return torch.jit.optimize_for_inference(graph) if onednn else graph
    except Exception as exc:  # noqa: BLE001
        log.info("feature graph not frozen%s (%s: %s)", " for oneDNN" if onednn else "", type(exc).__name__, exc)
        return None


def _reproduces(graph: torch.jit.ScriptModule, example: torch.Tensor, reference: Sequence[torch.Tensor]) -> bool:
    try:
        with torch.inference_mode():
            outputs = graph(example)
    except Exception as exc:  # noqa: BLE001
        log.info("traced graph failed on its check (%s: %s)", type(exc).__name__, exc)
        return False
    outputs = (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)
    return len(outputs) == len(reference) and all(outputs_match(r, o) for r, o in zip(reference, outputs))

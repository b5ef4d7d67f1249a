"""The fast inference pass of a whole trained network (e.g. the supervised cascade gate's fine-tuned CNN), made the
way the detectors' backbone pass is made: BatchNorm folded into the convolutions, NHWC layout, and on the CPU one
frozen TorchScript graph per input shape. Each step is kept only where it reproduces the network as given (same
``outputs_match`` check as the backbone), so a network the folding or the tracer cannot follow runs as it is.

The network itself is never changed: training keeps using it eagerly; this is a snapshot taken after training
(or after loading). ``benchmarks/gate_speed.py`` times it against the network as given, in the same process.
"""

from __future__ import annotations

import copy
import threading

import torch

from core.backbones.batchnorm_folding import fold_batchnorm, outputs_match
from core.backbones.feature_graph import checked_graph


class InferenceCopy:
    """``copy(x)`` = ``model(x)`` (up to float rounding), faster; build it after the weights are final."""

    def __init__(self, model: torch.nn.Module, example: torch.Tensor, trace: bool = True) -> None:
        model = model.eval()
        probe = torch.cat([example[:1], example[:1].flip(-1)])  # two images: the batch size stays free
        with torch.inference_mode():
            reference = model(probe)
        folded, pairs = fold_batchnorm(copy.deepcopy(model))
        folded.eval().requires_grad_(False)
        if pairs and example.device.type == "cpu":
            folded.to(memory_format=torch.channels_last)
        with torch.inference_mode():
            same = pairs > 0 and outputs_match(reference, folded(probe))
        self.module = folded if same else model
        self.folded = bool(same)
        self.trace = trace and example.device.type == "cpu"
        self._graphs: dict[tuple, torch.jit.ScriptModule | None] = {}
        self._lock = threading.Lock()

    def graph_for(self, x: torch.Tensor) -> torch.jit.ScriptModule | None:
        """The checked frozen graph for ``x``'s shape (built on first use), or None: run eagerly."""
        if not self.trace:
            return None
        key = (tuple(x.shape[1:]), x.dtype)
        with self._lock:
            if key not in self._graphs:
                probe = torch.cat([x[:1], x[:1].flip(-1)])
                with torch.inference_mode():
                    ref = self.module(probe)
                self._graphs[key] = checked_graph(self.module, probe, [ref])
            return self._graphs[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.folded:
            x = x.contiguous(memory_format=torch.channels_last)
        graph = self.graph_for(x)
        with torch.inference_mode():
            out = graph(x) if graph is not None else self.module(x)
        return out[0] if isinstance(out, (tuple, list)) else out

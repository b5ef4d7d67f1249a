"""onnxruntime sessions as the product runs them: the engine's CPU feature pass (core/backbones/onnx_feature_graph.py)
and an exported bundle's feature graph (core/bundle/runtime.py). Never imports torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The opset both graphs are written in (torch's TorchScript-based exporter).
ONNX_OPSET = 17


def onnx_session(model: bytes | str | Path, threads: int) -> Any:
    """An onnxruntime CPU session over ``model`` (ONNX bytes or a file) on ``threads`` threads.

    Its threads do not spin after a run: the faiss search and the torch work that follow need the cores (the same
    policy as OMP_WAIT_POLICY=PASSIVE, core/config.py). Raises ImportError when onnxruntime is not installed.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only: a fallback is logged by the caller
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])

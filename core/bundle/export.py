"""Export a fitted heatmap model folder to a bundle that scores without torch (see core/bundle/runtime.py).

The feature graph is the torch path's own code traced once: the backbone's inference copy up to the model's
layers (``capture_layers``) and ``patch_embedding`` (PatchCore's neighbourhood pooling and layer weight, PaDiM's
channel subset), output as B x h x w x C patch rows. Resize and normalisation stay outside the graph, exactly
specified in the manifest and done by ``resample.resize_image`` (an antialiased resize from any input size is not
an ONNX op). The export is checked: the graph must reproduce the torch features on a real-size probe, or nothing
is written. The bundle is written under a temporary name beside ``out`` and swapped in.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from core.bundle import MANIFEST_NAME, is_bundle
from core.bundle.manifest import BUNDLE_FORMAT_VERSION, FORMATS
from core.errors import WorkbenchError
from core.onnx_session import ONNX_OPSET
from core.storage import PRODUCT, atomic_write_bytes, atomic_write_json, sha256_file

if TYPE_CHECKING:  # annotations only: the module must import without torch
    import torch

GRAPH_FILES = {"onnx": "feature.onnx", "openvino": "feature.xml"}
ARRAYS_FILE = "arrays.safetensors"
# Largest |graph - torch| / max|torch| on the probe that the export accepts (float32 rounding is ~1e-6).
GRAPH_TOLERANCE = 1e-4


def _feature_module(det):
    """The torch path's feature pass + patch embedding as one module: B x 3 x S x S -> B x h x w x C."""
    import torch

    from core.backbones.feature_graph import capture_layers
    from core.detectors.embedding import patch_embedding

    lb = det.extractor().backbone
    layers = tuple(det.layers)
    if det.kind == "patchcore":
        kwargs = {"neighbourhood": det.cfg.neighbourhood, "fine_weight": det.cfg.fine_layer_weight}
    else:
        kwargs = {"neighbourhood": 1, "channels": det.channels}

    class FeatureEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = lb.inference_model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            captured = capture_layers(self.model, layers, x)
            maps = {n: lb._to_map(captured[n], x) for n in layers}
            return patch_embedding(maps, layers, **kwargs).permute(0, 2, 3, 1)

    return FeatureEmbedding().eval(), lb


def _probe(lb, size: int | tuple[int, int]) -> "torch.Tensor":
    """Two real-looking inputs (a smooth gradient and noise), normalised as the torch path does."""
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(0, 255, 300, dtype=np.float32), (260, 1))
    imgs = [np.clip(ramp + rng.normal(0, 20, ramp.shape), 0, 255).astype(np.uint8),
            rng.integers(0, 256, (300, 340, 3), dtype=np.uint8)]
    return lb.preprocess(imgs, size)


def _write_onnx(module, probe, path: Path) -> None:
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings: shapes become constants (one graph per input size)
        torch.onnx.export(module, (probe,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["image"], output_names=["patches"],
                          dynamic_axes={"image": {0: "batch"}, "patches": {0: "batch"}})


def _write_openvino(onnx_path: Path, xml_path: Path) -> None:
    try:
        import openvino as ov
    except ImportError as exc:
        raise WorkbenchError(f"Exporting to OpenVINO needs the openvino package ({exc}).",
                             "Install it with `pip install openvino==2026.4.1`, or export --format onnx only."
                             ) from None
    # fp32 weights: save_model halves them by default, which would move scores by ~1e-3.
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)


def _check_graph(folder: Path, fmt: str, probe: np.ndarray, want: np.ndarray) -> float:
    from core.bundle.runtime import FeatureGraph

    got = FeatureGraph(folder / GRAPH_FILES[fmt], fmt, threads=os.cpu_count() or 1).run(probe)
    err = float(np.abs(got - want).max() / max(1e-12, float(np.abs(want).max())))
    if got.shape != want.shape or not err <= GRAPH_TOLERANCE:
        raise WorkbenchError(f"The exported {fmt} graph does not reproduce the torch features (shape {got.shape} vs "
                             f"{want.shape}, relative difference {err:.2e}).",
                             "Report this with the model's backbone and layers; export with the other format.")
    return err


def _arrays(det) -> dict[str, np.ndarray]:
    if det.kind == "padim":
        return {"channels": det.channels.astype(np.int64), "mean": det.mean, "inv_cov": det.inv_cov}
    arrays = {"bank": det.bank}
    if det.extra_bank is not None and len(det.extra_bank):
        arrays["extra_bank"] = det.extra_bank
    if det.score_scale is not None:
        arrays["score_scale"] = det.score_scale
    if det.index.kind != "flat":  # the fitted IVF indexes themselves; flat ones are rebuilt exactly from the rows
        arrays["map_index"] = det.index.to_bytes()
        if det.rescore_index is not None:
            arrays["score_index"] = det.rescore_index.to_bytes()
    return arrays


def _scoring(det) -> tuple[dict[str, Any], dict[str, Any] | None]:
    if det.kind == "padim":
        return {"map": "Mahalanobis distance per position", "image": "map max"}, None
    c = det.cfg
    return ({"map_neighbors": c.map_neighbors, "rescore_patches": c.rescore_patches, "num_neighbors": c.num_neighbors},
            c.index.to_dict())


def _cascade(model_dir: Path) -> dict[str, Any] | None:
    """The model's cascade settings when it has a gate. The gate itself is not exported (see the README)."""
    path = model_dir / "cascade" / "cascade.json"
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cfg = {}
    pol = dict(cfg.get("policy") or {})
    return {"gate": cfg.get("gate"), "gate_exported": False, "t_low": pol.get("t_low"), "t_high": pol.get("t_high"),
            "note": "The gate is not in this bundle: the bundle decides every image with the heatmap model and its "
                    "image threshold (the cascade's heatmap_only mode). T_low / T_high are recorded for reference."}


def _versions(formats: Sequence[str]) -> dict[str, str]:
    import faiss
    import onnx
    import torch

    from core import __version__

    v = {"product": __version__, "torch": torch.__version__, "onnx": onnx.__version__, "faiss": faiss.__version__,
         "numpy": np.__version__}
    if "onnx" in formats:
        import onnxruntime

        v["onnxruntime"] = onnxruntime.__version__
    if "openvino" in formats:
        import openvino

        v["openvino"] = openvino.__version__
    return v


def export_bundle(model_dir: str | Path, out: str | Path, formats: Sequence[str] = ("onnx",)) -> Path:
    """Write the bundle of the PatchCore / PaDiM model in ``model_dir`` to ``out`` (a new folder, or an older
    bundle, replaced whole). ``formats``: "onnx" and/or "openvino". Returns ``out``."""
    import torch

    from core.detectors import load_detector
    from core.features.extractor import batch_for_pixels
    from core.storage import read_model_config

    model_dir, out = Path(model_dir), Path(out)
    formats = tuple(dict.fromkeys(formats or ("onnx",)))
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise WorkbenchError(f"Unknown bundle format {bad[0]!r}.", f"Use {' or '.join(FORMATS)}.")
    if out.exists() and not is_bundle(out) and (not out.is_dir() or any(out.iterdir())):
        raise WorkbenchError(f"{out} exists and is not a bundle; exporting there would mix files.",
                             "Give a new folder (or an older bundle, which is replaced).")
    if out.resolve() == model_dir.resolve():
        raise WorkbenchError("The bundle folder is the model folder.", "Give another --out folder.")
    cfg = read_model_config(model_dir)
    det = load_detector(model_dir)
    precision = getattr(det, "precision", "float32")
    if precision != "float32":  # measured by benchmarks/bundle_speed.py --precision bfloat16
        raise WorkbenchError(
            f"{model_dir} was fitted with its backbone in {precision}; a bundle's graph runs in float32, so its "
            "scores would differ from the model's by the rounding of the features (and some decisions with them).",
            "Fit the model again without --precision (float32) to export it.")
    module, lb = _feature_module(det)
    probe = _probe(lb, det.input_hw)
    with torch.inference_mode():
        want = module(probe).numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _write_onnx(module, probe, tmp / GRAPH_FILES["onnx"])
        if "openvino" in formats:
            _write_openvino(tmp / GRAPH_FILES["onnx"], tmp / GRAPH_FILES["openvino"])
        errors = {f: _check_graph(tmp, f, probe.numpy(), want) for f in formats}
        if "onnx" not in formats:
            (tmp / GRAPH_FILES["onnx"]).unlink()
        from safetensors.numpy import save as st_save

        atomic_write_bytes(tmp / ARRAYS_FILE, st_save({k: np.ascontiguousarray(v) for k, v in _arrays(det).items()}),
                           durable=False)
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        scoring, search = _scoring(det)
        _, h, w, c = want.shape
        manifest = {
            "product": PRODUCT,
            "bundle_format_version": BUNDLE_FORMAT_VERSION,
            "kind": det.kind,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": _versions(formats),
            "model": {"folder": str(model_dir), "arrays_sha256": cfg.get("arrays_sha256"), "backbone": det.backbone,
                      "layers": list(det.layers), "weights_sha256": det.weights_sha256,
                      "precision": det.precision},  # always float32: a bfloat16 model is refused above
            "input": {"size": det.image_size, "hw": list(det.input_hw),
                      "layout": "N x 3 x height x width (hw) float32, RGB (grey repeated to 3)",
                      "resize": "bilinear, antialiased, align_corners=False, no crop (torch.nn.functional.interpolate)",
                      "scale": "pixel values 0..255, then (x - 255 * mean) / (255 * std)",
                      "mean": list(lb.mean), "std": list(lb.std), "batch_size": batch_for_pixels(det.input_hw, 8)},
            "graph": {**{f: GRAPH_FILES[f] for f in formats}, "output": "patches: N x h x w x C float32",
                      "grid": [h, w], "channels": c, "opset": ONNX_OPSET, "check_relative_error": errors},
            "arrays": ARRAYS_FILE,
            "scoring": scoring,
            "search": search,
            "postprocess": {"map": "bilinear upsampling to size x size, then Gaussian blur (OpenCV, 4 sigma)",
                            "blur_sigma": det.blur_sigma},
            "normalisation": det.normalisation.to_dict(),
            "thresholds": {"image": det.normalisation.image_threshold, "pixel": det.normalisation.pixel_scale,
                           "image_source": det.normalisation.threshold_source,
                           "pixel_meaning": "raw map value of the 99.9th percentile of held-out normal pixels"},
            "cascade": _cascade(model_dir),
            "files": {name: sha256_file(tmp / name) for name in files},
        }
        atomic_write_json(tmp / MANIFEST_NAME, manifest)
        for p in tmp.iterdir():  # temp files are private (0600); a bundle is meant to be copied and read
            p.chmod(0o644)
        tmp.chmod(0o755)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _swap_in(tmp: Path, out: Path) -> None:
    """Put the finished bundle at ``out``; an older bundle there is moved aside first, then removed."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old.{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_bundle_zip(model_dir: str | Path, formats: Sequence[str] = ("onnx",)) -> bytes:
    """The bundle of ``model_dir`` as zip bytes (for a download button): exported to a temporary folder, zipped
    with one top-level folder named after the model."""
    model_dir = Path(model_dir)
    with tempfile.TemporaryDirectory(prefix="bundle-") as tmp:
        folder = export_bundle(model_dir, Path(tmp) / f"{model_dir.name}-bundle", formats)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for p in sorted(folder.iterdir()):
                zf.write(p, f"{folder.name}/{p.name}")
        return buf.getvalue()

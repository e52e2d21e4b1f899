"""ONNX import (read_dl_model('*.onnx')) and export (write_dl_model(m, '*.onnx')), both
checked against onnxruntime on the same inputs (docs/onnx.md).

* PyTorch → ONNX (the TorchScript exporter, offline) → read_dl_model → apply_dl_model equals
  onnxruntime on the exported file: a ResNet-style and a MobileNetV2-style network built
  here (BN kept, and BN folded into the convolutions as torch.onnx does by default), plus a
  network with a flattened 2×2 map, padded average pooling, a concatenation and
  ``x.view(x.size(0), -1)``; one with ConvTranspose and nearest / bilinear Resize; a
  hand-built graph with MatMul + Add.
* halcdl → ONNX → onnxruntime equals apply_dl_model: the zoo's resnet18, mobilenet_v2 and
  compact after a training step, and the imported PyTorch networks (deconv, upsampling,
  ReLU6); importing the export gives the same weights back.
* Segmentation: a PyTorch U-Net imported, re-exported, and the zoo's segmentation models
  exported; per-pixel confidence and class against onnxruntime.
* Imported models train, keep their weights when class_ids keep their count, and survive
  the native format.
* Unsupported ops and attributes raise 7801 naming the node and its op type; without the
  onnx package the ONNX paths raise 7801/7803 naming the ``halcdl[onnx]`` extra.

Tolerance: max |difference| of the class probabilities ≤ 1e-4 (the issue's bound).
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from helpers import assert_close, make_samples

import halcdl as ha

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
nn = torch.nn
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ATOL = 1e-4


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def torch_export(net, path, size=32, channels=3, **kw):
    net.eval()
    x = torch.randn(1, channels, size, size)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated, not gone
        torch.onnx.export(net, (x,), buf, opset_version=17, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, **kw)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return str(path)


def ort_run(path, x_nchw):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: x_nchw.astype(np.float32)})[0]


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def probabilities(m, x_nchw):
    """apply_dl_model's confidences, back in class-id order, for NCHW inputs."""
    samples = [{"image": np.ascontiguousarray(x.transpose(1, 2, 0))} for x in x_nchw]
    ids = ha.get_dl_model_param(m, "class_ids")
    res = ha.apply_dl_model(m, samples, [])
    return np.array([[dict(zip(r["classification_class_ids"],
                               r["classification_confidences"]))[c] for c in ids] for r in res])


def randomize_bn(net):
    """Non-trivial BN statistics and affine parameters (an untrained net has 0/1)."""
    g = torch.Generator().manual_seed(1)
    for mod in net.modules():
        if isinstance(mod, (nn.BatchNorm2d, nn.BatchNorm1d)):
            c = mod.num_features
            mod.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            mod.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            mod.bias.data.copy_(torch.rand(c, generator=g) - 0.5)
    return net


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNetStyle(nn.Module):
    """conv7/2-bn-relu, maxpool 3/2, two stages of basic blocks, GAP, fc (torchvision's
    layout, narrower)."""

    def __init__(self, num_classes=5, channels=3):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 16, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 16, 1))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32, 1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hidden = cin * t
        layers = []
        if t != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden),
                       nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                   nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2Style(nn.Module):
    """torchvision's MobileNetV2 layout (ReLU6 → Clip, depthwise convs, inverted residuals,
    dropout + linear head), narrower, ending in a Softmax."""

    def __init__(self, num_classes=4):
        super().__init__()
        cfg = [(1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 2, 2)]
        feats = [nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                               nn.ReLU6(inplace=True))]
        cin = 16
        for t, c, n, s in cfg:
            for i in range(n):
                feats.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        feats.append(nn.Sequential(nn.Conv2d(cin, 64, 1, bias=False), nn.BatchNorm2d(64),
                                   nn.ReLU6(inplace=True)))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, num_classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return torch.softmax(self.classifier(torch.flatten(x, 1)), dim=1)


class FlattenMapNet(nn.Module):
    """Padded average pooling (count_include_pad=False), a two-branch concatenation, a
    flattened 2×2 map into the fc (a fixed image size) and ``x.view(x.size(0), -1)``."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU())
        self.branch_a = nn.Conv2d(8, 8, 1)
        self.branch_b = nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False),
                                      nn.Conv2d(8, 4, 3, 1, 1, bias=False), nn.BatchNorm2d(4))
        self.pool = nn.MaxPool2d(2)
        self.pool2 = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(12 * 2 * 2, 16)
        self.fc2 = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        x = self.pool2(self.pool(nn.functional.relu(x)))
        x = x.view(x.size(0), -1)
        return self.fc2(nn.functional.relu(self.fc1(x)))


class UpsamplingNet(nn.Module):
    """A classifier with a transposed convolution and nearest / bilinear upsampling (both
    ×2, align_corners False) before its global pooling."""

    def __init__(self, num_classes=4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 2, 1)
        self.up1 = nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        x = nn.functional.relu(self.up1(nn.functional.relu(self.conv1(x))))
        x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        x = self.bn2(self.conv2(x))
        x = nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _inputs(n, c, size, seed=0):
    return np.random.default_rng(seed).normal(0, 1, (n, c, size, size)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# PyTorch → ONNX → halcdl equals onnxruntime
# --------------------------------------------------------------------------------------------
NETS = {
    # name: (builder, export kwargs, channels, size)
    "resnet_bn_kept": (lambda: ResNetStyle(), {"do_constant_folding": False}, 3, 32),
    "resnet_bn_folded": (lambda: ResNetStyle(), {}, 3, 32),
    "mobilenetv2_bn_kept": (lambda: MobileNetV2Style(), {"do_constant_folding": False}, 3, 32),
    "mobilenetv2_bn_folded": (lambda: MobileNetV2Style(), {}, 3, 32),
    "flatten_map": (lambda: FlattenMapNet(), {"do_constant_folding": False}, 1, 16),
    "upsampling": (lambda: UpsamplingNet(), {"do_constant_folding": False}, 3, 16),
}


@pytest.mark.parametrize("name", list(NETS))
def test_pytorch_import_matches_onnxruntime(name, tmp_path):
    build, kw, c, size = NETS[name]
    net = randomize_bn(build()).eval()
    path = torch_export(net, tmp_path / f"{name}.onnx", size=size, channels=c, **kw)
    x = _inputs(4, c, size)
    out = ort_run(path, x)
    ref = out if name.startswith("mobilenet") else softmax(out)  # it ends in a Softmax
    m = ha.read_dl_model(path)
    assert ha.get_dl_model_param(m, "image_dimensions") == [size, size, c]
    assert m.spec[-1]["op"] != "softmax"  # the trailing Softmax was recognised and dropped
    got = probabilities(m, x)
    assert_close(got, ref, atol=ATOL, rtol=0, what=f"{name}: halcdl vs onnxruntime")
    # the head's weights are kept exactly, under PyTorch's name when the exporter kept it
    if kw.get("do_constant_folding") is False:
        head = {"resnet": "fc", "mobilenetv2": "classifier.1", "flatten": "fc2",
                "upsampling": "fc"}[
            name.split("_")[0]]
        sd = net.state_dict()
        assert np.array_equal(m.core.get_param(f"{head}.weight"), sd[f"{head}.weight"].numpy())
        assert np.array_equal(m.core.get_param(f"{head}.bias"), sd[f"{head}.bias"].numpy())
    if name == "flatten_map":
        fc1 = next(n for n in m.spec if n["name"] == "fc1")
        assert fc1["in_features"] == 48
        with pytest.raises(ha.HOperatorError) as e:
            ha.set_dl_model_param(m, "image_width", 32)
        assert e.value.error_code == 7775


def test_bn_parameters_keep_pytorch_names_and_values(tmp_path):
    net = randomize_bn(ResNetStyle()).eval()
    path = torch_export(net, tmp_path / "r.onnx", do_constant_folding=False)
    m = ha.read_dl_model(path)
    sd = net.state_dict()
    rename = {"weight": "scale", "bias": "shift"}
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            continue
        mod, leaf = key.rsplit(".", 1)
        is_bn = isinstance(net.get_submodule(mod), nn.BatchNorm2d)
        hname = f"{mod}.{rename.get(leaf, leaf)}" if is_bn else key
        assert np.array_equal(m.core.get_param(hname), value.numpy()), hname
    assert ha.get_dl_model_param_s(m, "batchnorm_momentum") == pytest.approx(0.1)


def test_imported_model_trains_keeps_weights_and_round_trips(tmp_path):
    net = randomize_bn(ResNetStyle(num_classes=3)).eval()
    m = ha.read_dl_model(torch_export(net, tmp_path / "r.onnx", do_constant_folding=False))
    assert ha.get_dl_model_param(m, "class_ids") == [0, 1, 2]
    before = {n: m.core.get_param(n) for n in m.core.param_names()}
    ha.set_dl_model_param(m, "class_ids", [4, 7, 9])  # same count: nothing re-initialised
    ha.set_dl_model_param(m, "class_names", ["cat", "dog", "cow"])
    assert all(np.array_equal(before[n], m.core.get_param(n)) for n in before)
    ha.set_dl_model_param(m, "batch_size", 2)
    rng = np.random.default_rng(3)
    for _ in range(2):
        res = ha.train_dl_model_batch(m, make_samples(2, 32, 32, 3, [4, 7, 9], rng, -2, 2))
        assert np.isfinite(res["total_loss"])
    assert not np.array_equal(before["conv1.weight"], m.core.get_param("conv1.weight"))
    native = str(tmp_path / "trained.hdl")
    ha.write_dl_model(m, native)
    m2 = ha.read_dl_model(native)
    x = _inputs(3, 3, 32, seed=4)
    assert np.array_equal(probabilities(m, x), probabilities(m2, x))
    assert ha.get_dl_model_param(m2, "class_names") == ["cat", "dog", "cow"]
    # a new class count re-creates the head only, also after the native round trip
    ha.set_dl_model_param(m2, "class_ids", [0, 1, 2, 3, 4])
    assert m2.core.get_param("fc.weight").shape == (5, 32)
    assert np.array_equal(m2.core.get_param("conv1.weight"), m.core.get_param("conv1.weight"))
    # and the channel count re-creates the first convolution
    ha.set_dl_model_param(m2, "image_num_channels", 1)
    assert m2.core.get_param("conv1.weight").shape == (16, 1, 7, 7)


def test_matmul_add_graph_built_by_hand(tmp_path):
    """Conv → Relu → ReduceMean(2,3) → MatMul + Add → LogSoftmax, written with onnx.helper."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (6, 3, 3, 3)).astype(np.float32)
    mm = rng.normal(0, 0.5, (6, 4)).astype(np.float32)
    bias = rng.normal(0, 0.5, (4,)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "c.weight"], ["a"], name="conv", pads=[1, 1, 1, 1],
                         kernel_shape=[3, 3]),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node("ReduceMean", ["b"], ["g"], name="mean", axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["g", "W"], ["h"], name="matmul"),
        helper.make_node("Add", ["h", "B"], ["z"], name="add_bias"),
        helper.make_node("LogSoftmax", ["z"], ["y"], name="logsoftmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(w, "c.weight"), numpy_helper.from_array(mm, "W"),
                     numpy_helper.from_array(bias, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = str(tmp_path / "hand.bin")  # not .onnx: recognised by its content
    onnx.save(model, path)
    x = _inputs(3, 3, 12)
    ref = softmax(ort_run(path, x))
    m = ha.read_dl_model(path)
    assert [n["op"] for n in m.spec] == ["input", "conv", "relu", "gap", "fc"]
    assert np.array_equal(m.core.get_param("matmul.weight"), mm.T)
    assert np.array_equal(m.core.get_param("matmul.bias"), bias)
    assert_close(probabilities(m, x), ref, atol=ATOL, rtol=0, what="MatMul+Add graph")


# --------------------------------------------------------------------------------------------
# halcdl → ONNX → onnxruntime equals apply_dl_model
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "compact"])
def test_export_matches_onnxruntime(arch, tmp_path):
    ha.set_system("seed_rand", 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ha.NotPretrainedWarning)
        m = ha.read_dl_model(f"pretrained_dl_classifier_{arch}.hdl")
    ids = [3, 1, 4, 8]
    ha.set_dl_model_param(m, "image_dimensions", [32, 32, 3])
    ha.set_dl_model_param(m, "class_ids", ids)
    ha.set_dl_model_param(m, "class_names", ["a", "b", "c", "d"])
    ha.set_dl_model_param(m, "batch_size", 4)
    ha.set_dl_model_param(m, "learning_rate", 1e-3)
    rng = np.random.default_rng(0)
    ha.train_dl_model_batch(m, make_samples(4, 32, 32, 3, ids, rng))  # BN statistics move
    path = str(tmp_path / f"{arch}.onnx")
    ha.write_dl_model(m, path)
    model = onnx.load(path)
    assert model.opset_import[0].version >= 17
    onnx.checker.check_model(model)
    x = rng.uniform(-127, 128, (3, 3, 32, 32)).astype(np.float32)
    got = probabilities(m, x)
    assert_close(ort_run(path, x), got, atol=ATOL, rtol=0, what=f"{arch}: onnxruntime vs halcdl")
    # importing the export gives the same network back
    m2 = ha.read_dl_model(path)
    assert m2.core.param_names() == m.core.param_names()
    for n in m.core.param_names():
        assert np.array_equal(m2.core.get_param(n), m.core.get_param(n)), n
    assert ha.get_dl_model_param(m2, "class_ids") == ids
    assert ha.get_dl_model_param(m2, "class_names") == ["a", "b", "c", "d"]
    assert_close(probabilities(m2, x), got, atol=1e-6, rtol=0, what=f"{arch}: re-imported")


@pytest.mark.parametrize("name", ["mobilenetv2_bn_kept", "upsampling"])
def test_imported_pytorch_net_exports_again(name, tmp_path):
    """halcdl → ONNX for the ops no zoo classifier has (deconv, upsampling, relu6, ...)."""
    build, kw, c, size = NETS[name]
    net = randomize_bn(build()).eval()
    m = ha.read_dl_model(torch_export(net, tmp_path / "in.onnx", size=size, channels=c, **kw))
    if name == "upsampling":
        assert {"deconv", "upsample_nearest", "upsample_bilinear"} <= {n["op"] for n in m.spec}
    out = str(tmp_path / "again.onnx")
    ha.write_dl_model(m, out)
    x = _inputs(2, c, size, seed=9)
    assert_close(ort_run(out, x), probabilities(m, x), atol=ATOL, rtol=0, what="re-export")
    m2 = ha.read_dl_model(out)
    assert [n["op"] for n in m2.spec] == [n["op"] for n in m.spec]


# --------------------------------------------------------------------------------------------
# segmentation: one score per class and pixel
# --------------------------------------------------------------------------------------------
class TinyUNet(nn.Module):
    """Two encoder stages, a transposed-convolution and a bilinear decoder stage with
    concatenated skips, a 1×1 conv to K scores per pixel (total stride 4)."""

    def __init__(self, k=3):
        super().__init__()

        def cbr(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o),
                                 nn.ReLU(inplace=True))

        self.enc1, self.enc2, self.mid = cbr(3, 8), cbr(8, 12), cbr(12, 16)
        self.up2 = nn.ConvTranspose2d(16, 12, 2, stride=2)
        self.dec2 = cbr(24, 12)
        self.dec1 = cbr(20, 8)
        self.classifier = nn.Conv2d(8, k, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
        m = self.mid(nn.functional.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        up = nn.functional.interpolate(d2, scale_factor=2, mode="bilinear", align_corners=False)
        return self.classifier(self.dec1(torch.cat([up, e1], 1)))


def assert_segmentation_matches(m, x_nchw, probs, what):
    """apply_dl_model's per-pixel confidence = max probability, its class = the arg max
    (wherever the best two probabilities are not within the tolerance of each other)."""
    ids = np.asarray(ha.get_dl_model_param(m, "class_ids"))
    samples = [{"image": np.ascontiguousarray(x.transpose(1, 2, 0))} for x in x_nchw]
    res = ha.apply_dl_model(m, samples, [])
    conf = np.stack([r["segmentation_confidence"] for r in res])
    seg = np.stack([r["segmentation_image"] for r in res])
    assert_close(conf, probs.max(axis=1), atol=ATOL, rtol=0, what=f"{what}: confidences")
    top2 = np.sort(probs, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * ATOL
    assert np.array_equal(seg[clear], ids[probs.argmax(axis=1)][clear]), what
    assert clear.mean() > 0.9


def test_segmentation_import_matches_onnxruntime(tmp_path):
    net = randomize_bn(TinyUNet()).eval()
    path = torch_export(net, tmp_path / "unet.onnx", size=16, do_constant_folding=False)
    m = ha.read_dl_model(path)
    assert ha.get_dl_model_param_s(m, "type") == "segmentation"
    assert {"deconv", "upsample_bilinear", "concat"} <= {n["op"] for n in m.spec}
    x = _inputs(2, 3, 16)
    assert_segmentation_matches(m, x, softmax(ort_run(path, x)), "tiny U-Net")
    with pytest.raises(ha.HOperatorError) as e:  # the skips need multiples of the stride
        ha.set_dl_model_param(m, "image_width", 18)
    assert e.value.error_code == 7722
    ha.set_dl_model_param(m, "image_dimensions", [24, 24, 3])
    ha.set_dl_model_param(m, "ignore_class_ids", [9])
    out = str(tmp_path / "unet_out.onnx")
    ha.write_dl_model(m, out)  # and back out (at the new size)
    x = _inputs(2, 3, 24, seed=1)
    assert_segmentation_matches(m, x, ort_run(out, x), "tiny U-Net re-exported")
    m2 = ha.read_dl_model(out)
    assert ha.get_dl_model_param(m2, "ignore_class_ids") == [9]
    assert ha.get_dl_model_param(m2, "image_dimensions") == [24, 24, 3]


@pytest.mark.parametrize("arch", ["compact", "enhanced"])
def test_segmentation_export_matches_onnxruntime(arch, tmp_path):
    ha.set_system("seed_rand", 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ha.NotPretrainedWarning)
        m = ha.read_dl_model(f"pretrained_dl_segmentation_{arch}.hdl")
    ids = [0, 3, 5]
    ha.set_dl_model_param(m, "image_dimensions", [32, 32, 3])
    ha.set_dl_model_param(m, "class_ids", ids)
    ha.set_dl_model_param(m, "batch_size", 2)
    rng = np.random.default_rng(0)
    batch = [{"image": rng.uniform(-127, 128, (32, 32, 3)).astype(np.float32),
              "segmentation_image": rng.choice(ids, (32, 32)).astype(np.uint8)}
             for _ in range(2)]
    ha.train_dl_model_batch(m, batch)
    path = str(tmp_path / f"seg_{arch}.onnx")
    ha.write_dl_model(m, path)
    x = rng.uniform(-127, 128, (2, 3, 32, 32)).astype(np.float32)
    probs = ort_run(path, x)
    assert probs.shape == (2, 3, 32, 32)
    assert_segmentation_matches(m, x, probs, f"segmentation_{arch}")
    m2 = ha.read_dl_model(path)
    assert ha.get_dl_model_param_s(m2, "type") == "segmentation"
    for n in m.core.param_names():
        assert np.array_equal(m2.core.get_param(n), m.core.get_param(n)), n


# --------------------------------------------------------------------------------------------
# what cannot be imported: 7801 naming node and op type
# --------------------------------------------------------------------------------------------
def _graph(nodes, inits=(), in_shape=(None, 3, 8, 8), out="y", extra_inputs=()):
    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(np.asarray(v, dtype=np.float32 if np.asarray(v).dtype.kind
                                               == "f" else np.int64), k)
            for k, v in dict(inits).items()]
    init.append(numpy_helper.from_array(rng.normal(0, 1, (4, 3, 3, 3)).astype(np.float32),
                                        "w"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                            ["N" if d is None else d for d in in_shape])]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3, 8, 8])
               for n in extra_inputs]
    graph = helper.make_graph(nodes, "g", inputs,
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                              initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _gap_head(src):
    return [helper.make_node("GlobalAveragePool", [src], ["y"], name="head")]


UNSUPPORTED = [
    ("resize_cubic", [helper.make_node("Resize", ["x", "", "sc"], ["r"], name="up",
                                       mode="cubic")]
     + _gap_head("r"), {"sc": [1.0, 1.0, 2.0, 2.0]}, "up", "'cubic'"),
    ("resize_fractional", [helper.make_node("Resize", ["x", "", "sc"], ["r"], name="up",
                                            mode="linear")]
     + _gap_head("r"), {"sc": [1.0, 1.0, 1.5, 1.5]}, "up", "integer factors"),
    ("resize_nearest_half_pixel", [helper.make_node("Resize", ["x", "", "sc"], ["r"],
                                                    name="up", mode="nearest")]
     + _gap_head("r"), {"sc": [1.0, 1.0, 2.0, 2.0]}, "up", "asymmetric"),
    ("conv_transpose_grouped",
     [helper.make_node("ConvTranspose", ["x", "wt"], ["r"], name="deconv", group=3)]
     + _gap_head("r"), {"wt": np.zeros((3, 1, 2, 2))}, "deconv", "groups 1"),
    ("avgpool_count_include_pad",
     [helper.make_node("AveragePool", ["x"], ["r"], name="ap", kernel_shape=[3, 3],
                       pads=[1, 1, 1, 1], count_include_pad=1)] + _gap_head("r"), {}, "ap",
     "count_include_pad"),
    ("conv_asymmetric_pads",
     [helper.make_node("Conv", ["x", "w"], ["r"], name="c", kernel_shape=[3, 3],
                       pads=[0, 0, 1, 1])] + _gap_head("r"), {}, "c", "asymmetric"),
    ("maxpool_ceil_mode",
     [helper.make_node("MaxPool", ["x"], ["r"], name="mp", kernel_shape=[3, 3], strides=[2, 2],
                       ceil_mode=1)] + _gap_head("r"), {}, "mp", "ceil_mode"),
    ("leaky_relu", [helper.make_node("LeakyRelu", ["x"], ["r"], name="lr")] + _gap_head("r"),
     {}, "lr", "unsupported op"),
    ("clip_other_bounds",
     [helper.make_node("Clip", ["x", "lo", "hi"], ["r"], name="clip")] + _gap_head("r"),
     {"lo": np.float32(-1), "hi": np.float32(1)}, "clip", "ReLU6"),
    ("bn_training_mode",
     [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["r"], name="bn",
                       training_mode=1)] + _gap_head("r"),
     {"s": np.ones(3), "b": np.zeros(3), "m": np.zeros(3), "v": np.ones(3)}, "bn", "eval mode"),
    ("reshape_moves_data",
     [helper.make_node("Reshape", ["x", "shape"], ["r"], name="rs")] + _gap_head("r"),
     {"shape": np.array([0, 12, 4, 4], np.int64)}, "rs", "moves data"),
    ("add_broadcast_constant",
     [helper.make_node("Add", ["x", "k"], ["r"], name="addk")] + _gap_head("r"),
     {"k": np.ones((1, 3, 1, 1))}, "addk", "bias of a MatMul"),
    ("mul", [helper.make_node("Mul", ["x", "x"], ["r"], name="sq")] + _gap_head("r"), {}, "sq",
     "Mul"),
]


@pytest.mark.parametrize("case,nodes,inits,node_name,words", UNSUPPORTED,
                         ids=[u[0] for u in UNSUPPORTED])
def test_unsupported_raises_7801(case, nodes, inits, node_name, words, tmp_path):
    path = str(tmp_path / f"{case}.onnx")
    onnx.save(_graph(nodes, inits), path)
    with pytest.raises(ha.HOperatorError) as e:
        ha.read_dl_model(path)
    assert e.value.error_code == 7801, e.value.message
    msg = e.value.message
    assert path in msg and repr(node_name) in msg and words in msg, msg
    op_type = nodes[0].op_type
    assert f"op type {op_type}" in msg


def test_graph_level_import_errors(tmp_path):
    cases = {
        "two_inputs.onnx": _graph([helper.make_node("Add", ["x", "x2"], ["s"], name="a")]
                                  + _gap_head("s"), extra_inputs=["x2"]),
        "dynamic_size.onnx": _graph(_gap_head("x"), in_shape=(None, 3, "H", "W")),
        "map_output.onnx": _graph([helper.make_node("MaxPool", ["x"], ["y"], name="p",
                                                    kernel_shape=[2, 2], strides=[2, 2])]),
    }
    for fname, model in cases.items():
        path = str(tmp_path / fname)
        onnx.save(model, path)
        with pytest.raises(ha.HOperatorError) as e:
            ha.read_dl_model(path)
        assert e.value.error_code == 7801 and path in e.value.message, e.value.message
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x01\xff\xff\xff not protobuf")
    with pytest.raises(ha.HOperatorError) as e:
        ha.read_dl_model(str(garbage))
    assert e.value.error_code == 7801 and "not a readable ONNX model" in e.value.message


# --------------------------------------------------------------------------------------------
# the optional extra
# --------------------------------------------------------------------------------------------
def test_missing_onnx_package_names_the_extra(tmp_path, monkeypatch):
    ha.set_system("seed_rand", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ha.NotPretrainedWarning)
        m = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    path = str(tmp_path / "m.onnx")
    ha.write_dl_model(m, path)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx → ImportError
    with pytest.raises(ha.HOperatorError) as e:
        ha.read_dl_model(path)
    assert e.value.error_code == 7801 and "halcdl[onnx]" in e.value.message
    with pytest.raises(ha.HOperatorError) as e:
        ha.write_dl_model(m, str(tmp_path / "other.onnx"))
    assert e.value.error_code == 7803 and "halcdl[onnx]" in e.value.message
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]
    ha.write_dl_model(m, str(tmp_path / "native.hdl"))  # the native format needs no onnx


def test_onnx_is_imported_only_when_used(tmp_path):
    code = ("import sys, warnings; warnings.simplefilter('ignore'); import halcdl as ha; "
            "m = ha.read_dl_model('pretrained_dl_classifier_compact.hdl'); "
            f"ha.write_dl_model(m, {str(tmp_path / 'm.hdl')!r}); "
            f"ha.read_dl_model({str(tmp_path / 'm.hdl')!r}); "
            "assert 'onnx' not in sys.modules and 'onnxruntime' not in sys.modules, 'imported'")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)

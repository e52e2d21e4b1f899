"""The classification and segmentation architectures, as graph specs (pure Python data).

Each architecture is a function ``build(num_classes, channels) -> list[dict]`` returning the
node list described in docs/internals.md, plus the defaults HALCON documents for the file of
the same name (see docs/models.md).  Node names follow torchvision's module names where a
torchvision twin exists (``layer1.0.conv1`` → parameters ``layer1.0.conv1.weight``), so a
PyTorch twin can be loaded parameter by parameter (BN ``scale``/``shift`` are torchvision's
``weight``/``bias``).

halcdl ships no ImageNet weights: every architecture starts from the engine's initialisation
(Kaiming normal, fan_out, as torchvision).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

__all__ = [
    "Architecture",
    "ARCHITECTURES",
    "get_architecture",
    "compact",
    "enhanced",
    "resnet18",
    "resnet50",
    "mobilenet_v2",
    "alexnet",
    "segmentation_compact",
    "segmentation_enhanced",
]


class _Spec:
    """Small helper that appends nodes and remembers the last one."""

    def __init__(self, channels: int) -> None:
        self.nodes: list[dict] = [
            {"name": "input", "op": "input", "inputs": [], "channels": int(channels)}
        ]
        self.last = "input"

    def add(self, name: str, op: str, inputs: list[str] | None = None, **attrs) -> str:
        node = {"name": name, "op": op, "inputs": list(inputs) if inputs else [self.last]}
        node.update(attrs)
        self.nodes.append(node)
        self.last = name
        return name

    # conv (no bias) → bn → activation
    def conv_bn(
        self,
        conv: str,
        bn: str,
        act: str | None,
        out: int,
        kernel: int,
        stride: int = 1,
        pad: int = 0,
        groups: int = 1,
        act_op: str = "relu",
        inputs: list[str] | None = None,
    ) -> str:
        self.add(conv, "conv", inputs, out_channels=out, kernel=kernel, stride=stride,
                 pad=pad, groups=groups, bias=False)
        self.add(bn, "bn")
        if act is not None:
            self.add(act, act_op)
        return self.last


# --------------------------------------------------------------------------------------------
# compact: fully convolutional, ×16 downsampling, no fully-connected layer, min 15 px
# --------------------------------------------------------------------------------------------
def compact(num_classes: int, channels: int) -> list[dict]:
    """A small fully-convolutional classifier in the spirit of HALCON's compact network.

    conv3×3/2 (valid) → conv3×3 → maxpool3/2 → 2×conv3×3 → maxpool3/2 → conv3×3 →
    conv3×3/2 → conv3×3 → conv1×1 to K channels → global average pool.  Every conv is
    followed by batch norm and ReLU except the last.  Total stride 16; the unpadded stem and
    pools make 15×15 the smallest input that still gives a 1×1 feature map.
    """
    s = _Spec(channels)
    s.conv_bn("conv1", "bn1", "relu1", 32, 3, stride=2, pad=0)   # 224 → 111
    s.conv_bn("conv2", "bn2", "relu2", 32, 3, pad=1)
    s.add("pool1", "maxpool", kernel=3, stride=2, pad=0)         # → 55
    s.conv_bn("conv3", "bn3", "relu3", 64, 3, pad=1)
    s.conv_bn("conv4", "bn4", "relu4", 64, 3, pad=1)
    s.add("pool2", "maxpool", kernel=3, stride=2, pad=0)         # → 27
    s.conv_bn("conv5", "bn5", "relu5", 128, 3, pad=1)
    s.conv_bn("conv6", "bn6", "relu6", 128, 3, stride=2, pad=1)  # → 14
    s.conv_bn("conv7", "bn7", "relu7", 256, 3, pad=1)
    s.add("classifier", "conv", out_channels=num_classes, kernel=1, stride=1, pad=0, bias=True)
    s.add("gap", "gap")                                          # N × K × 1 × 1
    return s.nodes


# --------------------------------------------------------------------------------------------
# enhanced: deeper, ×32 downsampling, global average pool + fully connected
# --------------------------------------------------------------------------------------------
def enhanced(num_classes: int, channels: int) -> list[dict]:
    """A deeper plain conv-BN-ReLU network (Darknet-19-like stages), total stride 32, global
    average pooling, dropout 0.5 and one fully-connected layer to K classes."""
    s = _Spec(channels)
    s.conv_bn("conv1", "bn1", "relu1", 32, 3, stride=2, pad=1)   # /2
    s.conv_bn("conv2", "bn2", "relu2", 64, 3, pad=1)
    s.add("pool1", "maxpool", kernel=3, stride=2, pad=1)         # /4
    s.conv_bn("conv3", "bn3", "relu3", 128, 3, pad=1)
    s.conv_bn("conv4", "bn4", "relu4", 64, 1)
    s.conv_bn("conv5", "bn5", "relu5", 128, 3, pad=1)
    s.add("pool2", "maxpool", kernel=3, stride=2, pad=1)         # /8
    s.conv_bn("conv6", "bn6", "relu6", 256, 3, pad=1)
    s.conv_bn("conv7", "bn7", "relu7", 128, 1)
    s.conv_bn("conv8", "bn8", "relu8", 256, 3, pad=1)
    s.add("pool3", "maxpool", kernel=3, stride=2, pad=1)         # /16
    s.conv_bn("conv9", "bn9", "relu9", 512, 3, pad=1)
    s.conv_bn("conv10", "bn10", "relu10", 256, 1)
    s.conv_bn("conv11", "bn11", "relu11", 512, 3, pad=1)
    s.add("pool4", "maxpool", kernel=3, stride=2, pad=1)         # /32
    s.conv_bn("conv12", "bn12", "relu12", 1024, 3, pad=1)
    s.conv_bn("conv13", "bn13", "relu13", 512, 1)
    s.conv_bn("conv14", "bn14", "relu14", 1024, 3, pad=1)
    s.add("gap", "gap")
    s.add("dropout", "dropout", p=0.5)
    s.add("fc", "fc", out_features=num_classes, bias=True)
    return s.nodes


# --------------------------------------------------------------------------------------------
# ResNet (torchvision's resnet18 / resnet50, v1.5: stride in the 3×3 conv of the bottleneck)
# --------------------------------------------------------------------------------------------
def _basic_block(s: _Spec, prefix: str, planes: int, stride: int, in_planes: int) -> None:
    x = s.last
    s.conv_bn(f"{prefix}.conv1", f"{prefix}.bn1", f"{prefix}.relu1", planes, 3, stride, 1)
    s.conv_bn(f"{prefix}.conv2", f"{prefix}.bn2", None, planes, 3, 1, 1)
    y = s.last
    if stride != 1 or in_planes != planes:
        s.conv_bn(f"{prefix}.downsample.0", f"{prefix}.downsample.1", None, planes, 1, stride,
                  0, inputs=[x])
        x = s.last
    s.add(f"{prefix}.add", "add", inputs=[y, x])
    s.add(f"{prefix}.relu2", "relu")


def _bottleneck(s: _Spec, prefix: str, planes: int, stride: int, in_planes: int) -> None:
    out = planes * 4
    x = s.last
    s.conv_bn(f"{prefix}.conv1", f"{prefix}.bn1", f"{prefix}.relu1", planes, 1, 1, 0)
    s.conv_bn(f"{prefix}.conv2", f"{prefix}.bn2", f"{prefix}.relu2", planes, 3, stride, 1)
    s.conv_bn(f"{prefix}.conv3", f"{prefix}.bn3", None, out, 1, 1, 0)
    y = s.last
    if stride != 1 or in_planes != out:
        s.conv_bn(f"{prefix}.downsample.0", f"{prefix}.downsample.1", None, out, 1, stride, 0,
                  inputs=[x])
        x = s.last
    s.add(f"{prefix}.add", "add", inputs=[y, x])
    s.add(f"{prefix}.relu3", "relu")


def _resnet(block, expansion: int, layers: list[int], num_classes: int, channels: int):
    s = _Spec(channels)
    s.conv_bn("conv1", "bn1", "relu", 64, 7, stride=2, pad=3)
    s.add("maxpool", "maxpool", kernel=3, stride=2, pad=1)
    in_planes = 64
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
        for j in range(n):
            stride = 2 if (i > 0 and j == 0) else 1
            block(s, f"layer{i + 1}.{j}", planes, stride, in_planes)
            in_planes = planes * expansion
    s.add("avgpool", "gap")
    s.add("fc", "fc", out_features=num_classes, bias=True)
    return s.nodes


def resnet18(num_classes: int, channels: int) -> list[dict]:
    """torchvision.models.resnet18 (BasicBlock ×[2, 2, 2, 2])."""
    return _resnet(_basic_block, 1, [2, 2, 2, 2], num_classes, channels)


def resnet50(num_classes: int, channels: int) -> list[dict]:
    """torchvision.models.resnet50 (Bottleneck ×[3, 4, 6, 3], stride on the 3×3 conv)."""
    return _resnet(_bottleneck, 4, [3, 4, 6, 3], num_classes, channels)


# --------------------------------------------------------------------------------------------
# MobileNetV2 (torchvision.models.mobilenet_v2, width 1.0)
# --------------------------------------------------------------------------------------------
_MOBILENET_V2_SETTINGS = [
    # expand ratio t, output channels c, repeats n, first stride s
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def mobilenet_v2(num_classes: int, channels: int) -> list[dict]:
    """torchvision.models.mobilenet_v2: conv3×3/2 32, 17 inverted residual blocks, conv1×1
    1280, global average pool, dropout 0.2, fc.  ReLU6 activations."""
    s = _Spec(channels)
    s.conv_bn("features.0.0", "features.0.1", "features.0.2", 32, 3, stride=2, pad=1,
              act_op="relu6")
    idx = 1
    inp = 32
    for t, c, n, first_stride in _MOBILENET_V2_SETTINGS:
        for i in range(n):
            stride = first_stride if i == 0 else 1
            p = f"features.{idx}.conv"
            x = s.last
            hidden = inp * t
            j = 0
            if t != 1:
                s.conv_bn(f"{p}.{j}.0", f"{p}.{j}.1", f"{p}.{j}.2", hidden, 1, act_op="relu6")
                j += 1
            s.conv_bn(f"{p}.{j}.0", f"{p}.{j}.1", f"{p}.{j}.2", hidden, 3, stride=stride, pad=1,
                      groups=hidden, act_op="relu6")
            j += 1
            s.conv_bn(f"{p}.{j}", f"{p}.{j + 1}", None, c, 1)
            if stride == 1 and inp == c:
                s.add(f"features.{idx}.add", "add", inputs=[s.last, x])
            inp = c
            idx += 1
    s.conv_bn(f"features.{idx}.0", f"features.{idx}.1", f"features.{idx}.2", 1280, 1,
              act_op="relu6")
    s.add("avgpool", "gap")
    s.add("classifier.0", "dropout", p=0.2)
    s.add("classifier.1", "fc", out_features=num_classes, bias=True)
    return s.nodes


# --------------------------------------------------------------------------------------------
# AlexNet (torchvision.models.alexnet at its fixed 224×224 input)
# --------------------------------------------------------------------------------------------
def alexnet(num_classes: int, channels: int) -> list[dict]:
    """torchvision.models.alexnet.  Its AdaptiveAvgPool2d((6, 6)) is the identity at 224×224
    (the feature map is 6×6 there) and is left out; the network is therefore fixed to
    224×224."""
    s = _Spec(channels)
    s.add("features.0", "conv", out_channels=64, kernel=11, stride=4, pad=2, bias=True)
    s.add("features.1", "relu")
    s.add("features.2", "maxpool", kernel=3, stride=2, pad=0)
    s.add("features.3", "conv", out_channels=192, kernel=5, stride=1, pad=2, bias=True)
    s.add("features.4", "relu")
    s.add("features.5", "maxpool", kernel=3, stride=2, pad=0)
    s.add("features.6", "conv", out_channels=384, kernel=3, stride=1, pad=1, bias=True)
    s.add("features.7", "relu")
    s.add("features.8", "conv", out_channels=256, kernel=3, stride=1, pad=1, bias=True)
    s.add("features.9", "relu")
    s.add("features.10", "conv", out_channels=256, kernel=3, stride=1, pad=1, bias=True)
    s.add("features.11", "relu")
    s.add("features.12", "maxpool", kernel=3, stride=2, pad=0)
    s.add("classifier.0", "dropout", p=0.5)
    # the fc input is the 256×6×6 feature map flattened (C, H, W): 9216 features
    s.add("classifier.1", "fc", out_features=4096, bias=True, in_features=256 * 6 * 6)
    s.add("classifier.2", "relu")
    s.add("classifier.3", "dropout", p=0.5)
    s.add("classifier.4", "fc", out_features=4096, bias=True)
    s.add("classifier.5", "relu")
    s.add("classifier.6", "fc", out_features=num_classes, bias=True)
    return s.nodes


# --------------------------------------------------------------------------------------------
# segmentation: encoder–decoder networks with skip connections (U-Net-like), one score per
# class and pixel at the input resolution
# --------------------------------------------------------------------------------------------
def _seg_stage(s: _Spec, prefix: str, out: int, convs: int) -> str:
    """``convs`` × (conv 3×3 pad 1 → BN → ReLU) named ``PREFIX.convI`` / ``.bnI`` / ``.reluI``."""
    for i in range(1, convs + 1):
        s.conv_bn(f"{prefix}.conv{i}", f"{prefix}.bn{i}", f"{prefix}.relu{i}", out, 3, pad=1)
    return s.last


def segmentation_compact(num_classes: int, channels: int) -> list[dict]:
    """A small U-Net: three 2×2 max pools (total stride 8), a decoder of 2×2/2 transposed
    convolutions, each followed by the concat with the encoder feature map of the same
    resolution (skip connection) and a conv-BN-ReLU, then a 1×1 conv to K class scores per
    pixel.  Widths 16 → 32 → 64 → 128 (bottleneck)."""
    s = _Spec(channels)
    widths = (16, 32, 64)
    skips = []
    for i, c in enumerate(widths, start=1):
        skips.append(_seg_stage(s, f"enc{i}", c, 2))
        s.add(f"pool{i}", "maxpool", kernel=2, stride=2)
    _seg_stage(s, "bottleneck", 128, 2)
    for i in range(len(widths), 0, -1):
        c = widths[i - 1]
        up = s.add(f"dec{i}.up", "deconv", out_channels=c, kernel=2, stride=2, bias=True)
        s.add(f"dec{i}.concat", "concat", inputs=[up, skips[i - 1]])
        _seg_stage(s, f"dec{i}", c, 1)
    s.add("classifier", "conv", out_channels=num_classes, kernel=1, bias=True)
    return s.nodes


def segmentation_enhanced(num_classes: int, channels: int) -> list[dict]:
    """A deeper and wider U-Net: four 2×2 max pools (total stride 16), two conv-BN-ReLU per
    stage (widths 32 → 64 → 128 → 256 → 512 bottleneck); the decoder upsamples bilinearly
    (×2, align_corners False), reduces the channels with a 1×1 conv-BN-ReLU, concatenates the
    encoder map of the same resolution and applies two conv-BN-ReLU; a 1×1 conv gives K class
    scores per pixel."""
    s = _Spec(channels)
    widths = (32, 64, 128, 256)
    skips = []
    for i, c in enumerate(widths, start=1):
        skips.append(_seg_stage(s, f"enc{i}", c, 2))
        s.add(f"pool{i}", "maxpool", kernel=2, stride=2)
    _seg_stage(s, "bottleneck", 512, 2)
    for i in range(len(widths), 0, -1):
        c = widths[i - 1]
        s.add(f"dec{i}.up", "upsample_bilinear", scale=2)
        up = s.conv_bn(f"dec{i}.reduce", f"dec{i}.reduce_bn", f"dec{i}.reduce_relu", c, 1)
        s.add(f"dec{i}.concat", "concat", inputs=[up, skips[i - 1]])
        _seg_stage(s, f"dec{i}", c, 2)
    s.add("classifier", "conv", out_channels=num_classes, kernel=1, bias=True)
    return s.nodes


# --------------------------------------------------------------------------------------------
# the zoo
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Architecture:
    """One entry of the zoo.  ``min_size``: smallest image width/height accepted (7722
    below).  ``fixed_size``: the image size cannot change (7775).  ``model_type``: HALCON's
    'type' ('classification' or 'segmentation').  ``size_multiple``: image width and height
    must be multiples of it (the encoder's total downsampling of a segmentation network; 7722
    otherwise)."""

    file_name: str
    build: Callable[[int, int], list]
    description: str
    image_width: int = 224
    image_height: int = 224
    image_num_channels: int = 3
    image_range_min: float = -127.0
    image_range_max: float = 128.0
    fixed_size: bool = False
    min_size: int = 32
    num_classes: int = 1000  # class count of the head as read (ImageNet-sized)
    model_type: str = "classification"
    size_multiple: int = 1


ARCHITECTURES: dict[str, Architecture] = {
    a.file_name: a
    for a in (
        Architecture(
            "pretrained_dl_classifier_compact.hdl", compact,
            "small fully-convolutional network, no fully-connected layer", min_size=15,
        ),
        Architecture(
            "pretrained_dl_classifier_enhanced.hdl", enhanced,
            "deeper conv-BN-ReLU network, global average pooling + fully connected",
        ),
        Architecture("pretrained_dl_classifier_resnet18.hdl", resnet18, "torchvision ResNet-18"),
        Architecture("pretrained_dl_classifier_resnet50.hdl", resnet50, "torchvision ResNet-50"),
        Architecture(
            "pretrained_dl_classifier_mobilenet_v2.hdl", mobilenet_v2, "torchvision MobileNetV2"
        ),
        Architecture(
            "pretrained_dl_classifier_alexnet.hdl", alexnet,
            "torchvision AlexNet, fully-connected head: fixed 224×224 input",
            fixed_size=True, min_size=224,
        ),
        Architecture(
            "pretrained_dl_segmentation_compact.hdl", segmentation_compact,
            "small encoder-decoder (U-Net-like), transposed-convolution decoder, stride 8",
            image_width=256, image_height=256, min_size=8, num_classes=2,
            model_type="segmentation", size_multiple=8,
        ),
        Architecture(
            "pretrained_dl_segmentation_enhanced.hdl", segmentation_enhanced,
            "deeper encoder-decoder (U-Net-like), bilinear-upsampling decoder, stride 16",
            image_width=256, image_height=256, min_size=16, num_classes=2,
            model_type="segmentation", size_multiple=16,
        ),
    )
}


def get_architecture(file_name: str) -> Architecture | None:
    """The zoo entry for ``file_name`` (any directory, with or without ``.hdl``), or None."""
    base = os.path.basename(str(file_name))
    if base in ARCHITECTURES:
        return ARCHITECTURES[base]
    if not base.endswith(".hdl") and base + ".hdl" in ARCHITECTURES:
        return ARCHITECTURES[base + ".hdl"]
    return None

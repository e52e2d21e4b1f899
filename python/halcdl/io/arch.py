"""Architectures of models that do not come from the zoo's code: a graph spec read from a
file (native or ONNX) plus the rules to re-create its head or first layer.

A :class:`halcdl.models.zoo.Architecture` has ``build(num_classes, channels) -> spec``; the
model handle calls it when ``class_ids`` gets another count or ``image_num_channels`` another
value.  Here ``build`` edits a stored spec instead of generating one.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from ..errors import (
    H_ERR_CNN_DEPTH_NOT_AVAILABLE,
    H_ERR_CNNGRAPH_NO_CLASS_CHANGE,
    HOperatorError,
)
from ..models.zoo import ARCHITECTURES, Architecture

__all__ = ["SpecBuild", "SavedBuild", "arch_record", "arch_from_record", "spec_architecture",
           "find_head"]

# single-input ops that do not change the channel count: the head is found behind them
_PASS_THROUGH = {"gap", "dropout", "softmax", "relu", "relu6", "maxpool", "avgpool", "bn", "sigmoid",
                 "tanh", "resize_nearest", "resize_bilinear"}


def find_head(spec: list) -> dict | None:
    """The node that produces the class scores: walking back from the last node through
    shape-preserving single-input ops, the first ``fc`` or ungrouped ``conv``; None if the
    walk meets anything else."""
    by_name = {n["name"]: n for n in spec}
    node = spec[-1]
    while True:
        op = node["op"]
        if op == "fc" or (op == "conv" and int(node.get("groups", 1)) == 1):
            return node
        if op not in _PASS_THROUGH or len(node["inputs"]) != 1:
            return None
        node = by_name[node["inputs"][0]]


def _input_consumers(spec: list) -> list[dict]:
    name = spec[0]["name"]
    return [n for n in spec if name in n["inputs"]]


class SpecBuild:
    """``build(num_classes, channels)`` for a stored spec: the head (see :func:`find_head`)
    gets ``num_classes`` outputs, the input node ``channels`` channels.  The engine derives
    every other shape; re-shaped parameters are re-initialised by the handle.  A class count
    the spec cannot take raises 7774, a channel count 7725 (HALCON's numbers), before
    anything changes."""

    def __init__(self, spec: list, num_classes: int) -> None:
        self.spec = copy.deepcopy(spec)
        self.num_classes = int(num_classes)

    def __call__(self, num_classes: int, channels: int) -> list:
        spec = copy.deepcopy(self.spec)
        head = find_head(spec)
        if int(num_classes) != self.num_classes:
            if head is None:
                raise HOperatorError(H_ERR_CNNGRAPH_NO_CLASS_CHANGE,
                                     "the number of classes of this network cannot change: "
                                     "its output is not produced by a fully-connected or "
                                     "convolution layer")
            head["out_features" if head["op"] == "fc" else "out_channels"] = int(num_classes)
        if int(channels) != int(spec[0]["channels"]):
            consumers = _input_consumers(spec)
            if not consumers or any(n["op"] != "conv" or int(n.get("groups", 1)) != 1
                                    for n in consumers):
                raise HOperatorError(H_ERR_CNN_DEPTH_NOT_AVAILABLE,
                                     "the number of channels of this network cannot change: "
                                     "its input does not feed ungrouped convolutions only")
            spec[0]["channels"] = int(channels)
        return spec


class SavedBuild:
    """``build`` of a model read from a file: the stored spec for the stored (classes,
    channels), else the original architecture's ``build`` (the zoo's code, or a
    :class:`SpecBuild`)."""

    def __init__(self, spec: list, num_classes: int, channels: int, base, zoo: str | None):
        self.spec = copy.deepcopy(spec)
        self.key = (int(num_classes), int(channels))
        self.base = base
        self.zoo = zoo  # the zoo file name when ``base`` is the zoo's code

    def __call__(self, num_classes: int, channels: int) -> list:
        if (int(num_classes), int(channels)) == self.key:
            return copy.deepcopy(self.spec)
        return self.base(num_classes, channels)


_FIELDS = [f.name for f in dataclasses.fields(Architecture) if f.name != "build"]


def zoo_name(arch: Architecture) -> str | None:
    """The zoo file name if ``arch`` builds with the zoo's own code."""
    build = arch.build
    if isinstance(build, SavedBuild):
        return build.zoo
    entry = ARCHITECTURES.get(arch.file_name)
    if entry is not None and build is entry.build:
        return arch.file_name
    return None


def arch_record(arch: Architecture) -> dict:
    """What a file stores about the architecture (everything but the code)."""
    rec: dict[str, Any] = {k: getattr(arch, k) for k in _FIELDS}
    rec["zoo"] = zoo_name(arch)
    return rec


def arch_from_record(rec: dict, spec: list, num_classes: int, channels: int) -> Architecture:
    """The architecture of a model read from a file (``rec`` from :func:`arch_record`)."""
    zoo = rec.get("zoo")
    entry = ARCHITECTURES.get(zoo) if zoo else None
    if rec.get("model_type") == "detection":
        from ..models.detection import DetectionSpecBuild  # noqa: PLC0415

        base = DetectionSpecBuild(spec)
    else:
        base = entry.build if entry is not None else SpecBuild(spec, num_classes)
    fields = {k: rec[k] for k in _FIELDS if k in rec}
    fields["image_num_channels"] = int(channels)  # the handle builds (num_classes, this)
    fields["num_classes"] = int(num_classes)
    return Architecture(build=SavedBuild(spec, num_classes, channels, base,
                                         zoo if entry is not None else None), **fields)


def spec_architecture(name: str, spec: list, num_classes: int, description: str,
                      **fields) -> Architecture:
    """An architecture around an imported spec (ONNX) with ``num_classes`` outputs."""
    return Architecture(file_name=name, build=SpecBuild(spec, num_classes),
                        description=description, num_classes=int(num_classes), **fields)

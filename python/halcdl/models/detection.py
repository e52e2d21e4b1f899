"""Object detection models: a classifier backbone, a feature pyramid and shared per-level
class and box heads, as one graph spec ending in ``detection_output`` (docs/detection.md).

The engine owns everything numeric (anchors, matching, focal and Huber losses, decoding,
NMS: csrc/engine/detection.cpp); this module builds the spec, validates HALCON's detection
parameters and translates them into the engine's settings.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from .._native import core
from ..errors import (
    H_ERR_CNN_INVALID_IMAGE_SIZE,
    H_ERR_CNN_RUNTIME_FAILED,
    H_ERR_DL_DETECTOR_INVALID_INSTANCE_TYPE,
    H_ERR_DL_DETECTOR_INVALID_PARAM,
    H_ERR_DL_DETECTOR_INVALID_PARAM_VALUE,
    H_ERR_DL_FPN_INVALID_BACKBONE,
    H_ERR_DL_FPN_INVALID_LEVELS,
    H_ERR_CNN_DEPTH_NOT_AVAILABLE,
    HOperatorError,
)
from .zoo import Architecture

__all__ = [
    "DETECTION_DEFAULTS",
    "CAPACITY",
    "DetectionSpecBuild",
    "validate_detection_params",
    "build_detection_spec",
    "engine_config",
    "init_head_params",
    "PRIOR_PROBABILITY",
]

# HALCON's documented keys with halcdl's defaults (docs/detection.md; HALCON does not publish
# all of its defaults: these are the values of its reference manual where it gives one).
DETECTION_DEFAULTS: dict[str, Any] = {
    "min_level": 2,
    "max_level": 4,
    "anchor_num_subscales": 3,
    "anchor_aspect_ratios": [1.0, 0.5, 2.0],
    "anchor_angles": [0.0],
    "capacity": "high",
    "instance_type": "rectangle1",
    "ignore_direction": "false",
    "class_ids_no_orientation": [],
    "max_overlap": 0.5,
    "max_overlap_class_agnostic": 1.0,
    "min_confidence": 0.5,
    "max_num_detections": 100,
    "bbox_heads_weight": 1.0,
    "class_heads_weight": 1.0,
    "freeze_backbone_level": 0,
    "instance_segmentation": "false",
}
# keys accepted at creation besides the defaults above
_CREATION_ONLY = ("image_width", "image_height", "image_num_channels", "class_ids",
                  "class_names")
# keys set_dl_model_param may change after creation (the rest fix the graph or the anchors)
SETTABLE_AFTER_CREATION = ("max_overlap", "max_overlap_class_agnostic", "min_confidence",
                           "max_num_detections", "bbox_heads_weight", "class_heads_weight")

# capacity → (FPN / head width, convolutions per head before its output convolution)
CAPACITY = {"low": (32, 1), "medium": (64, 2), "high": (128, 3)}
MAX_LEVEL_LIMIT = 10
PRIOR_PROBABILITY = 0.01  # class logits start at sigmoid⁻¹(0.01) (RetinaNet)


def _bad(key: str, detail: str) -> HOperatorError:
    return HOperatorError(H_ERR_DL_DETECTOR_INVALID_PARAM_VALUE,
                          f"invalid value for detection parameter {key!r}: {detail}")


def _as_list(v: Any) -> list:
    if isinstance(v, np.ndarray):
        return v.reshape(-1).tolist()
    if isinstance(v, (list, tuple)):
        return list(v)
    return [v]


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
        v, (bool, np.bool_))


def _one(key: str, v: Any) -> Any:
    vals = _as_list(v)
    if len(vals) != 1:
        raise _bad(key, f"takes one value, got {len(vals)}")
    return vals[0]


def _int(key: str, v: Any, lo: int, hi: int | None = None) -> int:
    x = _one(key, v)
    if not _is_int(x) or int(x) < lo or (hi is not None and int(x) > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise _bad(key, f"must be an integer {rng}, got {x!r}")
    return int(x)


def _float(key: str, v: Any, lo: float, hi: float | None = None, lo_open: bool = False) -> float:
    x = _one(key, v)
    if not _is_num(x) or not math.isfinite(float(x)):
        raise _bad(key, f"must be a finite number, got {x!r}")
    f = float(x)
    if (f <= lo if lo_open else f < lo) or (hi is not None and f > hi):
        raise _bad(key, f"must be in {'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}"
                        f"{']' if hi is not None else ')'}, got {f}")
    return f


def _bool_str(key: str, v: Any) -> str:
    x = _one(key, v)
    if isinstance(x, (bool, np.bool_)):
        return "true" if x else "false"
    if x not in ("true", "false"):
        raise _bad(key, f"must be 'true' or 'false', got {x!r}")
    return str(x)


def validate_value(key: str, v: Any, num_classes: int) -> Any:
    """One detection parameter checked and normalised (7822 / 7824; 7742 for what halcdl
    does not implement yet)."""
    if key in ("min_level", "max_level"):
        return _int(key, v, 1, MAX_LEVEL_LIMIT)
    if key == "anchor_num_subscales":
        return _int(key, v, 1, 16)
    if key == "anchor_aspect_ratios":
        vals = _as_list(v)
        if not vals or any(not _is_num(x) or not math.isfinite(float(x)) or float(x) <= 0
                           for x in vals):
            raise _bad(key, f"needs one or more ratios > 0, got {vals!r}")
        return [float(x) for x in vals]
    if key == "anchor_angles":
        vals = _as_list(v)
        if not vals or any(not _is_num(x) or not math.isfinite(float(x)) for x in vals):
            raise _bad(key, f"needs one or more finite angles, got {vals!r}")
        return [float(x) for x in vals]
    if key == "capacity":
        x = _one(key, v)
        if x not in CAPACITY:
            raise _bad(key, f"must be 'low', 'medium' or 'high', got {x!r}")
        return str(x)
    if key == "instance_type":
        x = _one(key, v)
        if x not in ("rectangle1", "rectangle2"):
            raise HOperatorError(H_ERR_DL_DETECTOR_INVALID_INSTANCE_TYPE,
                                 f"invalid instance_type {x!r} (use 'rectangle1' or "
                                 f"'rectangle2')")
        return str(x)
    if key == "ignore_direction":
        return _bool_str(key, v)
    if key == "instance_segmentation":
        x = _bool_str(key, v)
        if x == "true":
            raise HOperatorError(H_ERR_CNN_RUNTIME_FAILED,
                                 "instance_segmentation is not implemented in halcdl yet")
        return x
    if key == "class_ids_no_orientation":
        vals = _as_list(v)
        if any(not _is_int(x) or int(x) < 0 for x in vals):
            raise _bad(key, f"must be non-negative integers, got {vals!r}")
        return [int(x) for x in vals]
    if key in ("max_overlap", "max_overlap_class_agnostic", "min_confidence"):
        return _float(key, v, 0.0, 1.0)
    if key == "max_num_detections":
        return _int(key, v, 1)
    if key in ("bbox_heads_weight", "class_heads_weight"):
        return _float(key, v, 0.0)
    if key == "freeze_backbone_level":
        return _int(key, v, 0, MAX_LEVEL_LIMIT)
    if key in ("image_width", "image_height"):
        return _int(key, v, 1)
    if key == "image_num_channels":
        c = _one(key, v)
        if not _is_int(c) or int(c) not in (1, 3):
            raise _bad(key, f"must be 1 or 3, got {c!r}")
        return int(c)
    if key == "class_ids":
        vals = _as_list(v)
        if (len(vals) != num_classes or any(not _is_int(x) or int(x) < 0 for x in vals)
                or len({int(x) for x in vals}) != len(vals)):
            raise _bad(key, f"needs {num_classes} unique non-negative integers, got {vals!r}")
        return [int(x) for x in vals]
    if key == "class_names":
        vals = _as_list(v)
        if len(vals) != num_classes or any(not isinstance(x, str) for x in vals):
            raise _bad(key, f"needs {num_classes} strings, got {vals!r}")
        return [str(x) for x in vals]
    raise HOperatorError(H_ERR_DL_DETECTOR_INVALID_PARAM,
                         f"unknown detection parameter {key!r}")


def validate_detection_params(given: dict, num_classes: int) -> dict:
    """HALCON's detection parameters with defaults filled in (7821 unknown key, 7822 bad
    value, 7824 bad instance type)."""
    out = copy.deepcopy(DETECTION_DEFAULTS)
    for key, v in given.items():
        if not isinstance(key, str) or (key not in DETECTION_DEFAULTS
                                        and key not in _CREATION_ONLY):
            raise HOperatorError(H_ERR_DL_DETECTOR_INVALID_PARAM,
                                 f"unknown detection parameter {key!r}")
        out[key] = validate_value(key, v, num_classes)
    if out["min_level"] > out["max_level"]:
        raise _bad("min_level", f"min_level ({out['min_level']}) must be <= max_level "
                                f"({out['max_level']})")
    return out


def anchors_per_position(p: dict) -> int:
    a = len(p["anchor_aspect_ratios"]) * int(p["anchor_num_subscales"])
    if p.get("instance_type") == "rectangle2":
        a *= len(p["anchor_angles"])
    return a


def engine_config(p: dict) -> dict:
    """The engine's detection settings (core.Model.set_detection) for model params ``p``.
    rectangle2: class_ids_no_orientation become label indices (ids not in class_ids are
    ignored)."""
    r2 = p.get("instance_type") == "rectangle2"
    ids = [int(x) for x in p.get("class_ids", [])]
    no_or = sorted({ids.index(int(c)) for c in p.get("class_ids_no_orientation", [])
                    if int(c) in ids}) if r2 else []
    return {
        "oriented": r2,
        "anchor_angles": [float(x) for x in p["anchor_angles"]],
        "ignore_direction": r2 and p.get("ignore_direction") == "true",
        "no_orientation": no_or,
        "min_level": int(p["min_level"]),
        "max_level": int(p["max_level"]),
        "anchor_num_subscales": int(p["anchor_num_subscales"]),
        "anchor_aspect_ratios": [float(x) for x in p["anchor_aspect_ratios"]],
        "class_heads_weight": float(p["class_heads_weight"]),
        "bbox_heads_weight": float(p["bbox_heads_weight"]),
        "min_confidence": float(p["min_confidence"]),
        "max_overlap": float(p["max_overlap"]),
        "max_overlap_class_agnostic": float(p["max_overlap_class_agnostic"]),
        "max_num_detections": int(p["max_num_detections"]),
    }


# --------------------------------------------------------------------------------------------
# the spec
# --------------------------------------------------------------------------------------------
_POOLING_OR_CONV = ("conv", "maxpool", "avgpool")
_TAIL_OPS = ("gap", "fc", "softmax", "dropout")


def _kernel(n: dict) -> tuple[int, int]:
    k = n.get("kernel", 1 if n["op"] == "conv" else 2)
    k = _as_list(k)
    return (int(k[0]), int(k[-1]))


def _same_padding(spec: list) -> list:
    """Backbone convolutions and poolings with an odd kernel get 'same' padding
    ((k − 1) / 2, where they have less), so that every feature map is exactly the image size
    divided by its stride (HALCON's compact network uses unpadded stride-2 layers; weights
    are unaffected)."""
    out = copy.deepcopy(spec)
    for n in out:
        if n["op"] not in _POOLING_OR_CONV:
            continue
        kh, kw = _kernel(n)
        if kh % 2 == 0 or kw % 2 == 0:
            continue
        pad = _as_list(n.get("pad", 0))
        ph, pw = int(pad[0]), int(pad[-1])
        nh, nw = max(ph, (kh - 1) // 2), max(pw, (kw - 1) // 2)
        if (nh, nw) != (ph, pw):
            n["pad"] = [nh, nw]
    return out


def _head_index(spec: list) -> int:
    """Index of the first node of the classifier's tail (the class-score layer and what
    follows it): everything from there on is cut."""
    from ..io.arch import find_head  # noqa: PLC0415  (import cycle)

    head = find_head(spec)
    names = [n["name"] for n in spec]
    cut = len(spec) if head is None else names.index(head["name"])
    for i, n in enumerate(spec[:cut]):
        if n["op"] in _TAIL_OPS:
            return i
    return cut


def backbone_taps(spec: list, max_level: int) -> tuple[list, dict[int, str], dict[str, int]]:
    """(prepared backbone spec, level → node name of its deepest feature map, node → channels).
    7811 when the network yields no feature map at any stride 2^l."""
    spec = _same_padding(spec)
    cut = _head_index(spec)
    body = spec[:cut]
    if len(body) < 2:
        raise HOperatorError(H_ERR_DL_FPN_INVALID_BACKBONE,
                             "the backbone has no feature-extracting layers before its "
                             "classification head")
    probe = 1 << max(max_level + 2, 9)
    try:
        shapes = dict(core.Model(body, 1).node_shapes(probe, probe))
    except HOperatorError as err:
        raise HOperatorError(H_ERR_DL_FPN_INVALID_BACKBONE,
                             f"the backbone cannot be used: {err.message}") from None
    taps: dict[int, str] = {}
    for n in body[1:]:
        d = shapes[n["name"]]
        if len(d) != 4 or d[2] != d[3]:
            continue
        s = probe // d[2] if d[2] else 0
        if s >= 2 and d[2] * s == probe and s & (s - 1) == 0:
            taps[s.bit_length() - 1] = n["name"]  # later nodes overwrite: the deepest
    if not taps:
        raise HOperatorError(H_ERR_DL_FPN_INVALID_BACKBONE,
                             "the backbone has no feature map at a stride 2^l of the image")
    channels = {name: int(shapes[name][1]) for name in taps.values()}
    return body, taps, channels


def _prune(body: list, keep_outputs: list[str]) -> list:
    """The nodes of ``body`` that the named outputs depend on (topological order kept)."""
    by = {n["name"]: n for n in body}
    need: set[str] = set()
    stack = list(keep_outputs)
    while stack:
        x = stack.pop()
        if x in need:
            continue
        need.add(x)
        stack.extend(by[x]["inputs"])
    return [n for n in body if n["name"] in need]


def build_detection_spec(backbone_spec: list, num_classes: int, p: dict) -> tuple[list, dict]:
    """The detector's spec and a description (taps, levels) for backbone ``backbone_spec``
    and validated parameters ``p``.  7813 for levels the backbone cannot provide."""
    lo, hi = int(p["min_level"]), int(p["max_level"])
    body, taps, chans = backbone_taps(backbone_spec, hi)
    deepest = max(taps)
    if lo not in taps:
        raise HOperatorError(H_ERR_DL_FPN_INVALID_LEVELS,
                             f"min_level {lo} is not available in this backbone: it has feature "
                             f"maps at levels {sorted(taps)} (stride 2^level)")
    missing = [lv for lv in range(lo, min(hi, deepest) + 1) if lv not in taps]
    if missing:
        raise HOperatorError(H_ERR_DL_FPN_INVALID_LEVELS,
                             f"levels {missing} are not available in this backbone (it has "
                             f"{sorted(taps)})")
    top = min(hi, deepest)
    width, depth = CAPACITY[p["capacity"]]
    a = anchors_per_position(p)
    nbox = 5 if p["instance_type"] == "rectangle2" else 4
    k = int(num_classes)
    keep = [taps[lv] for lv in range(lo, top + 1)]
    if hi > deepest:
        keep.append(taps[deepest])
    spec = _prune(body, keep)
    nodes = list(spec)

    def add(name, op, inputs, **attrs):
        nodes.append({"name": name, "op": op, "inputs": list(inputs), **attrs})
        return name

    lat = {lv: add(f"fpn.lateral{lv}", "conv", [taps[lv]], out_channels=width, kernel=1)
           for lv in range(lo, top + 1)}
    merged = {top: lat[top]}
    for lv in range(top - 1, lo - 1, -1):
        up = add(f"fpn.up{lv}", "upsample_nearest", [merged[lv + 1]], scale=2)
        merged[lv] = add(f"fpn.add{lv}", "add", [lat[lv], up])
    feats = {lv: add(f"fpn.smooth{lv}", "conv", [merged[lv]], out_channels=width, kernel=3,
                     pad=1) for lv in range(lo, top + 1)}
    prev = taps[deepest]
    for lv in range(top + 1, hi + 1):  # extra levels beyond the backbone's deepest map
        if lv > top + 1:
            prev = add(f"fpn.extra{lv}.relu", "relu", [prev])
        prev = feats[lv] = add(f"fpn.extra{lv}", "conv", [prev], out_channels=width, kernel=3,
                               stride=2, pad=1)
    det_inputs = []
    for lv in range(lo, hi + 1):
        for head, outc in (("cls_head", a * k), ("box_head", a * nbox)):
            x = feats[lv]
            for d in range(depth):
                name = f"{head}{lv}.conv{d}"
                extra = {} if lv == lo else {"share": f"{head}{lo}.conv{d}"}
                x = add(name, "conv", [x], out_channels=width, kernel=3, pad=1, **extra)
                x = add(f"{head}{lv}.relu{d}", "relu", [x])
            extra = {} if lv == lo else {"share": f"{head}{lo}.logits"}
            det_inputs.append(add(f"{head}{lv}.logits", "conv", [x], out_channels=outc,
                                  kernel=3, pad=1, **extra))
    add("detection_output", "detection_output", det_inputs, num_classes=k, num_anchors=a,
        box_values=nbox)
    info = {"taps": {str(lv): taps[lv] for lv in sorted(taps)}, "backbone_levels": sorted(taps)}
    return nodes, info


class DetectionSpecBuild:
    """``Architecture.build`` of a detector: the stored spec with the class count of the
    class heads (and the input channels) changed; everything else stays."""

    def __init__(self, spec: list) -> None:
        self.spec = copy.deepcopy(spec)

    def __call__(self, num_classes: int, channels: int) -> list:
        spec = copy.deepcopy(self.spec)
        det = spec[-1]
        a = int(det["num_anchors"])
        by = {n["name"]: n for n in spec}
        det["num_classes"] = int(num_classes)
        for name in det["inputs"][0::2]:
            by[name]["out_channels"] = a * int(num_classes)
        if int(channels) != int(spec[0]["channels"]):
            consumers = [n for n in spec if spec[0]["name"] in n["inputs"]]
            if not consumers or any(n["op"] != "conv" or int(n.get("groups", 1)) != 1
                                    for n in consumers):
                raise HOperatorError(H_ERR_CNN_DEPTH_NOT_AVAILABLE,
                                     "the number of channels of this detector cannot change")
            spec[0]["channels"] = int(channels)
        return spec


def detection_architecture(name: str, spec: list, num_classes: int, width: int, height: int,
                           channels: int, range_min: float, range_max: float) -> Architecture:
    return Architecture(
        file_name=name, build=DetectionSpecBuild(spec),
        description="object detector: backbone, feature pyramid, shared class and box heads",
        image_width=int(width), image_height=int(height), image_num_channels=int(channels),
        image_range_min=float(range_min), image_range_max=float(range_max), fixed_size=False,
        min_size=1, num_classes=int(num_classes), model_type="detection", size_multiple=1)


def init_head_params(core_model, spec: list, seed: int, only: set[str] | None = None) -> None:
    """RetinaNet's initialisation of the heads: every head convolution normal(0, 0.01) with
    bias 0, the class logits' bias −log((1 − π)/π), π = 0.01 (so the focal loss starts near
    its prior).  Only the masters are set (their tied copies follow).  ``only``: restrict to
    these parameter names (re-created layers)."""
    rng = np.random.default_rng(int(seed) + 0x5EED)
    names = set(core_model.param_names())
    bias0 = -math.log((1.0 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)
    for n in spec:
        if n["op"] != "conv" or "share" in n or not n["name"].startswith(("cls_head", "box_head")):
            continue
        w, b = n["name"] + ".weight", n["name"] + ".bias"
        if only is not None and w not in only and b not in only:
            continue
        shape = core_model.get_param(w).shape
        core_model.set_param(w, rng.normal(0.0, 0.01, size=shape).astype(np.float32))
        if b in names:
            val = bias0 if (n["name"].startswith("cls_head") and n["name"].endswith(".logits")) \
                else 0.0
            core_model.set_param(b, np.full(core_model.get_param(b).shape, val, np.float32))


def check_image_size(p: dict, width: int, height: int) -> None:
    f = 1 << int(p["max_level"])
    if width % f or height % f:
        raise HOperatorError(H_ERR_CNN_INVALID_IMAGE_SIZE,
                             f"invalid image size {width}x{height} for this detection model: "
                             f"image_width and image_height must be multiples of 2^max_level "
                             f"= {f}")

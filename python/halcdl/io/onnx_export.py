"""halcdl → ONNX: the inference graph of a model (opset 17), built with ``onnx.helper``.

Input ``image``: float32 (N, C, H, W) at the model's image size, N free.  Output
``confidences``: float32 (N, K), the softmax probabilities in class-id order (what
apply_dl_model computes before it sorts them).  Initializers carry the engine's parameter
names (``layer1.0.conv1.weight``, ``bn1.scale`` …), so an import gives the same names back.
Details: docs/onnx.md.
"""

from __future__ import annotations

import json

import numpy as np

from ..errors import H_ERR_DL_FILE_WRITE, H_ERR_DL_WRITE_ONNX, HOperatorError
from ..models.handle import DLModel
from .files import atomic_write
from .onnx_common import require_onnx

__all__ = ["export_onnx", "build_onnx", "OPSET"]

OPSET = 17
IR_VERSION = 8  # the lowest IR version that carries opset 17: readable by older runtimes


def _pair(v, default) -> list[int]:
    if v is None:
        v = default
    if isinstance(v, (list, tuple)):
        return [int(v[0]), int(v[-1])]
    return [int(v), int(v)]


def build_onnx(m: DLModel):
    """The ``onnx.ModelProto`` of ``m`` (the caller holds the handle's lock)."""
    onnx = require_onnx(H_ERR_DL_WRITE_ONNX)
    from onnx import TensorProto, helper, numpy_helper

    core = m.core
    p = m.params
    spec = m.spec
    nodes, inits = [], []
    tensor: dict[str, str] = {}  # spec node → ONNX tensor name
    rank: dict[str, int] = {}    # spec node → 4 (N, C, H, W) or 2 (N, F)
    taken = {n["name"] for n in spec}

    def fresh(base: str) -> str:
        name, i = base, 2
        while name in taken:
            name = f"{base}_{i}"
            i += 1
        taken.add(name)
        return name

    def param(name: str) -> str:
        inits.append(numpy_helper.from_array(np.asarray(core.get_param(name), np.float32),
                                             name))
        return name

    done_params: set[str] = set()

    def shared_param(name: str) -> str:  # one initializer per parameter, however many users
        if name not in done_params:
            done_params.add(name)
            param(name)
        return name

    clip_bounds: list[str] = []

    def relu6_bounds() -> list[str]:
        if not clip_bounds:
            for n, v in (("relu6.min", 0.0), ("relu6.max", 6.0)):
                name = fresh(n)
                inits.append(numpy_helper.from_array(np.array(v, np.float32), name))
                clip_bounds.append(name)
        return clip_bounds

    inp = spec[0]
    tensor[inp["name"]] = "image"
    taken.add("image")
    rank[inp["name"]] = 4
    c, h, w = int(inp["channels"]), int(p["image_height"]), int(p["image_width"])
    bn_momentum = 1.0 - float(p["batchnorm_momentum"])

    det_heads: list[str] = []
    shapes = _LazyShapes(core, h, w)
    for n in spec[1:]:
        op, name = n["op"], n["name"]
        xs = [tensor[i] for i in n["inputs"]]
        r = rank[n["inputs"][0]]
        out = name
        if op == "conv":
            k = _pair(n.get("kernel"), 1)
            ph, pw = _pair(n.get("pad"), 0)
            src = n.get("share", name)  # tied (detection heads): the master's initializers
            ins = xs + [shared_param(f"{src}.weight")]
            if n.get("bias", True):
                ins.append(shared_param(f"{src}.bias"))
            nodes.append(helper.make_node(
                "Conv", ins, [out], name=name, kernel_shape=k, strides=_pair(n.get("stride"), 1),
                pads=[ph, pw, ph, pw], dilations=_pair(n.get("dilation"), 1),
                group=int(n.get("groups", 1))))
        elif op == "deconv":
            k = _pair(n.get("kernel"), 1)
            ph, pw = _pair(n.get("pad"), 0)
            ins = xs + [param(f"{name}.weight")]
            if n.get("bias", True):
                ins.append(param(f"{name}.bias"))
            nodes.append(helper.make_node(
                "ConvTranspose", ins, [out], name=name, kernel_shape=k,
                strides=_pair(n.get("stride"), 1), pads=[ph, pw, ph, pw],
                output_padding=_pair(n.get("output_padding"), 0),
                dilations=_pair(n.get("dilation"), 1)))
        elif op in ("upsample_nearest", "upsample_bilinear"):
            sc = float(n.get("scale", 2))
            scales = fresh(f"{name}.scales")
            inits.append(numpy_helper.from_array(np.array([1, 1, sc, sc], np.float32), scales))
            if op == "upsample_nearest":  # PyTorch's nearest: repeat each pixel
                attrs = dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                             nearest_mode="floor")
            else:  # PyTorch's bilinear with align_corners=False
                attrs = dict(mode="linear", coordinate_transformation_mode="half_pixel")
            nodes.append(helper.make_node("Resize", xs + ["", scales], [out], name=name,
                                          **attrs))
        elif op == "bn":
            ins = xs + [param(f"{name}.{s}") for s in ("scale", "shift", "running_mean",
                                                       "running_var")]
            nodes.append(helper.make_node("BatchNormalization", ins, [out], name=name,
                                          epsilon=float(n.get("eps", 1e-5)),
                                          momentum=bn_momentum))
        elif op == "relu":
            nodes.append(helper.make_node("Relu", xs, [out], name=name))
        elif op == "relu6":
            nodes.append(helper.make_node("Clip", xs + relu6_bounds(), [out], name=name))
        elif op in ("maxpool", "avgpool"):
            k = _pair(n.get("kernel"), 1)
            ph, pw = _pair(n.get("pad"), 0)
            attrs = dict(kernel_shape=k, strides=_pair(n.get("stride"), k), pads=[ph, pw, ph, pw])
            if op == "avgpool":
                attrs["count_include_pad"] = 0  # the engine averages over real pixels only
            nodes.append(helper.make_node("MaxPool" if op == "maxpool" else "AveragePool", xs,
                                          [out], name=name, **attrs))
        elif op == "gap":
            nodes.append(helper.make_node("GlobalAveragePool", xs, [out], name=name))
        elif op == "fc":
            x = xs[0]
            if r == 4:
                x = fresh(f"{name}.flatten")
                nodes.append(helper.make_node("Flatten", xs, [x], name=x, axis=1))
            ins = [x, param(f"{name}.weight")]
            if n.get("bias", True):
                ins.append(param(f"{name}.bias"))
            nodes.append(helper.make_node("Gemm", ins, [out], name=name, transB=1))
            r = 2
        elif op == "add":
            nodes.append(helper.make_node("Add", xs, [out], name=name))
        elif op == "concat":
            nodes.append(helper.make_node("Concat", xs, [out], name=name, axis=1))
        elif op == "dropout":  # inverted dropout: the identity at inference
            out = xs[0]
        elif op == "softmax":
            nodes.append(helper.make_node("Softmax", xs, [out], name=name, axis=1))
        elif op == "detection_output":
            det_heads = _detection_heads(n, xs, fresh, nodes, inits, numpy_helper, helper,
                                         core, h, w)
            out = xs[0]
        elif op in _LAYER_OPS:
            r = _layer_op(n, xs, [rank[i] for i in n["inputs"]], out, fresh, nodes, inits,
                          numpy_helper, helper, shapes)
        else:
            raise HOperatorError(H_ERR_DL_WRITE_ONNX,
                                 f"node {name!r}: op {op!r} has no ONNX export yet")
        tensor[name] = out
        rank[name] = r

    if p.get("type") == "detection":
        return _finish_detection(onnx, helper, TensorProto, nodes, inits, det_heads, p, c, h, w,
                                 core)
    last = spec[-1]["name"]
    x = tensor[last]
    segmentation = p.get("type") == "segmentation"
    if rank[last] == 4 and not segmentation:  # (N, K, 1, 1) → (N, K)
        flat = fresh("scores.flatten")
        nodes.append(helper.make_node("Flatten", [x], [flat], name=flat, axis=1))
        x = flat
    nodes.append(helper.make_node("Softmax", [x], ["confidences"], name=fresh("softmax"),
                                  axis=1))
    k = len(p["class_ids"])
    graph = helper.make_graph(
        nodes, "halcdl",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", c, h, w])],
        [helper.make_tensor_value_info("confidences", TensorProto.FLOAT,
                                       ["N", k, h, w] if segmentation else ["N", k])],
        initializer=inits)
    try:
        from importlib.metadata import version

        ver = version("halcdl")
    except Exception:
        ver = ""
    model = helper.make_model(graph, producer_name="halcdl", producer_version=ver,
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    model.doc_string = ("halcdl inference graph: input 'image' float32 (N, C, H, W), already "
                        "preprocessed to image_range_min..image_range_max; output "
                        "'confidences' softmax probabilities in class_ids order, (N, K) for "
                        "classification, (N, K, H, W) per pixel for segmentation")
    helper.set_model_props(model, {
        "halcdl.class_ids": json.dumps(list(p["class_ids"])),
        "halcdl.class_names": json.dumps(list(p["class_names"])),
        "halcdl.image_range_min": json.dumps(float(p["image_range_min"])),
        "halcdl.image_range_max": json.dumps(float(p["image_range_max"])),
        "halcdl.meta_data": json.dumps(dict(p["meta_data"])),
        **({"halcdl.ignore_class_ids": json.dumps(list(p.get("ignore_class_ids", [])))}
           if segmentation else {}),
    })
    try:
        onnx.checker.check_model(model)
    except Exception as err:  # a spec the exporter maps wrongly: a bug, but say what it is
        raise HOperatorError(H_ERR_DL_WRITE_ONNX, f"the exported graph is not valid ONNX: "
                                                  f"{err}") from None
    return model


_LAYER_OPS = frozenset(("sigmoid", "tanh", "depth_to_space", "resize_nearest", "resize_bilinear",
                        "reshape", "permute", "depth_max", "lrn", "reduce", "matmul"))


class _LazyShapes:
    """core.node_shapes(h, w) (spec node → (N, C, H, W)), computed on first use."""

    def __init__(self, core, h, w):
        self._core, self._h, self._w, self._s = core, h, w, None

    def __getitem__(self, node: str):
        if self._s is None:
            self._s = self._core.node_shapes(self._h, self._w)
        return [int(v) for v in self._s[node]]


def _num(n, key, default):
    v = n.get(key, default)
    if isinstance(v, (list, tuple)):
        v = v[0]
    return v


def _layer_op(n, xs, ranks, out, fresh, nodes, inits, numpy_helper, helper, shapes) -> int:
    """The layer-API engine ops (csrc/cpu/shape_ops.cpp) as standard ONNX ops; the engine's
    tensors are (N, C, H, W), a dense layer's (N, F) is (N, F, 1, 1) to them.  Returns the
    output's rank (4, or the input's for the elementwise activations)."""
    op, name = n["op"], n["name"]
    r = ranks[0]

    def const(base, values, dtype=np.int64):
        cname = fresh(f"{name}.{base}")
        inits.append(numpy_helper.from_array(np.asarray(values, dtype), cname))
        return cname

    def as4(x, rank):  # (N, F) → (N, F, 1, 1)
        if rank == 4:
            return x
        y = fresh(f"{name}.unsqueeze")
        nodes.append(helper.make_node("Unsqueeze", [x, const("unsqueeze_axes", [2, 3])], [y],
                                      name=y))
        return y

    if op in ("sigmoid", "tanh"):
        nodes.append(helper.make_node(op.capitalize(), xs, [out], name=name))
        return r
    if op == "reshape":  # (N, C·H·W values in NCHW order) → (N, channels, height, width)
        shape = const("shape", [0, int(_num(n, "channels", 0)), int(_num(n, "height", 0)),
                                int(_num(n, "width", 0))])
        nodes.append(helper.make_node("Reshape", [xs[0], shape], [out], name=name))
        return 4
    x = as4(xs[0], r)
    if op == "depth_to_space":
        nodes.append(helper.make_node(
            "DepthToSpace", [x], [out], name=name, blocksize=int(_num(n, "block_size", 2)),
            mode="CRD" if float(_num(n, "crd", 1)) != 0 else "DCR"))
    elif op == "permute":  # numpy's transpose of (C, H, W)
        perm = [int(v) for v in n["perm"]]
        nodes.append(helper.make_node("Transpose", [x], [out], name=name,
                                      perm=[0] + [1 + v for v in perm]))
    elif op == "depth_max":  # value: the maximum over C; argmax: its first index, as a float
        if float(_num(n, "argmax", 0)) != 0:
            idx = fresh(f"{name}.argmax")
            nodes.append(helper.make_node("ArgMax", [x], [idx], name=idx, axis=1, keepdims=1,
                                          select_last_index=0))
            nodes.append(helper.make_node("Cast", [idx], [out], name=name, to=1))  # float
        else:
            nodes.append(helper.make_node("ReduceMax", [x], [out], name=name, axes=[1],
                                          keepdims=1))
    elif op == "lrn":  # ONNX's LRN: the same centred window and alpha/size scaling (odd size)
        nodes.append(helper.make_node(
            "LRN", [x], [out], name=name, size=int(_num(n, "size", 5)),
            alpha=float(_num(n, "alpha", 1e-4)), beta=float(_num(n, "beta", 0.75)),
            bias=float(_num(n, "k", 1.0))))
    elif op == "reduce":  # axes 1 C, 2 H, 3 W of NCHW, kept with size 1
        axes = sorted(int(v) for v in n["axes"])
        mode = int(_num(n, "mode", 0))
        if mode == 0:  # ReduceSum takes its axes as an input since opset 13
            nodes.append(helper.make_node("ReduceSum", [x, const("axes", axes)], [out],
                                          name=name, keepdims=1))
        else:
            nodes.append(helper.make_node("ReduceMean" if mode == 1 else "ReduceL2", [x], [out],
                                          name=name, axes=axes, keepdims=1))
    elif op == "matmul":  # per (n, c): op(A) · op(B) of the H × W matrices
        ins = [x, as4(xs[1], ranks[1])]
        for i, key in enumerate(("trans_a", "trans_b")):
            if float(_num(n, key, 0)) != 0:
                t = fresh(f"{name}.{key}")
                nodes.append(helper.make_node("Transpose", [ins[i]], [t], name=t,
                                              perm=[0, 1, 3, 2]))
                ins[i] = t
        nodes.append(helper.make_node("MatMul", ins, [out], name=name))
    elif op == "resize_nearest":
        _resize_nearest(n, x, out, const, fresh, nodes, helper, shapes)
    elif op == "resize_bilinear":
        _resize_bilinear(n, x, out, const, fresh, nodes, helper)
    return 4


def _resize_nearest(n, x, out, const, fresh, nodes, helper, shapes):
    """Nearest with half-pixel centres (PyTorch's 'nearest-exact'): output row o reads input row
    floor((o + 0.5) · in / out).  As two Gathers of those indices, computed here in exact
    integer arithmetic: ONNX's Resize (tf_half_pixel_for_nn + floor, or half_pixel +
    round_prefer_ceil) has the same formula in exact arithmetic, but runtimes evaluate it with
    the float32 scale out / in and can pick the neighbouring row at ties (onnxruntime's
    tf_half_pixel_for_nn: 14 → 1 and 20 → 6)."""
    name = n["name"]
    _, _, ih, iw = shapes[n["inputs"][0]]
    oh, ow = int(_num(n, "height", 0)), int(_num(n, "width", 0))
    y = x
    for axis, (i_, o_) in ((2, (ih, oh)), (3, (iw, ow))):
        idx = [min(((2 * o + 1) * i_) // (2 * o_), i_ - 1) for o in range(o_)]
        if idx == list(range(i_)):
            continue  # the identity along this axis
        g = out if axis == 3 else fresh(f"{name}.rows")
        nodes.append(helper.make_node("Gather", [y, const(f"index{axis}", idx)], [g], name=g,
                                      axis=axis))
        y = g
    if y != out:  # the identity on both axes (or only the rows gathered)
        nodes.append(helper.make_node("Identity", [y], [out], name=name))


def _resize_bilinear(n, x, out, const, fresh, nodes, helper):
    """Bilinear with half-pixel centres (PyTorch's align_corners=False, source coordinates
    below 0 clamped): ONNX's Resize linear / half_pixel to the sizes (N, C, height, width), N
    taken from the input at run time (opset 17's sizes name every axis)."""
    name = n["name"]
    oh, ow = int(_num(n, "height", 0)), int(_num(n, "width", 0))
    nc, sizes = fresh(f"{name}.nc"), fresh(f"{name}.sizes")
    nodes.append(helper.make_node("Shape", [x], [nc], name=nc, start=0, end=2))
    nodes.append(helper.make_node("Concat", [nc, const("hw", [oh, ow])], [sizes], name=sizes,
                                  axis=0))
    nodes.append(helper.make_node("Resize", [x, "", "", sizes], [out], name=name, mode="linear",
                                  coordinate_transformation_mode="half_pixel"))


def _detection_heads(n, xs, fresh, nodes, inits, numpy_helper, helper, core, h, w):
    """detection_output as ONNX: per level, the class head (N, A·K, H, W) and the box head
    (N, A·D, H, W) reshaped to anchor rows (N, H·W·A, K) / (N, H·W·A, D) in the engine's
    anchor order (row, column, anchor), then the levels concatenated.  Returns the two
    concatenated tensor names."""
    k, a, bv = int(n["num_classes"]), int(n["num_anchors"]), int(n.get("box_values", 4))
    shapes = core.node_shapes(h, w)
    parts: dict[int, list[str]] = {0: [], 1: []}
    for li in range(len(n["inputs"]) // 2):
        hl, wl = (int(v) for v in shapes[n["inputs"][2 * li]][2:4])
        for part, cnum in ((0, k), (1, bv)):
            x = xs[2 * li + part]
            base = f"{n['name']}.l{li}.{'cls' if part == 0 else 'box'}"
            s5 = fresh(f"{base}.shape5")
            inits.append(numpy_helper.from_array(np.array([0, a, cnum, hl, wl], np.int64), s5))
            r5 = fresh(f"{base}.r5")
            nodes.append(helper.make_node("Reshape", [x, s5], [r5], name=r5))
            t = fresh(f"{base}.t")  # (N, H, W, A, C)
            nodes.append(helper.make_node("Transpose", [r5], [t], name=t, perm=[0, 3, 4, 1, 2]))
            s3 = fresh(f"{base}.shape3")
            inits.append(numpy_helper.from_array(np.array([0, hl * wl * a, cnum], np.int64),
                                                 s3))
            r3 = fresh(f"{base}.rows")
            nodes.append(helper.make_node("Reshape", [t, s3], [r3], name=r3))
            parts[part].append(r3)
    outs = []
    for part, oname in ((0, "class_logits"), (1, "box_deltas")):
        nodes.append(helper.make_node("Concat", parts[part], [oname], name=fresh(oname), axis=1))
        outs.append(oname)
    return outs


def _finish_detection(onnx, helper, TensorProto, nodes, inits, det_heads, p, c, h, w, core):
    """The graph of a detector: outputs ``class_logits`` (N, A_total, K), ``box_deltas``
    (N, A_total, D) (raw head outputs, before sigmoid / decoding) and the constant
    ``anchors`` (A_total, D): D = 4, (row1, col1, row2, col2), for rectangle1; D = 5,
    (row, col, length1, length2, phi), for rectangle2.  Decoding and NMS are documented in
    docs/onnx.md, not part of the graph."""
    from onnx import numpy_helper

    anchors, level_start = core.det_anchors(h, w)
    anchors = np.asarray(anchors, np.float32)
    na, k, bv = anchors.shape[0], len(p["class_ids"]), anchors.shape[1]
    rect2 = bv == 5
    nodes.append(helper.make_node(
        "Constant", [], ["anchors"], name="anchors",
        value=numpy_helper.from_array(anchors, "anchors.value")))
    graph = helper.make_graph(
        nodes, "halcdl",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", c, h, w])],
        [helper.make_tensor_value_info("class_logits", TensorProto.FLOAT, ["N", na, k]),
         helper.make_tensor_value_info("box_deltas", TensorProto.FLOAT, ["N", na, bv]),
         helper.make_tensor_value_info("anchors", TensorProto.FLOAT, [na, bv])],
        initializer=inits)
    model = helper.make_model(graph, producer_name="halcdl", producer_version=_version(),
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    coding = ("'box_deltas' (N, A, 5) encoded (d2, d1, dlength1, dlength2, dphi) against "
              "'anchors' (A, 5) (row, col, length1, length2, phi)" if rect2 else
              "'box_deltas' (N, A, 4) encoded (dy, dx, dh, dw) against 'anchors' (A, 4) "
              "(row1, col1, row2, col2)")
    model.doc_string = (
        "halcdl detector up to the raw head outputs: input 'image' float32 (N, C, H, W), "
        "already preprocessed; outputs 'class_logits' (N, A, K) (sigmoid gives the class "
        f"scores), {coding}; anchors level by level (halcdl.detection.level_start), then "
        "row, column, anchor. Decoding and NMS: docs/onnx.md (not in the graph)")
    det_keys = ("min_level", "max_level", "anchor_num_subscales", "anchor_aspect_ratios",
                "min_confidence", "max_overlap", "max_overlap_class_agnostic",
                "max_num_detections", "instance_type", "anchor_angles", "ignore_direction",
                "class_ids_no_orientation")
    det = {key: p[key] for key in det_keys if key in p}
    helper.set_model_props(model, {
        "halcdl.type": "detection",
        "halcdl.class_ids": json.dumps(list(p["class_ids"])),
        "halcdl.class_names": json.dumps(list(p["class_names"])),
        "halcdl.image_range_min": json.dumps(float(p["image_range_min"])),
        "halcdl.image_range_max": json.dumps(float(p["image_range_max"])),
        "halcdl.meta_data": json.dumps(dict(p["meta_data"])),
        "halcdl.detection.level_start": json.dumps([int(v) for v in level_start]),
        "halcdl.detection.box_coding": json.dumps(
            {"weights": [1.0] * bv, "clamp_log": float(np.log(1000.0 / 16.0))}),
        "halcdl.detection.param": json.dumps(det),
    })
    try:
        onnx.checker.check_model(model)
    except Exception as err:
        raise HOperatorError(H_ERR_DL_WRITE_ONNX, f"the exported graph is not valid ONNX: "
                                                  f"{err}") from None
    return model


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("halcdl")
    except Exception:
        return ""


def export_onnx(m: DLModel, path: str) -> None:
    """Write the ONNX file atomically (7803 if the model cannot be exported, 7781 if the file
    cannot be written)."""
    try:
        model = build_onnx(m)
        data = model.SerializeToString()
    except HOperatorError as err:
        raise HOperatorError(err.error_code, f"cannot write ONNX file {path!r}: "
                                             f"{err._text}") from None
    except ValueError as err:  # e.g. a model above protobuf's 2 GB limit
        raise HOperatorError(H_ERR_DL_WRITE_ONNX,
                             f"cannot write ONNX file {path!r}: {err}") from None
    try:
        atomic_write(path, lambda put: put(data))
    except OSError as err:
        raise HOperatorError(H_ERR_DL_FILE_WRITE,
                             f"cannot write ONNX file {path!r}: {err.strerror or err}") from None

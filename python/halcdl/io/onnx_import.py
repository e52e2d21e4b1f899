"""ONNX → halcdl: a classification or segmentation network becomes a graph spec plus its
weights.

The converter walks the ONNX nodes in their (topological) order and keeps, for every tensor,
either a constant (initializers, ``Constant`` nodes and what folds from them), a *shape value*
(``Shape`` → ``Gather`` → ``Unsqueeze`` → ``Concat`` chains as PyTorch writes them for
``x.view(x.size(0), -1)``; the batch size is the one unknown), or an activation: the spec
node that computes it, its ONNX shape without the batch axis (``shape``) and the shape the
engine's node really has (``eshape``; a ``Flatten`` does not move data, so the engine keeps
(C, H, W) and the next ``fc`` flattens).  Supported ops and their mapping: docs/onnx.md.
Anything else raises 7801 naming the node and its op type.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import H_ERR_DL_READ_ONNX, HOperatorError
from ..models.handle import DLModel
from .arch import spec_architecture
from .files import json_depth_ok
from .onnx_common import require_onnx

__all__ = ["import_onnx", "OnnxParseError", "SUPPORTED_OPS"]

_PARAM_SUFFIXES = (".weight", ".bias", ".scale", ".shift", ".running_mean", ".running_var")
_INF = 3.0e38  # |x| above this counts as an absent Clip bound (PyTorch writes ±3.4e38 or inf)


# what the converter maps (op_* methods below); the helper ops only fold constants and shapes
SUPPORTED_OPS = ("Conv", "ConvTranspose", "Resize", "Upsample", "BatchNormalization", "Relu",
                 "Clip", "Sigmoid", "Tanh", "DepthToSpace", "LRN", "Transpose", "ReduceSum",
                 "ReduceL2", "ReduceMax", "MaxPool", "AveragePool",
                 "GlobalAveragePool", "ReduceMean", "Gemm", "MatMul", "Add", "Concat",
                 "Flatten", "Reshape", "Softmax", "LogSoftmax", "Dropout", "Identity",
                 "Constant", "Shape", "Gather", "Unsqueeze", "Squeeze", "Cast")


class OnnxParseError(HOperatorError):
    """7801: the bytes are not an ONNX model at all (protobuf cannot parse them)."""


class _Unsupported(Exception):
    """Raised inside a converter; becomes 7801 with the node's name and op type."""


@dataclass
class _Act:
    node: str        # spec node producing it
    shape: tuple     # ONNX shape without the batch axis
    eshape: tuple    # the engine node's output shape without the batch axis


def _prod(t) -> int:
    return int(np.prod(t, dtype=np.int64)) if len(t) else 1


def _pair(v, what: str) -> list[int]:
    v = [int(x) for x in v]
    if len(v) != 2:
        raise _Unsupported(f"{what} must have 2 entries (2-D), got {v}")
    return v


def _compact(a: list[int]) -> Any:
    return a[0] if a[0] == a[1] else list(a)


def _module_name(node_name: str) -> str:
    """'/layer1/layer1.0/conv1/Conv' → 'layer1.0.conv1' (PyTorch's module path)."""
    comps = [c for c in node_name.split("/") if c]
    if len(comps) > 1:
        comps = comps[:-1]  # the op type
    name = ""
    for c in comps:
        if name and c.startswith(name + "."):
            name = c
        else:
            name = f"{name}.{c}" if name else c
    return name


class _Converter:
    def __init__(self, onnx, model, path: str) -> None:
        from onnx import helper, numpy_helper

        self.onnx, self.helper, self.nh = onnx, helper, numpy_helper
        self.model = model
        self.graph = model.graph
        self.path = path
        self.opset = 1
        for imp in model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                self.opset = int(imp.version)
        self.consts: dict[str, np.ndarray] = {}
        self.shapes: dict[str, list] = {}     # shape values: lists of int or None (= batch)
        self.acts: dict[str, _Act] = {}
        self.spec: list[dict] = []
        self.params: dict[str, np.ndarray] = {}
        self.names: set[str] = set()
        self.bias_free_fc: dict[str, str] = {}  # MatMul output tensor → its fc spec node
        self.bn_momenta: list[float] = []
        self.uses: dict[str, int] = {}
        for n in self.graph.node:
            for i in n.input:
                if i:
                    self.uses[i] = self.uses.get(i, 0) + 1
        for o in self.graph.output:
            self.uses[o.name] = self.uses.get(o.name, 0) + 1
        self.drop_softmax: set[int] = set()
        self.segmentation = False

    # ---------------------------------------------------------------------------------------
    # helpers
    # ---------------------------------------------------------------------------------------
    def fail(self, msg: str) -> HOperatorError:
        return HOperatorError(H_ERR_DL_READ_ONNX, f"cannot import ONNX file {self.path!r}: {msg}")

    def attrs(self, node) -> dict:
        return {a.name: self.helper.get_attribute_value(a) for a in node.attribute}

    def unique(self, base: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_.:\-]", "_", base).strip(".") or "node"
        if base == "input":
            base = "input_"
        name, i = base, 2
        while name in self.names:
            name = f"{base}_{i}"
            i += 1
        self.names.add(name)
        return name

    def node_name(self, node, idx: int, param_input: str | None = None) -> str:
        """A spec name: from the weight's initializer name ('layer1.0.conv1.weight' →
        'layer1.0.conv1'), else from the node's name, else op type + index."""
        if param_input:
            for suf in _PARAM_SUFFIXES:
                if param_input.endswith(suf) and len(param_input) > len(suf):
                    return self.unique(param_input[: -len(suf)])
        if node.name:
            return self.unique(_module_name(node.name) or node.op_type.lower())
        return self.unique(f"{node.op_type.lower()}{idx}")

    def const(self, name: str, what: str) -> np.ndarray:
        if name not in self.consts:
            raise _Unsupported(f"{what} ({name!r}) must be a constant (an initializer)")
        return self.consts[name]

    def act(self, name: str, what: str = "the input") -> _Act:
        if name not in self.acts:
            if name in self.consts or name in self.shapes:
                raise _Unsupported(f"{what} ({name!r}) is a constant; only weights may be "
                                   f"constants")
            raise _Unsupported(f"{what} ({name!r}) is not produced by a supported node")
        return self.acts[name]

    def act4(self, name: str, what: str = "the input") -> _Act:
        a = self.act(name, what)
        if len(a.shape) != 3 or len(a.eshape) != 3 or a.shape != a.eshape:
            raise _Unsupported(f"{what} must be a 4-D (N, C, H, W) tensor, got shape "
                               f"(N, {', '.join(map(str, a.shape))})")
        return a

    def add_node(self, name: str, op: str, inputs: list[_Act], **attrs) -> str:
        node = {"name": name, "op": op, "inputs": [a.node for a in inputs]}
        node.update(attrs)
        self.spec.append(node)
        return name

    def used(self, name: str) -> bool:
        return bool(name) and self.uses.get(name, 0) > 0

    def only_first_output(self, node) -> None:
        for o in list(node.output)[1:]:
            if self.used(o):
                raise _Unsupported(f"output {o!r} is used; only the first output is supported")

    # ---------------------------------------------------------------------------------------
    def _initializer(self, init) -> np.ndarray:
        """An initializer as an array, checked first: a known data type, dims >= 0, and as
        much data as its dims promise (before numpy is asked to reshape anything)."""
        T = self.onnx.TensorProto
        dims = list(init.dims)
        if any(d < 0 for d in dims) or len(dims) > 8:
            raise self.fail(f"initializer {init.name!r}: invalid dims {dims}")
        n = math.prod(dims)
        sizes = {T.FLOAT: 4, T.DOUBLE: 8, T.INT64: 8, T.INT32: 4, T.FLOAT16: 2, T.INT8: 1,
                 T.UINT8: 1, T.INT16: 2, T.UINT16: 2, T.BOOL: 1, T.UINT32: 4, T.UINT64: 8}
        if init.data_type not in sizes:
            raise self.fail(f"initializer {init.name!r}: unsupported data type "
                            f"{init.data_type}")
        if init.data_location != T.EXTERNAL:
            if init.HasField("raw_data"):
                have = len(init.raw_data) // sizes[init.data_type]
            else:
                field = {T.FLOAT: "float_data", T.DOUBLE: "double_data", T.INT64: "int64_data",
                         T.UINT64: "uint64_data", T.UINT32: "uint64_data"}.get(
                    init.data_type, "int32_data")
                have = len(getattr(init, field))
            if have != n:
                raise self.fail(f"initializer {init.name!r}: its dims {dims} promise {n} "
                                f"values, it holds {have}")
        try:
            return self.nh.to_array(init)
        except Exception as err:  # protobuf / numpy conversion
            raise self.fail(f"initializer {init.name!r}: cannot be read "
                            f"({type(err).__name__}: {err})") from None

    def run(self) -> tuple[list, dict, tuple, int]:
        g = self.graph
        for init in g.initializer:
            self.consts[init.name] = self._initializer(init)
        inputs = [i for i in g.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise self.fail(f"the graph must have exactly one input, it has {len(inputs)} "
                            f"({', '.join(i.name for i in inputs)})")
        inp = inputs[0]
        tt = inp.type.tensor_type
        if tt.elem_type != self.onnx.TensorProto.FLOAT:
            raise self.fail(f"input {inp.name!r} must be float32, it is "
                            f"{self.onnx.TensorProto.DataType.Name(tt.elem_type)}")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if len(dims) != 4 or any(d is None or d < 1 for d in dims[1:]):
            raise self.fail(f"input {inp.name!r} must be (N, C, H, W) with static C, H, W; "
                            f"its shape is {[d if d else '?' for d in dims]}")
        c, h, w = dims[1:]
        self.spec.append({"name": "input", "op": "input", "inputs": [], "channels": int(c)})
        self.names.add("input")
        self.acts[inp.name] = _Act("input", (c, h, w), (c, h, w))

        if len(g.output) != 1:
            raise self.fail(f"the graph must have exactly one output (the class scores), it "
                            f"has {len(g.output)}")
        self._find_trailing_softmax()
        for idx, node in enumerate(g.node):
            if node.domain not in ("", "ai.onnx"):
                raise self.fail(f"node {node.name or '#' + str(idx)!r} ({node.domain}::"
                                f"{node.op_type}): only the standard ONNX domain is supported")
            fn = getattr(self, "op_" + node.op_type, None)
            try:
                if fn is None:
                    raise _Unsupported(f"unsupported op (supported: {', '.join(SUPPORTED_OPS)})")
                fn(node, idx, self.attrs(node))
            except _Unsupported as err:
                raise self.fail(f"node {node.name or '#' + str(idx)!r} (op type "
                                f"{node.op_type}): {err}") from None
            except HOperatorError:
                raise
            except (IndexError, KeyError, ValueError, TypeError, ZeroDivisionError,
                    OverflowError, AttributeError, RecursionError) as err:
                # a node the checks above did not anticipate (no inputs, a missing weight,
                # an attribute of the wrong kind): still 7801 naming it
                what = ("a required input is missing" if isinstance(err, IndexError)
                        else f"{type(err).__name__}: {err}")
                raise self.fail(f"node {node.name or '#' + str(idx)!r} (op type "
                                f"{node.op_type}): invalid node ({what})") from None
        out_name = g.output[0].name
        if out_name not in self.acts:
            raise self.fail(f"the output {out_name!r} is not computed from the input")
        out = self.acts[out_name]
        k = out.shape[0] if out.shape else 0
        self.segmentation = len(out.shape) == 3 and out.shape[1:] == (h, w) and h * w > 1 \
            and out.eshape == out.shape
        if not out.shape or (_prod(out.shape[1:]) != 1 and not self.segmentation):
            raise self.fail(f"the output must be class scores: (N, K) or (N, K, 1, 1) for "
                            f"classification, (N, K, {h}, {w}) for segmentation; it is "
                            f"(N, {', '.join(map(str, out.shape))})")
        out_node = out.node
        by_name = {n["name"]: n for n in self.spec}
        while by_name[out_node]["op"] == "softmax":  # apply_dl_model applies its own
            out_node = by_name[out_node]["inputs"][0]
        spec = self._prune(out_node)
        params = {p: v for p, v in self.params.items() if p.rsplit(".", 1)[0] in
                  {n["name"] for n in spec}}
        return spec, params, (c, h, w), int(k)

    def _find_trailing_softmax(self) -> None:
        """Softmax / LogSoftmax nodes on the way to the output (behind nothing but
        Identity/Flatten/Reshape/Dropout): apply_dl_model applies its own softmax, and
        softmax(log_softmax(x)) = softmax(x), so they are dropped."""
        producer = {o: i for i, n in enumerate(self.graph.node) for o in n.output}
        name = self.graph.output[0].name
        # a node is only dropped if nothing but the chain to the output uses its result
        while name in producer and self.uses.get(name, 0) == 1:
            i = producer[name]
            n = self.graph.node[i]
            if n.op_type in ("Softmax", "LogSoftmax"):
                self.drop_softmax.add(i)
            elif n.op_type not in ("Identity", "Flatten", "Reshape", "Dropout"):
                break
            if not n.input:
                break
            name = n.input[0]

    def _prune(self, out_node: str) -> list:
        """The ancestors of the output (nodes that do not lead to it are dropped)."""
        by_name = {n["name"]: n for n in self.spec}
        keep = set()
        stack = [out_node]
        while stack:
            n = stack.pop()
            if n in keep:
                continue
            keep.add(n)
            stack.extend(by_name[n]["inputs"])
        spec = [n for n in self.spec if n["name"] in keep]
        assert spec[-1]["name"] == out_node
        return spec

    # ---------------------------------------------------------------------------------------
    # constants and shape values
    # ---------------------------------------------------------------------------------------
    def op_Constant(self, node, idx, a) -> None:
        for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
            if key in a:
                v = a[key]
                arr = self.nh.to_array(v) if key == "value" else np.asarray(
                    v, dtype=np.float32 if "float" in key else np.int64)
                self.consts[node.output[0]] = arr
                return
        raise _Unsupported(f"unsupported Constant attribute(s) {sorted(a)}")

    def op_Shape(self, node, idx, a) -> None:
        x = self.act(node.input[0])
        full = [None] + list(x.shape)
        start, end = int(a.get("start", 0)), a.get("end")
        self.shapes[node.output[0]] = full[start:None if end is None else int(end)]

    def _shape_or_const(self, name: str) -> list | None:
        if name in self.shapes:
            return list(self.shapes[name])
        if name in self.consts:
            return self.consts[name].astype(np.int64).reshape(-1).tolist() \
                if np.issubdtype(self.consts[name].dtype, np.integer) else None
        return None

    def op_Gather(self, node, idx, a) -> None:
        data = self._shape_or_const(node.input[0])
        if node.input[0] not in self.shapes or data is None or int(a.get("axis", 0)) != 0:
            raise _Unsupported("only Gather on a shape (axis 0) is supported")
        ind = self.const(node.input[1], "the indices")
        if not all(-len(data) <= int(i) < len(data) for i in ind.reshape(-1)):
            raise _Unsupported(f"Gather indices {ind.reshape(-1).tolist()} out of range for "
                               f"a shape of {len(data)} values")
        # a scalar index gives a scalar; kept as a one-element list (Unsqueeze is a no-op)
        self.shapes[node.output[0]] = [data[int(i)] for i in ind.reshape(-1)]

    def _axes(self, node, a, pos: int = 1) -> list[int] | None:
        if "axes" in a:
            return [int(x) for x in a["axes"]]
        if len(node.input) > pos and node.input[pos]:
            return [int(x) for x in self.const(node.input[pos], "axes").reshape(-1)]
        return None

    def op_Unsqueeze(self, node, idx, a) -> None:
        if node.input[0] in self.shapes:  # scalar / 1-D shape value → 1-D
            self.shapes[node.output[0]] = self.shapes[node.input[0]]
            return
        if node.input[0] in self.consts:
            x = self.consts[node.input[0]]
            for ax in sorted(self._axes(node, a) or []):
                x = np.expand_dims(x, ax if ax >= 0 else ax + x.ndim + 1)
            self.consts[node.output[0]] = x
            return
        raise _Unsupported("Unsqueeze of an activation is not supported")

    def op_Squeeze(self, node, idx, a) -> None:
        if node.input[0] in self.shapes:
            self.shapes[node.output[0]] = self.shapes[node.input[0]]
            return
        raise _Unsupported("Squeeze of an activation is not supported")

    def op_Cast(self, node, idx, a) -> None:
        if node.input[0] in self.shapes:
            self.shapes[node.output[0]] = self.shapes[node.input[0]]
        elif node.input[0] in self.consts:
            from onnx import helper

            dt = helper.tensor_dtype_to_np_dtype(int(a["to"]))
            self.consts[node.output[0]] = self.consts[node.input[0]].astype(dt)
        else:
            raise _Unsupported("Cast of an activation is not supported")

    # ---------------------------------------------------------------------------------------
    # layers
    # ---------------------------------------------------------------------------------------
    def _pads(self, a, k: list[int], s: list[int], d: list[int], hw: tuple) -> list[int]:
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else str(auto)
        if auto in ("NOTSET", ""):
            p = [int(x) for x in a.get("pads", [0, 0, 0, 0])]
            if len(p) != 4:
                raise _Unsupported(f"pads must have 4 entries (2-D), got {p}")
        elif auto == "VALID":
            p = [0, 0, 0, 0]
        elif auto in ("SAME_UPPER", "SAME_LOWER"):
            tot = [max((math.ceil(hw[i] / s[i]) - 1) * s[i] + (k[i] - 1) * d[i] + 1 - hw[i], 0)
                   for i in range(2)]
            lo = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in tot]
            p = [lo[0], lo[1], tot[0] - lo[0], tot[1] - lo[1]]
        else:
            raise _Unsupported(f"unsupported auto_pad {auto!r}")
        if p[0] != p[2] or p[1] != p[3]:
            raise _Unsupported(f"asymmetric padding {p} (begin ≠ end) is not supported")
        return [p[0], p[1]]

    @staticmethod
    def _out(size: int, k: int, s: int, p: int, d: int = 1, ceil: bool = False) -> int:
        if s < 1 or d < 1 or k < 1 or p < 0:
            raise _Unsupported(f"kernel {k}, stride {s}, dilation {d} must be >= 1 and "
                               f"padding {p} >= 0")
        span = size + 2 * p - d * (k - 1) - 1
        if ceil:
            o = -(-span // s) + 1
            if (o - 1) * s >= size + p:  # the last window must start inside the input
                o -= 1
            return o
        return span // s + 1

    def op_Conv(self, node, idx, a) -> None:
        x = self.act4(node.input[0])
        wname = node.input[1]
        wt = self.const(wname, "the weight")
        if wt.ndim != 4:
            raise _Unsupported(f"only 2-D convolutions are supported (weight shape {wt.shape})")
        o, ipg, kh, kw = (int(v) for v in wt.shape)
        k = _pair(a.get("kernel_shape", [kh, kw]), "kernel_shape")
        if k != [kh, kw]:
            raise _Unsupported(f"kernel_shape {k} does not match the weight {wt.shape}")
        s = _pair(a.get("strides", [1, 1]), "strides")
        d = _pair(a.get("dilations", [1, 1]), "dilations")
        g = int(a.get("group", 1))
        if ipg * g != x.shape[0] or o % g:
            raise _Unsupported(f"weight {wt.shape} with group {g} does not fit {x.shape[0]} "
                               f"input channels")
        p = self._pads(a, k, s, d, x.shape[1:])
        oh = self._out(x.shape[1], k[0], s[0], p[0], d[0])
        ow = self._out(x.shape[2], k[1], s[1], p[1], d[1])
        if oh < 1 or ow < 1:
            raise _Unsupported(f"the output would be empty ({oh}x{ow})")
        bias = len(node.input) > 2 and bool(node.input[2])
        name = self.node_name(node, idx, wname)
        self.params[f"{name}.weight"] = wt
        if bias:
            self.params[f"{name}.bias"] = self.const(node.input[2], "the bias").reshape(o)
        self.add_node(name, "conv", [x], out_channels=o, kernel=_compact(k), stride=_compact(s),
                      pad=_compact(p), dilation=_compact(d), groups=g, bias=bias)
        self.acts[node.output[0]] = _Act(name, (o, oh, ow), (o, oh, ow))

    def op_ConvTranspose(self, node, idx, a) -> None:
        x = self.act4(node.input[0])
        wname = node.input[1]
        wt = self.const(wname, "the weight")
        if wt.ndim != 4:
            raise _Unsupported(f"only 2-D transposed convolutions are supported (weight "
                               f"shape {wt.shape})")
        if int(a.get("group", 1)) != 1:
            raise _Unsupported(f"group {a.get('group')}: the engine's deconv has groups 1")
        i, o, kh, kw = (int(v) for v in wt.shape)
        if i != x.shape[0]:
            raise _Unsupported(f"weight {wt.shape} does not fit {x.shape[0]} input channels")
        k = _pair(a.get("kernel_shape", [kh, kw]), "kernel_shape")
        if k != [kh, kw]:
            raise _Unsupported(f"kernel_shape {k} does not match the weight {wt.shape}")
        s = _pair(a.get("strides", [1, 1]), "strides")
        d = _pair(a.get("dilations", [1, 1]), "dilations")
        op = _pair(a.get("output_padding", [0, 0]), "output_padding")
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else str(auto)
        if auto not in ("NOTSET", "", "VALID"):
            raise _Unsupported(f"auto_pad {auto!r} is not supported")
        p = [int(v) for v in a.get("pads", [0, 0, 0, 0])] if auto != "VALID" else [0, 0, 0, 0]
        if len(p) != 4 or p[0] != p[2] or p[1] != p[3]:
            raise _Unsupported(f"asymmetric padding {p} (begin ≠ end) is not supported")
        out = [(x.shape[1 + j] - 1) * s[j] - 2 * p[j] + d[j] * (k[j] - 1) + op[j] + 1
               for j in range(2)]
        if "output_shape" in a and [int(v) for v in a["output_shape"]][-2:] != out:
            raise _Unsupported(f"output_shape {list(a['output_shape'])} differs from the size "
                               f"the pads give ({out}); give pads instead")
        if min(out) < 1:
            raise _Unsupported(f"the output would be empty ({out[0]}x{out[1]})")
        bias = len(node.input) > 2 and bool(node.input[2])
        name = self.node_name(node, idx, wname)
        self.params[f"{name}.weight"] = wt
        if bias:
            self.params[f"{name}.bias"] = self.const(node.input[2], "the bias").reshape(o)
        self.add_node(name, "deconv", [x], out_channels=o, kernel=_compact(k),
                      stride=_compact(s), pad=_compact(p[:2]), output_padding=_compact(op),
                      dilation=_compact(d), bias=bias)
        shape = (o, out[0], out[1])
        self.acts[node.output[0]] = _Act(name, shape, shape)

    def _upsample(self, node, idx, x: _Act, factors: list, mode: str) -> None:
        f = [float(v) for v in factors]
        if len(f) != 4 or f[0] != 1 or f[1] != 1 or f[2] != f[3] or f[2] != int(f[2]) \
                or f[2] < 1:
            raise _Unsupported(f"only equal integer factors on height and width are supported "
                               f"(scales {f})")
        scale = int(f[2])
        if scale == 1:
            self.acts[node.output[0]] = x
            return
        name = self.node_name(node, idx)
        self.add_node(name, "upsample_nearest" if mode == "nearest" else "upsample_bilinear",
                      [x], scale=scale)
        shape = (x.shape[0], x.shape[1] * scale, x.shape[2] * scale)
        self.acts[node.output[0]] = _Act(name, shape, shape)

    @staticmethod
    def _text(v, default: str) -> str:
        if v is None:
            return default
        return v.decode() if isinstance(v, bytes) else str(v)

    def op_Resize(self, node, idx, a) -> None:
        x = self.act4(node.input[0])
        mode = self._text(a.get("mode"), "nearest")
        ctm = self._text(a.get("coordinate_transformation_mode"), "half_pixel")
        if self.opset < 11:
            ctm = "asymmetric"  # Resize-10 has no such attribute and behaves like this
        if int(a.get("antialias", 0)):
            raise _Unsupported("antialias=1 is not supported")
        if mode == "nearest":
            nmode = self._text(a.get("nearest_mode"), "round_prefer_floor")
            if ctm != "asymmetric" or (nmode != "floor" and self.opset >= 11):
                raise _Unsupported(f"nearest resizing is supported as PyTorch writes it "
                                   f"(coordinate_transformation_mode 'asymmetric', nearest_mode "
                                   f"'floor'), got {ctm!r}, {nmode!r}")
        elif mode == "linear":
            if ctm not in ("half_pixel", "pytorch_half_pixel"):
                raise _Unsupported(f"linear resizing needs coordinate_transformation_mode "
                                   f"'half_pixel' (PyTorch's align_corners=False), got {ctm!r}")
        else:
            raise _Unsupported(f"mode {mode!r} is not supported (nearest, linear)")
        if self.opset < 11:
            factors = self.const(node.input[1], "scales").reshape(-1)
        else:
            sc = node.input[2] if len(node.input) > 2 else ""
            sz = node.input[3] if len(node.input) > 3 else ""
            if sc and self.consts.get(sc, np.zeros(0)).size:
                factors = self.const(sc, "scales").reshape(-1)
            elif sz:
                sizes = self._shape_or_const(sz)
                if sizes is None or len(sizes) != 4 or any(v is None for v in sizes[1:]):
                    raise _Unsupported("sizes must be static")
                full = [1] + list(x.shape)
                factors = [1.0, sizes[1] / full[1], sizes[2] / full[2], sizes[3] / full[3]]
            else:
                raise _Unsupported("neither scales nor sizes are given")
        self._upsample(node, idx, x, list(factors), mode)

    def op_Upsample(self, node, idx, a) -> None:
        x = self.act4(node.input[0])
        mode = self._text(a.get("mode"), "nearest")
        if mode != "nearest":  # its linear mode samples at x / s, the engine's at half pixels
            raise _Unsupported(f"mode {mode!r}: only nearest is supported for Upsample")
        factors = a["scales"] if "scales" in a else self.const(node.input[1], "scales")
        self._upsample(node, idx, x, list(np.asarray(factors).reshape(-1)), mode)

    def op_BatchNormalization(self, node, idx, a) -> None:
        x = self.act(node.input[0])
        if len(x.shape) not in (1, 3) or x.shape != x.eshape:
            raise _Unsupported(f"input of shape (N, {x.shape}) is not supported")
        if int(a.get("training_mode", 0)) != 0 or int(a.get("is_test", 1)) == 0:
            raise _Unsupported("training_mode=1 (batch statistics in the graph): export the "
                               "network in eval mode")
        if int(a.get("spatial", 1)) != 1:
            raise _Unsupported("spatial=0 is not supported")
        self.only_first_output(node)
        c = x.shape[0]
        names = ("scale", "shift", "running_mean", "running_var")
        vals = [self.const(node.input[i + 1], f"the {n}") for i, n in enumerate(names)]
        if any(v.size != c for v in vals):
            raise _Unsupported(f"parameters must have {c} values")
        name = self.node_name(node, idx, node.input[1])
        for n, v in zip(names, vals):
            self.params[f"{name}.{n}"] = v.reshape(c)
        self.bn_momenta.append(float(a.get("momentum", 0.9)))
        self.add_node(name, "bn", [x], eps=float(a.get("epsilon", 1e-5)))
        self.acts[node.output[0]] = _Act(name, x.shape, x.eshape)

    def _unary(self, node, idx, op: str) -> None:
        x = self.act(node.input[0])
        name = self.node_name(node, idx)
        self.add_node(name, op, [x])
        self.acts[node.output[0]] = _Act(name, x.shape, x.eshape)

    def op_Relu(self, node, idx, a) -> None:
        self._unary(node, idx, "relu")

    def op_Sigmoid(self, node, idx, a) -> None:
        self._unary(node, idx, "sigmoid")

    def op_Tanh(self, node, idx, a) -> None:
        self._unary(node, idx, "tanh")

    def op_DepthToSpace(self, node, idx, a) -> None:
        x = self.act4(node.input[0])
        b = int(a.get("blocksize", 0))
        mode = self._text(a.get("mode"), "DCR")
        c, h, w = x.shape
        if b < 1 or c % (b * b):
            raise _Unsupported(f"blocksize {b} must be >= 1 and divide the {c} channels into "
                               f"blocksize² groups")
        if mode not in ("DCR", "CRD"):
            raise _Unsupported(f"mode must be DCR or CRD, got {mode!r}")
        name = self.node_name(node, idx)
        self.add_node(name, "depth_to_space", [x], block_size=b, crd=mode == "CRD")
        shape = (c // (b * b), h * b, w * b)
        self.acts[node.output[0]] = _Act(name, shape, shape)

    def op_LRN(self, node, idx, a) -> None:
        x = self.act4(node.input[0])
        size = int(a.get("size", 0))
        bias = float(a.get("bias", 1.0))
        if size < 1 or size % 2 == 0:
            raise _Unsupported(f"size must be odd (a centred window), got {size}")
        if bias <= 0:
            raise _Unsupported(f"bias must be > 0, got {bias}")
        name = self.node_name(node, idx)
        self.add_node(name, "lrn", [x], size=size, alpha=float(a.get("alpha", 1e-4)),
                      beta=float(a.get("beta", 0.75)), k=bias)
        self.acts[node.output[0]] = _Act(name, x.shape, x.eshape)

    def op_Clip(self, node, idx, a) -> None:
        if self.opset < 11:
            lo, hi = a.get("min"), a.get("max")
        else:
            def bound(i):
                if len(node.input) > i and node.input[i]:
                    return float(self.const(node.input[i], "a bound").reshape(-1)[0])
                return None
            lo, hi = bound(1), bound(2)
        lo = None if lo is None or lo <= -_INF else float(lo)
        hi = None if hi is None or hi >= _INF else float(hi)
        if lo == 0.0 and hi == 6.0:
            self._unary(node, idx, "relu6")
        elif lo == 0.0 and hi is None:
            self._unary(node, idx, "relu")
        else:
            raise _Unsupported(f"only Clip(0, 6) (ReLU6) and Clip(0, inf) (ReLU) are "
                               f"supported, got min {lo}, max {hi}")

    def _pool(self, node, idx, a, op: str) -> None:
        x = self.act4(node.input[0])
        self.only_first_output(node)
        k = _pair(a["kernel_shape"], "kernel_shape")
        s = _pair(a.get("strides", [1, 1]), "strides")
        if any(int(v) != 1 for v in a.get("dilations", [1, 1])):
            raise _Unsupported("dilated pooling is not supported")
        p = self._pads(a, k, s, [1, 1], x.shape[1:])
        if op == "avgpool" and int(a.get("count_include_pad", 0)) and any(p):
            raise _Unsupported(f"count_include_pad=1 with padding {p}: the engine's average "
                               f"pooling excludes the padding")
        if 2 * p[0] > k[0] or 2 * p[1] > k[1]:
            raise _Unsupported(f"padding {p} is more than half the kernel {k}")
        oh, ow = (self._out(x.shape[1 + i], k[i], s[i], p[i]) for i in range(2))
        if int(a.get("ceil_mode", 0)):
            ch, cw = (self._out(x.shape[1 + i], k[i], s[i], p[i], ceil=True) for i in range(2))
            if (ch, cw) != (oh, ow):
                raise _Unsupported(f"ceil_mode=1 changes the output size here ({ch}x{cw} "
                                   f"instead of {oh}x{ow}); the engine rounds down")
        if oh < 1 or ow < 1:
            raise _Unsupported(f"the output would be empty ({oh}x{ow})")
        name = self.node_name(node, idx)
        self.add_node(name, op, [x], kernel=_compact(k), stride=_compact(s), pad=_compact(p))
        shape = (x.shape[0], oh, ow)
        self.acts[node.output[0]] = _Act(name, shape, shape)

    def op_MaxPool(self, node, idx, a) -> None:
        if int(a.get("storage_order", 0)):
            raise _Unsupported("storage_order=1 is not supported")
        self._pool(node, idx, a, "maxpool")

    def op_AveragePool(self, node, idx, a) -> None:
        self._pool(node, idx, a, "avgpool")

    def _gap(self, node, idx, keepdims: bool) -> None:
        x = self.act4(node.input[0])
        name = self.node_name(node, idx)
        self.add_node(name, "gap", [x])
        c = x.shape[0]
        self.acts[node.output[0]] = _Act(name, (c, 1, 1) if keepdims else (c,), (c, 1, 1))

    def op_GlobalAveragePool(self, node, idx, a) -> None:
        self._gap(node, idx, True)

    def op_ReduceMean(self, node, idx, a) -> None:
        axes = self._axes(node, a)
        if axes is not None and sorted(ax % 4 for ax in axes) == [2, 3]:
            self._gap(node, idx, bool(int(a.get("keepdims", 1))))
            return
        if axes is None or not int(a.get("keepdims", 1)):
            raise _Unsupported(f"only ReduceMean over the spatial axes [2, 3] (global "
                               f"average pooling), or with keepdims over channel and spatial "
                               f"axes, is supported, got axes {axes}")
        self._reduce(node, idx, a, 1)

    def _reduce(self, node, idx, a, mode: int) -> None:
        """ReduceSum / ReduceMean / ReduceL2 of a 4-D activation over some of the axes 1, 2, 3,
        keepdims: the engine's reduce (sum 0, mean 1, L2 2)."""
        x = self.act4(node.input[0])
        axes = self._axes(node, a)
        if axes is None or not axes:
            raise _Unsupported("the axes must be given (not every axis: the batch stays)")
        axes = sorted({ax % 4 for ax in axes})
        if 0 in axes or not int(a.get("keepdims", 1)) or int(a.get("noop_with_empty_axes", 0)):
            raise _Unsupported(f"only reductions over the axes 1 (C), 2 (H), 3 (W) with "
                               f"keepdims 1 are supported, got axes {axes}")
        name = self.node_name(node, idx)
        self.add_node(name, "reduce", [x], mode=mode, axes=axes)
        shape = tuple(1 if i + 1 in axes else v for i, v in enumerate(x.shape))
        self.acts[node.output[0]] = _Act(name, shape, shape)

    def op_ReduceSum(self, node, idx, a) -> None:
        self._reduce(node, idx, a, 0)

    def op_ReduceL2(self, node, idx, a) -> None:
        self._reduce(node, idx, a, 2)

    def op_ReduceMax(self, node, idx, a) -> None:
        x = self.act4(node.input[0])
        axes = self._axes(node, a)
        if axes is None or [ax % 4 for ax in axes] != [1] or not int(a.get("keepdims", 1)):
            raise _Unsupported(f"only ReduceMax over the channels (axes [1], keepdims 1) is "
                               f"supported, got axes {axes}")
        name = self.node_name(node, idx)
        self.add_node(name, "depth_max", [x], argmax=False)
        shape = (1,) + x.shape[1:]
        self.acts[node.output[0]] = _Act(name, shape, shape)

    def op_Transpose(self, node, idx, a) -> None:
        x = self.act4(node.input[0])
        perm = [int(v) for v in a.get("perm", [])]
        if len(perm) != 4 or perm[0] != 0 or sorted(perm) != [0, 1, 2, 3]:
            raise _Unsupported(f"only a Transpose of a 4-D tensor that keeps the batch axis "
                               f"first is supported, got perm {perm}")
        p3 = [v - 1 for v in perm[1:]]
        shape = tuple(x.shape[v] for v in p3)
        name = self.node_name(node, idx)
        self.add_node(name, "permute", [x], perm=p3, channels=int(shape[0]))
        self.acts[node.output[0]] = _Act(name, shape, shape)

    def _fc(self, node, idx, x: _Act, weight: np.ndarray, bias, wname: str | None) -> str:
        o, i = weight.shape
        f = _prod(x.eshape)
        if len(x.shape) != 1 or i != f:
            raise _Unsupported(f"weight {weight.shape} does not fit the input (N, "
                               f"{', '.join(map(str, x.shape))})")
        name = self.node_name(node, idx, wname)
        self.params[f"{name}.weight"] = np.ascontiguousarray(weight, dtype=np.float32)
        attrs: dict[str, Any] = {"out_features": int(o), "bias": bias is not None}
        if len(x.eshape) == 3 and x.eshape[1] * x.eshape[2] != 1:
            attrs["in_features"] = int(f)  # the flattened (C, H, W) map: a fixed image size
        if bias is not None:
            self.params[f"{name}.bias"] = bias
        self.add_node(name, "fc", [x], **attrs)
        self.acts[node.output[0]] = _Act(name, (int(o),), (int(o),))
        return name

    def _bias(self, b: np.ndarray, o: int) -> np.ndarray:
        b = np.asarray(b, dtype=np.float32)
        if b.size == 1:
            return np.full(o, float(b.reshape(-1)[0]), np.float32)
        if b.size != o or b.ndim > 2 or (b.ndim == 2 and b.shape[0] != 1):
            raise _Unsupported(f"bias of shape {b.shape} does not broadcast to ({o},)")
        return b.reshape(o)

    def op_Gemm(self, node, idx, a) -> None:
        x = self.act(node.input[0])
        if int(a.get("transA", 0)):
            raise _Unsupported("transA=1 is not supported")
        b = self.const(node.input[1], "B (the weight)")
        if b.ndim != 2:
            raise _Unsupported(f"B must be 2-D, got {b.shape}")
        w = b if int(a.get("transB", 0)) else b.T
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        if alpha != 1.0:
            w = w * np.float32(alpha)
        bias = None
        if len(node.input) > 2 and node.input[2]:
            bias = self._bias(self.const(node.input[2], "C (the bias)"), w.shape[0])
            if beta != 1.0:
                bias = bias * np.float32(beta)
        self._fc(node, idx, x, w, bias, node.input[1])

    def op_MatMul(self, node, idx, a) -> None:
        x = self.act(node.input[0])
        if node.input[1] in self.acts:  # two activations: per (n, c) the H × W matrices
            x = self.act4(node.input[0], "the first operand")
            y = self.act4(node.input[1], "the second operand")
            if x.shape[0] != y.shape[0] or x.shape[2] != y.shape[1]:
                raise _Unsupported(f"operands (N, {', '.join(map(str, x.shape))}) and (N, "
                                   f"{', '.join(map(str, y.shape))}) do not fit (same channels, "
                                   f"no broadcasting)")
            name = self.node_name(node, idx)
            self.add_node(name, "matmul", [x, y], trans_a=False, trans_b=False)
            shape = (x.shape[0], x.shape[1], y.shape[2])
            self.acts[node.output[0]] = _Act(name, shape, shape)
            return
        b = self.const(node.input[1], "the second operand (the weight)")
        if b.ndim != 2:
            raise _Unsupported(f"the weight must be 2-D, got {b.shape}")
        name = self._fc(node, idx, x, b.T, None, node.input[1])
        self.bias_free_fc[node.output[0]] = name

    def op_Add(self, node, idx, a) -> None:
        i0, i1 = node.input[0], node.input[1]
        c0, c1 = i0 in self.consts, i1 in self.consts
        if c0 or c1:
            xname, cname = (i1, i0) if c0 else (i0, i1)
            fc = self.bias_free_fc.get(xname)
            if fc is None or self.uses.get(xname, 0) != 1:
                raise _Unsupported("adding a constant is only supported as the bias of a "
                                   "MatMul")
            node_spec = next(n for n in self.spec if n["name"] == fc)
            node_spec["bias"] = True
            self.params[f"{fc}.bias"] = self._bias(self.consts[cname], node_spec["out_features"])
            del self.bias_free_fc[xname]
            self.acts[node.output[0]] = self.acts[xname]
            return
        x, y = self.act(i0), self.act(i1)
        if x.shape != y.shape or x.eshape != y.eshape:
            raise _Unsupported(f"operands of different shapes (N, {x.shape}) and (N, "
                               f"{y.shape}) (broadcasting is not supported)")
        name = self.node_name(node, idx)
        self.add_node(name, "add", [x, y])
        self.acts[node.output[0]] = _Act(name, x.shape, x.eshape)

    def op_Concat(self, node, idx, a) -> None:
        if all(i in self.consts for i in node.input):  # e.g. Resize scales built by PyTorch
            self.consts[node.output[0]] = np.concatenate(
                [np.atleast_1d(self.consts[i]) for i in node.input], axis=int(a.get("axis", 0)))
            return
        if any(i in self.shapes or i in self.consts for i in node.input):
            parts = [self._shape_or_const(i) for i in node.input]
            if any(p is None for p in parts) or int(a.get("axis", 0)) != 0:
                raise _Unsupported("only shape vectors can be concatenated with constants")
            self.shapes[node.output[0]] = [v for p in parts for v in p]
            return
        xs = [self.act4(i, f"input {i!r}") for i in node.input]
        axis = int(a["axis"])
        if axis not in (1, -3):
            raise _Unsupported(f"only concatenation along channels (axis 1) is supported, got "
                               f"axis {axis}")
        if len({x.shape[1:] for x in xs}) != 1:
            raise _Unsupported("inputs of different spatial sizes")
        name = self.node_name(node, idx)
        self.add_node(name, "concat", xs)
        shape = (sum(x.shape[0] for x in xs),) + xs[0].shape[1:]
        self.acts[node.output[0]] = _Act(name, shape, shape)

    def _alias(self, node, shape: tuple) -> None:
        x = self.acts[node.input[0]]
        self.acts[node.output[0]] = _Act(x.node, tuple(int(v) for v in shape), x.eshape)

    def op_Identity(self, node, idx, a) -> None:
        i = node.input[0]
        if i in self.consts:
            self.consts[node.output[0]] = self.consts[i]
        elif i in self.shapes:
            self.shapes[node.output[0]] = self.shapes[i]
        else:
            self._alias(node, self.act(i).shape)

    def op_Flatten(self, node, idx, a) -> None:
        x = self.act(node.input[0])
        axis = int(a.get("axis", 1))
        if axis < 0:
            axis += len(x.shape) + 1
        if axis != 1:
            raise _Unsupported(f"only Flatten with axis 1 is supported, got {a.get('axis')}")
        self._alias(node, (_prod(x.shape),))

    def op_Reshape(self, node, idx, a) -> None:
        x = self.act(node.input[0])
        target = self._shape_or_const(node.input[1])
        if target is None:
            raise _Unsupported("the target shape must be static (a constant or computed from "
                               "the input's shape)")
        if int(a.get("allowzero", 0)):
            raise _Unsupported("allowzero=1 is not supported")
        full = [None] + list(x.shape)
        out: list = []
        for i, t in enumerate(target):
            if t == 0:
                if i >= len(full):
                    raise _Unsupported(f"target {target}: 0 beyond the input's rank")
                out.append(full[i])
            else:
                out.append(t)
        if out[0] not in (None, -1):
            raise _Unsupported(f"target shape {target} fixes the batch size; use 0 or -1 for "
                               f"the first axis (e.g. x.flatten(1))")
        rest = out[1:]
        total = _prod(x.shape)
        if out[0] == -1:
            if any(v is None or v < 0 for v in rest) or _prod(rest) != total:
                raise _Unsupported(f"target shape {target} mixes the batch axis with others")
        else:
            if any(v is None for v in rest) or sum(v == -1 for v in rest) > 1:
                raise _Unsupported(f"target shape {target} is not static")
            known = _prod([v for v in rest if v != -1])
            if -1 in rest:
                if known == 0 or total % known:
                    raise _Unsupported(f"target shape {target} does not fit {x.shape}")
                rest = [total // known if v == -1 else v for v in rest]
            if _prod(rest) != total:
                raise _Unsupported(f"target shape {target} does not fit {x.shape}")
        rest = tuple(int(v) for v in rest)
        if len(rest) == 1 or rest == x.eshape:
            self._alias(node, rest)
        else:
            raise _Unsupported(f"reshaping (N, {x.shape}) to (N, {rest}) moves data; only "
                               f"flattening to (N, features) is supported")

    def _dropped_or(self, node, idx, fn) -> None:
        if idx in self.drop_softmax:
            self._alias(node, self.act(node.input[0]).shape)
        else:
            fn()

    def op_Softmax(self, node, idx, a) -> None:
        x = self.act(node.input[0])
        rank = len(x.shape) + 1
        axis = int(a.get("axis", 1 if self.opset < 13 else -1))
        axis = axis + rank if axis < 0 else axis
        # before opset 13, axis 1 means "flatten (C, H, W) and normalise over it all"
        over_classes = axis == 1 and (rank == 2 or self.opset >= 13
                                      or _prod(x.shape[1:]) == 1)
        if not over_classes:
            raise _Unsupported(f"only a softmax over the channels is supported (axis "
                               f"{a.get('axis')})")
        self._dropped_or(node, idx, lambda: self._unary(node, idx, "softmax"))

    def op_LogSoftmax(self, node, idx, a) -> None:
        if idx not in self.drop_softmax:
            raise _Unsupported("LogSoftmax is only supported as the last node")
        self.op_Softmax(node, idx, a)

    def op_Dropout(self, node, idx, a) -> None:
        x = self.act(node.input[0])
        self.only_first_output(node)
        if self.opset < 12:
            p = float(a.get("ratio", 0.5))
            if int(a.get("is_test", 1)) == 0 and self.opset < 7:
                raise _Unsupported("is_test=0: export the network in eval mode")
        else:
            p = 0.5
            if len(node.input) > 1 and node.input[1]:
                p = float(self.const(node.input[1], "ratio").reshape(-1)[0])
            if len(node.input) > 2 and node.input[2]:
                if bool(self.const(node.input[2], "training_mode").reshape(-1)[0]):
                    raise _Unsupported("training_mode=true: export the network in eval mode")
        if not 0.0 <= p < 1.0:
            raise _Unsupported(f"ratio {p} must be in [0, 1)")
        if p == 0.0 or idx in self.drop_softmax:
            self._alias(node, x.shape)
            return
        name = self.node_name(node, idx)
        self.add_node(name, "dropout", [x], p=p)
        self.acts[node.output[0]] = _Act(name, x.shape, x.eshape)


def _size_multiple(spec: list) -> int:
    """The largest downsampling factor inside the network (pooling and strided convolutions
    divide, transposed convolutions and upsampling multiply back): a segmentation network
    whose skip connections meet again needs image sizes divisible by it."""
    factor: dict[str, float] = {}
    worst = 1.0
    for n in spec:
        ins = [factor[i] for i in n["inputs"] if factor.get(i) is not None]
        f = max(ins) if ins else 1.0
        op = n["op"]
        if op in ("conv", "maxpool", "avgpool"):
            st = n.get("stride", 1 if op == "conv" else n.get("kernel", 1))
            f *= max(st) if isinstance(st, list) else st
        elif op == "deconv":
            st = n.get("stride", 1)
            f /= max(st) if isinstance(st, list) else st
        elif op in ("upsample_nearest", "upsample_bilinear"):
            f /= n.get("scale", 2)
        elif op == "depth_to_space":
            f /= n.get("block_size", 2)
        factor[n["name"]] = f
        worst = max(worst, f)
    return max(1, int(math.ceil(worst - 1e-9)))


def _meta_props(model) -> dict:
    return {p.key: p.value for p in model.metadata_props}


def import_onnx(path: str, seed: int, data: bytes | None = None) -> DLModel:
    """A model handle for the ONNX classification or segmentation network in ``path`` (7801
    on anything that cannot be imported)."""
    onnx = require_onnx(H_ERR_DL_READ_ONNX)
    try:
        if data is not None:
            model = onnx.load_model_from_string(data)
            if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
                from onnx.external_data_helper import load_external_data_for_model

                load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
        else:
            model = onnx.load(path)
    except Exception as err:  # protobuf's DecodeError, missing external data, ...
        raise OnnxParseError(H_ERR_DL_READ_ONNX, f"cannot import ONNX file {path!r}: not a "
                                                 f"readable ONNX model ({err})") from None
    conv = _Converter(onnx, model, path)
    try:
        spec, params, (c, h, w), k = conv.run()
    except HOperatorError:
        raise
    except (IndexError, KeyError, ValueError, TypeError, ZeroDivisionError, OverflowError,
            AttributeError, RecursionError) as err:
        raise conv.fail(f"invalid graph ({type(err).__name__}: {err})") from None
    fixed = any(n["op"] == "fc" and "in_features" in n for n in spec)
    kind = {}
    if conv.segmentation:
        multiple = _size_multiple(spec)
        kind = dict(model_type="segmentation", size_multiple=multiple, min_size=multiple)
    props = _meta_props(model)

    def prop(key, kind, default):
        if key not in props:
            return default
        try:
            v = json.loads(props[key])
            if json_depth_ok(v) and kind(v):
                return v
        except (ValueError, RecursionError, TypeError, OverflowError):
            pass
        # halcdl's own metadata, present but unusable (hand-edited, corrupted): refused
        raise conv.fail(f"metadata {key!r} is invalid: {props[key][:80]!r}")

    def finite(v) -> bool:  # a float32-finite number (1e999 parses as inf)
        return isinstance(v, (int, float)) and not isinstance(v, bool) and \
            math.isfinite(float(v)) and abs(float(v)) <= 1e30

    class_ids = prop("halcdl.class_ids", lambda v: isinstance(v, list) and len(v) == k and all(
        isinstance(i, int) and 0 <= i < 2**63 for i in v) and len(set(v)) == k, list(range(k)))
    class_names = prop("halcdl.class_names", lambda v: isinstance(v, list) and len(v) == k and
                       all(isinstance(s, str) for s in v), [str(i) for i in class_ids])
    rmin = prop("halcdl.image_range_min", finite, -127.0)
    rmax = prop("halcdl.image_range_max", finite, 128.0)
    meta = prop("halcdl.meta_data", lambda v: isinstance(v, dict) and all(
        isinstance(x, str) or (finite(x) if isinstance(x, float) else
                               isinstance(x, int) and -2**63 <= x < 2**63)
        for x in v.values()), None)
    base = os.path.basename(path)
    arch = spec_architecture(
        base, spec, k, f"imported from the ONNX file {base}",
        image_width=int(w), image_height=int(h), image_num_channels=int(c),
        image_range_min=float(rmin), image_range_max=float(rmax), fixed_size=fixed,
        **({"min_size": 1} | kind))
    try:
        m = DLModel(arch, seed)
        core = m.core
        names = set(core.param_names())
        missing = names - set(params)
        if missing:
            raise conv.fail(f"no values for parameters {sorted(missing)[:5]}")
        for name in core.param_names():
            core.set_param(name, np.ascontiguousarray(params[name], dtype=np.float32))
    except HOperatorError as err:
        if err.error_code == H_ERR_DL_READ_ONNX:
            raise
        raise conv.fail(f"the engine rejects the converted graph: {err.message}") from None
    p = m.params
    if class_ids != p["class_ids"]:
        core.set_class_ids(class_ids)
    p["class_ids"] = list(class_ids)
    p["class_names"] = list(class_names)
    if conv.segmentation:
        ignore = prop("halcdl.ignore_class_ids", lambda v: isinstance(v, list) and all(
            isinstance(i, int) and i >= 0 and i not in class_ids for i in v), [])
        p["ignore_class_ids"] = list(ignore)
    if conv.bn_momenta and len(set(conv.bn_momenta)) == 1:
        mom = 1.0 - conv.bn_momenta[0]  # ONNX: running·momentum + batch·(1 − momentum)
        if 0.0 <= mom <= 1.0:
            p["batchnorm_momentum"] = float(mom)
    producer = " ".join(x for x in (model.producer_name, model.producer_version) if x)
    p["meta_data"] = meta if meta is not None else {
        "architecture": base,
        "imported_from": "onnx",
        "producer": producer or "unknown",
        "opset": int(conv.opset),
    }
    m.mark_hparams_dirty()
    return m

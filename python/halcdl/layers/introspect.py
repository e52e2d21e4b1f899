"""Model introspection on the engine's graph spec: get/set_dl_model_layer_param,
get/set_dl_model_layer_weights, load_dl_model_weights, get_dl_model_layer.

A model's layers are its spec nodes, named as the spec names them (the zoo's names follow
torchvision: 'conv1', 'layer1.0.bn1', ...), plus, for layer-API models, the softmax, loss,
identity and label-input layers kept with the spec.  A convolution or batch normalization
created with activation 'relu' is one layer (its ReLU node is named '<layer>/activation'),
an element-wise sum of more than two inputs too ('<layer>/sumN').  See docs/layers.md.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from ..errors import (
    H_ERR_CNN_INVALID_INPUT_DATA,
    H_ERR_CNN_INVALID_SHAPE,
    H_ERR_DL_PARAM_NOT_AVAILABLE,
    HOperatorError,
)
from ..hobject import HObject
from ..models.handle import DLModel, build_core_model, copy_matching_params
from ..operators._tuple import (
    as_str,
    is_number,
    operator,
    single,
    to_scalar,
    to_tuple,
    wrong_num,
    wrong_type,
    wrong_value,
)
from ..operators.dl_model import _refuse_during_job, check_model
from .api import DLLayer, extra_layers, replace_build

__all__ = [
    "get_dl_model_layer_param",
    "get_dl_model_layer_param_s",
    "set_dl_model_layer_param",
    "get_dl_model_layer_weights",
    "set_dl_model_layer_weights",
    "load_dl_model_weights",
    "get_dl_model_layer",
]

_TYPES = {"input": "input", "conv": "convolution", "bn": "batchnorm", "relu": "activation",
          "relu6": "activation", "maxpool": "pooling", "avgpool": "pooling", "gap": "pooling",
          "fc": "dense", "dropout": "dropout", "softmax": "softmax", "concat": "concat",
          "add": "elementwise", "deconv": "transposed_convolution",
          "upsample_nearest": "zoom_factor", "upsample_bilinear": "zoom_factor",
          "sigmoid": "activation", "tanh": "activation", "depth_to_space": "depth_to_space",
          "resize_nearest": "zoom_size", "resize_bilinear": "zoom_size", "reshape": "reshape",
          "permute": "permutation", "depth_max": "depth_max",
          "lrn": "lrn", "reduce": "reduce", "matmul": "matmul"}


def _owner(node_name: str) -> str:
    """The layer an engine node belongs to ('x/activation' and 'x/sumN' belong to 'x')."""
    return node_name.split("/", 1)[0] if "/" in node_name else node_name


def _wh(v) -> list[int]:
    """Engine int or [h, w] -> HALCON [width, height]."""
    if isinstance(v, (list, tuple)):
        return [int(v[1]), int(v[0])] if len(v) == 2 else [int(v[0]), int(v[0])]
    return [int(v), int(v)]


class _View:
    """HALCON's layers of a model, derived from its spec."""

    def __init__(self, m: DLModel) -> None:
        self.m = m
        self.nodes = {n["name"]: n for n in m.spec}
        self.layers: dict[str, dict] = {}
        fused = {_owner(n) for n in self.nodes if "/" in n}
        for n in m.spec:
            name = n["name"]
            if "/" in name:
                continue
            self.layers[name] = self._describe(n, name in fused)
        for rec in extra_layers(m):
            self.layers.setdefault(rec["name"], copy.deepcopy(rec))

    def _inputs(self, n: dict) -> list[str]:
        names = []
        for i in n["inputs"]:
            o = _owner(i)
            if o != n["name"] and o not in names:
                names.append(o)
        return names

    def _describe(self, n: dict, has_fused: bool) -> dict:
        op = n["op"]
        p: dict[str, Any] = {}
        inputs = self._inputs(n)
        if op == "input":
            mp = self.m.params
            p["shape"] = [mp["image_width"], mp["image_height"], mp["image_num_channels"]]
        elif op == "deconv":
            p["kernel_size"] = int(_wh(n.get("kernel", 1))[0])
            p["stride"] = int(_wh(n.get("stride", 1))[0])
            p["kernel_depth"] = int(n["out_channels"])
            p["groups"] = 1
            pad = _wh(n.get("pad", 0))[0]
            p["padding"] = [pad] if pad else "none"
            p["bias_term"] = "true" if n.get("bias", True) else "false"
        elif op == "conv":
            p["kernel_size"] = _wh(n.get("kernel", 1))
            p["dilation"] = _wh(n.get("dilation", 1))
            p["stride"] = _wh(n.get("stride", 1))
            p["num_kernel"] = int(n["out_channels"])
            p["groups"] = int(n.get("groups", 1))
            p["padding"] = _wh(n.get("pad", 0))
            p["activation"] = "relu" if has_fused else "none"
            p["bias_term"] = "true" if n.get("bias", True) else "false"
        elif op == "bn":
            p["momentum"] = "auto"
            p["epsilon"] = float(n.get("eps", 1e-5))
            p["activation"] = "relu" if has_fused else "none"
        elif op in ("sigmoid", "tanh"):
            p["activation_type"] = op
        elif op == "depth_to_space":
            p["block_size"] = int(n.get("block_size", 2))
            p["mode"] = "column_row_depth" if n.get("crd", True) else "depth_column_row"
        elif op == "matmul":
            p["transpose_a"] = "true" if n.get("trans_a", False) else "false"
            p["transpose_b"] = "true" if n.get("trans_b", False) else "false"
        elif op == "reduce":
            p["operation"] = ("sum", "mean", "norm_l2")[int(n.get("mode", 0))]
            p["axes"] = sorted({3: 0, 2: 1, 1: 2}[int(a)] for a in n["axes"])
        elif op == "lrn":
            p["local_size"] = int(n.get("size", 5))
            p["alpha"] = float(n.get("alpha", 1e-4))
            p["beta"] = float(n.get("beta", 0.75))
            p["k"] = float(n.get("k", 1.0))
            p["norm_region"] = "across_channels"
        elif op == "depth_max":
            p["depth_max_mode"] = "argmax" if n.get("argmax", False) else "value"
        elif op == "reshape":
            p["shape"] = [int(n["width"]), int(n["height"]), int(n["channels"]), 0]
        elif op == "permute":
            eng_to_hal = {0: 2, 1: 1, 2: 0}
            hal = [0, 0, 0, 3]
            for e, src in enumerate(n["perm"]):   # engine out axis e <- engine in axis src
                hal[eng_to_hal[e]] = eng_to_hal[int(src)]
            p["permutation"] = hal
        elif op in ("resize_nearest", "resize_bilinear"):
            p["width"], p["height"] = int(n["width"]), int(n["height"])
            p["interpolation"] = "nearest_neighbor" if op == "resize_nearest" else "bilinear"
            p["align_corners"] = "false"
        elif op in ("relu", "relu6"):
            p["activation_type"] = "relu"
            if op == "relu6":
                p["upper_bound"] = 6.0
        elif op in ("maxpool", "avgpool"):
            k = n.get("kernel", 2)
            p["kernel_size"] = _wh(k)
            p["stride"] = _wh(n.get("stride", k))
            p["padding"] = _wh(n.get("pad", 0))
            p["mode"] = "maximum" if op == "maxpool" else "average"
        elif op == "gap":
            p["kernel_size"], p["stride"], p["padding"] = [1], [1], "none"
            p["mode"] = "global_average"
        elif op == "fc":
            p["num_out"] = int(n["out_features"])
            p["bias_term"] = "true" if n.get("bias", True) else "false"
        elif op == "dropout":
            p["probability"] = float(n.get("p", 0.5))
        elif op == "concat":
            p["axis"] = "depth"
        elif op == "add":
            p["operation"], p["coefficients"] = "sum", []
            # a chain 'x/sum1', ... : the layer's inputs are the chain's inputs
            inputs = []
            stack = list(n["inputs"])
            while stack:
                i = stack.pop(0)
                if i.startswith(n["name"] + "/sum"):
                    stack = list(self.nodes[i]["inputs"]) + stack
                elif _owner(i) not in inputs:
                    inputs.append(_owner(i))
        elif op in ("upsample_nearest", "upsample_bilinear"):
            p["scale_width"] = p["scale_height"] = float(n.get("scale", 2))
            p["interpolation"] = "nearest_neighbor" if op == "upsample_nearest" else "bilinear"
            p["align_corners"] = "false"
        return {"name": n["name"], "type": _TYPES[op], "inputs": inputs, "params": p}

    def layer(self, name: str, pos: int) -> dict:
        if name not in self.layers:
            raise wrong_value(pos, f"the model has no layer {name!r} (layers: "
                                   f"{', '.join(list(self.layers)[:12])}"
                                   f"{', ...' if len(self.layers) > 12 else ''})")
        return self.layers[name]


def _layer_name(v: Any, pos: int) -> str:
    return as_str(to_scalar(v, pos, "one layer name"), pos, "layer_name")


def _not_available(layer: dict, name: str) -> HOperatorError:
    return HOperatorError(H_ERR_DL_PARAM_NOT_AVAILABLE,
                          f"layer {layer['name']!r} ({layer['type']}) has no parameter "
                          f"{name!r} (available: name, type, input_layer, "
                          f"{', '.join(layer['params'])})")


def _get(m: DLModel, layer_name: Any, param_name: Any) -> list:
    view = _View(m)
    layer = view.layer(_layer_name(layer_name, 2), 2)
    name = as_str(to_scalar(param_name, 3, "one parameter name"), 3, "param_name")
    if name == "name":
        return [layer["name"]]
    if name == "type":
        return [layer["type"]]
    if name == "input_layer":
        return list(layer["inputs"])
    if name not in layer["params"]:
        raise _not_available(layer, name)
    return to_tuple(copy.deepcopy(layer["params"][name]))


@operator
def get_dl_model_layer_param(dlmodel_handle: Any, layer_name: Any, param_name: Any) -> list:
    """A parameter of the model's layer ``layer_name``: 'name', 'type', 'input_layer' (names
    of the layers feeding it) or the layer's parameters under HALCON's names (see
    docs/layers.md); 7788 for a parameter the layer does not have, 1302 for an unknown
    layer."""
    m = check_model(dlmodel_handle, 1)
    with m.lock:
        check_model(m)
        return _get(m, layer_name, param_name)


@operator
def get_dl_model_layer_param_s(dlmodel_handle: Any, layer_name: Any, param_name: Any) -> Any:
    """get_dl_model_layer_param for a parameter holding one value."""
    return single(get_dl_model_layer_param.__wrapped__(dlmodel_handle, layer_name, param_name))


# settable: (HALCON type, parameter) -> (spec attribute, validator)
def _prob(v: Any) -> float:
    if not is_number(v):
        raise wrong_type(4, f"probability must be a number, got {v!r}")
    f = float(v)
    if not (math.isfinite(f) and 0.0 <= f < 1.0):
        raise wrong_value(4, f"probability must be in [0, 1), got {f}")
    return f


def _eps(v: Any) -> float:
    if not is_number(v):
        raise wrong_type(4, f"epsilon must be a number, got {v!r}")
    f = float(v)
    if not (math.isfinite(f) and f > 0):
        raise wrong_value(4, f"epsilon must be a finite number > 0, got {f}")
    return f


_SETTABLE = {("dropout", "probability"): ("p", _prob), ("batchnorm", "epsilon"): ("eps", _eps)}


def rebuild(m: DLModel, spec: list) -> None:
    """Swap in an engine model for an edited ``spec`` of the same parameter shapes: weights,
    running statistics, optimizer state, hyper-parameters, precision and device carried
    over.  Nothing of ``m`` changes if building fails."""
    old = m.core
    new = build_core_model(spec, m.seed, m.params["class_ids"])
    copy_matching_params(old, new)
    new.set_hparams(m.hparams())
    if m.is_segmentation:
        new.set_ignore_ids(m.ignore_class_ids)
    new.set_state(dict(old.get_state()))
    new.set_precision(old.get_precision())
    if old.device() >= 0:
        DLModel.place(new, old.device())
    m.adopt(spec, new)
    replace_build(m, spec)


@operator
def set_dl_model_layer_param(dlmodel_handle: Any, layer_name: Any, param_name: Any,
                             param_value: Any) -> None:
    """Set a layer parameter.  Settable: 'probability' of dropout layers and 'epsilon' of
    batch normalizations (the model keeps its weights, statistics and optimizer state).
    Every other parameter is read-only in halcdl (7788 naming what is settable)."""
    m = check_model(dlmodel_handle, 1)
    with m.lock:
        check_model(m)
        _refuse_during_job(m, "set_dl_model_layer_param")
        view = _View(m)
        layer = view.layer(_layer_name(layer_name, 2), 2)
        name = as_str(to_scalar(param_name, 3, "one parameter name"), 3, "param_name")
        key = (layer["type"], name)
        if key not in _SETTABLE:
            if name not in ("name", "type", "input_layer") and name not in layer["params"]:
                raise _not_available(layer, name)
            raise HOperatorError(H_ERR_DL_PARAM_NOT_AVAILABLE,
                                 f"{name!r} of layer {layer['name']!r} ({layer['type']}) is "
                                 f"read-only in halcdl (settable: 'probability' of dropout, "
                                 f"'epsilon' of batchnorm layers)")
        vals = to_tuple(param_value)
        if len(vals) != 1:
            raise wrong_num(4, f"{name} takes one value, got {len(vals)}")
        attr, check = _SETTABLE[key]
        value = check(vals[0])
        spec = copy.deepcopy(m.spec)
        for n in spec:
            if n["name"] == layer["name"]:
                n[attr] = value
        rebuild(m, spec)


# --------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------
_ROLES = {
    "convolution": {"weights": "weight", "bias": "bias"},
    "transposed_convolution": {"weights": "weight", "bias": "bias"},
    "dense": {"weights": "weight", "bias": "bias"},
    "batchnorm": {"weights": "scale", "bias": "shift", "batchnorm_mean_avg": "running_mean",
                  "batchnorm_variance_avg": "running_var"},
}
_ALL_TYPES = ("weights", "bias", "batchnorm_mean", "batchnorm_variance", "batchnorm_mean_avg",
              "batchnorm_variance_avg", "weights_normalized", "bias_normalized")


def _param_of(m: DLModel, layer_name: Any, weights_type: Any, pos_layer: int,
              pos_type: int) -> tuple[str, str]:
    view = _View(m)
    layer = view.layer(_layer_name(layer_name, pos_layer), pos_layer)
    wt = as_str(to_scalar(weights_type, pos_type, "one weights type"), pos_type, "weights_type")
    if wt not in _ALL_TYPES:
        raise wrong_value(pos_type, f"weights_type must be one of {_ALL_TYPES}, got {wt!r}")
    roles = _ROLES.get(layer["type"], {})
    role = roles.get(wt)
    pname = f"{layer['name']}.{role}"
    have = set(m.core.param_names())
    if role is None or pname not in have:
        lname = layer["name"]
        present = [k for k, r in roles.items() if f"{lname}.{r}" in have]
        if wt in ("batchnorm_mean", "batchnorm_variance") and layer["type"] == "batchnorm":
            what = ("is not stored by halcdl's engine (it keeps the running averages "
                    "'batchnorm_mean_avg' / 'batchnorm_variance_avg' only)")
        else:
            what = f"is not available (this layer has: {', '.join(present) or 'no weights'})"
        raise HOperatorError(H_ERR_DL_PARAM_NOT_AVAILABLE,
                             f"weights type {wt!r} of layer {lname!r} ({layer['type']}) {what}")
    return pname, wt


@operator
def get_dl_model_layer_weights(dlmodel_handle: Any, layer_name: Any,
                               weights_type: Any) -> np.ndarray:
    """A copy of a layer's values as a float32 numpy array in PyTorch's layout: convolution
    'weights' (num_kernel, input depth / groups, kernel height, kernel width), dense
    'weights' (num_out, input features), 'bias' (n,); batchnorm 'weights' (gamma), 'bias'
    (beta), 'batchnorm_mean_avg' / 'batchnorm_variance_avg' (running statistics), each
    (depth,).  7788 for a type the layer does not have."""
    m = check_model(dlmodel_handle, 1)
    with m.lock:
        check_model(m)
        pname, _ = _param_of(m, layer_name, weights_type, 2, 3)
        return np.array(m.core.get_param(pname), dtype=np.float32, copy=True)


@operator
def set_dl_model_layer_weights(weights: Any, dlmodel_handle: Any, layer_name: Any,
                               weights_type: Any) -> None:
    """Set a layer's values from a numpy array of exactly the shape
    get_dl_model_layer_weights returns (7735 otherwise), finite (7736; variances >= 0).
    An HObject holding one array is accepted.  The optimizer state is kept."""
    m = check_model(dlmodel_handle, 2)
    if isinstance(weights, HObject):
        if len(weights) != 1:
            raise wrong_num(1, f"weights must hold one array, got {len(weights)}")
        weights = weights[0]
    if not isinstance(weights, np.ndarray) or weights.dtype.kind not in "fiu":
        raise wrong_type(1, f"weights must be a numeric numpy array, got "
                            f"{type(weights).__name__}")
    with m.lock:
        check_model(m)
        _refuse_during_job(m, "set_dl_model_layer_weights")
        pname, wt = _param_of(m, layer_name, weights_type, 3, 4)
        want = tuple(np.asarray(m.core.get_param(pname)).shape)
        if tuple(weights.shape) != want:
            raise HOperatorError(H_ERR_CNN_INVALID_SHAPE,
                                 f"weights {wt!r} of layer {pname.rsplit('.', 1)[0]!r} have shape {want}, "
                                 f"got {tuple(weights.shape)}")
        a = np.ascontiguousarray(weights, dtype=np.float32)
        if not np.all(np.isfinite(a)):
            raise HOperatorError(H_ERR_CNN_INVALID_INPUT_DATA,
                                 f"weights {wt!r} of layer {pname.rsplit('.', 1)[0]!r} must be finite")
        if wt == "batchnorm_variance_avg" and np.any(a < 0):
            raise HOperatorError(H_ERR_CNN_INVALID_INPUT_DATA,
                                 f"variances of layer {pname.rsplit('.', 1)[0]!r} must be >= 0")
        m.core.set_param(pname, a)


@operator
def load_dl_model_weights(dlmodel_handle_source: Any, dlmodel_handle_target: Any) -> None:
    """Copy into the target model the weights (and batch-norm statistics) of every layer that
    has the same name and the same weight shapes in the source; everything else of the
    target (other layers, parameters, optimizer state) stays as it was."""
    src = check_model(dlmodel_handle_source, 1)
    dst = check_model(dlmodel_handle_target, 2)
    if src is dst:
        return
    first, second = sorted((src, dst), key=id)  # one lock order: no deadlock
    with first.lock, second.lock:
        check_model(src, 1)
        check_model(dst, 2)
        _refuse_during_job(dst, "load_dl_model_weights")
        copy_matching_params(src.core, dst.core)


@operator
def get_dl_model_layer(dlmodel_handle: Any, layer_names: Any) -> list[DLLayer]:
    """Copies of the named layers as layer handles, each with copies of the layers below it
    (its inputs, recursively) and of their weights, to build new networks with the
    create_dl_layer_* operators (create_dl_model puts the copied weights into the new
    model)."""
    m = check_model(dlmodel_handle, 1)
    names = to_tuple(layer_names)
    if not names:
        raise wrong_num(2, "layer_names must name at least one layer")
    for n in names:
        if not isinstance(n, str):
            raise wrong_type(2, f"layer names must be strings, got {n!r}")
    with m.lock:
        check_model(m)
        view = _View(m)
        for n in names:
            view.layer(n, 2)
        pnames = set(m.core.param_names())
        made: dict[str, DLLayer] = {}

        def make(name: str) -> DLLayer:
            stack = [name]
            while stack:  # inputs first, without recursion
                cur = stack[-1]
                if cur in made:
                    stack.pop()
                    continue
                rec = view.layer(cur, 2)
                todo = [i for i in rec["inputs"] if i not in made]
                if todo:
                    stack.extend(todo)
                    continue
                stack.pop()
                layer = DLLayer(cur, rec["type"], [made[i] for i in rec["inputs"]],
                                copy.deepcopy(rec["params"]))
                if rec["type"] == "input":
                    layer.params.pop("allow_smaller_tuple", None)
                for role in ("weight", "bias", "scale", "shift", "running_mean", "running_var"):
                    if f"{cur}.{role}" in pnames:
                        layer.weights[role] = np.array(m.core.get_param(f"{cur}.{role}"),
                                                       dtype=np.float32)
                made[cur] = layer
            return made[name]

        return [make(n) for n in names]

"""HALCON's layer API: create_dl_layer_* return layer handles, create_dl_model turns the
graph below its output layers into a model.

A layer handle (:class:`DLLayer`) records HALCON's description of one layer (its type, its
parameters as HALCON names them, its input layers).  create_dl_model translates the graph
into the engine's graph spec (docs/internals.md) -- the only graph representation a model
has -- checking every shape on the way, so a network whose layers do not fit fails there,
with the layer named.  What the engine does implicitly is not emitted as nodes:

* the ``softmax`` layer that feeds the loss (or is the output) and the
  ``loss_cross_entropy`` layer: the engine's last node gives the class scores, inference
  applies the softmax, training the softmax cross-entropy;
* the label inputs (``image_label_id``, ``segmentation_image``, ``weight_image``): the
  engine reads them from the samples;
* ``identity`` layers (their output is their input).

The softmax, loss and label-input layers are kept on the model (``DLModel.extra_layers``,
stored in the spec's input node under ``comment``) so that introspection and copies see
them.  See docs/layers.md.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import numpy as np

from ..errors import (
    H_ERR_DL_GRAPH,
    H_ERR_DL_LAYER_INPUT,
    H_ERR_DL_LAYER_PARAM,
    H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
    HOperatorError,
)
from ..io.arch import spec_architecture
from ..models.handle import DLModel
from ..operators._tuple import (
    as_str,
    is_int,
    is_number,
    is_str,
    operator,
    single,
    to_scalar,
    to_tuple,
    wrong_num,
    wrong_type,
    wrong_value,
)
from ..operators.system import next_model_seed

__all__ = [
    "DLLayer",
    "create_dl_layer_input",
    "create_dl_layer_convolution",
    "create_dl_layer_dense",
    "create_dl_layer_batch_normalization",
    "create_dl_layer_activation",
    "create_dl_layer_pooling",
    "create_dl_layer_dropout",
    "create_dl_layer_softmax",
    "create_dl_layer_concat",
    "create_dl_layer_elementwise",
    "create_dl_layer_identity",
    "create_dl_layer_loss_cross_entropy",
    "create_dl_layer_transposed_convolution",
    "create_dl_layer_zoom_factor",
    "create_dl_layer_zoom_size",
    "create_dl_layer_zoom_to_layer_size",
    "create_dl_layer_depth_to_space",
    "create_dl_layer_reshape",
    "create_dl_layer_permutation",
    "create_dl_layer_depth_max",
    "create_dl_layer_lrn",
    "create_dl_layer_reduce",
    "create_dl_layer_matmul",
    "create_dl_model",
    "get_dl_layer_param",
    "get_dl_layer_param_s",
]

LABEL_INPUTS = ("image_label_id", "segmentation_image", "weight_image")
IMAGE_INPUT = "image"


class DLLayer:
    """A layer handle.  ``name``, ``type`` (HALCON's layer type: 'input', 'convolution',
    'batchnorm', 'activation', 'pooling', 'dense', 'dropout', 'softmax', 'concat',
    'elementwise', 'identity', 'loss_cross_entropy'), ``inputs`` (input layer handles),
    ``params`` (HALCON's parameter names -> values), ``weights`` (parameter arrays carried
    by copies from get_dl_model_layer: engine parameter role -> array; create_dl_model puts
    them into the new model)."""

    __slots__ = ("name", "type", "inputs", "params", "weights")

    def __init__(self, name: str, type_: str, inputs: list, params: dict) -> None:
        self.name = name
        self.type = type_
        self.inputs: list[DLLayer] = list(inputs)
        self.params: dict = dict(params)
        self.weights: dict = {}

    def __repr__(self) -> str:
        return f"<DLLayer {self.name!r} ({self.type})>"


# --------------------------------------------------------------------------------------------
# argument helpers (positions are 1-based in the Python signature)
# --------------------------------------------------------------------------------------------
def _layer(h: Any, pos: int, what: str = "dllayer_input") -> DLLayer:
    if isinstance(h, (list, tuple)) and len(h) == 1:
        h = h[0]
    if not isinstance(h, DLLayer):
        raise wrong_type(pos, f"{what} must be a layer handle (from create_dl_layer_*), got "
                              f"{type(h).__name__}")
    return h


def _layers(h: Any, pos: int, what: str, minimum: int) -> list[DLLayer]:
    items = list(h) if isinstance(h, (list, tuple)) else [h]
    out = [_layer(x, pos, what) for x in items]
    if len(out) < minimum:
        raise wrong_num(pos, f"{what} needs at least {minimum} layers, got {len(out)}")
    return out


def _name(v: Any, pos: int) -> str:
    s = as_str(to_scalar(v, pos, "one layer name"), pos, "layer_name")
    if not s:
        raise wrong_value(pos, "layer_name must not be empty")
    return s


def _pos_ints(v: Any, pos: int, what: str, counts: tuple, minimum: int = 1) -> list[int]:
    vals = to_tuple(v)
    if len(vals) not in counts:
        raise wrong_num(pos, f"{what} takes {' or '.join(map(str, counts))} values, got "
                             f"{len(vals)}")
    out = []
    for x in vals:
        if not is_int(x):
            raise wrong_type(pos, f"{what} must be integers, got {x!r}")
        if int(x) < minimum:
            raise wrong_value(pos, f"{what} must be >= {minimum}, got {x}")
        out.append(int(x))
    return out


def _pair(vals: list[int]) -> list[int]:
    """HALCON's [width, height] (or one value for both) -> engine [h, w]."""
    return [vals[0], vals[0]] if len(vals) == 1 else [vals[1], vals[0]]


def _number(v: Any, pos: int, what: str) -> float:
    x = to_scalar(v, pos, f"one {what}")
    if not is_number(x):
        raise wrong_type(pos, f"{what} must be a number, got {x!r}")
    f = float(x)
    if not math.isfinite(f):
        raise wrong_value(pos, f"{what} must be finite, got {f}")
    return f


def _choice(v: Any, pos: int, what: str, choices: tuple, supported: tuple | None = None) -> str:
    x = to_scalar(v, pos, f"one {what}")
    if not is_str(x):
        raise wrong_type(pos, f"{what} must be a string, got {x!r}")
    x = str(x)
    if x not in choices:
        raise wrong_value(pos, f"{what} must be one of {choices}, got {x!r}")
    if supported is not None and x not in supported:
        raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                             f"{what} {x!r} is HALCON's but not supported by halcdl's engine "
                             f"(supported: {supported})")
    return x


def _gen(names: Any, values: Any, pos: int, allowed: dict) -> dict:
    """GenParamName/GenParamValue (two lists, or a dict as ``names``) -> {name: value}.
    ``allowed``: name -> validator(value, pos+1) returning the stored value."""
    if isinstance(names, dict):
        pairs = list(names.items())
        if to_tuple(values):
            raise wrong_num(pos + 1, "gen_param_value must be [] when gen_param_name is a dict")
    else:
        n, v = to_tuple(names), to_tuple(values)
        if len(n) != len(v):
            raise wrong_num(pos + 1, f"gen_param_value needs one value per name ({len(n)}), "
                                     f"got {len(v)}")
        pairs = list(zip(n, v))
    out = {}
    for k, val in pairs:
        if not is_str(k):
            raise wrong_type(pos, f"generic parameter names must be strings, got {k!r}")
        k = str(k)
        if k not in allowed:
            raise wrong_value(pos, f"unknown generic parameter {k!r} (known: "
                                   f"{', '.join(sorted(allowed)) or 'none'})")
        out[k] = allowed[k](val, pos + 1)
    return out


def _bool_str(v: Any, pos: int) -> str:
    if v in (True, False):
        return "true" if v else "false"
    if is_str(v) and str(v) in ("true", "false"):
        return str(v)
    raise wrong_value(pos, f"expected 'true' or 'false', got {v!r}")


def _padding(v: Any, pos: int, counts: tuple = (1, 2, 4)):
    vals = to_tuple(v)
    if len(vals) == 1 and is_str(vals[0]):
        p = str(vals[0])
        if p not in ("none", "half_kernel_size", "implicit"):
            raise wrong_value(pos, f"padding must be 'none', 'half_kernel_size', 'implicit' or "
                                   f"numbers, got {p!r}")
        if p == "implicit":
            raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                                 "padding 'implicit' (asymmetric, input-size dependent) is not "
                                 "supported by halcdl's engine")
        return p
    nums = _pos_ints(vals, pos, "padding", counts, minimum=0)
    if len(nums) == 4:
        if nums[0] != nums[1] or nums[2] != nums[3]:
            raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                                 f"asymmetric padding {nums} is not supported by halcdl's "
                                 f"engine ([left, right, top, bottom] with left = right and "
                                 f"top = bottom only)")
        nums = [nums[0], nums[2]]
    return nums


def _pad_hw(padding, kernel_hw: list[int], dilation_hw: list[int] | None = None) -> list[int]:
    """Engine [ph, pw] of a HALCON padding value."""
    if padding == "none":
        return [0, 0]
    if padding == "half_kernel_size":
        d = dilation_hw or [1, 1]
        return [(d[0] * (kernel_hw[0] - 1)) // 2, (d[1] * (kernel_hw[1] - 1)) // 2]
    return [padding[0], padding[0]] if len(padding) == 1 else [padding[1], padding[0]]


def _activation(v: Any, pos: int) -> str:
    return _choice(v, pos, "activation", ("none", "relu"))


def _new(name: str, type_: str, inputs: list, params: dict, gen: dict) -> DLLayer:
    p = dict(params)
    p.update(gen)
    return DLLayer(name, type_, inputs, p)


# --------------------------------------------------------------------------------------------
# create_dl_layer_*
# --------------------------------------------------------------------------------------------
@operator
def create_dl_layer_input(layer_name: Any, shape: Any, gen_param_name: Any,
                          gen_param_value: Any) -> DLLayer:
    """An input layer.  ``shape``: [width, height, depth] of one sample.  The layer named
    'image' takes the images; 'image_label_id', 'segmentation_image' and 'weight_image' are
    label inputs for the loss layer (shape [1, 1, 1] resp. the image's [width, height, 1]).
    Generic parameters: 'allow_smaller_tuple' ('true'/'false', accepted and ignored),
    'const_val' (not supported: 7914)."""
    name = _name(layer_name, 1)
    dims = _pos_ints(shape, 2, "shape", (3,))
    gen = _gen(gen_param_name, gen_param_value, 3, {"allow_smaller_tuple": _bool_str})
    if name not in (IMAGE_INPUT, *LABEL_INPUTS):
        raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                             f"input layer {name!r}: halcdl's engine reads the sample keys "
                             f"'image' (the network input) and {', '.join(LABEL_INPUTS)} "
                             f"(labels); other input names are not supported")
    return _new(name, "input", [], {"shape": dims}, gen)


_CONV_GEN = {"bias_term": _bool_str}


@operator
def create_dl_layer_convolution(dllayer_input: Any, layer_name: Any, kernel_size: Any,
                                dilation: Any, stride: Any, num_kernel: Any, groups: Any,
                                padding: Any, activation: Any, gen_param_name: Any,
                                gen_param_value: Any) -> DLLayer:
    """A convolution layer (PyTorch's Conv2d).  ``kernel_size``, ``dilation``, ``stride``:
    one value or [width, height]; ``padding``: 'none', 'half_kernel_size' or numbers (one,
    [width, height] or symmetric [left, right, top, bottom]); ``activation``: 'none' or
    'relu'.  Generic parameter 'bias_term' ('true' default)."""
    inp = _layer(dllayer_input, 1)
    name = _name(layer_name, 2)
    k = _pos_ints(kernel_size, 3, "kernel_size", (1, 2))
    d = _pos_ints(dilation, 4, "dilation", (1, 2))
    s = _pos_ints(stride, 5, "stride", (1, 2))
    nk = _pos_ints(num_kernel, 6, "num_kernel", (1,))[0]
    g = _pos_ints(groups, 7, "groups", (1,))[0]
    pad = _padding(padding, 8)
    act = _activation(activation, 9)
    gen = _gen(gen_param_name, gen_param_value, 10, _CONV_GEN)
    return _new(name, "convolution", [inp],
                {"kernel_size": k, "dilation": d, "stride": s, "num_kernel": nk, "groups": g,
                 "padding": pad, "activation": act, "bias_term": "true"}, gen)


@operator
def create_dl_layer_dense(dllayer_input: Any, layer_name: Any, num_out: Any,
                          gen_param_name: Any, gen_param_value: Any) -> DLLayer:
    """A fully-connected layer (PyTorch's Linear over the flattened input, order C, H, W).
    Generic parameter 'bias_term' ('true' default)."""
    inp = _layer(dllayer_input, 1)
    name = _name(layer_name, 2)
    n = _pos_ints(num_out, 3, "num_out", (1,))[0]
    gen = _gen(gen_param_name, gen_param_value, 4, {"bias_term": _bool_str})
    return _new(name, "dense", [inp], {"num_out": n, "bias_term": "true"}, gen)


@operator
def create_dl_layer_batch_normalization(dllayer_input: Any, layer_name: Any, momentum: Any,
                                        epsilon: Any, activation: Any, gen_param_name: Any,
                                        gen_param_value: Any) -> DLLayer:
    """A batch normalization layer (PyTorch's BatchNorm2d).  ``momentum``: 'auto' (the
    model's 'batchnorm_momentum') or a number in [0, 1), HALCON's convention: the weight of
    the old running value (PyTorch's momentum is 1 - momentum); every batch normalization of
    one network must have the same momentum (the engine has one per model).  ``epsilon`` >
    0; ``activation`` 'none' or 'relu'."""
    inp = _layer(dllayer_input, 1)
    name = _name(layer_name, 2)
    mv = to_scalar(momentum, 3, "one momentum")
    if is_str(mv):
        if str(mv) != "auto":
            raise wrong_value(3, f"momentum must be 'auto' or a number, got {mv!r}")
        mom: Any = "auto"
    else:
        mom = _number(mv, 3, "momentum")
        if not 0.0 <= mom < 1.0:
            raise wrong_value(3, f"momentum must be in [0, 1), got {mom}")
    eps = _number(epsilon, 4, "epsilon")
    if eps <= 0:
        raise wrong_value(4, f"epsilon must be > 0, got {eps}")
    act = _activation(activation, 5)
    gen = _gen(gen_param_name, gen_param_value, 6, {})
    return _new(name, "batchnorm", [inp], {"momentum": mom, "epsilon": eps, "activation": act},
                gen)


def _upper_bound(v: Any, pos: int) -> float:
    if not is_number(v) or not math.isfinite(float(v)):
        raise wrong_type(pos, f"upper_bound must be a finite number, got {v!r}")
    return float(v)


@operator
def create_dl_layer_activation(dllayer_input: Any, layer_name: Any, activation_type: Any,
                               gen_param_name: Any, gen_param_value: Any) -> DLLayer:
    """An activation layer: 'relu' (generic parameter 'upper_bound': 6 gives ReLU6, the only
    bound the engine has), 'sigmoid' (1 / (1 + e^-x)) or 'tanh'."""
    inp = _layer(dllayer_input, 1)
    name = _name(layer_name, 2)
    t = _choice(activation_type, 3, "activation_type", ("relu", "sigmoid", "tanh"))
    gen = _gen(gen_param_name, gen_param_value, 4, {"upper_bound": _upper_bound})
    if "upper_bound" in gen and t != "relu":
        raise wrong_value(5, f"upper_bound applies to 'relu' only, not to {t!r}")
    if "upper_bound" in gen and gen["upper_bound"] != 6.0:
        raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                             f"upper_bound {gen['upper_bound']}: halcdl's engine has ReLU6 "
                             f"(upper_bound 6) only")
    return _new(name, "activation", [inp], {"activation_type": t}, gen)


_POOL_MODES = ("maximum", "average", "global_maximum", "global_average")


@operator
def create_dl_layer_pooling(dllayer_input: Any, layer_name: Any, kernel_size: Any, stride: Any,
                            padding: Any, mode: Any, gen_param_name: Any,
                            gen_param_value: Any) -> DLLayer:
    """A pooling layer: ``mode`` 'maximum', 'average' (padding excluded from the average)
    or 'global_average' (kernel_size, stride and padding ignored; output 1×1).
    'global_maximum' is not in the engine (7914).  ``kernel_size``/``stride``: one value or
    [width, height]; ``padding``: 'none', 'half_kernel_size' or numbers (at most half the
    kernel)."""
    inp = _layer(dllayer_input, 1)
    name = _name(layer_name, 2)
    m = _choice(mode, 6, "mode", _POOL_MODES, ("maximum", "average", "global_average"))
    if m == "global_average":
        k, s, pad = [1], [1], "none"
        if to_tuple(kernel_size) and not all(is_int(x) for x in to_tuple(kernel_size)):
            raise wrong_type(3, "kernel_size must be integers")
    else:
        k = _pos_ints(kernel_size, 3, "kernel_size", (1, 2))
        s = _pos_ints(stride, 4, "stride", (1, 2))
        pad = _padding(padding, 5)
    gen = _gen(gen_param_name, gen_param_value, 7, {})
    return _new(name, "pooling", [inp], {"kernel_size": k, "stride": s, "padding": pad,
                                         "mode": m}, gen)


@operator
def create_dl_layer_dropout(dllayer_input: Any, layer_name: Any, probability: Any,
                            gen_param_name: Any, gen_param_value: Any) -> DLLayer:
    """A dropout layer (inverted dropout: identity at inference); ``probability`` in
    [0, 1)."""
    inp = _layer(dllayer_input, 1)
    name = _name(layer_name, 2)
    p = _number(probability, 3, "probability")
    if not 0.0 <= p < 1.0:
        raise wrong_value(3, f"probability must be in [0, 1), got {p}")
    gen = _gen(gen_param_name, gen_param_value, 4, {})
    return _new(name, "dropout", [inp], {"probability": p}, gen)


@operator
def create_dl_layer_softmax(dllayer_input: Any, layer_name: Any, gen_param_name: Any,
                            gen_param_value: Any) -> DLLayer:
    """A softmax layer over the channels (depth)."""
    inp = _layer(dllayer_input, 1)
    name = _name(layer_name, 2)
    gen = _gen(gen_param_name, gen_param_value, 3, {})
    return _new(name, "softmax", [inp], {}, gen)


@operator
def create_dl_layer_concat(dllayer_inputs: Any, layer_name: Any, axis: Any,
                           gen_param_name: Any, gen_param_value: Any) -> DLLayer:
    """Concatenate two or more layers along ``axis`` 'depth' (the engine concatenates
    channels only: 'batch', 'width', 'height' → 7914)."""
    inps = _layers(dllayer_inputs, 1, "dllayer_inputs", 2)
    name = _name(layer_name, 2)
    ax = _choice(axis, 3, "axis", ("batch", "batch_interleaved", "depth", "height", "width"),
                 ("depth",))
    gen = _gen(gen_param_name, gen_param_value, 4, {})
    return _new(name, "concat", inps, {"axis": ax}, gen)


@operator
def create_dl_layer_elementwise(dllayer_inputs: Any, layer_name: Any, operation: Any,
                                coefficients: Any, gen_param_name: Any,
                                gen_param_value: Any) -> DLLayer:
    """Element-wise 'sum' of two or more layers of equal shape; ``coefficients`` [] or all
    1.0 (the engine adds without weights).  'product', 'maximum', 'minimum' and other
    coefficients → 7914."""
    inps = _layers(dllayer_inputs, 1, "dllayer_inputs", 2)
    name = _name(layer_name, 2)
    op = _choice(operation, 3, "operation", ("sum", "product", "maximum", "minimum"), ("sum",))
    coef = to_tuple(coefficients)
    for c in coef:
        if not is_number(c):
            raise wrong_type(4, f"coefficients must be numbers, got {c!r}")
    if coef and len(coef) != len(inps):
        raise wrong_num(4, f"coefficients needs one value per input ({len(inps)}) or none, got "
                           f"{len(coef)}")
    if any(float(c) != 1.0 for c in coef):
        raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                             f"coefficients {coef}: halcdl's engine sums without weights (all "
                             f"1.0 only)")
    gen = _gen(gen_param_name, gen_param_value, 5, {})
    return _new(name, "elementwise", inps, {"operation": op,
                                            "coefficients": [float(c) for c in coef]}, gen)


@operator
def create_dl_layer_identity(dllayer_input: Any, layer_name: Any, gen_param_name: Any,
                             gen_param_value: Any) -> DLLayer:
    """An identity layer (its output is its input; no engine node)."""
    inp = _layer(dllayer_input, 1)
    name = _name(layer_name, 2)
    gen = _gen(gen_param_name, gen_param_value, 3, {})
    return _new(name, "identity", [inp], {}, gen)


@operator
def create_dl_layer_loss_cross_entropy(dllayer_input: Any, dllayer_target: Any,
                                       dllayer_weights: Any, layer_name: Any, loss_weight: Any,
                                       gen_param_name: Any, gen_param_value: Any) -> DLLayer:
    """The cross-entropy loss.  ``dllayer_input``: a softmax layer; ``dllayer_target``: the
    input layer 'image_label_id' (classification) or 'segmentation_image' (segmentation);
    ``dllayer_weights``: [] or the input layer 'weight_image' (segmentation).
    ``loss_weight``: 1.0 (the engine's loss is not scaled; other values → 7914)."""
    inp = _layer(dllayer_input, 1)
    tgt = _layer(dllayer_target, 2, "dllayer_target")
    wts = None if not to_tuple(dllayer_weights) else _layer(dllayer_weights, 3,
                                                             "dllayer_weights")
    name = _name(layer_name, 4)
    lw = _number(loss_weight, 5, "loss_weight")
    gen = _gen(gen_param_name, gen_param_value, 6, {})
    if lw != 1.0:
        raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                             f"loss_weight {lw}: halcdl's engine trains one unscaled loss "
                             f"(1.0 only)")
    return _new(name, "loss_cross_entropy", [inp, tgt] + ([wts] if wts else []),
                {"loss_weight": lw}, gen)


@operator
def create_dl_layer_transposed_convolution(dllayer_input: Any, layer_name: Any,
                                           kernel_size: Any, stride: Any, kernel_depth: Any,
                                           groups: Any, padding: Any, gen_param_name: Any,
                                           gen_param_value: Any) -> DLLayer:
    """A transposed convolution (PyTorch's ConvTranspose2d, square kernel and stride):
    output size (in − 1)·stride − 2·padding + kernel_size.  ``kernel_depth``: output depth;
    ``groups``: 1 (the engine's only value; others → 7914); ``padding``: 'none' or one number.
    Generic parameter 'bias_term' ('true' default)."""
    inp = _layer(dllayer_input, 1)
    name = _name(layer_name, 2)
    k = _pos_ints(kernel_size, 3, "kernel_size", (1,))[0]
    s = _pos_ints(stride, 4, "stride", (1,))[0]
    depth = _pos_ints(kernel_depth, 5, "kernel_depth", (1,))[0]
    g = _pos_ints(groups, 6, "groups", (1,))[0]
    pad = _padding(padding, 7, counts=(1,))
    if pad == "half_kernel_size":
        raise wrong_value(7, "padding of a transposed convolution is 'none' or a number")
    gen = _gen(gen_param_name, gen_param_value, 8, {"bias_term": _bool_str})
    if g != 1:
        raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                             f"groups {g}: halcdl's transposed convolution has groups 1 only")
    return _new(name, "transposed_convolution", [inp],
                {"kernel_size": k, "stride": s, "kernel_depth": depth, "groups": g,
                 "padding": pad, "bias_term": "true"}, gen)


@operator
def create_dl_layer_zoom_factor(dllayer_input: Any, layer_name: Any, scale_width: Any,
                                scale_height: Any, interpolation: Any, align_corners: Any,
                                gen_param_name: Any, gen_param_value: Any) -> DLLayer:
    """Resize by factors: the engine upsamples by one integer factor for both axes
    (scale_width = scale_height ∈ {1, 2, 3, …}), 'nearest_neighbor' or 'bilinear' with
    align_corners 'false' (PyTorch's).  Other factors, 'bicubic' or align_corners 'true' →
    7914."""
    inp = _layer(dllayer_input, 1)
    name = _name(layer_name, 2)
    sw = _number(scale_width, 3, "scale_width")
    sh = _number(scale_height, 4, "scale_height")
    for v, pos in ((sw, 3), (sh, 4)):
        if v <= 0:
            raise wrong_value(pos, f"scale factors must be > 0, got {v}")
    interp = _choice(interpolation, 5, "interpolation",
                     ("nearest_neighbor", "bilinear", "bicubic"),
                     ("nearest_neighbor", "bilinear"))
    ac = _choice(align_corners, 6, "align_corners", ("true", "false"), ("false",))
    gen = _gen(gen_param_name, gen_param_value, 7, {})
    if sw != sh or sw != int(sw) or sw < 1:
        raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                             f"scale {sw} x {sh}: halcdl's engine upsamples by one integer "
                             f"factor for both axes")
    return _new(name, "zoom_factor", [inp], {"scale_width": sw, "scale_height": sh,
                                             "interpolation": interp, "align_corners": ac},
                gen)


_INTERP = ("nearest_neighbor", "bilinear", "bicubic")


@operator
def create_dl_layer_zoom_size(dllayer_input: Any, layer_name: Any, width: Any, height: Any,
                              interpolation: Any, align_corners: Any, gen_param_name: Any,
                              gen_param_value: Any) -> DLLayer:
    """Resize to an absolute output size ``width`` x ``height``: 'bilinear' (PyTorch's
    interpolate(mode='bilinear', align_corners=False)) or 'nearest_neighbor' (half-pixel
    centres: source pixel floor((x + 0.5) * in / out), PyTorch's 'nearest-exact').
    'bicubic' and align_corners 'true' -> 7914."""
    inp = _layer(dllayer_input, 1)
    name = _name(layer_name, 2)
    w = _pos_ints(width, 3, "width", (1,))[0]
    h = _pos_ints(height, 4, "height", (1,))[0]
    for v, pos in ((w, 3), (h, 4)):
        if v > 65536:
            raise wrong_value(pos, f"the output size must be at most 65536, got {v}")
    interp = _choice(interpolation, 5, "interpolation", _INTERP, ("nearest_neighbor", "bilinear"))
    ac = _choice(align_corners, 6, "align_corners", ("true", "false"), ("false",))
    gen = _gen(gen_param_name, gen_param_value, 7, {})
    return _new(name, "zoom_size", [inp], {"width": w, "height": h, "interpolation": interp,
                                           "align_corners": ac}, gen)


@operator
def create_dl_layer_zoom_to_layer_size(dllayer_input: Any, dllayer_reference: Any,
                                       layer_name: Any, interpolation: Any, align_corners: Any,
                                       gen_param_name: Any, gen_param_value: Any) -> DLLayer:
    """Resize to the width and height of ``dllayer_reference``'s output (known when
    create_dl_model checks the shapes); interpolation as create_dl_layer_zoom_size.  The
    reference only gives the size (no gradient flows into it)."""
    inp = _layer(dllayer_input, 1)
    ref = _layer(dllayer_reference, 2, "dllayer_reference")
    name = _name(layer_name, 3)
    interp = _choice(interpolation, 4, "interpolation", _INTERP, ("nearest_neighbor", "bilinear"))
    ac = _choice(align_corners, 5, "align_corners", ("true", "false"), ("false",))
    gen = _gen(gen_param_name, gen_param_value, 6, {})
    return _new(name, "zoom_to_layer_size", [inp, ref], {"interpolation": interp,
                                                         "align_corners": ac}, gen)


_D2S_MODES = {"column_row_depth": True, "depth_column_row": False}


@operator
def create_dl_layer_depth_to_space(dllayer_input: Any, layer_name: Any, block_size: Any,
                                   mode: Any, gen_param_name: Any,
                                   gen_param_value: Any) -> DLLayer:
    """Depth to space: the depth D = d * block_size^2 is moved into block_size x block_size
    spatial blocks (output d x H*b x W*b).  ``mode`` 'column_row_depth' (ONNX's CRD,
    PyTorch's pixel_shuffle) or 'depth_column_row' (ONNX's DCR)."""
    inp = _layer(dllayer_input, 1)
    name = _name(layer_name, 2)
    bs = _pos_ints(block_size, 3, "block_size", (1,))[0]
    if bs > 4096:
        raise wrong_value(3, f"block_size must be at most 4096, got {bs}")
    m = _choice(mode, 4, "mode", tuple(_D2S_MODES))
    gen = _gen(gen_param_name, gen_param_value, 5, {})
    return _new(name, "depth_to_space", [inp], {"block_size": bs, "mode": m}, gen)


@operator
def create_dl_layer_reshape(dllayer_input: Any, layer_name: Any, shape: Any,
                            gen_param_name: Any, gen_param_value: Any) -> DLLayer:
    """A reshape layer: the values of every sample in (depth, height, width) order (width
    fastest) under the new ``shape`` [width, height, depth] or [width, height, depth,
    batch_size].  A 0 keeps the input's size of that axis, one -1 is inferred; batch_size must
    be 0 or -1 (the engine keeps the batch: other values 7914).  Checked at create_dl_model
    (7732 when the counts differ); the model's image size is then fixed."""
    inp = _layer(dllayer_input, 1)
    name = _name(layer_name, 2)
    vals = to_tuple(shape)
    if len(vals) not in (3, 4):
        raise wrong_num(3, f"shape takes 3 or 4 values [width, height, depth(, batch_size)], "
                           f"got {len(vals)}")
    out = []
    for x in vals:
        if not is_int(x):
            raise wrong_type(3, f"shape must be integers, got {x!r}")
        if int(x) < -1:
            raise wrong_value(3, f"shape values must be >= -1, got {x}")
        out.append(int(x))
    if sum(1 for x in out[:3] if x == -1) > 1:
        raise wrong_value(3, "at most one shape value can be -1")
    if len(out) == 4 and out[3] not in (0, -1):
        raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                             f"batch_size {out[3]}: halcdl's engine keeps the batch axis "
                             f"(0 or -1 only)")
    gen = _gen(gen_param_name, gen_param_value, 4, {})
    return _new(name, "reshape", [inp], {"shape": out}, gen)


@operator
def create_dl_layer_permutation(dllayer_input: Any, layer_name: Any, permutation: Any,
                                gen_param_name: Any, gen_param_value: Any) -> DLLayer:
    """A permutation layer: ``permutation`` of the axes [0 width, 1 height, 2 depth, 3 batch];
    output axis k is input axis permutation[k].  The batch stays (permutation[3] = 3, else
    7914).  Moving width or height to the depth fixes the model's image size."""
    inp = _layer(dllayer_input, 1)
    name = _name(layer_name, 2)
    vals = to_tuple(permutation)
    if len(vals) != 4:
        raise wrong_num(3, f"permutation takes 4 values (width, height, depth, batch axes), "
                           f"got {len(vals)}")
    if not all(is_int(x) for x in vals):
        raise wrong_type(3, f"permutation must be integers, got {list(vals)}")
    perm = [int(x) for x in vals]
    if sorted(perm) != [0, 1, 2, 3]:
        raise wrong_value(3, f"permutation must be a permutation of [0, 1, 2, 3], got {perm}")
    if perm[3] != 3:
        raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                             f"permutation {perm}: halcdl's engine keeps the batch axis (3) last")
    gen = _gen(gen_param_name, gen_param_value, 4, {})
    return _new(name, "permutation", [inp], {"permutation": perm}, gen)


_DEPTH_MAX_MODES = ("argmax", "value", "argmax_and_value")


@operator
def create_dl_layer_depth_max(dllayer_input: Any, layer_name: Any, depth_max_mode: Any,
                              gen_param_name: Any, gen_param_value: Any) -> tuple:
    """A depth max layer: per pixel the maximum over the depth (``depth_max_mode`` 'value')
    and/or the depth index of the first maximum, as a float ('argmax'), each of depth 1.
    Returns (dllayer_depth_max_arg, dllayer_depth_max_value); the output not asked for is
    None.  With 'argmax_and_value' the two are separate layers: the value under
    ``layer_name``, the index under ``layer_name`` + '_argmax' (halcdl's convention).  The
    value's gradient goes to the first maximum; the index has none."""
    inp = _layer(dllayer_input, 1)
    name = _name(layer_name, 2)
    mode = _choice(depth_max_mode, 3, "depth_max_mode", _DEPTH_MAX_MODES)
    gen = _gen(gen_param_name, gen_param_value, 4, {})
    arg = val = None
    if mode == "argmax":
        arg = _new(name, "depth_max", [inp], {"depth_max_mode": "argmax"}, gen)
    elif mode == "value":
        val = _new(name, "depth_max", [inp], {"depth_max_mode": "value"}, gen)
    else:
        val = _new(name, "depth_max", [inp], {"depth_max_mode": "value"}, gen)
        arg = _new(f"{name}_argmax", "depth_max", [inp], {"depth_max_mode": "argmax"}, gen)
    return arg, val


@operator
def create_dl_layer_lrn(dllayer_input: Any, layer_name: Any, local_size: Any, alpha: Any,
                        beta: Any, k: Any, norm_region: Any, gen_param_name: Any,
                        gen_param_value: Any) -> DLLayer:
    """A local response normalization layer (across the depth, as AlexNet's):
    y_c = x_c / (k + alpha / local_size · Σ_{c' in the window of local_size around c}
    x_c'^2)^beta, zero outside the depth (PyTorch's LocalResponseNorm).  ``local_size`` odd
    (an even one: 7914), ``k`` > 0, ``norm_region`` 'across_channels'."""
    inp = _layer(dllayer_input, 1)
    name = _name(layer_name, 2)
    ls = to_scalar(local_size, 3, "one local_size")
    if not is_int(ls):
        raise wrong_type(3, f"local_size must be an integer, got {ls!r}")
    if int(ls) < 1:
        raise wrong_value(3, f"local_size must be >= 1, got {ls}")
    if int(ls) % 2 == 0:
        raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                             f"local_size {ls}: halcdl's engine takes an odd window only (a "
                             f"window centred on the channel)")
    a = _number(alpha, 4, "alpha")
    bt = _number(beta, 5, "beta")
    kk = _number(k, 6, "k")
    if kk <= 0:
        raise wrong_value(6, f"k must be > 0, got {kk}")
    nr = _choice(norm_region, 7, "norm_region", ("across_channels",))
    gen = _gen(gen_param_name, gen_param_value, 8, {})
    return _new(name, "lrn", [inp], {"local_size": int(ls), "alpha": a, "beta": bt, "k": kk,
                                     "norm_region": nr}, gen)


_REDUCE_OPS = {"sum": 0, "mean": 1, "norm_l2": 2}
_AXIS_NAMES = {"width": 0, "height": 1, "depth": 2, "batch": 3}
_HAL_TO_ENGINE_AXIS = {0: 3, 1: 2, 2: 1}   # HALCON width, height, depth -> engine W, H, C


@operator
def create_dl_layer_reduce(dllayer_input: Any, layer_name: Any, operation: Any, axes: Any,
                           gen_param_name: Any, gen_param_value: Any) -> DLLayer:
    """A reduce layer: ``operation`` 'sum', 'mean' or 'norm_l2' (the square root of the sum
    of squares) over ``axes``, the axes' numbers as create_dl_layer_permutation's [0 width,
    1 height, 2 depth, 3 batch] or their names 'width', 'height', 'depth'; each reduced axis
    keeps size 1.  The batch (3 / 'batch') → 7914 (the engine keeps the batch)."""
    inp = _layer(dllayer_input, 1)
    name = _name(layer_name, 2)
    op = _choice(operation, 3, "operation", tuple(_REDUCE_OPS))
    vals = to_tuple(axes)
    if not 1 <= len(vals) <= 4:
        raise wrong_num(4, f"axes takes 1 to 4 values, got {len(vals)}")
    out: list[int] = []
    for v in vals:
        if is_str(v):
            if str(v) not in _AXIS_NAMES:
                raise wrong_value(4, f"axes names must be one of {tuple(_AXIS_NAMES)}, got {v!r}")
            a = _AXIS_NAMES[str(v)]
        elif is_int(v):
            a = int(v)
            if not 0 <= a <= 3:
                raise wrong_value(4, f"axes must be in [0, 3] (0 width, 1 height, 2 depth, "
                                     f"3 batch), got {a}")
        else:
            raise wrong_type(4, f"axes must be integers or axis names, got {v!r}")
        if a in out:
            raise wrong_value(4, f"axis {a} is given twice")
        out.append(a)
    if 3 in out:
        raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                             "reducing over the batch: halcdl's engine keeps the batch axis")
    gen = _gen(gen_param_name, gen_param_value, 5, {})
    return _new(name, "reduce", [inp], {"operation": op, "axes": sorted(out)}, gen)


@operator
def create_dl_layer_matmul(dllayer_a: Any, dllayer_b: Any, layer_name: Any, gen_param_name: Any,
                           gen_param_value: Any) -> DLLayer:
    """A matmul layer: per sample and depth the height × width matrices (rows = height,
    columns = width) multiplied, op(A) · op(B), with gen params 'transpose_a' / 'transpose_b'
    ('true' / 'false', default 'false').  A and B need the same depth; op(A)'s width must equal
    op(B)'s height (7732 at create_dl_model).  The model's image size is then fixed."""
    a = _layer(dllayer_a, 1, "dllayer_a")
    b = _layer(dllayer_b, 2, "dllayer_b")
    name = _name(layer_name, 3)
    gen = _gen(gen_param_name, gen_param_value, 4, {"transpose_a": _bool_str,
                                                    "transpose_b": _bool_str})
    p = {"transpose_a": gen.pop("transpose_a", "false"),
         "transpose_b": gen.pop("transpose_b", "false")}
    return _new(name, "matmul", [a, b], p, gen)


def _layer_param(layer: DLLayer, name: str) -> list:
    if name == "name":
        return [layer.name]
    if name == "type":
        return [layer.type]
    if name == "input_layer":
        return [x.name for x in layer.inputs]
    if name in layer.params:
        return to_tuple(copy.deepcopy(layer.params[name]))
    from ..errors import H_ERR_DL_PARAM_NOT_AVAILABLE  # noqa: PLC0415

    raise HOperatorError(H_ERR_DL_PARAM_NOT_AVAILABLE,
                         f"layer {layer.name!r} ({layer.type}) has no parameter {name!r} "
                         f"(available: name, type, input_layer, {', '.join(layer.params)})")


@operator
def get_dl_layer_param(dllayer: Any, gen_param_name: Any) -> list:
    """A parameter of a layer handle: 'name', 'type', 'input_layer' (names of its inputs)
    or any parameter given at creation, under HALCON's name (7788 otherwise)."""
    layer = _layer(dllayer, 1, "dllayer")
    name = as_str(to_scalar(gen_param_name, 2, "one parameter name"), 2, "gen_param_name")
    return _layer_param(layer, name)


@operator
def get_dl_layer_param_s(dllayer: Any, gen_param_name: Any) -> Any:
    """get_dl_layer_param for a parameter holding one value."""
    return single(get_dl_layer_param.__wrapped__(dllayer, gen_param_name))


# --------------------------------------------------------------------------------------------
# the graph -> the engine's spec
# --------------------------------------------------------------------------------------------
def _fail(code: int, layer: DLLayer, what: str) -> HOperatorError:
    return HOperatorError(code, f"layer {layer.name!r} ({layer.type}): {what}")


def _collect(outputs: list[DLLayer]) -> list[DLLayer]:
    """Every layer below ``outputs``, inputs before consumers (7733 on a cycle or on two
    different layers of one name)."""
    order: list[DLLayer] = []
    state: dict[int, int] = {}  # id -> 1 visiting, 2 done
    names: dict[str, DLLayer] = {}

    def visit(layer: DLLayer) -> None:
        st = state.get(id(layer))
        if st == 2:
            return
        if st == 1:
            raise _fail(H_ERR_DL_GRAPH, layer, "the network has a cycle through this layer")
        other = names.get(layer.name)
        if other is not None and other is not layer:
            raise _fail(H_ERR_DL_GRAPH, layer, "two different layers have this name")
        names[layer.name] = layer
        state[id(layer)] = 1
        stack = [(layer, iter(layer.inputs))]
        # iterative DFS (deep networks must not hit Python's recursion limit)
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                state[id(node)] = 2
                order.append(node)
                continue
            s2 = state.get(id(nxt))
            if s2 == 2:
                continue
            if s2 == 1:
                raise _fail(H_ERR_DL_GRAPH, nxt, "the network has a cycle through this layer")
            o2 = names.get(nxt.name)
            if o2 is not None and o2 is not nxt:
                raise _fail(H_ERR_DL_GRAPH, nxt, "two different layers have this name")
            names[nxt.name] = nxt
            state[id(nxt)] = 1
            stack.append((nxt, iter(nxt.inputs)))

    for out in outputs:
        visit(out)
    return order


def _spatial(x: int, k: int, s: int, p: int, d: int) -> int:
    span = x + 2 * p - d * (k - 1) - 1
    return -1 if span < 0 else span // s + 1


class _Builder:
    """Emits engine nodes for layers, tracking each tensor's shape: (C, H, W) or (F,)."""

    def __init__(self) -> None:
        self.nodes: list[dict] = []
        self.out: dict[int, str] = {}     # id(layer) -> engine node name of its output
        self.shape: dict[str, tuple] = {}  # engine node name -> shape
        self.owner: dict[str, DLLayer] = {}

    def node(self, layer: DLLayer, name: str, op: str, inputs: list[str], shape: tuple,
             **attrs) -> str:
        if name in self.shape:
            raise _fail(H_ERR_DL_GRAPH, layer, f"the engine node name {name!r} is taken by "
                                               f"another layer")
        n = {"name": name, "op": op, "inputs": list(inputs)}
        n.update(attrs)
        self.nodes.append(n)
        self.shape[name] = shape
        self.owner[name] = layer
        return name

    def src(self, layer: DLLayer, i: int) -> tuple[str, tuple]:
        inp = layer.inputs[i]
        name = self.out.get(id(inp))
        if name is None:
            raise _fail(H_ERR_DL_LAYER_INPUT, layer,
                        f"its input {inp.name!r} ({inp.type}) is not part of the network's "
                        f"data path (a label input or a loss cannot feed a layer)")
        return name, self.shape[name]

    def spatial_input(self, layer: DLLayer, i: int = 0) -> tuple[str, tuple]:
        name, shp = self.src(layer, i)
        if len(shp) != 3:
            raise _fail(H_ERR_DL_LAYER_INPUT, layer,
                        f"needs a (depth, height, width) input, but {layer.inputs[i].name!r} "
                        f"gives {shp[0]} flat features")
        return name, shp

    def activation(self, layer: DLLayer, x: str, act: str) -> str:
        if act == "relu":
            return self.node(layer, f"{layer.name}/activation", "relu", [x], self.shape[x])
        return x


def _emit(b: _Builder, layer: DLLayer) -> None:  # noqa: C901  (one branch per layer type)
    t, p = layer.type, layer.params
    if t == "input":
        if _is_image(layer):
            w, h, c = p["shape"]
            b.out[id(layer)] = b.node(layer, layer.name, "input", [], (c, h, w), channels=c)
        return
    if t == "identity":
        b.out[id(layer)] = b.src(layer, 0)[0]
        return
    if t == "convolution":
        x, (c, h, w) = b.spatial_input(layer)
        kh, kw = _pair(p["kernel_size"])
        dh, dw = _pair(p["dilation"])
        sh, sw = _pair(p["stride"])
        ph, pw = _pad_hw(p["padding"], [kh, kw], [dh, dw])
        g, nk = p["groups"], p["num_kernel"]
        if c % g or nk % g:
            raise _fail(H_ERR_DL_LAYER_PARAM, layer, f"groups {g} must divide the input depth "
                                                     f"{c} and num_kernel {nk}")
        oh, ow = _spatial(h, kh, sh, ph, dh), _spatial(w, kw, sw, pw, dw)
        if oh < 1 or ow < 1:
            raise _fail(H_ERR_DL_LAYER_INPUT, layer, f"the input ({w}x{h}) is smaller than the "
                                                     f"kernel ({kw}x{kh}, dilation {dw}x{dh})")
        y = b.node(layer, layer.name, "conv", [x], (nk, oh, ow), out_channels=nk,
                   kernel=[kh, kw], stride=[sh, sw], pad=[ph, pw], dilation=[dh, dw], groups=g,
                   bias=p["bias_term"] == "true")
        b.out[id(layer)] = b.activation(layer, y, p["activation"])
        return
    if t == "transposed_convolution":
        x, (c, h, w) = b.spatial_input(layer)
        k, st, nk = p["kernel_size"], p["stride"], p["kernel_depth"]
        pd = 0 if p["padding"] == "none" else p["padding"][0]
        oh, ow = (h - 1) * st - 2 * pd + k, (w - 1) * st - 2 * pd + k
        if oh < 1 or ow < 1:
            raise _fail(H_ERR_DL_LAYER_INPUT, layer, f"padding {pd} leaves no output")
        b.out[id(layer)] = b.node(layer, layer.name, "deconv", [x], (nk, oh, ow),
                                  out_channels=nk, kernel=k, stride=st, pad=pd,
                                  bias=p["bias_term"] == "true")
        return
    if t == "zoom_factor":
        x, (c, h, w) = b.spatial_input(layer)
        f = int(p["scale_width"])
        op = "upsample_nearest" if p["interpolation"] == "nearest_neighbor" else \
            "upsample_bilinear"
        b.out[id(layer)] = b.node(layer, layer.name, op, [x], (c, h * f, w * f), scale=f)
        return
    if t == "batchnorm":
        x, shp = b.spatial_input(layer)
        y = b.node(layer, layer.name, "bn", [x], shp, eps=p["epsilon"])
        b.out[id(layer)] = b.activation(layer, y, p["activation"])
        return
    if t == "activation":
        x, shp = b.src(layer, 0)
        op = p["activation_type"]
        if op == "relu" and p.get("upper_bound") == 6.0:
            op = "relu6"
        b.out[id(layer)] = b.node(layer, layer.name, op, [x], shp)
        return
    if t == "reshape":
        x, shp = b.src(layer, 0)
        c, h, w = shp if len(shp) == 3 else (shp[0], 1, 1)
        ws, hs, ds = layer.params["shape"][:3]
        dims = [w if ws == 0 else ws, h if hs == 0 else hs, c if ds == 0 else ds]
        total = c * h * w
        if -1 in dims:
            known = int(np.prod([d for d in dims if d != -1]))
            if known == 0 or total % known:
                raise _fail(H_ERR_DL_LAYER_INPUT, layer, f"cannot infer -1 in {dims}: the input "
                                                         f"has {total} values per sample")
            dims[dims.index(-1)] = total // known
        if int(np.prod(dims)) != total:
            raise _fail(H_ERR_DL_LAYER_INPUT, layer,
                        f"the shape {dims} (width, height, depth) holds {int(np.prod(dims))} "
                        f"values, its input {w}x{h}x{c} has {total}")
        ow, oh, oc = dims
        b.out[id(layer)] = b.node(layer, layer.name, "reshape", [x], (oc, oh, ow), channels=oc,
                                  height=oh, width=ow)
        return
    if t == "permutation":
        x, shp = b.spatial_input(layer)
        hal = layer.params["permutation"]           # over (width, height, depth, batch)
        to_eng = {0: 2, 1: 1, 2: 0}                 # HALCON axis -> engine (C, H, W) axis
        eng_axis_hal = {0: 2, 1: 1, 2: 0}           # engine output axis -> HALCON axis
        perm = [to_eng[hal[eng_axis_hal[e]]] for e in range(3)]
        oshape = tuple(shp[p] for p in perm)
        attrs = {"perm": perm}
        if perm[0] != 0:
            attrs["channels"] = oshape[0]
        b.out[id(layer)] = b.node(layer, layer.name, "permute", [x], oshape, **attrs)
        return
    if t == "depth_max":
        x, (c, h, w) = b.spatial_input(layer)
        b.out[id(layer)] = b.node(layer, layer.name, "depth_max", [x], (1, h, w),
                                  argmax=p["depth_max_mode"] == "argmax")
        return
    if t == "matmul":
        xa, (ca, ha_, wa) = b.spatial_input(layer, 0)
        xb, (cb, hb, wb) = b.spatial_input(layer, 1)
        ta, tb = p["transpose_a"] == "true", p["transpose_b"] == "true"
        m, ka = (wa, ha_) if ta else (ha_, wa)
        kb, n = (wb, hb) if tb else (hb, wb)
        if ca != cb:
            raise _fail(H_ERR_DL_LAYER_INPUT, layer, f"its inputs differ in depth ({ca} and {cb})")
        if ka != kb:
            raise _fail(H_ERR_DL_LAYER_INPUT, layer,
                        f"op(A) is {m}x{ka} (height x width), op(B) is {kb}x{n}: A's width "
                        f"must equal B's height")
        b.out[id(layer)] = b.node(layer, layer.name, "matmul", [xa, xb], (ca, m, n),
                                  trans_a=ta, trans_b=tb)
        return
    if t == "reduce":
        x, (c, h, w) = b.spatial_input(layer)
        eng = sorted(_HAL_TO_ENGINE_AXIS[a] for a in p["axes"])
        shp = (1 if 1 in eng else c, 1 if 2 in eng else h, 1 if 3 in eng else w)
        b.out[id(layer)] = b.node(layer, layer.name, "reduce", [x], shp,
                                  mode=_REDUCE_OPS[p["operation"]], axes=eng)
        return
    if t == "lrn":
        x, shp = b.spatial_input(layer)
        b.out[id(layer)] = b.node(layer, layer.name, "lrn", [x], shp, size=p["local_size"],
                                  alpha=p["alpha"], beta=p["beta"], k=p["k"])
        return
    if t in ("zoom_size", "zoom_to_layer_size"):
        x, (c, h, w) = b.spatial_input(layer)
        if t == "zoom_size":
            oh, ow = p["height"], p["width"]
        else:
            _, rs = b.spatial_input(layer, 1)
            oh, ow = rs[1], rs[2]
        op = "resize_nearest" if p["interpolation"] == "nearest_neighbor" else "resize_bilinear"
        b.out[id(layer)] = b.node(layer, layer.name, op, [x], (c, oh, ow), height=oh, width=ow)
        return
    if t == "depth_to_space":
        x, (c, h, w) = b.spatial_input(layer)
        bs = p["block_size"]
        if c % (bs * bs):
            raise _fail(H_ERR_DL_LAYER_INPUT, layer, f"the input depth {c} is not a multiple of "
                                                     f"block_size^2 = {bs * bs}")
        b.out[id(layer)] = b.node(layer, layer.name, "depth_to_space", [x],
                                  (c // (bs * bs), h * bs, w * bs), block_size=bs,
                                  crd=_D2S_MODES[p["mode"]])
        return
    if t == "pooling":
        x, (c, h, w) = b.spatial_input(layer)
        if p["mode"] == "global_average":
            b.out[id(layer)] = b.node(layer, layer.name, "gap", [x], (c, 1, 1))
            return
        kh, kw = _pair(p["kernel_size"])
        sh, sw = _pair(p["stride"])
        ph, pw = _pad_hw(p["padding"], [kh, kw])
        if 2 * ph > kh or 2 * pw > kw:
            raise _fail(H_ERR_DL_LAYER_PARAM, layer, f"padding ({pw}, {ph}) exceeds half the "
                                                     f"kernel ({kw}x{kh})")
        oh, ow = _spatial(h, kh, sh, ph, 1), _spatial(w, kw, sw, pw, 1)
        if oh < 1 or ow < 1:
            raise _fail(H_ERR_DL_LAYER_INPUT, layer, f"the input ({w}x{h}) is smaller than the "
                                                     f"kernel ({kw}x{kh})")
        op = "maxpool" if p["mode"] == "maximum" else "avgpool"
        b.out[id(layer)] = b.node(layer, layer.name, op, [x], (c, oh, ow), kernel=[kh, kw],
                                  stride=[sh, sw], pad=[ph, pw])
        return
    if t == "dense":
        x, shp = b.src(layer, 0)
        feats = int(np.prod(shp))
        attrs: dict = {"out_features": p["num_out"], "bias": p["bias_term"] == "true"}
        if feats != shp[0]:
            attrs["in_features"] = feats  # flattened (C, H, W): the image size is fixed
        b.out[id(layer)] = b.node(layer, layer.name, "fc", [x], (p["num_out"],), **attrs)
        return
    if t == "dropout":
        x, shp = b.src(layer, 0)
        b.out[id(layer)] = b.node(layer, layer.name, "dropout", [x], shp, p=p["probability"])
        return
    if t == "softmax":
        x, shp = b.src(layer, 0)
        if len(shp) != 3 and len(shp) != 1:
            raise _fail(H_ERR_DL_LAYER_INPUT, layer, f"cannot take shape {shp}")
        b.out[id(layer)] = b.node(layer, layer.name, "softmax", [x], shp)
        return
    if t == "concat":
        srcs = [b.spatial_input(layer, i) for i in range(len(layer.inputs))]
        hw = {s[1][1:] for s in srcs}
        if len(hw) != 1:
            raise _fail(H_ERR_DL_LAYER_INPUT, layer,
                        "its inputs differ in width/height: " + ", ".join(
                            f"{layer.inputs[i].name!r} {s[1][2]}x{s[1][1]}"
                            for i, s in enumerate(srcs)))
        c = sum(s[1][0] for s in srcs)
        h, w = next(iter(hw))
        b.out[id(layer)] = b.node(layer, layer.name, "concat", [s[0] for s in srcs], (c, h, w))
        return
    if t == "elementwise":
        srcs = [b.src(layer, i) for i in range(len(layer.inputs))]
        shapes = {s[1] for s in srcs}
        if len(shapes) != 1:
            raise _fail(H_ERR_DL_LAYER_INPUT, layer,
                        "its inputs differ in shape: " + ", ".join(
                            f"{layer.inputs[i].name!r} {s[1]}" for i, s in enumerate(srcs)))
        shp = srcs[0][1]
        acc = srcs[0][0]
        for i in range(1, len(srcs)):  # the engine adds two tensors: a chain for more
            last = i == len(srcs) - 1
            acc = b.node(layer, layer.name if last else f"{layer.name}/sum{i}", "add",
                         [acc, srcs[i][0]], shp)
        b.out[id(layer)] = acc
        return
    raise _fail(H_ERR_DL_GRAPH, layer, "this layer type cannot be part of the data path")


def _is_image(layer: DLLayer) -> bool:
    """The image input: an input layer that is not a label input ('image'; a copy of a zoo
    model's first layer keeps the zoo's name 'input')."""
    return layer.type == "input" and layer.name not in LABEL_INPUTS


def _layer_record(layer: DLLayer) -> dict:
    return {"name": layer.name, "type": layer.type,
            "inputs": [x.name for x in layer.inputs], "params": copy.deepcopy(layer.params)}


def build_spec(output_layers: list[DLLayer]) -> dict:
    """The engine spec and the model description of a layer graph (raises 7731-7733 naming
    the layer).  Returns {'spec', 'type', 'num_classes', 'image': (w, h, c), 'extra',
    'momentum', 'fixed_size', 'weights'}."""
    layers = _collect(output_layers)
    loss = [x for x in layers if x.type == "loss_cross_entropy"]
    if len(loss) > 1:
        raise _fail(H_ERR_DL_GRAPH, loss[1], "halcdl's engine trains one loss per network")
    for x in layers:
        if x.type == "loss_cross_entropy" and x not in output_layers:
            raise _fail(H_ERR_DL_GRAPH, x, "a loss layer must be an output layer")
    images = [x for x in layers if _is_image(x)]
    if len(images) > 1:
        raise _fail(H_ERR_DL_GRAPH, images[1], "the network has two image input layers")
    if not images:
        raise HOperatorError(H_ERR_DL_LAYER_INPUT, "the network has no input layer named "
                                                   "'image'")
    # the layer whose output are the class scores
    data_outputs = [x for x in output_layers if x.type != "loss_cross_entropy"]
    head = None
    if loss:
        sm = loss[0].inputs[0]
        if sm.type != "softmax":
            raise _fail(H_ERR_DL_LAYER_INPUT, loss[0], f"its input must be a softmax layer, "
                                                       f"got {sm.name!r} ({sm.type})")
        tgt = loss[0].inputs[1]
        if tgt.type != "input" or tgt.name not in ("image_label_id", "segmentation_image"):
            raise _fail(H_ERR_DL_LAYER_INPUT, loss[0],
                        f"its target must be the input layer 'image_label_id' or "
                        f"'segmentation_image', got {tgt.name!r} ({tgt.type})")
        if len(loss[0].inputs) > 2:
            wl = loss[0].inputs[2]
            if wl.type != "input" or wl.name != "weight_image":
                raise _fail(H_ERR_DL_LAYER_INPUT, loss[0],
                            f"its weights must be the input layer 'weight_image', got "
                            f"{wl.name!r} ({wl.type})")
        head = sm
    for x in data_outputs:
        if x is head:
            continue
        if head is None and x.type == "softmax":
            head = x
            continue
        raise _fail(H_ERR_DL_GRAPH, x, "halcdl's engine has one output: the softmax layer "
                                       "(and its loss); other output layers are not supported")
    if head is None:
        raise HOperatorError(H_ERR_DL_GRAPH, "the output layers must be a softmax layer or a "
                                             "loss_cross_entropy layer fed by one")
    if not head.inputs:
        raise _fail(H_ERR_DL_LAYER_INPUT, head, "has no input")
    b = _Builder()
    image = images[0]
    _emit(b, image)
    scores_layer = head.inputs[0]
    data = _collect([scores_layer])
    for x in data:
        if x is image:
            continue
        if x.type == "input":
            raise _fail(H_ERR_DL_LAYER_INPUT, x, "a label input cannot feed the network's "
                                                 "layers")
        if x.type in ("loss_cross_entropy",):
            raise _fail(H_ERR_DL_GRAPH, x, "a loss cannot feed another layer")
        _emit(b, x)
    scores = b.out.get(id(scores_layer))
    if scores is None or b.nodes[-1]["name"] != scores:
        raise _fail(H_ERR_DL_LAYER_INPUT, head, "its input produces no class scores")
    # every layer that is not an engine node but part of the model
    if id(image) not in {id(x) for x in data}:
        raise _fail(H_ERR_DL_LAYER_INPUT, head, "the class scores do not depend on the input "
                                                "layer 'image'")
    # the layers of the model that are no engine nodes (kept for introspection and copies)
    extra = [_layer_record(x) for x in layers
             if x is head or x.type in ("loss_cross_entropy", "identity")
             or (x.type == "input" and not _is_image(x))]
    shp = b.shape[scores]
    k = shp[0]
    w, h, c = image.params["shape"]
    target = loss[0].inputs[1].name if loss else None
    if target == "segmentation_image" or (target is None and len(shp) == 3 and shp[1:] != (1, 1)):
        if len(shp) != 3 or shp[1:] != (h, w):
            raise _fail(H_ERR_DL_LAYER_INPUT, head,
                        f"a segmentation network needs one score per pixel ({w}x{h}), its "
                        f"input gives {shp}")
        kind = "segmentation"
    else:
        if len(shp) == 3 and shp[1:] != (1, 1):
            raise _fail(H_ERR_DL_LAYER_INPUT, head,
                        f"a classification network needs one score per class (depth x 1 x "
                        f"1), its input gives {shp[0]}x{shp[1]}x{shp[2]}")
        kind = "classification"
    momenta = {x.params["momentum"] for x in layers if x.type == "batchnorm"} - {"auto"}
    if len(momenta) > 1:
        bn = next(x for x in layers if x.type == "batchnorm" and x.params["momentum"] != "auto")
        raise _fail(H_ERR_DL_LAYER_PARAM, bn, f"the batch normalizations have different "
                                              f"momenta {sorted(momenta)}; the engine has one")
    weights = {}
    for x in layers:
        for role, arr in x.weights.items():
            weights[f"{x.name}.{role}"] = arr
    spec = b.nodes
    spec[0]["comment"] = {"halcon_layers": extra}
    return {"spec": spec, "type": kind, "num_classes": int(k), "image": (w, h, c),
            "extra": extra, "momentum": next(iter(momenta)) if momenta else None,
            "fixed_size": any("in_features" in n or n["op"] in ("reshape", "matmul")
                              or (n["op"] == "permute" and n["perm"][0] != 0) for n in spec),
            "weights": weights,
            "trainable": bool(loss)}


@operator
def create_dl_model(output_layers: Any) -> DLModel:
    """A model from the graph below ``output_layers`` (a loss_cross_entropy layer for a
    trainable model, or its softmax layer for inference only).  The model's 'type' is what
    the loss implies ('classification' for the target 'image_label_id', 'segmentation' for
    'segmentation_image'; a softmax output: classification if it gives depth x 1 x 1).
    Weights are initialised as the zoo's (seeded by set_system('seed_rand')); layers copied
    with get_dl_model_layer bring their weights.  Errors name the layer: 7731 invalid layer
    parameters, 7732 inputs that do not fit (shapes, missing), 7733 an invalid graph
    (cycle, duplicate names, unsupported outputs)."""
    outs = _layers(output_layers, 1, "output_layers", 1)
    d = build_spec(outs)
    w, h, c = d["image"]
    arch = spec_architecture("create_dl_model", d["spec"], d["num_classes"],
                             "network built with the layer API (create_dl_layer_*)",
                             image_width=int(w), image_height=int(h),
                             image_num_channels=int(c), fixed_size=bool(d["fixed_size"]),
                             min_size=1, model_type=d["type"])
    try:
        m = DLModel(arch, next_model_seed())
    except HOperatorError as err:  # the engine's own checks (should not happen after ours)
        raise HOperatorError(H_ERR_DL_LAYER_INPUT, f"the network does not fit: {err.message}") \
            from None
    try:
        m.core.output_shape(int(h), int(w))
    except HOperatorError as err:
        raise HOperatorError(H_ERR_DL_LAYER_INPUT, f"the network does not fit its input "
                                                   f"{w}x{h}: {err.message}") from None
    for pname, arr in d["weights"].items():
        if pname in set(m.core.param_names()):
            m.core.set_param(pname, np.asarray(arr, dtype=np.float32))
    m.params["meta_data"] = {"architecture": "create_dl_model", "pretrained": "false",
                             "weights": "initialised by the engine (Kaiming normal, fan_out) "
                                        "unless copied with the layers"}
    if d["momentum"] is not None:
        m.params["batchnorm_momentum"] = float(1.0 - d["momentum"])
        m.mark_hparams_dirty()
    m.params["image_range_min"] = -127.0
    m.params["image_range_max"] = 128.0
    return m


def extra_layers(m: DLModel) -> list[dict]:
    """The softmax, loss, identity and label-input layers of a layer-API model."""
    c = m.spec[0].get("comment")
    return list(c.get("halcon_layers", [])) if isinstance(c, dict) else []


def replace_build(m: DLModel, spec: list) -> None:
    """After an edit of ``m.spec`` (set_dl_model_layer_param): rebuilds follow the new spec."""
    from ..io.arch import SavedBuild, SpecBuild  # noqa: PLC0415

    k, ch = m.num_classes, int(spec[0]["channels"])
    m.arch = dataclasses.replace(m.arch, build=SavedBuild(spec, k, ch, SpecBuild(spec, k), None))

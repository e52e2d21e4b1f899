"""Every op of the engine, forward and backward, against PyTorch (CPU).

`core.run_op(node, inputs, params, grad_output, training)` (docs/internals.md) builds a
one-op graph in the engine and runs it; the same computation is done by torch in float64
from the same float32 inputs, so the reference carries (almost) no rounding error of its
own and the tolerances measure halcdl's float32 error only.

Tolerances (one rule, helpers.assert_close: |a - e| <= atol + rtol*|e|), inputs ~ N(0, 1),
weights ~ N(0, 1/fan_in) so that every tensor is O(1):
  forward  atol 1e-5, rtol 1e-4
  backward atol 1e-4, rtol 1e-4 (gradients of weights sum over N*H*W terms)
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import assert_close

from halcdl._native import core

FWD = dict(atol=1e-5, rtol=1e-4)
BWD = dict(atol=1e-4, rtol=1e-4)


def make_node(op: str, n_inputs: int = 1, **attrs) -> dict:
    """A spec node as run_op takes it (inputs named in0, in1, ...)."""
    return {"name": "op", "op": op, "inputs": [f"in{i}" for i in range(n_inputs)], **attrs}


def _pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


def check_op(node, inputs, params, torch_fn, training=True, backward=True,
             fwd=FWD, bwd=BWD, grad_output=None, rng=None):
    """Run `node` in halcdl and `torch_fn(inputs, params)` in torch (float64); compare the
    output, the input gradients and the parameter gradients."""
    rng = rng or np.random.default_rng(1)
    # run_op takes NCHW arrays: a 2-D (N, C) tensor is given as (N, C, 1, 1) to both sides
    inputs = [np.ascontiguousarray(x.reshape(x.shape + (1, 1)) if x.ndim == 2 else x,
                                   dtype=np.float32) for x in inputs]
    params = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}

    t_in = [torch.tensor(x, dtype=torch.float64, requires_grad=backward) for x in inputs]
    t_par = {k: torch.tensor(v, dtype=torch.float64,
                             requires_grad=backward and k not in ("running_mean", "running_var"))
             for k, v in params.items()}
    t_out = torch_fn(t_in, t_par)
    if backward and grad_output is None:
        grad_output = rng.standard_normal(tuple(t_out.shape)).astype(np.float32)

    out, g_in, g_par = core.run_op(node, inputs, params,
                                   grad_output if backward else None, training)
    what = f"{node['op']} {({k: v for k, v in node.items() if k not in ('name', 'op', 'inputs')})}"
    assert_close(np.asarray(out), t_out, what=f"{what} forward", **fwd)
    if not backward:
        return out, g_in, g_par
    t_out.backward(torch.tensor(grad_output, dtype=torch.float64))
    assert len(g_in) == len(inputs), f"{what}: {len(g_in)} input grads for {len(inputs)} inputs"
    for i, (g, t) in enumerate(zip(g_in, t_in)):
        assert_close(np.asarray(g), t.grad, what=f"{what} d/d input{i}", **bwd)
    for k, t in t_par.items():
        if not t.requires_grad:
            continue
        assert k in g_par, f"{what}: no gradient for param {k!r} (got {sorted(g_par)})"
        assert_close(np.asarray(g_par[k]), t.grad, what=f"{what} d/d {k}", **bwd)
    return out, g_in, g_par


def randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ---------------------------------------------------------------------------------------
# convolution
# (N, C, H, W, out, kernel, stride, pad, dilation, groups, bias)
CONV_CASES = [
    (2, 3, 9, 9, 4, 3, 1, 1, 1, 1, True),               # plain 3x3 'same'
    (2, 4, 10, 11, 6, 3, 2, 0, 1, 1, False),            # stride 2, no pad, no bias, W != H
    (1, 4, 12, 13, 8, [3, 5], [2, 1], [1, 2], 1, 2, True),  # rect kernel/stride/pad, groups 2
    (2, 8, 8, 8, 8, 3, 1, 1, 1, 8, True),               # depthwise
    (2, 8, 9, 9, 16, 3, 2, 1, 1, 8, False),             # depthwise x2 multiplier, stride 2
    (2, 3, 11, 11, 5, 3, 1, 2, 2, 1, True),             # dilation 2
    (2, 8, 7, 7, 16, 1, 2, 0, 1, 1, False),             # 1x1 stride 2 (resnet shortcut)
    (1, 3, 16, 16, 8, 7, 2, 3, 1, 1, False),            # 7x7 stride 2 pad 3 (resnet stem)
    (3, 5, 6, 6, 7, 1, 1, 0, 1, 1, True),               # 1x1
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:4])) +
                         f"-o{c[4]}-k{c[5]}-s{c[6]}-p{c[7]}-d{c[8]}-g{c[9]}-b{int(c[10])}")
def test_conv(case):
    n, c, h, w, o, k, s, p, d, g, bias = case
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    kh, kw = _pair(k)
    x = randn(rng, n, c, h, w)
    params = {"weight": randn(rng, o, c // g, kh, kw, scale=(1.0 / (c // g * kh * kw)) ** 0.5)}
    if bias:
        params["bias"] = randn(rng, o)
    node = make_node("conv", out_channels=o, kernel=k, stride=s, pad=p, dilation=d,
                     groups=g, bias=bias)

    def ref(t, q):
        return F.conv2d(t[0], q["weight"], q.get("bias"), stride=_pair(s), padding=_pair(p),
                        dilation=_pair(d), groups=g)
    check_op(node, [x], params, ref, rng=rng)


# ---------------------------------------------------------------------------------------
# batch normalisation
BN_SHAPES = [(4, 5, 6, 7), (2, 16, 3, 3), (8, 3, 1, 1), (3, 6, 10, 4)]


@pytest.mark.parametrize("shape", BN_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bn_training(shape):
    """Training mode: batch statistics (biased variance), gradients through the stats."""
    rng = np.random.default_rng(sum(shape))
    c = shape[1]
    x = randn(rng, *shape) * 2.0 + 0.5
    params = {"scale": randn(rng, c) + 1.0, "shift": randn(rng, c),
              "running_mean": randn(rng, c), "running_var": np.abs(randn(rng, c)) + 0.5}
    node = make_node("bn", eps=1e-5)

    def ref(t, q):
        return F.batch_norm(t[0], None, None, q["scale"], q["shift"], training=True, eps=1e-5)
    _, _, g_par = check_op(node, [x], params, ref, training=True, rng=rng)
    # the batch statistics the running statistics are updated from (biased variance)
    x64 = x.astype(np.float64)
    if "batch_mean" in g_par:
        assert_close(np.asarray(g_par["batch_mean"]), x64.mean(axis=(0, 2, 3)),
                     what="bn batch mean", **FWD)
        assert_close(np.asarray(g_par["batch_var"]), x64.var(axis=(0, 2, 3)),
                     what="bn batch variance (biased)", **FWD)


@pytest.mark.parametrize("shape", BN_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bn_inference(shape):
    """Inference: normalised with the running statistics given as params."""
    rng = np.random.default_rng(7 + sum(shape))
    c = shape[1]
    x = randn(rng, *shape) * 2.0 + 0.5
    params = {"scale": randn(rng, c) + 1.0, "shift": randn(rng, c),
              "running_mean": randn(rng, c), "running_var": np.abs(randn(rng, c)) + 0.5}
    node = make_node("bn", eps=1e-3)

    def ref(t, q):
        return F.batch_norm(t[0], q["running_mean"], q["running_var"], q["scale"], q["shift"],
                            training=False, eps=1e-3)
    check_op(node, [x], params, ref, training=False, backward=False)


# ---------------------------------------------------------------------------------------
# activations
@pytest.mark.parametrize("op,fn", [("relu", F.relu), ("relu6", F.relu6)])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (4, 10)], ids=lambda s: "x".join(map(str, s)))
def test_activation(op, fn, shape):
    rng = np.random.default_rng(3)
    x = randn(rng, *shape, scale=5.0)           # covers < 0, (0, 6) and > 6
    check_op(make_node(op), [x], {}, lambda t, q: fn(t[0]), rng=rng)


# ---------------------------------------------------------------------------------------
# pooling
POOL_CASES = [  # (N, C, H, W, kernel, stride, pad)
    (2, 3, 8, 8, 2, 2, 0),
    (2, 4, 9, 11, 3, 2, 1),          # resnet stem pool on odd sizes
    (1, 2, 7, 7, 3, 1, 1),           # overlapping windows
    (2, 3, 10, 9, [2, 3], [2, 1], [1, 0]),
    (3, 2, 5, 5, 3, 3, 0),           # floor: last row/col dropped
]


def _pool_id(c):
    return "x".join(map(str, c[:4])) + f"-k{c[4]}-s{c[5]}-p{c[6]}"


@pytest.mark.parametrize("case", POOL_CASES, ids=_pool_id)
def test_maxpool(case):
    n, c, h, w, k, s, p = case
    rng = np.random.default_rng(11)
    x = randn(rng, n, c, h, w)  # continuous values: no ties
    node = make_node("maxpool", kernel=k, stride=s, pad=p)
    check_op(node, [x], {}, lambda t, q: F.max_pool2d(t[0], _pair(k), _pair(s), _pair(p)),
             rng=rng)


@pytest.mark.parametrize("case", POOL_CASES, ids=_pool_id)
def test_avgpool(case):
    n, c, h, w, k, s, p = case
    rng = np.random.default_rng(12)
    x = randn(rng, n, c, h, w)
    node = make_node("avgpool", kernel=k, stride=s, pad=p)
    check_op(node, [x], {},
             lambda t, q: F.avg_pool2d(t[0], _pair(k), _pair(s), _pair(p),
                                       count_include_pad=False), rng=rng)


def test_maxpool_stride_defaults_to_kernel():
    rng = np.random.default_rng(13)
    x = randn(rng, 2, 3, 6, 6)
    check_op(make_node("maxpool", kernel=2), [x], {},
             lambda t, q: F.max_pool2d(t[0], 2, 2), rng=rng)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (4, 16, 1, 1), (1, 8, 14, 14)],
                         ids=lambda s: "x".join(map(str, s)))
def test_gap(shape):
    rng = np.random.default_rng(14)
    x = randn(rng, *shape)
    check_op(make_node("gap"), [x], {}, lambda t, q: t[0].mean(dim=(2, 3), keepdim=True),
             rng=rng)


# ---------------------------------------------------------------------------------------
# fully connected
@pytest.mark.parametrize("in_shape,out,bias", [
    ((4, 10), 3, True),          # 2-D input, given to run_op as (4, 10, 1, 1)
    ((3, 17), 5, False),
    ((2, 3, 4, 5), 6, True),     # 4-D input flattened in C,H,W order
    ((2, 8, 1, 1), 4, True),     # after global average pooling
    ((2, 2, 3, 3), 7, False),
], ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_fc(in_shape, out, bias):
    rng = np.random.default_rng(15)
    fan_in = int(np.prod(in_shape[1:]))
    x = randn(rng, *in_shape)
    params = {"weight": randn(rng, out, fan_in, scale=fan_in ** -0.5)}
    if bias:
        params["bias"] = randn(rng, out)
    node = make_node("fc", out_features=out, bias=bias, in_features=fan_in)
    check_op(node, [x], params,
             lambda t, q: F.linear(t[0].flatten(1), q["weight"], q.get("bias")), rng=rng)


# ---------------------------------------------------------------------------------------
# add, concat
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 7)], ids=lambda s: "x".join(map(str, s)))
def test_add(shape):
    rng = np.random.default_rng(16)
    a, b = randn(rng, *shape), randn(rng, *shape)
    check_op(make_node("add", 2), [a, b], {}, lambda t, q: t[0] + t[1], rng=rng)


@pytest.mark.parametrize("channels", [(3, 5), (2, 4, 1), (8, 8)],
                         ids=lambda c: "+".join(map(str, c)))
def test_concat(channels):
    rng = np.random.default_rng(17)
    xs = [randn(rng, 2, c, 4, 3) for c in channels]
    check_op(make_node("concat", len(xs)), xs, {}, lambda t, q: torch.cat(t, dim=1), rng=rng)


# ---------------------------------------------------------------------------------------
# dropout: the engine's mask is random, so it is returned and the check uses it
def _mask_scale(mask: np.ndarray, p: float) -> float:
    """The mask is either 0/1 (then the kept values are scaled by 1/(1-p)) or already
    0/(1/(1-p)). Return the factor that turns the mask into the multiplier."""
    kept = np.unique(mask[mask != 0])
    assert kept.size == 1, f"dropout mask is not binary: values {np.unique(mask)[:8]}"
    if abs(kept[0] - 1.0) < 1e-6:
        return 1.0 / (1.0 - p)
    assert abs(kept[0] - 1.0 / (1.0 - p)) < 1e-5 * kept[0], \
        f"dropout mask keeps {kept[0]}, expected 1 or 1/(1-p) = {1 / (1 - p)}"
    return 1.0


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_dropout_training(p):
    rng = np.random.default_rng(18)
    x = randn(rng, 4, 8, 16, 16)
    g = randn(rng, *x.shape)
    node = make_node("dropout", p=p)
    out, g_in, g_par = core.run_op(node, [x], {}, g, True)
    assert "mask" in g_par, f"dropout in training must return its mask (got {sorted(g_par)})"
    mask = np.asarray(g_par["mask"], dtype=np.float64).reshape(x.shape)
    mult = mask * _mask_scale(mask, p)
    dropped = float((mask == 0).mean())
    # 8192 Bernoulli draws: the std of the dropped fraction is < 0.006
    assert abs(dropped - p) < 0.03, f"dropout p={p}: dropped fraction {dropped:.4f}"
    assert_close(np.asarray(out), x.astype(np.float64) * mult, what=f"dropout p={p} forward",
                 **FWD)
    assert_close(np.asarray(g_in[0]), g.astype(np.float64) * mult,
                 what=f"dropout p={p} backward", **BWD)


def test_dropout_inference_is_identity():
    rng = np.random.default_rng(20)
    x = randn(rng, 3, 5, 4, 4)
    check_op(make_node("dropout", p=0.5), [x], {}, lambda t, q: t[0] * 1.0, training=False,
             backward=False)


# ---------------------------------------------------------------------------------------
# softmax over channels
@pytest.mark.parametrize("shape", [(4, 10), (2, 5, 3, 3), (3, 7, 1, 1)],
                         ids=lambda s: "x".join(map(str, s)))
def test_softmax(shape):
    rng = np.random.default_rng(21)
    x = randn(rng, *shape, scale=3.0)
    check_op(make_node("softmax"), [x], {}, lambda t, q: F.softmax(t[0], dim=1), rng=rng)


@pytest.mark.parametrize("training", [True, False])
def test_softmax_large_logits_stable(training):
    x = np.array([[1000.0, 0.0, -1000.0], [88.0, 89.0, 90.0]], dtype=np.float32)
    check_op(make_node("softmax"), [x], {}, lambda t, q: F.softmax(t[0], dim=1),
             training=training, backward=training)


# ---------------------------------------------------------------------------------------
# run_op's contract: forward alone (no grad_output) works in training mode for every op
@pytest.mark.parametrize("op,attrs", [("relu", {}), ("relu6", {}), ("softmax", {}),
                                      ("dropout", {"p": 0.5}), ("gap", {}),
                                      ("maxpool", {"kernel": 2})], ids=lambda v: str(v))
def test_forward_only_in_training_mode(op, attrs):
    x = randn(np.random.default_rng(22), 2, 3, 4, 4)
    out, g_in, _ = core.run_op(make_node(op, **attrs), [x], {}, None, True)
    assert np.asarray(out).shape[0] == 2 and len(g_in) == 0


# ---------------------------------------------------------------------------------------
# the twin itself: a one-node spec through TorchTwin equals the direct torch call
def test_torch_twin_matches_functional():
    from torch_twin import TorchTwin
    spec = [{"name": "data", "op": "input", "inputs": [], "channels": 3},
            {"name": "c", "op": "conv", "inputs": ["data"], "out_channels": 4, "kernel": 3,
             "pad": 1, "bias": False},
            {"name": "b", "op": "bn", "inputs": ["c"]},
            {"name": "r", "op": "relu", "inputs": ["b"]},
            {"name": "g", "op": "gap", "inputs": ["r"]},
            {"name": "f", "op": "fc", "inputs": ["g"], "out_features": 2}]
    twin = TorchTwin(spec, image_hw=(5, 5))
    assert sorted(twin.names) == sorted(["c.weight", "b.scale", "b.shift", "b.running_mean",
                                         "b.running_var", "f.weight", "f.bias"])
    assert tuple(twin.tensor("f.weight").shape) == (2, 4)
    assert twin(torch.zeros(2, 3, 5, 5)).shape == (2, 2)

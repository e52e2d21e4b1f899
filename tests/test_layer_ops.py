"""The engine ops added for the layer API (docs/layers.md): sigmoid, tanh, depth_to_space,
resize_nearest / resize_bilinear, reshape, permute, depth_max, lrn, reduce, matmul
(create_dl_layer_activation 'sigmoid'/'tanh', create_dl_layer_depth_to_space,
create_dl_layer_zoom_size, create_dl_layer_zoom_to_layer_size, create_dl_layer_reshape,
create_dl_layer_permutation, create_dl_layer_depth_max, create_dl_layer_lrn,
create_dl_layer_reduce, create_dl_layer_matmul).

- every op (and reshape, permute) forward and backward against PyTorch (float64) through
  core.run_op;
- a segmentation network of these ops trained 5 SGD / Adam steps: losses and every parameter
  against a PyTorch twin trained by hand (tests/test_segmentation.py's golden run), which
  checks the backward path end to end (with oneDNN's blocked layouts between the ops);
- the layer API: shapes, PyTorch outputs, introspection, bad input.
The GPU twins: tests/test_gpu.py (OP_CASES) and tests/test_cuda_kernels_emulated.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import assert_close
from test_ops import check_op, make_node, randn
from test_segmentation import IGNORE, S_BATCH, S_IDS, S_MULT, S_STEPS, S_WEIGHTS, SC, SH, SW, \
    seg_batches, seg_reference_run
from test_training_golden import BN_MOMENTUM, HPARAMS, LOSS_TOL, PARAM_TOL, _scalar
from torch_twin import TorchTwin, depth_to_space

import halcdl as ha
from halcdl import errors
from halcdl._native import core

pytestmark = pytest.mark.filterwarnings("ignore::halcdl.NotPretrainedWarning")


# ---- ops against PyTorch ------------------------------------------------------------------
@pytest.mark.parametrize("op", ["sigmoid", "tanh"])
def test_sigmoid_tanh(op):
    rng = np.random.default_rng(1)
    x = randn(rng, 2, 3, 5, 7, scale=3.0)
    x[0, 0, 0, :4] = [-40.0, 40.0, 0.0, -1e-8]  # saturation and zero
    fn = torch.sigmoid if op == "sigmoid" else torch.tanh
    check_op(make_node(op), [x], {}, lambda t, _: fn(t[0]), rng=rng)
    # inference (no backward primitive) gives the same forward
    out, _, _ = core.run_op(make_node(op), [x], {}, None, False)
    assert_close(np.asarray(out), fn(torch.from_numpy(x)).numpy(), atol=1e-6, rtol=1e-5,
                 what=f"{op} inference")


D2S_CASES = [(2, True, (2, 8, 3, 4)), (2, False, (2, 8, 3, 4)), (3, True, (1, 18, 2, 3)),
             (3, False, (1, 18, 2, 3)), (1, True, (2, 3, 2, 2)), (2, False, (1, 4, 1, 1))]


@pytest.mark.parametrize("block, crd, shape", D2S_CASES)
def test_depth_to_space(block, crd, shape):
    rng = np.random.default_rng(block * 10 + crd)
    x = randn(rng, *shape)
    out, _, _ = check_op(make_node("depth_to_space", block_size=block, crd=crd), [x], {},
                         lambda t, _: depth_to_space(t[0], block, crd), rng=rng,
                         fwd=dict(atol=0, rtol=0), bwd=dict(atol=0, rtol=0))
    n, c, h, w = shape
    assert np.asarray(out).shape == (n, c // block ** 2, h * block, w * block)


def test_depth_to_space_dcr_is_onnx_order():
    # ONNX's DCR example: channel k = (i·b + j)·C + c lands at block offset (i, j), channel c
    x = np.arange(2 * 2 * 2 * 1 * 1, dtype=np.float32).reshape(1, 8, 1, 1)
    out, _, _ = core.run_op(make_node("depth_to_space", block_size=2, crd=False), [x], {}, None,
                            False)
    y = np.asarray(out)
    assert y.shape == (1, 2, 2, 2)
    np.testing.assert_array_equal(y[0, 0], [[0, 2], [4, 6]])
    np.testing.assert_array_equal(y[0, 1], [[1, 3], [5, 7]])
    out, _, _ = core.run_op(make_node("depth_to_space", block_size=2, crd=True), [x], {}, None,
                            False)
    np.testing.assert_array_equal(np.asarray(out)[0, 0], [[0, 1], [2, 3]])


RESIZE_CASES = [((4, 5), (7, 9)), ((6, 6), (4, 3)), ((3, 4), (3, 4)), ((1, 1), (3, 2)),
                ((5, 7), (10, 14)), ((8, 3), (3, 8)), ((2, 9), (5, 4))]


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("src, dst", RESIZE_CASES)
def test_resize(mode, src, dst):
    rng = np.random.default_rng(src[0] * 100 + dst[1])
    x = randn(rng, 2, 3, *src)

    def fn(t, _):
        if mode == "nearest":
            return F.interpolate(t[0], size=dst, mode="nearest-exact")
        return F.interpolate(t[0], size=dst, mode="bilinear", align_corners=False)

    check_op(make_node(f"resize_{mode}", height=dst[0], width=dst[1]), [x], {}, fn, rng=rng)


@pytest.mark.parametrize("shape, to", [((2, 6, 2, 3), (4, 3, 3)), ((1, 2, 3, 4), (24, 1, 1)),
                                       ((3, 5, 1, 1), (1, 1, 5)), ((2, 4, 2, 2), (4, 2, 2))])
def test_reshape(shape, to):
    rng = np.random.default_rng(sum(shape))
    x = randn(rng, *shape)
    check_op(make_node("reshape", channels=to[0], height=to[1], width=to[2]), [x], {},
             lambda t, _: t[0].reshape(shape[0], *to), rng=rng, fwd=dict(atol=0, rtol=0),
             bwd=dict(atol=0, rtol=0))


def test_reshape_of_dense_features():
    # a dense layer's flat (N, F) output reshaped to an image, then a convolution
    img = _img(w=3, h=2, c=1)
    d = ha.create_dl_layer_dense(img, "fc", 12, [], [])
    r = ha.create_dl_layer_reshape(d, "rs", [2, 2, 3], [], [])
    c = ha.create_dl_layer_convolution(r, "conv", 1, 1, 1, 2, 1, "none", "none", [], [])
    g = ha.create_dl_layer_pooling(c, "gap", [], [], [], "global_average", [], [])
    m = _model_from(g)
    t = {k: torch.from_numpy(ha.get_dl_model_layer_weights(m, layer, wt)).double()
         for k, layer, wt in (("fw", "fc", "weights"), ("fb", "fc", "bias"),
                              ("cw", "conv", "weights"), ("cb", "conv", "bias"))}
    im = np.random.default_rng(5).standard_normal((2, 3, 1)).astype(np.float32)
    r = ha.apply_dl_model_s(m, {"image": im}, [])
    x = torch.from_numpy(im).permute(2, 0, 1)[None].double()
    y = F.linear(x.flatten(1), t["fw"], t["fb"]).reshape(1, 3, 2, 2)
    p = torch.softmax(F.conv2d(y, t["cw"], t["cb"]).mean((2, 3)), 1)[0].numpy()
    np.testing.assert_allclose(r["classification_confidences"], p[r["classification_class_ids"]],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("perm", [[0, 2, 1], [1, 0, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1], [0, 1, 2]])
def test_permute(perm):
    rng = np.random.default_rng(sum(p * 3 ** i for i, p in enumerate(perm)))
    x = randn(rng, 2, 3, 4, 5)
    nd = make_node("permute", perm=perm)
    if perm[0] != 0:
        nd["channels"] = x.shape[1 + perm[0]]
    check_op(nd, [x], {}, lambda t, _: t[0].permute(0, *[1 + p for p in perm]), rng=rng,
             fwd=dict(atol=0, rtol=0), bwd=dict(atol=0, rtol=0))


@pytest.mark.parametrize("argmax", [False, True])
@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (1, 1, 2, 3), (3, 17, 1, 1)])
def test_depth_max(shape, argmax):
    rng = np.random.default_rng(sum(shape) + argmax)
    x = randn(rng, *shape)

    def fn(t, _):
        if argmax:  # an index: no gradient (0 · x keeps torch's graph for the zero gradient)
            return torch.argmax(t[0], 1, keepdim=True).double() + 0 * t[0].sum()
        return torch.max(t[0], 1, keepdim=True).values   # the gradient to the maximum
    check_op(make_node("depth_max", argmax=argmax), [x], {}, fn, rng=rng,
             fwd=dict(atol=0, rtol=0), bwd=dict(atol=0, rtol=0))


@pytest.mark.parametrize("shape, size, alpha, beta, k", [
    ((2, 7, 3, 4), 5, 1e-2, 0.75, 2.0),     # AlexNet-like window
    ((1, 3, 2, 2), 1, 0.5, 0.5, 1.0),       # a window of one channel
    ((2, 4, 3, 3), 9, 1.0, 1.5, 0.5),       # wider than the depth
    ((2, 32, 2, 3), 3, 1e-1, 0.75, 1.0),    # a deeper input
])
def test_lrn(shape, size, alpha, beta, k):
    rng = np.random.default_rng(sum(shape) + size)
    x = randn(rng, *shape, scale=2.0)
    check_op(make_node("lrn", size=size, alpha=alpha, beta=beta, k=k), [x], {},
             lambda t, _: F.local_response_norm(t[0], size, alpha, beta, k), rng=rng)


@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("axes", [[1], [2, 3], [1, 3], [1, 2, 3], [2]])
def test_reduce(axes, mode):
    rng = np.random.default_rng(sum(axes) + 10 * mode)
    x = randn(rng, 2, 20, 3, 4)   # 20 channels: wider than one SIMD block

    def fn(t, _):
        v = t[0]
        return [v.sum(axes, keepdim=True), v.mean(axes, keepdim=True),
                v.square().sum(axes, keepdim=True).sqrt()][mode]
    check_op(make_node("reduce", mode=mode, axes=axes), [x], {}, fn, rng=rng)


def test_reduce_norm_of_zeros_has_zero_gradient():
    x = np.zeros((1, 3, 2, 2), np.float32)
    go = np.ones((1, 1, 2, 2), np.float32)
    out, gin, _ = core.run_op(make_node("reduce", mode=2, axes=[1]), [x], {}, go, True)
    assert not np.asarray(out).any() and not np.asarray(gin[0]).any()
    assert np.isfinite(np.asarray(gin[0])).all()


@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("n, c, m, k, p", [(2, 3, 4, 5, 6), (1, 1, 1, 7, 1), (2, 17, 3, 2, 4)])
def test_matmul(n, c, m, k, p, ta, tb):
    rng = np.random.default_rng(n + c + m + k + p + 2 * ta + tb)
    a = randn(rng, n, c, *((k, m) if ta else (m, k)))
    b = randn(rng, n, c, *((p, k) if tb else (k, p)))

    def fn(t, _):
        x, z = t
        return (x.transpose(2, 3) if ta else x) @ (z.transpose(2, 3) if tb else z)
    check_op(make_node("matmul", 2, trans_a=ta, trans_b=tb), [a, b], {}, fn, rng=rng)


@pytest.mark.parametrize("shapes, why", [
    (((1, 2, 3, 4), (1, 2, 3, 4)), "A's columns must equal B's rows"),
    (((1, 2, 3, 4), (2, 2, 4, 4)), "differ in batch or depth"),
    (((1, 2, 3, 4), (1, 3, 4, 4)), "the same depth"),
])
def test_matmul_bad_shapes(shapes, why):
    rng = np.random.default_rng(0)
    with pytest.raises(ha.HOperatorError) as info:
        core.run_op(make_node("matmul", 2), [randn(rng, *s) for s in shapes], {}, None, False)
    assert why in info.value.message


def test_depth_max_ties_take_the_first_index():
    x = np.array([[[[1.0, 2.0]], [[3.0, 2.0]], [[3.0, 0.5]]]], np.float32)   # (1, 3, 1, 2)
    out, _, _ = core.run_op(make_node("depth_max", argmax=True), [x], {}, None, False)
    np.testing.assert_array_equal(np.asarray(out).ravel(), [1.0, 0.0])
    go = np.array([[[[5.0, 7.0]]]], np.float32)
    out, gin, _ = core.run_op(make_node("depth_max"), [x], {}, go, True)
    np.testing.assert_array_equal(np.asarray(out).ravel(), [3.0, 2.0])
    want = np.zeros_like(x)
    want[0, 1, 0, 0], want[0, 0, 0, 1] = 5.0, 7.0
    np.testing.assert_array_equal(np.asarray(gin[0]), want)


@pytest.mark.parametrize("node, why", [
    (make_node("reduce", axes=[0]), "distinct values"),
    (make_node("reduce", axes=[1], mode=3), "reduce mode"),
    (make_node("reduce"), "reduce needs 'axes'"),
    (make_node("lrn", size=4), "lrn size must be odd"),
    (make_node("lrn", size=3, k=0), "k > 0"),
    (make_node("reshape", channels=5, height=1, width=1), "values per sample"),
    (make_node("reshape", channels=6, height=0, width=1), "reshape needs"),
    (make_node("permute", perm=[0, 1, 1]), "permutation of"),
    (make_node("permute", perm=[1, 0, 2]), "needs 'channels'"),
    (make_node("permute", perm=[1, 0, 2], channels=6), "original image size"),
    (make_node("depth_to_space", block_size=2), "not a multiple"),
    (make_node("depth_to_space", block_size=0), "block_size"),
    (make_node("resize_bilinear", height=0, width=3), "height and width"),
    (make_node("resize_nearest", height=3), "height and width"),
])
def test_bad_specs(node, why):
    x = randn(np.random.default_rng(0), 1, 6, 2, 2)
    with pytest.raises(ha.HOperatorError) as info:
        core.run_op(node, [x], {}, None, False)
    assert why in info.value.message


# ---- a network of the new ops trained against a PyTorch twin ------------------------------
NEW_OPS_SPEC = [
    {"name": "image", "op": "input", "inputs": [], "channels": SC},
    {"name": "c1", "op": "conv", "inputs": ["image"], "out_channels": 8, "kernel": 3, "pad": 1,
     "stride": 2},                                                                 # 8×6
    {"name": "t1", "op": "tanh", "inputs": ["c1"]},
    {"name": "c2", "op": "conv", "inputs": ["t1"], "out_channels": 16, "kernel": 1},
    {"name": "d2s", "op": "depth_to_space", "inputs": ["c2"], "block_size": 2},   # 4 × 16×12
    {"name": "s1", "op": "sigmoid", "inputs": ["d2s"]},
    {"name": "c3", "op": "conv", "inputs": ["s1"], "out_channels": 8, "kernel": 3, "pad": 1,
     "stride": 2, "bias": False},                                                  # 8×6
    {"name": "bn3", "op": "bn", "inputs": ["c3"]},
    {"name": "z1", "op": "resize_nearest", "inputs": ["bn3"], "height": 5, "width": 7},
    {"name": "c4", "op": "conv", "inputs": ["z1"], "out_channels": 8, "kernel": 1},
    {"name": "d2s2", "op": "depth_to_space", "inputs": ["c4"], "block_size": 2,
     "crd": False},                                                                # 2 × 10×14
    {"name": "z2", "op": "resize_bilinear", "inputs": ["d2s2"], "height": SH, "width": SW},
    {"name": "p1", "op": "permute", "inputs": ["s1"], "perm": [0, 2, 1]},           # 4 × 12×16
    {"name": "c5", "op": "conv", "inputs": ["p1"], "out_channels": 8, "kernel": 1},
    {"name": "r1", "op": "reshape", "inputs": ["c5"], "channels": 8, "height": SH, "width": SW},
    {"name": "p2", "op": "permute", "inputs": ["r1"], "perm": [1, 0, 2], "channels": SH},
    {"name": "c6", "op": "conv", "inputs": ["p2"], "out_channels": 4, "kernel": 1},  # 4 × 8×12
    {"name": "z3", "op": "resize_bilinear", "inputs": ["c6"], "height": SH, "width": SW},
    {"name": "cat", "op": "concat", "inputs": ["z2", "s1", "r1", "z3"]},
    {"name": "cls", "op": "conv", "inputs": ["cat"], "out_channels": len(S_IDS), "kernel": 1},
]


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_new_ops_network_trains_like_pytorch(solver):
    hp = HPARAMS[solver]
    model = core.Model(NEW_OPS_SPEC, 99)
    model.set_class_ids(S_IDS)
    model.set_ignore_ids([IGNORE])
    model.set_hparams(dict(hp, class_weights=S_WEIGHTS, batchnorm_momentum=BN_MOMENTUM))
    assert model.is_segmentation(SH, SW)
    twin = TorchTwin(NEW_OPS_SPEC, image_hw=(SH, SW), dtype=torch.float64)
    twin.load_from_halcdl(model)
    batches = seg_batches(5, S_STEPS, S_BATCH * S_MULT, SH, SW, SC, S_IDS, weights="all")
    got = [_scalar(model.train_step(b, S_BATCH, S_MULT, SH, SW, SC)["total_loss"])
           for b in batches]
    ref, _, ref_state = seg_reference_run(twin, batches, S_IDS, S_WEIGHTS, S_BATCH, S_MULT, hp)
    assert_close(got, ref, what=f"{solver}: total_loss per step", **LOSS_TOL)
    assert got[-1] < got[0]
    for name in model.param_names():
        assert_close(model.get_param(name), ref_state[name],
                     what=f"{solver}: {name} after {S_STEPS} steps", **PARAM_TOL)


# depth_max, lrn, reduce and matmul after 32-channel convs (where oneDNN picks a blocked layout for it,
# this runs the plain loops' reorders both ways and lrn in the blocked layout), trained like
# PyTorch
NEW_OPS2_SPEC = [
    {"name": "image", "op": "input", "inputs": [], "channels": SC},
    {"name": "c1", "op": "conv", "inputs": ["image"], "out_channels": 32, "kernel": 3, "pad": 1},
    {"name": "l1", "op": "lrn", "inputs": ["c1"], "size": 5, "alpha": 0.5, "beta": 0.75, "k": 2.0},
    {"name": "dm", "op": "depth_max", "inputs": ["c1"]},
    {"name": "da", "op": "depth_max", "inputs": ["l1"], "argmax": True},
    {"name": "rl2", "op": "reduce", "inputs": ["c1"], "mode": 2, "axes": [1]},
    {"name": "rm", "op": "reduce", "inputs": ["l1"], "mode": 1, "axes": [2]},        # 32 × 1×W
    {"name": "zr", "op": "resize_nearest", "inputs": ["rm"], "height": SH, "width": SW},
    {"name": "rs", "op": "reduce", "inputs": ["c1"], "mode": 0, "axes": [3]},        # 32 × H×1
    {"name": "zs", "op": "resize_nearest", "inputs": ["rs"], "height": SH, "width": SW},
    {"name": "c2", "op": "conv", "inputs": ["image"], "out_channels": 32, "kernel": 1},
    {"name": "t2", "op": "tanh", "inputs": ["c2"]},
    {"name": "t1", "op": "tanh", "inputs": ["c1"]},
    {"name": "mmA", "op": "matmul", "inputs": ["t2", "t1"], "trans_b": True},       # 32 × H×H
    {"name": "mmB", "op": "resize_bilinear", "inputs": ["mmA"], "height": SH, "width": SW},
    {"name": "cat", "op": "concat", "inputs": ["l1", "dm", "da", "rl2", "zr", "zs", "mmB"]},
    {"name": "cls", "op": "conv", "inputs": ["cat"], "out_channels": len(S_IDS), "kernel": 1},
]


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_depth_max_lrn_reduce_network_trains_like_pytorch(solver):
    hp = HPARAMS[solver]
    model = core.Model(NEW_OPS2_SPEC, 77)
    model.set_class_ids(S_IDS)
    model.set_ignore_ids([IGNORE])
    model.set_hparams(dict(hp, class_weights=S_WEIGHTS, batchnorm_momentum=BN_MOMENTUM))
    twin = TorchTwin(NEW_OPS2_SPEC, image_hw=(SH, SW), dtype=torch.float64)
    twin.load_from_halcdl(model)
    batches = seg_batches(6, S_STEPS, S_BATCH * S_MULT, SH, SW, SC, S_IDS, weights="all")
    got = [_scalar(model.train_step(b, S_BATCH, S_MULT, SH, SW, SC)["total_loss"])
           for b in batches]
    ref, _, ref_state = seg_reference_run(twin, batches, S_IDS, S_WEIGHTS, S_BATCH, S_MULT, hp)
    assert_close(got, ref, what=f"{solver}: total_loss per step", **LOSS_TOL)
    for name in model.param_names():
        # the sums over 32 channels / a row, the L2 norm and the matmul's 12-term products
        # amplify float32 rounding (weights up to ~20; SGD's c2 off by 2.2e-5 where the bound
        # 2e-6·max was enough without the matmul): bounded relative to the largest weight (the
        # ops' gradients themselves are checked against float64 PyTorch above, test_matmul etc.)
        e = np.asarray(ref_state[name], np.float64)
        assert_close(model.get_param(name), e, what=f"{solver}: {name} after {S_STEPS} steps",
                     atol=5e-5 * max(1.0, float(np.abs(e).max())), rtol=PARAM_TOL["rtol"])


# ---- the layer API ------------------------------------------------------------------------
def _img(w=6, h=4, c=2):
    return ha.create_dl_layer_input("image", [w, h, c], [], [])


def _model_from(x):
    return ha.create_dl_model(ha.create_dl_layer_softmax(x, "softmax", [], []))


def test_layer_api_network_against_pytorch():
    img = _img()
    c = ha.create_dl_layer_convolution(img, "conv", 1, 1, 1, 8, 1, "none", "none", [], [])
    a = ha.create_dl_layer_activation(c, "tanh", "tanh", [], [])
    d = ha.create_dl_layer_depth_to_space(a, "d2s", 2, "depth_column_row", [], [])
    z = ha.create_dl_layer_zoom_size(d, "zoom", 5, 3, "bilinear", "false", [], [])
    s = ha.create_dl_layer_activation(z, "sig", "sigmoid", [], [])
    zz = ha.create_dl_layer_zoom_to_layer_size(s, img, "back", "nearest_neighbor", "false",
                                               [], [])
    m = ha.create_dl_model(ha.create_dl_layer_softmax(zz, "softmax", [], []))
    assert ha.get_dl_model_param(m, "type") == ["segmentation"]
    assert ha.get_dl_model_layer_param_s(m, "d2s", "mode") == "depth_column_row"
    assert ha.get_dl_model_layer_param_s(m, "d2s", "type") == "depth_to_space"
    assert ha.get_dl_model_layer_param_s(m, "sig", "activation_type") == "sigmoid"
    assert ha.get_dl_model_layer_param(m, "zoom", "width") == [5]
    assert ha.get_dl_model_layer_param_s(m, "back", "type") == "zoom_size"
    assert [ha.get_dl_model_layer_param_s(m, "back", k) for k in ("width", "height")] == [6, 4]
    w = ha.get_dl_model_layer_weights(m, "conv", "weights")
    b = ha.get_dl_model_layer_weights(m, "conv", "bias")
    im = np.random.default_rng(4).standard_normal((4, 6, 2)).astype(np.float32)
    r = ha.apply_dl_model_s(m, {"image": im}, [])
    x = torch.from_numpy(im).permute(2, 0, 1)[None].double()
    y = torch.tanh(F.conv2d(x, torch.from_numpy(w).double(), torch.from_numpy(b).double()))
    y = torch.sigmoid(F.interpolate(depth_to_space(y, 2, False), size=(3, 5), mode="bilinear",
                                    align_corners=False))
    p = torch.softmax(F.interpolate(y, size=(4, 6), mode="nearest-exact"), 1)[0]
    conf, cls = p.max(0)
    got_conf = np.asarray(r["segmentation_confidence"]).reshape(4, 6)
    np.testing.assert_allclose(got_conf, conf.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(r["segmentation_image"]).reshape(4, 6), cls.numpy())


def test_reshape_and_permutation_layers_against_pytorch():
    img = _img(w=6, h=4, c=2)
    p = ha.create_dl_layer_permutation(img, "perm", [2, 0, 1, 3], [], [])   # (w, h, d) <- (d, w, h)
    r = ha.create_dl_layer_reshape(p, "reshape", [0, -1, 3, 0], [], [])
    d = ha.create_dl_layer_dense(r, "fc", 3, [], [])
    m = _model_from(d)
    assert ha.get_dl_model_layer_param(m, "perm", "permutation") == [2, 0, 1, 3]
    assert ha.get_dl_model_layer_param(m, "reshape", "shape") == [2, 8, 3, 0]
    assert ha.get_dl_model_layer_param_s(m, "reshape", "type") == "reshape"
    w = ha.get_dl_model_layer_weights(m, "fc", "weights")
    bias = ha.get_dl_model_layer_weights(m, "fc", "bias")
    im = np.random.default_rng(8).standard_normal((4, 6, 2)).astype(np.float32)
    r = ha.apply_dl_model_s(m, {"image": im}, [])
    # HALCON axes (w, h, d): output (w', h', d') = input (d, w, h); in NCHW (C, H, W) = (h, w, d)
    x = torch.from_numpy(im).permute(2, 0, 1)[None].double()           # (1, d=2, h=4, w=6)
    y = x.permute(0, 2, 3, 1)                                           # (1, h, w, d)
    y = y.reshape(1, 3, 8, 2)                                           # depth 3, height -1, width 2
    prob = torch.softmax(F.linear(y.flatten(1), torch.from_numpy(w).double(),
                                  torch.from_numpy(bias).double()), 1)[0].numpy()
    np.testing.assert_allclose(r["classification_confidences"], prob[r["classification_class_ids"]],
                               rtol=1e-5, atol=1e-6)


def _depth_max_model(c=3):
    img = _img(c=c)
    conv = ha.create_dl_layer_convolution(img, "conv", 1, 1, 1, 5, 1, "none", "none", [], [])
    arg, val = ha.create_dl_layer_depth_max(conv, "dm", "argmax_and_value", [], [])
    cat = ha.create_dl_layer_concat([val, arg], "cat", "depth", [], [])
    head = ha.create_dl_layer_convolution(cat, "head", 1, 1, 1, 3, 1, "none", "none", [], [])
    return _model_from(ha.create_dl_layer_pooling(head, "gap", [], [], [], "global_average",
                                                  [], []))


def test_depth_max_layer_against_pytorch():
    img = _img()
    conv = ha.create_dl_layer_convolution(img, "c0", 1, 1, 1, 4, 1, "none", "none", [], [])
    arg, val = ha.create_dl_layer_depth_max(conv, "v", "value", [], [])
    assert arg is None and ha.get_dl_layer_param_s(val, "depth_max_mode") == "value"
    arg, none = ha.create_dl_layer_depth_max(conv, "a", "argmax", [], [])
    assert none is None and ha.get_dl_layer_param_s(arg, "type") == "depth_max"
    m = _depth_max_model()
    assert ha.get_dl_model_layer_param_s(m, "dm", "depth_max_mode") == "value"
    assert ha.get_dl_model_layer_param_s(m, "dm_argmax", "depth_max_mode") == "argmax"
    assert ha.get_dl_model_layer_param(m, "cat", "input_layer") == ["dm", "dm_argmax"]
    t = {k: torch.from_numpy(ha.get_dl_model_layer_weights(m, layer, wt)).double()
         for k, layer, wt in (("cw", "conv", "weights"), ("cb", "conv", "bias"),
                              ("hw", "head", "weights"), ("hb", "head", "bias"))}
    im = np.random.default_rng(3).standard_normal((4, 6, 3)).astype(np.float32)
    r = ha.apply_dl_model_s(m, {"image": im}, [])
    y = F.conv2d(torch.from_numpy(im).permute(2, 0, 1)[None].double(), t["cw"], t["cb"])
    v, i = torch.max(y, 1, keepdim=True)
    z = F.conv2d(torch.cat([v, i.double()], 1), t["hw"], t["hb"]).mean((2, 3))
    p = torch.softmax(z, 1)[0].numpy()
    np.testing.assert_allclose(r["classification_confidences"], p[r["classification_class_ids"]],
                               rtol=1e-5, atol=1e-6)


def test_depth_max_model_file_round_trip(tmp_path):
    m = _depth_max_model()
    path = str(tmp_path / "dm.hdl")
    ha.write_dl_model(m, path)
    m2 = ha.read_dl_model(path)
    assert ha.get_dl_model_layer_param_s(m2, "dm_argmax", "depth_max_mode") == "argmax"
    im = np.random.default_rng(4).standard_normal((4, 6, 3)).astype(np.float32)
    a1 = ha.apply_dl_model_s(m, {"image": im}, [])
    a2 = ha.apply_dl_model_s(m2, {"image": im}, [])
    np.testing.assert_array_equal(np.asarray(a1["classification_confidences"]),
                                  np.asarray(a2["classification_confidences"]))


def test_depth_max_exports_to_onnx(tmp_path):
    # onnxruntime against the engine: tests/test_onnx_layer_ops.py
    onnx = pytest.importorskip("onnx")
    m = _depth_max_model()
    ha.write_dl_model(m, str(tmp_path / "dm.onnx"))
    ops = {n.op_type for n in onnx.load(str(tmp_path / "dm.onnx")).graph.node}
    assert {"ArgMax", "ReduceMax"} <= ops


def test_lrn_layer_against_pytorch(tmp_path):
    img = _img(c=3)
    # 32 channels: the conv's output (and so the lrn) may take oneDNN's blocked layout
    conv = ha.create_dl_layer_convolution(img, "conv", 3, 1, 1, 32, 1, "half_kernel_size", "relu",
                                          [], [])
    lrn = ha.create_dl_layer_lrn(conv, "lrn", 3, 0.2, 0.75, 1.5, "across_channels", [], [])
    head = ha.create_dl_layer_convolution(lrn, "head", 1, 1, 1, 3, 1, "none", "none", [], [])
    m = _model_from(ha.create_dl_layer_pooling(head, "gap", [], [], [], "global_average", [], []))
    for key, want in (("local_size", 3), ("alpha", 0.2), ("beta", 0.75), ("k", 1.5),
                      ("norm_region", "across_channels"), ("type", "lrn")):
        got = ha.get_dl_model_layer_param_s(m, "lrn", key)
        assert got == (pytest.approx(want) if isinstance(want, float) else want), key
        assert ha.get_dl_layer_param_s(lrn, key) == want, key
    t = {k: torch.from_numpy(ha.get_dl_model_layer_weights(m, layer, wt)).double()
         for k, layer, wt in (("cw", "conv", "weights"), ("cb", "conv", "bias"),
                              ("hw", "head", "weights"), ("hb", "head", "bias"))}
    im = np.random.default_rng(9).standard_normal((4, 6, 3)).astype(np.float32)
    r = ha.apply_dl_model_s(m, {"image": im}, [])
    y = F.relu(F.conv2d(torch.from_numpy(im).permute(2, 0, 1)[None].double(), t["cw"], t["cb"],
                        padding=1))
    y = F.local_response_norm(y, 3, 0.2, 0.75, 1.5)
    p = torch.softmax(F.conv2d(y, t["hw"], t["hb"]).mean((2, 3)), 1)[0].numpy()
    np.testing.assert_allclose(r["classification_confidences"], p[r["classification_class_ids"]],
                               rtol=1e-5, atol=1e-6)
    # the model file keeps the layer and its outputs
    path = str(tmp_path / "lrn.hdl")
    ha.write_dl_model(m, path)
    m2 = ha.read_dl_model(path)
    assert ha.get_dl_model_layer_param_s(m2, "lrn", "local_size") == 3
    r2 = ha.apply_dl_model_s(m2, {"image": im}, [])
    np.testing.assert_array_equal(np.asarray(r2["classification_confidences"]),
                                  np.asarray(r["classification_confidences"]))
    onnx = pytest.importorskip("onnx")  # exported (onnxruntime: tests/test_onnx_layer_ops.py)
    ha.write_dl_model(m, str(tmp_path / "lrn.onnx"))
    assert {"LRN"} <= {n.op_type for n in onnx.load(str(tmp_path / "lrn.onnx")).graph.node}


def test_reduce_layer_against_pytorch(tmp_path):
    img = _img(c=3)
    conv = ha.create_dl_layer_convolution(img, "conv", 3, 1, 1, 32, 1, "half_kernel_size", "none",
                                          [], [])
    l2 = ha.create_dl_layer_reduce(conv, "l2", "norm_l2", [2], [], [])          # over the depth
    mean = ha.create_dl_layer_reduce(conv, "mean", "mean", ["width", "height"], [], [])
    s = ha.create_dl_layer_reduce(conv, "sum", "sum", [0], [], [])              # over the width
    z = ha.create_dl_layer_zoom_size(s, "z", 6, 4, "nearest_neighbor", "false", [], [])
    zm = ha.create_dl_layer_zoom_size(mean, "zm", 6, 4, "nearest_neighbor", "false", [], [])
    cat = ha.create_dl_layer_concat([l2, z, zm], "cat", "depth", [], [])
    head = ha.create_dl_layer_convolution(cat, "head", 1, 1, 1, 3, 1, "none", "none", [], [])
    m = _model_from(ha.create_dl_layer_pooling(head, "gap", [], [], [], "global_average", [], []))
    assert ha.get_dl_model_layer_param(m, "mean", "axes") == [0, 1]
    assert ha.get_dl_model_layer_param_s(m, "l2", "operation") == "norm_l2"
    assert ha.get_dl_layer_param(mean, "axes") == [0, 1]
    t = {k: torch.from_numpy(ha.get_dl_model_layer_weights(m, layer, wt)).double()
         for k, layer, wt in (("cw", "conv", "weights"), ("cb", "conv", "bias"),
                              ("hw", "head", "weights"), ("hb", "head", "bias"))}
    im = np.random.default_rng(11).standard_normal((4, 6, 3)).astype(np.float32)
    r = ha.apply_dl_model_s(m, {"image": im}, [])
    y = F.conv2d(torch.from_numpy(im).permute(2, 0, 1)[None].double(), t["cw"], t["cb"],
                 padding=1)
    parts = [y.square().sum(1, keepdim=True).sqrt(),
             F.interpolate(y.sum(3, keepdim=True), size=(4, 6), mode="nearest-exact"),
             F.interpolate(y.mean((2, 3), keepdim=True), size=(4, 6), mode="nearest-exact")]
    p = torch.softmax(F.conv2d(torch.cat(parts, 1), t["hw"], t["hb"]).mean((2, 3)), 1)[0].numpy()
    np.testing.assert_allclose(r["classification_confidences"], p[r["classification_class_ids"]],
                               rtol=1e-5, atol=1e-6)
    path = str(tmp_path / "reduce.hdl")
    ha.write_dl_model(m, path)
    m2 = ha.read_dl_model(path)
    assert ha.get_dl_model_layer_param(m2, "sum", "axes") == [0]
    r2 = ha.apply_dl_model_s(m2, {"image": im}, [])
    np.testing.assert_array_equal(np.asarray(r2["classification_confidences"]),
                                  np.asarray(r["classification_confidences"]))
    onnx = pytest.importorskip("onnx")  # exported (onnxruntime: tests/test_onnx_layer_ops.py)
    ha.write_dl_model(m, str(tmp_path / "reduce.onnx"))
    ops = {n.op_type for n in onnx.load(str(tmp_path / "reduce.onnx")).graph.node}
    assert {"ReduceL2", "ReduceMean", "ReduceSum"} <= ops


def test_matmul_layer_against_pytorch(tmp_path):
    img = _img(c=3)
    # 32 channels: the convs' outputs may take oneDNN's blocked layout (the matmul reorders)
    qa = ha.create_dl_layer_convolution(img, "qa", 1, 1, 1, 32, 1, "none", "none", [], [])
    kb = ha.create_dl_layer_convolution(img, "kb", 1, 1, 1, 32, 1, "none", "none", [], [])
    mm = ha.create_dl_layer_matmul(qa, kb, "mm", ["transpose_b"], ["true"])     # (h × w)(w × h)
    m2_ = ha.create_dl_layer_matmul(mm, qa, "mm2", {"transpose_a": "true"}, [])  # (h × h)(h × w)
    head = ha.create_dl_layer_convolution(m2_, "head", 1, 1, 1, 3, 1, "none", "none", [], [])
    m = _model_from(ha.create_dl_layer_pooling(head, "gap", [], [], [], "global_average", [], []))
    assert ha.get_dl_model_layer_param_s(m, "mm", "transpose_b") == "true"
    assert ha.get_dl_model_layer_param_s(m, "mm2", "transpose_b") == "false"
    assert ha.get_dl_model_layer_param(m, "mm2", "input_layer") == ["mm", "qa"]
    assert ha.get_dl_layer_param_s(mm, "transpose_a") == "false"
    t = {k: torch.from_numpy(ha.get_dl_model_layer_weights(m, layer, wt)).double()
         for k, layer, wt in (("qw", "qa", "weights"), ("qb", "qa", "bias"), ("kw", "kb", "weights"),
                              ("kb", "kb", "bias"), ("hw", "head", "weights"),
                              ("hb", "head", "bias"))}
    im = np.random.default_rng(12).standard_normal((4, 6, 3)).astype(np.float32)
    r = ha.apply_dl_model_s(m, {"image": im}, [])
    x = torch.from_numpy(im).permute(2, 0, 1)[None].double()
    q, k = F.conv2d(x, t["qw"], t["qb"]), F.conv2d(x, t["kw"], t["kb"])
    y = (q @ k.transpose(2, 3)).transpose(2, 3) @ q
    p = torch.softmax(F.conv2d(y, t["hw"], t["hb"]).mean((2, 3)), 1)[0].numpy()
    np.testing.assert_allclose(r["classification_confidences"], p[r["classification_class_ids"]],
                               rtol=1e-5, atol=1e-6)
    path = str(tmp_path / "matmul.hdl")
    ha.write_dl_model(m, path)
    m2 = ha.read_dl_model(path)
    assert ha.get_dl_model_layer_param_s(m2, "mm2", "transpose_a") == "true"
    r2 = ha.apply_dl_model_s(m2, {"image": im}, [])
    np.testing.assert_array_equal(np.asarray(r2["classification_confidences"]),
                                  np.asarray(r["classification_confidences"]))
    onnx = pytest.importorskip("onnx")  # exported (onnxruntime: tests/test_onnx_layer_ops.py)
    ha.write_dl_model(m, str(tmp_path / "matmul.onnx"))
    assert {"MatMul"} <= {n.op_type for n in onnx.load(str(tmp_path / "matmul.onnx")).graph.node}


def test_matmul_shapes_that_do_not_fit_fail_at_create_dl_model():
    img = _img(w=6, h=4)
    mm = ha.create_dl_layer_matmul(img, img, "mm", [], [])      # (4 × 6)(4 × 6)
    with pytest.raises(ha.HOperatorError) as info:
        _model_from(mm)
    assert info.value.error_code == errors.H_ERR_DL_LAYER_INPUT and "mm" in info.value.message
    c = ha.create_dl_layer_convolution(img, "c", 1, 1, 1, 3, 1, "none", "none", [], [])
    mm = ha.create_dl_layer_matmul(img, c, "mm", ["transpose_b"], ["true"])
    with pytest.raises(ha.HOperatorError) as info:
        _model_from(mm)
    assert info.value.error_code == errors.H_ERR_DL_LAYER_INPUT and "depth" in info.value.message


def test_layer_params_of_new_layers():
    img = _img()
    d = ha.create_dl_layer_depth_to_space(img, "d2s", 1, "column_row_depth", [], [])
    assert ha.get_dl_layer_param(d, "block_size") == [1]
    assert ha.get_dl_layer_param_s(d, "mode") == "column_row_depth"
    z = ha.create_dl_layer_zoom_to_layer_size(d, img, "z", "bilinear", "false", [], [])
    assert ha.get_dl_layer_param(z, "input_layer") == ["d2s", "image"]
    assert ha.get_dl_layer_param_s(z, "interpolation") == "bilinear"


@pytest.mark.parametrize("call, code", [
    (lambda x: ha.create_dl_layer_activation(x, "a", "softsign", [], []), errors.H_ERR_WIPV3),
    (lambda x: ha.create_dl_layer_activation(x, "a", "tanh", ["upper_bound"], [6.0]),
     errors.H_ERR_WIPV5),
    (lambda x: ha.create_dl_layer_depth_to_space(x, "d", 0, "column_row_depth", [], []),
     errors.H_ERR_WIPV3),
    (lambda x: ha.create_dl_layer_depth_to_space(x, "d", 2.5, "column_row_depth", [], []),
     errors.H_ERR_WIPT3),
    (lambda x: ha.create_dl_layer_depth_to_space(x, "d", [2, 2], "column_row_depth", [], []),
     errors.H_ERR_WIPN3),
    (lambda x: ha.create_dl_layer_depth_to_space(x, "d", 2, "crd", [], []), errors.H_ERR_WIPV4),
    (lambda x: ha.create_dl_layer_zoom_size(x, "z", 0, 4, "bilinear", "false", [], []),
     errors.H_ERR_WIPV3),
    (lambda x: ha.create_dl_layer_zoom_size(x, "z", 4, "4", "bilinear", "false", [], []),
     errors.H_ERR_WIPT4),
    (lambda x: ha.create_dl_layer_zoom_size(x, "z", 4, 4, "bicubic", "false", [], []),
     errors.H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE),
    (lambda x: ha.create_dl_layer_zoom_size(x, "z", 4, 4, "bilinear", "true", [], []),
     errors.H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE),
    (lambda x: ha.create_dl_layer_zoom_size(x, "z", 4, 4, "linear", "false", [], []),
     errors.H_ERR_WIPV5),
    (lambda x: ha.create_dl_layer_zoom_to_layer_size(x, 3, "z", "bilinear", "false", [], []),
     errors.H_ERR_WIPT2),
    (lambda x: ha.create_dl_layer_depth_max(x, "d", "max", [], []), errors.H_ERR_WIPV3),
    (lambda x: ha.create_dl_layer_depth_max(x, "d", 1, [], []), errors.H_ERR_WIPT3),
    (lambda x: ha.create_dl_layer_depth_max(x, "", "value", [], []), errors.H_ERR_WIPV2),
    (lambda x: ha.create_dl_layer_depth_max(x, "d", "value", ["k"], [1]), errors.H_ERR_WIPV4),
    (lambda x: ha.create_dl_layer_depth_max(3, "d", "value", [], []), errors.H_ERR_WIPT1),
    (lambda x: ha.create_dl_layer_lrn(x, "l", 2, 1e-4, 0.75, 1.0, "across_channels", [], []),
     errors.H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE),
    (lambda x: ha.create_dl_layer_lrn(x, "l", 0, 1e-4, 0.75, 1.0, "across_channels", [], []),
     errors.H_ERR_WIPV3),
    (lambda x: ha.create_dl_layer_lrn(x, "l", 2.5, 1e-4, 0.75, 1.0, "across_channels", [], []),
     errors.H_ERR_WIPT3),
    (lambda x: ha.create_dl_layer_lrn(x, "l", 5, "a", 0.75, 1.0, "across_channels", [], []),
     errors.H_ERR_WIPT4),
    (lambda x: ha.create_dl_layer_lrn(x, "l", 5, 1e-4, float("nan"), 1.0, "across_channels", [],
                                      []), errors.H_ERR_WIPV5),
    (lambda x: ha.create_dl_layer_lrn(x, "l", 5, 1e-4, 0.75, 0.0, "across_channels", [], []),
     errors.H_ERR_WIPV6),
    (lambda x: ha.create_dl_layer_lrn(x, "l", 5, 1e-4, 0.75, 1.0, "within_channel", [], []),
     errors.H_ERR_WIPV7),
    (lambda x: ha.create_dl_layer_lrn(x, "l", [5, 3], 1e-4, 0.75, 1.0, "across_channels", [], []),
     errors.H_ERR_WIPN3),
    (lambda x: ha.create_dl_layer_reduce(x, "r", "max", [2], [], []), errors.H_ERR_WIPV3),
    (lambda x: ha.create_dl_layer_reduce(x, "r", "sum", [], [], []), errors.H_ERR_WIPN4),
    (lambda x: ha.create_dl_layer_reduce(x, "r", "sum", [4], [], []), errors.H_ERR_WIPV4),
    (lambda x: ha.create_dl_layer_reduce(x, "r", "sum", [1, 1], [], []), errors.H_ERR_WIPV4),
    (lambda x: ha.create_dl_layer_reduce(x, "r", "sum", ["depthh"], [], []), errors.H_ERR_WIPV4),
    (lambda x: ha.create_dl_layer_reduce(x, "r", "sum", [1.5], [], []), errors.H_ERR_WIPT4),
    (lambda x: ha.create_dl_layer_reduce(x, "r", "sum", [2, 3], [], []),
     errors.H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE),
    (lambda x: ha.create_dl_layer_matmul(x, 2, "m", [], []), errors.H_ERR_WIPT2),
    (lambda x: ha.create_dl_layer_matmul(x, x, "m", ["transpose_c"], ["true"]), errors.H_ERR_WIPV4),
    (lambda x: ha.create_dl_layer_matmul(x, x, "m", ["transpose_a"], ["yes"]), errors.H_ERR_WIPV5),
    (lambda x: ha.create_dl_layer_matmul(x, x, "m", ["transpose_a"], []), errors.H_ERR_WIPN5),
    (lambda x: ha.create_dl_layer_reshape(x, "r", [2, 2], [], []), errors.H_ERR_WIPN3),
    (lambda x: ha.create_dl_layer_reshape(x, "r", [-1, -1, 2], [], []), errors.H_ERR_WIPV3),
    (lambda x: ha.create_dl_layer_reshape(x, "r", [2, 2, 1.5], [], []), errors.H_ERR_WIPT3),
    (lambda x: ha.create_dl_layer_reshape(x, "r", [2, 2, 2, 4], [], []),
     errors.H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE),
    (lambda x: ha.create_dl_layer_permutation(x, "p", [0, 1, 2], [], []), errors.H_ERR_WIPN3),
    (lambda x: ha.create_dl_layer_permutation(x, "p", [0, 1, 1, 3], [], []), errors.H_ERR_WIPV3),
    (lambda x: ha.create_dl_layer_permutation(x, "p", [0, 1, 3, 2], [], []),
     errors.H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE),
])
def test_new_layers_bad_input(call, code):
    with pytest.raises(ha.HOperatorError) as info:
        call(_img())
    assert info.value.error_code == code, info.value.message


def test_depth_not_multiple_of_block_fails_at_create_dl_model():
    d = ha.create_dl_layer_depth_to_space(_img(c=3), "d2s", 2, "column_row_depth", [], [])
    with pytest.raises(ha.HOperatorError) as info:
        _model_from(d)
    assert info.value.error_code == errors.H_ERR_DL_LAYER_INPUT
    assert "d2s" in info.value.message


def test_reshape_count_mismatch_fails_at_create_dl_model():
    r = ha.create_dl_layer_reshape(_img(), "rs", [5, 5, 1], [], [])
    with pytest.raises(ha.HOperatorError) as info:
        _model_from(ha.create_dl_layer_dense(r, "fc", 2, [], []))
    assert info.value.error_code == errors.H_ERR_DL_LAYER_INPUT
    assert "rs" in info.value.message


def test_depth_max_of_flat_features_fails_at_create_dl_model():
    d = ha.create_dl_layer_dense(_img(), "fc", 4, [], [])
    _, v = ha.create_dl_layer_depth_max(d, "dm", "value", [], [])
    with pytest.raises(ha.HOperatorError) as info:
        _model_from(v)
    assert info.value.error_code == errors.H_ERR_DL_LAYER_INPUT
    assert "dm" in info.value.message


def test_zoom_to_a_label_input_fails_at_create_dl_model():
    img = _img()
    label = ha.create_dl_layer_input("image_label_id", [1, 1, 1], [], [])
    z = ha.create_dl_layer_zoom_to_layer_size(img, label, "z", "bilinear", "false", [], [])
    with pytest.raises(ha.HOperatorError) as info:
        _model_from(z)
    assert info.value.error_code == errors.H_ERR_DL_LAYER_INPUT


def test_serialize_round_trip_keeps_the_new_layers():
    img = _img(c=3)  # the native format takes 1- or 3-channel inputs
    a = ha.create_dl_layer_activation(img, "sig", "sigmoid", [], [])
    p = ha.create_dl_layer_permutation(a, "perm", [1, 0, 2, 3], [], [])
    z = ha.create_dl_layer_zoom_to_layer_size(p, img, "back", "bilinear", "false", [], [])
    c = ha.create_dl_layer_convolution(z, "conv", 1, 1, 1, 12, 1, "none", "none", [], [])
    d = ha.create_dl_layer_depth_to_space(c, "d2s", 2, "column_row_depth", [], [])
    r = ha.create_dl_layer_reshape(d, "rs", [0, 0, 0], [], [])
    zz = ha.create_dl_layer_zoom_size(r, "zs", 6, 4, "nearest_neighbor", "false", [], [])
    m = _model_from(ha.create_dl_layer_activation(zz, "t", "tanh", [], []))
    m2 = ha.deserialize_dl_model(ha.serialize_dl_model(m))
    im = np.random.default_rng(6).standard_normal((4, 6, 3)).astype(np.float32)
    a1 = ha.apply_dl_model_s(m, {"image": im}, [])
    a2 = ha.apply_dl_model_s(m2, {"image": im}, [])
    np.testing.assert_array_equal(np.asarray(a1["segmentation_confidence"]),
                                  np.asarray(a2["segmentation_confidence"]))
    for layer, key, want in (("perm", "permutation", [1, 0, 2, 3]), ("d2s", "block_size", [2]),
                             ("zs", "interpolation", ["nearest_neighbor"]),
                             ("t", "activation_type", ["tanh"]), ("rs", "shape", [12, 8, 3, 0])):
        assert ha.get_dl_model_layer_param(m2, layer, key) == want, (layer, key)

"""HALCON's layer API (create_dl_layer_*, create_dl_model) and model introspection
(get/set_dl_model_layer_param, get/set_dl_model_layer_weights, load_dl_model_weights,
get_dl_model_layer) on the engine's graph spec.

Proofs: the zoo's compact network rebuilt with the layer API gives bit-identical outputs and
training steps; weights set through the API give what PyTorch computes with them; a
layer-API network learns scikit-learn's digits; bad input raises HALCON's numbers and changes
nothing.  The table at the end names every deep-learning function of HALCON 24.11's binding
that halcdl still lacks on purpose and asserts all the others exist.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import halcdl as ha
from halcdl import errors

pytestmark = pytest.mark.filterwarnings("ignore::halcdl.NotPretrainedWarning")


def _code(info) -> int:
    return info.value.error_code


def _weights(m) -> dict:
    return {n: np.array(m.core.get_param(n)) for n in m.core.param_names()}


# --------------------------------------------------------------------------------------------
# the zoo's compact network, rebuilt layer by layer
# --------------------------------------------------------------------------------------------
def _compact_layers(size: int, channels: int, k: int):
    """HALCON-style code for models/zoo.py's compact(): same names, same attributes."""
    def cbr(x, i, out, stride=1, pad="half_kernel_size"):
        x = ha.create_dl_layer_convolution(x, f"conv{i}", 3, 1, stride, out, 1, pad, "none",
                                           ["bias_term"], ["false"])
        x = ha.create_dl_layer_batch_normalization(x, f"bn{i}", "auto", 1e-5, "none", [], [])
        return ha.create_dl_layer_activation(x, f"relu{i}", "relu", [], [])

    x = ha.create_dl_layer_input("image", [size, size, channels], [], [])
    x = cbr(x, 1, 32, 2, "none")
    x = cbr(x, 2, 32)
    x = ha.create_dl_layer_pooling(x, "pool1", 3, 2, "none", "maximum", [], [])
    x = cbr(x, 3, 64)
    x = cbr(x, 4, 64)
    x = ha.create_dl_layer_pooling(x, "pool2", [3, 3], [2, 2], "none", "maximum", [], [])
    x = cbr(x, 5, 128)
    x = cbr(x, 6, 128, 2)
    x = cbr(x, 7, 256)
    x = ha.create_dl_layer_convolution(x, "classifier", 1, 1, 1, k, 1, "none", "none", [], [])
    x = ha.create_dl_layer_pooling(x, "gap", 1, 1, "none", "global_average", [], [])
    sm = ha.create_dl_layer_softmax(x, "softmax", [], [])
    label = ha.create_dl_layer_input("image_label_id", [1, 1, 1], [], [])
    return ha.create_dl_layer_loss_cross_entropy(sm, label, [], "loss", 1.0, [], [])


def _zoo(size=32, channels=3, k=3, seed=21):
    ha.set_system("seed_rand", seed)
    m = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    ha.set_dl_model_param(m, "image_dimensions", [size, size, channels])
    ha.set_dl_model_param(m, "class_ids", list(range(k)))
    return m


def _samples(n, size=32, channels=3, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return [{"image": rng.standard_normal((size, size, channels)).astype(np.float32),
             "image_label_id": int(rng.integers(0, k))} for _ in range(n)]


def test_zoo_compact_rebuilt_with_layer_api_is_bit_identical():
    zoo = _zoo()
    m = ha.create_dl_model(_compact_layers(32, 3, 3))
    # the same graph spec, node for node (attributes spelt by the layer API)
    # (the zoo names its input node 'input', HALCON's image input layer is 'image')
    assert [(n["name"], n["op"]) for n in m.spec][1:] == \
        [(n["name"], n["op"]) for n in zoo.spec][1:]
    assert m.spec[0]["op"] == "input" and m.spec[0]["name"] == "image"
    assert ha.get_dl_model_param(m, "type") == ["classification"]
    assert ha.get_dl_model_param(m, "image_dimensions") == [32, 32, 3]
    assert m.core.param_names() == zoo.core.param_names()
    ha.load_dl_model_weights(zoo, m)
    w_zoo, w = _weights(zoo), _weights(m)
    assert all(np.array_equal(w[n], w_zoo[n]) for n in w_zoo)
    test = _samples(4, seed=3)
    assert ha.apply_dl_model(m, test, []) == ha.apply_dl_model(zoo, test, [])
    # training: the same steps give the same weights, bit for bit
    for model in (m, zoo):
        ha.set_dl_model_param(model, "batch_size", 4)
        ha.set_dl_model_param(model, "learning_rate", 0.01)
    for step in range(2):
        batch = _samples(4, seed=10 + step)
        assert ha.train_dl_model_batch(m, batch) == ha.train_dl_model_batch(zoo, batch)
    w_zoo, w = _weights(zoo), _weights(m)
    assert all(np.array_equal(w[n], w_zoo[n]) for n in w_zoo)
    assert ha.apply_dl_model(m, test, []) == ha.apply_dl_model(zoo, test, [])


def test_get_dl_model_layer_copies_build_the_same_network():
    zoo = _zoo(k=4)
    gap, = ha.get_dl_model_layer(zoo, "gap")
    assert ha.get_dl_layer_param(gap, "type") == ["pooling"]
    assert ha.get_dl_layer_param_s(gap, "mode") == "global_average"
    m = ha.create_dl_model(ha.create_dl_layer_softmax(gap, "softmax", [], []))
    test = _samples(3, k=4, seed=4)
    assert ha.apply_dl_model(m, test, []) == ha.apply_dl_model(zoo, test, [])
    # the copies are copies: training the new model leaves the zoo model as it was
    before = _weights(zoo)
    loss = ha.create_dl_layer_loss_cross_entropy(
        ha.create_dl_layer_softmax(gap, "softmax", [], []),
        ha.create_dl_layer_input("image_label_id", [1, 1, 1], [], []), [], "loss", 1.0, [], [])
    m2 = ha.create_dl_model(loss)
    ha.train_dl_model_batch(m2, _samples(1, k=4))
    assert all(np.array_equal(v, _weights(zoo)[n]) for n, v in before.items())
    assert not all(np.array_equal(v, _weights(m2)[n]) for n, v in before.items())


def test_new_head_on_copied_backbone():
    """A copied backbone with a new dense head: backbone weights copied, head fresh."""
    zoo = _zoo(k=3)
    relu7, = ha.get_dl_model_layer(zoo, "relu7")
    x = ha.create_dl_layer_pooling(relu7, "pool", 1, 1, "none", "global_average", [], [])
    x = ha.create_dl_layer_dense(x, "head", 5, [], [])
    m = ha.create_dl_model(ha.create_dl_layer_softmax(x, "softmax", [], []))
    assert ha.get_dl_model_param(m, "class_ids") == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(ha.get_dl_model_layer_weights(m, "conv7", "weights"),
                                  ha.get_dl_model_layer_weights(zoo, "conv7", "weights"))
    assert ha.get_dl_model_layer_weights(m, "head", "weights").shape == (5, 256)
    assert ha.get_dl_model_layer_param(m, "head", "input_layer") == ["pool"]


# --------------------------------------------------------------------------------------------
# a small network against PyTorch, weights set through the API
# --------------------------------------------------------------------------------------------
def _small_net(act="relu", eps=1e-3):
    x = ha.create_dl_layer_input("image", [6, 5, 2], [], [])
    a = ha.create_dl_layer_convolution(x, "conv_a", [3, 1], 1, 1, 4, 1, "half_kernel_size",
                                       act, [], [])
    b = ha.create_dl_layer_convolution(x, "conv_b", 1, 1, 1, 4, 2, "none", "none",
                                       "bias_term", "false")
    s = ha.create_dl_layer_elementwise([a, b], "sum", "sum", [], [], [])
    s = ha.create_dl_layer_batch_normalization(s, "bn", "auto", eps, "none", [], [])
    c = ha.create_dl_layer_concat([s, b], "cat", "depth", [], [])
    c = ha.create_dl_layer_identity(c, "ident", [], [])
    p = ha.create_dl_layer_pooling(c, "pool", 2, 2, "none", "average", [], [])
    d = ha.create_dl_layer_dense(p, "fc", 3, [], [])
    return ha.create_dl_model(ha.create_dl_layer_softmax(d, "softmax", [], []))


def test_small_network_matches_pytorch_with_set_weights():
    m = _small_net()
    rng = np.random.default_rng(7)
    ws = {}
    for layer, wt in (("conv_a", "weights"), ("conv_a", "bias"), ("conv_b", "weights"),
                      ("bn", "weights"), ("bn", "bias"), ("bn", "batchnorm_mean_avg"),
                      ("bn", "batchnorm_variance_avg"), ("fc", "weights"), ("fc", "bias")):
        shape = ha.get_dl_model_layer_weights(m, layer, wt).shape
        v = rng.standard_normal(shape).astype(np.float32)
        if wt == "batchnorm_variance_avg":
            v = np.abs(v) + 0.5
        ha.set_dl_model_layer_weights(v, m, layer, wt)
        ws[(layer, wt)] = v
        np.testing.assert_array_equal(ha.get_dl_model_layer_weights(m, layer, wt), v)
    assert ws[("conv_a", "weights")].shape == (4, 2, 1, 3)  # OIHW: kernel [width 3, height 1]
    assert ws[("conv_b", "weights")].shape == (4, 1, 1, 1)  # groups 2
    assert ws[("fc", "weights")].shape == (3, 8 * 2 * 3)    # (C, H, W) = (8, 2, 3) flattened
    imgs = rng.standard_normal((3, 5, 6, 2)).astype(np.float32)
    got = ha.apply_dl_model(m, [{"image": im} for im in imgs], [])
    t = {k: torch.from_numpy(v) for k, v in ws.items()}
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2)
    a = F.relu(F.conv2d(x, t[("conv_a", "weights")], t[("conv_a", "bias")], padding=(0, 1)))
    b = F.conv2d(x, t[("conv_b", "weights")], groups=2)
    s = F.batch_norm(a + b, t[("bn", "batchnorm_mean_avg")], t[("bn", "batchnorm_variance_avg")],
                     t[("bn", "weights")], t[("bn", "bias")], training=False, eps=1e-3)
    c = F.avg_pool2d(torch.cat([s, b], 1), 2)
    probs = torch.softmax(F.linear(c.flatten(1), t[("fc", "weights")], t[("fc", "bias")]), 1)
    for i, r in enumerate(got):
        order = r["classification_class_ids"]
        np.testing.assert_allclose(r["classification_confidences"],
                                   probs[i].numpy()[order], rtol=1e-4, atol=1e-6)
    # set_dl_model_layer_param: a new epsilon, weights kept; PyTorch with that epsilon agrees
    ha.set_dl_model_layer_param(m, "bn", "epsilon", 0.5)
    assert ha.get_dl_model_layer_param_s(m, "bn", "epsilon") == 0.5
    np.testing.assert_array_equal(ha.get_dl_model_layer_weights(m, "fc", "weights"),
                                  ws[("fc", "weights")])
    s = F.batch_norm(a + b, t[("bn", "batchnorm_mean_avg")], t[("bn", "batchnorm_variance_avg")],
                     t[("bn", "weights")], t[("bn", "bias")], training=False, eps=0.5)
    c = F.avg_pool2d(torch.cat([s, b], 1), 2)
    probs = torch.softmax(F.linear(c.flatten(1), t[("fc", "weights")], t[("fc", "bias")]), 1)
    got = ha.apply_dl_model(m, [{"image": im} for im in imgs], [])
    for i, r in enumerate(got):
        np.testing.assert_allclose(r["classification_confidences"],
                                   probs[i].numpy()[r["classification_class_ids"]],
                                   rtol=1e-4, atol=1e-6)


def test_layer_params_of_a_model():
    m = _small_net()
    g = ha.get_dl_model_layer_param
    assert g(m, "conv_a", "type") == ["convolution"]
    assert g(m, "conv_a", "kernel_size") == [3, 1]
    assert g(m, "conv_a", "padding") == [1, 0]
    assert g(m, "conv_a", "activation") == ["relu"]
    assert g(m, "conv_b", "groups") == [2] and g(m, "conv_b", "bias_term") == ["false"]
    assert g(m, "sum", "input_layer") == ["conv_a", "conv_b"]
    assert g(m, "sum", "operation") == ["sum"]
    assert g(m, "cat", "input_layer") == ["bn", "conv_b"]
    assert g(m, "pool", "input_layer") == ["cat"]  # the identity is no engine node
    assert g(m, "ident", "type") == ["identity"] and g(m, "ident", "input_layer") == ["cat"]
    assert g(m, "softmax", "input_layer") == ["fc"]
    assert g(m, "image", "shape") == [6, 5, 2]
    assert g(m, "fc", "num_out") == [3] and g(m, "fc", "name") == ["fc"]
    zoo = _zoo()
    assert g(zoo, "conv1", "stride") == [2, 2] and g(zoo, "pool1", "mode") == ["maximum"]
    assert g(zoo, "bn3", "input_layer") == ["conv3"]


def test_elementwise_of_three_and_dropout_probability():
    x = ha.create_dl_layer_input("image", [4, 4, 1], [], [])
    c = [ha.create_dl_layer_convolution(x, f"c{i}", 1, 1, 1, 2, 1, "none", "none", [], [])
         for i in range(3)]
    s = ha.create_dl_layer_elementwise(c, "s", "sum", [1.0, 1.0, 1.0], [], [])
    d = ha.create_dl_layer_dropout(s, "drop", 0.25, [], [])
    g = ha.create_dl_layer_pooling(d, "gap", [], [], [], "global_average", [], [])
    m = ha.create_dl_model(ha.create_dl_layer_softmax(g, "sm", [], []))
    assert ha.get_dl_model_layer_param(m, "s", "input_layer") == ["c0", "c1", "c2"]
    img = np.random.default_rng(2).standard_normal((4, 4)).astype(np.float32)
    ws = [(ha.get_dl_model_layer_weights(m, f"c{i}", "weights"),
           ha.get_dl_model_layer_weights(m, f"c{i}", "bias")) for i in range(3)]
    logits = sum(np.einsum("oi,hw->o", w[:, :, 0, 0], img) / 16 + b for w, b in ws)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    r = ha.apply_dl_model_s(m, {"image": img}, [])
    np.testing.assert_allclose(r["classification_confidences"], p[r["classification_class_ids"]],
                               rtol=1e-5)
    ha.set_dl_model_layer_param(m, "drop", "probability", 0.5)
    assert ha.get_dl_model_layer_param_s(m, "drop", "probability") == 0.5
    assert ha.apply_dl_model_s(m, {"image": img}, []) == r  # inference: dropout is identity


def test_three_way_sum_of_convolutions_on_the_input_is_fused_in_place():
    """The three-way sum is two binary adds; both are fused into the convolutions as in-place
    sum post-ops (a chain: the second sums into the buffer the first wrote), though the
    convolutions read the network input. It once failed to create its primitive (the chain's
    layout was read from a member before it was set); the confidences equal numpy's, with and
    without kept layers cutting the chain."""
    from halcdl import _native
    core = _native.core
    x = ha.create_dl_layer_input("image", [4, 4, 1], [], [])
    c = [ha.create_dl_layer_convolution(x, f"c{i}", 1, 1, 1, 2, 1, "none", "none", [], [])
         for i in range(3)]
    s = ha.create_dl_layer_elementwise(c, "s", "sum", [1.0, 1.0, 1.0], [], [])
    g = ha.create_dl_layer_pooling(s, "gap", [], [], [], "global_average", [], [])
    m = ha.create_dl_model(ha.create_dl_layer_softmax(g, "sm", [], []))
    img = np.random.default_rng(3).standard_normal((4, 4)).astype(np.float32)
    ws = [(ha.get_dl_model_layer_weights(m, f"c{i}", "weights"),
           ha.get_dl_model_layer_weights(m, f"c{i}", "bias")) for i in range(3)]
    logits = sum(np.einsum("oi,hw->o", w[:, :, 0, 0], img) / 16 + b for w, b in ws)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    adds = [n["name"] for n in m.spec if n["op"] == "add"]
    assert len(adds) == 2
    # a kept c0, c1 or first add leaves that add separate, computed after c2: c2 cannot sum
    # into it (it is not ready yet); a kept c2 or s stops the second fusion only
    for keep, fused in (([], 2), (["c0"], 0), (["c1"], 0), ([adds[0]], 0), (["c2"], 1), (["s"], 1)):
        ha.set_dl_model_param(m, "keep_layer_outputs", keep)
        core.reset_op_times()
        core.set_op_timer(True)
        try:
            r = ha.apply_dl_model_s(m, {"image": img}, [])
        finally:
            core.set_op_timer(False)
        t = core.op_times()
        core.reset_op_times()
        assert t.get("infer:conv+add", (0, 0))[1] == fused, (keep, t)
        np.testing.assert_allclose(r["classification_confidences"],
                                   p[r["classification_class_ids"]], rtol=1e-5, err_msg=str(keep))


def test_serialized_layer_model_keeps_its_layers(tmp_path):
    m = ha.create_dl_model(_compact_layers(16, 1, 2))
    m2 = ha.deserialize_dl_model(ha.serialize_dl_model(m))
    assert ha.get_dl_model_layer_param(m2, "loss", "type") == ["loss_cross_entropy"]
    assert ha.get_dl_model_layer_param(m2, "loss", "input_layer") == ["softmax",
                                                                      "image_label_id"]
    ha.write_dl_model(m, str(tmp_path / "net.hdl"))
    m3 = ha.read_dl_model(str(tmp_path / "net.hdl"))
    assert ha.get_dl_model_layer_param(m3, "softmax", "type") == ["softmax"]
    test = _samples(2, 16, 1, 2)
    assert ha.apply_dl_model(m3, test, []) == ha.apply_dl_model(m, test, [])


def test_load_dl_model_weights_copies_matching_layers_only():
    a, b = _zoo(k=3, seed=1), _zoo(k=5, seed=2)
    before = _weights(b)
    ha.load_dl_model_weights(a, b)
    wa, wb = _weights(a), _weights(b)
    for n in wb:
        if n.startswith("classifier."):  # 5 vs 3 outputs: not copied
            assert np.array_equal(wb[n], before[n]), n
        else:
            assert np.array_equal(wb[n], wa[n]), n
    ha.load_dl_model_weights(a, a)  # the same model: nothing to do


# --------------------------------------------------------------------------------------------
# a layer-API network learns digits
# --------------------------------------------------------------------------------------------
def _digits_net():
    x = ha.create_dl_layer_input("image", [8, 8, 1], [], [])
    x = ha.create_dl_layer_convolution(x, "conv1", 3, 1, 1, 16, 1, "half_kernel_size", "none",
                                       "bias_term", "false")
    x = ha.create_dl_layer_batch_normalization(x, "bn1", "auto", 1e-5, "relu", [], [])
    x = ha.create_dl_layer_pooling(x, "pool1", 2, 2, "none", "maximum", [], [])
    x = ha.create_dl_layer_convolution(x, "conv2", 3, 1, 1, 32, 1, "half_kernel_size", "relu",
                                       [], [])
    x = ha.create_dl_layer_dropout(x, "drop", 0.1, [], [])
    x = ha.create_dl_layer_dense(x, "fc", 10, [], [])
    sm = ha.create_dl_layer_softmax(x, "softmax", [], [])
    label = ha.create_dl_layer_input("image_label_id", [1, 1, 1], [], [])
    return ha.create_dl_model(ha.create_dl_layer_loss_cross_entropy(sm, label, [], "loss", 1.0,
                                                                    [], []))


@pytest.mark.slow
def test_layer_api_network_learns_digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    ha.set_system("seed_rand", 7)
    X, y = load_digits(return_X_y=True)
    X = (X.reshape(-1, 8, 8).astype(np.float32) - 8.0) / 8.0
    xtr, xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    m = _digits_net()
    assert ha.get_dl_model_param(m, "class_ids") == list(range(10))
    ha.set_dl_model_param(m, "solver_type", "adam")
    ha.set_dl_model_param(m, "learning_rate", 0.003)
    ha.set_dl_model_param(m, "batch_size", 32)
    rng = np.random.default_rng(0)
    for _ in range(3):
        perm = rng.permutation(len(xtr))
        for i in range(0, len(perm) - 31, 32):
            ha.train_dl_model_batch(m, [{"image": xtr[j], "image_label_id": int(ytr[j])}
                                        for j in perm[i:i + 32]])
    res = ha.apply_dl_model(m, [{"image": im} for im in xte], [])
    acc = float(np.mean([r["classification_class_ids"][0] == t for r, t in zip(res, yte)]))
    assert acc >= 0.94, f"test accuracy {acc:.3f} after 3 epochs"


# --------------------------------------------------------------------------------------------
# bad input: HALCON's numbers, the layer named, nothing changed
# --------------------------------------------------------------------------------------------
def _img(w=8, h=8, c=1):
    return ha.create_dl_layer_input("image", [w, h, c], [], [])


def _conv(x, name, k=3, n=4, pad="none", s=1):
    return ha.create_dl_layer_convolution(x, name, k, 1, s, n, 1, pad, "none", [], [])


def _softmax_model_error(x):
    with pytest.raises(ha.HOperatorError) as info:
        ha.create_dl_model(ha.create_dl_layer_softmax(x, "softmax", [], []))
    return info


def _gap(x, name="gap"):
    return ha.create_dl_layer_pooling(x, name, 1, 1, "none", "global_average", [], [])


def test_create_dl_model_graph_errors_name_the_layer():
    x = _img()
    a = _conv(x, "a", 3)           # 6x6
    b = _conv(x, "b", 1)           # 8x8
    info = _softmax_model_error(_gap(ha.create_dl_layer_concat([a, b], "cat", "depth", [], [])))
    assert _code(info) == errors.H_ERR_DL_LAYER_INPUT and "'cat'" in info.value.message
    info = _softmax_model_error(_gap(ha.create_dl_layer_elementwise([a, b], "sum", "sum", [],
                                                                    [], [])))
    assert _code(info) == errors.H_ERR_DL_LAYER_INPUT and "'sum'" in info.value.message
    info = _softmax_model_error(_gap(_conv(x, "big", 9)))
    assert _code(info) == errors.H_ERR_DL_LAYER_INPUT and "'big'" in info.value.message
    info = _softmax_model_error(_gap(_conv(_conv(x, "same", 1), "same", 1)))
    assert _code(info) == errors.H_ERR_DL_GRAPH and "'same'" in info.value.message
    # a cycle (layer handles are plain objects: a script could wire one by hand)
    c1 = _conv(x, "c1", 1)
    c2 = _conv(c1, "c2", 1)
    c1.inputs[0] = c2
    info = _softmax_model_error(_gap(c2))
    assert _code(info) == errors.H_ERR_DL_GRAPH and "cycle" in info.value.message
    # no image input
    lab = ha.create_dl_layer_input("image_label_id", [1, 1, 1], [], [])
    info = _softmax_model_error(_gap(_conv(lab, "c", 1)))
    assert _code(info) == errors.H_ERR_DL_LAYER_INPUT
    # a loss whose input is not a softmax, or whose target is not a label input
    with pytest.raises(ha.HOperatorError) as info:
        ha.create_dl_model(ha.create_dl_layer_loss_cross_entropy(_gap(b), lab, [], "loss", 1.0,
                                                                 [], []))
    assert _code(info) == errors.H_ERR_DL_LAYER_INPUT and "'loss'" in info.value.message
    sm = ha.create_dl_layer_softmax(_gap(b), "sm", [], [])
    with pytest.raises(ha.HOperatorError) as info:
        ha.create_dl_model(ha.create_dl_layer_loss_cross_entropy(sm, x, [], "loss", 1.0, [], []))
    assert _code(info) == errors.H_ERR_DL_LAYER_INPUT
    # scores per pixel at the image size: segmentation; other sizes fit no model type
    seg = ha.create_dl_model(ha.create_dl_layer_softmax(b, "softmax", [], []))
    assert ha.get_dl_model_param(seg, "type") == ["segmentation"]
    info = _softmax_model_error(a)
    assert _code(info) == errors.H_ERR_DL_LAYER_INPUT and "'softmax'" in info.value.message
    with pytest.raises(ha.HOperatorError) as info:
        ha.create_dl_model([sm, _gap(a, "gap2")])
    assert _code(info) == errors.H_ERR_DL_GRAPH
    # a dense layer feeding a convolution
    d = ha.create_dl_layer_dense(b, "d", 4, [], [])
    info = _softmax_model_error(_gap(_conv(d, "after_dense", 1)))
    assert _code(info) == errors.H_ERR_DL_LAYER_INPUT and "'after_dense'" in info.value.message
    with pytest.raises(ha.HOperatorError) as info:
        ha.create_dl_model("layer")
    assert _code(info) == errors.H_ERR_WIPT1


@pytest.mark.parametrize("call, code", [
    (lambda x: ha.create_dl_layer_input("", [8, 8, 1], [], []), errors.H_ERR_WIPV1),
    (lambda x: ha.create_dl_layer_input(3, [8, 8, 1], [], []), errors.H_ERR_WIPT1),
    (lambda x: ha.create_dl_layer_input("image", [8, 8], [], []), errors.H_ERR_WIPN2),
    (lambda x: ha.create_dl_layer_input("image", [8, 0, 1], [], []), errors.H_ERR_WIPV2),
    (lambda x: ha.create_dl_layer_input("features", [8, 8, 1], [], []),
     errors.H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE),
    (lambda x: ha.create_dl_layer_input("image", [8, 8, 1], ["nope"], [1]), errors.H_ERR_WIPV3),
    (lambda x: ha.create_dl_layer_input("image", [8, 8, 1], ["allow_smaller_tuple"], []),
     errors.H_ERR_WIPN4),
    (lambda x: ha.create_dl_layer_convolution("x", "c", 3, 1, 1, 4, 1, "none", "none", [], []),
     errors.H_ERR_WIPT1),
    (lambda x: ha.create_dl_layer_convolution(x, "c", 0, 1, 1, 4, 1, "none", "none", [], []),
     errors.H_ERR_WIPV3),
    (lambda x: ha.create_dl_layer_convolution(x, "c", 3.5, 1, 1, 4, 1, "none", "none", [], []),
     errors.H_ERR_WIPT3),
    (lambda x: ha.create_dl_layer_convolution(x, "c", [3, 3, 3], 1, 1, 4, 1, "none", "none",
                                              [], []), errors.H_ERR_WIPN3),
    (lambda x: ha.create_dl_layer_convolution(x, "c", 3, 1, 1, 4, 1, "bogus", "none", [], []),
     errors.H_ERR_WIPV8),
    (lambda x: ha.create_dl_layer_convolution(x, "c", 3, 1, 1, 4, 1, "implicit", "none", [],
                                              []), errors.H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE),
    (lambda x: ha.create_dl_layer_convolution(x, "c", 3, 1, 1, 4, 1, [1, 2, 3, 4], "none", [],
                                              []), errors.H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE),
    (lambda x: ha.create_dl_layer_convolution(x, "c", 3, 1, 1, 4, 1, "none", "swish", [], []),
     errors.H_ERR_WIPV9),
    (lambda x: ha.create_dl_layer_convolution(x, "c", 3, 1, 1, 4, 1, "none", "none",
                                              ["bias_term"], ["maybe"]), errors.H_ERR_WIPV11),
    (lambda x: ha.create_dl_layer_dense(x, "d", 0, [], []), errors.H_ERR_WIPV3),
    (lambda x: ha.create_dl_layer_batch_normalization(x, "b", "fast", 1e-5, "none", [], []),
     errors.H_ERR_WIPV3),
    (lambda x: ha.create_dl_layer_batch_normalization(x, "b", 1.5, 1e-5, "none", [], []),
     errors.H_ERR_WIPV3),
    (lambda x: ha.create_dl_layer_batch_normalization(x, "b", "auto", 0, "none", [], []),
     errors.H_ERR_WIPV4),
    (lambda x: ha.create_dl_layer_batch_normalization(x, "b", "auto", float("nan"), "none", [],
                                                      []), errors.H_ERR_WIPV4),
    (lambda x: ha.create_dl_layer_activation(x, "a", "sigmoid", ["upper_bound"], [6.0]),
     errors.H_ERR_WIPV5),
    (lambda x: ha.create_dl_layer_activation(x, "a", "gelu_like", [], []), errors.H_ERR_WIPV3),
    (lambda x: ha.create_dl_layer_activation(x, "a", "relu", ["upper_bound"], [3.0]),
     errors.H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE),
    (lambda x: ha.create_dl_layer_pooling(x, "p", 2, 2, "none", "median", [], []),
     errors.H_ERR_WIPV6),
    (lambda x: ha.create_dl_layer_pooling(x, "p", 2, 2, "none", "global_maximum", [], []),
     errors.H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE),
    (lambda x: ha.create_dl_layer_dropout(x, "d", 1.0, [], []), errors.H_ERR_WIPV3),
    (lambda x: ha.create_dl_layer_dropout(x, "d", "half", [], []), errors.H_ERR_WIPT3),
    (lambda x: ha.create_dl_layer_concat([x], "c", "depth", [], []), errors.H_ERR_WIPN1),
    (lambda x: ha.create_dl_layer_concat([x, x], "c", "width", [], []),
     errors.H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE),
    (lambda x: ha.create_dl_layer_elementwise([x, x], "e", "product", [], [], []),
     errors.H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE),
    (lambda x: ha.create_dl_layer_elementwise([x, x], "e", "sum", [1.0], [], []),
     errors.H_ERR_WIPN4),
    (lambda x: ha.create_dl_layer_elementwise([x, x], "e", "sum", [1.0, 0.5], [], []),
     errors.H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE),
    (lambda x: ha.create_dl_layer_loss_cross_entropy(x, x, [], "l", 2.0, [], []),
     errors.H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE),
    (lambda x: ha.create_dl_layer_loss_cross_entropy(x, "t", [], "l", 1.0, [], []),
     errors.H_ERR_WIPT2),
    (lambda x: ha.get_dl_layer_param(x, "nope"), errors.H_ERR_DL_PARAM_NOT_AVAILABLE),
    (lambda x: ha.get_dl_layer_param("x", "name"), errors.H_ERR_WIPT1),
])
def test_create_dl_layer_bad_input(call, code):
    with pytest.raises(ha.HOperatorError) as info:
        call(_img())
    assert _code(info) == code, info.value.message


def test_introspection_bad_input_changes_nothing():
    m = _small_net()
    before = _weights(m)
    spec = [dict(n) for n in m.spec]
    w = ha.get_dl_model_layer_weights(m, "conv_a", "weights")
    cases = [
        (lambda: ha.get_dl_model_layer_param(m, "nope", "type"), errors.H_ERR_WIPV2),
        (lambda: ha.get_dl_model_layer_param(m, "conv_a", "nope"),
         errors.H_ERR_DL_PARAM_NOT_AVAILABLE),
        (lambda: ha.get_dl_model_layer_param("m", "conv_a", "type"), errors.H_ERR_WIPT1),
        (lambda: ha.get_dl_model_layer_param(m, 3, "type"), errors.H_ERR_WIPT2),
        (lambda: ha.set_dl_model_layer_param(m, "conv_a", "num_kernel", 8),
         errors.H_ERR_DL_PARAM_NOT_AVAILABLE),
        (lambda: ha.set_dl_model_layer_param(m, "bn", "epsilon", -1.0), errors.H_ERR_WIPV4),
        (lambda: ha.set_dl_model_layer_param(m, "bn", "epsilon", "x"), errors.H_ERR_WIPT4),
        (lambda: ha.set_dl_model_layer_param(m, "bn", "epsilon", [1e-3, 1e-3]),
         errors.H_ERR_WIPN4),
        (lambda: ha.get_dl_model_layer_weights(m, "conv_b", "bias"),
         errors.H_ERR_DL_PARAM_NOT_AVAILABLE),
        (lambda: ha.get_dl_model_layer_weights(m, "bn", "batchnorm_mean"),
         errors.H_ERR_DL_PARAM_NOT_AVAILABLE),
        (lambda: ha.get_dl_model_layer_weights(m, "pool", "weights"),
         errors.H_ERR_DL_PARAM_NOT_AVAILABLE),
        (lambda: ha.get_dl_model_layer_weights(m, "conv_a", "kernels"), errors.H_ERR_WIPV3),
        (lambda: ha.set_dl_model_layer_weights(w[:2], m, "conv_a", "weights"),
         errors.H_ERR_CNN_INVALID_SHAPE),
        (lambda: ha.set_dl_model_layer_weights(w * np.nan, m, "conv_a", "weights"),
         errors.H_ERR_CNN_INVALID_INPUT_DATA),
        (lambda: ha.set_dl_model_layer_weights(
            -np.ones(4, np.float32), m, "bn", "batchnorm_variance_avg"),
         errors.H_ERR_CNN_INVALID_INPUT_DATA),
        (lambda: ha.set_dl_model_layer_weights(w.tolist(), m, "conv_a", "weights"),
         errors.H_ERR_WIPT1),
        (lambda: ha.set_dl_model_layer_weights(w, "m", "conv_a", "weights"), errors.H_ERR_WIPT2),
        (lambda: ha.load_dl_model_weights(m, "target"), errors.H_ERR_WIPT2),
        (lambda: ha.get_dl_model_layer(m, []), errors.H_ERR_WIPN2),
        (lambda: ha.get_dl_model_layer(m, ["nope"]), errors.H_ERR_WIPV2),
        (lambda: ha.get_dl_model_layer(m, [3]), errors.H_ERR_WIPT2),
    ]
    for call, code in cases:
        with pytest.raises(ha.HOperatorError) as info:
            call()
        assert _code(info) == code, info.value.message
    after = _weights(m)
    assert all(np.array_equal(after[n], before[n]) for n in before)
    assert m.spec == spec
    ha.clear_dl_model(m)
    with pytest.raises(ha.HOperatorError) as info:
        ha.get_dl_model_layer_param(m, "fc", "type")
    assert _code(info) == errors.H_ERR_HANDLE_CLEARED


# --------------------------------------------------------------------------------------------
# the binding's deep-learning functions: what is there, what is missing on purpose
# --------------------------------------------------------------------------------------------
# every create_dl_layer_* and DL function of HALCON 24.11's Python binding (without _s twins)
HALCON_DL_FUNCTIONS = """
create_dl_layer_activation create_dl_layer_batch_normalization create_dl_layer_class_id_conversion
create_dl_layer_concat create_dl_layer_convolution create_dl_layer_dense create_dl_layer_depth_max
create_dl_layer_depth_to_space create_dl_layer_dropout create_dl_layer_elementwise
create_dl_layer_identity create_dl_layer_input create_dl_layer_loss_cross_entropy
create_dl_layer_loss_ctc create_dl_layer_loss_distance create_dl_layer_loss_focal
create_dl_layer_loss_huber create_dl_layer_lrn create_dl_layer_matmul create_dl_layer_permutation
create_dl_layer_pooling create_dl_layer_reduce create_dl_layer_reshape create_dl_layer_softmax
create_dl_layer_transposed_convolution create_dl_layer_zoom_factor create_dl_layer_zoom_size
create_dl_layer_zoom_to_layer_size
create_dl_model create_dl_model_detection apply_dl_model clear_dl_model read_dl_model
write_dl_model serialize_dl_model deserialize_dl_model get_dl_model_param set_dl_model_param
train_dl_model_batch get_dl_layer_param get_dl_model_layer get_dl_model_layer_param
set_dl_model_layer_param get_dl_model_layer_weights set_dl_model_layer_weights
load_dl_model_weights get_dl_model_layer_activations get_dl_model_layer_gradients
gen_dl_model_heatmap optimize_dl_model_for_inference query_available_dl_devices
get_dl_device_param set_dl_device_param
apply_dl_classifier clear_dl_classifier clear_dl_classifier_result
clear_dl_classifier_train_result get_dl_classifier_param get_dl_classifier_result
get_dl_classifier_train_result read_dl_classifier set_dl_classifier_param
train_dl_classifier_batch write_dl_classifier serialize_dl_classifier deserialize_dl_classifier
create_dict copy_dict get_dict_object get_dict_param get_dict_tuple remove_dict_key
set_dict_object set_dict_tuple set_dict_tuple_at read_dict write_dict dict_to_json json_to_dict
""".split()

# missing on purpose: each needs new engine ops (C++ CPU and CUDA twins) or engine hooks
MISSING_ON_PURPOSE = {
    "create_dl_layer_class_id_conversion": "no class-id conversion op in the engine",
    "create_dl_layer_loss_ctc": "the engine has one loss: softmax cross-entropy",
    "create_dl_layer_loss_distance": "the engine has one loss: softmax cross-entropy",
    "create_dl_layer_loss_focal": "the engine has one loss: softmax cross-entropy",
    "create_dl_layer_loss_huber": "the engine has one loss: softmax cross-entropy",
}
# provided by other pieces of work (may be absent from this build)
ELSEWHERE = {"create_dl_model_detection"}


def test_binding_functions_present_or_missing_on_purpose():
    assert set(MISSING_ON_PURPOSE) <= set(HALCON_DL_FUNCTIONS)
    for name in HALCON_DL_FUNCTIONS:
        if name in MISSING_ON_PURPOSE:
            assert not hasattr(ha, name), f"{name} exists now: remove it from MISSING_ON_PURPOSE"
        elif name not in ELSEWHERE:
            assert callable(getattr(ha, name, None)), f"{name} is missing from halcdl"
            assert name in ha.__all__


# --------------------------------------------------------------------------------------------
# transposed convolution and zoom: the zoo's segmentation_compact, rebuilt
# --------------------------------------------------------------------------------------------
def _seg_compact_layers(size: int, channels: int, k: int):
    def stage(x, prefix, out, convs):
        for i in range(1, convs + 1):
            x = ha.create_dl_layer_convolution(x, f"{prefix}.conv{i}", 3, 1, 1, out, 1,
                                               "half_kernel_size", "none", "bias_term", "false")
            x = ha.create_dl_layer_batch_normalization(x, f"{prefix}.bn{i}", "auto", 1e-5,
                                                       "none", [], [])
            x = ha.create_dl_layer_activation(x, f"{prefix}.relu{i}", "relu", [], [])
        return x

    x = ha.create_dl_layer_input("image", [size, size, channels], [], [])
    widths, skips = (16, 32, 64), []
    for i, c in enumerate(widths, start=1):
        x = stage(x, f"enc{i}", c, 2)
        skips.append(x)
        x = ha.create_dl_layer_pooling(x, f"pool{i}", 2, 2, "none", "maximum", [], [])
    x = stage(x, "bottleneck", 128, 2)
    for i in range(len(widths), 0, -1):
        up = ha.create_dl_layer_transposed_convolution(x, f"dec{i}.up", 2, 2, widths[i - 1], 1,
                                                       "none", [], [])
        x = ha.create_dl_layer_concat([up, skips[i - 1]], f"dec{i}.concat", "depth", [], [])
        x = stage(x, f"dec{i}", widths[i - 1], 1)
    x = ha.create_dl_layer_convolution(x, "classifier", 1, 1, 1, k, 1, "none", "none", [], [])
    sm = ha.create_dl_layer_softmax(x, "softmax", [], [])
    target = ha.create_dl_layer_input("segmentation_image", [size, size, 1], [], [])
    return ha.create_dl_layer_loss_cross_entropy(sm, target, [], "loss", 1.0, [], [])


def test_zoo_segmentation_compact_rebuilt_with_layer_api():
    ha.set_system("seed_rand", 5)
    zoo = ha.read_dl_model("pretrained_dl_segmentation_compact.hdl")
    ha.set_dl_model_param(zoo, "image_dimensions", [16, 16, 1])
    m = ha.create_dl_model(_seg_compact_layers(16, 1, 2))
    assert ha.get_dl_model_param(m, "type") == ["segmentation"]
    assert [(n["name"], n["op"]) for n in m.spec][1:] == \
        [(n["name"], n["op"]) for n in zoo.spec][1:]
    assert ha.get_dl_model_layer_param(m, "dec2.up", "type") == ["transposed_convolution"]
    assert ha.get_dl_model_layer_param(zoo, "dec2.up", "kernel_depth") == [32]
    ha.load_dl_model_weights(zoo, m)
    rng = np.random.default_rng(1)
    batch = [{"image": rng.standard_normal((16, 16)).astype(np.float32),
              "segmentation_image": rng.integers(0, 2, (16, 16)).astype(np.uint8)}
             for _ in range(2)]
    for model in (m, zoo):
        ha.set_dl_model_param(model, "batch_size", 2)
    r1, r2 = ha.apply_dl_model(m, batch, []), ha.apply_dl_model(zoo, batch, [])
    for a, b in zip(r1, r2):
        np.testing.assert_array_equal(a["segmentation_image"], b["segmentation_image"])
        np.testing.assert_array_equal(a["segmentation_confidence"], b["segmentation_confidence"])
    assert ha.train_dl_model_batch(m, batch) == ha.train_dl_model_batch(zoo, batch)
    w, wz = _weights(m), _weights(zoo)
    assert all(np.array_equal(w[n], wz[n]) for n in wz)
    # the copies of a segmentation model rebuild it too (transposed convolutions included)
    head, = ha.get_dl_model_layer(zoo, "classifier")
    m2 = ha.create_dl_model(ha.create_dl_layer_softmax(head, "softmax", [], []))
    r3 = ha.apply_dl_model(m2, batch, [])
    np.testing.assert_array_equal(r3[0]["segmentation_confidence"],
                                  ha.apply_dl_model(zoo, batch, [])[0]["segmentation_confidence"])


@pytest.mark.parametrize("interpolation, mode", [("nearest_neighbor", "nearest"),
                                                 ("bilinear", "bilinear")])
def test_zoom_factor_and_transposed_convolution_against_pytorch(interpolation, mode):
    x = ha.create_dl_layer_input("image", [5, 4, 2], [], [])
    z = ha.create_dl_layer_zoom_factor(x, "zoom", 2, 2, interpolation, "false", [], [])
    t = ha.create_dl_layer_transposed_convolution(z, "up", 3, 2, 3, 1, [1], [], [])
    g = ha.create_dl_layer_pooling(t, "gap", [], [], [], "global_average", [], [])
    m = ha.create_dl_model(ha.create_dl_layer_softmax(g, "softmax", [], []))
    w = ha.get_dl_model_layer_weights(m, "up", "weights")
    b = ha.get_dl_model_layer_weights(m, "up", "bias") + 0.1
    ha.set_dl_model_layer_weights(b, m, "up", "bias")
    assert w.shape == (2, 3, 3, 3)  # (in, out, kh, kw), PyTorch's ConvTranspose2d
    img = np.random.default_rng(3).standard_normal((4, 5, 2)).astype(np.float32)
    xt = torch.from_numpy(img).permute(2, 0, 1)[None]
    up = F.interpolate(xt, scale_factor=2, mode=mode,
                       **({} if mode == "nearest" else {"align_corners": False}))
    y = F.conv_transpose2d(up, torch.from_numpy(w), torch.from_numpy(b), stride=2, padding=1)
    p = torch.softmax(y.mean((2, 3)), 1)[0].numpy()
    r = ha.apply_dl_model_s(m, {"image": img}, [])
    np.testing.assert_allclose(r["classification_confidences"], p[r["classification_class_ids"]],
                               rtol=1e-5, atol=1e-6)
    assert ha.get_dl_model_layer_param(m, "zoom", "interpolation") == [interpolation]


@pytest.mark.parametrize("call, code", [
    (lambda x: ha.create_dl_layer_zoom_factor(x, "z", 1.5, 1.5, "bilinear", "false", [], []),
     errors.H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE),
    (lambda x: ha.create_dl_layer_zoom_factor(x, "z", 2, 3, "bilinear", "false", [], []),
     errors.H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE),
    (lambda x: ha.create_dl_layer_zoom_factor(x, "z", 2, 2, "bilinear", "true", [], []),
     errors.H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE),
    (lambda x: ha.create_dl_layer_zoom_factor(x, "z", 2, 2, "cubic", "false", [], []),
     errors.H_ERR_WIPV5),
    (lambda x: ha.create_dl_layer_zoom_factor(x, "z", -2, 2, "bilinear", "false", [], []),
     errors.H_ERR_WIPV3),
    (lambda x: ha.create_dl_layer_zoom_factor(x, "z", "2", 2, "bilinear", "false", [], []),
     errors.H_ERR_WIPT3),
    (lambda x: ha.create_dl_layer_transposed_convolution(x, "t", 2, 2, 4, 2, "none", [], []),
     errors.H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE),
    (lambda x: ha.create_dl_layer_transposed_convolution(x, "t", [2, 2], 2, 4, 1, "none", [],
                                                         []), errors.H_ERR_WIPN3),
    (lambda x: ha.create_dl_layer_transposed_convolution(x, "t", 2, 0, 4, 1, "none", [], []),
     errors.H_ERR_WIPV4),
    (lambda x: ha.create_dl_layer_transposed_convolution(x, "t", 2, 2, 4, 1,
                                                         "half_kernel_size", [], []),
     errors.H_ERR_WIPV7),
])
def test_zoom_and_transposed_bad_input(call, code):
    with pytest.raises(ha.HOperatorError) as info:
        call(_img())
    assert _code(info) == code, info.value.message

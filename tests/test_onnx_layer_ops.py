"""ONNX export of the layer-API engine ops (docs/onnx.md): sigmoid, tanh, depth_to_space,
resize_nearest / resize_bilinear, reshape, permute, depth_max, lrn, reduce, matmul.

Each network is built with the layer API, written with write_dl_model(m, 'x.onnx'), checked
with onnx.checker and run by onnxruntime: the probabilities equal apply_dl_model's, and the
op's own output (the ONNX tensor named after the engine node, made a graph output here)
equals the engine's layer output for the same batch (kept with 'keep_layer_outputs').
"""
from __future__ import annotations

import numpy as np
import pytest

import halcdl as ha

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::halcdl.NotPretrainedWarning")

ATOL = 1e-5


def _img(w=6, h=4, c=2):
    return ha.create_dl_layer_input("image", [w, h, c], [], [])


def _conv(x, name, c, k=1):
    return ha.create_dl_layer_convolution(x, name, k, 1, 1, c, 1,
                                          "half_kernel_size" if k > 1 else "none", "none", [], [])


def _classifier(x, k=3):
    head = _conv(x, "head", k)
    gap = ha.create_dl_layer_pooling(head, "gap", [], [], [], "global_average", [], [])
    return ha.create_dl_model(ha.create_dl_layer_softmax(gap, "softmax", [], []))


def _dense_classifier(x, k=3):
    fc = ha.create_dl_layer_dense(x, "fc", k, [], [])
    return ha.create_dl_model(ha.create_dl_layer_softmax(fc, "softmax", [], []))


def check_export(m, probes, tmp_path, seed=0, n=2):
    """Export ``m``, run onnxruntime on ``n`` random images; the confidences and the
    tensors of the engine nodes ``probes`` equal the engine's."""
    ha.set_dl_model_param(m, "keep_layer_outputs", list(probes))
    ha.set_dl_model_param(m, "batch_size", n)
    path = tmp_path / "x.onnx"
    ha.write_dl_model(m, str(path))
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ops = {nd.op_type for nd in model.graph.node}
    for p in probes:  # the op's output as an extra graph output
        model.graph.output.append(helper.make_tensor_value_info(p, TensorProto.FLOAT, None))
    c, h, w = (int(ha.get_dl_model_param(m, k)[0])
               for k in ("image_num_channels", "image_height", "image_width"))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32) * 2
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {"image": x})
    res = ha.apply_dl_model(m, [{"image": np.ascontiguousarray(s.transpose(1, 2, 0))} for s in x],
                            [])
    ids = ha.get_dl_model_param(m, "class_ids")
    got = np.array([[dict(zip(r["classification_class_ids"],
                              r["classification_confidences"]))[k] for k in ids] for r in res])
    np.testing.assert_allclose(outs[0], got, atol=ATOL, rtol=0, err_msg="confidences")
    for p, o in zip(probes, outs[1:]):
        ref = np.asarray(m.core.layer_tensor(p, False))
        o = np.asarray(o)
        assert o.size == ref.size, (p, o.shape, ref.shape)
        np.testing.assert_allclose(o.reshape(ref.shape), ref,
                                   atol=ATOL * max(1.0, float(np.abs(ref).max())), rtol=0,
                                   err_msg=f"layer {p}")
    return ops


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_sigmoid_tanh(act, tmp_path):
    a = ha.create_dl_layer_activation(_conv(_img(), "conv", 8), "act", act, [], [])
    ops = check_export(_classifier(a), ["act"], tmp_path)
    assert act.capitalize() in ops
    # after a dense layer (a 2-D tensor in the graph)
    d = ha.create_dl_layer_dense(_img(), "d", 7, [], [])
    a = ha.create_dl_layer_activation(d, "act", act, [], [])
    check_export(_dense_classifier(a), ["act"], tmp_path, seed=1)


@pytest.mark.parametrize("mode, block", [("column_row_depth", 2), ("depth_column_row", 2),
                                         ("depth_column_row", 3), ("column_row_depth", 1)])
def test_depth_to_space(mode, block, tmp_path):
    c = _conv(_img(), "conv", 2 * block * block)
    d = ha.create_dl_layer_depth_to_space(c, "d2s", block, mode, [], [])
    ops = check_export(_classifier(d), ["d2s"], tmp_path)
    assert "DepthToSpace" in ops


def test_reshape_and_permutation(tmp_path):
    p = ha.create_dl_layer_permutation(_img(c=2), "perm", [2, 0, 1, 3], [], [])
    r = ha.create_dl_layer_reshape(p, "reshape", [0, -1, 3, 0], [], [])
    ops = check_export(_dense_classifier(r), ["perm", "reshape"], tmp_path)
    assert {"Transpose", "Reshape"} <= ops


@pytest.mark.parametrize("perm", [[1, 0, 2, 3], [0, 2, 1, 3], [2, 1, 0, 3], [1, 2, 0, 3]])
def test_permutation(perm, tmp_path):
    p = ha.create_dl_layer_permutation(_conv(_img(), "conv", 3), "perm", perm, [], [])
    check_export(_classifier(p), ["perm"], tmp_path)


def test_reshape_of_dense_features(tmp_path):
    d = ha.create_dl_layer_dense(_img(), "d", 12, [], [])
    r = ha.create_dl_layer_reshape(d, "reshape", [3, 2, 2], [], [])   # width 3, height 2, depth 2
    check_export(_classifier(_conv(r, "c", 4, k=3)), ["reshape"], tmp_path)


@pytest.mark.parametrize("mode", ["value", "argmax", "argmax_and_value"])
def test_depth_max(mode, tmp_path):
    conv = _conv(_img(c=3), "conv", 5)
    arg, val = ha.create_dl_layer_depth_max(conv, "dm", mode, [], [])
    outs = [v for v in (val, arg) if v is not None]
    x = outs[0] if len(outs) == 1 else ha.create_dl_layer_concat(outs, "cat", "depth", [], [])
    m = _classifier(x)
    probes = [nd["name"] for nd in m.spec if nd["op"] == "depth_max"]
    ops = check_export(m, probes, tmp_path)
    assert ("ArgMax" in ops) == (mode != "value") and ("ReduceMax" in ops) == (mode != "argmax")


def test_depth_max_ties_take_the_first_index(tmp_path):
    # a ReLU'd conv with equal weights for every output channel: ties everywhere
    conv = ha.create_dl_layer_convolution(_img(c=1), "conv", 1, 1, 1, 4, 1, "none", "relu", [],
                                          [])
    arg, _ = ha.create_dl_layer_depth_max(conv, "dm", "argmax", [], [])
    m = _classifier(arg)
    ha.set_dl_model_layer_weights(np.ones((4, 1, 1, 1), np.float32), m, "conv", "weights")
    ha.set_dl_model_layer_weights(np.zeros(4, np.float32), m, "conv", "bias")
    check_export(m, ["dm"], tmp_path)


def test_lrn(tmp_path):
    conv = ha.create_dl_layer_convolution(_img(c=3), "conv", 3, 1, 1, 32, 1, "half_kernel_size",
                                          "relu", [], [])
    lrn = ha.create_dl_layer_lrn(conv, "lrn", 3, 0.2, 0.75, 1.5, "across_channels", [], [])
    lrn5 = ha.create_dl_layer_lrn(lrn, "lrn5", 5, 1e-2, 0.5, 2.0, "across_channels", [], [])
    ops = check_export(_classifier(lrn5), ["lrn", "lrn5"], tmp_path)
    assert "LRN" in ops


def test_reduce(tmp_path):
    conv = _conv(_img(c=3), "conv", 8, k=3)
    l2 = ha.create_dl_layer_reduce(conv, "l2", "norm_l2", [2], [], [])          # over the depth
    mean = ha.create_dl_layer_reduce(conv, "mean", "mean", ["width", "height"], [], [])
    s = ha.create_dl_layer_reduce(conv, "sum", "sum", [0], [], [])              # over the width
    all3 = ha.create_dl_layer_reduce(conv, "all", "sum", [0, 1, 2], [], [])
    z = ha.create_dl_layer_zoom_size(s, "z", 6, 4, "nearest_neighbor", "false", [], [])
    zm = ha.create_dl_layer_zoom_size(mean, "zm", 6, 4, "nearest_neighbor", "false", [], [])
    za = ha.create_dl_layer_zoom_size(all3, "za", 6, 4, "nearest_neighbor", "false", [], [])
    cat = ha.create_dl_layer_concat([l2, z, zm, za], "cat", "depth", [], [])
    ops = check_export(_classifier(cat), ["l2", "mean", "sum", "all", "z"], tmp_path)
    assert {"ReduceL2", "ReduceMean", "ReduceSum"} <= ops


def test_matmul(tmp_path):
    img = _img(c=3)
    qa, kb = _conv(img, "qa", 8), _conv(img, "kb", 8)
    mm = ha.create_dl_layer_matmul(qa, kb, "mm", ["transpose_b"], ["true"])     # (h × w)(w × h)
    mm2 = ha.create_dl_layer_matmul(mm, qa, "mm2", {"transpose_a": "true"}, [])  # (h × h)(h × w)
    ops = check_export(_classifier(mm2), ["mm", "mm2"], tmp_path)
    assert "MatMul" in ops


# (input w, h) → (output w, h): up, down, equal, from 1 × 1, ties (4 → 2, 2 → 3, and
# 14 → 1, 20 → 6, where onnxruntime's Resize with tf_half_pixel_for_nn rounds its float32
# scale to the neighbouring pixel), to 1 × 1
RESIZE_CASES = [((6, 4), (9, 7)), ((6, 6), (3, 4)), ((6, 4), (6, 4)), ((1, 1), (2, 3)),
                ((4, 2), (2, 3)), ((14, 20), (1, 6)), ((7, 5), (1, 1)), ((5, 10), (13, 4))]


@pytest.mark.parametrize("interp", ["nearest_neighbor", "bilinear"])
@pytest.mark.parametrize("src, dst", RESIZE_CASES)
def test_resize(interp, src, dst, tmp_path):
    z = ha.create_dl_layer_zoom_size(_conv(_img(*src), "conv", 4), "zoom", dst[0], dst[1], interp,
                                     "false", [], [])
    m = _classifier(_conv(z, "c2", 4, k=3))
    probe = [nd["name"] for nd in m.spec if nd["op"].startswith("resize")]
    assert probe == ["zoom"] or src == dst, m.spec
    ops = check_export(m, probe, tmp_path, seed=sum(src) + 10 * sum(dst))
    if interp == "bilinear" and probe:
        assert "Resize" in ops


def test_zoom_to_layer_size_segmentation(tmp_path):
    # a segmentation net (output (N, K, H, W)): both resizes, sigmoid, tanh, depth_to_space
    img = _img()
    c = _conv(img, "conv", 8)
    a = ha.create_dl_layer_activation(c, "tanh", "tanh", [], [])
    d = ha.create_dl_layer_depth_to_space(a, "d2s", 2, "depth_column_row", [], [])
    z = ha.create_dl_layer_zoom_size(d, "zoom", 5, 3, "bilinear", "false", [], [])
    s = ha.create_dl_layer_activation(z, "sig", "sigmoid", [], [])
    zz = ha.create_dl_layer_zoom_to_layer_size(s, img, "back", "nearest_neighbor", "false", [],
                                               [])
    m = ha.create_dl_model(ha.create_dl_layer_softmax(zz, "softmax", [], []))
    assert ha.get_dl_model_param(m, "type") == ["segmentation"]
    path = tmp_path / "seg.onnx"
    ha.write_dl_model(m, str(path))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    x = np.random.default_rng(5).standard_normal((2, 2, 4, 6)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs = sess.run(None, {"image": x})[0]
    assert probs.shape == (2, 2, 4, 6)
    res = ha.apply_dl_model(m, [{"image": np.ascontiguousarray(s.transpose(1, 2, 0))} for s in x],
                            [])
    conf = np.stack([np.asarray(r["segmentation_confidence"]).reshape(4, 6) for r in res])
    np.testing.assert_allclose(probs.max(1), conf, atol=ATOL, rtol=0)


# ---- import: Sigmoid, Tanh, DepthToSpace, LRN read back ----------------------------------
def test_export_of_sigmoid_tanh_d2s_lrn_reads_back(tmp_path):
    conv = _conv(_img(c=3), "conv", 16, k=3)
    t = ha.create_dl_layer_activation(conv, "tanh", "tanh", [], [])
    lrn = ha.create_dl_layer_lrn(t, "lrn", 3, 0.2, 0.75, 1.5, "across_channels", [], [])
    d1 = ha.create_dl_layer_depth_to_space(lrn, "crd", 2, "column_row_depth", [], [])
    d2 = ha.create_dl_layer_depth_to_space(_conv(d1, "c2", 8), "dcr", 2, "depth_column_row",
                                           [], [])
    s = ha.create_dl_layer_activation(d2, "sig", "sigmoid", [], [])
    m = _classifier(s)
    path = str(tmp_path / "x.onnx")
    ha.write_dl_model(m, path)
    m2 = ha.read_dl_model(path)
    ops = [nd["op"] for nd in m2.spec]
    for op in ("tanh", "lrn", "depth_to_space", "sigmoid"):
        assert op in ops, ops
    x = np.random.default_rng(7).standard_normal((2, 4, 6, 3)).astype(np.float32)
    r1 = ha.apply_dl_model(m, [{"image": v} for v in x], [])
    r2 = ha.apply_dl_model(m2, [{"image": v} for v in x], [])
    for a, b in zip(r1, r2):
        assert list(a["classification_class_ids"]) == list(b["classification_class_ids"])
        np.testing.assert_allclose(a["classification_confidences"],
                                   b["classification_confidences"], atol=1e-6, rtol=0)


def test_pytorch_pixel_shuffle_sigmoid_tanh_import_matches_onnxruntime(tmp_path):
    torch = pytest.importorskip("torch")
    import io
    import warnings

    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Tanh(), nn.PixelShuffle(2),
                        nn.Conv2d(4, 8, 1), nn.Sigmoid(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 4)).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 8, 8),), buf, opset_version=17, dynamo=False,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    path = tmp_path / "t.onnx"
    path.write_bytes(buf.getvalue())
    assert "DepthToSpace" in {nd.op_type for nd in onnx.load(str(path)).graph.node}
    m = ha.read_dl_model(str(path))
    x = np.random.default_rng(2).standard_normal((3, 3, 8, 8)).astype(np.float32)
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    e = np.exp(logits - logits.max(1, keepdims=True))
    want = e / e.sum(1, keepdims=True)
    ids = ha.get_dl_model_param(m, "class_ids")
    res = ha.apply_dl_model(m, [{"image": np.ascontiguousarray(v.transpose(1, 2, 0))} for v in x],
                            [])
    got = np.array([[dict(zip(r["classification_class_ids"],
                              r["classification_confidences"]))[k] for k in ids] for r in res])
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("node, why", [
    (helper.make_node("LRN", ["x"], ["r"], name="n", size=4), "odd"),
    (helper.make_node("DepthToSpace", ["x"], ["r"], name="n", blocksize=2), "blocksize"),
    (helper.make_node("Transpose", ["x"], ["r"], name="n", perm=[1, 0, 2, 3]), "batch"),
    (helper.make_node("ReduceL2", ["x"], ["r"], name="n", axes=[0, 1]), "axes 1"),
    (helper.make_node("ReduceMax", ["x"], ["r"], name="n", axes=[2]), "channels"),
    (helper.make_node("MatMul", ["x", "x"], ["r"], name="n"), "do not fit"),
])
def test_bad_imports_raise_7801(node, why, tmp_path):
    # 3 channels: not divisible by blocksize² = 4; 8 × 6 matrices: x · x does not fit
    gap = helper.make_node("GlobalAveragePool", ["r"], ["y"], name="gap")
    g = helper.make_graph([node, gap], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    mdl = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    mdl.ir_version = 8
    path = tmp_path / "bad.onnx"
    path.write_bytes(mdl.SerializeToString())
    with pytest.raises(ha.HOperatorError) as info:
        ha.read_dl_model(str(path))
    assert info.value.error_code == 7801 and why in info.value.message


def _mm_net(img):
    q, k = _conv(img, "q", 8), _conv(img, "k", 8)
    return ha.create_dl_layer_matmul(q, k, "mm", ["transpose_b"], ["true"])


READ_BACK = {
    "permute": (lambda img: ha.create_dl_layer_permutation(_conv(img, "c", 4), "p", [1, 2, 0, 3],
                                                           [], []), {"permute"}),
    "reduce_sum": (lambda img: ha.create_dl_layer_reduce(_conv(img, "c", 4), "r", "sum", [0],
                                                         [], []), {"reduce"}),
    "reduce_mean_c": (lambda img: ha.create_dl_layer_reduce(_conv(img, "c", 4), "r", "mean",
                                                            [2, 1], [], []), {"reduce"}),
    "reduce_l2": (lambda img: ha.create_dl_layer_reduce(_conv(img, "c", 4), "r", "norm_l2",
                                                        [2], [], []), {"reduce"}),
    "depth_max_value": (lambda img: ha.create_dl_layer_depth_max(_conv(img, "c", 4), "d",
                                                                 "value", [], [])[1],
                        {"depth_max"}),
    "matmul": (_mm_net, {"matmul", "permute"}),
}


@pytest.mark.parametrize("case", sorted(READ_BACK))
def test_export_reads_back(case, tmp_path):
    build, want = READ_BACK[case]
    m = _classifier(build(_img(c=3)))
    path = str(tmp_path / "x.onnx")
    ha.write_dl_model(m, path)
    m2 = ha.read_dl_model(path)
    assert want <= {nd["op"] for nd in m2.spec}, m2.spec
    x = np.random.default_rng(3).standard_normal((2, 4, 6, 3)).astype(np.float32)
    r1 = ha.apply_dl_model(m, [{"image": v} for v in x], [])
    r2 = ha.apply_dl_model(m2, [{"image": v} for v in x], [])
    for a, b in zip(r1, r2):
        assert list(a["classification_class_ids"]) == list(b["classification_class_ids"])
        np.testing.assert_allclose(a["classification_confidences"],
                                   b["classification_confidences"], atol=1e-6, rtol=0)

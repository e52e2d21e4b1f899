"""Layer activations and gradients, Grad-CAM heatmaps (docs/introspection.md), against a
PyTorch twin of the same network and weights (tests/torch_twin.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import halcdl as ha
from torch_twin import from_model, images_to_nchw

pytestmark = pytest.mark.filterwarnings("ignore::halcdl.NotPretrainedWarning")


def _code(info) -> int:
    return info.value.error_code


def _model(size=32, k=3, seed=5):
    ha.set_system("seed_rand", seed)
    m = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    ha.set_dl_model_param(m, "image_dimensions", [size, size, 3])
    ha.set_dl_model_param(m, "class_ids", list(range(k)))
    ha.set_dl_model_param(m, "batch_size", 2)
    # non-trivial running statistics, so inference-mode batch norm differs from training mode
    rng = np.random.default_rng(seed)
    for n in m.core.param_names():
        if n.endswith("running_mean"):
            m.core.set_param(n, rng.standard_normal(m.core.get_param(n).shape).astype(np.float32) * .1)
        if n.endswith("running_var"):
            m.core.set_param(n, rng.uniform(.5, 2, m.core.get_param(n).shape).astype(np.float32))
    return m


def _samples(n, size=32, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return [{"image": rng.standard_normal((size, size, 3)).astype(np.float32),
             "image_label_id": int(rng.integers(0, k))} for _ in range(n)]


def _nchw(obj) -> np.ndarray:
    return np.stack([np.asarray(im).transpose(2, 0, 1) for im in obj])


def _state(m):
    st = m.core.get_state()
    return ({n: np.array(m.core.get_param(n)) for n in m.core.param_names()},
            {k: np.array(v) if isinstance(v, (list, np.ndarray)) else v for k, v in dict(st).items()})


def _same_state(a, b):
    for n in a[0]:
        np.testing.assert_array_equal(a[0][n], b[0][n], err_msg=n)
    for k in a[1]:
        np.testing.assert_array_equal(a[1][k], b[1][k], err_msg=k)


def test_activations_after_apply_any_layer_match_pytorch():
    m = _model()
    s = _samples(5)
    ha.apply_dl_model(m, s, [])
    twin = from_model(m).eval()
    twin.record = {}
    with torch.no_grad():
        twin(images_to_nchw(s[4:]))  # the last batch of the call: batch_size 2, 5 samples
    for layer in ("conv1", "bn3", "relu5", "pool2", "conv7"):
        got = ha.get_dl_model_layer_activations(m, layer)
        assert len(got) == 1 and got[0].dtype == np.float32
        np.testing.assert_allclose(_nchw(got), twin.record[layer].numpy(), rtol=1e-4, atol=1e-4,
                                   err_msg=layer)
    # the layers read are kept from now on; the outputs of the model did not change
    assert set(ha.get_dl_model_param(m, "keep_layer_outputs")) == {"conv1", "bn3", "relu5",
                                                                   "pool2", "conv7"}
    got = ha.apply_dl_model(m, s, [])
    with torch.no_grad():
        probs = torch.softmax(twin(images_to_nchw(s)), 1).numpy()
    for i, r in enumerate(got):
        np.testing.assert_allclose(r["classification_confidences"],
                                   probs[i][r["classification_class_ids"]], rtol=1e-4, atol=1e-5)


def test_activations_and_gradients_after_a_train_step_match_pytorch():
    m = _model()
    ha.set_dl_model_param(m, "keep_layer_outputs", ["conv2", "relu4", "classifier", "gap"])
    s = _samples(2, seed=3)
    twin = from_model(m).train()  # weights before the step
    twin.record = {}
    ha.train_dl_model_batch(m, s)
    x = images_to_nchw(s)
    logits = twin(x)
    for t in twin.record.values():
        if t.requires_grad:
            t.retain_grad()
    F.cross_entropy(logits, torch.tensor([d["image_label_id"] for d in s])).backward()
    for layer in ("conv2", "relu4", "classifier", "gap"):
        a = _nchw(ha.get_dl_model_layer_activations(m, layer))
        g = _nchw(ha.get_dl_model_layer_gradients(m, layer))
        np.testing.assert_allclose(a, twin.record[layer].detach().numpy(), rtol=1e-4, atol=1e-4,
                                   err_msg=layer)
        ref = twin.record[layer].grad.numpy()
        np.testing.assert_allclose(g, ref, rtol=1e-3, atol=1e-6 + 1e-3 * np.abs(ref).max(),
                                   err_msg=layer)
    # not kept before the step: not available (the weights changed since)
    with pytest.raises(ha.HOperatorError) as e:
        ha.get_dl_model_layer_gradients(m, "conv3")
    assert _code(e) == 7788
    with pytest.raises(ha.HOperatorError) as e:
        ha.get_dl_model_layer_activations(m, "conv3")
    assert _code(e) == 7788


def _torch_grad_cam(twin, x, layer, cls, size):
    twin.eval()
    twin.record = {}
    logits = twin(x)
    a = twin.record[layer]
    a.retain_grad()
    logits[torch.arange(len(x)), cls].sum().backward()
    alpha = a.grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((alpha * a).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0]
    mx = cam.flatten(1).max(1).values
    return (cam / mx.clamp_min(1e-30)[:, None, None]).detach().numpy(), logits.detach()


@pytest.mark.parametrize("target", [[], [2]])
def test_grad_cam_matches_pytorch_and_leaves_the_model_unchanged(target):
    m = _model()
    s = _samples(3, seed=9)
    ha.train_dl_model_batch(m, s[:2])  # optimizer state present
    before = _state(m)
    ref_apply = ha.apply_dl_model(m, s, [])
    twin = from_model(m)
    res = ha.gen_dl_model_heatmap(m, s, "grad_cam", target, {"target_conv_layer": "conv6"})
    x = images_to_nchw(s)
    with torch.no_grad():
        top = twin.eval()(x).argmax(1)
    cls = top if not target else torch.full((3,), target[0])
    ref, _ = _torch_grad_cam(twin, x, "conv6", cls, (32, 32))
    for i, r in enumerate(res):
        key = f"heatmap_image_class_{int(cls[i])}"
        hm = r["heatmap_grad_cam"][key]
        assert hm.shape == (32, 32) and hm.dtype == np.float32
        np.testing.assert_allclose(hm, ref[i], atol=2e-4)
        assert r["classification_class_ids"] == ref_apply[i]["classification_class_ids"]
    _same_state(before, _state(m))
    after = ha.apply_dl_model(m, s, [])
    for a, b in zip(ref_apply, after):
        assert a == b
    # default target layer: the deepest convolution with a spatial output (the 1x1 "classifier" convolution before the global pooling here)
    d = ha.gen_dl_model_heatmap_s(m, s[0], "grad_cam", [], {})
    ref, _ = _torch_grad_cam(twin, x[:1], "classifier", top[:1], (32, 32))
    np.testing.assert_allclose(d["heatmap_grad_cam"][f"heatmap_image_class_{int(top[0])}"],
                               ref[0], atol=2e-4)


def test_introspection_bad_input():
    m = _model()
    s = _samples(2)
    before = _state(m)
    cases = [
        (lambda: ha.get_dl_model_layer_activations(m, "nope"), 1302),
        (lambda: ha.get_dl_model_layer_activations(m, "conv1"), 7788),  # nothing ran yet
        (lambda: ha.get_dl_model_layer_activations(m, ["conv1", "conv2"]), 1402),
        (lambda: ha.set_dl_model_param(m, "keep_layer_outputs", ["nope"]), 1303),
        (lambda: ha.gen_dl_model_heatmap(m, s, "nope", [], {}), 1303),
        (lambda: ha.gen_dl_model_heatmap(m, s, "grad_cam", [7], {}), 1304),
        (lambda: ha.gen_dl_model_heatmap(m, s, "grad_cam", [0, 1], {}), 1304),
        (lambda: ha.gen_dl_model_heatmap(m, s, "grad_cam", [], {"x": 1}), 1305),
        (lambda: ha.gen_dl_model_heatmap(m, s, "grad_cam", [], {"target_conv_layer": "nope"}), 1305),
        (lambda: ha.gen_dl_model_heatmap(m, 3, "grad_cam", [], {}), 1202),
    ]
    for call, code in cases:
        with pytest.raises(ha.HOperatorError) as e:
            call()
        assert _code(e) == code, call
    _same_state(before, _state(m))
    assert ha.get_dl_model_param(m, "keep_layer_outputs") == []


# --------------------------------------------------------------------------------------------
# devices and optimize_dl_model_for_inference
# --------------------------------------------------------------------------------------------
def test_set_dl_device_param_has_nothing_settable():
    cpu = ha.query_available_dl_devices_s(["runtime"], ["cpu"])
    assert ha.get_dl_device_param_s(cpu, "conversion_supported") == "true"
    assert ha.get_dl_device_param_s(cpu, "settable_device_params") == {}
    for call, code in [
        (lambda: ha.set_dl_device_param(cpu, "type", "gpu"), 7911),   # read-only
        (lambda: ha.set_dl_device_param(cpu, "nope", 1), 7911),
        (lambda: ha.set_dl_device_param(cpu, ["type", "id"], ["gpu"]), 1402),
        (lambda: ha.set_dl_device_param("cpu", "type", "gpu"), 1201),
        (lambda: ha.set_dl_device_param(cpu, 3, "gpu"), 1202),
    ]:
        with pytest.raises(ha.HOperatorError) as e:
            call()
        assert _code(e) == code
    assert ha.get_dl_device_param_s(cpu, "type") == "cpu"


def _digits_model():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    ha.set_system("seed_rand", 3)
    X, y = load_digits(return_X_y=True)
    X = (X.reshape(-1, 8, 8).astype(np.float32) - 8.0) / 8.0
    xtr, xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    x = ha.create_dl_layer_input("image", [8, 8, 1], [], [])
    x = ha.create_dl_layer_convolution(x, "conv1", 3, 1, 1, 16, 1, "half_kernel_size", "none",
                                       "bias_term", "false")
    x = ha.create_dl_layer_batch_normalization(x, "bn1", "auto", 1e-5, "relu", [], [])
    x = ha.create_dl_layer_pooling(x, "pool1", 2, 2, "none", "maximum", [], [])
    x = ha.create_dl_layer_convolution(x, "conv2", 3, 1, 1, 32, 1, "half_kernel_size", "relu",
                                       [], [])
    x = ha.create_dl_layer_dense(x, "fc", 10, [], [])
    m = ha.create_dl_model(ha.create_dl_layer_softmax(x, "softmax", [], []))
    ha.set_dl_model_param(m, "solver_type", "adam")
    ha.set_dl_model_param(m, "learning_rate", 0.003)
    ha.set_dl_model_param(m, "batch_size", 32)
    rng = np.random.default_rng(0)
    for _ in range(2):
        perm = rng.permutation(len(xtr))
        for i in range(0, len(perm) - 31, 32):
            ha.train_dl_model_batch(m, [{"image": xtr[j], "image_label_id": int(ytr[j])}
                                        for j in perm[i:i + 32]])
    train = [{"image": xtr[j], "image_label_id": int(ytr[j])} for j in range(len(xtr))]
    test = [{"image": im, "image_label_id": int(t)} for im, t in zip(xte, yte)]
    return m, train, test


def test_optimize_for_inference_int8_simulated_on_digits():
    m, train, test = _digits_model()
    cpu = ha.query_available_dl_devices_s(["runtime"], ["cpu"])
    w_before = {n: np.array(m.core.get_param(n)) for n in m.core.param_names()}
    calib = train[:200]
    q, rep = ha.optimize_dl_model_for_inference(m, cpu, "int8", calib, {})
    # the input model is unchanged
    for n, v in w_before.items():
        np.testing.assert_array_equal(m.core.get_param(n), v)
    assert ha.get_dl_model_param_s(q, "precision_is_converted") == "true"
    assert rep["int8_mode"].startswith("simulated")
    # weights: int8 levels of a per-output-channel scale
    for layer in ("conv1", "conv2", "fc"):
        w = np.asarray(q.core.get_param(f"{layer}.weight"))
        s = np.asarray(rep["weight_scales"][layer], dtype=np.float32)
        lv = w.reshape(len(s), -1) / s[:, None]
        np.testing.assert_allclose(lv, np.rint(lv), atol=1e-3)
        assert np.abs(lv).max() <= 127.001
        w0 = w_before[f"{layer}.weight"].reshape(len(s), -1)
        np.testing.assert_allclose(s, np.abs(w0).max(1) / 127, rtol=1e-6)
    # activation scales: max |input| / 127 over the calibration samples (the image for conv1)
    amax = max(float(np.abs(d["image"]).max()) for d in calib)
    assert rep["activation_scales"]["image"] == pytest.approx(amax / 127, rel=1e-6)
    assert set(rep["activation_scales"]) == {"image", "pool1", "conv2/activation"}
    # accuracy on the held-out digits changes by at most one point
    def acc(model):
        res = ha.apply_dl_model(model, test, [])
        return 100 * np.mean([r["classification_class_ids"][0] == d["image_label_id"]
                              for r, d in zip(res, test)])
    a0, a1 = acc(m), acc(q)
    assert a0 > 90
    assert abs(a1 - a0) <= 1.0, (a0, a1)
    assert rep["accuracy_change_points"] == pytest.approx(
        100 * (rep["accuracy_converted"] - rep["accuracy_original"]))
    # float32: an identical copy; bfloat16: per the hardware; float16: not on the CPU
    f, rep32 = ha.optimize_dl_model_for_inference(m, [cpu], "float32", test[:50], [])
    assert rep32["top1_agreement"] == 1.0 and rep32["accuracy_change_points"] == 0
    from halcdl._native import core
    if core.bf16_supported():
        b, repb = ha.optimize_dl_model_for_inference(m, cpu, "bfloat16", test, {})
        assert ha.get_dl_model_param_s(b, "precision") == "bfloat16"
        assert abs(repb["accuracy_change_points"]) <= 1.0
    else:
        with pytest.raises(ha.HOperatorError) as e:
            ha.optimize_dl_model_for_inference(m, cpu, "bfloat16", test, {})
        assert _code(e) == 7742
    for call, code in [
        (lambda: ha.optimize_dl_model_for_inference(m, cpu, "float16", test, {}), 7742),
        (lambda: ha.optimize_dl_model_for_inference(m, cpu, "int4", test, {}), 1303),
        (lambda: ha.optimize_dl_model_for_inference(m, "cpu", "int8", test, {}), 1202),
        (lambda: ha.optimize_dl_model_for_inference(m, cpu, "int8", [], {}), 1304),
        (lambda: ha.optimize_dl_model_for_inference(m, cpu, "int8", [3], {}), 1204),
        (lambda: ha.optimize_dl_model_for_inference(m, cpu, "int8", test, {"a": 1}), 1305),
    ]:
        with pytest.raises(ha.HOperatorError) as e:
            call()
        assert _code(e) == code
    for n, v in w_before.items():
        np.testing.assert_array_equal(m.core.get_param(n), v)


def test_grad_cam_through_dropout_and_fused_relu_is_inference_mode():
    ha.set_system("seed_rand", 11)
    x = ha.create_dl_layer_input("image", [12, 12, 2], [], [])
    x = ha.create_dl_layer_convolution(x, "c1", 3, 1, 1, 8, 1, "half_kernel_size", "relu", [], [])
    x = ha.create_dl_layer_dropout(x, "drop", 0.5, [], [])
    x = ha.create_dl_layer_convolution(x, "c2", 3, 1, 2, 6, 1, "none", "relu", [], [])
    x = ha.create_dl_layer_dense(x, "fc", 4, [], [])
    m = ha.create_dl_model(ha.create_dl_layer_softmax(x, "softmax", [], []))
    rng = np.random.default_rng(1)
    s = [{"image": rng.standard_normal((12, 12, 2)).astype(np.float32)} for _ in range(3)]
    a = ha.gen_dl_model_heatmap(m, s, "grad_cam", [1], {"target_conv_layer": "c2"})
    b = ha.gen_dl_model_heatmap(m, s, "grad_cam", [1], {"target_conv_layer": "c2"})
    twin = from_model(m)
    ref, _ = _torch_grad_cam(twin, images_to_nchw(s), "c2/activation", torch.full((3,), 1),
                             (12, 12))
    for i in range(3):
        ha_map = a[i]["heatmap_grad_cam"]["heatmap_image_class_1"]
        np.testing.assert_array_equal(ha_map, b[i]["heatmap_grad_cam"]["heatmap_image_class_1"])
        np.testing.assert_allclose(ha_map, ref[i], atol=2e-4)



class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0) * (g > 0)


def test_guided_grad_cam_matches_pytorch():
    m = _model()
    s = _samples(2, seed=4)
    before = _state(m)
    res = ha.gen_dl_model_heatmap(m, s, "guided_grad_cam", [1], {"target_conv_layer": "conv5"})
    twin = from_model(m)
    x = images_to_nchw(s)
    cam, _ = _torch_grad_cam(twin, x, "conv5", torch.full((2,), 1), (32, 32))
    twin.record = None
    twin.relu_fn = lambda name, t: _GuidedReLU.apply(t)
    xg = x.clone().requires_grad_(True)
    twin(xg)[:, 1].sum().backward()
    ref = (xg.grad.numpy() * cam[:, None]).transpose(0, 2, 3, 1)
    for i, r in enumerate(res):
        got = r["heatmap_guided_grad_cam"]["heatmap_image_class_1"]
        assert got.shape == (32, 32, 3) and got.dtype == np.float32
        np.testing.assert_allclose(got, ref[i], rtol=1e-3, atol=1e-4 * np.abs(ref).max())
    _same_state(before, _state(m))

"""The GPU backend against its CPU twin (every test is `gpu`-marked: skipped unless halcdl
reports a GPU; run them on a GPU machine with benchmarks/gpu_check.sh).

- every op, forward and backward, through core.run_op(device=0) vs the CPU run_op;
- a 5-step train sequence (momentum, weight_prior, class weights, multiplier; SGD and Adam)
  and a segmentation sequence, GPU vs CPU;
- determinism: two runs with cudnn_deterministic give bit-identical weights;
- CuPy images used in place (same weights as numpy images), CuPy outputs;
- moving a model CPU → GPU → CPU mid-training continues the same run;
- out of GPU memory → 6021, and the model still trains on a smaller batch;
- object detection (rectangle1): train steps (focal + Huber loss kernels, tied heads, SGD and
  Adam, a multiplier) and apply_dl_model (raw head outputs and decoded detections) vs the CPU.

TF32 is switched off (set_system('tf32', 'false')) so the GPU computes full float32 products
and the CPU tolerances apply.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from helpers import assert_close, make_samples

import halcdl as ha
from halcdl._native import core

pytestmark = pytest.mark.gpu

FWD = dict(atol=1e-5, rtol=1e-4)
BWD = dict(atol=1e-4, rtol=1e-3)


@pytest.fixture(autouse=True)
def _full_fp32():
    ha.set_system("tf32", "false")
    ha.set_system("cudnn_deterministic", "false")
    yield
    ha.set_system("tf32", "true")
    ha.set_system("cudnn_deterministic", "false")


def node(op, n_inputs=1, **attrs):
    return {"name": "op", "op": op, "inputs": [f"in{i}" for i in range(n_inputs)], **attrs}


def randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ---------------------------------------------------------------------------------------
# 1. every op: GPU twin vs CPU twin
def _op_cases():
    r = np.random.default_rng(0)
    cases = []
    for (n, c, h, w, o, k, s, p, d, g, b) in [
        (2, 3, 9, 9, 4, 3, 1, 1, 1, 1, True),
        (2, 4, 10, 11, 6, 3, 2, 0, 1, 1, False),
        (1, 4, 12, 13, 8, [3, 5], [2, 1], [1, 2], 1, 2, True),
        (2, 8, 8, 8, 8, 3, 1, 1, 1, 8, True),          # depthwise
        (2, 8, 9, 9, 16, 3, 2, 1, 1, 8, False),        # depthwise ×2
        (2, 3, 11, 11, 5, 3, 1, 2, 2, 1, True),        # dilation
        (2, 8, 7, 7, 16, 1, 2, 0, 1, 1, False),
        (1, 3, 16, 16, 8, 7, 2, 3, 1, 1, False),
    ]:
        kh, kw = (k if isinstance(k, list) else [k, k])
        prm = {"weight": randn(r, o, c // g, kh, kw, scale=(1.0 / (c // g * kh * kw)) ** 0.5)}
        if b:
            prm["bias"] = randn(r, o)
        cases.append((f"conv{len(cases)}", node("conv", out_channels=o, kernel=k, stride=s, pad=p,
                                                dilation=d, groups=g, bias=b),
                      [randn(r, n, c, h, w)], prm))
    for i, case in enumerate([dict(out_channels=4, kernel=2, stride=2),
                              dict(out_channels=3, kernel=3, stride=2, pad=1, output_padding=1),
                              dict(out_channels=5, kernel=3, stride=1, pad=1, bias=False)]):
        prm = {"weight": randn(r, 6, case["out_channels"], case["kernel"], case["kernel"], scale=0.2)}
        if case.get("bias", True):
            prm["bias"] = randn(r, case["out_channels"], scale=0.5)
        cases.append((f"deconv{i}", node("deconv", **case), [randn(r, 2, 6, 5, 6)], prm))
    for shape in [(4, 5, 6, 7), (8, 3, 1, 1)]:
        c = shape[1]
        prm = {"scale": randn(r, c) + 1.0, "shift": randn(r, c), "running_mean": randn(r, c),
               "running_var": np.abs(randn(r, c)) + 0.5}
        cases.append((f"bn{shape}", node("bn", eps=1e-5), [randn(r, *shape) * 2 + 0.5], prm))
    x = randn(r, 2, 5, 9, 8)
    for op in ("relu", "relu6", "softmax"):
        cases.append((op, node(op), [x * 4], {}))
    cases.append(("maxpool", node("maxpool", kernel=3, stride=2, pad=1), [x], {}))
    cases.append(("avgpool", node("avgpool", kernel=3, stride=2, pad=1), [x], {}))
    cases.append(("gap", node("gap"), [x], {}))
    cases.append(("fc2d", node("fc", out_features=7, bias=True, in_features=5),
                  [randn(r, 4, 5, 1, 1)], {"weight": randn(r, 7, 5), "bias": randn(r, 7)}))
    cases.append(("fc4d", node("fc", out_features=6, bias=False, in_features=5 * 3 * 4),
                  [randn(r, 3, 5, 3, 4)], {"weight": randn(r, 6, 60, scale=0.2)}))
    cases.append(("add", node("add", 2), [x, randn(r, 2, 5, 9, 8)], {}))
    cases.append(("concat", node("concat", 3),
                  [randn(r, 2, 3, 4, 5), randn(r, 2, 1, 4, 5), randn(r, 2, 6, 4, 5)], {}))
    cases.append(("up_nearest", node("upsample_nearest", scale=2), [randn(r, 2, 3, 4, 5)], {}))
    cases.append(("up_bilinear", node("upsample_bilinear", scale=2), [randn(r, 2, 3, 4, 5)], {}))
    cases.append(("up_bilinear3", node("upsample_bilinear", scale=3), [randn(r, 1, 2, 3, 4)], {}))
    # the layer API's ops (cpu/shape_ops.cpp, cuda/ops_extra.cpp)
    for op in ("sigmoid", "tanh"):
        cases.append((op, node(op), [x * 3], {}))
    cases.append(("d2s_crd", node("depth_to_space", block_size=2), [randn(r, 2, 8, 3, 4)], {}))
    cases.append(("d2s_dcr", node("depth_to_space", block_size=3, crd=False), [randn(r, 1, 18, 2, 3)], {}))
    cases.append(("resize_nearest", node("resize_nearest", height=7, width=3), [randn(r, 2, 3, 4, 5)], {}))
    cases.append(("resize_bilinear", node("resize_bilinear", height=3, width=9), [randn(r, 2, 3, 5, 4)], {}))
    cases.append(("reshape", node("reshape", channels=4, height=5, width=3), [randn(r, 2, 3, 4, 5)], {}))
    cases.append(("permute_hw", node("permute", perm=[0, 2, 1]), [randn(r, 2, 3, 4, 5)], {}))
    cases.append(("permute_cwh", node("permute", perm=[2, 0, 1], channels=5), [randn(r, 2, 3, 4, 5)], {}))
    cases.append(("depth_max", node("depth_max"), [randn(r, 2, 7, 4, 5)], {}))
    cases.append(("depth_argmax", node("depth_max", argmax=True), [randn(r, 2, 7, 4, 5)], {}))
    cases.append(("lrn", node("lrn", size=5, alpha=1e-2, beta=0.75, k=2.0), [randn(r, 2, 7, 4, 5) * 2], {}))
    cases.append(("reduce_sum_c", node("reduce", mode=0, axes=[1]), [randn(r, 2, 7, 4, 5)], {}))
    cases.append(("reduce_mean_hw", node("reduce", mode=1, axes=[2, 3]), [randn(r, 2, 7, 4, 5)], {}))
    cases.append(("reduce_l2_cw", node("reduce", mode=2, axes=[1, 3]), [randn(r, 2, 7, 4, 5)], {}))
    cases.append(("matmul", node("matmul", 2), [randn(r, 2, 3, 4, 5), randn(r, 2, 3, 5, 6)], {}))
    cases.append(("matmul_tt", node("matmul", 2, trans_a=True, trans_b=True),
                  [randn(r, 2, 3, 5, 4), randn(r, 2, 3, 6, 5)], {}))
    # detection_output: two levels of (class head, box head), K = 3, A = 2
    cases.append(("detection_output", node("detection_output", 4, num_classes=3, num_anchors=2,
                                           box_values=4),
                  [randn(r, 2, 6, 4, 5), randn(r, 2, 8, 4, 5), randn(r, 2, 6, 2, 3),
                   randn(r, 2, 8, 2, 3)], {}))
    return cases


OP_CASES = _op_cases()


@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("case", OP_CASES, ids=[c[0] for c in OP_CASES])
def test_op_matches_cpu(case, training):
    name, nd, inputs, params = case
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    out_c, _, _ = core.run_op(nd, inputs, params, None, training)
    go = rng.standard_normal(np.asarray(out_c).shape).astype(np.float32)
    out_c, gin_c, gpar_c = core.run_op(nd, inputs, params, go if training else None, training)
    out_g, gin_g, gpar_g = core.run_op(nd, inputs, params, go if training else None, training,
                                       device=0, deterministic=True, tf32=False)
    assert_close(out_g, out_c, what=f"{name} forward", **FWD)
    if not training:
        return
    assert len(gin_g) == len(gin_c)
    for i, (a, b) in enumerate(zip(gin_g, gin_c)):
        assert_close(a, b, what=f"{name} d/d input{i}", **BWD)
    for k, v in gpar_c.items():
        if k in ("mask",):
            continue
        assert k in gpar_g, f"{name}: the GPU gave no {k!r}"
        assert_close(gpar_g[k], v, what=f"{name} {k}", **BWD)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout(p):
    rng = np.random.default_rng(3)
    x = randn(rng, 4, 6, 5, 7)
    go = randn(rng, 4, 6, 5, 7)
    out, gin, extra = core.run_op(node("dropout", p=p), [x], {}, go, True, device=0)
    mask = np.asarray(extra["mask"])
    keep = 1.0 / (1.0 - p)
    assert set(np.unique(mask)).issubset({0.0, np.float32(keep)})
    assert abs((mask == 0).mean() - p) < 0.05
    assert_close(out, x * mask, what="dropout forward", atol=1e-6, rtol=1e-6)
    assert_close(gin[0], go * mask, what="dropout backward", atol=1e-6, rtol=1e-6)
    out_i, _, _ = core.run_op(node("dropout", p=p), [x], {}, None, False, device=0)
    assert_close(out_i, x, what="dropout inference", atol=0, rtol=0)


# ---------------------------------------------------------------------------------------
# 2. train sequences: GPU vs CPU
SIZE, BATCH, MULT, STEPS = 48, 4, 2, 5
CLASS_IDS = [0, 1, 2]


def _model(runtime, solver="sgd", name="pretrained_dl_classifier_compact.hdl", seed=5):
    ha.set_system("seed_rand", seed)
    m = ha.read_dl_model(name)
    for k, v in [("image_dimensions", [SIZE, SIZE, 3]), ("class_ids", CLASS_IDS),
                 ("class_weights", [1.0, 2.5, 0.5]), ("batch_size", BATCH),
                 ("batch_size_multiplier", MULT), ("learning_rate", 1e-3 if solver == "sgd" else 1e-4),
                 ("momentum", 0.9), ("weight_prior", 1e-3), ("solver_type", solver),
                 # Adam's m/sqrt(v) turns a near-zero gradient's rounding noise into a ±lr step;
                 # a larger epsilon (as tests/test_training_golden.py uses) keeps the comparison
                 # about the engine rather than the sign of noise
                 ("adam_epsilon", 1e-2),
                 ("runtime", runtime)]:
        ha.set_dl_model_param(m, k, v)
    return m


def _batches(n_steps=STEPS, seed=0):
    rng = np.random.default_rng(seed)
    return [make_samples(BATCH * MULT, SIZE, SIZE, 3, CLASS_IDS, rng) for _ in range(n_steps)]


def _params(m):
    return {n: np.asarray(m.core.get_param(n)) for n in m.core.param_names()}


@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("name", ["pretrained_dl_classifier_compact.hdl",
                                  "pretrained_dl_classifier_resnet18.hdl"])
def test_train_sequence_matches_cpu(solver, name):
    cpu, gpu = _model("cpu", solver, name), _model("gpu", solver, name)
    for b in _batches():
        lc = ha.train_dl_model_batch(cpu, b)["total_loss"]
        lg = ha.train_dl_model_batch(gpu, b)["total_loss"]
        assert_close(np.ravel(lg), np.ravel(lc), atol=1e-5, rtol=1e-4, what="total_loss")
    # Tolerances from the CPU alone: the same 5 steps from weights nudged by 1e-7 (relative)
    # move resnet18's weights by up to 1.2e-4 and Adam's m1 (a gradient average) by up to
    # 5.6e-3; a GPU's other summation orders are a nudge of that size. SGD's m1 is a velocity
    # (lr times smaller).
    pc, pg = _params(cpu), _params(gpu)
    for n in pc:
        assert_close(pg[n], pc[n], atol=3e-4, rtol=1e-3, what=f"{name} {solver} {n}")
    sc, sg = cpu.core.get_state(), gpu.core.get_state()
    assert_close(sg["m1"], sc["m1"], atol=1e-2 if solver == "adam" else 1e-4, rtol=1e-3,
                 what="optimizer state m1")
    test = make_samples(5, SIZE, SIZE, 3, CLASS_IDS, np.random.default_rng(9))
    for rc, rg in zip(ha.apply_dl_model(cpu, test, []), ha.apply_dl_model(gpu, test, [])):
        cc = dict(zip(rc["classification_class_ids"], rc["classification_confidences"]))
        cg = dict(zip(rg["classification_class_ids"], rg["classification_confidences"]))
        assert_close([cg[c] for c in CLASS_IDS], [cc[c] for c in CLASS_IDS], atol=1e-4, rtol=1e-3,
                     what="confidences")


def test_segmentation_matches_cpu():
    from test_segmentation import seg_batches  # noqa: PLC0415

    def make(runtime):
        ha.set_system("seed_rand", 3)
        m = ha.read_dl_model("pretrained_dl_segmentation_compact.hdl")
        for k, v in [("image_dimensions", [32, 32, 3]), ("class_ids", [2, 5, 7]),
                     ("ignore_class_ids", [255]), ("batch_size", 2), ("batch_size_multiplier", 2),
                     ("learning_rate", 0.01), ("weight_prior", 1e-4), ("runtime", runtime)]:
            ha.set_dl_model_param(m, k, v)
        return m
    cpu, gpu = make("cpu"), make("gpu")
    for b in seg_batches(4, 3, 4, 32, 32, 3, [2, 5, 7], ignore=(255,)):
        lc = ha.train_dl_model_batch(cpu, b)["total_loss"]
        lg = ha.train_dl_model_batch(gpu, b)["total_loss"]
        assert_close(np.ravel(lg), np.ravel(lc), atol=1e-5, rtol=1e-4, what="seg total_loss")
    pc, pg = _params(cpu), _params(gpu)
    for n in pc:
        assert_close(pg[n], pc[n], atol=1e-4, rtol=1e-3, what=f"seg {n}")
    test = seg_batches(8, 1, 3, 32, 32, 3, [2, 5, 7], ignore=())[0]
    rc, rg = ha.apply_dl_model(cpu, test, []), ha.apply_dl_model(gpu, test, [])
    for a, b in zip(rc, rg):
        agree = (np.asarray(a["segmentation_image"]) == np.asarray(b["segmentation_image"])).mean()
        assert agree > 0.999
        assert_close(b["segmentation_confidence"], a["segmentation_confidence"], atol=1e-4,
                     rtol=1e-3, what="seg confidence")


# ---------------------------------------------------------------------------------------
# 3. determinism
@pytest.mark.parametrize("name", ["pretrained_dl_classifier_resnet18.hdl",
                                  "pretrained_dl_classifier_mobilenet_v2.hdl"])
def test_deterministic_runs_are_bit_identical(name):
    ha.set_system("cudnn_deterministic", "true")
    ha.set_system("tf32", "true")  # the fast path must be deterministic too
    runs = []
    for _ in range(2):
        m = _model("gpu", "sgd", name)
        for b in _batches(3, seed=1):
            ha.train_dl_model_batch(m, b)
        runs.append(_params(m))
    for n in runs[0]:
        assert np.array_equal(runs[0][n], runs[1][n]), f"{name}: {n} differs between two runs"


# ---------------------------------------------------------------------------------------
# 4. CuPy in and out
def test_cupy_images_used_in_place():
    cp = pytest.importorskip("cupy")
    ha.set_system("cudnn_deterministic", "true")
    a, b = _model("gpu"), _model("gpu")
    for batch in _batches(2, seed=2):
        la = ha.train_dl_model_batch(a, batch)["total_loss"]
        dev = [dict(s, image=cp.asarray(s["image"])) for s in batch]
        lb = ha.train_dl_model_batch(b, dev)["total_loss"]
        assert la == lb
    pa, pb = _params(a), _params(b)
    for n in pa:
        assert np.array_equal(pa[n], pb[n]), n
    test = make_samples(3, SIZE, SIZE, 3, CLASS_IDS, np.random.default_rng(4))
    host = ha.apply_dl_model(a, test, [])
    ha.set_dl_model_param(a, "gpu_outputs", "true")
    dev = ha.apply_dl_model(a, [dict(s, image=cp.asarray(s["image"])) for s in test], [])
    for h, d in zip(host, dev):
        assert isinstance(d["classification_confidences"], cp.ndarray)
        assert_close(cp.asnumpy(d["classification_confidences"]), h["classification_confidences"],
                     atol=1e-6, rtol=1e-5, what="cupy confidences")
        assert cp.asnumpy(d["classification_class_ids"]).tolist() == h["classification_class_ids"]


def test_mixed_host_and_device_images_rejected():
    cp = pytest.importorskip("cupy")
    m = _model("gpu")
    batch = _batches(1)[0]
    batch[0] = dict(batch[0], image=cp.asarray(batch[0]["image"]))
    before = _params(m)
    with pytest.raises(ha.HOperatorError) as e:
        ha.train_dl_model_batch(m, batch)
    assert e.value.error_code == 7736
    after = _params(m)
    assert all(np.array_equal(before[n], after[n]) for n in before)


def test_cupy_images_with_nan_rejected():
    """As for host images: 7736 naming the sample, and nothing changes."""
    cp = pytest.importorskip("cupy")
    m = _model("gpu")
    dev = [dict(s, image=cp.asarray(s["image"])) for s in _batches(1)[0]]
    dev[3]["image"][0, 0, 0] = cp.nan
    before = _params(m)
    for call in (lambda: ha.train_dl_model_batch(m, dev), lambda: ha.apply_dl_model(m, dev, [])):
        with pytest.raises(ha.HOperatorError) as e:
            call()
        assert e.value.error_code == 7736 and "sample 3" in str(e.value), e.value
    after = _params(m)
    assert all(np.array_equal(before[n], after[n]) for n in before)


def test_cupy_on_a_non_blocking_stream():
    """Images written on a non-blocking CuPy stream, outputs read on it: the engine (its own
    stream) sees the images complete and hands back complete outputs."""
    cp = pytest.importorskip("cupy")
    ha.set_system("cudnn_deterministic", "true")
    a, b = _model("gpu"), _model("gpu")
    stream = cp.cuda.Stream(non_blocking=True)
    for batch in _batches(2, seed=5):
        la = ha.train_dl_model_batch(a, batch)["total_loss"]
        with stream:
            dev = [dict(s, image=cp.asarray(s["image"]) * 1.0) for s in batch]
            lb = ha.train_dl_model_batch(b, dev)["total_loss"]
        assert la == lb
    test = make_samples(3, SIZE, SIZE, 3, CLASS_IDS, np.random.default_rng(6))
    host = ha.apply_dl_model(a, test, [])
    ha.set_dl_model_param(b, "gpu_outputs", "true")
    with stream:
        res = ha.apply_dl_model(b, [dict(s, image=cp.asarray(s["image"]) + 0.0) for s in test], [])
        got = [(cp.asnumpy(r["classification_class_ids"]).tolist(),
                cp.asnumpy(r["classification_confidences"])) for r in res]
    for h, (ids, conf) in zip(host, got):
        assert ids == h["classification_class_ids"]
        assert_close(conf, h["classification_confidences"], atol=1e-6, rtol=1e-5,
                     what="stream confidences")


def test_segmentation_gpu_outputs_from_host_images():
    cp = pytest.importorskip("cupy")
    from test_segmentation import seg_batches  # noqa: PLC0415
    ha.set_system("seed_rand", 3)
    m = ha.read_dl_model("pretrained_dl_segmentation_compact.hdl")
    for k, v in [("image_dimensions", [32, 32, 3]), ("class_ids", [2, 5, 7]), ("batch_size", 2),
                 ("runtime", "gpu")]:
        ha.set_dl_model_param(m, k, v)
    test = seg_batches(8, 1, 3, 32, 32, 3, [2, 5, 7], ignore=())[0]
    host = ha.apply_dl_model(m, test, [])
    ha.set_dl_model_param(m, "gpu_outputs", "true")
    dev = ha.apply_dl_model(m, test, [])
    for h, d in zip(host, dev):
        assert isinstance(d["segmentation_image"], cp.ndarray)
        assert np.array_equal(cp.asnumpy(d["segmentation_image"]), h["segmentation_image"])
        assert_close(cp.asnumpy(d["segmentation_confidence"]), h["segmentation_confidence"],
                     atol=1e-6, rtol=1e-5, what="seg confidence")


def test_legacy_classifier_on_gpu():
    """runtime 'gpu' through the legacy operators; results are host values even with the
    model's gpu_outputs on."""
    c = ha.read_dl_classifier("pretrained_dl_classifier_compact.hdl")
    ha.set_dl_classifier_param(c, "classes", ["a", "b"])
    ha.set_dl_classifier_param(c, ["image_dimensions", "batch_size", "runtime"],
                               [[SIZE, SIZE, 3], 2, "gpu"])
    assert c.model.core.device() == 0
    imgs = [s["image"] for s in make_samples(2, SIZE, SIZE, 3, [0, 1], np.random.default_rng(7))]
    ha.train_dl_classifier_batch(imgs, c, ["a", "b"])
    c.model.params["gpu_outputs"] = "true"
    res = ha.apply_dl_classifier(imgs, c)
    conf = ha.get_dl_classifier_result(res, 0, "confidences")
    assert all(isinstance(x, float) for x in conf) and abs(sum(conf) - 1) < 1e-5


# ---------------------------------------------------------------------------------------
# 5. moving between devices mid-training
def test_device_switch_continues_training():
    ref = _model("cpu")
    mov = _model("cpu")
    batches = _batches(6, seed=3)
    for b in batches:
        ha.train_dl_model_batch(ref, b)
    for i, b in enumerate(batches):
        if i == 2:
            gpu = ha.query_available_dl_devices(["runtime"], ["gpu"])[0]
            ha.set_dl_model_param(mov, "device", gpu)
            assert ha.get_dl_model_param(mov, "runtime") == ["gpu"]
        if i == 4:
            ha.set_dl_model_param(mov, "runtime", "cpu")
        ha.train_dl_model_batch(mov, b)
    pr, pm = _params(ref), _params(mov)
    for n in pr:
        assert_close(pm[n], pr[n], atol=1e-4, rtol=1e-3, what=f"switched {n}")
    assert_close(mov.core.get_state()["m1"], ref.core.get_state()["m1"], atol=1e-4, rtol=1e-3,
                 what="switched m1")
    assert mov.core.get_state()["steps"] == ref.core.get_state()["steps"] == 6


def test_write_read_from_gpu(tmp_path):
    m = _model("gpu")
    for b in _batches(2):
        ha.train_dl_model_batch(m, b)
    path = str(tmp_path / "g.hdl")
    ha.write_dl_model(m, path)
    r = ha.read_dl_model(path)
    assert ha.get_dl_model_param(r, "runtime") == ["cpu"]
    pm, pr = _params(m), _params(r)
    for n in pm:
        assert np.array_equal(pm[n], pr[n]), n


# ---------------------------------------------------------------------------------------
# 6. faults
def test_out_of_memory_then_smaller_batch():
    # heuristic algorithm choice: cudnnFind would time every algorithm on multi-GB tensors
    # before the plan's allocation fails
    ha.set_system("cudnn_deterministic", "true")
    ha.set_system("seed_rand", 1)
    m = ha.read_dl_model("pretrained_dl_classifier_resnet50.hdl")
    ha.set_dl_model_param(m, "class_ids", [0, 1])
    ha.set_dl_model_param(m, "runtime", "gpu")
    total = core.gpu_device_info(0)["total_bytes"]
    # resnet50 at 224² keeps ~100 MB of activations per image in training: ask for 2× the memory
    big = int(2 * total / 100e6) + 64
    before = _params(m)
    ha.set_dl_model_param(m, "batch_size", big)
    img = np.zeros((224, 224, 3), np.float32)
    samples = [{"image": img, "image_label_id": i % 2} for i in range(big)]
    with pytest.raises(ha.HOperatorError) as e:
        ha.train_dl_model_batch(m, samples)
    assert e.value.error_code == 6021, e.value
    after = _params(m)
    assert all(np.array_equal(before[n], after[n]) for n in before)
    ha.set_dl_model_param(m, "batch_size", 4)
    ha.train_dl_model_batch(m, samples[:4])


def test_gpu_index_out_of_range():
    m = _model("cpu")
    n = core.gpu_device_count()
    with pytest.raises(ha.HOperatorError) as e:
        ha.set_dl_model_param(m, "gpu", n)
        ha.set_dl_model_param(m, "runtime", "gpu")
    assert e.value.error_code == 7708
    assert ha.get_dl_model_param(m, "runtime") == ["cpu"]


def test_device_params():
    devs = ha.query_available_dl_devices(["runtime"], ["gpu"])
    assert devs
    d = devs[0]
    assert ha.get_dl_device_param(d, "type") == ["gpu"]
    assert ha.get_dl_device_param(d, "name")[0]
    assert "float32" in ha.get_dl_device_param(d, "precisions")


# ---------------------------------------------------------------------------------------
# object detection (docs/detection.md, docs/gpu.md): tiny, the emulation runs these too
DET_SIZE = 32
DET_PARAM = {"image_width": DET_SIZE, "image_height": DET_SIZE, "capacity": "low", "min_level": 2,
             "max_level": 3, "anchor_num_subscales": 1, "anchor_aspect_ratios": [1.0, 2.0]}


def _detector(runtime, solver="sgd", **over):
    ha.set_system("seed_rand", 11)
    m = ha.create_dl_model_detection("pretrained_dl_classifier_compact.hdl", 2,
                                     {**DET_PARAM, **over})
    for k, v in [("batch_size", 2), ("batch_size_multiplier", 2), ("solver_type", solver),
                 ("learning_rate", 1e-3 if solver == "sgd" else 1e-4), ("momentum", 0.9),
                 ("weight_prior", 1e-3), ("class_weights", [1.0, 1.5]), ("runtime", runtime)]:
        ha.set_dl_model_param(m, k, v)
    return m


def _det_samples(rng, n):
    out = []
    for i in range(n):
        boxes = [] if i % 4 == 3 else [(2, 3, 18, 14), (1, 2, 31, 30), (10, 12, 30, 31)][: 1 + i % 3]
        b = np.asarray(boxes, np.float64).reshape(-1, 4)
        out.append({"image": rng.normal(0, 1, (DET_SIZE, DET_SIZE, 3)).astype(np.float32),
                    "bbox_row1": b[:, 0].tolist(), "bbox_col1": b[:, 1].tolist(),
                    "bbox_row2": b[:, 2].tolist(), "bbox_col2": b[:, 3].tolist(),
                    "bbox_label_id": [j % 2 for j in range(len(boxes))]})
    return out


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_detection_train_and_apply_match_cpu(solver):
    cpu, gpu = _detector("cpu", solver), _detector("gpu", solver)
    assert gpu.core.device() == 0
    rng = np.random.default_rng(4)
    for _ in range(3):
        b = _det_samples(rng, 4)
        rc, rg = ha.train_dl_model_batch(cpu, b), ha.train_dl_model_batch(gpu, b)
        assert set(rc) == set(rg)
        for k in rc:  # total_loss and classhead<l>_loss / bboxhead<l>_loss per level
            assert_close(np.ravel(rg[k]), np.ravel(rc[k]), atol=1e-5, rtol=1e-4, what=k)
    pc, pg = _params(cpu), _params(gpu)
    for n in pc:
        assert_close(pg[n], pc[n], atol=3e-4, rtol=1e-3, what=f"detection {solver} {n}")
    # the tied copies follow their master exactly on the GPU too
    assert np.array_equal(pg["cls_head3.logits.weight"], pg["cls_head2.logits.weight"])
    assert np.array_equal(pg["box_head3.conv0.bias"], pg["box_head2.conv0.bias"])
    sc, sg = cpu.core.get_state(), gpu.core.get_state()
    assert_close(sg["m1"], sc["m1"], atol=1e-2 if solver == "adam" else 1e-4, rtol=1e-3,
                 what="optimizer state m1")
    test = _det_samples(np.random.default_rng(8), 3)
    imgs = [{"image": s["image"]} for s in test]
    raw_c = cpu.core.infer_detection_raw(imgs, 2, DET_SIZE, DET_SIZE, 3)
    raw_g = gpu.core.infer_detection_raw(imgs, 2, DET_SIZE, DET_SIZE, 3)
    assert_close(raw_g, raw_c, atol=1e-4, rtol=1e-3, what="raw detection_output")
    for m in (cpu, gpu):
        ha.set_dl_model_param(m, "min_confidence", 0.0)
        ha.set_dl_model_param(m, "max_num_detections", 3)
    for dc, dg in zip(ha.apply_dl_model(cpu, test, []), ha.apply_dl_model(gpu, test, [])):
        assert len(dg["bbox_confidence"]) == len(dc["bbox_confidence"]) == 3
        # the best detection: the same class and box (ties below it may order differently)
        assert dg["bbox_class_id"][0] == dc["bbox_class_id"][0]
        for k in ("bbox_row1", "bbox_col1", "bbox_row2", "bbox_col2", "bbox_confidence"):
            assert_close(dg[k][0], dc[k][0], atol=1e-3, rtol=1e-3, what=k)


def _det_samples2(rng, n):
    """rectangle2 samples: oriented boxes (row, col, phi, length1, length2), some empty images."""
    out = []
    boxes_all = [(10, 9, 0.4, 8, 4), (16, 16, -1.2, 12, 6), (20, 22, 2.5, 7, 5)]
    for i in range(n):
        b = np.asarray([] if i % 4 == 3 else boxes_all[: 1 + i % 3], np.float64).reshape(-1, 5)
        out.append({"image": rng.normal(0, 1, (DET_SIZE, DET_SIZE, 3)).astype(np.float32),
                    "bbox_row": b[:, 0].tolist(), "bbox_col": b[:, 1].tolist(),
                    "bbox_phi": b[:, 2].tolist(), "bbox_length1": b[:, 3].tolist(),
                    "bbox_length2": b[:, 4].tolist(),
                    "bbox_label_id": [j % 2 for j in range(len(b))]})
    return out


# rectangle2 (box_values 5): the oriented matching and encoding run on the host as on the CPU,
# the 5-value Huber term on the device; class 1 without orientation (no angle term)
@pytest.mark.parametrize("variant", ["oriented", "no_orientation", "ignore_direction"])
def test_detection_rectangle2_matches_cpu(variant):
    over = {"instance_type": "rectangle2", "anchor_angles": [0.0, 0.8]}
    if variant == "no_orientation":
        over["class_ids_no_orientation"] = [1]
    if variant == "ignore_direction":
        over["ignore_direction"] = "true"
    cpu, gpu = _detector("cpu", **over), _detector("gpu", **over)
    assert gpu.core.device() == 0
    rng = np.random.default_rng(5)
    for _ in range(3):
        b = _det_samples2(rng, 4)
        rc, rg = ha.train_dl_model_batch(cpu, b), ha.train_dl_model_batch(gpu, b)
        assert set(rc) == set(rg)
        for k in rc:
            assert_close(np.ravel(rg[k]), np.ravel(rc[k]), atol=1e-5, rtol=1e-4, what=k)
    pc, pg = _params(cpu), _params(gpu)
    for n in pc:
        assert_close(pg[n], pc[n], atol=3e-4, rtol=1e-3, what=f"rectangle2 {variant} {n}")
    test = _det_samples2(np.random.default_rng(9), 3)
    imgs = [{"image": s["image"]} for s in test]
    raw_c = cpu.core.infer_detection_raw(imgs, 2, DET_SIZE, DET_SIZE, 3)
    raw_g = gpu.core.infer_detection_raw(imgs, 2, DET_SIZE, DET_SIZE, 3)
    assert raw_c.shape[2] == 2 + 5
    assert_close(raw_g, raw_c, atol=1e-4, rtol=1e-3, what="raw detection_output")
    for m in (cpu, gpu):
        ha.set_dl_model_param(m, "min_confidence", 0.0)
        ha.set_dl_model_param(m, "max_num_detections", 3)
    for dc, dg in zip(ha.apply_dl_model(cpu, test, []), ha.apply_dl_model(gpu, test, [])):
        assert len(dg["bbox_confidence"]) == len(dc["bbox_confidence"]) == 3
        assert dg["bbox_class_id"][0] == dc["bbox_class_id"][0]
        for k in ("bbox_row", "bbox_col", "bbox_phi", "bbox_length1", "bbox_length2", "bbox_confidence"):
            assert_close(dg[k][0], dc[k][0], atol=1e-3, rtol=1e-3, what=k)


def test_detection_gpu_refusals_leave_the_model_unchanged():
    # freeze_backbone_level: frozen parameters have no GPU path yet (7742, still on the CPU)
    m = _detector("cpu", freeze_backbone_level=2)
    before = _params(m)
    with pytest.raises(ha.HOperatorError) as e:
        ha.set_dl_model_param(m, "runtime", "gpu")
    assert e.value.error_code == 7742
    assert m.core.device() == -1
    after = _params(m)
    assert all(np.array_equal(before[n], after[n]) for n in before)


# 7. precision 'bfloat16' on the GPU (bf16 activations and weight copies, fp32 master weights,
# optimizer, loss and statistics; docs/gpu.md#bfloat16-on-the-gpu). The reference is the CPU's
# fp32 twin (a CPU without AVX512-BF16 cannot run the CPU bf16 twin), at bf16 tolerances.
def _bf16_round(a):
    """Round to nearest even bfloat16, kept in float32 (torch's and halcdl's rule)."""
    a = np.ascontiguousarray(a, np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32).reshape(a.shape)


def _rel_max(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape and np.all(np.isfinite(a))
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


# the layer API's ops and detection_output have no bf16 path on the GPU yet: a bf16 plan refuses
# them (test_bf16_refuses_ops_without_a_bf16_path); every other op of section 1 has one
# (softmax, upsampling: fp32 between casts)
NO_BF16 = ("sigmoid", "tanh", "d2s_crd", "d2s_dcr", "resize_nearest", "resize_bilinear", "reshape",
           "permute_hw", "permute_cwh", "depth_max", "depth_argmax", "lrn",
           "reduce_sum_c", "reduce_mean_hw", "reduce_l2_cw", "matmul", "matmul_tt",
           "detection_output")
BF16_OPS = [c for c in OP_CASES if c[0] not in NO_BF16]
BF16_REFUSED = [c for c in OP_CASES if c[0] in NO_BF16]
BF16_REL = 1.5e-2  # of the reference's largest magnitude: a few bf16 roundings (2^-9 each)


@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("case", BF16_OPS, ids=[c[0] for c in BF16_OPS])
def test_bf16_op_matches_cpu(case, training):
    """The GPU's bf16 op (inputs and grad_output rounded on upload, weights through the bf16
    mirror, fp32 accumulation) against the CPU fp32 op on the bf16-rounded inputs."""
    name, nd, inputs, params = case
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    rounded = [_bf16_round(x) for x in inputs]
    out_c, _, _ = core.run_op(nd, rounded, params, None, training)
    go = rng.standard_normal(np.asarray(out_c).shape).astype(np.float32)
    out_c, gin_c, gpar_c = core.run_op(nd, rounded, params, _bf16_round(go) if training else None, training)
    out_g, gin_g, gpar_g = core.run_op(nd, inputs, params, go if training else None, training,
                                       precision="bfloat16", device=0, deterministic=True, tf32=False)
    assert _rel_max(out_g, out_c) <= BF16_REL, f"{name} forward"
    if name in ("relu", "relu6", "maxpool", "concat"):  # exact on bf16 values
        assert np.array_equal(np.asarray(out_g), _bf16_round(out_c)), f"{name} forward not exact"
    if not training:
        return
    for i, (a, b) in enumerate(zip(gin_g, gin_c)):
        assert _rel_max(a, b) <= BF16_REL, f"{name} d/d input{i}"
    for k, v in gpar_c.items():
        if k == "mask":
            continue
        assert k in gpar_g, f"{name}: the GPU gave no {k!r}"
        assert _rel_max(gpar_g[k], v) <= BF16_REL, f"{name} {k}"


@pytest.mark.parametrize("case", BF16_REFUSED, ids=[c[0] for c in BF16_REFUSED])
def test_bf16_refuses_ops_without_a_bf16_path(case):
    """Never a silent fp32 run on bf16 buffers: 7742 naming the node."""
    name, nd, inputs, params = case
    with pytest.raises(ha.HOperatorError) as e:
        core.run_op(nd, inputs, params, None, False, precision="bfloat16", device=0)
    assert e.value.error_code == 7742, e.value


def test_bf16_ops_of_other_layers_refused_or_right():
    """Ops outside section 1 (the layer API's sigmoid / tanh, where this build has them): a bf16
    plan either refuses them with 7742 naming the op (GpuNode::has_bf16 false), or, once they
    have a bf16 path, matches the CPU fp32 op at bf16 tolerance. Never a silent fp32 run on
    bf16 buffers."""
    x = randn(np.random.default_rng(1), 1, 3, 4, 4)
    for op in ("sigmoid", "tanh"):
        try:
            ref, _, _ = core.run_op(node(op), [_bf16_round(x)], {}, None, False)
        except ha.HOperatorError:
            continue  # not an op of this build
        try:
            out, _, _ = core.run_op(node(op), [x], {}, None, False, precision="bfloat16", device=0)
        except ha.HOperatorError as e:
            assert e.error_code == 7742 and op in str(e), e
            continue
        assert _rel_max(out, ref) <= BF16_REL, op


def test_bf16_dropout_uses_the_fp32_mask():
    rng = np.random.default_rng(3)
    x, go = randn(rng, 4, 6, 5, 7), randn(rng, 4, 6, 5, 7)
    _, _, e32 = core.run_op(node("dropout", p=0.3), [x], {}, go, True, device=0)
    out, gin, e16 = core.run_op(node("dropout", p=0.3), [x], {}, go, True, device=0, precision="bfloat16")
    mask = np.asarray(e16["mask"])
    assert np.array_equal(mask, np.asarray(e32["mask"]))  # the same splitmix64 mask
    assert np.array_equal(np.asarray(out), _bf16_round(_bf16_round(x) * mask))
    assert np.array_equal(np.asarray(gin[0]), _bf16_round(_bf16_round(go) * mask))


def _bf16_gpu_model(solver="sgd", runtime="gpu"):
    m = _model(runtime, solver)
    ha.set_dl_model_param(m, "precision", "bfloat16")
    return m


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_bf16_train_sequence_close_to_fp32(solver):
    """3 steps (momentum, weight_prior, class weights, multiplier) in bf16 on the GPU against
    the CPU in fp32: losses within bf16 rounding, the weights' updates in the same direction
    and size, fp32 master weights (the updates are not rounded to bf16)."""
    cpu, gpu = _model("cpu", solver), _bf16_gpu_model(solver)
    assert ha.get_dl_model_param(gpu, "precision") == ["bfloat16"]
    p0 = _params(cpu)
    for b in _batches(3):
        lc = ha.train_dl_model_batch(cpu, b)["total_loss"]
        lg = ha.train_dl_model_batch(gpu, b)["total_loss"]
        assert abs(lg - lc) <= 2e-2 * abs(lc), (lg, lc)
    pc, pg = _params(cpu), _params(gpu)
    dc = np.concatenate([(pc[n] - p0[n]).ravel() for n in pc])
    dg = np.concatenate([(pg[n] - p0[n]).ravel() for n in pc])
    cos = float(dc @ dg / (np.linalg.norm(dc) * np.linalg.norm(dg)))
    size = float(np.linalg.norm(dg) / np.linalg.norm(dc))
    assert cos > 0.999 and 0.98 < size < 1.02, (cos, size)  # emulated: 1 - 4e-7 and 1 ± 2e-5
    # fp32 master weights: most weights are not bf16 values any more after the updates
    w = np.concatenate([pg[n].ravel() for n in pg])
    assert np.mean(_bf16_round(w) != w) > 0.5
    test = make_samples(5, SIZE, SIZE, 3, CLASS_IDS, np.random.default_rng(9))
    for rc, rg in zip(ha.apply_dl_model(cpu, test, []), ha.apply_dl_model(gpu, test, [])):
        cc = dict(zip(rc["classification_class_ids"], rc["classification_confidences"]))
        cg = dict(zip(rg["classification_class_ids"], rg["classification_confidences"]))
        assert_close([cg[c] for c in CLASS_IDS], [cc[c] for c in CLASS_IDS], atol=5e-2, rtol=0,
                     what="bf16 confidences")


def test_bf16_segmentation_close_to_fp32():
    """The segmentation path (upsampling and the per-pixel loss) in bf16 on the GPU against the
    CPU in fp32: losses within 2%, the segmentation images agree on nearly every pixel."""
    from test_segmentation import seg_batches  # noqa: PLC0415

    def make(runtime):
        ha.set_system("seed_rand", 3)
        m = ha.read_dl_model("pretrained_dl_segmentation_compact.hdl")
        for k, v in [("image_dimensions", [32, 32, 3]), ("class_ids", [2, 5, 7]),
                     ("ignore_class_ids", [255]), ("batch_size", 2), ("batch_size_multiplier", 2),
                     ("learning_rate", 0.01), ("weight_prior", 1e-4), ("runtime", runtime)]:
            ha.set_dl_model_param(m, k, v)
        return m
    cpu, gpu = make("cpu"), make("gpu")
    ha.set_dl_model_param(gpu, "precision", "bfloat16")
    for b in seg_batches(4, 2, 4, 32, 32, 3, [2, 5, 7], ignore=(255,)):
        lc = ha.train_dl_model_batch(cpu, b)["total_loss"]
        lg = ha.train_dl_model_batch(gpu, b)["total_loss"]
        assert abs(lg - lc) <= 2e-2 * abs(lc), (lg, lc)
    test = seg_batches(8, 1, 3, 32, 32, 3, [2, 5, 7], ignore=())[0]
    for a, b in zip(ha.apply_dl_model(cpu, test, []), ha.apply_dl_model(gpu, test, [])):
        agree = (np.asarray(a["segmentation_image"]) == np.asarray(b["segmentation_image"])).mean()
        assert agree > 0.97, agree  # emulated: 0.990-0.993, mean |Δconfidence| 0.005
        d = np.abs(np.asarray(b["segmentation_confidence"], np.float64) -
                   np.asarray(a["segmentation_confidence"], np.float64))
        assert d.mean() < 1.5e-2 and d.max() < 0.15, (d.mean(), d.max())


def test_bf16_write_read_and_precision_switch(tmp_path):
    """A bf16 GPU model's file holds its fp32 master weights bit for bit; read back, moved to
    the GPU and set to bfloat16 it gives the same results. float32 ↔ bfloat16 on the GPU mid-
    training keeps the weights."""
    # the same algorithms in both models' plans (cudnnFind's timing may pick others), so the
    # two bf16 inferences compare bit for bit
    ha.set_system("cudnn_deterministic", "true")
    m = _bf16_gpu_model()
    for b in _batches(2):
        ha.train_dl_model_batch(m, b)
    path = str(tmp_path / "b.hdl")
    ha.write_dl_model(m, path)
    r = ha.read_dl_model(path)
    pm, pr = _params(m), _params(r)
    for n in pm:
        assert np.array_equal(pm[n], pr[n]), n
    assert np.array_equal(m.core.get_state()["m1"], r.core.get_state()["m1"])
    # a CPU without bfloat16 instructions reads the model as float32 (docs/gpu.md)
    want = "bfloat16" if core.bf16_supported() else "float32"
    assert ha.get_dl_model_param(r, "precision") == [want]
    ha.set_dl_model_param(r, "runtime", "gpu")
    ha.set_dl_model_param(r, "precision", "bfloat16")
    test = make_samples(3, SIZE, SIZE, 3, CLASS_IDS, np.random.default_rng(4))
    for a, b in zip(ha.apply_dl_model(m, test, []), ha.apply_dl_model(r, test, [])):
        assert a["classification_confidences"] == b["classification_confidences"]
    # back to float32 on the GPU: the master weights are unchanged, inference is fp32 again
    ha.set_dl_model_param(r, "precision", "float32")
    assert all(np.array_equal(pm[n], v) for n, v in _params(r).items())
    ha.set_dl_model_param(m, "precision", "float32")
    cpu = _model("cpu")
    for n, v in pm.items():
        cpu.core.set_param(n, v)
    for a, b in zip(ha.apply_dl_model(m, test, []), ha.apply_dl_model(cpu, test, [])):
        assert_close(a["classification_confidences"], b["classification_confidences"], atol=1e-4, rtol=1e-3,
                     what="fp32 again after bf16")


def test_bf16_listed_in_device_precisions():
    d = ha.query_available_dl_devices(["runtime"], ["gpu"])[0]
    cc = core.gpu_device_info(0)["compute_capability"]
    assert ("bfloat16" in ha.get_dl_device_param(d, "precisions")) == (cc[0] >= 8)

"""precision 'bfloat16': bf16 activations and weights in the passes, fp32 master weights,
fp32 weight gradients, loss and optimizer (docs/operators.md).

- every op, forward and backward, in bf16 against PyTorch in float64, with tolerances that
  fit bf16's 8-bit mantissa (the inputs are rounded to bf16 first, so the error is the
  engine's own rounding of outputs and intermediate results);
- digits end to end: bf16 accuracy within 0.5 points of fp32 with the same seed;
- a CPU without bfloat16 instructions (simulated with oneDNN's ONEDNN_MAX_CPU_ISA) raises
  7742 instead of emulating.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import halcdl as ha
from halcdl._native import core

from helpers import assert_close
from test_digits_e2e import load_split, train_and_evaluate

needs_bf16 = pytest.mark.skipif(not core.bf16_supported(), reason="CPU without bfloat16")


def bf16_round(a: np.ndarray) -> np.ndarray:
    return torch.tensor(a).to(torch.bfloat16).to(torch.float32).numpy()


def run_both(node, inputs, params, ref_fn, rng, backward=True):
    """Runs the op in bf16 through core.run_op and the reference in float64 on bf16-rounded
    inputs; returns (outputs, grads) pairs."""
    inputs = [bf16_round(x) for x in inputs]
    params = {k: bf16_round(v) for k, v in params.items()}
    ts = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in inputs]
    ps = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    ref = ref_fn(ts, ps)
    go = bf16_round(rng.standard_normal(ref.shape).astype(np.float32)) if backward else None
    out, g_in, g_par = core.run_op(node, inputs, params, go, True, "bfloat16")
    pairs = [("forward", out, ref.detach().numpy())]
    if backward:
        ref.backward(torch.tensor(go, dtype=torch.float64))
        pairs += [(f"d input {i}", g_in[i], t.grad.numpy()) for i, t in enumerate(ts)]
        pairs += [(f"d {k}", g_par[k], p.grad.numpy()) for k, p in ps.items() if p.grad is not None]
    return pairs


def check(pairs, scale_rtol=2e-2):
    for what, got, exp in pairs:
        atol = scale_rtol * float(np.max(np.abs(exp)) + 1e-6)
        assert_close(np.asarray(got, np.float64), exp, atol=atol, rtol=scale_rtol, what=f"bf16 {what}")


@needs_bf16
@pytest.mark.parametrize("groups,stride", [(1, 1), (1, 2), (4, 1), (16, 2)])
def test_bf16_conv(groups, stride):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 16, 9, 9)).astype(np.float32)
    w = (rng.standard_normal((32, 16 // groups, 3, 3)) * 0.2).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    node = dict(name="c", op="conv", out_channels=32, kernel=3, stride=stride, pad=1, groups=groups)
    check(run_both(node, [x], {"weight": w, "bias": b},
                   lambda t, q: F.conv2d(t[0], q["weight"], q["bias"], stride, 1, 1, groups), rng))


@needs_bf16
def test_bf16_bn_relu_pool_fc():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 16, 8, 8)).astype(np.float32)
    sc, sh = rng.uniform(0.5, 1.5, 16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    check(run_both(dict(name="b", op="bn"), [x], {"scale": sc, "shift": sh, "running_mean": np.zeros(16, np.float32),
                                                   "running_var": np.ones(16, np.float32)},
                   lambda t, q: F.batch_norm(t[0], None, None, q["scale"], q["shift"], True, 0.1, 1e-5), rng))
    check(run_both(dict(name="r", op="relu"), [x], {}, lambda t, q: F.relu(t[0]), rng))
    check(run_both(dict(name="p", op="maxpool", kernel=3, stride=2, pad=1), [x], {},
                   lambda t, q: F.max_pool2d(t[0], 3, 2, 1), rng))
    check(run_both(dict(name="g", op="gap"), [x], {}, lambda t, q: t[0].mean((2, 3), keepdim=True), rng))
    w = (rng.standard_normal((10, 16 * 64)) * 0.05).astype(np.float32)
    check(run_both(dict(name="f", op="fc", out_features=10, in_features=16 * 64), [x],
                   {"weight": w, "bias": np.zeros(10, np.float32)},
                   lambda t, q: F.linear(t[0].flatten(1), q["weight"], q["bias"]), rng))


@needs_bf16
def test_bf16_add_concat_dropout():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 16, 5, 5)).astype(np.float32)
    c = rng.standard_normal((2, 16, 5, 5)).astype(np.float32)
    check(run_both(dict(name="a", op="add"), [a, c], {}, lambda t, q: t[0] + t[1], rng))
    check(run_both(dict(name="k", op="concat"), [a, c], {}, lambda t, q: torch.cat(t, 1), rng))
    out, g_in, g = core.run_op(dict(name="d", op="dropout", p=0.5), [bf16_round(a)], {},
                               np.ones_like(a), True, "bfloat16")
    mask = g["mask"]
    assert set(np.unique(mask)) <= {0.0, 2.0} and 0.3 < np.mean(mask == 0) < 0.7
    assert_close(out, bf16_round(a) * mask, atol=0, rtol=1e-2, what="bf16 dropout forward")
    assert_close(g_in[0], mask, atol=0, rtol=0, what="bf16 dropout backward")


@needs_bf16
@pytest.mark.slow
def test_bf16_digits_within_half_a_point():
    train, test = load_split()
    acc32, *_ = train_and_evaluate(train, test, "float32")
    acc16, first, last, secs = train_and_evaluate(train, test, "bfloat16")
    print(f"digits: fp32 {100 * acc32:.2f} %, bf16 {100 * acc16:.2f} % ({secs:.1f} s)")
    assert last < first
    assert acc16 >= acc32 - 0.005, f"bf16 accuracy {acc16:.4f} vs fp32 {acc32:.4f}"


def test_bf16_unsupported_cpu_raises_7742():
    """oneDNN reports the ISA it may use; capped below AVX512-BF16 the model must refuse."""
    code = (
        "import halcdl as ha, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "m = ha.read_dl_model('pretrained_dl_classifier_compact.hdl')\n"
        "try:\n"
        "    ha.set_dl_model_param(m, 'precision', 'bfloat16')\n"
        "except ha.HOperatorError as e:\n"
        "    print('CODE', e.error_code)\n"
        "print('PRECISION', ha.get_dl_model_param_s(m, 'precision'))\n"
        "print('DEVICE', ha.get_dl_device_param(ha.query_available_dl_devices([], [])[0], 'precisions'))\n"
    )
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(ha.__file__)))
    env["PYTHONPATH"] = pkg_parent + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CODE 7742" in out.stdout, out.stdout
    assert "PRECISION float32" in out.stdout, out.stdout
    assert "DEVICE ['float32']" in out.stdout, out.stdout


@pytest.mark.parametrize("value,code", [("float16", 1303), (16, 1203), (["bfloat16", "float32"], 1403)])
def test_bad_precision_value_leaves_model_unchanged(value, code):
    ha.set_system("seed_rand", 5)
    model = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    before = {n: model.core.get_param(n) for n in model.core.param_names()}
    with pytest.raises(ha.HOperatorError) as err:
        ha.set_dl_model_param(model, "precision", value)
    assert err.value.error_code == code, err.value
    assert ha.get_dl_model_param_s(model, "precision") == "float32"
    for n, v in before.items():
        assert np.array_equal(model.core.get_param(n), v), n

"""The engine's per-op timer and the inference residual fusion (docs/performance.md).

- The timer is off by default (nothing recorded), records per fused node type when on, for
  apply ("infer:") and for a train step ("train_fwd:", "train_bwd:"), and stops when off.
- Inference fuses conv → bn → add → relu into one convolution with sum + relu post-ops
  accumulating in place into the residual's buffer; HALCDL_NO_FUSE=sum (read when a plan is
  built) keeps the separate add. Both give the same confidences, and those equal the PyTorch
  twin's; the fused plan actually contains the fused node (seen through the timer's keys).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import assert_close, make_samples
from torch_twin import from_model, images_to_nchw

import halcdl as ha
from halcdl import _native

CLASS_IDS = [0, 1, 2]


def _model(name="resnet18", size=32, batch=2):
    ha.set_system("seed_rand", 5)
    m = ha.read_dl_model(f"pretrained_dl_classifier_{name}.hdl")
    ha.set_dl_model_param(m, "image_dimensions", [size, size, 3])
    ha.set_dl_model_param(m, "class_ids", CLASS_IDS)
    ha.set_dl_model_param(m, "batch_size", batch)
    return m


def _timed(fn):
    core = _native.core
    core.reset_op_times()
    core.set_op_timer(True)
    try:
        fn()
    finally:
        core.set_op_timer(False)
    t = core.op_times()
    core.reset_op_times()
    return t


def _conf(res):
    return np.array([[dict(zip(r["classification_class_ids"], r["classification_confidences"]))[c]
                      for c in CLASS_IDS] for r in res])


def test_timer_off_by_default_and_on_records_per_op():
    core = _native.core
    assert core.op_timer() is False
    m = _model()
    samples = make_samples(2, 32, 32, 3, CLASS_IDS, np.random.default_rng(0))
    core.reset_op_times()
    ha.apply_dl_model(m, samples, [])
    assert core.op_times() == {}
    t = _timed(lambda: (ha.apply_dl_model(m, samples, []), ha.train_dl_model_batch(m, samples)))
    assert core.op_timer() is False
    phases = {k.split(":", 1)[0] for k in t}
    assert phases == {"infer", "train_fwd", "train_bwd", "train_step"}  # + check, update
    # resnet18: 20 convolutions; apply runs each once, folded with its bn (and relu / add)
    convs = sum(c for k, (s, c) in t.items() if k.startswith("infer:conv"))
    assert convs == 20
    assert sum(c for k, (s, c) in t.items() if k.startswith("train_fwd:conv")) == 20
    assert t["infer:conv+bn+add+relu"][1] == 8        # every residual add of the 8 blocks
    assert all(s >= 0 for s, _ in t.values())
    ha.apply_dl_model(m, samples, [])
    assert core.op_times() == {}


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_residual_fusion_matches_unfused_and_twin(name, monkeypatch):
    samples = make_samples(2, 32, 32, 3, CLASS_IDS, np.random.default_rng(1))
    fused = _model(name)
    t = _timed(lambda: ha.apply_dl_model(fused, samples, []))
    assert any("+add" in k for k in t)
    got = _conf(ha.apply_dl_model(fused, samples, []))
    monkeypatch.setenv("HALCDL_NO_FUSE", "sum")
    plain = _model(name)
    t = _timed(lambda: ha.apply_dl_model(plain, samples, []))
    assert not any("+add" in k for k in t) and "infer:add+relu" in t  # add → relu still fused
    ref = _conf(ha.apply_dl_model(plain, samples, []))
    # fp32 sums in another order (in place vs binary add): not bit-identical
    assert_close(got, ref, atol=3e-5, rtol=3e-4, what=f"{name}: fused vs unfused")
    twin = from_model(fused, dtype=torch.float64)
    twin.eval()
    with torch.no_grad():
        want = torch.softmax(twin(images_to_nchw(samples, torch.float64)), dim=1).numpy()
    assert_close(got, want, atol=1e-5, rtol=1e-3, what=f"{name}: fused vs twin")


def test_training_add_relu_fusion_is_bit_identical(monkeypatch):
    """Training fuses add → relu (post-op forward, relu_use_dst backward): the losses and every
    parameter after two steps equal the unfused plan's exactly (the golden tests rely on it)."""
    samples = make_samples(2, 32, 32, 3, CLASS_IDS, np.random.default_rng(2))

    def run():
        m = _model("resnet18")
        ha.set_dl_model_param(m, "learning_rate", 0.01)
        t = _timed(lambda: ha.train_dl_model_batch(m, samples))
        losses = [ha.train_dl_model_batch(m, samples)["total_loss"]]
        params = {n: np.array(m.core.get_param(n)) for n in m.core.param_names()}
        return t, losses, params
    t, losses, params = run()
    assert t["train_fwd:add+relu"][1] == 8 and "train_fwd:add" not in t
    monkeypatch.setenv("HALCDL_NO_FUSE", "add_relu")
    t0, losses0, params0 = run()
    assert "train_fwd:add+relu" not in t0 and t0["train_fwd:add"][1] == 8
    assert losses == losses0
    for n in params:
        assert np.array_equal(params[n], params0[n]), n

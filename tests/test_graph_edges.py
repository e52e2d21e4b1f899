"""Graph shapes the zoo does not use but a spec may: a bn after a fully connected layer
(a 2-D (N, C) tensor) and a dangling branch (a tensor nobody consumes)."""
from __future__ import annotations

import numpy as np

from helpers import assert_close

from halcdl._native import core

H = W = 6
C = 3


def _samples(n, rng, k=3):
    return [{"image": rng.uniform(-1, 1, (H, W, C)).astype(np.float32),
             "image_label_id": int(i % k)} for i in range(n)]


def _model(spec, seed=1):
    m = core.Model(spec, seed)
    m.set_hparams({"learning_rate": 0.05, "momentum": 0.9, "weight_prior": 1e-3,
                   "batchnorm_momentum": 0.3})
    return m


def test_bn_after_fc_running_statistics():
    spec = [
        {"name": "data", "op": "input", "channels": C},
        {"name": "fc1", "op": "fc", "inputs": ["data"], "out_features": 5, "in_features": C * H * W},
        {"name": "bn1", "op": "bn", "inputs": ["fc1"]},
        {"name": "r1", "op": "relu", "inputs": ["bn1"]},
        {"name": "fc2", "op": "fc", "inputs": ["r1"], "out_features": 3, "in_features": 5},
    ]
    m = _model(spec)
    rng = np.random.default_rng(0)
    samples = _samples(8, rng)
    x = np.stack([s["image"].transpose(2, 0, 1).reshape(-1) for s in samples])
    w, b = np.asarray(m.get_param("fc1.weight"), np.float64), np.asarray(m.get_param("fc1.bias"))
    z = x.astype(np.float64) @ w.T + b
    m.train_step(samples, 8, 1, H, W, C)
    mom = 0.3
    assert_close(m.get_param("bn1.running_mean"), (1 - mom) * 0 + mom * z.mean(0), atol=1e-6,
                 rtol=1e-5, what="running_mean")
    assert_close(m.get_param("bn1.running_var"), (1 - mom) * 1 + mom * z.var(0, ddof=1), atol=1e-6,
                 rtol=1e-5, what="running_var (unbiased batch variance, count = N)")


def test_dangling_branch_changes_nothing():
    base = [
        {"name": "data", "op": "input", "channels": C},
        {"name": "c1", "op": "conv", "inputs": ["data"], "out_channels": 4, "kernel": 3, "pad": 1},
        {"name": "r1", "op": "relu", "inputs": ["c1"]},
        {"name": "g", "op": "gap", "inputs": ["r1"]},
        {"name": "fc", "op": "fc", "inputs": ["g"], "out_features": 3, "in_features": 4},
    ]
    # the same network with a branch off r1 whose output nobody reads
    dangling = base[:3] + [
        {"name": "side", "op": "conv", "inputs": ["r1"], "out_channels": 2, "kernel": 1},
        {"name": "side_r", "op": "relu", "inputs": ["side"]},
    ] + base[3:]
    a, b = _model(base), _model(dangling)
    b.copy_params_from(a)
    rng = np.random.default_rng(1)
    for _ in range(3):
        s = _samples(4, rng)
        # loss_cls: total_loss also holds weight_prior's term of the side branch's weights
        la = a.train_step(s, 4, 1, H, W, C)["loss_cls"]
        lb = b.train_step(s, 4, 1, H, W, C)["loss_cls"]
        assert abs(la - lb) <= 1e-6 * max(1.0, abs(la))
    for n in a.param_names():
        assert_close(b.get_param(n), a.get_param(n), atol=1e-6, rtol=1e-5, what=n)

"""Robustness rules of issue 15 (docs/robustness.md): system parameter bounds, divergence,
the conversion layer at the edge, writing onto odd targets, Ctrl-C during a long apply."""
from __future__ import annotations

import os

import numpy as np
import pytest

import halcdl as ha
from halcdl.operators.system import max_thread_num

SIZE, CHANNELS = 32, 3
CLASS_IDS = [0, 1, 2]


def fresh_model(solver="sgd", lr=0.01, bs=2):
    ha.set_system("seed_rand", 11)
    m = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    for name, value in [("image_width", SIZE), ("image_height", SIZE),
                        ("image_num_channels", CHANNELS), ("class_ids", CLASS_IDS),
                        ("batch_size", bs), ("solver_type", solver), ("learning_rate", lr)]:
        ha.set_dl_model_param(m, name, value)
    return m


def samples(seed, n):
    rng = np.random.default_rng(seed)
    return [{"image": rng.uniform(-127, 128, (SIZE, SIZE, CHANNELS)).astype(np.float32),
             "image_label_id": CLASS_IDS[i % len(CLASS_IDS)]} for i in range(n)]


def state_of(m):
    st = {n: np.array(m.core.get_param(n), copy=True) for n in m.core.param_names()}
    for k, v in m.core.get_state().items():
        st["opt/" + k] = np.array(v, copy=True)
    return st


def assert_same(a, b, what):
    assert a.keys() == b.keys()
    bad = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not bad, f"{what}: {bad[:5]} changed"


# --- 1. thread_num ----------------------------------------------------------------------
def test_thread_num_bounds():
    before = ha.get_system_s("thread_num")
    hi = max_thread_num()
    assert hi == min(1024, max(16, 4 * (os.cpu_count() or 1)))
    for bad in (0, -1, hi + 1, 100000, 2**31, 2**64, -2**70):
        with pytest.raises(ha.HOperatorError) as info:
            ha.set_system("thread_num", bad)
        assert info.value.error_code == 1302, (bad, info.value)
    for bad in (1.5, "4", float("inf"), None):
        with pytest.raises(ha.HOperatorError) as info:
            ha.set_system("thread_num", bad)
        assert info.value.error_code in (1202, 1402), (bad, info.value)
    assert ha.get_system_s("thread_num") == before
    # the bound itself is usable (no process exit), then back
    ha.set_system("thread_num", hi)
    assert ha.get_system_s("thread_num") == hi
    ha.set_system("thread_num", before)


def test_engine_thread_bound():
    with pytest.raises(ha.HOperatorError) as info:
        ha.operators.system.core.set_num_threads(1025)
    assert info.value.error_code == 7914

"""optimize_dl_model_batch_size (issue 13) and train_param batch_size 'auto'.

The chosen size is checked against the table the call returns (it must be the fastest row);
no timing ratios are asserted.  The memory bound is tested with gen_param 'max_memory' and
with a stubbed /proc/meminfo reading.
"""
from __future__ import annotations

import numpy as np
import pytest

import halcdl as ha
from halcdl.workflow import train as tr
from test_schedules import make_dataset, make_model, reader, tparam, weights  # noqa: F401


def test_training_mode_picks_the_fastest_row():
    m = make_model(batch=1)
    w = weights(m)
    st = m.core.get_state()
    b, table = ha.optimize_dl_model_batch_size(m, "training", {"max_batch_size": 8,
                                                               "num_iterations": 2})
    assert table["batch_size"] == [1, 2, 4, 8] and table["mode"] == "training"
    ips = table["images_per_second"]
    assert len(ips) == 4 and all(x > 0 for x in ips)
    assert b == table["batch_size"][int(np.argmax(ips))]
    assert ha.get_dl_model_param_s(m, "batch_size") == b
    # only batch_size changed: weights and optimizer state untouched
    assert all(np.array_equal(w[n], v) for n, v in weights(m).items())
    assert m.core.get_state()["steps"] == st["steps"]
    assert table["memory_bytes"] == sorted(table["memory_bytes"])


def test_inference_mode_and_details():
    m = make_model(batch=1)
    b, table = ha.optimize_dl_model_batch_size(m, "inference", {"max_batch_size": 6,
                                                                "details": "all"})
    assert table["batch_size"] == [1, 2, 4, 6]  # the powers of two and the bound itself
    assert b == table["batch_size"][int(np.argmax(table["images_per_second"]))]
    assert [len(s) for s in table["seconds"]] == [3, 3, 3, 3]
    b2, t2 = ha.optimize_dl_model_batch_size(m, "inference", {"max_batch_size": 2,
                                                              "details": "none"})
    assert t2 == {} and b2 in (1, 2)


def test_memory_bound_limits_candidates(monkeypatch):
    m = make_model(batch=1)
    _, full = ha.optimize_dl_model_batch_size(m, "training", {"max_batch_size": 16,
                                                              "num_iterations": 1})
    mem = full["memory_bytes"]
    # a bound between the estimates of 4 and 8: 8 and 16 are not tried
    bound = (mem[2] + mem[3]) // 2
    b, t = ha.optimize_dl_model_batch_size(m, "training", {"max_batch_size": 16,
                                                           "max_memory": bound,
                                                           "num_iterations": 1})
    assert t["batch_size"] == [1, 2, 4] and b in (1, 2, 4) and t["memory_bound"] == bound
    # without max_memory: 80 % of MemAvailable
    monkeypatch.setattr(tr, "_meminfo_available", lambda: int(bound / 0.8) + 1)
    _, t = ha.optimize_dl_model_batch_size(m, "training", {"max_batch_size": 16,
                                                           "num_iterations": 1})
    assert t["batch_size"] == [1, 2, 4]


@pytest.mark.parametrize("mode,gp,code", [
    ("train", {}, 1302), (3, {}, 1202), ("training", {"x": 1}, 7911),
    ("training", {"max_batch_size": 0}, 7914), ("training", {"max_memory": -1}, 7914),
    ("training", {"details": "some"}, 7914), ("training", {"num_iterations": 0}, 7914),
    ("training", "nope", 1203),
])
def test_bad_input(mode, gp, code):
    m = make_model(batch=3)
    with pytest.raises(ha.HOperatorError) as e:
        ha.optimize_dl_model_batch_size(m, mode, gp)
    assert e.value.error_code == code
    assert ha.get_dl_model_param_s(m, "batch_size") == 3


def test_train_param_batch_size_auto_and_integer(reader):  # noqa: F811
    ds = make_dataset()  # 16 'train' samples: the search stops at 16
    m = make_model(batch=1)
    tp = tparam(m, 1, 1, ["batch_size"], ["auto"])
    assert tp["batch_size"] == "auto"
    tr.run_training(ds, m, tp, 0)
    b = ha.get_dl_model_param_s(m, "batch_size")
    assert b in (1, 2, 4, 8, 16)
    train_calls = [c for c in reader.log if max(c) < 16]
    assert {len(c) for c in train_calls} == {b} and len(train_calls) == 16 // b
    m2 = make_model(batch=1)
    tr.run_training(ds, m2, tparam(m2, 1, 1, ["batch_size"], [8]), 0)
    assert ha.get_dl_model_param_s(m2, "batch_size") == 8
    with pytest.raises(ha.HOperatorError) as e:
        tr.run_training(ds, m2, tparam(m2, 1, 1, ["batch_size"], [32]), 0)
    assert e.value.error_code == 7925 and ha.get_dl_model_param_s(m2, "batch_size") == 8
    with pytest.raises(ha.HOperatorError) as e:
        tparam(m2, 1, 1, ["batch_size"], ["fast"])
    assert e.value.error_code == 7914

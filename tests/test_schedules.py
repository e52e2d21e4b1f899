"""Early stopping and schedules (issue 13): hooks of train_dl_model's loop.

Early stopping: with a learning rate of 0 the measure never improves after the first
evaluation, so training stops after exactly ``patience`` more evaluations; restore_best leaves
the model bit-identical to the 'best' file.  Schedules: every iteration's value against the
closed-form formula computed here (independently of halcdl.workflow.schedules); 'resume'
continues them exactly.

The datasets hold their images in memory; ``reader`` replaces the workflow's sample reader
(as tests/test_train.py does) and logs the indices it was asked for.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest

import halcdl as ha
from halcdl.workflow import evaluate as ev
from halcdl.workflow import train as tr
from halcdl.workflow.early_stopping import EarlyStoppingHook
from halcdl.workflow.hooks import TrainContext, TrainHook

SIZE = 16


def make_dataset(n_train=16, n_val=6, classes=3, seed=0):
    """Classes told apart by the mean brightness of their images (learnable in a few steps)."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n_train + n_val):
        c = i % classes
        img = rng.normal(0, 20, (SIZE, SIZE, 3)).astype(np.float32) + (c - 1) * 60.0
        samples.append({"image_id": 100 + i, "image_label_id": c,
                        "split": "train" if i < n_train else "validation", "_image": img})
    return {"class_ids": list(range(classes)),
            "class_names": [f"c{c}" for c in range(classes)], "samples": samples,
            "image_dir": ""}


def read_memory(dldataset, indices):
    out = []
    for i in indices:
        s = dldataset["samples"][i]
        out.append({"image": s["_image"].copy(), "image_id": s["image_id"],
                    "image_label_id": s["image_label_id"]})
    return out


@pytest.fixture
def reader(monkeypatch):
    log: list[list[int]] = []

    def read(dldataset, indices):
        log.append(list(indices))
        return read_memory(dldataset, indices)

    monkeypatch.setattr(ev, "read_samples", read)
    read.log = log
    return read


def make_model(batch=4, seed=7, lr=0.01):
    ha.set_system("seed_rand", seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    ha.set_dl_model_param(m, "image_dimensions", [SIZE, SIZE, 3])
    ha.set_dl_model_param(m, "class_ids", [0, 1, 2])
    ha.set_dl_model_param(m, "batch_size", batch)
    ha.set_dl_model_param(m, "learning_rate", lr)
    ha.set_dl_model_param(m, "momentum", 0.9)
    if lr == 0:  # nothing changes at all: batch-norm statistics frozen too (PyTorch's rule)
        ha.set_dl_model_param(m, "batchnorm_momentum", 0.0)
    return m


def weights(m):
    return {n: np.array(m.core.get_param(n)) for n in m.core.param_names()}


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for n in wa:
        assert np.array_equal(wa[n], wb[n]), f"parameter {n} differs"


def tparam(m, epochs, interval=1, names=(), values=(), seed=5):
    names, values = list(names), list(values)
    if "serialize" not in names:
        names.append("serialize")
        values.append([])
    return ha.create_dl_train_param(m, epochs, interval, "false", seed, names, values)


class ParamLog(TrainHook):
    """(epoch, iteration, value) of model parameters before every iteration (after the
    schedules set them) and the evaluations."""

    def __init__(self, *names):
        self.names = names
        self.rows = []
        self.evals = []

    def on_batch_begin(self, ctx):
        self.rows.append((ctx.epoch, ctx.iteration) + tuple(ctx.model.params[n]
                                                           for n in self.names))

    def on_evaluation(self, ctx):
        self.evals.append((ctx.epoch, ctx.comparison_value))


# --------------------------------------------------------------------------------------------
# early stopping
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("patience", [1, 3])
def test_lr0_stops_after_patience_evaluations(reader, patience):
    ds = make_dataset()
    m = make_model(lr=0.0)
    tp = tparam(m, 20, 1, ["early_stopping"], [{"patience": patience}])
    _, infos, evals = tr.run_training(ds, m, tp, 0)
    # evaluation 1 sets the best; `patience` evaluations without improvement follow
    assert len(evals) == patience + 1
    ipe = 16 // 4
    assert infos[-1]["iteration"] == (patience + 1) * ipe
    assert infos[-1]["epoch"] == patience + 1
    assert "early stopping" in infos[-1]["stop_reason"]
    assert "top1_error" in infos[-1]["stop_reason"]
    train_calls = [c for c in reader.log if len(c) == 4 and min(c) < 16]
    assert len(train_calls) == (patience + 1) * ipe


def test_default_is_off(reader):
    ds = make_dataset()
    m = make_model(lr=0.0)
    _, infos, evals = tr.run_training(ds, m, tparam(m, 4, 1), 0)
    assert len(evals) == 4 and "stop_reason" not in infos[-1]


def _fake_ctx(keys=("top1_error",)):
    ctx = TrainContext(model=None, dldataset={}, train_param={
        "evaluation_comparison_keys": list(keys), "serialization_strategies": []},
        num_epochs=100)
    return ctx


def test_min_delta_and_measure_semantics():
    """The counting rule on a given sequence of values (no model needed)."""
    hook = EarlyStoppingHook({"patience": 2, "min_delta": 0.05, "restore_best": "false"})
    ctx = _fake_ctx()
    hook.on_train_begin(ctx)
    values = [0.5, 0.54, 0.56, 0.6, 0.62, 0.64]  # improvements > 0.05: 0.5 → 0.56 ... 0.6?
    stopped_at = None
    for i, v in enumerate(values):
        ctx.epoch = float(i + 1)
        ctx.comparison_value = v
        hook.on_evaluation(ctx)
        if ctx.stop and stopped_at is None:
            stopped_at = i
    # best 0.5; 0.54 (+0.04) no, 0.56 (+0.06) yes → best 0.56; 0.6 (+0.04) no; 0.62 (+0.06)
    # yes; 0.64 (+0.02) no: never 2 in a row → never stops
    assert stopped_at is None and ctx.state["early_stopping"]["best"] == 0.62
    ctx2 = _fake_ctx()
    hook.on_train_begin(ctx2)
    for i, v in enumerate([0.5, 0.52, 0.53]):
        ctx2.epoch, ctx2.comparison_value = float(i + 1), v
        hook.on_evaluation(ctx2)
    assert ctx2.stop and ctx2.state["early_stopping"]["wait"] == 2


def test_named_measure_lower_is_better(reader):
    """measure 'top1_error' counts 1 − error: with lr 0 the same as the default."""
    ds = make_dataset()
    m = make_model(lr=0.0)
    tp = tparam(m, 20, 1, ["early_stopping"], [{"patience": 2, "measure": "top1_error"}])
    _, _, evals = tr.run_training(ds, m, tp, 0)
    assert len(evals) == 3


def test_restore_best_is_the_best_file(reader, tmp_path):
    ds = make_dataset()
    # learns in epoch 0-1, then a huge learning rate spoils it: the best is early
    change = {"model_param": "learning_rate", "epochs": [0, 2], "values": [0.01, 2.0]}
    ser = [{"type": "best", "basename": str(tmp_path / "best")},
           {"type": "final", "basename": str(tmp_path / "final")}]
    names = ["change", "serialize", "early_stopping"]
    m = make_model()
    tp = ha.create_dl_train_param(m, 6, 1, "false", 3, names,
                                  [change, ser, {"patience": 10, "restore_best": "true"}])
    log = ParamLog("learning_rate")
    _, infos, evals = tr.run_training(ds, m, tp, 0, [log])
    best_epoch = infos[-1]["best_evaluation"]["best_info"]["epoch"]
    assert best_epoch < 6  # the test's premise: the last epoch is not the best
    best = ha.read_dl_model(str(tmp_path / "best.hdl"))
    assert_same_weights(m, best)
    st_m, st_b = m.core.get_state(), best.core.get_state()
    assert np.array_equal(st_m["m1"], st_b["m1"]) and st_m["steps"] == st_b["steps"]
    # 'final' is written after the restore: the best weights as well
    assert_same_weights(ha.read_dl_model(str(tmp_path / "final.hdl")), best)
    # without restore_best the same run ends elsewhere
    m2 = make_model()
    tp2 = ha.create_dl_train_param(m2, 6, 1, "false", 3, names[:2], [change, []])
    tr.run_training(ds, m2, tp2, 0)
    assert any(not np.array_equal(a, b) for a, b in zip(weights(m2).values(),
                                                         weights(best).values()))


@pytest.mark.parametrize("bad,code", [
    ({"patience": 0}, 7914), ({"patience": 1.5}, 7914), ({}, 7914),
    ({"patience": 2, "min_delta": -1}, 7914), ({"patience": 2, "restore_best": "yes"}, 7914),
    ({"patience": 2, "what": 1}, 7911), ({"patience": 2, "measure": 3}, 7914), ("x", 7914),
])
def test_early_stopping_bad_input(bad, code):
    m = make_model()
    with pytest.raises(ha.HOperatorError) as e:
        ha.create_dl_train_param(m, 2, 1, "false", 1, ["early_stopping"], [bad])
    assert e.value.error_code == code


# --------------------------------------------------------------------------------------------
# schedules against closed forms
# --------------------------------------------------------------------------------------------
def test_step_cosine_warmup_per_iteration(reader):
    ds = make_dataset()  # 16 train samples, batch 4 → 4 iterations per epoch
    m = make_model(lr=0.01)
    ha.set_dl_model_param(m, "momentum", 0.8)
    sched = [{"model_param": "learning_rate", "type": "cosine", "final_value": 0.001},
             {"model_param": "learning_rate", "type": "warmup", "epochs": 1.5,
              "start_value": 0.0001},
             {"model_param": "momentum", "type": "step", "every": 2, "factor": 0.5}]
    log = ParamLog("learning_rate", "momentum")
    tr.run_training(ds, m, tparam(m, 5, 0, ["schedule"], [sched]), 0, [log])
    assert len(log.rows) == 20
    for k, (epoch, it, lr, mom) in enumerate(log.rows):
        e = k / 4
        assert epoch == e and it == k
        cos = 0.001 + (0.01 - 0.001) * (1 + math.cos(math.pi * e / 5)) / 2
        want_lr = 0.0001 + (cos - 0.0001) * min(1.0, e / 1.5)
        assert lr == pytest.approx(want_lr, rel=1e-12, abs=0), k
        assert mom == pytest.approx(0.8 * 0.5 ** math.floor(e / 2), rel=1e-12), k


def test_cosine_epochs_and_initial_value(reader):
    ds = make_dataset()
    m = make_model(lr=0.5)  # initial_value replaces the model's value as the base
    sched = {"model_param": "learning_rate", "type": "cosine", "final_value": 0.0,
             "epochs": 2, "initial_value": 0.02}
    log = ParamLog("learning_rate")
    tr.run_training(ds, m, tparam(m, 3, 0, ["schedule"], [sched]), 0, [log])
    for k, (_, _, lr) in enumerate(log.rows):
        e = min(k / 4, 2)
        assert lr == pytest.approx(0.02 * (1 + math.cos(math.pi * e / 2)) / 2, abs=1e-15)
    assert log.rows[-1][2] == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("patience", [1, 2])
def test_plateau_reductions(reader, patience):
    """lr 0: the measure is constant, so reductions happen every `patience` evaluations."""
    ds = make_dataset()
    m = make_model(lr=0.0)
    ha.set_dl_model_param(m, "momentum", 0.9)
    sched = {"model_param": "momentum", "type": "plateau", "factor": 0.5,
             "patience": patience, "min_value": 0.1}
    log = ParamLog("momentum")
    tr.run_training(ds, m, tparam(m, 6, 0.5, ["schedule"], [sched]), 0, [log])
    # evaluations after iterations 2, 4, 6, ...; the value before iteration k depends on the
    # evaluations done before it: n_eval = k // 2; reductions = max(0, n_eval - 1) // patience
    for k, (_, it, mom) in enumerate(log.rows):
        n_eval = k // 2
        red = max(0, n_eval - 1) // patience
        assert mom == pytest.approx(max(0.1, 0.9 * 0.5 ** red), rel=1e-12), (k, red)
    assert log.rows[-1][2] == pytest.approx(0.1) or patience == 2


def test_schedule_resume_continues_exactly(reader, tmp_path):
    ds = make_dataset()
    sched = [{"model_param": "learning_rate", "type": "warmup", "epochs": 1},
             {"model_param": "learning_rate", "type": "step", "every": 1.5, "factor": 0.3},
             {"model_param": "momentum", "type": "plateau", "factor": 0.5}]
    # 4 epochs straight
    m4 = make_model()
    log4 = ParamLog("learning_rate", "momentum")
    tr.run_training(ds, m4, tparam(m4, 4, 0.5, ["schedule"], [sched]), 0, [log4])
    # stop at iteration 7 (inside epoch 1), then resume from the 'final' state
    ser = [{"type": "final", "basename": str(tmp_path / "fin")}]

    class StopAt(TrainHook):
        def on_batch_end(self, ctx):
            if ctx.iteration == 7:
                ctx.stop = True

    m = make_model()
    tp = ha.create_dl_train_param(m, 4, 0.5, "false", 5, ["schedule", "serialize"],
                                  [sched, ser])
    log_a = ParamLog("learning_rate", "momentum")
    tr.run_training(ds, m, tp, 0, [StopAt(), log_a])
    fresh = make_model(lr=0.3)  # other parameter values: the state file decides
    ha.set_dl_model_param(fresh, "momentum", 0.1)
    log_b = ParamLog("learning_rate", "momentum")
    tr.run_training(ds, fresh, tp, "resume", [log_b])
    assert log_a.rows + log_b.rows == log4.rows
    assert_same_weights(fresh, m4)
    assert os.path.isfile(tmp_path / "fin_info.hdict")
    info = tr.read_info(str(tmp_path / "fin_info.hdict"))
    assert "schedules" in info["resume"]["state"]


@pytest.mark.parametrize("bad,code", [
    ({"model_param": "learning_rate", "type": "exp"}, 7914),
    ({"model_param": "class_ids", "type": "step", "every": 1, "factor": 0.5}, 7914),
    ({"model_param": "batch_size", "type": "step", "every": 1, "factor": 0.5}, 7914),
    ({"model_param": "learning_rate", "type": "step", "every": 0, "factor": 0.5}, 7914),
    ({"model_param": "learning_rate", "type": "step", "factor": 0.5}, 7914),
    ({"model_param": "learning_rate", "type": "cosine", "final_value": float("nan")}, 7914),
    ({"model_param": "learning_rate", "type": "warmup", "epochs": -1}, 7914),
    ({"model_param": "learning_rate", "type": "plateau", "factor": 1.0}, 7914),
    ({"model_param": "learning_rate", "type": "plateau", "factor": 0.5, "patience": 0}, 7914),
    ({"model_param": "learning_rate", "type": "step", "every": 1, "factor": 0.5, "x": 1},
     7911),
    ("step", 7914),
])
def test_schedule_bad_input(bad, code):
    m = make_model()
    with pytest.raises(ha.HOperatorError) as e:
        ha.create_dl_train_param(m, 2, 1, "false", 1, ["schedule"], [bad])
    assert e.value.error_code == code


def test_schedule_and_change_on_one_parameter_refused():
    m = make_model()
    with pytest.raises(ha.HOperatorError) as e:
        ha.create_dl_train_param(
            m, 2, 1, "false", 1, ["change", "schedule"],
            [{"model_param": "learning_rate", "epochs": [1], "values": [0.1]},
             {"model_param": "learning_rate", "type": "step", "every": 1, "factor": 0.5}])
    assert e.value.error_code == 7914
    # a hand-made train_param is checked by train_dl_model too, before anything changes
    tp = tparam(m, 1, 1)
    tp["schedules"] = [{"model_param": "momentum", "type": "step", "every": 0}]
    w = weights(m)
    with pytest.raises(ha.HOperatorError) as e:
        ha.train_dl_model(make_dataset(), m, tp, 0)
    assert e.value.error_code == 7914
    assert all(np.array_equal(w[n], v) for n, v in weights(m).items())

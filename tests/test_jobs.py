"""Background training (issue 13): start_train_dl_model → TrainingJob, TrainingQueue.

Nothing here depends on timing: the sample reader (replaced by an in-memory one, as in
tests/test_train.py) can hold the training thread at a chosen iteration (``Gate``), so the
tests know exactly where the job is when they look at it, stop it or call into the model.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

import halcdl as ha
from halcdl.workflow import evaluate as ev
from halcdl.workflow import train as tr
from test_schedules import assert_same_weights, make_dataset, make_model, read_memory, tparam

N_TRAIN = 16
WAIT = 120  # seconds: only a safety net against a deadlock, never reached when all is well


class Gate:
    """The in-memory reader; training read number ``hold_at`` (1-based, per dataset) blocks
    until ``go`` is set, after setting ``reached``.  ``fail_at`` raises instead."""

    def __init__(self, hold_at=None, fail_at=None):
        self.hold_at, self.fail_at = hold_at, fail_at
        self.reached, self.go = threading.Event(), threading.Event()
        self.calls: dict[int, int] = {}
        self.order: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, dldataset, indices):
        training = len(indices) == 4 and max(indices) < N_TRAIN
        if training:
            with self.lock:
                key = id(dldataset)
                if key not in self.calls:
                    self.order.append(key)
                self.calls[key] = self.calls.get(key, 0) + 1
                n = self.calls[key]
            if n == self.fail_at:
                raise RuntimeError("reader failed on purpose")
            if n == self.hold_at:
                self.reached.set()
                assert self.go.wait(WAIT)
        return read_memory(dldataset, indices)


@pytest.fixture
def gate(monkeypatch):
    def make(**kw):
        g = Gate(**kw)
        monkeypatch.setattr(ev, "read_samples", g)
        return g
    return make


def test_background_equals_foreground_and_progress(gate):
    gate()
    ds = make_dataset()
    fg = make_model()
    tr.run_training(ds, fg, tparam(fg, 3, 1), 0)
    m = make_model()
    job = ha.start_train_dl_model(ds, m, tparam(m, 3, 1), 0)
    seen = []
    while True:
        e = job.wait_for_iteration_completion()
        done = job.done
        seen.append((e, job.progress, done))
        if done:
            break
    assert job.wait_for_training_completion(-1) == 3.0
    progresses = [p for _, p, _ in seen]
    assert progresses == sorted(progresses)
    assert all(p < 1 for _, p, d in seen if not d) and job.progress == 1.0
    assert job.started_at <= job.finished_at and job.state == "finished"
    assert [h["epoch"] for h in job.history] == [1.0, 2.0, 3.0]
    assert all(h["evaluation"] is not None and np.isfinite(h["mean_loss"])
               for h in job.history)
    _, infos, evals = job.result()
    assert len(evals) == 3 and infos[-1]["epoch"] == 3.0
    assert_same_weights(m, fg)


def test_stop_within_one_batch_and_model_locked(gate):
    g = gate(hold_at=3)
    ds = make_dataset()
    m = make_model()
    w0 = None
    job = ha.start_train_dl_model(ds, m, tparam(m, 5, 1), 0)
    assert g.reached.wait(WAIT)
    # held inside iteration 3 (2 done): the model is reserved for the job
    assert 0 <= job.progress < 1 and job.state == "running"
    batch = read_memory(ds, [0, 1, 2, 3])
    with pytest.raises(ha.HOperatorError) as e:
        ha.train_dl_model_batch(m, batch)
    assert e.value.error_code == 7913
    with pytest.raises(ha.HOperatorError) as e:
        ha.start_train_dl_model(ds, m, tparam(m, 1, 1), 0)
    assert e.value.error_code == 7913
    with pytest.raises(ha.HOperatorError) as e:
        ha.train_dl_model(ds, m, tparam(m, 1, 1), 0)
    assert e.value.error_code == 7913
    # nor may another thread change its parameters or weights, or clear it
    lr = ha.get_dl_model_param(m, "learning_rate")  # reading still works
    with pytest.raises(ha.HOperatorError) as e:
        ha.set_dl_model_param(m, "learning_rate", 0.5)
    assert e.value.error_code == 7913 and ha.get_dl_model_param(m, "learning_rate") == lr
    with pytest.raises(ha.HOperatorError) as e:
        ha.load_dl_model_weights(make_model(), m)
    assert e.value.error_code == 7913
    other = make_model()
    with pytest.raises(ha.HOperatorError) as e:
        ha.clear_dl_model([other, m])
    assert e.value.error_code == 7913
    ha.get_dl_model_param(other, "batch_size")  # nothing was cleared: not 2454
    w0 = {n: np.array(m.core.get_param(n)) for n in m.core.param_names()}
    res = ha.apply_dl_model(m, batch, [])  # inference still works
    assert len(res) == 4
    assert job.wait_for_training_completion(0) == 0.0 and not job.done  # timeout 0 returns
    job.stop_training(False)
    g.go.set()
    assert job.wait_for_training_completion(-1) == pytest.approx(3 / 4)
    assert m.core.get_state()["steps"] == 3  # the batch in flight, then the stop
    assert job.result()[1][-1]["stop_reason"] == "stop_training"
    assert any(not np.array_equal(w0[n], np.array(m.core.get_param(n))) for n in w0)
    # released: training from here works again
    ha.train_dl_model_batch(m, batch)
    assert job.stop_training(True) == pytest.approx(3 / 4)  # stopping a finished job: a no-op


def test_exception_reaches_result_and_releases_model(gate):
    gate(fail_at=2)
    ds = make_dataset()
    m = make_model()
    job = ha.start_train_dl_model(ds, m, tparam(m, 2, 1), 0)
    with pytest.raises(RuntimeError, match="on purpose"):
        job.result()
    assert job.state == "failed" and job.progress < 1 and job.finished_at is not None
    assert job.wait_for_iteration_completion() == 0.0  # returns: the job is over
    ha.train_dl_model_batch(m, read_memory(ds, [0, 1, 2, 3]))


def test_two_jobs_on_two_models_at_once(gate, monkeypatch):
    gate()
    barrier = threading.Barrier(2, timeout=WAIT)
    first = {}
    inner = ev.read_samples

    def read(dldataset, indices):  # both threads must be inside their first batch together
        if id(dldataset) not in first:
            first[id(dldataset)] = True
            barrier.wait()
        return inner(dldataset, indices)

    monkeypatch.setattr(ev, "read_samples", read)
    ds_a, ds_b = make_dataset(seed=1), make_dataset(seed=2)
    a, b = make_model(seed=3), make_model(seed=4)
    ja = ha.start_train_dl_model(ds_a, a, tparam(a, 2, 1, seed=11), 0)
    jb = ha.start_train_dl_model(ds_b, b, tparam(b, 2, 1, seed=12), 0)
    ja.result(), jb.result()
    monkeypatch.setattr(ev, "read_samples", inner)
    for ds, model, seed, mseed in ((ds_a, a, 11, 3), (ds_b, b, 12, 4)):
        fg = make_model(seed=mseed)
        tr.run_training(ds, fg, tparam(fg, 2, 1, seed=seed), 0)
        assert_same_weights(model, fg)


def test_queue_order_move_cancel(gate):
    g = gate(hold_at=1)
    q = ha.TrainingQueue()
    dss = [make_dataset(seed=s) for s in range(4)]
    models = [make_model(seed=s) for s in range(4)]
    jobs = [q.submit(ds, m, tparam(m, 1, 1), 0) for ds, m in zip(dss, models)]
    assert g.reached.wait(WAIT)  # job 0 runs (held in its first batch), 1..3 wait
    assert [j.state for j in jobs] == ["running", "queued", "queued", "queued"]
    q.move(jobs[3], 0)
    q.cancel(jobs[1])
    assert q.jobs == [jobs[1], jobs[0], jobs[3], jobs[2]]  # done (cancelled), running, waiting
    with pytest.raises(ha.HOperatorError):
        q.move(jobs[0], 1)  # running: not movable
    g.go.set()
    assert q.wait_all() is True
    assert g.order == [id(dss[0]), id(dss[3]), id(dss[2])]
    assert jobs[1].state == "cancelled" and jobs[1].started_at is None
    with pytest.raises(ha.HOperatorError) as e:
        jobs[1].result()
    assert e.value.error_code == 7913
    assert all(jobs[i].state == "finished" for i in (0, 2, 3))
    # a second round on the same queue (the worker restarts)
    j = q.submit(dss[0], models[0], tparam(models[0], 1, 1), 0)
    assert q.wait_all(WAIT) and j.state == "finished"


def test_concurrent_submitters(gate):
    gate()
    q = ha.TrainingQueue()
    ds = make_dataset(n_val=0)
    models = [make_model(seed=s) for s in range(4)]
    out = []

    def submit(m):
        out.append(q.submit(ds, m, tparam(m, 1, 1), 0))

    threads = [threading.Thread(target=submit, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert q.wait_all(WAIT)
    assert len(out) == 4 and all(j.state == "finished" for j in out)
    assert sorted(map(id, q.jobs)) == sorted(map(id, out))


@pytest.mark.parametrize("args,code", [
    (lambda ds, m, tp: ("nope", m, tp, 0), 1201),
    (lambda ds, m, tp: (ds, "nope", tp, 0), 1202),
    (lambda ds, m, tp: (ds, m, 3, 0), 1203),
    (lambda ds, m, tp: (ds, m, tp, -1), 1304),
    (lambda ds, m, tp: (ds, m, tp, "go"), 1204),
    (lambda ds, m, tp: ({**ds, "samples": [dict(s, split="test") for s in ds["samples"]]},
                        m, tp, 0), 7925),
])
def test_start_bad_input(gate, args, code):
    gate()
    ds, m = make_dataset(), make_model()
    with pytest.raises(ha.HOperatorError) as e:
        ha.start_train_dl_model(*args(ds, m, tparam(m, 1, 1)))
    assert e.value.error_code == code
    assert getattr(m, "training_job", None) is None
    q = ha.TrainingQueue()
    with pytest.raises(ha.HOperatorError):
        q.submit(*args(ds, m, tparam(m, 1, 1)))
    assert q.jobs == []
    job = ha.start_train_dl_model(ds, m, tparam(m, 1, 1), 0)
    for bad in (-2, "x", [1, 2]):
        with pytest.raises(ha.HOperatorError):
            job.wait_for_training_completion(bad)
    job.result()

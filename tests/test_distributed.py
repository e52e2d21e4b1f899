"""Data-parallel training on torch.distributed (python/halcdl/distributed.py, docs/distributed.md).

The ranks are real processes on 127.0.0.1 (Gloo), started by `python -m torch.distributed.run`
or directly with torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), running
tests/distributed_worker.py: compact at 32×32 on scikit-learn's digits, one OpenMP thread per
rank.  The independent reference is one process that takes all ranks' samples of a step with
batch_size_multiplier × world size (HALCON's own semantics for one big step, checked against
PyTorch in test_training_golden.py).
Checked: W ranks × batch b equal that process after 5 steps (SGD with momentum, Adam; every
weight, running statistic and optimizer moment ≤ 1e-5 relative; the losses), the ranks are
bit-identical to each other (2 and 4 ranks); a rank killed or hung mid-run makes the survivor
raise 7720 with its model as before the step; and the single-process errors.
"""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import halcdl as ha
from halcdl import errors as E
from halcdl import distributed

torch = pytest.importorskip("torch")
dist = torch.distributed

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from helpers import halcdl_path  # noqa: E402
WORKER = os.path.join(HERE, "distributed_worker.py")
STEPS = 5
LAUNCH_TIMEOUT = 300  # seconds a launch may take before the test fails (never hangs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    py = halcdl_path()
    env.update(PYTHONPATH=os.pathsep.join([py, HERE, env.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONWARNINGS="ignore",
               HALCDL_DISTRIBUTED_TIMEOUT="60")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _check(proc_out: tuple, what: str) -> None:
    rc, out = proc_out
    assert rc == 0, f"{what} failed (rc {rc}):\n{out[-4000:]}"


def _torchrun(cfg: dict, nproc: int) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", WORKER, json.dumps(cfg)]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    _check((p.returncode, p.stdout + p.stderr), "torchrun")


def _spawn(cfg: dict, nproc: int, wait_for=None, **env) -> list:
    """Start `nproc` ranks with torchrun's environment; wait for the ranks in `wait_for`
    (default all) and kill the others.  Returns the return codes (None: killed)."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, WORKER, json.dumps(cfg)],
                              env=_env(RANK=r, LOCAL_RANK=r, WORLD_SIZE=nproc,
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **env),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(nproc)]
    wait_for = range(nproc) if wait_for is None else wait_for
    rcs = [None] * nproc
    try:
        for r in wait_for:
            out, _ = procs[r].communicate(timeout=LAUNCH_TIMEOUT)
            rcs[r] = procs[r].returncode
            _check((rcs[r], out), f"rank {r}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    return rcs


def _run(out: str, solver: str, world: int, batch: int, **kw) -> dict:
    return dict(out=out, solver=solver, world=world, batch=batch, steps=STEPS, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The single-process runs: {(solver, world): npz}."""
    d = tmp_path_factory.mktemp("ref")
    runs = {("sgd", 2): 8, ("adam", 2): 8, ("sgd", 4): 4}
    cfg = {"reference": True,
           "runs": [_run(str(d / f"{s}{w}.npz"), s, w, b) for (s, w), b in runs.items()]}
    p = subprocess.run([sys.executable, WORKER, json.dumps(cfg)], env=_env(),
                       capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    _check((p.returncode, p.stdout + p.stderr), "reference")
    return {k: dict(np.load(d / f"{k[0]}{k[1]}.npz")) for k in runs}


def _compare(ranks: list, ref: dict, what: str) -> None:
    for r, got in enumerate(ranks[1:], start=1):  # ranks bit-identical
        for k in ref:
            assert np.array_equal(got[k], ranks[0][k]), f"{what}: rank {r} differs in {k}"
    got = ranks[0]
    assert got["losses"].shape == (STEPS, 2)
    np.testing.assert_allclose(got["losses"], ref["losses"], rtol=1e-6, err_msg=what)
    np.testing.assert_array_equal(got["counters"], ref["counters"])
    names = [k for k in ref if k.startswith("p:")]
    assert names and any("running_var" in k for k in names)
    for k in names + ["m1", "m2"]:
        a, b = got[k], ref[k]
        scale = max(float(np.abs(b).max()), 1e-12)
        assert float(np.abs(a - b).max()) / scale <= 1e-5, f"{what}: {k}"
    # the run really trained: every step changed the weights, and the losses fell
    assert got["losses"][-1, 0] < got["losses"][0, 0]


def test_two_ranks_equal_one_process_with_multiplier(reference, tmp_path):
    cfg = {"runs": [_run(str(tmp_path / "sgd_r{}.npz"), "sgd", 2, 8),
                    _run(str(tmp_path / "adam_r{}.npz"), "adam", 2, 8)]}
    # the worker writes <out> per rank: give every rank its own file
    cfg = _per_rank(cfg)
    _torchrun(cfg, 2)
    for solver in ("sgd", "adam"):
        ranks = [dict(np.load(tmp_path / f"{solver}_r{r}.npz")) for r in range(2)]
        _compare(ranks, reference[(solver, 2)], f"{solver}, 2 ranks")


@pytest.mark.slow  # ~1.5 min on 2 shared cores (4 processes importing torch)
def test_four_ranks_caller_initialised_group(reference, tmp_path):
    cfg = _per_rank({"init": "caller",
                     "runs": [_run(str(tmp_path / "sgd_r{}.npz"), "sgd", 4, 4)]})
    _spawn(cfg, 4)
    ranks = [dict(np.load(tmp_path / f"sgd_r{r}.npz")) for r in range(4)]
    _compare(ranks, reference[("sgd", 4)], "sgd, 4 ranks")


def _per_rank(cfg: dict) -> dict:
    """Out files with '{}' get the rank filled in by the worker (RANK)."""
    cfg["per_rank_out"] = True
    return cfg


@pytest.mark.parametrize("how", ["kill", pytest.param("hang", marks=pytest.mark.slow)])
def test_lost_rank_raises_and_leaves_the_model_unchanged(tmp_path, how):
    out = str(tmp_path / "r{}.npz")
    cfg = _per_rank({"runs": [_run(out, "sgd", 2, 8, fail={"rank": 1, "step": 2, "how": how})]})
    # rank 0 must come back by itself (within the timeout), rank 1 is dead or killed after
    _spawn(cfg, 2, wait_for=[0], HALCDL_DISTRIBUTED_TIMEOUT=10)
    with open(out.format(0) + ".json") as f:
        res = json.load(f)
    assert res["raised"] == E.H_ERR_DL_TRAINING_FAILED, res
    assert "data parallel" in res["message"] and "rank 0 of 2" in res["message"], res
    assert res["unchanged"], res


@pytest.mark.slow  # ~1-4 min on 2 shared cores
def test_train_dl_model_two_ranks_equals_one_process(tmp_path):
    """train_dl_model shards each epoch's permutation by rank: 2 ranks × batch 8 train on the
    same samples as one process with batch 8 and multiplier 2, evaluate alike, and only rank
    0 writes files and the progress display."""
    wf = {"out": str(tmp_path / "wf_r{}.npz"), "dir": str(tmp_path / "files_r{}"),
          "epochs": 2, "batch": 8, "world": 2}
    p = subprocess.run([sys.executable, WORKER, json.dumps({"reference": True, "workflow": {
        **wf, "out": str(tmp_path / "wf_ref.npz"), "dir": str(tmp_path / "files_ref")}})],
        env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    _check((p.returncode, p.stdout + p.stderr), "reference")
    ref = dict(np.load(tmp_path / "wf_ref.npz"))
    _spawn(_per_rank({"workflow": wf}), 2)
    ranks = [dict(np.load(tmp_path / f"wf_r{r}.npz")) for r in range(2)]
    for k in ref:
        assert np.array_equal(ranks[0][k], ranks[1][k]), k
    got = ranks[0]
    assert int(got["n_evals"]) == int(ref["n_evals"]) == 2
    assert float(got["top1"]) == pytest.approx(float(ref["top1"]), abs=0.011)  # ≤ 1 image
    assert float(got["top1"]) < 0.5  # it learned (10 classes: chance is 0.9)
    np.testing.assert_array_equal(got["counters"], ref["counters"])
    for k in (k for k in ref if k.startswith("p:")):
        scale = max(float(np.abs(ref[k]).max()), 1e-12)
        assert float(np.abs(got[k] - ref[k]).max()) / scale <= 1e-3, k
    assert sorted(os.listdir(tmp_path / "files_r0")) == sorted(os.listdir(tmp_path / "files_ref"))
    assert os.listdir(tmp_path / "files_r0") and not os.listdir(tmp_path / "files_r1")


def _emulated_gpu_library():
    spec = importlib.util.spec_from_file_location(
        "halcdl_gpu_emu_build", os.path.join(HERE, "gpu_emu", "build.py"))
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    ok, why = build.available()
    if not ok:
        pytest.skip(f"emulated GPU backend unavailable: {why}")
    return build.build()


@pytest.mark.slow  # builds the emulated backend (tests/gpu_emu) on first use
def test_gpu_train_step_hook_on_the_emulated_backend(tmp_path):
    """The GPU engine's side of the hook (csrc/cuda/engine.cpp): device pointers of the
    gradient arena and statistics, the 1/(m·W) scaling, dropout offsets and the commit after
    the reduce, on tests/gpu_emu's emulated GPU (device memory is host memory there; the
    worker views it with numpy).  2 ranks equal one emulated-GPU process with multiplier 2."""
    lib = _emulated_gpu_library()
    ref_out = str(tmp_path / "ref.npz")
    p = subprocess.run([sys.executable, WORKER, json.dumps(
        {"reference": True, "gpu": True, "runs": [_run(ref_out, "sgd", 2, 8)]})],
        env=_env(HALCDL_CUDA_LIBRARY=lib), capture_output=True, text=True,
        timeout=LAUNCH_TIMEOUT)
    _check((p.returncode, p.stdout + p.stderr), "reference")
    cfg = _per_rank({"gpu": True, "runs": [_run(str(tmp_path / "r{}.npz"), "sgd", 2, 8)]})
    _spawn(cfg, 2, HALCDL_CUDA_LIBRARY=lib)
    ranks = [dict(np.load(tmp_path / f"r{r}.npz")) for r in range(2)]
    _compare(ranks, dict(np.load(ref_out)), "emulated GPU, 2 ranks")


# ---- single process -------------------------------------------------------------------------
def _small_model():
    ha.set_system("seed_rand", 7)
    m = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    ha.set_dl_model_param(m, "image_dimensions", [32, 32, 3])
    ha.set_dl_model_param(m, "class_ids", list(range(10)))
    ha.set_dl_model_param(m, "batch_size", 4)
    ha.set_dl_model_param(m, "learning_rate", 0.01)
    return m


def _batch(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return [{"image": rng.uniform(0, 16, (32, 32, 3)).astype(np.float32),
             "image_label_id": int(i % 10)} for i in range(n)]


def _params(m):
    return {n: np.asarray(m.core.get_param(n)).copy() for n in m.core.param_names()}


@pytest.fixture
def group(tmp_path, monkeypatch):
    """A one-rank Gloo group initialised by the caller (destroyed afterwards)."""
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


def test_defaults_and_bad_values():
    m = _small_model()
    assert ha.get_dl_model_param(m, "data_parallel") == ["false"]
    assert ha.get_dl_model_param_s(m, "data_parallel_rank") == 0
    assert ha.get_dl_model_param_s(m, "data_parallel_world_size") == 1
    with pytest.raises(ha.HOperatorError) as e:
        ha.set_dl_model_param(m, "data_parallel", "yes")
    assert e.value.error_code == E.H_ERR_WIPV3
    with pytest.raises(ha.HOperatorError) as e:
        ha.set_dl_model_param(m, "data_parallel", 1)
    assert e.value.error_code == E.H_ERR_WIPT3
    with pytest.raises(ha.HOperatorError) as e:
        ha.set_dl_model_param(m, "data_parallel_rank", 1)
    assert e.value.error_code == E.H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM
    ha.set_dl_model_param(m, "data_parallel", "false")  # not joined: nothing to leave


def test_without_torch_names_the_extra(monkeypatch):
    m = _small_model()
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    monkeypatch.setitem(sys.modules, "torch.distributed", None)
    with pytest.raises(ha.HOperatorError) as e:
        ha.set_dl_model_param(m, "data_parallel", "torch")
    assert e.value.error_code == E.H_ERR_CNN_RUNTIME_FAILED
    assert "halcdl[distributed]" in e.value.message
    assert ha.get_dl_model_param_s(m, "data_parallel") == "false"


def test_without_group_or_environment(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert not dist.is_initialized()
    m = _small_model()
    with pytest.raises(ha.HOperatorError) as e:
        ha.set_dl_model_param(m, "data_parallel", "torch")
    assert e.value.error_code == E.H_ERR_DL_MODEL_RUNTIME
    assert "torchrun" in e.value.message and "RANK" in e.value.message
    assert ha.get_dl_model_param_s(m, "data_parallel") == "false"


@pytest.mark.parametrize("value", ["0", "-3", "soon"])
def test_bad_timeout(monkeypatch, value):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, value)
    with pytest.raises(ha.HOperatorError) as e:
        distributed.timeout_seconds()
    assert e.value.error_code == E.H_ERR_DL_MODEL_RUNTIME


def test_one_rank_group_trains_like_a_single_process(group):
    a, b = _small_model(), _small_model()
    ha.set_dl_model_param(b, "data_parallel", "torch")
    assert ha.get_dl_model_param_s(b, "data_parallel_world_size") == 1
    for k in range(3):
        ra = ha.train_dl_model_batch(a, _batch(seed=k))
        rb = ha.train_dl_model_batch(b, _batch(seed=k))
        assert rb["total_loss"] == pytest.approx(ra["total_loss"], rel=1e-12)
    pa, pb = _params(a), _params(b)
    for n in pa:  # the gradient is bitwise the same; the running statistics within rounding
        np.testing.assert_allclose(pb[n], pa[n], rtol=1e-6, atol=1e-7, err_msg=n)
    ha.set_dl_model_param(b, "data_parallel", "false")
    assert ha.get_dl_model_param_s(b, "data_parallel") == "false"
    assert dist.is_initialized()  # the caller's group stays


def test_failing_all_reduce_commits_nothing(group, monkeypatch):
    m = _small_model()
    ha.set_dl_model_param(m, "data_parallel", "torch")
    ha.train_dl_model_batch(m, _batch(seed=1))
    before, state = _params(m), dict(m.core.get_state())

    def broken(*args, **kw):
        raise RuntimeError("Connection closed by peer [127.0.0.1]:12345")

    monkeypatch.setattr(dist, "all_reduce", broken)
    with pytest.raises(ha.HOperatorError) as e:
        ha.train_dl_model_batch(m, _batch(seed=2))
    assert e.value.error_code == E.H_ERR_DL_TRAINING_FAILED
    assert "Connection closed by peer" in e.value.message
    after, state2 = _params(m), dict(m.core.get_state())
    for n in before:
        assert np.array_equal(before[n], after[n]), n
    assert state2["steps"] == state["steps"]
    assert np.array_equal(state2["m1"], state["m1"])
    monkeypatch.undo()
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    ha.train_dl_model_batch(m, _batch(seed=2))  # and the next step works
    assert dict(m.core.get_state())["steps"] == state["steps"] + 1


def test_structural_change_is_refused_while_joined(group):
    m = _small_model()
    ha.set_dl_model_param(m, "data_parallel", "torch")
    before, core = _params(m), m.core
    with pytest.raises(ha.HOperatorError) as e:
        ha.set_dl_model_param(m, "class_ids", [1, 2, 3])
    assert e.value.error_code == E.H_ERR_DL_MODEL_RUNTIME
    assert m.core is core and ha.get_dl_model_param(m, "class_ids") == list(range(10))
    assert all(np.array_equal(before[n], v) for n, v in _params(m).items())
    ha.set_dl_model_param(m, "learning_rate", 0.5)  # plain parameters are fine
    ha.set_dl_model_param(m, "data_parallel", "false")
    ha.set_dl_model_param(m, "class_ids", [1, 2, 3])


def test_engine_reduce_callback_contract():
    """core.Model.train_step's reduce callback (csrc/bindings/module.cpp call_reduce): the
    views it gets, a Python error → 7720 (KeyboardInterrupt as it is), nothing committed."""
    m = _small_model()
    m.push_hparams()
    b = _batch()
    args = (b, 4, 1, 32, 32, 3, 0)
    before, steps = _params(m), dict(m.core.get_state())["steps"]
    seen = {}

    def look(grad, stats, stats_before, scalars, mult, momentum, device):
        seen.update(grad=grad.copy(), n_stats=stats.size, ro=stats_before.flags.writeable,
                    same=np.array_equal(stats_before, np.concatenate(
                        [before[n].ravel() for n in m.core.param_names() if "running" in n])),
                    sc=scalars.tolist(), mult=mult, momentum=momentum, device=device)
        raise ValueError("boom")

    with pytest.raises(ha.HOperatorError) as e:
        m.core.train_step(*args, look, 1, 0)
    assert e.value.error_code == E.H_ERR_DL_TRAINING_FAILED and "ValueError: boom" in e.value.message
    assert seen["grad"].shape == (m.core.num_trainable_params(),) and not seen["ro"]
    assert seen["same"] and seen["mult"] == 1 and seen["device"] == -1
    assert seen["momentum"] == pytest.approx(0.1) and seen["sc"][1] == 0.0
    assert np.isfinite(seen["sc"][0]) and np.abs(seen["grad"]).max() > 0

    def interrupt(*a):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        m.core.train_step(*args, interrupt, 1, 0)
    assert dict(m.core.get_state())["steps"] == steps
    assert all(np.array_equal(before[n], v) for n, v in _params(m).items())
    # a callback that leaves everything as it is: the step is a plain single-process step
    r = m.core.train_step(*args, lambda *a: None, 1, 0)
    ref = _small_model()
    ref.push_hparams()
    r_ref = ref.core.train_step(*args)
    assert r["total_loss"] == r_ref["total_loss"]
    for n, v in _params(ref).items():
        if "running" not in n:  # the callback did not turn the statistics into the sum
            assert np.array_equal(_params(m)[n], v), n

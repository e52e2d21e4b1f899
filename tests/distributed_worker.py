"""One rank (or the single-process reference) of tests/test_distributed.py.

    python distributed_worker.py '<json config>'

The rank comes from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), which
halcdl reads itself when a model joins ('data_parallel' = 'torch'), or the worker initialises
the group itself first (init = "caller").  reference = true: the single-process reference,
which takes every rank's samples with batch_size_multiplier × world size.  Config:
  reference, init, gpu (the model on the emulated GPU backend), runs: a list of runs, each with
    out        .npz file written at the end (parameters, optimizer state, losses)
    steps      train steps;  batch  samples per rank and sub-batch;  world  ranks of the run
    solver     'sgd' | 'adam';  multiplier  per rank (default 1)
    fail       {"rank": r, "step": k, "how": "kill" | "hang"}: rank r dies (SIGKILL) or hangs
               before step k; the others write <out>.json: what step k raised and whether the
               model is as before that step, then exit at once
Samples: scikit-learn's digits, 8×8 upscaled to 32×32 (np.kron), 3 channels, range 0..16.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

import numpy as np

cfg = json.loads(sys.argv[1])
import torch  # noqa: E402

torch.set_num_threads(1)
import halcdl as ha  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

ha.set_system("thread_num", 1)
reference = bool(cfg.get("reference", False))
rank = 0 if reference else int(os.environ["RANK"])
if cfg.get("init") == "caller":  # the caller's own process group (else halcdl's, from the env)
    import datetime
    import torch.distributed as dist
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))

d = load_digits()
imgs = np.kron(d.images, np.ones((4, 4))).astype(np.float32)[..., None].repeat(3, axis=-1)
samples = [{"image": imgs[i], "image_label_id": int(d.target[i]), "image_id": i}
           for i in range(len(imgs))]


def make_model(run):
    world, mult = int(run["world"]), int(run.get("multiplier", 1))
    ha.set_system("seed_rand", 100 + rank)  # the ranks start different: joining equalises
    model = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    ha.set_dl_model_param(model, "image_dimensions", [32, 32, 3])
    ha.set_dl_model_param(model, "class_ids", list(range(10)))
    ha.set_dl_model_param(model, "batch_size", int(run["batch"]))
    ha.set_dl_model_param(model, "batch_size_multiplier", mult * (world if reference else 1))
    ha.set_dl_model_param(model, "solver_type", run["solver"])
    ha.set_dl_model_param(model, "learning_rate", 0.01 if run["solver"] == "sgd" else 1e-3)
    ha.set_dl_model_param(model, "momentum", 0.9)
    ha.set_dl_model_param(model, "weight_prior", 1e-4)
    if cfg.get("gpu"):  # the emulated GPU backend (HALCDL_CUDA_LIBRARY, tests/gpu_emu)
        ha.set_dl_model_param(model, "runtime", "gpu")
    if not reference:
        ha.set_dl_model_param(model, "data_parallel", "torch")
        assert ha.get_dl_model_param_s(model, "data_parallel") == "torch"
        assert ha.get_dl_model_param_s(model, "data_parallel_rank") == rank
        assert ha.get_dl_model_param_s(model, "data_parallel_world_size") == world
    return model


if cfg.get("gpu"):
    # The emulated GPU's device memory is host memory: view the engine's device pointers with
    # numpy and run the CPU branch of the reduce (the CPU torch here has no CUDA).
    import ctypes

    from halcdl import distributed as _dist

    _orig_reduce = _dist.DataParallel.reduce

    def _host(t):
        ptr, n = t
        return np.ctypeslib.as_array((ctypes.c_float * int(n)).from_address(int(ptr)))

    def _reduce(self, grad, stats, before, scalars, mult, momentum, device):
        assert device >= 0 and isinstance(grad, tuple), "expected device pointers"
        return _orig_reduce(self, _host(grad), _host(stats), _host(before), scalars, mult,
                            momentum, -1)

    _dist.DataParallel.reduce = _reduce


def snapshot(model):
    core = model.core
    out = {f"p:{n}": np.asarray(core.get_param(n)).copy() for n in core.param_names()}
    st = dict(core.get_state())
    out["m1"], out["m2"] = np.asarray(st["m1"]).copy(), np.asarray(st["m2"]).copy()
    out["counters"] = np.asarray([st["adam_t"], st["steps"]], dtype=np.int64)
    return out


def workflow(wf):
    """train_dl_model on digits (in memory: the workflow's sample reader is replaced), 400
    train / 100 validation samples; writes <out> (.npz: weights, final evaluation) and, on
    every rank, a serialization strategy 'best' into wf["dir"].format(rank)."""
    from halcdl.workflow import evaluate as ev  # noqa: PLC0415

    def read(dldataset, indices):
        return [{"image": imgs[i], "image_id": i, "image_label_id": int(d.target[i])}
                for i in indices]

    ev.read_samples = read
    ds = {"class_ids": list(range(10)), "class_names": [str(c) for c in range(10)],
          "image_dir": "",
          "samples": [{"image_id": i, "image_label_id": int(d.target[i]),
                       "split": "train" if i < 400 else "validation"} for i in range(500)]}
    run = dict(wf, world=wf["world"], solver="sgd")
    model = make_model(run)
    out_dir = wf["dir"].format(rank)
    os.makedirs(out_dir, exist_ok=True)
    tp = ha.create_dl_train_param(model, wf["epochs"], 1, "true", 11, ["serialize"],
                                  [[{"type": "best", "basename": os.path.join(out_dir, "m")}]])
    res, infos, evals = ha.train_dl_model(ds, model, tp, 0)
    last = evals[-1]["result"]
    np.savez(wf["out"].format(rank), top1=float(last["top1_error"]),
             n_evals=len(evals), loss=float(res["total_loss"]), **snapshot(model))
    if not reference:
        ha.set_dl_model_param(model, "data_parallel", "false")


if cfg.get("workflow"):
    workflow(cfg["workflow"])
    sys.exit(0)

models = []
for run in cfg["runs"]:
    if cfg.get("per_rank_out"):
        run["out"] = run["out"].format(rank)
    model = make_model(run)
    models.append(model)
    world, batch, mult = int(run["world"]), int(run["batch"]), int(run.get("multiplier", 1))
    per_step = batch * mult * world  # samples of one global step
    losses, result = [], {}
    fail = run.get("fail")
    for k in range(int(run["steps"])):
        glob = samples[k * per_step:(k + 1) * per_step]
        mine = glob if reference else glob[rank * batch * mult:(rank + 1) * batch * mult]
        if fail and k == fail["step"]:
            if rank == fail["rank"]:
                if fail["how"] == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(3600)  # hang: the test kills this process
            before = snapshot(model)
            try:
                ha.train_dl_model_batch(model, mine)
                result["raised"] = 0
            except ha.HOperatorError as err:
                result["raised"] = err.error_code
                result["message"] = err.message
            after = snapshot(model)
            result["unchanged"] = all(np.array_equal(before[key], after[key]) for key in before)
            with open(run["out"] + ".json", "w") as f:
                json.dump(result, f)
            os._exit(0)  # the group is broken: no orderly shutdown to wait for
        r = ha.train_dl_model_batch(model, mine)
        losses.append([r["total_loss"], r["loss_cls"]])
    np.savez(run["out"], losses=np.asarray(losses, dtype=np.float64), **snapshot(model))

for model in models:
    if not reference:
        ha.set_dl_model_param(model, "data_parallel", "false")

"""Data-parallel training on ``torch.distributed`` (docs/distributed.md).

``set_dl_model_param(model, 'data_parallel', 'torch')`` calls :func:`join`: the model joins
the default process group of ``torch.distributed`` (Gloo on CPUs, NCCL on GPUs), initialised
by the caller or, when none is, by halcdl from torchrun's environment (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``; ``LOCAL_RANK`` picks the CUDA device of an
NCCL group), with the timeout of :func:`timeout_seconds`.  Joining is collective: every rank
sets the parameter, rank 0's weights, batch-norm statistics and optimizer state are broadcast,
and all ranks start equal.

From then on every ``train_dl_model_batch`` passes :meth:`DataParallel.reduce` to the engine,
which calls it once per step, between the backward pass(es) and the update, with zero-copy
views of the gradient arena, of the running statistics and of the step's scalars (loss,
non-finite flag), each already scaled as this rank's share of the whole step.  It sums them
over the ranks in place (two collectives: the float32 gradient arena; statistics and scalars
together in float64), so every rank applies the same gradient — that of one process running
all ranks' samples with batch_size_multiplier × world size — and keeps the same running
statistics (those that process would reach); the loss returned is the global mean.  A failure (a lost rank, the timeout) raises
HOperatorError 7720 and the engine commits nothing: the model is as before the step.

``torch`` is the optional extra ``halcdl[distributed]``; without it joining raises 7742.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import threading
from typing import Any

import numpy as np

from .errors import (
    H_ERR_CNN_RUNTIME_FAILED,
    H_ERR_DL_MODEL_RUNTIME,
    H_ERR_DL_TRAINING_FAILED,
    HOperatorError,
)

__all__ = [
    "DataParallel",
    "EXTRA_HINT",
    "DEFAULT_TIMEOUT_S",
    "require_torch",
    "timeout_seconds",
    "join",
    "leave",
    "rank_and_world_size",
    "broadcast_object",
]

EXTRA_HINT = "install the optional extra: pip install 'halcdl[distributed]'"
DEFAULT_TIMEOUT_S = 300.0
TIMEOUT_ENV = "HALCDL_DISTRIBUTED_TIMEOUT"
BACKEND_ENV = "HALCDL_DISTRIBUTED_BACKEND"
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

_lock = threading.Lock()
_owns_group = False  # halcdl initialised the default group (and destroys it when unused)
_members = 0          # models joined


def require_torch():
    """``(torch, torch.distributed)``, or HOperatorError 7742 naming the extra."""
    try:
        import torch  # noqa: PLC0415
        import torch.distributed as dist  # noqa: PLC0415
    except Exception as err:  # ImportError, or a broken installation
        raise HOperatorError(H_ERR_CNN_RUNTIME_FAILED,
                             f"data_parallel 'torch' needs PyTorch (torch.distributed), which "
                             f"cannot be imported ({err}); {EXTRA_HINT}") from None
    if not dist.is_available():
        raise HOperatorError(H_ERR_CNN_RUNTIME_FAILED,
                             f"this PyTorch build has no torch.distributed; {EXTRA_HINT}")
    return torch, dist


def timeout_seconds() -> float:
    """The timeout halcdl gives a process group it initialises: ``HALCDL_DISTRIBUTED_TIMEOUT``
    seconds (default 300).  A collective that waits longer for a rank fails (7720)."""
    v = os.environ.get(TIMEOUT_ENV)
    if v is None or v == "":
        return DEFAULT_TIMEOUT_S
    try:
        t = float(v)
    except ValueError:
        t = float("nan")
    if not t > 0 or t == float("inf"):
        raise HOperatorError(H_ERR_DL_MODEL_RUNTIME,
                             f"{TIMEOUT_ENV} must be a positive number of seconds, got {v!r}")
    return t


class _CudaArray:
    """Device memory as ``__cuda_array_interface__`` (torch.as_tensor views it, no copy)."""

    def __init__(self, ptr: int, n: int) -> None:
        self.__cuda_array_interface__ = {"shape": (int(n),), "typestr": "<f4",
                                         "data": (int(ptr), False), "version": 3,
                                         "strides": None}


class DataParallel:
    """One model's membership of the default process group."""

    def __init__(self, torch, dist, timeout_s: float | None) -> None:
        self.torch = torch
        self.dist = dist
        self.rank = int(dist.get_rank())
        self.world_size = int(dist.get_world_size())
        self.backend = str(dist.get_backend())
        self.timeout_s = timeout_s

    # -- helpers ------------------------------------------------------------------------------
    def _comm_device(self):
        """Where collective tensors must live: CUDA for NCCL, else the CPU."""
        if self.backend == "nccl":
            return self.torch.device("cuda", self.torch.cuda.current_device())
        return self.torch.device("cpu")

    def _fail(self, what: str, err: BaseException,
              tail: str = "; the model is as before the step") -> HOperatorError:
        t = f"{self.timeout_s:g} s" if self.timeout_s else "the process group's timeout"
        return HOperatorError(
            H_ERR_DL_TRAINING_FAILED,
            f"data parallel: {what} failed on rank {self.rank} of {self.world_size} (a rank was "
            f"lost, or did not answer within {t}): {err}{tail}")

    # -- the engine's callback -------------------------------------------------------------------
    def reduce(self, grad: Any, stats: Any, stats_before: Any, scalars: np.ndarray,
               multiplier: int, bn_momentum: float, device: int) -> None:
        """Called by the engine between backward and update (engine/hparams.h StepReduce).

        ``grad``: this rank's gradient contribution (its sub-batches' loss gradients scaled by
        1/(m·W)), ``stats`` / ``stats_before``: the running statistics as the step leaves
        them / as committed, ``scalars``: float64 [loss contribution, non-finite flag];
        float32 numpy views on the CPU, ``(pointer, count)`` of device memory on GPU
        ``device``.  Replaces grad, stats and scalars in place by the ranks' sums: the
        gradient and loss of the whole step, and the running statistics one process would
        reach updating them after each of the W·m sub-batches in rank order."""
        torch, dist = self.torch, self.dist
        try:
            if device < 0:
                g = torch.from_numpy(grad)
                s = torch.from_numpy(stats)
                s0 = torch.from_numpy(stats_before)
            else:
                dev = torch.device("cuda", int(device))
                g = torch.as_tensor(_CudaArray(*grad), device=dev)
                s = torch.as_tensor(_CudaArray(*stats), device=dev)
                s0 = torch.as_tensor(_CudaArray(*stats_before), device=dev)
            cdev = self._comm_device()
            gc = g if g.device == cdev else g.to(cdev)
            dist.all_reduce(gc)  # SUM, float32 (also with bfloat16 compute)
            if gc is not g:
                g.copy_(gc)
            # running statistics and scalars: one small float64 collective
            ns = s.numel()
            keep = (1.0 - float(bn_momentum)) ** int(multiplier)  # (1−a)^m
            small = torch.empty(ns + scalars.size, dtype=torch.float64, device=cdev)
            x, x0 = s.to(cdev, torch.float64), s0.to(cdev, torch.float64)
            contrib = (x - keep * x0) * keep ** (self.world_size - 1 - self.rank)
            if self.rank == 0:
                contrib += keep ** self.world_size * x0
            small[:ns].copy_(contrib)
            small[ns:].copy_(torch.from_numpy(scalars))
            dist.all_reduce(small)
            s.copy_(small[:ns])
            scalars[:] = small[ns:].cpu().numpy()
            if device >= 0 or cdev.type == "cuda":
                torch.cuda.synchronize(cdev if cdev.type == "cuda" else device)
        except HOperatorError:
            raise
        except Exception as err:  # torch's DistBackendError / RuntimeError / timeouts
            raise self._fail("the all-reduce of the gradients", err) from None

    # -- joining ---------------------------------------------------------------------------
    def _signature(self, core, extra: str) -> np.ndarray:
        names = list(core.param_names())
        text = "|".join(f"{n}:{tuple(np.shape(core.get_param(n)))}" for n in names) + "#" + extra
        h = int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "little")
        return np.asarray([int(core.num_trainable_params()), len(names), h], dtype=np.int64)

    def synchronise(self, core, extra: str) -> None:
        """Check that all ranks hold the same network and settings, then broadcast rank 0's
        parameters, running statistics and optimizer state (collective)."""
        torch, dist = self.torch, self.dist
        cdev = self._comm_device()
        sig = self._signature(core, extra)
        try:
            mine = torch.from_numpy(sig).to(cdev)
            lo, hi = mine.clone(), mine.clone()
            dist.all_reduce(lo, op=dist.ReduceOp.MIN)
            dist.all_reduce(hi, op=dist.ReduceOp.MAX)
            same = bool(torch.equal(lo, hi))
        except Exception as err:
            raise HOperatorError(H_ERR_DL_MODEL_RUNTIME,
                                 f"data parallel: joining failed on rank {self.rank} of "
                                 f"{self.world_size}: {err}") from None
        if not same:
            raise HOperatorError(H_ERR_DL_MODEL_RUNTIME,
                                 "data parallel: the ranks' models differ (network, image size, "
                                 "batch size or training parameters); every rank must set up "
                                 "the same model before joining")
        names = list(core.param_names())
        params = [np.asarray(core.get_param(n), dtype=np.float32) for n in names]
        state = dict(core.get_state())
        m1 = np.asarray(state["m1"], dtype=np.float32)
        m2 = np.asarray(state["m2"], dtype=np.float32)
        flat = np.concatenate([p.ravel() for p in params] + [m1, m2]).astype(np.float32)
        ints = np.asarray([int(state["adam_t"]), int(state["steps"]), int(state["seed"])],
                          dtype=np.uint64).view(np.int64)
        try:
            tf = torch.from_numpy(flat).to(cdev)
            ti = torch.from_numpy(ints.copy()).to(cdev)
            dist.broadcast(tf, src=0)
            dist.broadcast(ti, src=0)
            flat = tf.cpu().numpy()
            ints = ti.cpu().numpy()
        except Exception as err:
            raise HOperatorError(H_ERR_DL_MODEL_RUNTIME,
                                 f"data parallel: the broadcast of rank 0's model failed on rank "
                                 f"{self.rank} of {self.world_size}: {err}") from None
        if self.rank == 0:
            return
        adam_t, steps, seed = (int(x) for x in ints.view(np.uint64))
        off = 0
        for n, p in zip(names, params):
            core.set_param(n, flat[off:off + p.size].reshape(p.shape))
            off += p.size
        k = m1.size
        core.set_state({"m1": flat[off:off + k], "m2": flat[off + k:off + 2 * k],
                        "adam_t": adam_t, "steps": steps, "seed": seed})


def _init_from_env(torch, dist, prefer_nccl: bool) -> float:
    missing = [k for k in _TORCHRUN_ENV if not os.environ.get(k)]
    if missing:
        raise HOperatorError(
            H_ERR_DL_MODEL_RUNTIME,
            "data_parallel 'torch': no torch.distributed process group is initialised and the "
            f"environment lacks {', '.join(missing)}: launch with torchrun, or call "
            "torch.distributed.init_process_group first")
    t = timeout_seconds()
    backend = os.environ.get(BACKEND_ENV) or (
        "nccl" if prefer_nccl and torch.cuda.is_available() and dist.is_nccl_available()
        else "gloo")
    if backend == "nccl" and os.environ.get("LOCAL_RANK"):
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    try:
        dist.init_process_group(backend=backend, init_method="env://",
                                timeout=datetime.timedelta(seconds=t))
    except Exception as err:
        raise HOperatorError(
            H_ERR_DL_MODEL_RUNTIME,
            f"data_parallel 'torch': initialising the {backend} process group from the "
            f"environment failed (RANK={os.environ.get('RANK')}, WORLD_SIZE="
            f"{os.environ.get('WORLD_SIZE')}, MASTER_ADDR={os.environ.get('MASTER_ADDR')}, "
            f"MASTER_PORT={os.environ.get('MASTER_PORT')}, timeout {t:g} s): {err}") from None
    return t


def join(core, on_gpu: bool, extra: str) -> DataParallel:
    """Join the default process group (initialising it from torchrun's environment when
    needed) and make this rank's model equal to rank 0's.  Collective: every rank calls it.
    ``extra`` is a description of the settings that must agree across ranks."""
    global _owns_group, _members
    torch, dist = require_torch()
    with _lock:
        timeout = None
        if not dist.is_initialized():
            timeout = _init_from_env(torch, dist, on_gpu)
            _owns_group = True
        elif _owns_group:
            timeout = timeout_seconds()
        dp = DataParallel(torch, dist, timeout)
        try:
            dp.synchronise(core, extra)
        except BaseException:
            _release_if_unused()
            raise
        _members += 1
        return dp


def _release_if_unused() -> None:
    global _owns_group
    if _owns_group and _members == 0:
        _, dist = require_torch()
        try:
            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # a broken group (lost rank): nothing left to release
            pass
        _owns_group = False


def leave(dp: DataParallel | None) -> None:
    """A model leaves (set_dl_model_param 'data_parallel' 'false', clear_dl_model).  A group
    halcdl initialised is destroyed when no model uses it any more; one the caller initialised
    stays.  Not collective."""
    global _members
    if dp is None:
        return
    with _lock:
        _members = max(0, _members - 1)
        _release_if_unused()


def broadcast_object(model, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank of ``model``'s group (pickled; collective).  train_dl_model
    uses it for the evaluation result, so that every rank takes the same decisions from it."""
    dp = getattr(model, "data_parallel", None)
    if dp is None or dp.world_size == 1:
        return obj
    box = [obj]
    try:
        dp.dist.broadcast_object_list(box, src=0)
    except Exception as err:
        raise dp._fail("the broadcast of the evaluation", err, "") from None
    return box[0]


def rank_and_world_size(model) -> tuple[int, int]:
    """``(rank, world_size)`` of a model handle (``(0, 1)`` when it is not data parallel)."""
    dp = getattr(model, "data_parallel", None)
    return (0, 1) if dp is None else (dp.rank, dp.world_size)

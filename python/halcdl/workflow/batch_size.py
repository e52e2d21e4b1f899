"""optimize_dl_model_batch_size: the batch size with the highest throughput (images/s).

Candidates are the powers of two from 1 up to ``max_batch_size`` (and the bound itself), as
long as the estimated memory of a step fits the memory bound: ``max_memory`` (bytes) when
given, else 80 % of the free device memory (GPU) or of MemAvailable (/proc/meminfo, CPU).
The memory of a step is estimated as in set_dl_model_param_max_gpu_batch_size (steps at
batch sizes 1 and 2 on a scratch copy, extrapolated linearly).  On the GPU the free memory is
read (cudaMemGetInfo, no CuPy needed) after the scratch copy is placed and the model's cached
training plans are released, and each training candidate's plan is released before the next
is built, so the bound is what one candidate's plan may take.  Each candidate is timed on a
scratch copy of the network (the model's weights, optimizer state and every parameter but
batch_size stay as they were): ``warmup_iterations`` untimed steps, then
``num_iterations`` timed ones (time.perf_counter); images/s = batch / median step time.  The
fastest candidate is set as the model's batch_size and returned with the table.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..errors import (
    H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM,
    H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
    HOperatorError,
)
from ..operators._tuple import is_int, is_number, is_str, operator, to_tuple, wrong_type, \
    wrong_value

__all__ = ["optimize_dl_model_batch_size"]

_KEYS = ("max_memory", "max_batch_size", "num_iterations", "warmup_iterations", "details")


def _gen_param(gp: Any) -> dict:
    if gp is None or (isinstance(gp, (list, tuple)) and not gp):
        return {}
    if isinstance(gp, (list, tuple)) and len(gp) == 2 and isinstance(gp[0], (list, tuple)):
        names, values = list(gp[0]), list(gp[1])
        if len(names) != len(values):
            raise HOperatorError(1403, f"gen_param: {len(names)} names but {len(values)} "
                                       f"values")
        gp = dict(zip(names, values))
    if not isinstance(gp, dict):
        raise wrong_type(3, f"gen_param must be a dict or [], got {type(gp).__name__}")
    out: dict = {}
    for k, v in gp.items():
        if k not in _KEYS:
            raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM,
                                 f"gen_param: unsupported key {k!r} (supported: "
                                 f"{', '.join(_KEYS)})")
        vals = to_tuple(v)
        x = vals[0] if len(vals) == 1 else None
        if k == "details":
            if x not in ("none", "table", "all"):
                raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                                     f"gen_param details must be 'none', 'table' or 'all', "
                                     f"got {v!r}")
            out[k] = x
        elif k == "max_memory":
            if not is_number(x) or not float(x) > 0 or float(x) == float("inf"):
                raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                                     f"gen_param max_memory must be a number of bytes > 0, "
                                     f"got {v!r}")
            out[k] = int(x)
        else:
            lo = 0 if k == "warmup_iterations" else 1
            if not is_int(x) or int(x) < lo:
                raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                                     f"gen_param {k} must be an integer >= {lo}, got {v!r}")
            out[k] = int(x)
    return out


def _sample(m: Any) -> dict:
    p = m.params
    h, w, c = p["image_height"], p["image_width"], p["image_num_channels"]
    rng = np.random.default_rng(0)
    s = {"image": rng.uniform(p["image_range_min"], p["image_range_max"],
                              (h, w, c)).astype(np.float32)}
    if m.is_segmentation:
        s["segmentation_image"] = np.full((h, w), p["class_ids"][0], np.int32)
    else:
        s["image_label_id"] = int(p["class_ids"][0])
    return s


def _scratch(m: Any):
    from ..models.handle import DLModel, build_core_model  # noqa: PLC0415

    scratch = build_core_model(m.spec, m.seed, list(m.params["class_ids"]))
    scratch.copy_params_from(m.core)  # the model's weights: the same arithmetic
    scratch.set_hparams(m.hparams())
    if m.core.device() >= 0:
        DLModel.place(scratch, m.core.device())
    return scratch


def _step(m: Any, core: Any, mode: str, samples: list, batch: int) -> None:
    p = m.params
    h, w, c = p["image_height"], p["image_width"], p["image_num_channels"]
    if mode == "training":
        core.train_step(samples, batch, 1, h, w, c, 0)
    elif m.is_segmentation:
        core.infer_segmentation(samples, batch, h, w, c)
    else:
        core.infer(samples, batch, h, w, c)


def _memory_bound(m: Any, gp: dict) -> tuple[int, int, int, Any]:
    """(bound, fixed bytes, bytes per sample) of a training step, and the scratch copy the
    candidates are timed on.

    On the GPU the scratch copy (weights, optimizer state, workspaces) is placed before the
    free memory is read, so the bound is what its plans may take; the model's own cached
    training plans are released first (they are rebuilt by its next step)."""
    from . import train as _train  # noqa: PLC0415

    if m.core.device() >= 0:
        b1, b2 = _train._gpu_probe(m, 1), _train._gpu_probe(m, 2)
        m.core.release_training_plans()
        scratch = _scratch(m)
        bound = gp.get("max_memory") or int(0.8 * _train._gpu_free_bytes(scratch))
    else:
        bound = gp.get("max_memory") or int(0.8 * _train._meminfo_available())
        b1, b2 = _train._probe_bytes(m, 1), _train._probe_bytes(m, 2)
        scratch = _scratch(m)
    per = b2 - b1 if b2 > b1 else max(b2 // 2, 1)
    return bound, max(0, b1 - per), per, scratch


@operator
def optimize_dl_model_batch_size(dlmodel_handle: Any, mode: Any, gen_param: Any
                                 ) -> tuple[int, dict]:
    """Time candidate batch sizes (``mode`` 'training' or 'inference') and set the fastest.

    ``gen_param`` (dict or []): 'max_memory' (bytes; default 80 % of the free memory),
    'max_batch_size' (default 256), 'num_iterations' (timed steps per candidate, default 3),
    'warmup_iterations' (default 1), 'details' ('table' default: batch_size,
    images_per_second and estimated memory_bytes per candidate; 'all' adds every step's
    seconds; 'none': an empty dict).  Returns ``(batch_size, table)``."""
    from ..operators.dl_model import check_model, set_dl_model_param  # noqa: PLC0415

    m = check_model(dlmodel_handle, 1)
    md = to_tuple(mode)
    if len(md) != 1 or not is_str(md[0]):
        raise wrong_type(2, f"mode must be 'training' or 'inference', got {mode!r}")
    if md[0] not in ("training", "inference"):
        raise wrong_value(2, f"mode must be 'training' or 'inference', got {md[0]!r}")
    mode = str(md[0])
    gp = _gen_param(gen_param)
    upper = gp.get("max_batch_size", 256)
    reps = gp.get("num_iterations", 3)
    warm = gp.get("warmup_iterations", 1)
    details = gp.get("details", "table")
    with m.lock:
        check_model(m)
        bound, fixed, per, core = _memory_bound(m, gp)
        cands = sorted({1 << k for k in range(upper.bit_length()) if (1 << k) <= upper}
                       | {upper})
        fits = [b for b in cands if fixed + b * per <= bound] or [1]
        one = _sample(m)
        rows = []
        for b in fits:
            samples = [one] * b
            if mode == "training":  # one candidate's plan at a time, as the bound assumes
                core.release_training_plans()
            for _ in range(warm):
                _step(m, core, mode, samples, b)
            secs = []
            for _ in range(reps):
                t0 = time.perf_counter()
                _step(m, core, mode, samples, b)
                secs.append(time.perf_counter() - t0)
            med = float(np.median(secs))
            rows.append({"batch_size": b, "images_per_second": b / med if med > 0 else
                         float("inf"), "memory_bytes": int(fixed + b * per), "seconds": secs})
        del core
        best = max(rows, key=lambda r: (r["images_per_second"], -r["batch_size"]))
        set_dl_model_param(m, "batch_size", int(best["batch_size"]))
    if details == "none":
        table: dict = {}
    else:
        table = {"batch_size": [r["batch_size"] for r in rows],
                 "images_per_second": [r["images_per_second"] for r in rows],
                 "memory_bytes": [r["memory_bytes"] for r in rows],
                 "memory_bound": int(bound), "mode": mode}
        if details == "all":
            table["seconds"] = [r["seconds"] for r in rows]
    return int(best["batch_size"]), table

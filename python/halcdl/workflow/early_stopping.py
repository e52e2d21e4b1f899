"""Early stopping (Keras' ``EarlyStopping``, Euresys' "keep the best"): the 'early_stopping'
generic parameter of create_dl_train_param and its hook.

``{'patience': n, 'min_delta': d, 'measure': name, 'restore_best': 'true'|'false'}``:
after every evaluation, the measure's value (higher is better: an ``*_error`` measure counts
as 1 − error, see :func:`halcdl.workflow.train.comparison_value`) is compared with the best
one seen so far.  An evaluation *improves* when it exceeds the best by more than
``min_delta`` (the first evaluation always does).  After ``patience`` evaluations in a row
without an improvement, training stops at that batch boundary; the last train info gets a
``stop_reason``.  With restore_best 'true' the model ends with the weights (and optimizer
state and parameters) it had at the best evaluation.  All state lives in ``ctx.state``, so
``start_epoch='resume'`` continues the count.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import (
    H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM,
    H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
    HOperatorError,
)
from ..operators._tuple import is_int, is_number, is_str, to_tuple
from .hooks import TrainContext, TrainHook

__all__: list[str] = []

_KEYS = ("patience", "min_delta", "measure", "restore_best")
_STATE = "early_stopping"


def _bad(msg: str, code: int = H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE) -> HOperatorError:
    return HOperatorError(code, msg)


def check_early_stopping(value: Any) -> dict:
    """The validated, normalised 'early_stopping' dict (7911 unknown key, 7914 bad value)."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if not isinstance(value, dict):
        raise _bad(f"'early_stopping' must be a dict with keys {', '.join(_KEYS)}, got "
                   f"{type(value).__name__}")
    for k in value:
        if k not in _KEYS:
            raise _bad(f"'early_stopping': unsupported key {k!r} (supported: "
                       f"{', '.join(_KEYS)})", H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM)
    if "patience" not in value:
        raise _bad("'early_stopping' needs key 'patience' (evaluations without improvement)")
    p = to_tuple(value["patience"])
    if len(p) != 1 or not is_int(p[0]) or int(p[0]) < 1:
        raise _bad(f"'early_stopping' patience must be an integer >= 1, got "
                   f"{value['patience']!r}")
    d = to_tuple(value.get("min_delta", 0.0))
    if len(d) != 1 or not is_number(d[0]) or not math.isfinite(float(d[0])) or float(d[0]) < 0:
        raise _bad(f"'early_stopping' min_delta must be a number >= 0, got "
                   f"{value.get('min_delta')!r}")
    out = {"patience": int(p[0]), "min_delta": float(d[0])}
    if "measure" in value:
        ms = to_tuple(value["measure"])
        if not ms or not all(is_str(x) and str(x) for x in ms):
            raise _bad(f"'early_stopping' measure must name evaluation measures, got "
                       f"{value['measure']!r}")
        out["measure"] = [str(x) for x in ms]
    rb = to_tuple(value.get("restore_best", "false"))
    x = rb[0] if len(rb) == 1 else None
    if x is True or x == "true" or (is_int(x) and x == 1):
        out["restore_best"] = "true"
    elif x is False or x == "false" or (is_int(x) and x == 0):
        out["restore_best"] = "false"
    else:
        raise _bad(f"'early_stopping' restore_best must be 'true' or 'false', got "
                   f"{value.get('restore_best')!r}")
    return out


def snapshot_model(m: Any) -> dict:
    """Everything of a model that training changes: engine weights, optimizer state,
    parameters.  In memory, bit-exact."""
    import copy  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    with m.lock:
        params = {n: np.array(m.core.get_param(n), copy=True) for n in m.core.param_names()}
        state = {k: (np.array(v, copy=True) if hasattr(v, "__array__") else copy.deepcopy(v))
                 for k, v in dict(m.core.get_state()).items()}
        return {"weights": params, "state": state, "params": copy.deepcopy(m.params)}


def restore_model(m: Any, snap: dict) -> None:
    """Put a :func:`snapshot_model` back into the model (runtime settings kept)."""
    import copy  # noqa: PLC0415

    with m.lock:
        for n, w in snap["weights"].items():
            m.core.set_param(n, w)
        m.core.set_state(snap["state"])
        keep = {k: m.params[k] for k in ("runtime", "gpu", "runtime_init", "gpu_outputs")
                if k in m.params}
        m.params = {**copy.deepcopy(snap["params"]), **keep}
        m.mark_hparams_dirty()


class EarlyStoppingHook(TrainHook):
    """Counts evaluations without improvement; stops after ``patience``; restores the best.

    State (``ctx.state['early_stopping']``): ``best`` (value or None), ``best_epoch``,
    ``wait`` (evaluations since the last improvement), ``stopped_epoch``."""

    def __init__(self, param: dict) -> None:
        self.param = param
        self._best_snapshot: dict | None = None

    def on_train_begin(self, ctx: TrainContext) -> None:
        ctx.state.setdefault(_STATE, {"best": None, "best_epoch": None, "wait": 0,
                                      "stopped_epoch": None})
        self._best_snapshot = None

    def _value(self, ctx: TrainContext) -> float:
        from .train import comparison_value  # noqa: PLC0415

        if "measure" not in self.param:
            return float(ctx.comparison_value)
        return comparison_value(ctx.evaluation_result, self.param["measure"])

    def on_evaluation(self, ctx: TrainContext) -> None:
        if ctx.stopped:  # the closing evaluation after a stop (not one of the run's)
            return
        st = ctx.state[_STATE]
        v = self._value(ctx)
        best = st["best"]
        if isinstance(best, list):  # hdict's empty tuple: none yet
            best = None
        if math.isfinite(v) and (best is None or v > float(best) + self.param["min_delta"]):
            st["best"], st["best_epoch"], st["wait"] = v, float(ctx.epoch), 0
            if self.param["restore_best"] == "true":
                self._best_snapshot = snapshot_model(ctx.model)
            return
        st["wait"] = int(st["wait"]) + 1
        if st["wait"] >= self.param["patience"]:
            st["stopped_epoch"] = float(ctx.epoch)
            names = ",".join(self.param.get("measure") or
                             ctx.train_param["evaluation_comparison_keys"])
            ctx.stop = True
            ctx.stop_reason = (f"early stopping: {names} did not improve by more than "
                               f"{self.param['min_delta']:g} in {st['wait']} evaluations "
                               f"(best at epoch {st['best_epoch']})")

    def on_train_end(self, ctx: TrainContext) -> None:
        if self.param["restore_best"] != "true":
            return
        snap = self._best_snapshot
        if snap is None:
            snap = self._from_best_file(ctx)
        if snap is not None:
            restore_model(ctx.model, snap)
            ctx.state[_STATE]["restored_epoch"] = ctx.state[_STATE]["best_epoch"]

    @staticmethod
    def _from_best_file(ctx: TrainContext) -> dict | None:
        """After a resume the in-memory best is gone: use the 'best' strategy's file."""
        import os  # noqa: PLC0415

        from ..operators.dl_model import read_dl_model  # noqa: PLC0415

        for s in ctx.train_param["serialization_strategies"]:
            path = s["basename"] + ".hdl"
            if s["type"] == "best" and os.path.isfile(path):
                return snapshot_model(read_dl_model(path))
        return None

"""HALCON's training procedures: create_dl_train_param, train_dl_model,
set_dl_model_param_max_gpu_batch_size.

train_dl_model is one loop (:func:`run_training`) with hooks (:mod:`.hooks`): the change
strategies, the serialization strategies and the display are :class:`TrainHook` objects built
from the TrainParam; callers inside halcdl (background jobs, early stopping, schedules,
progress bars) pass more hooks to :func:`run_training`.  The loop itself does what HALCON's
procedure does::

    set_system('seed_rand', seed)
    for epoch e:  permutation of the 'train' split from numpy Generator([seed, e])
        per iteration (batch = batch_size × batch_size_multiplier, re-read every iteration;
        iterations per epoch = floor(n_train / batch), the last partial batch dropped):
            change strategies (at the fractional epoch e + i / iterations_per_epoch)
            read_dl_samples → augment_dl_samples (when an augmentation dict is given)
            → train_dl_model_batch
            evaluate on 'validation' every floor(evaluation_interval_epochs ×
            iterations_per_epoch) iterations and after the last one; keep the best
            (serialization 'best')

See docs/workflow.md for every decision where HALCON's documentation is silent.
"""

from __future__ import annotations

import collections
import math
import os
import sys
import time
from typing import Any, Iterable

import numpy as np

from .. import distributed as _distributed
from ..errors import (
    H_ERR_DL_FILE_READ,
    H_ERR_DL_FILE_WRITE,
    H_ERR_DL_INVALID_DATASET,
    H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM,
    H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
    H_ERR_FNF,
    HOperatorError,
)
from ..operators._tuple import (
    is_int,
    is_number,
    is_str,
    operator,
    py_value,
    to_float,
    to_tuple,
    wrong_num,
    wrong_type,
    wrong_value,
)
from . import evaluate as _evaluate
from .hooks import TrainContext, TrainHook

__all__ = [
    "create_dl_train_param",
    "train_dl_model",
    "set_dl_model_param_max_gpu_batch_size",
]

_GEN_PARAM_NAMES = ("evaluate", "augment", "change", "serialize", "display",
                    "evaluate_before_train",
                    "early_stopping", "schedule", "batch_size")  # halcdl's (issue 13)
_COMPARISON_DEFAULT = {"classification": ["top1_error"], "segmentation": ["mean_iou"],
                       "detection": ["mean_ap"]}
_DEFAULT_BASENAMES = {"best": "model_best", "final": "model_final", "epochs": "model",
                      "current": "model_current"}
_DISPLAY_DEFAULTS = {
    "x_axis_label": "epochs",
    "num_images": 0,
    "status_model_params": ["learning_rate", "batch_size", "batch_size_multiplier",
                            "momentum", "weight_prior", "image_dimensions"],
    "selected_percentage_train_samples": 0,
}
_TRAIN_PARAM_KEYS = ("num_epochs", "evaluation_interval_epochs", "evaluation_param",
                     "augmentation_param", "change_strategies", "serialization_strategies",
                     "seed_rand", "display_param", "update_interval_seconds",
                     "evaluation_comparison_keys", "num_samples_mean_loss",
                     "evaluate_before_train", "model_type")
_INFO_FORMAT = "halcdl_train_info"


# --------------------------------------------------------------------------------------------
# small checks
# --------------------------------------------------------------------------------------------
def _bad(detail: str, code: int = H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE) -> HOperatorError:
    return HOperatorError(code, detail)


def _true_false(v: Any, what: str, pos: int | None = None) -> str:
    vals = to_tuple(v)
    x = vals[0] if len(vals) == 1 else None
    if not (isinstance(x, (bool, np.bool_)) or is_int(x) or is_str(x)):
        x = None  # an array, a dict, ...: compared with == it would be ambiguous
    if x is True or x == 1 or x == "true":
        return "true"
    if x is False or (is_int(x) and x == 0) or x == "false":
        return "false"
    msg = f"{what} must be 'true' or 'false', got {v!r}"
    raise wrong_value(pos, msg) if pos is not None else _bad(msg)


def _number(v: Any, what: str, lo: float | None = None, lo_open: bool = False) -> float:
    vals = to_tuple(v)
    if len(vals) != 1 or not is_number(vals[0]) or not math.isfinite(float(vals[0])):
        raise _bad(f"{what} must be one finite number, got {v!r}")
    f = float(vals[0])
    if lo is not None and (f <= lo if lo_open else f < lo):
        raise _bad(f"{what} must be {'>' if lo_open else '>='} {lo}, got {f}")
    return f


def _settable_params() -> dict:
    from ..operators.dl_model import _SETTERS  # noqa: PLC0415

    return _SETTERS


_NUMERIC_PARAMS = ("learning_rate", "momentum", "weight_prior", "adam_beta1", "adam_beta2",
                   "adam_epsilon", "batchnorm_momentum", "batch_size", "batch_size_multiplier")


def _check_change(d: Any, i: int) -> dict:
    """One change strategy, validated and normalised."""
    if not isinstance(d, dict):
        raise _bad(f"change strategy {i} must be a dict, got {type(d).__name__}")
    allowed = ("model_param", "initial_value", "epochs", "values", "scale_momentum_threshold")
    for k in d:
        if k not in allowed:
            raise _bad(f"change strategy {i}: unsupported key {k!r} (supported: "
                       f"{', '.join(allowed)})", H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM)
    name = d.get("model_param")
    if not is_str(name) or str(name) not in _settable_params():
        raise _bad(f"change strategy {i}: model_param must name a settable model parameter, "
                   f"got {name!r}")
    name = str(name)
    epochs = to_tuple(d.get("epochs"))
    values = d.get("values")
    values = list(values) if isinstance(values, (list, tuple)) else to_tuple(values)
    if not epochs or not all(is_number(e) and math.isfinite(float(e)) and float(e) >= 0
                             for e in epochs):
        raise _bad(f"change strategy {i} ({name}): epochs must be numbers >= 0, got "
                   f"{d.get('epochs')!r}")
    if any(float(b) <= float(a) for a, b in zip(epochs, epochs[1:])):
        raise _bad(f"change strategy {i} ({name}): epochs must increase, got {epochs}")
    if len(values) != len(epochs):
        raise _bad(f"change strategy {i} ({name}): {len(epochs)} epochs but {len(values)} "
                   f"values (they must have the same length)")
    out = {"model_param": name, "epochs": [py_value(e) for e in epochs],
           "values": [py_value(v) for v in values]}
    numeric = name in _NUMERIC_PARAMS
    check_vals = list(values)
    if "initial_value" in d:
        out["initial_value"] = py_value(d["initial_value"])
        check_vals.append(d["initial_value"])
    if numeric:
        for v in check_vals:
            if not is_number(v) or not math.isfinite(float(v)):
                raise _bad(f"change strategy {i} ({name}): values must be finite numbers, "
                           f"got {v!r}")
            if name in ("batch_size", "batch_size_multiplier") and (not is_int(v) or v < 1):
                raise _bad(f"change strategy {i} ({name}): values must be integers >= 1, "
                           f"got {v!r}")
    if "scale_momentum_threshold" in d:
        if name != "learning_rate":
            raise _bad(f"change strategy {i}: scale_momentum_threshold applies to "
                       f"model_param 'learning_rate' only, not {name!r}")
        t = _number(d["scale_momentum_threshold"], f"change strategy {i}: "
                    f"scale_momentum_threshold", lo=0.0, lo_open=True)
        out["scale_momentum_threshold"] = t
    return out


def _check_serialize(d: Any, i: int) -> dict:
    if not isinstance(d, dict):
        raise _bad(f"serialization strategy {i} must be a dict, got {type(d).__name__}")
    for k in d:
        if k not in ("type", "basename", "epochs"):
            raise _bad(f"serialization strategy {i}: unsupported key {k!r} (supported: type, "
                       f"basename, epochs)", H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM)
    t = d.get("type")
    if t not in _DEFAULT_BASENAMES:
        raise _bad(f"serialization strategy {i}: type must be one of "
                   f"{tuple(_DEFAULT_BASENAMES)}, got {t!r}")
    base = d.get("basename", _DEFAULT_BASENAMES[t])
    if isinstance(base, os.PathLike):
        base = os.fspath(base)
    if not is_str(base) or not str(base):
        raise _bad(f"serialization strategy {i}: basename must be a non-empty string, got "
                   f"{base!r}")
    out = {"type": str(t), "basename": str(base)}
    if t == "epochs":
        if "epochs" not in d:
            raise _bad(f"serialization strategy {i}: type 'epochs' needs key 'epochs'")
        eps = to_tuple(d["epochs"])
        if not eps or not all(is_number(e) and math.isfinite(float(e)) and float(e) > 0
                              for e in eps):
            raise _bad(f"serialization strategy {i}: epochs must be numbers > 0, got "
                       f"{d['epochs']!r}")
        out["epochs"] = [py_value(e) for e in eps]
    elif "epochs" in d:
        raise _bad(f"serialization strategy {i}: key 'epochs' only with type 'epochs'")
    return out


def _dict_list(v: Any, what: str) -> list:
    if isinstance(v, dict):
        return [v]
    if isinstance(v, (list, tuple)):
        return list(v)
    raise _bad(f"{what} must be a dict or a list of dicts, got {type(v).__name__}")


def _check_eval_param(v: Any) -> dict:
    if not isinstance(v, dict):
        raise _bad(f"'evaluate' must be a dict (evaluate_dl_model's GenParam), got "
                   f"{type(v).__name__}")
    return _evaluate.gen_param_dict(v, 7, _evaluate._GEN_KEYS, "evaluation_param")


def _check_train_param(tp: Any, pos: int) -> dict:
    """A validated, normalised copy of a TrainParam dict (the caller's stays as it was)."""
    if not isinstance(tp, dict):
        raise wrong_type(pos, f"train_param must be a dict (create_dl_train_param), got "
                              f"{type(tp).__name__}")
    missing = [k for k in ("num_epochs", "serialization_strategies", "seed_rand") if k not in tp]
    if missing:
        raise _bad(f"train_param lacks {missing} (create it with create_dl_train_param)")
    out = {k: v for k, v in tp.items()}
    out["num_epochs"] = _number(tp["num_epochs"], "train_param num_epochs", lo=0.0,
                                lo_open=True)
    out["evaluation_interval_epochs"] = _number(tp.get("evaluation_interval_epochs", 1),
                                                "train_param evaluation_interval_epochs",
                                                lo=0.0)
    seed = to_tuple(tp["seed_rand"])
    if len(seed) != 1 or not is_int(seed[0]):
        raise _bad(f"train_param seed_rand must be one integer, got {tp['seed_rand']!r}")
    out["seed_rand"] = int(seed[0])
    out["evaluation_param"] = _check_eval_param(tp.get("evaluation_param") or {})
    aug = tp.get("augmentation_param")
    if aug is not None and aug != [] and not isinstance(aug, dict):
        raise _bad(f"train_param augmentation_param must be a dict, got {type(aug).__name__}")
    out["augmentation_param"] = dict(aug) if isinstance(aug, dict) else {}
    out["change_strategies"] = [_check_change(d, i) for i, d in enumerate(
        _dict_list(tp.get("change_strategies", []), "change_strategies"))]
    out["serialization_strategies"] = [_check_serialize(d, i) for i, d in enumerate(
        _dict_list(tp["serialization_strategies"], "serialization_strategies"))]
    disp = tp.get("display_param", {})
    if not isinstance(disp, dict):
        raise _bad(f"train_param display_param must be a dict, got {type(disp).__name__}")
    out["display_param"] = dict(disp)
    out["display_param"]["enabled"] = _true_false(disp.get("enabled", "false"),
                                                  "display_param enabled")
    out["update_interval_seconds"] = _number(tp.get("update_interval_seconds", 2),
                                             "train_param update_interval_seconds", lo=0.0)
    n = to_tuple(tp.get("num_samples_mean_loss", 1000))
    if len(n) != 1 or not is_int(n[0]) or n[0] < 1:
        raise _bad(f"train_param num_samples_mean_loss must be an integer >= 1, got {n!r}")
    out["num_samples_mean_loss"] = int(n[0])
    keys = to_tuple(tp.get("evaluation_comparison_keys", []))
    if not all(is_str(k) for k in keys):
        raise _bad(f"train_param evaluation_comparison_keys must be measure names, got {keys}")
    out["evaluation_comparison_keys"] = [str(k) for k in keys]
    out["evaluate_before_train"] = _true_false(tp.get("evaluate_before_train", "false"),
                                               "train_param evaluate_before_train")
    _check_experience_keys(out)
    return out


def _check_experience_keys(tp: dict) -> None:
    """halcdl's keys (early_stopping, schedules, batch_size), validated in place when given."""
    from .early_stopping import check_early_stopping  # noqa: PLC0415
    from .schedules import check_no_conflict, check_schedules  # noqa: PLC0415

    if tp.get("early_stopping") not in (None, [], {}):
        tp["early_stopping"] = check_early_stopping(tp["early_stopping"])
    if tp.get("schedules") not in (None, []):
        tp["schedules"] = check_schedules(tp["schedules"])
        check_no_conflict(tp["schedules"], tp.get("change_strategies", []))
    if "batch_size" in tp:
        b = to_tuple(tp["batch_size"])
        if len(b) != 1 or not (b[0] == "auto" or (is_int(b[0]) and int(b[0]) >= 1)):
            raise _bad(f"train_param batch_size must be 'auto' or an integer >= 1, got "
                       f"{tp['batch_size']!r}")
        tp["batch_size"] = b[0] if b[0] == "auto" else int(b[0])
    if isinstance(tp.get("display_param"), dict) and \
            tp["display_param"].get("enabled") == "true":
        from .display import check_display  # noqa: PLC0415

        check_display(tp["display_param"])


# --------------------------------------------------------------------------------------------
# create_dl_train_param
# --------------------------------------------------------------------------------------------
@operator
def create_dl_train_param(dlmodel_handle: Any, num_epochs: Any, evaluation_interval_epochs: Any,
                          enable_display: Any, random_seed: Any, gen_param_name: Any,
                          gen_param_value: Any) -> dict:
    """The TrainParam dict for train_dl_model.

    ``num_epochs`` (> 0), ``evaluation_interval_epochs`` (≥ 0; 0 = only after the last
    iteration), ``enable_display`` ('true'/'false' or 1/0), ``random_seed`` (an integer, or []
    for one from the clock), ``gen_param_name`` / ``gen_param_value``: 'evaluate' (dict for
    evaluate_dl_model), 'augment' (dict for augment_dl_samples), 'change' (change strategy
    dicts), 'serialize' (serialization strategy dicts, replacing the default 'best'
    strategy; [] for none), 'display' (dict), 'evaluate_before_train' ('true'/'false').
    Any other name raises 7911; bad values raise 7914 (or 1200+n / 1300+n / 1400+n)."""
    from ..operators.dl_model import check_model  # noqa: PLC0415

    m = check_model(dlmodel_handle, 1)
    ne = to_tuple(num_epochs)
    if len(ne) != 1:
        raise wrong_num(2, f"num_epochs takes one value, got {len(ne)}")
    if not is_number(ne[0]):
        raise wrong_type(2, f"num_epochs must be a number, got {ne[0]!r}")
    if not math.isfinite(to_float(ne[0])) or float(ne[0]) <= 0:
        raise wrong_value(2, f"num_epochs must be > 0, got {ne[0]!r}")
    ev = to_tuple(evaluation_interval_epochs)
    if len(ev) != 1:
        raise wrong_num(3, f"evaluation_interval_epochs takes one value, got {len(ev)}")
    if not is_number(ev[0]):
        raise wrong_type(3, f"evaluation_interval_epochs must be a number, got {ev[0]!r}")
    if not math.isfinite(to_float(ev[0])) or float(ev[0]) < 0:
        raise wrong_value(3, f"evaluation_interval_epochs must be >= 0, got {ev[0]!r}")
    display = _true_false(enable_display, "enable_display", 4)
    rs = to_tuple(random_seed)
    if not rs:
        seed = int(time.time_ns() // 1000) % (2**31)
    elif len(rs) != 1:
        raise wrong_num(5, f"random_seed takes one value or [], got {len(rs)}")
    elif not is_int(rs[0]):
        raise wrong_type(5, f"random_seed must be an integer, got {rs[0]!r}")
    else:
        seed = int(rs[0])
    names = to_tuple(gen_param_name)
    if not names:
        if isinstance(gen_param_value, dict) or to_tuple(gen_param_value):
            raise wrong_num(7, "gen_param_value must be [] when gen_param_name is []")
        values: list = []
    elif len(names) == 1:
        values = [gen_param_value]  # one name: the value as given (a dict, a list of dicts)
    else:
        if not isinstance(gen_param_value, (list, tuple)):
            raise wrong_num(7, f"{len(names)} gen_param_name entries but one value")
        values = list(gen_param_value)
    if len(names) != len(values):
        raise wrong_num(7, f"{len(names)} gen_param_name entries but {len(values)} values")
    model_type = str(m.params["type"])
    tp: dict = {
        "num_epochs": py_value(ne[0]),
        "evaluation_interval_epochs": py_value(ev[0]),
        "evaluation_param": {},
        "augmentation_param": {},
        "change_strategies": [],
        "serialization_strategies": [{"type": "best", "basename": "model_best"}],
        "seed_rand": seed,
        "display_param": {**_DISPLAY_DEFAULTS, "enabled": display},
        "update_interval_seconds": 2,
        "evaluation_comparison_keys": list(_COMPARISON_DEFAULT.get(model_type,
                                                                   ["top1_error"])),
        "num_samples_mean_loss": 1000,
        "evaluate_before_train": "false",
        "model_type": model_type,
    }
    serialize_given = False
    for name, value in zip(names, values):
        if not is_str(name):
            raise wrong_type(6, f"gen_param_name entries must be strings, got {name!r}")
        if name not in _GEN_PARAM_NAMES:
            raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM,
                                 f"unsupported gen_param_name {name!r} (supported: "
                                 f"{', '.join(_GEN_PARAM_NAMES)})")
        if isinstance(value, (list, tuple)) and len(value) == 1 and (
                isinstance(value[0], (list, tuple)) or name in (
                    "evaluate", "augment", "display", "evaluate_before_train",
                    "early_stopping", "batch_size")):
            value = value[0]  # a one-element tuple wrapping the value
        if name == "evaluate":
            tp["evaluation_param"] = _check_eval_param(value)
        elif name == "augment":
            if not isinstance(value, dict):
                raise _bad(f"'augment' must be a dict (augment_dl_samples' GenParam), got "
                           f"{type(value).__name__}")
            tp["augmentation_param"] = dict(value)
        elif name == "change":
            start = len(tp["change_strategies"])
            tp["change_strategies"] += [_check_change(d, start + i) for i, d in
                                        enumerate(_dict_list(value, "'change'"))]
        elif name == "serialize":
            if not serialize_given:
                tp["serialization_strategies"] = []  # given strategies replace the default
                serialize_given = True
            start = len(tp["serialization_strategies"])
            tp["serialization_strategies"] += [_check_serialize(d, start + i) for i, d in
                                               enumerate(_dict_list(value, "'serialize'"))]
        elif name == "display":
            if not isinstance(value, dict):
                raise _bad(f"'display' must be a dict, got {type(value).__name__}")
            tp["display_param"].update(value)
            tp["display_param"]["enabled"] = _true_false(
                value.get("enabled", display), "display enabled")
        elif name == "evaluate_before_train":
            tp["evaluate_before_train"] = _true_false(value, "evaluate_before_train")
        elif name == "early_stopping":
            from .early_stopping import check_early_stopping  # noqa: PLC0415

            tp["early_stopping"] = check_early_stopping(value)
        elif name == "schedule":
            tp["schedules"] = list(tp.get("schedules", [])) + _dict_list(value, "'schedule'")
        elif name == "batch_size":
            tp["batch_size"] = value
    _check_experience_keys(tp)
    return tp


# --------------------------------------------------------------------------------------------
# info files (basename_info.hdict)
# --------------------------------------------------------------------------------------------
def write_info(info: dict, path: str) -> None:
    """Write a train info dict to ``path`` as HALCON's .hdict (atomic; 7781 on failure)."""
    from ..io.hdict import write_hdict  # noqa: PLC0415

    write_hdict(info, path)


def read_info(path: str) -> dict:
    """Read a train info file (5200 missing, 7780 unreadable)."""
    from ..io.hdict import read_hdict  # noqa: PLC0415

    if not os.path.isfile(path):
        raise HOperatorError(H_ERR_FNF, f"train info file not found: {path!r}")
    return read_hdict(path)


# --------------------------------------------------------------------------------------------
# comparison of evaluations
# --------------------------------------------------------------------------------------------
def _lookup(result: dict, key: str) -> Any:
    if key in result:
        return result[key]
    # detection nests its measures (result['max_num_detections_all']['area_all'][key])
    for v in result.values():
        if isinstance(v, dict):
            got = _lookup(v, key)
            if got is not None:
                return got
    return None


def comparison_value(result: dict, keys: Iterable[str]) -> float:
    """One number, higher is better: the mean over ``keys`` of each measure (its class mean
    for per-class lists), with 1 − v for error measures (``*_error``)."""
    vals = []
    for k in keys:
        v = _lookup(result, k)
        if v is None:
            raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                                 f"evaluation_comparison_keys: the evaluation has no measure "
                                 f"{k!r} (measures: {', '.join(result)})")
        a = np.asarray(v, dtype=np.float64)
        x = float(np.nanmean(a)) if a.size else float("nan")
        vals.append(1.0 - x if k.endswith("_error") else x)
    return float(np.mean(vals)) if vals else float("nan")


def train_info_dict(ctx: TrainContext) -> dict:
    """One train_infos entry, with HALCON's keys (as in train infos HALCON writes) plus
    iteration, num_iterations and time_remaining."""
    from ..operators.dl_model import get_dl_model_param  # noqa: PLC0415

    params = {}
    for name in to_tuple(ctx.train_param["display_param"].get(
            "status_model_params", _DISPLAY_DEFAULTS["status_model_params"])):
        try:
            v = get_dl_model_param(ctx.model, name)
        except HOperatorError:
            continue
        params[str(name)] = v[0] if len(v) == 1 else v
    keys = ctx.train_param["evaluation_comparison_keys"]
    best: Any = []
    if ctx.best_value is not None:
        best = {"comparison_keys": keys[0] if len(keys) == 1 else list(keys),
                "best_info": {"epoch": ctx.best_epoch, "iteration": ctx.best_iteration,
                              "result": ctx.best_result or {}},
                "best_value": ctx.best_value}
    return {
        "epoch": float(ctx.epoch),
        "iteration": int(ctx.iteration),
        "num_epochs": float(ctx.num_epochs),
        "num_iterations": int(ctx.num_iterations),
        "num_iterations_per_epoch": int(ctx.iterations_per_epoch),
        "model_params": params,
        "mean_loss": float(ctx.mean_loss),
        "mean_loss_samples": int(ctx.mean_loss_samples),
        "best_evaluation": best,
        "start_epoch": float(ctx.start_epoch),
        "start_time": float(ctx.start_time),
        "time_elapsed": float(ctx.time_elapsed),
        "time_remaining": float(ctx.time_remaining),
    }


# --------------------------------------------------------------------------------------------
# the hooks train_dl_model builds from the TrainParam
# --------------------------------------------------------------------------------------------
def _epoch_str(e: float) -> str:
    return str(int(e)) if float(e) == int(e) else f"{float(e):g}"


class ChangeStrategyHook(TrainHook):
    """HALCON's change strategies: before every iteration, each strategy's model parameter is
    set to values[i] of the last epochs[i] ≤ the current (fractional) epoch, else to
    initial_value (when given; otherwise the value the model had when training started,
    kept in ctx.state so 'resume' restores it).  With scale_momentum_threshold t, a
    learning-rate change by a factor f with max(f, 1/f) > t scales the momentum by f (clipped
    to [0, 1]) for that one iteration."""

    def __init__(self, strategies: list[dict]) -> None:
        self.strategies = strategies
        self._restore_momentum: float | None = None

    def _value(self, s: dict, init: Any, epoch: float) -> Any:
        v = init
        for e, x in zip(s["epochs"], s["values"]):
            if float(e) <= epoch + 1e-12:
                v = x
        return v

    def on_train_begin(self, ctx: TrainContext) -> None:
        from ..operators.dl_model import get_dl_model_param  # noqa: PLC0415

        inits = ctx.state.setdefault("change_strategies", {})
        for i, s in enumerate(self.strategies):
            if str(i) not in inits:
                init = s.get("initial_value")
                if init is None:
                    got = get_dl_model_param(ctx.model, s["model_param"])
                    init = got[0] if len(got) == 1 else got
                inits[str(i)] = init

    def on_batch_begin(self, ctx: TrainContext) -> None:
        from ..operators.dl_model import get_dl_model_param_s, set_dl_model_param  # noqa

        inits = ctx.state["change_strategies"]
        for i, s in enumerate(self.strategies):
            init = inits[str(i)]
            name = s["model_param"]
            v = self._value(s, init, ctx.epoch)
            old = ctx.model.params.get(name)
            if old == v or (isinstance(old, list) and list(old) == to_tuple(v)):
                continue
            set_dl_model_param(ctx.model, name, v)
            t = s.get("scale_momentum_threshold")
            if t is not None and name == "learning_rate" and old and float(old) > 0:
                f = float(v) / float(old)
                if max(f, 1.0 / f if f > 0 else math.inf) > t:
                    mom = float(get_dl_model_param_s(ctx.model, "momentum"))
                    self._restore_momentum = mom
                    set_dl_model_param(ctx.model, "momentum", min(1.0, max(0.0, mom * f)))

    def on_batch_end(self, ctx: TrainContext) -> None:
        if self._restore_momentum is not None:
            from ..operators.dl_model import set_dl_model_param  # noqa: PLC0415

            set_dl_model_param(ctx.model, "momentum", self._restore_momentum)
            self._restore_momentum = None

    def on_train_end(self, ctx: TrainContext) -> None:
        self.on_batch_end(ctx)  # a stop between on_batch_begin and the step: restore too


class SerializationHook(TrainHook):
    """HALCON's serialization strategies: write ``basename.hdl`` (write_dl_model) and
    ``basename_info.hdict`` (epoch, iteration, best value, evaluation, hook state):
    'best' after an evaluation that improved the comparison value, 'current' after every
    epoch, 'epochs' after the given epochs (one value n: every n epochs; the epoch is
    appended to the basename: ``model_3.hdl``), 'final' when training ends."""

    def __init__(self, strategies: list[dict]) -> None:
        self.strategies = strategies

    @staticmethod
    def info(ctx: TrainContext, kind: str, model_file: str) -> dict:
        """HALCON's train info (the keys of a train_infos entry) plus halcdl's 'resume' dict:
        what start_epoch='resume' needs to continue exactly."""
        d = train_info_dict(ctx)
        d["resume"] = {
            "format": _INFO_FORMAT,
            "type": kind,
            "model_file": os.path.basename(model_file),
            "epoch": float(ctx.epoch),
            "iteration": int(ctx.iteration),
            "seed_rand": int(ctx.train_param["seed_rand"]),
            "best_value": [] if ctx.best_value is None else float(ctx.best_value),
            "best_epoch": [] if ctx.best_epoch is None else float(ctx.best_epoch),
            "best_iteration": [] if ctx.best_iteration is None else int(ctx.best_iteration),
            "best_result": ctx.best_result or {},
            "state": ctx.state,
        }
        return d

    def _write(self, ctx: TrainContext, kind: str, base: str) -> None:
        from ..operators.dl_model import write_dl_model  # noqa: PLC0415

        d = os.path.dirname(base)
        if d and not os.path.isdir(d):
            raise HOperatorError(H_ERR_DL_FILE_WRITE,
                                 f"cannot serialize to {base!r}: folder {d!r} does not exist")
        model_file = base + ".hdl"
        write_dl_model(ctx.model, model_file)
        write_info(self.info(ctx, kind, model_file), base + "_info.hdict")

    def on_evaluation(self, ctx: TrainContext) -> None:
        if ctx.improved:
            for s in self.strategies:
                if s["type"] == "best":
                    self._write(ctx, "best", s["basename"])

    def on_epoch_end(self, ctx: TrainContext) -> None:
        e = ctx.epoch
        for s in self.strategies:
            if s["type"] == "current":
                self._write(ctx, "current", s["basename"])
            elif s["type"] == "epochs":
                eps = [float(x) for x in s["epochs"]]
                due = (abs(e / eps[0] - round(e / eps[0])) < 1e-9) if len(eps) == 1 \
                    else any(abs(e - x) < 1e-9 for x in eps)
                if due:
                    self._write(ctx, "epochs", f"{s['basename']}_{_epoch_str(e)}")

    def on_train_end(self, ctx: TrainContext) -> None:
        for s in self.strategies:
            if s["type"] == "final":
                self._write(ctx, "final", s["basename"])


class DisplayHook(TrainHook):
    """enable_display 'true': one line of progress every update_interval_seconds (and after
    each evaluation) on ``stream`` (stdout).  Needs no display."""

    def __init__(self, interval: float, stream=None) -> None:
        self.interval = interval
        self.stream = stream
        self._last = -math.inf

    def _print(self, ctx: TrainContext, extra: str = "") -> None:
        out = self.stream or sys.stdout
        lr = ctx.model.params.get("learning_rate")
        remaining = "" if not math.isfinite(ctx.time_remaining) else \
            f"  remaining {ctx.time_remaining:6.1f} s"
        print(f"epoch {ctx.epoch:7.2f}/{_epoch_str(ctx.num_epochs)}  iteration "
              f"{ctx.iteration}/{ctx.num_iterations}  loss {ctx.mean_loss:.4f}  lr {lr:g}  "
              f"elapsed {ctx.time_elapsed:6.1f} s{remaining}{extra}", file=out, flush=True)

    def on_batch_end(self, ctx: TrainContext) -> None:
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            self._print(ctx)

    def on_evaluation(self, ctx: TrainContext) -> None:
        keys = ",".join(ctx.train_param["evaluation_comparison_keys"])
        vals = [_lookup(ctx.evaluation_result, k) for k in
                ctx.train_param["evaluation_comparison_keys"]]
        shown = " ".join(f"{float(np.nanmean(np.asarray(v, dtype=float))):.4f}" for v in vals
                         if v is not None)
        self._print(ctx, f"  validation {keys} {shown}{'  (best)' if ctx.improved else ''}")


def hooks_from_train_param(tp: dict) -> list[TrainHook]:
    """The hooks train_dl_model builds from a (validated) TrainParam."""
    from . import display as _display  # noqa: PLC0415
    from .early_stopping import EarlyStoppingHook  # noqa: PLC0415
    from .schedules import ScheduleHook  # noqa: PLC0415

    hooks: list[TrainHook] = []
    if tp.get("early_stopping"):  # first: restores the best before 'final' is written
        hooks.append(EarlyStoppingHook(tp["early_stopping"]))
    if tp["change_strategies"]:
        hooks.append(ChangeStrategyHook(tp["change_strategies"]))
    if tp.get("schedules"):
        hooks.append(ScheduleHook(tp["schedules"]))
    if tp["serialization_strategies"]:
        hooks.append(SerializationHook(tp["serialization_strategies"]))
    if tp["display_param"].get("enabled") == "true":
        hooks += _display.display_hooks(tp)
    return hooks


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
def _resume_candidates(tp: dict) -> list[str]:
    """Info files 'resume' may continue from ('current', 'final', 'epochs' strategies)."""
    out = []
    for st in tp["serialization_strategies"]:
        if st["type"] in ("current", "final"):
            out.append(st["basename"] + "_info.hdict")
        elif st["type"] == "epochs":
            d = os.path.dirname(st["basename"])
            stem = os.path.basename(st["basename"]) + "_"
            if os.path.isdir(d or "."):
                out += [os.path.join(d, f) for f in sorted(os.listdir(d or "."))
                        if f.startswith(stem) and f.endswith("_info.hdict")]
    return out


def _latest_resume_info(tp: dict) -> tuple[dict, str]:
    best: tuple[dict, str] | None = None
    candidates = _resume_candidates(tp)
    for path in candidates:
        if not os.path.isfile(path):
            continue
        full = read_info(path)
        info = full.get("resume")
        if (not isinstance(info, dict) or info.get("format") != _INFO_FORMAT
                or not is_int(info.get("iteration")) or not is_str(info.get("model_file"))):
            raise HOperatorError(H_ERR_DL_FILE_READ,
                                 f"train info {path!r} holds no halcdl resume state")
        if best is None or int(info["iteration"]) > int(best[0]["iteration"]):
            best = (info, path)
    if best is None:
        raise HOperatorError(H_ERR_FNF,
                             "start_epoch 'resume': no serialized training state found "
                             f"(looked for {candidates or 'nothing: the train_param has no'} "
                             "'current', 'final' or 'epochs' serialization strategy)")
    return best


def _adopt_model_file(m: Any, path: str) -> None:
    """Put the model of ``path`` (weights, optimizer state, parameters) into the handle ``m``,
    keeping ``m``'s runtime (device) settings."""
    from ..models.handle import DLModel  # noqa: PLC0415
    from ..operators.dl_model import read_dl_model  # noqa: PLC0415

    new = read_dl_model(path)
    if new.spec != m.spec:
        raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                             f"start_epoch 'resume': {path!r} holds another network than the "
                             f"given model (its layers differ)")
    keep = {k: m.params[k] for k in ("runtime", "gpu", "runtime_init", "gpu_outputs")
            if k in m.params}
    device = m.core.device()
    if device >= 0:
        DLModel.place(new.core, device)
    with m.lock:
        m.arch, m.seed, m.core = new.arch, new.seed, new.core
        m.params = {**new.params, **keep}
        m.mark_hparams_dirty()


def _auto_batch_size(m: Any, tp: dict, n_train: int, resume: bool) -> None:
    """train_param batch_size: an integer sets it; 'auto' runs optimize_dl_model_batch_size
    (training mode, at most the 'train' split's size) first.  Not on 'resume' (the resumed
    model keeps its batch size)."""
    from ..operators.dl_model import set_dl_model_param  # noqa: PLC0415

    b = tp.get("batch_size")
    if b is None or resume:
        return
    mult = int(m.params["batch_size_multiplier"])
    if b != "auto" and int(b) * mult > n_train:
        raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                             f"the 'train' split holds {n_train} samples, fewer than one batch "
                             f"(train_param batch_size {b} × batch_size_multiplier {mult})")
    if b == "auto":
        from .batch_size import optimize_dl_model_batch_size  # noqa: PLC0415

        optimize_dl_model_batch_size(m, "training", {"max_batch_size": max(1, n_train // mult)})
    else:
        set_dl_model_param(m, "batch_size", int(b))


def _none_if_empty(v: Any) -> Any:
    """[] (an .hdict empty tuple) stands for "none yet"."""
    return None if isinstance(v, list) and not v else v


def _split_indices(samples: list, split: str) -> list[int]:
    return [i for i, s in enumerate(samples) if str(s.get("split")) == split]


def _augment(samples: list, param: dict) -> list:
    from .augment import augment_dl_samples  # noqa: PLC0415  (lazy: another module)

    out = augment_dl_samples(samples, param)
    return samples if out is None else out  # HALCON's procedure works in place


def run_training(dldataset: dict, dlmodel_handle: Any, train_param: dict, start_epoch: Any,
                 hooks: Iterable[TrainHook] = (), *, _validated: bool = False
                 ) -> tuple[dict, list, list]:
    """train_dl_model's loop with extra ``hooks`` (called after the TrainParam's own hooks).
    Arguments as train_dl_model; returns (train_results, train_infos, evaluation_infos).
    See :mod:`halcdl.workflow.hooks` for the events and the context."""
    from ..operators.dl_model import check_model, train_dl_model_batch  # noqa: PLC0415
    from ..operators.system import set_system  # noqa: PLC0415

    samples = _evaluate.check_dataset(dldataset, 1)
    m = check_model(dlmodel_handle, 2)
    # data parallel (docs/distributed.md): a step is world × batch_size × multiplier samples
    # of the same permutation on every rank, each rank training on its share
    rank, world = _distributed.rank_and_world_size(m)
    tp = train_param if _validated else _check_train_param(train_param, 3)
    se = to_tuple(start_epoch)
    if len(se) != 1:
        raise wrong_num(4, f"start_epoch takes one value, got {len(se)}")
    resume = se[0] == "resume"
    if not resume:
        if not is_number(se[0]):
            raise wrong_type(4, f"start_epoch must be a number or 'resume', got {se[0]!r}")
        if float(se[0]) < 0 or float(se[0]) != int(se[0]):
            raise wrong_value(4, f"start_epoch must be an integer >= 0, got {se[0]!r}")
    missing = [i for i, s in enumerate(samples) if "split" not in s]
    if missing:
        raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                             f"dataset sample {missing[0]} has no key 'split' (call "
                             f"split_dl_dataset first)")
    train_idx = _split_indices(samples, "train")
    val_idx = _split_indices(samples, "validation")
    if not train_idx:
        raise HOperatorError(H_ERR_DL_INVALID_DATASET, "the dataset has no 'train' samples")
    _auto_batch_size(m, tp, len(train_idx), resume)
    batch0 = int(m.params["batch_size"]) * int(m.params["batch_size_multiplier"]) * world
    if batch0 > len(train_idx):
        raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                             f"the 'train' split holds {len(train_idx)} samples, fewer than "
                             f"one batch (batch_size × batch_size_multiplier"
                             f"{' × ranks' if world > 1 else ''} = {batch0})")
    model_type = str(m.params["type"])
    keys = tp["evaluation_comparison_keys"] or _COMPARISON_DEFAULT.get(model_type,
                                                                       ["top1_error"])
    tp = {**tp, "evaluation_comparison_keys": list(keys)}
    eval_param = dict(tp["evaluation_param"])
    if "measures" in eval_param and model_type != "detection":
        wanted = to_tuple(eval_param["measures"])
        if "all" not in wanted:  # the comparison needs its measures
            eval_param["measures"] = wanted + [k for k in keys if k not in wanted]
    share = _number(tp["display_param"].get("selected_percentage_train_samples", 0),
                    "display_param selected_percentage_train_samples", lo=0.0)
    if share > 100:
        raise _bad(f"display_param selected_percentage_train_samples must be in [0, 100], "
                   f"got {share}")
    # HALCON also evaluates a share of the training split (the first ones, dataset order)
    train_eval_idx = train_idx[:int(math.ceil(share / 100.0 * len(train_idx)))]
    info = None
    if resume:
        info, info_path = _latest_resume_info(tp)
        model_path = os.path.join(os.path.dirname(info_path), str(info["model_file"]))
        _adopt_model_file(m, model_path)  # the last check that can fail before training

    seed = int(tp["seed_rand"])
    set_system("seed_rand", seed)
    n_train = len(train_idx)
    ctx = TrainContext(model=m, dldataset=dldataset, train_param=tp,
                       num_epochs=float(tp["num_epochs"]))
    own = hooks_from_train_param(tp)
    if rank != 0:  # only rank 0 writes files and logs
        own = [h for h in own if not isinstance(h, (SerializationHook, DisplayHook))]
    all_hooks = own + list(hooks)
    losses: collections.deque = collections.deque()
    first_epoch = 0
    if info is not None:
        ctx.iteration = int(info["iteration"])
        ctx.epoch = float(info["epoch"])
        ctx.best_value = _none_if_empty(info.get("best_value"))
        ctx.best_epoch = _none_if_empty(info.get("best_epoch"))
        ctx.best_iteration = _none_if_empty(info.get("best_iteration"))
        ctx.best_result = _none_if_empty(info.get("best_result")) or None
        ctx.state = dict(info.get("state") or {})
        loop = ctx.state.get("_loop") or {}
        losses.extend(zip((float(x) for x in to_tuple(loop.get("losses"))),
                          (int(b) for b in to_tuple(loop.get("batches")))))
        first_epoch = int(math.floor(ctx.epoch + 1e-9))
    else:
        first_epoch = int(se[0])
        ctx.epoch = float(first_epoch)
        ctx.iteration = first_epoch * (n_train // batch0)
    ctx.start_iteration = ctx.iteration
    ctx.iterations_per_epoch = n_train // batch0
    num_epochs = float(tp["num_epochs"])
    ctx.num_iterations = int(math.floor(num_epochs * ctx.iterations_per_epoch + 1e-9))
    eval_interval = float(tp["evaluation_interval_epochs"])
    t_start = time.perf_counter()
    ctx.start_epoch = float(ctx.epoch)
    ctx.start_time = time.time()
    n_mean = int(tp["num_samples_mean_loss"])
    update_interval = float(tp["update_interval_seconds"])
    last_info_t = t_start
    last_eval_iteration = -1
    train_result: dict = {}

    def call(event: str) -> None:
        for h in all_hooks:
            getattr(h, event)(ctx)

    def evaluate_now() -> None:
        nonlocal last_eval_iteration
        last_eval_iteration = ctx.iteration
        if not val_idx:
            return
        result, _ = _evaluate.evaluate_dl_model(dldataset, m, "split", "validation",
                                                eval_param)
        if world > 1:  # every rank evaluated (same time, no timeout risk); rank 0's counts
            result = _distributed.broadcast_object(m, result)
        value = comparison_value(result, keys)
        ctx.evaluation_result = result
        ctx.comparison_value = value
        ctx.improved = math.isfinite(value) and (ctx.best_value is None
                                                 or value > float(ctx.best_value))
        if ctx.improved:
            ctx.best_value, ctx.best_epoch, ctx.best_iteration = value, ctx.epoch, ctx.iteration
            ctx.best_result = result
        result_train: Any = []
        if train_eval_idx:
            result_train, _ = _evaluate.evaluate_dl_model(dldataset, m, "sample_indices",
                                                          train_eval_idx, eval_param)
        ctx.evaluation_infos.append({"epoch": ctx.epoch, "iteration": ctx.iteration,
                                     "result": result, "result_train": result_train,
                                     "comparison_value": value})
        call("on_evaluation")

    def train_info(final: bool = False) -> dict:
        d = train_info_dict(ctx)
        if final and ctx.stopped:
            d["stop_reason"] = ctx.stop_reason or "stopped by a hook"
        return d

    call("on_train_begin")
    if tp["evaluate_before_train"] == "true" and ctx.iteration == 0:
        evaluate_now()
    epoch_index = first_epoch
    skip_fraction = (ctx.epoch - first_epoch) if info is not None else None
    while epoch_index < num_epochs and not ctx.stop and ctx.iteration < ctx.num_iterations:
        order = np.random.default_rng([seed, epoch_index]).permutation(n_train)
        ipe = max(1, n_train // (int(m.params["batch_size"]) *
                                 int(m.params["batch_size_multiplier"]) * world))
        ctx.iterations_per_epoch = ipe
        ctx.epoch = float(epoch_index)
        call("on_epoch_begin")
        # resuming inside an epoch (a 'final' state written after a stop): skip what was done
        it = max(0, min(ipe, int(round((skip_fraction or 0.0) * ipe))))
        skip_fraction = None
        pos = it * int(m.params["batch_size"]) * int(m.params["batch_size_multiplier"]) * world
        while not ctx.stop:
            ctx.epoch = epoch_index + it / ipe
            if ctx.epoch >= num_epochs - 1e-12 or it >= ipe:
                break
            call("on_batch_begin")
            if ctx.stop:
                break  # a hook stopped before this iteration: it does not run
            share = int(m.params["batch_size"]) * int(m.params["batch_size_multiplier"])
            batch = share * world
            if pos + batch > n_train:
                break  # the last partial batch is dropped
            ctx.batch_size = batch
            ctx.sample_indices = [train_idx[j] for j in
                                  order[pos + rank * share:pos + (rank + 1) * share]]
            batch_samples = _evaluate.read_samples(dldataset, ctx.sample_indices)
            if tp["augmentation_param"]:
                # per-sample randomness from (seed, epoch, image_id): reproducible, the same
                # after 'resume', independent of the batch a sample lands in
                aug = {"seed": seed, "epoch": epoch_index,
                       "image_range_min": m.params["image_range_min"],
                       "image_range_max": m.params["image_range_max"],
                       **tp["augmentation_param"]}
                batch_samples = _augment(batch_samples, aug)
            train_result = train_dl_model_batch(m, batch_samples)
            pos += batch
            it += 1
            ctx.iteration += 1
            ctx.epoch = epoch_index + it / ipe
            ctx.train_result = train_result
            loss = float(np.ravel(train_result.get("total_loss", np.nan))[0])
            losses.append((loss, batch))
            while sum(b for _, b in losses) - losses[0][1] >= n_mean:
                losses.popleft()
            ctx.mean_loss = float(np.mean([x for x, _ in losses]))
            ctx.mean_loss_samples = int(sum(b for _, b in losses))
            ctx.time_elapsed = time.perf_counter() - t_start
            done = ctx.iteration - ctx.start_iteration
            ctx.time_remaining = ctx.time_elapsed / done * max(0, ctx.num_iterations -
                                                                ctx.iteration)
            ctx.state["_loop"] = {"losses": [x for x, _ in losses],
                                  "batches": [b for _, b in losses]}
            call("on_batch_end")
            now = time.perf_counter()
            if now - last_info_t >= update_interval and it < ipe:
                last_info_t = now
                ctx.train_infos.append(train_info())
            every = int(math.floor(eval_interval * ipe + 1e-9))
            if every > 0 and ctx.iteration % every == 0:
                evaluate_now()
        if ctx.stop and it < ipe and ctx.epoch < num_epochs - 1e-12:
            break  # stopped inside an epoch: no epoch end
        ctx.epoch = float(min(epoch_index + 1, num_epochs)) if it >= ipe else ctx.epoch
        ctx.train_infos.append(train_info())
        call("on_epoch_end")
        epoch_index += 1
    ctx.stopped = ctx.stop
    if last_eval_iteration != ctx.iteration and ctx.iteration > ctx.start_iteration:
        evaluate_now()
    ctx.time_elapsed = time.perf_counter() - t_start
    ctx.time_remaining = 0.0
    if ctx.stopped:
        ctx.train_infos.append(train_info(final=True))
    call("on_train_end")
    return train_result, ctx.train_infos, ctx.evaluation_infos


@operator
def train_dl_model(dldataset: Any, dlmodel_handle: Any, train_param: Any,
                   start_epoch: Any) -> tuple[dict, list, list]:
    """Train ``dlmodel_handle`` on the 'train' split of ``dldataset`` as ``train_param`` says
    (create_dl_train_param).  ``start_epoch``: 0 for a new training, an integer epoch to
    continue counting from (the model as it is), or 'resume' to continue from the latest
    serialized state of the train_param's 'current' / 'final' / 'epochs' strategies (model
    weights, optimizer state, parameters, best value, hook state: bit-identical to training
    without the interruption).  Returns ``(train_results, train_infos, evaluation_infos)``:
    the last train_dl_model_batch result, one train info dict per update (every
    update_interval_seconds and at every epoch end), one evaluation info per evaluation.
    Every argument is checked before anything changes."""
    tp = _check_train_param(train_param, 3)
    return run_training(dldataset, dlmodel_handle, tp, start_epoch, (), _validated=True)


# --------------------------------------------------------------------------------------------
# set_dl_model_param_max_gpu_batch_size
# --------------------------------------------------------------------------------------------
def _meminfo_available() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _rss() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _probe_bytes(m: Any, batch: int) -> int:
    """Memory one training step at ``batch`` adds (a scratch copy of the network: the model
    itself is not touched)."""
    from ..models.handle import build_core_model  # noqa: PLC0415

    p = m.params
    scratch = build_core_model(m.spec, m.seed, list(p["class_ids"]))
    scratch.set_hparams(m.hparams())
    h, w, c = p["image_height"], p["image_width"], p["image_num_channels"]
    sample = {"image": np.zeros((h, w, c), np.float32)}
    if m.is_segmentation:
        sample["segmentation_image"] = np.full((h, w), p["class_ids"][0], np.int32)
    else:
        sample["image_label_id"] = int(p["class_ids"][0])
    before = _rss()
    scratch.train_step([sample] * batch, batch, 1, h, w, c, 0)
    return max(0, _rss() - before)


@operator
def set_dl_model_param_max_gpu_batch_size(dlmodel_handle: Any,
                                          batch_size_upper_bound: Any) -> None:
    """Set the model's batch_size to the largest power of two (or the bound itself) ≤
    ``batch_size_upper_bound`` whose training fits in memory.

    GPU: the training plan's bytes (measured on the device for batch sizes 1 and 2, then
    extrapolated linearly) against the free device memory.  CPU (halcdl's extension): the
    resident memory one training step adds for batch sizes 1 and 2 on a scratch copy of the
    network (/proc/self/statm), extrapolated linearly, against 80 % of MemAvailable
    (/proc/meminfo).  The model's weights and optimizer state are not changed; only
    batch_size is.  At least 1."""
    from ..operators.dl_model import check_model, set_dl_model_param  # noqa: PLC0415

    m = check_model(dlmodel_handle, 1)
    ub = to_tuple(batch_size_upper_bound)
    if len(ub) != 1:
        raise wrong_num(2, f"batch_size_upper_bound takes one value, got {len(ub)}")
    if not is_int(ub[0]):
        raise wrong_type(2, f"batch_size_upper_bound must be an integer, got {ub[0]!r}")
    upper = int(ub[0])
    if upper < 1:
        raise wrong_value(2, f"batch_size_upper_bound must be >= 1, got {upper}")
    with m.lock:
        device = m.core.device()
        if device >= 0:
            free = _gpu_free_bytes(m.core)
            b1, b2 = _gpu_probe(m, 1), _gpu_probe(m, 2)
        else:
            free = int(0.8 * _meminfo_available())
            b1, b2 = _probe_bytes(m, 1), _probe_bytes(m, 2)
    per_sample = b2 - b1 if b2 > b1 else max(b2 // 2, 1)
    fixed = max(0, b1 - per_sample)
    cands = sorted({1 << k for k in range(upper.bit_length()) if (1 << k) <= upper} | {upper})
    best = 1
    for b in cands:
        if free <= 0 or fixed + b * per_sample <= free:
            best = b
    set_dl_model_param(m, "batch_size", best)


def _gpu_free_bytes(core_model: Any) -> int:
    """Free memory of the GPU a core model is on (cudaMemGetInfo in its engine's context; no
    CuPy needed)."""
    return int(core_model.gpu_free_bytes())


def _gpu_probe(m: Any, batch: int) -> int:
    """Plan bytes of a training step at ``batch`` on a scratch copy on the model's GPU."""
    from ..models.handle import DLModel, build_core_model  # noqa: PLC0415

    p = m.params
    scratch = build_core_model(m.spec, m.seed, list(p["class_ids"]))
    scratch.set_hparams(m.hparams())
    DLModel.place(scratch, m.core.device())
    h, w, c = p["image_height"], p["image_width"], p["image_num_channels"]
    sample = {"image": np.zeros((h, w, c), np.float32)}
    if m.is_segmentation:
        sample["segmentation_image"] = np.full((h, w), p["class_ids"][0], np.int32)
    else:
        sample["image_label_id"] = int(p["class_ids"][0])
    scratch.train_step([sample] * batch, batch, 1, h, w, c, 0)
    return int(scratch.gpu_plan_bytes())

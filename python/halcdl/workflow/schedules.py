"""Schedules for numeric model parameters: the 'schedule' generic parameter of
create_dl_train_param (besides HALCON's piecewise-constant 'change' strategies).

Each schedule is a dict ``{'model_param': name, 'type': t, ...}``; all schedules of one
parameter are applied in the order given, each one transforming the value of the one before
(the first one gets the *base value*: ``initial_value`` when given, else the model's value
when the training started).  ``e`` is the fractional epoch before the iteration
(iterations done / iterations per epoch), so the value is set before every iteration:

* ``'step'``    ``every`` (epochs > 0), ``factor``:          v · factor^floor(e / every)
* ``'cosine'``  ``final_value``, ``epochs`` (default num_epochs):
                final + (v − final) · (1 + cos(π · min(e, epochs) / epochs)) / 2
* ``'warmup'``  ``epochs`` (> 0), ``start_value`` (default 0):
                start + (v − start) · min(1, e / epochs)            (linear warm-up)
* ``'plateau'`` ``factor`` (0 < f < 1), ``patience`` (evaluations, default 1),
                ``min_value`` (default 0), ``measure`` (default: the comparison keys),
                ``min_delta`` (default 0):   max(min_value, v · factor^n), n = number of
                reductions so far; a reduction happens after ``patience`` evaluations in a
                row that did not improve the best measure by more than ``min_delta``.
                The evaluation train_dl_model adds after a stop (a hook's, stop_training)
                is not counted: an uninterrupted run has none.

The base values and the plateau counters live in ``ctx.state['schedules']`` (written into
every serialized ``*_info.hdict``), and the other types are functions of the epoch only, so
``start_epoch='resume'`` continues every schedule exactly.
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

SCHEDULABLE = ("learning_rate", "momentum", "weight_prior", "adam_beta1", "adam_beta2",
               "adam_epsilon", "batchnorm_momentum")
_TYPES = {
    "step": {"required": ("every", "factor"), "optional": ()},
    "cosine": {"required": ("final_value",), "optional": ("epochs",)},
    "warmup": {"required": ("epochs",), "optional": ("start_value",)},
    "plateau": {"required": ("factor",),
                "optional": ("patience", "min_value", "measure", "min_delta")},
}
_COMMON = ("model_param", "type", "initial_value")
_STATE = "schedules"


def _bad(msg: str, code: int = H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE) -> HOperatorError:
    return HOperatorError(code, msg)


def _num(d: dict, key: str, i: int, lo: float | None = None, lo_open: bool = False,
         hi: float | None = None, hi_open: bool = False) -> float:
    v = to_tuple(d[key])
    if len(v) != 1 or not is_number(v[0]) or not math.isfinite(float(v[0])):
        raise _bad(f"schedule {i}: {key} must be one finite number, got {d[key]!r}")
    f = float(v[0])
    if lo is not None and (f <= lo if lo_open else f < lo):
        raise _bad(f"schedule {i}: {key} must be {'>' if lo_open else '>='} {lo:g}, got {f:g}")
    if hi is not None and (f >= hi if hi_open else f > hi):
        raise _bad(f"schedule {i}: {key} must be {'<' if hi_open else '<='} {hi:g}, got {f:g}")
    return f


def check_schedule(d: Any, i: int) -> dict:
    """One schedule dict, validated and normalised (7911 unknown key, 7914 bad value)."""
    if not isinstance(d, dict):
        raise _bad(f"schedule {i} must be a dict, got {type(d).__name__}")
    t = d.get("type")
    if t not in _TYPES:
        raise _bad(f"schedule {i}: type must be one of {', '.join(_TYPES)}, got {t!r}")
    spec = _TYPES[t]
    for k in d:
        if k not in _COMMON + spec["required"] + spec["optional"]:
            raise _bad(f"schedule {i} ({t}): unsupported key {k!r} (supported: "
                       f"{', '.join(_COMMON + spec['required'] + spec['optional'])})",
                       H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM)
    for k in spec["required"]:
        if k not in d:
            raise _bad(f"schedule {i} ({t}): needs key {k!r}")
    name = d.get("model_param")
    if not is_str(name) or str(name) not in SCHEDULABLE:
        raise _bad(f"schedule {i}: model_param must be one of {', '.join(SCHEDULABLE)}, got "
                   f"{name!r}")
    out: dict = {"model_param": str(name), "type": str(t)}
    if "initial_value" in d:
        out["initial_value"] = _num(d, "initial_value", i)
    if t == "step":
        out["every"] = _num(d, "every", i, lo=0.0, lo_open=True)
        out["factor"] = _num(d, "factor", i, lo=0.0)
    elif t == "cosine":
        out["final_value"] = _num(d, "final_value", i)
        if "epochs" in d:
            out["epochs"] = _num(d, "epochs", i, lo=0.0, lo_open=True)
    elif t == "warmup":
        out["epochs"] = _num(d, "epochs", i, lo=0.0, lo_open=True)
        out["start_value"] = _num(d, "start_value", i) if "start_value" in d else 0.0
    else:
        out["factor"] = _num(d, "factor", i, lo=0.0, lo_open=True, hi=1.0, hi_open=True)
        p = to_tuple(d.get("patience", 1))
        if len(p) != 1 or not is_int(p[0]) or int(p[0]) < 1:
            raise _bad(f"schedule {i} (plateau): patience must be an integer >= 1, got "
                       f"{d.get('patience')!r}")
        out["patience"] = int(p[0])
        out["min_value"] = _num(d, "min_value", i) if "min_value" in d else 0.0
        out["min_delta"] = _num(d, "min_delta", i, lo=0.0) if "min_delta" in d else 0.0
        if "measure" in d:
            ms = to_tuple(d["measure"])
            if not ms or not all(is_str(x) and str(x) for x in ms):
                raise _bad(f"schedule {i} (plateau): measure must name evaluation measures, "
                           f"got {d['measure']!r}")
            out["measure"] = [str(x) for x in ms]
    return out


def check_schedules(value: Any, start: int = 0) -> list[dict]:
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise _bad(f"'schedule' must be a dict or a list of dicts, got {type(value).__name__}")
    return [check_schedule(d, start + i) for i, d in enumerate(value)]


def check_no_conflict(schedules: list[dict], change_strategies: list[dict]) -> None:
    """A parameter is driven by 'change' strategies or by schedules, not both."""
    changed = {s["model_param"] for s in change_strategies}
    for i, s in enumerate(schedules):
        if s["model_param"] in changed:
            raise _bad(f"schedule {i}: {s['model_param']!r} also has a 'change' strategy "
                       f"(use one of them per model parameter)")


def apply_one(s: dict, v: float, epoch: float, num_epochs: float, reductions: int = 0) -> float:
    """Schedule ``s`` applied to ``v`` at fractional epoch ``epoch`` (closed forms above)."""
    t = s["type"]
    if t == "step":
        return v * s["factor"] ** math.floor(epoch / s["every"] + 1e-9)
    if t == "cosine":
        span = s.get("epochs", num_epochs)
        x = min(max(epoch, 0.0), span) / span
        return s["final_value"] + (v - s["final_value"]) * (1.0 + math.cos(math.pi * x)) / 2.0
    if t == "warmup":
        return s["start_value"] + (v - s["start_value"]) * min(1.0, max(epoch, 0.0) /
                                                               s["epochs"])
    return max(s["min_value"], v * s["factor"] ** reductions)


def schedule_value(schedules: list[dict], base: float, epoch: float, num_epochs: float,
                   reductions: dict | None = None) -> float:
    """The value of one parameter: its schedules (all for that parameter, in order) applied
    one after another to ``base``; ``reductions`` maps a schedule's index to its plateau
    reduction count."""
    v = float(base)
    for idx, s in schedules:
        v = apply_one(s, v, epoch, num_epochs, int((reductions or {}).get(str(idx), 0)))
    return v


class ScheduleHook(TrainHook):
    """Sets every scheduled parameter before each iteration; counts plateaus on evaluations.

    State (``ctx.state['schedules']``): ``base`` {param: base value}, ``plateau``
    {index: {'best', 'wait', 'reductions'}}."""

    def __init__(self, schedules: list[dict]) -> None:
        self.schedules = schedules
        self.by_param: dict[str, list] = {}
        for i, s in enumerate(schedules):
            self.by_param.setdefault(s["model_param"], []).append((i, s))

    def on_train_begin(self, ctx: TrainContext) -> None:
        from ..operators.dl_model import get_dl_model_param_s  # noqa: PLC0415

        st = ctx.state.setdefault(_STATE, {"base": {}, "plateau": {}})
        st.setdefault("base", {})
        st.setdefault("plateau", {})
        for name, items in self.by_param.items():
            if name not in st["base"]:
                given = [s["initial_value"] for _, s in items if "initial_value" in s]
                st["base"][name] = float(given[0]) if given else \
                    float(get_dl_model_param_s(ctx.model, name))
        for i, s in enumerate(self.schedules):
            if s["type"] == "plateau":
                st["plateau"].setdefault(str(i), {"best": [], "wait": 0, "reductions": 0})

    def value(self, ctx: TrainContext, name: str) -> float:
        st = ctx.state[_STATE]
        red = {k: v["reductions"] for k, v in st["plateau"].items()}
        return schedule_value(self.by_param[name], st["base"][name], ctx.epoch,
                              ctx.num_epochs, red)

    def on_batch_begin(self, ctx: TrainContext) -> None:
        from ..operators.dl_model import set_dl_model_param  # noqa: PLC0415

        for name in self.by_param:
            v = self.value(ctx, name)
            if ctx.model.params.get(name) != v:
                set_dl_model_param(ctx.model, name, v)

    def on_evaluation(self, ctx: TrainContext) -> None:
        from .train import comparison_value  # noqa: PLC0415

        if ctx.stopped:  # the closing evaluation after a stop: a straight run has none, so
            return       # counting it would make 'resume' differ from the straight run
        st = ctx.state[_STATE]["plateau"]
        for i, s in enumerate(self.schedules):
            if s["type"] != "plateau":
                continue
            p = st[str(i)]
            v = float(ctx.comparison_value) if "measure" not in s else \
                comparison_value(ctx.evaluation_result, s["measure"])
            best = p["best"]
            if math.isfinite(v) and (isinstance(best, list) or v > float(best) +
                                     s["min_delta"]):
                p["best"], p["wait"] = v, 0
                continue
            p["wait"] = int(p["wait"]) + 1
            if p["wait"] >= s["patience"]:
                p["reductions"], p["wait"] = int(p["reductions"]) + 1, 0

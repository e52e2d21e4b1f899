"""set_system / get_system.

Supported parameters:

* ``'seed_rand'`` (int, default 42): seeds the random generator of halcdl.  The n-th model
  created after ``set_system('seed_rand', s)`` (read_dl_model, …) initialises its weights with
  the engine seed ``(s + n) mod 2**31`` (n = 0, 1, …), so the same sequence of calls gives the
  same weights.  get_system returns the value last set.  It is also augment_dl_samples'
  default seed; setting it restarts that procedure's call counter (docs/augmentation.md).
* ``'thread_num'`` (int, 1 ≤ n ≤ :func:`max_thread_num`): number of CPU threads of the engine
  (OpenMP, shared with oneDNN).  The bound is ``min(1024, max(16, 4 × os.cpu_count()))``: more
  threads than that only oversubscribe the cores, and a very large number would make OpenMP fail
  to create them (libgomp ends the process then).  Larger values, and integers beyond the C int
  range, raise 1302.
* ``'cudnn_deterministic'`` (``'true'``/``'false'``, default ``'false'``): the GPU backend
  uses only deterministic cuDNN algorithms, chosen by heuristics rather than timing, so two
  identical training runs on the same GPU give bit-identical weights.  Applies from the next
  train or apply call.
* ``'tf32'`` (``'true'``/``'false'``, default ``'true'``; halcdl's own, not HALCON's): the GPU
  backend may use TF32 tensor-core math for float32 convolutions and fully connected layers
  (as PyTorch's cuDNN default).  ``'false'`` gives full float32 products.

Unknown parameter names raise HOperatorError 1301 (wrong value of control parameter 1), as
HALCON does for set_system/get_system.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from .._native import core
from ._tuple import (
    as_int,
    as_str,
    operator,
    py_value,
    single,
    to_scalar,
    wrong_type,
    wrong_value,
)

__all__ = ["set_system", "get_system", "get_system_s", "next_model_seed", "get_system_value",
           "gpu_options"]

_DEFAULT_SEED = 42
_lock = threading.Lock()
_state: dict[str, Any] = {
    "seed_rand": _DEFAULT_SEED,
    "cudnn_deterministic": "false",
    "tf32": "true",
}
_seed_counter = 0  # models created since the last seed_rand
_seed_generation = 0  # set_system('seed_rand', ...) calls so far (augment_dl_samples' counter)


def next_model_seed() -> int:
    """Engine seed for the next model created (advances the stream)."""
    global _seed_counter
    with _lock:
        seed = (int(_state["seed_rand"]) + _seed_counter) % (2**31)
        _seed_counter += 1
    return seed


def get_system_value(name: str) -> Any:
    """Internal read access for other modules (e.g. the GPU backend: cudnn_deterministic)."""
    return _state[name]


def max_thread_num() -> int:
    """Largest thread_num set_system accepts: ``min(1024, max(16, 4 × hardware threads))``."""
    return min(1024, max(16, 4 * (os.cpu_count() or 1)))


_SYSTEM_PARAMS = ("seed_rand", "thread_num", "cudnn_deterministic", "tf32")


def gpu_options() -> tuple[bool, bool]:
    """(deterministic, tf32) for the GPU backend, from set_system."""
    return _state["cudnn_deterministic"] == "true", _state["tf32"] == "true"


@operator
def set_system(system_parameter: Any, value: Any) -> None:
    """Set a system parameter ('seed_rand', 'thread_num', 'cudnn_deterministic', 'tf32')."""
    global _seed_counter, _seed_generation
    name = as_str(to_scalar(system_parameter, 1, "one parameter name"), 1, "system_parameter")
    if name not in _SYSTEM_PARAMS:
        raise wrong_value(1, f"unknown system parameter {name!r} (supported: {_SYSTEM_PARAMS})")
    v = to_scalar(value, 2)
    if name == "seed_rand":
        seed = as_int(v, 2, "seed_rand")
        with _lock:
            _state["seed_rand"] = seed
            _seed_counter = 0
            _seed_generation += 1
    elif name == "thread_num":
        n = as_int(v, 2, "thread_num")
        hi = max_thread_num()
        if n < 1 or n > hi:
            raise wrong_value(2, f"thread_num must be in [1, {hi}] (4 x the {os.cpu_count()} "
                                 f"hardware threads, at most 1024), got {n}")
        core.set_num_threads(n)
    elif name in ("cudnn_deterministic", "tf32"):
        v = py_value(v)
        if v is True or v is False:
            v = "true" if v else "false"
        if not isinstance(v, str):
            raise wrong_type(2, f"{name} must be 'true' or 'false', got {v!r}")
        if v not in ("true", "false"):
            raise wrong_value(2, f"{name} must be 'true' or 'false', got {v!r}")
        _state[name] = v


def _get_system(query: Any) -> list:
    name = as_str(to_scalar(query, 1, "one parameter name"), 1, "query")
    if name == "seed_rand":
        return [_state["seed_rand"]]
    if name == "thread_num":
        return [int(core.get_num_threads())]
    if name in ("cudnn_deterministic", "tf32"):
        return [_state[name]]
    raise wrong_value(1, f"unknown system parameter {name!r} (supported: {_SYSTEM_PARAMS})")


@operator
def get_system(query: Any) -> list:
    """Value of a system parameter, as a list."""
    return _get_system(query)


@operator
def get_system_s(query: Any) -> Any:
    """Value of a system parameter, as a single value."""
    return single(_get_system(query))

"""HALCON control-tuple conventions, in one place.

* A control tuple is a Python list; a single value may be passed as a scalar (a ``str`` is a
  scalar, never a sequence of characters).  Tuples and 1-D numpy arrays are accepted as lists.
* Tuple outputs are lists.  ``_s`` twins return the single value and raise
  :class:`HTupleConversionError` when the result does not hold exactly one value.
* numpy scalars are turned into the matching Python ``int``/``float``/``str``/``bool``.
* Errors on control parameter *n* (1-based position in the Python signature) use HALCON's
  generic numbers: wrong type ``1200+n``, wrong value ``1300+n``, wrong number of values
  ``1400+n``.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, TypeVar

import numpy as np

from ..errors import HOperatorError, HTupleConversionError

__all__ = [
    "to_tuple",
    "to_scalar",
    "single",
    "py_value",
    "is_int",
    "is_number",
    "is_str",
    "as_int",
    "as_float",
    "as_str",
    "to_float",
    "check_float32",
    "FLT_MAX",
    "FLT_MIN_NORMAL",
    "INT32_MAX",
    "wrong_type",
    "wrong_value",
    "wrong_num",
    "operator",
    "conversion_error",
]


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
def wrong_type(pos: int, detail: str) -> HOperatorError:
    """HOperatorError 1200+pos: wrong type of control parameter ``pos``."""
    return HOperatorError(1200 + pos, f"Wrong type of control parameter {pos}: {detail}")


def wrong_value(pos: int, detail: str) -> HOperatorError:
    """HOperatorError 1300+pos: wrong value of control parameter ``pos``."""
    return HOperatorError(1300 + pos, f"Wrong value of control parameter {pos}: {detail}")


def wrong_num(pos: int, detail: str) -> HOperatorError:
    """HOperatorError 1400+pos: wrong number of values of control parameter ``pos``."""
    return HOperatorError(
        1400 + pos, f"Wrong number of values of control parameter {pos}: {detail}"
    )


F = TypeVar("F", bound=Callable[..., Any])

# Python / pybind11 exceptions an argument can cause while it is converted (UnicodeError is a
# ValueError; pybind11's cast_error arrives as RuntimeError; RecursionError too).
_CONVERSION_ERRORS = (TypeError, ValueError, OverflowError, IndexError, KeyError,
                      ZeroDivisionError, RuntimeError, MemoryError, AttributeError)


def conversion_error(exc: BaseException) -> HOperatorError:
    """HOperatorError for a Python exception raised while converting an argument: wrong type
    → 7790, out of memory → 6001, anything else (value, range, encoding, nesting) → 7791."""
    if isinstance(exc, MemoryError):
        code, what = 6001, "not enough memory"
    elif isinstance(exc, (TypeError, AttributeError)):
        code, what = 7790, "an argument has a type the operator cannot convert"
    elif isinstance(exc, RecursionError):
        code, what = 7791, "an argument is nested too deeply"
    else:
        code, what = 7791, "an argument has a value the operator cannot convert"
    return HOperatorError(code, f"{what} ({type(exc).__name__}: {str(exc)[:200]})")


def operator(func: F) -> F:
    """Mark ``func`` as a HALCON operator: an HOperatorError raised inside (by Python or by the
    engine) gets ``.operator`` set and ``" in operator <name>"`` appended to its message, as in
    HALCON.  The signature (parameter names) is preserved for ``inspect.signature``."""
    name = func.__name__

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except HOperatorError as err:
            if err.operator is None:
                err.operator = name
                err.message = f"{err.message} in operator {name}"
            raise
        except _CONVERSION_ERRORS as exc:
            # The last line of the conversion layer (docs/robustness.md): an argument that a
            # check above did not anticipate made Python or pybind11 fail while converting
            # it.  It becomes HOperatorError; the original exception is chained as __cause__.
            err = conversion_error(exc)
            err.operator = name
            err.message = f"{err.message} in operator {name}"
            raise err from exc

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------------------------
def py_value(v: Any) -> Any:
    """numpy scalar → Python scalar; everything else unchanged."""
    if isinstance(v, np.generic):
        return v.item()
    return v


def to_tuple(value: Any) -> list:
    """Normalise a control tuple: scalar → ``[scalar]``, list/tuple/1-D array → list,
    ``None`` → ``[]``.  numpy scalars become Python scalars."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [py_value(v) for v in value]
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return [value.item()]
        if value.ndim == 1:
            return value.tolist()
        # a multi-dimensional array is an iconic object, not a control tuple
        return [value]
    return [py_value(value)]


def to_scalar(value: Any, pos: int, what: str = "a single value") -> Any:
    """The one value of control parameter ``pos``; 1400+pos if it holds 0 or several."""
    vals = to_tuple(value)
    if len(vals) != 1:
        raise wrong_num(pos, f"expected {what}, got {len(vals)} values")
    return vals[0]


def single(values: list) -> Any:
    """Result of an ``_s`` twin: the one value of ``values`` or HTupleConversionError."""
    if len(values) != 1:
        raise HTupleConversionError(
            f"tuple result holds {len(values)} values; the _s operator needs exactly one"
        )
    return values[0]


def is_int(v: Any) -> bool:
    """An integer that is not a bool (numpy integers included)."""
    return isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_))


def is_number(v: Any) -> bool:
    """A real number that is not a bool (numpy numbers included)."""
    return isinstance(v, (numbers.Real, np.integer, np.floating)) and not isinstance(
        v, (bool, np.bool_)
    )


def is_str(v: Any) -> bool:
    return isinstance(v, (str, np.str_))


def as_int(v: Any, pos: int, what: str) -> int:
    """``v`` as int, or 1200+pos (wrong type)."""
    if not is_int(v):
        raise wrong_type(pos, f"{what} must be an integer, got {v!r}")
    return int(v)


def as_float(v: Any, pos: int, what: str, finite: bool = True) -> float:
    """``v`` as float (ints accepted), or 1200+pos (wrong type) / 1300+pos (NaN, Inf)."""
    if not is_number(v):
        raise wrong_type(pos, f"{what} must be a number, got {v!r}")
    f = to_float(v)
    if finite and not math.isfinite(f):
        raise wrong_value(pos, f"{what} must be finite, got {f!r}")
    return f


FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN_NORMAL = float(np.finfo(np.float32).tiny)  # smallest normal float32
INT32_MAX = 2**31 - 1


def to_float(v: Any) -> float:
    """``float(v)`` for a number; an int too large for a double (``10**400``) gives ``inf``
    instead of OverflowError, so the caller's finiteness check names the parameter."""
    try:
        return float(v)
    except OverflowError:
        return -math.inf if is_int(v) and int(v) < 0 else math.inf


def check_float32(f: float, what: str, err: Callable[[str], Exception],
                  normal: bool = False) -> float:
    """``f`` (already finite as a double) must be finite as float32 (``|f| <= FLT_MAX``);
    with ``normal``, a nonzero ``f`` must also not be subnormal or round to 0 in float32
    (``|f| >= FLT_MIN_NORMAL``).  Raises ``err(message)`` otherwise."""
    if abs(f) > FLT_MAX:
        raise err(f"{what} = {f!r} is not representable as a float32 (|value| <= {FLT_MAX:.6g})")
    if normal and f != 0 and abs(f) < FLT_MIN_NORMAL:
        raise err(f"{what} = {f!r} is below the smallest normal float32 ({FLT_MIN_NORMAL:.6g}) "
                  f"and would be rounded towards 0")
    return f


def as_str(v: Any, pos: int, what: str) -> str:
    """``v`` as str, or 1200+pos (wrong type)."""
    if not is_str(v):
        raise wrong_type(pos, f"{what} must be a string, got {v!r}")
    return str(v)

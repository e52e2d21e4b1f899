"""HALCON dict operators over plain Python dicts.

halcdl's dict handles *are* ``dict`` objects, so ``DLSample``/``DLResult``/``DLTrainResult``
work the same whether built with these operators or as dict literals:

* ``set_dict_tuple(d, 'image_label_id', 3)`` stores ``d['image_label_id'] = 3``; a tuple of
  exactly one value is stored as that value, any other tuple as a list.
* ``get_dict_tuple(d, key)`` returns a list (a scalar value ``v`` comes back as ``[v]``).
* ``set_dict_object(image, d, 'image')`` stores the array itself.

Keys are strings or integers.  A missing key raises HOperatorError 2894 (H_ERR_DICT_KEY).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from ..errors import (
    H_ERR_DICT_KEY,
    H_ERR_WT_CTRL_EXPECTED,
    H_ERR_WT_ICONIC_EXPECTED,
    HOperatorError,
)
from ._tuple import (
    as_str,
    is_int,
    is_str,
    operator,
    py_value,
    single,
    to_scalar,
    to_tuple,
    wrong_num,
    wrong_type,
    wrong_value,
)

__all__ = [
    "create_dict",
    "set_dict_tuple",
    "get_dict_tuple",
    "get_dict_tuple_s",
    "set_dict_object",
    "get_dict_object",
    "get_dict_param",
    "get_dict_param_s",
    "remove_dict_key",
    "copy_dict",
]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _dict(handle: Any, pos: int) -> dict:
    if isinstance(handle, (list, tuple)) and len(handle) == 1:
        handle = handle[0]
    if not isinstance(handle, dict):
        raise wrong_type(pos, f"dict_handle must be a dict handle, got {type(handle).__name__}")
    return handle


def _key(key: Any, pos: int):
    k = to_scalar(key, pos, "one key")
    if is_str(k):
        return str(k)
    if is_int(k):
        return int(k)
    raise wrong_type(pos, f"a key must be a string or an integer, got {k!r}")


def _keys(key: Any, pos: int) -> list:
    out = []
    for k in to_tuple(key):
        if is_str(k):
            out.append(str(k))
        elif is_int(k):
            out.append(int(k))
        else:
            raise wrong_type(pos, f"a key must be a string or an integer, got {k!r}")
    return out


def _missing(key) -> HOperatorError:
    return HOperatorError(H_ERR_DICT_KEY, f"Dict does not contain the requested key {key!r}")


def _is_object(v: Any) -> bool:
    """True for iconic objects (images): arrays of rank ≥ 2 or lists of such arrays, and
    anything that is neither a control value nor a dict."""
    if isinstance(v, np.ndarray):
        return v.ndim >= 2
    if isinstance(v, (list, tuple)):
        return len(v) > 0 and all(isinstance(x, np.ndarray) and x.ndim >= 2 for x in v)
    if v is None or isinstance(v, (str, bytes, bool, int, float, complex, dict, np.generic)):
        return False
    # an HObject-like wrapper or another image container
    return hasattr(v, "__array__")


def _as_stored_tuple(values: list) -> Any:
    return values[0] if len(values) == 1 else values


# --------------------------------------------------------------------------------------------
# operators
# --------------------------------------------------------------------------------------------
@operator
def create_dict() -> dict:
    """Create an empty dict handle (a plain ``dict``)."""
    return {}


@operator
def set_dict_tuple(dict_handle: dict, key: Any, tuple: Any) -> None:  # noqa: A002 (HALCON name)
    """Store the control tuple ``tuple`` under ``key``: one value is stored as that value,
    several (or none) as a list.  Dict handles (dicts) are stored by reference, as in HALCON."""
    d = _dict(dict_handle, 1)
    k = _key(key, 2)
    if isinstance(tuple, np.ndarray) and tuple.ndim >= 2:
        raise wrong_type(3, "an image is an iconic object; use set_dict_object")
    d[k] = _as_stored_tuple(to_tuple(tuple))


@operator
def get_dict_tuple(dict_handle: dict, key: Any) -> list:
    """The control tuple stored under ``key`` as a list (2894 if missing; 2460 if the key holds
    an iconic object)."""
    d = _dict(dict_handle, 1)
    k = _key(key, 2)
    if k not in d:
        raise _missing(k)
    v = d[k]
    if _is_object(v):
        raise HOperatorError(
            H_ERR_WT_CTRL_EXPECTED,
            f"key {k!r} holds an iconic object; use get_dict_object",
        )
    return to_tuple(v)


@operator
def get_dict_tuple_s(dict_handle: dict, key: Any) -> Any:
    """Like get_dict_tuple, returning the single value (HTupleConversionError otherwise)."""
    return single(get_dict_tuple(dict_handle, key))


@operator
def set_dict_object(object: Any, dict_handle: dict, key: Any) -> None:  # noqa: A002
    """Store the iconic object ``object`` (a numpy image, a list of images, an image batch)
    under ``key``.  The object is stored as given (no copy)."""
    d = _dict(dict_handle, 2)
    k = _key(key, 3)
    if object is None or isinstance(object, (str, bytes, bool, int, float, dict, np.generic)):
        raise wrong_type(1, f"object must be an image object, got {type(object).__name__}")
    d[k] = object


@operator
def get_dict_object(dict_handle: dict, key: Any) -> Any:
    """The iconic object stored under ``key`` (2894 if missing; 2461 if it holds a control
    tuple)."""
    d = _dict(dict_handle, 1)
    k = _key(key, 2)
    if k not in d:
        raise _missing(k)
    v = d[k]
    if not _is_object(v):
        raise HOperatorError(
            H_ERR_WT_ICONIC_EXPECTED,
            f"key {k!r} holds a control tuple; use get_dict_tuple",
        )
    return v


def _dict_param(dict_handle: dict, gen_param_name: Any, key: Any) -> list:
    """Information about the dict:

    * ``'keys'``: all keys (``key`` is ignored, pass ``[]``);
    * ``'key_exists'``: for each key in ``key``, 1 if present else 0;
    * ``'key_data_type'``: for each key, ``'object'``, ``'dict'`` or ``'tuple'``
      (``'none'`` for a missing key).
    """
    d = _dict(dict_handle, 1)
    name = as_str(to_scalar(gen_param_name, 2, "one parameter name"), 2, "gen_param_name")
    if name == "keys":
        return list(d.keys())
    keys = _keys(key, 3)
    if name == "key_exists":
        return [1 if k in d else 0 for k in keys]
    if name == "key_data_type":
        out = []
        for k in keys:
            if k not in d:
                out.append("none")
            elif _is_object(d[k]):
                out.append("object")
            elif isinstance(d[k], dict):
                out.append("dict")
            else:
                out.append("tuple")
        return out
    raise wrong_value(
        2, f"unknown gen_param_name {name!r} (use 'keys', 'key_exists' or 'key_data_type')"
    )


@operator
def get_dict_param(dict_handle: dict, gen_param_name: Any, key: Any) -> list:
    """Information about the dict ('keys', 'key_exists', 'key_data_type'), as a list."""
    return _dict_param(dict_handle, gen_param_name, key)


@operator
def get_dict_param_s(dict_handle: dict, gen_param_name: Any, key: Any) -> Any:
    """Like get_dict_param, for exactly one value (e.g. 'key_exists' of one key)."""
    return single(_dict_param(dict_handle, gen_param_name, key))


@operator
def remove_dict_key(dict_handle: dict, key: Any) -> None:
    """Remove ``key`` (one key or a list).  All keys are checked first: if one is missing,
    2894 is raised and nothing is removed."""
    d = _dict(dict_handle, 1)
    keys = _keys(key, 2)
    for k in keys:
        if k not in d:
            raise _missing(k)
    for k in keys:
        d.pop(k, None)


_COPY_PARAMS = ("copy_tuple", "copy_object", "copy_dict")


@operator
def copy_dict(dict_handle: dict, gen_param_name: Any, gen_param_value: Any) -> dict:
    """Copy a dict.  By default lists, arrays and nested dicts are copied too (a deep copy).
    Generic parameters (``'true'``/``'false'``): ``'copy_tuple'`` (lists), ``'copy_object'``
    (numpy images), ``'copy_dict'`` (nested dicts, copied recursively with the same rules);
    ``'false'`` shares the value with the original."""
    d = _dict(dict_handle, 1)
    names = to_tuple(gen_param_name)
    values = to_tuple(gen_param_value)
    if len(names) != len(values):
        raise wrong_num(3, f"{len(names)} names but {len(values)} values")
    opts = {n: True for n in _COPY_PARAMS}
    for n, v in zip(names, values):
        if not is_str(n):
            raise wrong_type(2, f"gen_param_name must be strings, got {n!r}")
        if n not in opts:
            raise wrong_value(2, f"unknown gen_param_name {n!r} (use {', '.join(_COPY_PARAMS)})")
        v = py_value(v)
        if v in ("true", True, 1):
            opts[n] = True
        elif v in ("false", False, 0):
            opts[n] = False
        else:
            raise wrong_value(3, f"{n} must be 'true' or 'false', got {v!r}")
    return _copy(d, opts)


def _copy(d: dict, opts: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[k] = _copy(v, opts) if opts["copy_dict"] else v
        elif _is_object(v):
            out[k] = copy.deepcopy(v) if opts["copy_object"] else v
        elif isinstance(v, list):
            out[k] = list(v) if opts["copy_tuple"] else v
        elif isinstance(v, np.ndarray):
            out[k] = v.copy() if opts["copy_tuple"] else v
        else:
            out[k] = v
    return out

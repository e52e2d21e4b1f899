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


# --------------------------------------------------------------------------------------------
# files and JSON (docs/hdict.md)
# --------------------------------------------------------------------------------------------
__all__ += ["read_dict", "write_dict", "dict_to_json", "json_to_dict"]

_JSON_DEFAULTS = {"json_value_true": 1, "json_value_false": 0, "json_value_null": "HNULL",
                  "convert_json_arrays_to": "dict"}
_ARRAY_MODES = ("dict", "tuple_if_possible")


def _gen_params(names: Any, values: Any, allowed: dict, pos: int) -> dict:
    """GenParamName/GenParamValue (two tuples, or a dict as ``gen_param_name``) → options.
    Unknown names 1300+pos, a count mismatch 1400+pos+1."""
    if isinstance(names, dict):
        items = list(names.items())
        if to_tuple(values):
            raise wrong_num(pos + 1, "pass the generic parameters as a dict or as two tuples")
    else:
        n, v = to_tuple(names), to_tuple(values)
        if len(n) != len(v):
            raise wrong_num(pos + 1, f"{len(n)} names but {len(v)} values")
        items = list(zip(n, v))
    opts = dict(allowed)
    for name, value in items:
        if not is_str(name):
            raise wrong_type(pos, f"gen_param_name must be strings, got {name!r}")
        if name not in allowed:
            known = ", ".join(repr(k) for k in allowed) or "none"
            raise wrong_value(pos, f"unknown gen_param_name {name!r} (supported: {known})")
        value = to_tuple(value)
        if len(value) != 1:
            raise wrong_num(pos + 1, f"{name} takes one value, got {len(value)}")
        opts[name] = py_value(value[0])
    mode = opts.get("convert_json_arrays_to")
    if mode is not None and mode not in _ARRAY_MODES:
        raise wrong_value(pos + 1, f"convert_json_arrays_to must be one of {_ARRAY_MODES}, "
                                   f"got {mode!r}")
    ft = opts.get("file_type")
    if ft is not None and ft not in ("hdict", "json"):
        raise wrong_value(pos + 1, f"file_type must be 'hdict' or 'json', got {ft!r}")
    return opts


def _from_json(value: Any, opts: dict, depth: int = 0) -> Any:
    if depth > _MAX_JSON_DEPTH:
        raise ValueError("JSON nested too deeply")
    if isinstance(value, dict):
        return {str(k): _from_json(v, opts, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        if opts["convert_json_arrays_to"] == "tuple_if_possible" and all(
                not isinstance(x, (dict, list)) for x in value):
            return [_json_primitive(x, opts) for x in value]
        return {i: _from_json(x, opts, depth + 1) for i, x in enumerate(value)}
    return _json_primitive(value, opts)


def _json_primitive(x: Any, opts: dict) -> Any:
    if x is True:
        return opts["json_value_true"]
    if x is False:
        return opts["json_value_false"]
    if x is None:
        return opts["json_value_null"]
    if isinstance(x, int) and not -(1 << 63) <= x < (1 << 63):
        return float(x)
    return x


_MAX_JSON_DEPTH = 100


def _to_json(d: dict, depth: int = 0, active: tuple = ()) -> Any:
    if depth > _MAX_JSON_DEPTH or any(d is a for a in active):
        raise wrong_value(1, "the dict is nested too deeply or contains itself")
    active = active + (d,)
    keys = list(d.keys())
    if keys and keys == list(range(len(keys))):  # a converted JSON array
        return [_json_value(d[k], k, depth, active) for k in keys]
    return {str(k): _json_value(v, k, depth, active) for k, v in d.items()}


def _json_value(v: Any, key: Any, depth: int, active: tuple) -> Any:
    if isinstance(v, dict):
        return _to_json(v, depth + 1, active)
    if _is_object(v):
        raise wrong_type(1, f"key {key!r} holds an iconic object; JSON holds control values "
                            "and dicts only")
    vals = to_tuple(v)
    out = []
    for x in vals:
        if isinstance(x, dict):
            out.append(_to_json(x, depth + 1, active))
        elif is_str(x):
            out.append(str(x))
        elif is_int(x) or isinstance(x, bool):
            out.append(int(x))
        elif isinstance(x, float):
            if not np.isfinite(x):
                raise wrong_value(1, f"key {key!r} holds {x}, which JSON cannot represent")
            out.append(x)
        else:
            raise wrong_type(1, f"key {key!r} holds a {type(x).__name__}")
    return out[0] if len(out) == 1 else out


@operator
def dict_to_json(dict_handle: dict, gen_param_name: Any, gen_param_value: Any) -> str:
    """The dict as a JSON string: a one-value tuple becomes a JSON value, other tuples JSON
    arrays, nested dicts objects (a dict whose keys are exactly 0..n-1 becomes an array).
    Iconic objects raise 1201; NaN/Inf 1301.  No generic parameters are supported."""
    import json

    d = _dict(dict_handle, 1)
    _gen_params(gen_param_name, gen_param_value, {}, 2)
    return json.dumps(_to_json(d), ensure_ascii=False, allow_nan=False)


@operator
def json_to_dict(json_string: Any, gen_param_name: Any, gen_param_value: Any) -> dict:
    """A dict from a JSON object string.  ``'json_value_true'``/``'json_value_false'``/
    ``'json_value_null'`` (default 1, 0, 'HNULL') and ``'convert_json_arrays_to'``
    (``'dict'``: arrays become dicts with keys 0..n-1, the default; ``'tuple_if_possible'``:
    arrays of primitives become tuples)."""
    s = as_str(to_scalar(json_string, 1, "one JSON string"), 1, "json_string")
    opts = _gen_params(gen_param_name, gen_param_value, _JSON_DEFAULTS, 2)
    return _parse_json(s, opts, lambda why: wrong_value(1, f"not a JSON object: {why}"))


def _parse_json(s: str, opts: dict, fail) -> dict:
    import json

    try:
        value = json.loads(s)
        if not isinstance(value, dict):
            raise ValueError(f"the top level is a {type(value).__name__}, not an object")
        return _from_json(value, opts)
    except RecursionError:
        raise fail("nested too deeply") from None
    except ValueError as err:  # json.JSONDecodeError is a ValueError
        raise fail(str(err)) from None


def _find_file(name: str) -> str:
    """HALCON's search: the name as given, else with '.hdict' or '.json' appended."""
    import os

    if os.path.exists(name):
        return name
    for ext in (".hdict", ".json"):
        if os.path.exists(name + ext):
            return name + ext
    return name


@operator
def read_dict(file_name: Any, gen_param_name: Any, gen_param_value: Any) -> dict:
    """Read a dict from a HALCON ``.hdict`` file or a JSON file (recognised by content; a
    name without the file is tried with '.hdict' and '.json' appended).  Generic parameters
    as :func:`json_to_dict` (they only affect JSON files).  5200 if the file is missing,
    7780 if it is damaged."""
    from ..errors import H_ERR_DL_FILE_READ
    from ..io.hdict import MAGIC, parse_hdict, read_file_bytes

    name = as_str(to_scalar(file_name, 1, "one file name"), 1, "file_name")
    opts = _gen_params(gen_param_name, gen_param_value, _JSON_DEFAULTS, 2)
    path = _find_file(name)
    data = read_file_bytes(path)
    if data.startswith(MAGIC) or data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] != b"{":
        return parse_hdict(data, path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise HOperatorError(H_ERR_DL_FILE_READ,
                             f"cannot read dict file {path!r}: not UTF-8 JSON ({err.reason})") \
            from None
    return _parse_json(text, opts, lambda why: HOperatorError(
        H_ERR_DL_FILE_READ, f"cannot read dict file {path!r}: {why}"))


@operator
def write_dict(dict_handle: dict, file_name: Any, gen_param_name: Any,
               gen_param_value: Any) -> None:
    """Write the dict to ``file_name`` atomically: HALCON's binary format (docs/hdict.md),
    or JSON with ``'file_type'`` ``'json'`` or a name ending in '.json' (halcdl's choice).
    Values a file cannot hold raise 1201/1301 and nothing is written."""
    import os

    from ..errors import H_ERR_DL_FILE_WRITE
    from ..io.files import atomic_write
    from ..io.hdict import write_hdict

    d = _dict(dict_handle, 1)
    name = as_str(to_scalar(file_name, 2, "one file name"), 2, "file_name")
    opts = _gen_params(gen_param_name, gen_param_value, {"file_type": None}, 3)
    ft = opts["file_type"] or ("json" if name.lower().endswith(".json") else "hdict")
    if ft == "hdict":
        write_hdict(d, name)
        return
    text = dict_to_json(d, [], []).encode("utf-8")
    try:
        atomic_write(os.fspath(name), lambda put: put(text))
    except OSError as err:
        raise HOperatorError(H_ERR_DL_FILE_WRITE,
                             f"cannot write dict file {name!r}: {err.strerror or err}") from None

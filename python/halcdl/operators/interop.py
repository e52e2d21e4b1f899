"""The interop helpers of HALCON's Python binding (``halcon.python_interop`` /
``halcon.numpy_interop``), plus set_dict_tuple_at.

halcdl's dict handles *are* Python dicts and its images *are* numpy arrays (an
:class:`~halcdl.hobject.HObject` is a list of them), so these functions convert and validate
rather than marshal: Python code written for HALCON's binding runs unchanged.  See
docs/interop.md for the exact mapping.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import H_ERR_DICT_KEY, H_ERR_WT_CTRL_EXPECTED, HOperatorError
from ..hobject import HObject, image_list
from ._tuple import is_int, is_number, is_str, operator, py_value, to_tuple, \
    wrong_num, wrong_type, wrong_value

__all__ = [
    "from_python_dict",
    "as_python_dict",
    "himage_from_numpy_array",
    "himage_as_numpy_array",
    "set_dict_tuple_at",
]

_MAX_DEPTH = 100
# pixel types HALCON images have (byte, uint2, int1/2/4, real); numpy kinds accepted
_PIXEL_DTYPES = (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.int64, np.float32,
                 np.float64)


def _path(path: tuple) -> str:
    return "".join(f"[{k!r}]" for k in path) or "the dict"


def _key(k: Any, path: tuple) -> str | int:
    if is_str(k):
        return str(k)
    if is_int(k):
        return int(k)
    raise wrong_type(1, f"dict keys must be strings or integers, got {k!r} at {_path(path)}")


def _convert_value(v: Any, path: tuple, depth: int, active: tuple) -> Any:
    """One Python value → what a halcdl dict stores (raises 1201 naming the key path)."""
    if isinstance(v, dict):
        if depth >= _MAX_DEPTH or any(v is a for a in active):
            raise wrong_value(1, f"the dict at {_path(path)} is nested too deeply or contains "
                                 f"itself")
        return _convert(v, path, depth + 1, active + (v,))
    if isinstance(v, HObject):
        return v
    if isinstance(v, np.ndarray):
        if v.ndim >= 2:  # an image (or a batch): an iconic object, stored by reference
            if v.dtype.type not in _PIXEL_DTYPES and v.dtype != np.bool_:
                raise wrong_type(1, f"{_path(path)}: arrays of dtype {v.dtype} cannot be "
                                    f"images")
            return v
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        out = []
        for i, x in enumerate(v):
            x = py_value(x)
            if isinstance(x, dict):
                raise wrong_type(1, f"{_path(path)}[{i}]: a tuple cannot hold a dict (store "
                                    f"it under its own key)")
            if isinstance(x, np.ndarray) and x.ndim == 0:
                x = x.item()
            if not (is_str(x) or is_number(x) or isinstance(x, bool)):
                raise wrong_type(1, f"{_path(path)}[{i}]: tuple elements must be numbers or "
                                    f"strings, got {type(x).__name__}")
            out.append(str(x) if is_str(x) else x)
        return out
    v = py_value(v)
    if isinstance(v, bool) or is_number(v):
        return v
    if is_str(v):
        return str(v)
    raise wrong_type(1, f"{_path(path)}: a {type(v).__name__} cannot be stored in a dict "
                        f"(numbers, strings, lists of them, numpy arrays, HObjects, dicts)")


def _convert(d: dict, path: tuple, depth: int, active: tuple) -> dict:
    out: dict = {}
    for k, v in d.items():
        key = _key(k, path)
        out[key] = _convert_value(v, path + (key,), depth, active)
    return out


@operator
def from_python_dict(py_dict: Any) -> dict:
    """A new dict handle holding the content of the Python dict ``py_dict`` (nested dicts
    become nested dict handles, lists/tuples/1-D arrays control tuples, 2-D and higher numpy
    arrays images).  Keys: strings or integers.  Anything else → 1201 naming the key; the
    input is never changed."""
    if not isinstance(py_dict, dict):
        raise wrong_type(1, f"py_dict must be a dict, got {type(py_dict).__name__}")
    return _convert(py_dict, (), 0, (py_dict,))


def _export(d: dict, depth: int, active: tuple) -> dict:
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            if depth >= _MAX_DEPTH or any(v is a for a in active):
                raise wrong_value(1, f"the dict under {k!r} is nested too deeply or contains "
                                     f"itself")
            out[k] = _export(v, depth + 1, active + (v,))
        elif isinstance(v, list):
            out[k] = list(v)
        else:
            out[k] = v
    return out


@operator
def as_python_dict(dict_handle: Any) -> dict:
    """The content of a dict handle as a new Python dict: nested dict handles as nested dicts
    (recursively), control tuples of one value as that value, other tuples as lists, images
    as they are stored (numpy arrays or HObjects; not copied).  Changing the result does not
    change the handle."""
    if isinstance(dict_handle, (list, tuple)) and len(dict_handle) == 1:
        dict_handle = dict_handle[0]
    if not isinstance(dict_handle, dict):
        raise wrong_type(1, f"dict_handle must be a dict handle, got "
                            f"{type(dict_handle).__name__}")
    return _export(dict_handle, 0, (dict_handle,))


@operator
def himage_from_numpy_array(array: Any) -> HObject:
    """An image object holding ``array``: (H, W) one channel, (H, W, C) C channels (HALCON's
    channel order; no copy).  Pixel types: uint8, int8, uint16, int16, int32, int64, float32,
    float64 (HALCON's byte, int1, uint2, int2, int4, int8, real); bool becomes uint8."""
    if not isinstance(array, np.ndarray):
        raise wrong_type(1, f"array must be a numpy array, got {type(array).__name__}")
    if array.ndim not in (2, 3) or array.size == 0:
        raise wrong_value(1, f"an image is an (H, W) or (H, W, C) array with pixels, got shape "
                             f"{array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype.type not in _PIXEL_DTYPES:
        raise wrong_type(1, f"array dtype {array.dtype} is not a HALCON pixel type")
    obj = HObject()
    obj.images.append(array)
    return obj


@operator
def himage_as_numpy_array(himage: Any) -> np.ndarray:
    """The pixels of a one-image object as a numpy array ((H, W) or (H, W, C); the stored
    array itself, no copy).  An object with no or several images → 1401."""
    images = image_list(himage, 1)
    if len(images) != 1:
        raise wrong_num(1, f"himage must hold exactly one image, it holds {len(images)}")
    return images[0]


@operator
def set_dict_tuple_at(dict_handle: Any, key: Any, index: Any, value: Any) -> None:
    """Set the elements at the 0-based positions ``index`` of the tuple stored under ``key``
    to ``value`` (one value for all positions, or one per position).  A position equal to
    the tuple's length appends; further positions → 1303.  Errors: 2894 missing key, 2460 the
    key holds an image or a dict; nothing changes on failure."""
    from .dict_ops import _dict, _key as dict_key, _as_stored_tuple, _is_object  # noqa: PLC0415

    d = _dict(dict_handle, 1)
    k = dict_key(key, 2)
    idx = to_tuple(index)
    vals = to_tuple(value)
    for i in idx:
        if not is_int(i):
            raise wrong_type(3, f"index must be integers, got {i!r}")
    if not idx:
        raise wrong_num(3, "index holds no position")
    if len(vals) not in (1, len(idx)):
        raise wrong_num(4, f"value needs 1 or {len(idx)} values (one per index), got "
                           f"{len(vals)}")
    for v in vals:
        if not (is_str(v) or is_number(v)):
            raise wrong_type(4, f"tuple elements must be numbers or strings, got {v!r}")
    if k not in d:
        raise HOperatorError(H_ERR_DICT_KEY, f"Dict does not contain the requested key {k!r}")
    cur = d[k]
    if isinstance(cur, dict) or _is_object(cur):
        raise HOperatorError(H_ERR_WT_CTRL_EXPECTED,
                             f"key {k!r} holds an iconic object or a dict, not a tuple")
    t = list(to_tuple(cur))
    # validate every position against the growing tuple before changing anything
    n = len(t)
    for i in [int(i) for i in idx]:  # in call order: a position may append after another
        if i < 0 or i > n:
            raise wrong_value(3, f"index {i} is outside 0 … {n} (the tuple under {k!r} has "
                                 f"{len(t)} values)")
        if i == n:
            n += 1
    for j, i in enumerate(int(i) for i in idx):
        v = vals[0] if len(vals) == 1 else vals[j]
        v = str(v) if is_str(v) else py_value(v)
        if i == len(t):
            t.append(v)
        else:
            t[i] = v
    d[k] = _as_stored_tuple(t)

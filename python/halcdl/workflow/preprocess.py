"""HALCON's preprocessing procedures: create_dl_preprocess_param(_from_model),
preprocess_dl_samples, preprocess_dl_dataset, calculate_dl_segmentation_class_weights,
gen_dl_segmentation_weight_images.

Everything is vectorised numpy (separable resampling as two small matrix products per image).
The rules, and every decision where HALCON's documentation is silent, are in
docs/preprocessing.md.  Every bad argument raises HOperatorError with HALCON's number and
nothing is changed on failure: samples are processed into new arrays first and written back
only when the whole batch succeeded; preprocess_dl_dataset writes into a temporary folder that
is renamed into place at the end.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
from typing import Any, Callable

import numpy as np

from ..errors import (
    H_ERR_CNN_INVALID_INPUT_DATA,
    H_ERR_DL_FILE_WRITE,
    H_ERR_DL_INPUTS_MISSING,
    H_ERR_DL_INVALID_DATASET,
    H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM,
    H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
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

# segmentation class ids index lookup tables (label images are at most 16-bit in practice)
MAX_SEG_CLASS_ID = 65535
MAX_IMAGE_SIDE = 32768  # the model's bound (operators.dl_model.MAX_IMAGE_SIDE, docs/robustness.md)

__all__ = [
    "create_dl_preprocess_param",
    "create_dl_preprocess_param_from_model",
    "preprocess_dl_samples",
    "preprocess_dl_dataset",
    "calculate_dl_segmentation_class_weights",
    "gen_dl_segmentation_weight_images",
]

MODEL_TYPES = ("classification", "detection", "segmentation", "anomaly_detection")
NORMALIZATION_TYPES = ("none", "all_channels", "first_channel", "constant_values")
DOMAIN_HANDLINGS = ("full_domain", "crop_domain", "keep_domain")
GENERAL_KEYS = ("model_type", "image_width", "image_height", "image_num_channels",
                "image_range_min", "image_range_max", "normalization_type", "domain_handling")
SEGMENTATION_KEYS = ("ignore_class_ids", "set_background_id", "class_ids_background")
DETECTION_KEYS = ("instance_type", "ignore_direction", "class_ids_no_orientation")
NORMALIZATION_KEYS = ("mean_values_normalization", "deviation_values_normalization")
# 'augmentation' is written by HALCON 24 (it only changes the preprocessing of OCR models);
# 'down_scaling' is MIA's Down Scaling (halcdl's addition, docs/preprocessing.md)
EXTRA_KEYS = ("augmentation", "down_scaling")
GEN_PARAM_KEYS = DETECTION_KEYS + NORMALIZATION_KEYS + EXTRA_KEYS

# ImageNet statistics in 0…255 gray values: the defaults of 'constant_values'
DEFAULT_MEAN = (123.675, 116.28, 103.53)
DEFAULT_DEVIATION = (58.395, 57.12, 57.375)
# rgb1_to_gray's weights
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _gen_param_dict(gen_param: Any, pos: int) -> dict:
    """GenParam: a dict, [] / None (empty), or [names, values] (two lists)."""
    if gen_param is None:
        return {}
    if isinstance(gen_param, dict):
        for k in gen_param:
            if not is_str(k):
                raise wrong_type(pos, f"gen_param keys must be strings, got {k!r}")
        return dict(gen_param)
    if isinstance(gen_param, (list, tuple)):
        if len(gen_param) == 0:
            return {}
        if len(gen_param) == 2 and isinstance(gen_param[0], (list, tuple)):
            names, values = list(gen_param[0]), list(gen_param[1]) \
                if isinstance(gen_param[1], (list, tuple)) else [gen_param[1]]
            if len(names) != len(values):
                raise wrong_num(pos, f"gen_param: {len(names)} names but {len(values)} values")
            for k in names:
                if not is_str(k):
                    raise wrong_type(pos, f"gen_param names must be strings, got {k!r}")
            return {str(k): v for k, v in zip(names, values)}
    raise wrong_type(pos, f"gen_param must be a dict or [], got {type(gen_param).__name__}")


def _unsupported_name(name: Any, where: str) -> HOperatorError:
    return HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM,
                          f"Unsupported generic parameter {name!r} for {where}")


def _unsupported_value(name: str, value: Any, expected: str) -> HOperatorError:
    return HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                          f"Unsupported value {value!r} of generic parameter {name!r}: "
                          f"expected {expected}")


_NOT_SCALAR = object()  # what _scalar gives for a container: compares unequal to everything


def _scalar(v: Any) -> Any:
    """A one-element tuple → its value (HALCON stores scalars as 1-tuples); anything that is
    not one value (an array, a longer list, a dict) → _NOT_SCALAR, so that `x in choices`
    and `x == "true"` never compare elementwise (ValueError)."""
    if isinstance(v, (list, tuple)) and len(v) == 1:
        v = py_value(v[0])
    elif isinstance(v, np.ndarray) and v.size == 1 and v.ndim <= 1:
        v = v.reshape(-1)[0].item()
    else:
        v = py_value(v)
    if isinstance(v, (list, tuple, dict, set, np.ndarray)):
        return _NOT_SCALAR
    return v


def _int_list(v: Any) -> list | None:
    vals = to_tuple(v)
    if not all(is_int(x) for x in vals):
        return None
    return [int(x) for x in vals]


def _bool_value(v: Any) -> bool | None:
    v = _scalar(v)
    if v in ("true", 1, True):
        return True
    if v in ("false", 0, False):
        return False
    return None


# --------------------------------------------------------------------------------------------
# the parameter dict: one checker used by the creators and by preprocess_dl_samples
# --------------------------------------------------------------------------------------------
def _check_optional(name: str, value: Any, model_type: str, num_channels: int,
                    fail: Callable[[str, Any, str], HOperatorError]) -> Any:
    """The validated (normalised) value of optional key ``name``; raises ``fail(...)``."""
    if name == "instance_type":
        v = _scalar(value)
        if v not in ("rectangle1", "rectangle2"):
            raise fail(name, value, "'rectangle1' or 'rectangle2'")
        return v
    if name == "ignore_direction":
        b = _bool_value(value)
        if b is None:
            raise fail(name, value, "'true' / 'false' (or 1 / 0)")
        return value if not isinstance(value, (list, tuple)) else _scalar(value)
    if name == "class_ids_no_orientation":
        ids = _int_list(value)
        if ids is None or any(i < 0 for i in ids):
            raise fail(name, value, "a list of non-negative integer class ids")
        return ids
    if name in NORMALIZATION_KEYS:
        vals = to_tuple(value)
        if not vals or not all(is_number(x) and math.isfinite(float(x)) for x in vals) \
                or len(vals) not in (1, num_channels):
            raise fail(name, value, f"1 or {num_channels} finite numbers")
        if name == "deviation_values_normalization" and any(float(x) <= 0 for x in vals):
            raise fail(name, value, "numbers > 0")
        return [float(x) for x in vals]
    if name == "augmentation":
        if _bool_value(value) is None:
            raise fail(name, value, "'true' or 'false'")
        return _scalar(value)
    if name == "down_scaling":
        v = _scalar(value)
        if not is_number(v) or not (0.0 < float(v) <= 1.0):
            raise fail(name, value, "a number in (0, 1]")
        return float(v)
    raise AssertionError(name)


def _key_error(name: str, value: Any, expected: str) -> HOperatorError:
    return wrong_value(2, f"DLPreprocessParam key {name!r} is {value!r}, expected {expected}")


def _check_preprocess_param(param: Any, pos: int = 2) -> dict:
    """Validate a DLPreprocessParam dict (as written by create_dl_preprocess_param or read
    from HALCON's .hdict); returns a normalised copy.  Wrong type 1200+pos, bad content
    1300+pos naming the key."""
    if not isinstance(param, dict):
        raise wrong_type(pos, f"dlpreprocess_param must be a dict, got {type(param).__name__}")
    mt = _scalar(param.get("model_type"))
    if mt not in MODEL_TYPES:
        raise _key_error("model_type", param.get("model_type"), f"one of {MODEL_TYPES}")
    needed = GENERAL_KEYS + (SEGMENTATION_KEYS if mt == "segmentation" else ())
    for k in needed:
        if k not in param:
            raise wrong_value(pos, f"DLPreprocessParam needs the key {k!r}")
    known = set(GENERAL_KEYS + SEGMENTATION_KEYS + GEN_PARAM_KEYS)
    for k in param:
        if k not in known:
            raise wrong_value(pos, f"unknown key {k!r} in DLPreprocessParam")
    out: dict = {"model_type": mt}
    for k in ("image_width", "image_height", "image_num_channels"):
        v = _scalar(param[k])
        if not is_int(v) or not 1 <= int(v) <= MAX_IMAGE_SIDE:
            raise _key_error(k, param[k], f"an integer in 1..{MAX_IMAGE_SIDE}")
        out[k] = int(v)
    if out["image_num_channels"] not in (1, 3):
        raise _key_error("image_num_channels", param["image_num_channels"], "1 or 3")
    for k in ("image_range_min", "image_range_max"):
        v = _scalar(param[k])
        if not is_number(v) or not math.isfinite(to_float(v)) or abs(float(v)) > 1e30:
            raise _key_error(k, param[k], "a finite number (|v| <= 1e30)")
        out[k] = float(v)
    if out["image_range_min"] >= out["image_range_max"]:
        raise _key_error("image_range_max", param["image_range_max"],
                         f"a number > image_range_min ({out['image_range_min']:g})")
    nt = _scalar(param["normalization_type"])
    if nt not in NORMALIZATION_TYPES:
        raise _key_error("normalization_type", param["normalization_type"],
                         f"one of {NORMALIZATION_TYPES}")
    out["normalization_type"] = nt
    dh = _scalar(param["domain_handling"])
    allowed = DOMAIN_HANDLINGS if mt == "anomaly_detection" else DOMAIN_HANDLINGS[:2]
    if dh not in allowed:
        raise _key_error("domain_handling", param["domain_handling"], f"one of {allowed}")
    out["domain_handling"] = dh
    if mt == "segmentation":
        ign = _int_list(param["ignore_class_ids"])
        bg = _int_list(param["set_background_id"])
        cb = _int_list(param["class_ids_background"])
        if ign is None:
            raise _key_error("ignore_class_ids", param["ignore_class_ids"], "integers")
        if bg is None or len(bg) > 1:
            raise _key_error("set_background_id", param["set_background_id"],
                             "[] or one integer")
        if cb is None:
            raise _key_error("class_ids_background", param["class_ids_background"], "integers")
        if bool(bg) != bool(cb):
            raise wrong_value(pos, "set_background_id and class_ids_background must be given "
                                   "together")
        if set(bg) & set(cb):
            raise wrong_value(pos, "set_background_id and class_ids_background must be "
                                   "disjoint")
        if set(ign) & (set(bg) | set(cb)):
            raise wrong_value(pos, "ignore_class_ids must not be in set_background_id or "
                                   "class_ids_background")
        out.update(ignore_class_ids=ign, set_background_id=bg, class_ids_background=cb)
    for k in GEN_PARAM_KEYS:
        if k in param:
            if k in DETECTION_KEYS and mt != "detection":
                if to_tuple(param[k]):
                    raise wrong_value(pos, f"DLPreprocessParam key {k!r} is only used by "
                                           f"detection models (set it to [])")
                continue
            out[k] = _check_optional(k, param[k], mt, out["image_num_channels"], _key_error)
    if mt == "detection":
        out.setdefault("instance_type", "rectangle1")
    return out


# procedures mark their errors like operators (" in operator <name>")
_wrap = operator


@_wrap
def create_dl_preprocess_param(dl_model_type: Any, image_width: Any, image_height: Any,
                               image_num_channels: Any, image_range_min: Any,
                               image_range_max: Any, normalization_type: Any,
                               domain_handling: Any, ignore_class_ids: Any,
                               set_background_id: Any, class_ids_background: Any,
                               gen_param: Any) -> dict:
    """The DLPreprocessParam dict with HALCON's keys: model_type, image_width, image_height,
    image_num_channels, image_range_min / _max ([] → −127 / 128), normalization_type,
    domain_handling; for segmentation ignore_class_ids, set_background_id,
    class_ids_background; for detection instance_type (default 'rectangle1') and, for
    rectangle2, ignore_direction (default 0 = false); the GenParam keys copied in
    (instance_type, ignore_direction, class_ids_no_orientation, mean_values_normalization,
    deviation_values_normalization, augmentation, down_scaling).  Errors: 1201+n / 1301+n /
    1401+n for parameter n, 7911 unknown GenParam name, 7914 bad GenParam value."""
    def one(v: Any, pos: int, what: str) -> Any:
        vals = to_tuple(v)
        if len(vals) != 1:
            raise wrong_num(pos, f"{what} takes one value, got {len(vals)}")
        return vals[0]

    mt = one(dl_model_type, 1, "dl_model_type")
    if not is_str(mt):
        raise wrong_type(1, f"dl_model_type must be a string, got {mt!r}")
    if mt not in MODEL_TYPES:
        raise wrong_value(1, f"dl_model_type must be one of {MODEL_TYPES}, got {mt!r}")
    mt = str(mt)
    dims = []
    for pos, (v, what) in enumerate(((image_width, "image_width"),
                                     (image_height, "image_height"),
                                     (image_num_channels, "image_num_channels")), start=2):
        x = one(v, pos, what)
        if not is_int(x):
            raise wrong_type(pos, f"{what} must be an integer, got {x!r}")
        if int(x) < 1 or (what == "image_num_channels" and int(x) not in (1, 3)) or \
                int(x) > MAX_IMAGE_SIDE:
            raise wrong_value(pos, f"{what} must be {'1 or 3' if pos == 4 else '>= 1'} "
                                   f"(at most {MAX_IMAGE_SIDE}), got {x!r}")
        dims.append(int(x))
    rng = []
    for pos, v, default, what in ((5, image_range_min, -127.0, "image_range_min"),
                                  (6, image_range_max, 128.0, "image_range_max")):
        vals = to_tuple(v)
        if not vals:
            rng.append(default)
            continue
        x = one(v, pos, what)
        if not is_number(x):
            raise wrong_type(pos, f"{what} must be a number, got {x!r}")
        if not math.isfinite(to_float(x)) or abs(float(x)) > 1e30:
            raise wrong_value(pos, f"{what} must be finite (|v| <= 1e30), got {x!r}")
        rng.append(x)
    if float(rng[0]) >= float(rng[1]):
        raise wrong_value(6, f"image_range_max ({rng[1]}) must be > image_range_min ({rng[0]})")
    nt = one(normalization_type, 7, "normalization_type")
    if not is_str(nt):
        raise wrong_type(7, f"normalization_type must be a string, got {nt!r}")
    if nt not in NORMALIZATION_TYPES:
        raise wrong_value(7, f"normalization_type must be one of {NORMALIZATION_TYPES}, "
                             f"got {nt!r}")
    dh = one(domain_handling, 8, "domain_handling")
    if not is_str(dh):
        raise wrong_type(8, f"domain_handling must be a string, got {dh!r}")
    allowed = DOMAIN_HANDLINGS if mt == "anomaly_detection" else DOMAIN_HANDLINGS[:2]
    if dh not in allowed:
        raise wrong_value(8, f"domain_handling must be one of {allowed} for a "
                             f"{mt} model, got {dh!r}")
    lists = []
    for pos, v, what in ((9, ignore_class_ids, "ignore_class_ids"),
                         (10, set_background_id, "set_background_id"),
                         (11, class_ids_background, "class_ids_background")):
        vals = to_tuple(v)
        for x in vals:
            if not is_int(x):
                raise wrong_type(pos, f"{what} must be integer class ids, got {x!r}")
            if int(x) < 0:
                raise wrong_value(pos, f"{what} must be >= 0, got {x!r}")
        lists.append([int(x) for x in vals])
    ign, bg, cb = lists
    if len(bg) > 1:
        raise wrong_num(10, f"set_background_id takes at most one class id, got {bg}")
    if mt == "segmentation":
        if bool(bg) != bool(cb):
            raise wrong_value(11 if bg else 10, "set_background_id and class_ids_background "
                                                "must be given together")
        if set(bg) & set(cb):
            raise wrong_value(11, f"class_ids_background {cb} must not contain "
                                  f"set_background_id {bg}")
        if set(ign) & (set(bg) | set(cb)):
            raise wrong_value(9, f"ignore_class_ids {ign} must not be in set_background_id or "
                                 f"class_ids_background")
    gp = _gen_param_dict(gen_param, 12)
    checked = {}
    for k, v in gp.items():
        if k not in GEN_PARAM_KEYS:
            raise _unsupported_name(k, "create_dl_preprocess_param "
                                       f"(supported: {', '.join(GEN_PARAM_KEYS)})")
        if k in DETECTION_KEYS and mt != "detection":
            raise _unsupported_name(k, f"a {mt} model (detection models only)")
        checked[k] = _check_optional(k, v, mt, dims[2], _unsupported_value)
    param: dict = {"model_type": mt, "image_width": dims[0], "image_height": dims[1],
                   "image_num_channels": dims[2], "image_range_min": py_value(rng[0]),
                   "image_range_max": py_value(rng[1]), "normalization_type": str(nt),
                   "domain_handling": str(dh)}
    if mt == "segmentation":
        param.update(ignore_class_ids=ign, set_background_id=bg, class_ids_background=cb)
    param.update(checked)
    if mt == "detection":
        param.setdefault("instance_type", "rectangle1")
        if param["instance_type"] == "rectangle2":
            param.setdefault("ignore_direction", 0)  # HALCON's default: false (0)
    return param


@_wrap
def create_dl_preprocess_param_from_model(dlmodel_handle: Any, normalization_type: Any,
                                          domain_handling: Any, set_background_id: Any,
                                          class_ids_background: Any, gen_param: Any) -> dict:
    """create_dl_preprocess_param with type, image_width, image_height, image_num_channels,
    image_range_min, image_range_max (and, for segmentation, ignore_class_ids) read from
    the model.  Parameter n of the errors counts this procedure's parameters."""
    from ..operators.dl_model import check_model, _get_param

    m = check_model(dlmodel_handle, 1)
    with m.lock:
        check_model(m)
        p = m.params
        mt = p.get("type", "classification")
        ign = list(_get_param(m, "ignore_class_ids")) if m.is_segmentation else []
        args = (mt, p["image_width"], p["image_height"], p["image_num_channels"],
                p["image_range_min"], p["image_range_max"])
        if mt == "detection" and "instance_type" in p:
            gp = _gen_param_dict(gen_param, 6)
            gp.setdefault("instance_type", p["instance_type"])
            gen_param = gp
    pos_map = {7: 2, 8: 3, 10: 4, 11: 5, 12: 6}
    try:
        return create_dl_preprocess_param.__wrapped__(*args, normalization_type,
                                                      domain_handling, ign, set_background_id,
                                                      class_ids_background, gen_param)
    except HOperatorError as err:
        code = err.error_code
        n = code % 100
        if code // 100 in (12, 13, 14) and n in pos_map:
            raise HOperatorError(code - n + pos_map[n],
                                 err._text.replace(f"control parameter {n}:",
                                                   f"control parameter {pos_map[n]}:")) \
                from None
        raise


# --------------------------------------------------------------------------------------------
# resampling (separable weight matrices; vectorised)
# --------------------------------------------------------------------------------------------
def _resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights along one axis: area averaging (box) when shrinking, linear
    interpolation between pixel centres (edges clamped) when enlarging; identity when equal.
    This is HALCON's zoom_image_size 'constant' as halcdl implements it."""
    if n_in == n_out:
        return np.eye(n_out)
    s = n_in / n_out
    if n_out < n_in:  # shrinking: overlap of [j*s, (j+1)*s) with [k, k+1)
        lo = np.arange(n_out)[:, None] * s
        hi = lo + s
        k = np.arange(n_in)[None, :]
        w = np.clip(np.minimum(hi, k + 1) - np.maximum(lo, k), 0.0, None)
        return w / w.sum(axis=1, keepdims=True)
    x = (np.arange(n_out) + 0.5) * s - 0.5  # source coordinate of each output centre
    x = np.clip(x, 0.0, n_in - 1)
    k0 = np.floor(x).astype(np.int64)
    k1 = np.minimum(k0 + 1, n_in - 1)
    f = x - k0
    w = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(w, (rows, k0), 1.0 - f)
    np.add.at(w, (rows, k1), f)
    return w


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) float → (height, width, C) float64 by :func:`_resample_matrix` per axis."""
    a = np.asarray(image, dtype=np.float64)
    h, w = a.shape[:2]
    if (h, w) == (height, width):
        return a.copy()
    ry = _resample_matrix(h, height)
    rx = _resample_matrix(w, width)
    return np.einsum("yh,hwc,xw->yxc", ry, a, rx, optimize=True)


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel for nearest-neighbour zooming (pixel centres)."""
    return np.minimum(np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64),
                      n_in - 1)


def resize_nearest(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour zoom of a (H, W[, ...]) array; keeps its dtype (labels stay ids)."""
    h, w = a.shape[:2]
    if (h, w) == (height, width):
        return a.copy()
    return a[_nearest_index(h, height)[:, None], _nearest_index(w, width)[None, :]]


# --------------------------------------------------------------------------------------------
# one sample
# --------------------------------------------------------------------------------------------
# the gray-value range of the integer image types that preprocess_dl_samples scales, as
# HALCON does for 'byte' and 'uint2' images; other types (int*, float) are taken as they are
_SCALED_TYPES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def _sample_id(s: dict, i: int) -> str:
    iid = s.get("image_id")
    return f"sample {i}" + (f" (image_id {py_value(iid)!r})" if iid is not None else "")


def _bad(s: dict, i: int, text: str, code: int = H_ERR_CNN_INVALID_INPUT_DATA):
    return HOperatorError(code, f"{_sample_id(s, i)}: {text}")


def _array(v: Any, s: dict, i: int, key: str) -> np.ndarray:
    """np.asarray(v), or the sample's error (7736) for a value numpy cannot make an array of
    (ragged or more than 64 levels deep nested lists, foreign objects)."""
    try:
        return np.asarray(v)
    except (ValueError, TypeError, OverflowError, RecursionError) as err:
        raise _bad(s, i, f"'{key}' is not an array ({type(err).__name__}: {str(err)[:120]})") \
            from None


def _as_image(s: dict, i: int) -> np.ndarray:
    if "image" not in s:
        raise _bad(s, i, "has no key 'image'", H_ERR_DL_INPUTS_MISSING)
    img = s["image"]
    if isinstance(img, (str, bytes)) or img is None:
        raise _bad(s, i, "'image' is not an image array")
    a = _array(img, s, i, "image")
    if a.dtype.kind not in "uif" or a.size == 0:
        raise _bad(s, i, f"'image' must be a numeric image array, got dtype {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] < 1:
        raise _bad(s, i, f"'image' must have shape (H, W) or (H, W, C), got {a.shape}")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise _bad(s, i, "'image' holds NaN or Inf values")
    return a


def _domain_rect(s: dict, i: int, h: int, w: int) -> tuple | None:
    """The sample's optional 'domain' as (row1, col1, row2, col2), inclusive pixel indices."""
    if "domain" not in s or s["domain"] is None:
        return None
    d = s["domain"]
    arr = _array(d, s, i, "domain")
    if arr.ndim == 2:
        if arr.shape != (h, w):
            raise _bad(s, i, f"'domain' mask must have the image's size ({h}, {w}), got "
                             f"{arr.shape}")
        rows = np.flatnonzero(arr.any(axis=1))
        cols = np.flatnonzero(arr.any(axis=0))
        if rows.size == 0:
            raise _bad(s, i, "'domain' is empty")
        return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])
    vals = to_tuple(d)
    if len(vals) != 4 or not all(is_int(v) for v in vals):
        raise _bad(s, i, "'domain' must be [row1, col1, row2, col2] (integers) or a (H, W) "
                         "mask")
    r1, c1, r2, c2 = (int(v) for v in vals)
    r1, c1, r2, c2 = max(r1, 0), max(c1, 0), min(r2, h - 1), min(c2, w - 1)
    if r1 > r2 or c1 > c2:
        raise _bad(s, i, f"'domain' {vals} does not intersect the image")
    return r1, c1, r2, c2


def _float_list(s: dict, i: int, key: str) -> np.ndarray:
    vals = to_tuple(s[key])
    if not all(is_number(v) and math.isfinite(float(v)) for v in vals):
        raise _bad(s, i, f"'{key}' must hold finite numbers")
    return np.asarray([float(v) for v in vals], dtype=np.float64)


def _boxes_rect1(s: dict, i: int, crop, h_raw: int, w_raw: int, fy: float,
                 fx: float, new: dict) -> None:
    keys = ("bbox_row1", "bbox_col1", "bbox_row2", "bbox_col2")
    if not all(k in s for k in keys) or "bbox_label_id" not in s:
        raise _bad(s, i, "rectangle1 boxes need bbox_row1, bbox_col1, bbox_row2, bbox_col2 and "
                         "bbox_label_id", H_ERR_DL_INPUTS_MISSING)
    r1, c1, r2, c2 = (_float_list(s, i, k) for k in keys)
    lab = to_tuple(s["bbox_label_id"])
    if not (len(r1) == len(c1) == len(r2) == len(c2) == len(lab)):
        raise _bad(s, i, "the bbox_* lists and bbox_label_id must have the same length")
    if len(r1) and (np.any(r1 >= r2) or np.any(c1 >= c2)):
        raise _bad(s, i, "a box has zero area (bbox_row1 >= bbox_row2 or bbox_col1 >= "
                         "bbox_col2)")
    lab = np.asarray(lab, dtype=object)
    if crop is not None:  # clip to the domain rectangle, move to its origin
        dr1, dc1, dr2, dc2 = crop
        r1, c1 = np.maximum(r1, dr1 - 0.5) - dr1, np.maximum(c1, dc1 - 0.5) - dc1
        r2, c2 = np.minimum(r2, dr2 + 0.5) - dr1, np.minimum(c2, dc2 + 0.5) - dc1
    # XLD coordinates: scale about the pixel corner (-0.5, -0.5)
    r1, r2 = (r1 + 0.5) * fy - 0.5, (r2 + 0.5) * fy - 0.5
    c1, c2 = (c1 + 0.5) * fx - 0.5, (c2 + 0.5) * fx - 0.5
    keep = (r1 < r2) & (c1 < c2)
    for k, v in zip(keys, (r1, c1, r2, c2)):
        new[k] = v[keep].tolist()
    new["bbox_label_id"] = [py_value(x) for x in lab[keep]]


def _boxes_rect2(s: dict, i: int, crop, fy: float, fx: float, new: dict) -> None:
    keys = ("bbox_row", "bbox_col", "bbox_phi", "bbox_length1", "bbox_length2")
    if not all(k in s for k in keys) or "bbox_label_id" not in s:
        raise _bad(s, i, "rectangle2 boxes need bbox_row, bbox_col, bbox_phi, bbox_length1, "
                         "bbox_length2 and bbox_label_id", H_ERR_DL_INPUTS_MISSING)
    row, col, phi, l1, l2 = (_float_list(s, i, k) for k in keys)
    lab = to_tuple(s["bbox_label_id"])
    if not (len(row) == len(col) == len(phi) == len(l1) == len(l2) == len(lab)):
        raise _bad(s, i, "the bbox_* lists and bbox_label_id must have the same length")
    if np.any(l1 <= 0) or np.any(l2 <= 0):
        raise _bad(s, i, "a box has zero area (bbox_length1 or bbox_length2 <= 0)")
    lab = np.asarray(lab, dtype=object)
    keep = np.ones(len(row), dtype=bool)
    if crop is not None:
        dr1, dc1, dr2, dc2 = crop
        row, col = row - dr1, col - dc1
        # boxes whose centre leaves the domain rectangle are dropped
        keep = (row >= -0.5) & (row <= dr2 - dr1 + 0.5) & (col >= -0.5) & \
               (col <= dc2 - dc1 + 0.5)
    row, col = (row + 0.5) * fy - 0.5, (col + 0.5) * fx - 0.5
    if fx != fy:
        # the scaled rectangle is a parallelogram: the new box is the smallest rectangle whose
        # length1 axis is the image of the old length1 axis and that encloses it
        sn, cs = np.sin(phi), np.cos(phi)
        ar, ac = fy * sn, fx * cs  # the scaled length1 direction (row up, col right)
        n = np.hypot(ar, ac)
        new_l1 = l1 * n + np.abs(l2 * sn * cs * (fy * fy - fx * fx)) / n
        new_l2 = l2 * fx * fy / n
        phi = np.arctan2(ar, ac)
        l1, l2 = new_l1, new_l2
    else:
        l1, l2 = l1 * fx, l2 * fx
    for k, v in zip(keys, (row, col, phi, l1, l2)):
        new[k] = v[keep].tolist()
    new["bbox_label_id"] = [py_value(x) for x in lab[keep]]


def _label_image(s: dict, i: int, key: str, h_raw: int, w_raw: int, crop, steps: list,
                 integer: bool) -> np.ndarray:
    a = np.asarray(s[key])
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim != 2 or a.shape != (h_raw, w_raw):
        raise _bad(s, i, f"'{key}' must be a ({h_raw}, {w_raw}) array (the raw image's size), "
                         f"got shape {a.shape}")
    if a.dtype.kind not in "uifb":
        raise _bad(s, i, f"'{key}' must be numeric, got dtype {a.dtype}")
    if integer:
        if a.dtype.kind == "f":
            if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
                raise _bad(s, i, f"'{key}' must hold integer class ids")
            a = a.astype(np.int32)
        elif a.dtype.kind == "b":
            a = a.astype(np.uint8)
    else:
        a = a.astype(np.float32)
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise _bad(s, i, f"'{key}' must hold finite weights >= 0")
    if crop is not None:
        r1, c1, r2, c2 = crop
        a = a[r1:r2 + 1, c1:c2 + 1]
    for (hh, ww) in steps:
        a = resize_nearest(a, hh, ww)
    return np.ascontiguousarray(a)


def _preprocess_one(s: dict, i: int, p: dict) -> tuple[dict, list]:
    """(new entries, keys to remove) for sample ``s``; raises without touching it."""
    a = _as_image(s, i)
    h_raw, w_raw, c_in = a.shape
    W, H, C = p["image_width"], p["image_height"], p["image_num_channels"]
    if c_in not in (1, 3):
        raise _bad(s, i, f"the image has {c_in} channels; preprocessing converts between 1 "
                         f"and 3 channels only (the model takes {C})")
    crop = None
    if p["domain_handling"] == "crop_domain":
        crop = _domain_rect(s, i, h_raw, w_raw)
    elif p["domain_handling"] == "keep_domain" and s.get("domain") is not None:
        _domain_rect(s, i, h_raw, w_raw)  # validate
    src = a
    if crop is not None:
        r1, c1, r2, c2 = crop
        src = a[r1:r2 + 1, c1:c2 + 1]
    h0, w0 = src.shape[:2]
    # MIA's down_scaling: an intermediate size, then the model's size (identity when equal)
    steps = []
    f = p.get("down_scaling", 1.0)
    if f < 1.0:
        steps.append((max(1, int(round(h0 * f))), max(1, int(round(w0 * f)))))
    steps.append((H, W))
    img = src.astype(np.float64)
    for (hh, ww) in steps:
        img = resize_image(img, hh, ww)
    # gray values
    lo, hi = p["image_range_min"], p["image_range_max"]
    nt = p["normalization_type"]
    if nt == "none":
        top = _SCALED_TYPES.get(a.dtype)
        if top is not None:
            img = img * ((hi - lo) / top) + lo
    elif nt == "all_channels":  # every channel from its own min…max to the range
        mn, mx = img.min(axis=(0, 1)), img.max(axis=(0, 1))
        scale = np.where(mx == mn, 1.0, (hi - lo) / np.where(mx == mn, 1.0, mx - mn))
        img = img * scale + (lo - scale * mn)
    elif nt == "first_channel":  # HALCON: the first channel's min…max scales the whole image
        mn, mx = float(img[:, :, 0].min()), float(img[:, :, 0].max())
        scale = 1.0 if mx == mn else (hi - lo) / (mx - mn)
        img = img * scale + (lo - scale * mn)
    else:  # constant_values
        if "mean_values_normalization" not in p and \
                "deviation_values_normalization" not in p and c_in == 1:
            img = np.repeat(img, 3, axis=2)  # HALCON: the default values need 3 channels
            c_in = 3
        mean = np.asarray(p.get("mean_values_normalization", DEFAULT_MEAN), dtype=np.float64)
        dev = np.asarray(p.get("deviation_values_normalization", DEFAULT_DEVIATION),
                         dtype=np.float64)
        if mean.size not in (1, c_in) or dev.size not in (1, c_in):
            raise _bad(s, i, f"mean/deviation_values_normalization need 1 or {c_in} values "
                             f"for this {c_in}-channel image")
        img = (img - mean.reshape(1, 1, -1)) / dev.reshape(1, 1, -1)
    # channels: MIA's Mono / Color (HALCON's rgb1_to_gray / compose3)
    if c_in == 3 and C == 1:
        img = img @ GRAY_WEIGHTS[:, None]
    elif c_in == 1 and C == 3:
        img = np.repeat(img, 3, axis=2)
    new: dict = {"image": np.ascontiguousarray(img, dtype=np.float32)}
    remove: list = []
    # the total scale factors (the steps compose exactly for the XLD rule)
    fy, fx = H / h0, W / w0
    mt = p["model_type"]
    if mt == "detection" or any(k in s for k in ("bbox_row1", "bbox_phi")):
        if "bbox_row1" in s:
            _boxes_rect1(s, i, crop, h_raw, w_raw, fy, fx, new)
        elif "bbox_phi" in s or "bbox_row" in s:
            _boxes_rect2(s, i, crop, fy, fx, new)
    if "segmentation_image" in s:
        seg = _label_image(s, i, "segmentation_image", h_raw, w_raw, crop, steps, True)
        bg, cb = p.get("set_background_id", []), p.get("class_ids_background", [])
        if bg and cb:
            seg = np.where(np.isin(seg, cb), np.asarray(bg[0], dtype=seg.dtype), seg)
        new["segmentation_image"] = seg
    if "weight_image" in s and s["weight_image"] is not None:
        new["weight_image"] = _label_image(s, i, "weight_image", h_raw, w_raw, crop, steps,
                                           False)
    if "domain" in s:
        if p["domain_handling"] == "keep_domain" and s["domain"] is not None:
            dom = s["domain"]
            arr = np.asarray(dom)
            if arr.ndim != 2:
                r1, c1, r2, c2 = _domain_rect(s, i, h_raw, w_raw)
                arr = np.zeros((h_raw, w_raw), dtype=bool)
                arr[r1:r2 + 1, c1:c2 + 1] = True
            d = arr.astype(bool)
            for (hh, ww) in steps:
                d = resize_nearest(d, hh, ww)
            new["domain"] = d
        else:
            remove.append("domain")
    return new, remove


def _sample_batch(batch: Any, pos: int) -> list:
    if isinstance(batch, dict):
        return [batch]
    if isinstance(batch, (list, tuple)):
        for i, s in enumerate(batch):
            if not isinstance(s, dict):
                raise wrong_type(pos, f"dlsample_batch[{i}] is not a dict (DLSample)")
        return list(batch)
    raise wrong_type(pos, f"dlsample_batch must be a dict or a list of dicts, got "
                          f"{type(batch).__name__}")


@_wrap
def preprocess_dl_samples(dlsample_batch: Any, dlpreprocess_param: Any) -> None:
    """Preprocess the samples in place for a model described by ``dlpreprocess_param``:
    crop to the domain (crop_domain), resize to image_width × image_height (area averaging
    when shrinking, linear when enlarging), scale gray values (normalization_type), convert
    1 ↔ 3 channels, store ``image`` as float32 (H, W, C); resize segmentation_image and
    weight_image with nearest neighbour (label ids stay integers), move and scale the boxes.
    All samples are checked and computed before any is changed."""
    samples = _sample_batch(dlsample_batch, 1)
    p = _check_preprocess_param(dlpreprocess_param, 2)
    results = [_preprocess_one(s, i, p) for i, s in enumerate(samples)]
    for s, (new, remove) in zip(samples, results):
        s.update(new)
        for k in remove:
            s.pop(k, None)


# --------------------------------------------------------------------------------------------
# segmentation class weights and weight images
# --------------------------------------------------------------------------------------------
def _check_dataset(dldataset: Any, pos: int = 1) -> dict:
    if not isinstance(dldataset, dict):
        raise wrong_type(pos, f"dldataset must be a dict (DLDataset), got "
                              f"{type(dldataset).__name__}")
    if not isinstance(dldataset.get("samples"), list):
        raise HOperatorError(H_ERR_DL_INVALID_DATASET, "the dataset has no list 'samples'")
    return dldataset


def _read_sample_files(dldataset: dict, indices: list) -> list:
    """The samples as DLSample dicts: preprocessed files when the dataset has 'dlsample_dir'
    (read_dl_samples), else generated from the raw files."""
    from . import dataset as _dataset  # workflow/dataset.py (the datasets helper's module)
    return _dataset.read_dl_samples(dldataset, indices)


def _class_ids(dldataset: dict) -> list:
    ids = _int_list(dldataset.get("class_ids", []))
    if not ids or not all(0 <= c <= MAX_SEG_CLASS_ID for c in ids):
        raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                             f"the dataset needs 'class_ids' (a list of integers in "
                             f"0..{MAX_SEG_CLASS_ID})")
    return ids


def class_weights_from_counts(counts: np.ndarray, max_weight: float) -> np.ndarray:
    """HALCON's rule: with n_c pixels of class c out of N counted pixels, f_c = n_c / N and
    w_c = 1 / (f_c + 0.0001) for classes that occur, divided by the smallest such weight (the
    most frequent class gets 1.0), then clipped at max_weight; classes without pixels get 0."""
    counts = np.asarray(counts, dtype=np.float64)
    w = np.zeros(counts.shape, dtype=np.float64)
    valid = counts > 0
    if not valid.any():
        return w
    freq = counts / counts.sum()
    w[valid] = 1.0 / (freq[valid] + 0.0001)
    w[valid] /= w[valid].min()
    return np.minimum(w, max_weight)


@_wrap
def calculate_dl_segmentation_class_weights(dldataset: Any, max_weight: Any,
                                            ignore_class_ids: Any) -> list[float]:
    """(A HALCON procedure, not a binding operator: it has no ``_s`` twin.)
    Class weights (one per dataset class id, in the order of 'class_ids') from the pixel
    frequencies of the 'train' split's segmentation images (7925 when there is none):
    inverse frequencies normalised to 1.0 for the most frequent class and clipped at
    max_weight (:func:`class_weights_from_counts`); ignore_class_ids and classes without
    pixels get 0."""
    ds = _check_dataset(dldataset, 1)
    vals = to_tuple(max_weight)
    if len(vals) != 1:
        raise wrong_num(2, f"max_weight takes one value, got {len(vals)}")
    if not is_number(vals[0]):
        raise wrong_type(2, f"max_weight must be a number, got {vals[0]!r}")
    mw = to_float(vals[0])
    if not math.isfinite(mw) or mw <= 0:
        raise wrong_value(2, f"max_weight must be a finite number > 0, got {vals[0]!r}")
    ign = _int_list(ignore_class_ids)
    if ign is None:
        raise wrong_type(3, "ignore_class_ids must be integers")
    if not all(0 <= c <= MAX_SEG_CLASS_ID for c in ign):
        raise wrong_value(3, f"ignore_class_ids must be in 0..{MAX_SEG_CLASS_ID}")
    ids = _class_ids(ds)
    samples = ds["samples"]
    idx = [j for j, s in enumerate(samples) if isinstance(s, dict) and _scalar(s.get("split")) == "train"]
    if not idx:
        raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                             "the dataset has no samples with split 'train' (split it first: "
                             "the weights come from the training split)")
    counted = [c for c in ids if c not in ign]
    lut_max = max(ids + ign) + 1
    counts = np.zeros(lut_max, dtype=np.int64)
    for start in range(0, len(idx), 16):
        for j, s in zip(idx[start:start + 16], _read_sample_files(ds, idx[start:start + 16])):
            if "segmentation_image" not in s:
                raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                                     f"sample {j} has no segmentation_image")
            seg = np.asarray(s["segmentation_image"]).astype(np.int64).ravel()
            if seg.size and (seg.min() < 0 or seg.max() >= lut_max):
                bad = int(seg[(seg < 0) | (seg >= lut_max)][0])
                raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                                     f"sample {j}: segmentation_image holds id {bad}, not a "
                                     f"class id of the dataset")
            counts += np.bincount(seg, minlength=lut_max)
    w = class_weights_from_counts(counts[counted], mw) if counted else np.zeros(0)
    by_id = dict(zip(counted, w.tolist()))
    return [float(by_id.get(c, 0.0)) for c in ids]


def weight_image(segmentation_image: np.ndarray, class_ids: list, class_weights: list,
                 ignore_class_ids: list = ()) -> np.ndarray:
    """float32 (H, W): the weight of each pixel's class (0 for ignore classes)."""
    seg = np.asarray(segmentation_image).astype(np.int64)
    lut_size = max(list(class_ids) + list(ignore_class_ids)) + 1
    lut = np.full(lut_size, np.nan, dtype=np.float64)
    lut[np.asarray(class_ids, dtype=np.int64)] = np.asarray(class_weights, dtype=np.float64)
    if len(ignore_class_ids):
        lut[np.asarray(ignore_class_ids, dtype=np.int64)] = 0.0
    if seg.size and (seg.min() < 0 or seg.max() >= lut_size):
        raise ValueError("unknown class id")
    out = lut[seg]
    if np.isnan(out).any():
        raise ValueError("unknown class id")
    return out.astype(np.float32)


def _write_hdict(obj: Any, path: str) -> None:
    """The one place that writes a .hdict file (halcdl.io.hdict, HALCON's binary format)."""
    from ..io import hdict as _hdict
    _hdict.write_hdict(obj, path)


def _read_hdict(path: str) -> Any:
    from ..io import hdict as _hdict
    return _hdict.read_hdict(path)


@_wrap
def gen_dl_segmentation_weight_images(dldataset: Any, dlpreprocess_param: Any,
                                      class_weights: Any, gen_param: Any) -> None:
    """Add a weight_image to every preprocessed sample file of the dataset (needs
    'dlsample_dir', i.e. a dataset written by preprocess_dl_dataset): each pixel gets the
    weight of its class (class_weights in the order of the dataset's class_ids), 0 for the
    preprocess param's ignore_class_ids.  All files are computed first, then rewritten."""
    ds = _check_dataset(dldataset, 1)
    p = _check_preprocess_param(dlpreprocess_param, 2)
    ids = _class_ids(ds)
    w = to_tuple(class_weights)
    if len(w) != len(ids):
        raise wrong_num(3, f"class_weights needs {len(ids)} values (one per class id), got "
                           f"{len(w)}")
    if not all(is_number(x) and math.isfinite(to_float(x)) and float(x) >= 0 for x in w):
        raise wrong_value(3, "class_weights must be finite numbers >= 0")
    gp = _gen_param_dict(gen_param, 4)
    for k in gp:
        raise _unsupported_name(k, "gen_dl_segmentation_weight_images")
    ign = p.get("ignore_class_ids", [])
    base = ds.get("dlsample_dir")
    if not is_str(base):
        raise HOperatorError(H_ERR_DL_INVALID_DATASET, "the dataset has no 'dlsample_dir': "
                                                       "run preprocess_dl_dataset first")
    work = []
    for j, s in enumerate(ds["samples"]):
        name = s.get("dlsample_file_name") if isinstance(s, dict) else None
        if not is_str(name):
            raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                                 f"sample {j} has no 'dlsample_file_name'")
        path = os.path.join(str(base), str(name))
        sample = _read_hdict(path)
        if "segmentation_image" not in sample:
            raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                                 f"sample {j} ({path}) has no segmentation_image")
        try:
            sample["weight_image"] = weight_image(sample["segmentation_image"], ids, w, ign)
        except ValueError:
            raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                                 f"sample {j} ({path}): segmentation_image holds an id that "
                                 f"is neither a class id nor an ignore id") from None
        work.append((path, sample))
    for path, sample in work:
        _atomic_write(sample, path)


def _atomic_write(obj: Any, path: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".hdict", dir=os.path.dirname(path))
    os.close(fd)
    try:
        _write_hdict(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# --------------------------------------------------------------------------------------------
# preprocess_dl_dataset
# --------------------------------------------------------------------------------------------
def _gen_samples(dldataset: dict, indices: list, model_type: str) -> list:
    """Raw (not preprocessed) samples, from halcdl.workflow.dataset.gen_dl_samples with the
    label keys of the model type (as HALCON's preprocess_dl_dataset)."""
    from . import dataset as _dataset
    restrict = model_type if model_type in ("classification", "detection",
                                            "segmentation") else "off"
    return _dataset.gen_dl_samples(dldataset, indices, restrict, {})


_DATASET_GEN_PARAMS = ("overwrite_files", "show_progress", "max_weight", "class_weights")


@_wrap
def preprocess_dl_dataset(dldataset: Any, data_directory: Any, dlpreprocess_param: Any,
                          gen_param: Any) -> str:
    """Preprocess every sample of the dataset and write it to
    ``<data_directory>/samples/<image_id>_dlsample.hdict``; set the dataset's 'dlsample_dir'
    (``<data_directory>/samples``), each sample's 'dlsample_file_name' (relative to it) and
    'preprocess_param', write the dataset to ``<data_directory>/dl_dataset.hdict`` and return
    that file name.  Segmentation samples always get a weight_image (HALCON's behaviour):
    from GenParam 'class_weights' (one per class id) or computed by
    calculate_dl_segmentation_class_weights with 'max_weight' (default 1000).  GenParam
    'overwrite_files' ('false' default: an existing data_directory → 7914; 'true': replaced),
    'show_progress' ('true' default: a tqdm bar on stderr).  Everything is written into a
    temporary folder beside data_directory and renamed into place at the end, so a failure
    leaves no half-written directory and the dataset dict unchanged."""
    ds = _check_dataset(dldataset, 1)
    if isinstance(data_directory, os.PathLike):
        data_directory = os.fspath(data_directory)
    dvals = to_tuple(data_directory)
    if len(dvals) != 1:
        raise wrong_num(2, f"data_directory takes one folder name, got {len(dvals)}")
    if not is_str(dvals[0]) or not str(dvals[0]):
        raise wrong_type(2, f"data_directory must be a folder name, got {dvals[0]!r}")
    out_dir = os.path.abspath(str(dvals[0]))
    p = _check_preprocess_param(dlpreprocess_param, 3)
    gp = _gen_param_dict(gen_param, 4)
    for k in gp:
        if k not in _DATASET_GEN_PARAMS:
            raise _unsupported_name(k, "preprocess_dl_dataset "
                                       f"(supported: {', '.join(_DATASET_GEN_PARAMS)})")
    overwrite = _bool_value(gp.get("overwrite_files", "false"))
    if overwrite is None:
        raise _unsupported_value("overwrite_files", gp["overwrite_files"], "'true' or 'false'")
    show = _bool_value(gp.get("show_progress", "true"))
    if show is None:
        raise _unsupported_value("show_progress", gp["show_progress"], "'true' or 'false'")
    seg = p["model_type"] == "segmentation"
    for k in ("class_weights", "max_weight"):
        if k in gp and not seg:
            raise _unsupported_name(k, f"a {p['model_type']} model (segmentation only)")
    ids = _int_list(ds.get("class_ids", [])) or []
    if seg:
        ids = _class_ids(ds)
        bg = p.get("set_background_id", [])
        if bg and bg[0] not in ids:
            raise wrong_value(3, f"set_background_id {bg[0]} is not one of the dataset's "
                                 f"class_ids {ids}")
    class_weights = None
    if "class_weights" in gp:
        cw = to_tuple(gp["class_weights"])
        if len(cw) != len(ids) or not all(is_number(x) and math.isfinite(float(x)) and
                                          float(x) >= 0 for x in cw):
            raise _unsupported_value("class_weights", gp["class_weights"],
                                     f"{len(ids)} finite numbers >= 0 (one per class id)")
        class_weights = [float(x) for x in cw]
    mw = _scalar(gp.get("max_weight", 1000))
    if not is_number(mw) or not math.isfinite(float(mw)) or float(mw) <= 0:
        raise _unsupported_value("max_weight", gp.get("max_weight"), "a number > 0")
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise HOperatorError(H_ERR_DL_FILE_WRITE, f"data_directory {out_dir!r} is a file")
        if not overwrite:
            raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                                 f"The folder {out_dir!r} already exists: give another folder "
                                 f"or pass gen_param {{'overwrite_files': 'true'}}")
    samples = ds["samples"]
    for j, smp in enumerate(samples):
        if not isinstance(smp, dict):
            raise HOperatorError(H_ERR_DL_INVALID_DATASET, f"sample {j} is not a dict")
    if seg and class_weights is None:
        class_weights = calculate_dl_segmentation_class_weights.__wrapped__(
            {k: v for k, v in ds.items() if k != "dlsample_dir"}, float(mw),
            p.get("ignore_class_ids", []))
    sample_dir = os.path.join(out_dir, "samples")
    parent = os.path.dirname(out_dir)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp_" + os.path.basename(out_dir) + "_", dir=parent)
    except OSError as err:
        raise HOperatorError(H_ERR_DL_FILE_WRITE,
                             f"cannot create data_directory {out_dir!r}: {err}") from None
    try:
        os.makedirs(os.path.join(tmp, "samples"))
        names = []
        progress = _progress(len(samples), show)
        for start in range(0, len(samples), 8):
            idx = list(range(start, min(start + 8, len(samples))))
            batch = _gen_samples(ds, idx, p["model_type"])
            preprocess_dl_samples.__wrapped__(batch, p)
            for j, smp in zip(idx, batch):
                if class_weights is not None:
                    if "segmentation_image" not in smp:
                        raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                                             f"sample {j} has no segmentation_image")
                    try:
                        smp["weight_image"] = weight_image(smp["segmentation_image"], ids,
                                                           class_weights,
                                                           p.get("ignore_class_ids", []))
                    except ValueError:
                        raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                                             f"sample {j}: segmentation_image holds an id "
                                             f"that is not a class id") from None
                name = f"{py_value(samples[j].get('image_id', j))}_dlsample.hdict"
                _write_hdict(smp, os.path.join(tmp, "samples", name))
                names.append(name)
            progress(len(idx))
        new_ds = copy.deepcopy({k: v for k, v in ds.items() if k != "samples"})
        new_samples = [dict(s) for s in samples]
        for s, name in zip(new_samples, names):
            s["dlsample_file_name"] = name
        new_ds["samples"] = new_samples
        new_ds["dlsample_dir"] = sample_dir
        new_ds["preprocess_param"] = copy.deepcopy(p)
        _write_hdict(new_ds, os.path.join(tmp, "dl_dataset.hdict"))
        # swap in: the old directory moves away first and is deleted only after the rename
        old = None
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix=".old_" + os.path.basename(out_dir) + "_", dir=parent)
            os.rmdir(old)
            os.rename(out_dir, old)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if old is not None:
                os.rename(old, out_dir)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise HOperatorError(H_ERR_DL_FILE_WRITE,
                             f"cannot write the preprocessed dataset to {out_dir!r}: {err}") \
            from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for s, name in zip(samples, names):
        s["dlsample_file_name"] = name
    ds["dlsample_dir"] = sample_dir
    ds["preprocess_param"] = copy.deepcopy(p)
    return os.path.join(out_dir, "dl_dataset.hdict")


def _progress(total: int, show: bool):
    if not show:
        return lambda n: None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return lambda n: None
    bar = tqdm(total=total, desc="preprocess_dl_dataset", unit="sample")

    def step(n: int) -> None:
        bar.update(n)
        if bar.n >= total:
            bar.close()
    return step

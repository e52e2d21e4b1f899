"""augment_dl_samples: HALCON's data augmentation procedure, on DLSample dicts, in place.

See docs/augmentation.md for the behaviour, the defaults, the pixel convention and every
decision where HALCON's documentation is silent.  In short:

* each sample is augmented with probability ``augmentation_percentage`` / 100; an augmented
  sample gets ONE method, drawn uniformly from the enabled ones (as HALCON's procedure does);
* geometric methods ('rotate', 'mirror') move the image, 'segmentation_image',
  'weight_image', 'anomaly_ground_truth' and the boxes together, pixel-exactly;
* 'rotate_range', 'crop_percentage', 'crop_pixel' and 'remove_pixel' are for samples without
  geometric annotations (classification), as in HALCON;
* randomness: every sample has its own numpy Generator, seeded from
  (seed, epoch, image_id), so a sample's augmentation does not depend on the batch it is in.

Everything is validated before any sample is touched; on an error no sample is changed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import HOperatorError
from ..operators import system as _system
from ..operators._tuple import is_int, is_number, is_str, operator, py_value, to_float, to_tuple

__all__ = ["augment_dl_samples"]

H_ERR_GENPARAM = 7911  # unsupported generic parameter
H_ERR_GENVALUE = 7914  # unsupported generic value

# gen_param keys: HALCON's, then halcdl's own extensions (documented in docs/augmentation.md)
_HALCON_KEYS = (
    "augmentation_percentage", "rotate", "rotate_range", "mirror", "brightness_variation",
    "brightness_variation_spot", "crop_percentage", "crop_pixel", "contrast_variation",
    "saturation_variation", "remove_pixel", "ignore_direction", "class_ids_no_orientation",
)
_HALCDL_KEYS = ("seed", "epoch", "image_range_min", "image_range_max")
_KEYS = _HALCON_KEYS + _HALCDL_KEYS

# methods only for samples without geometric annotations (HALCON: classification only)
_CLASSIFICATION_ONLY = ("rotate_range", "crop_percentage", "crop_pixel", "remove_pixel")
# pixel-aligned annotation images moved with the image
_LABEL_IMAGES = ("segmentation_image", "weight_image", "anomaly_ground_truth")
_RECT1 = ("bbox_row1", "bbox_col1", "bbox_row2", "bbox_col2")
_RECT2 = ("bbox_row", "bbox_col", "bbox_phi", "bbox_length1", "bbox_length2")

# calls without an explicit 'epoch' since the last set_system('seed_rand', ...)
_call_state = {"generation": None, "count": 0}


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
def _err(code: int, text: str) -> HOperatorError:
    err = HOperatorError(code, f"{text} in augment_dl_samples")
    err.operator = "augment_dl_samples"
    return err


def _bad_value(key: str, value: Any, expected: str) -> HOperatorError:
    return _err(H_ERR_GENVALUE, f"Unsupported generic value {value!r} for '{key}': {expected}")


def _bad_sample(index: int, text: str) -> HOperatorError:
    return _err(1301, f"Wrong value of control parameter 1: dlsample_batch[{index}]: {text}")


# --------------------------------------------------------------------------------------------
# gen_param
# --------------------------------------------------------------------------------------------
def _one(key: str, value: Any) -> Any:
    """The single value of a gen_param entry (a scalar or a one-element tuple)."""
    if isinstance(value, np.ndarray) and value.ndim > 1:
        raise _bad_value(key, value, "a single value")
    vals = to_tuple(value)
    if len(vals) != 1:
        raise _bad_value(key, value, "a single value")
    return py_value(vals[0])


def _number(key: str, value: Any, lo: float, hi: float) -> float:
    v = _one(key, value)
    if not is_number(v) or not math.isfinite(to_float(v)) or not lo <= to_float(v) <= hi:
        raise _bad_value(key, value, f"a number in [{lo:g}, {hi:g}]")
    return float(v)


def _parse_gen_param(gen_param: Any) -> dict | None:
    """Validated parameters, or None when there is nothing to do (gen_param == [])."""
    if isinstance(gen_param, (list, tuple)) and len(gen_param) == 0:
        return None
    if not isinstance(gen_param, dict):
        raise _err(1202, "Wrong type of control parameter 2: gen_param must be a dict or [], "
                         f"got {type(gen_param).__name__}")
    p: dict[str, Any] = {
        "augmentation_percentage": 50.0, "rotate": 0, "rotate_range": 0.0, "mirror": "off",
        "brightness_variation": 0.0, "brightness_variation_spot": 0.0,
        "crop_percentage": None, "crop_pixel": None, "contrast_variation": 0.0,
        "saturation_variation": 0.0, "remove_pixel": None, "ignore_direction": False,
        "class_ids_no_orientation": [], "seed": None, "epoch": None,
        "image_range_min": -127.0, "image_range_max": 128.0,
    }
    for key, value in gen_param.items():
        if not is_str(key):
            raise _err(H_ERR_GENPARAM, f"Unsupported generic parameter {key!r} (not a string)")
        key = str(key)
        if key not in _KEYS:
            raise _err(H_ERR_GENPARAM, f"Unsupported generic parameter '{key}' "
                                       f"(supported: {', '.join(_KEYS)})")
        if key == "augmentation_percentage":
            p[key] = _number(key, value, 0, 100)
        elif key == "rotate":
            v = _one(key, value)
            if not is_number(v) or float(v) not in (0.0, 90.0, 180.0):
                raise _bad_value(key, value, "0, 90 or 180")
            p[key] = int(float(v))
        elif key == "rotate_range":
            p[key] = _number(key, value, 0, 180)
        elif key == "mirror":
            v = _one(key, value)
            if not is_str(v) or str(v) not in ("off", "r", "c", "rc", "cr"):
                raise _bad_value(key, value, "'off', 'r', 'c' or 'rc'")
            p[key] = str(v)
        elif key in ("brightness_variation", "brightness_variation_spot"):
            p[key] = _number(key, value, 0, 255)
        elif key in ("contrast_variation", "saturation_variation"):
            p[key] = _number(key, value, 0, 1)
        elif key == "crop_percentage":
            v = _one(key, value)
            if is_str(v) and str(v) == "off":
                p[key] = None
            else:
                p[key] = _number(key, value, 1, 100)
        elif key == "crop_pixel":
            v = _one(key, value)
            if is_str(v) and str(v) == "off":
                p[key] = None
            elif is_int(v) and int(v) >= 1:
                p[key] = int(v)
            else:
                raise _bad_value(key, value, "'off' or an integer >= 1")
        elif key == "remove_pixel":
            vals = to_tuple(value) if not isinstance(value, np.ndarray) or value.ndim <= 1 \
                else [value]
            if len(vals) == 1 and is_str(vals[0]) and str(vals[0]) == "off":
                p[key] = None
                continue
            if len(vals) not in (1, 2) or not all(is_int(v) and int(v) >= 0 for v in vals):
                raise _bad_value(key, value, "'off', an integer >= 0, or [columns, rows]")
            nx, ny = (int(vals[0]), int(vals[-1]))
            p[key] = None if nx == 0 and ny == 0 else (nx, ny)
        elif key == "ignore_direction":
            v = _one(key, value)
            if isinstance(v, (bool, np.bool_)):
                p[key] = bool(v)
            elif is_str(v) and str(v) in ("true", "false"):
                p[key] = str(v) == "true"
            elif is_int(v) and int(v) in (0, 1):
                p[key] = bool(int(v))
            else:
                raise _bad_value(key, value, "'true', 'false', true or false")
        elif key == "class_ids_no_orientation":
            vals = to_tuple(value) if not isinstance(value, np.ndarray) or value.ndim <= 1 \
                else [value]
            if not all(is_int(v) for v in vals):
                raise _bad_value(key, value, "a tuple of integer class IDs")
            p[key] = [int(v) for v in vals]
        elif key in ("seed", "epoch"):
            v = _one(key, value)
            if not is_int(v):
                raise _bad_value(key, value, "an integer")
            p[key] = int(v)
        elif key in ("image_range_min", "image_range_max"):
            v = _one(key, value)
            if not is_number(v) or not math.isfinite(float(v)):
                raise _bad_value(key, value, "a finite number")
            p[key] = float(v)
    if not p["image_range_min"] < p["image_range_max"]:
        raise _bad_value("image_range_max", p["image_range_max"],
                         f"greater than image_range_min ({p['image_range_min']:g})")
    return p


def _methods(p: dict) -> list[str]:
    """Enabled methods in HALCON's order (the newer ones appended)."""
    m = []
    if p["rotate"] > 0:
        m.append("rotate")
    if p["mirror"] != "off":
        m.append("mirror")
    if p["brightness_variation"] > 0:
        m.append("brightness_variation")
    if p["brightness_variation_spot"] > 0:
        m.append("brightness_variation_spot")
    if p["crop_percentage"] is not None:
        m.append("crop_percentage")
    if p["crop_pixel"] is not None:
        m.append("crop_pixel")
    if p["rotate_range"] > 0:
        m.append("rotate_range")
    if p["contrast_variation"] > 0:
        m.append("contrast_variation")
    if p["saturation_variation"] > 0:
        m.append("saturation_variation")
    if p["remove_pixel"] is not None:
        m.append("remove_pixel")
    return m


# --------------------------------------------------------------------------------------------
# samples
# --------------------------------------------------------------------------------------------
def _coords(sample: dict, key: str, index: int) -> np.ndarray:
    v = sample[key]
    if isinstance(v, np.ndarray):
        if v.ndim > 1:
            raise _bad_sample(index, f"'{key}' must be a tuple of numbers")
        vals = v.tolist()
    else:
        vals = to_tuple(v)
    if not all(is_number(x) for x in vals):
        raise _bad_sample(index, f"'{key}' must hold numbers")
    arr = np.asarray(vals, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise _bad_sample(index, f"'{key}' holds NaN or Inf")
    return arr


def _check_sample(sample: Any, index: int) -> dict:
    """What augmentation needs of one sample (validated); raises before anything changes."""
    if not isinstance(sample, dict):
        raise _err(1201, f"Wrong type of control parameter 1: dlsample_batch[{index}] must be "
                         f"a DLSample dict, got {type(sample).__name__}")
    if "image" not in sample:
        raise _bad_sample(index, "the sample has no 'image'")
    img = sample["image"]
    if not isinstance(img, np.ndarray) or img.ndim not in (2, 3) or img.size == 0 \
            or not (np.issubdtype(img.dtype, np.floating) or np.issubdtype(img.dtype, np.integer)):
        raise _bad_sample(index, "'image' must be a real numpy array (H, W) or (H, W, C)")
    h, w = img.shape[:2]
    info: dict[str, Any] = {"h": h, "w": w, "channels": 1 if img.ndim == 2 else img.shape[2]}
    image_id = sample.get("image_id", None)
    image_id = py_value(to_tuple(image_id)[0]) if image_id is not None and \
        len(to_tuple(image_id)) == 1 else image_id
    if image_id is not None and not is_int(image_id):
        raise _bad_sample(index, f"'image_id' must be an integer, got {image_id!r}")
    info["image_id"] = None if image_id is None else int(image_id)
    labels = []
    for key in _LABEL_IMAGES:
        if key in sample:
            lab = sample[key]
            if not isinstance(lab, np.ndarray) or lab.ndim not in (2, 3) \
                    or lab.shape[:2] != (h, w) or (lab.ndim == 3 and lab.shape[2] != 1):
                raise _bad_sample(index, f"'{key}' must be a numpy array of the image's size "
                                         f"({h}, {w})")
            labels.append(key)
    info["labels"] = labels
    has1 = [k in sample for k in _RECT1]
    has2 = [k in sample for k in _RECT2]
    info["rect"] = None
    if any(has1):
        if not all(has1):
            raise _bad_sample(index, f"rectangle1 boxes need all of {_RECT1}")
        info["rect"] = "rectangle1"
        keys = _RECT1
    elif any(has2):
        if not all(has2):
            raise _bad_sample(index, f"rectangle2 boxes need all of {_RECT2}")
        info["rect"] = "rectangle2"
        keys = _RECT2
    if info["rect"] is not None:
        boxes = {k: _coords(sample, k, index) for k in keys}
        n = {len(v) for v in boxes.values()}
        if len(n) != 1:
            raise _bad_sample(index, f"the box tuples {keys} differ in length")
        if "bbox_label_id" in sample:
            ids = _coords(sample, "bbox_label_id", index)
            if len(ids) != next(iter(n)):
                raise _bad_sample(index, "'bbox_label_id' and the boxes differ in length")
            boxes["bbox_label_id"] = ids
        info["boxes"] = boxes
    return info


def _store_like(old: Any, new: np.ndarray) -> Any:
    """New coordinates in the container type of the old ones (list or numpy array)."""
    if isinstance(old, np.ndarray):
        return new.astype(old.dtype if np.issubdtype(old.dtype, np.floating) else np.float64)
    return [float(x) for x in new]


# --------------------------------------------------------------------------------------------
# randomness
# --------------------------------------------------------------------------------------------
def _sample_rng(seed: int, epoch: int, image_id: int | None, index: int) -> np.random.Generator:
    """One Generator per sample: a function of (seed, epoch, image_id) only (the batch
    position replaces image_id when the sample has none)."""
    which = [1, image_id % 2**63] if image_id is not None and image_id >= 0 else \
        ([2, (-image_id) % 2**63] if image_id is not None else [3, index])
    entropy = [seed % 2**63, epoch % 2**63] + which
    return np.random.default_rng(np.random.SeedSequence(entropy))


# --------------------------------------------------------------------------------------------
# image operations (vectorised numpy)
# --------------------------------------------------------------------------------------------
def _bilinear(img: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """img (H, W, C) float sampled at pixel-centre coordinates (rows, cols) of one shape,
    bilinear, coordinates clamped to the image (edge pixels repeated)."""
    h, w = img.shape[:2]
    flat = img.reshape(h * w, -1)
    r = np.clip(rows, 0.0, h - 1.0)
    c = np.clip(cols, 0.0, w - 1.0)
    r0 = r.astype(np.intp)  # floor: r >= 0
    c0 = c.astype(np.intp)
    fr = (r - r0).astype(img.dtype).reshape(-1, 1)
    fc = (c - c0).astype(img.dtype).reshape(-1, 1)
    i00 = (r0 * w + c0).reshape(-1)
    dc = (c0 < w - 1).reshape(-1).astype(np.intp)  # step to the right neighbour (0 at the edge)
    dr = (r0 < h - 1).reshape(-1).astype(np.intp) * w
    top = np.take(flat, i00, axis=0)
    top += (np.take(flat, i00 + dc, axis=0) - top) * fc
    bot = np.take(flat, i00 + dr, axis=0)
    bot += (np.take(flat, i00 + dr + dc, axis=0) - bot) * fc
    top += (bot - top) * fr
    return top.reshape(rows.shape + img.shape[2:])


def _linear_axis(x: np.ndarray, pos: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``x`` along ``axis`` at pixel-centre positions ``pos``
    (clamped to the edge pixels)."""
    n = x.shape[axis]
    p = np.clip(pos, 0.0, n - 1.0)
    i0 = np.floor(p).astype(np.intp)
    i1 = np.minimum(i0 + 1, n - 1)
    f = (p - i0).astype(x.dtype)
    shape = [1] * x.ndim
    shape[axis] = len(pos)
    f = f.reshape(shape)
    return np.take(x, i0, axis=axis) * (1 - f) + np.take(x, i1, axis=axis) * f


def _crop_zoom(img: np.ndarray, r1: float, c1: float, ch: float, cw: float) -> np.ndarray:
    """The part [r1, r1+ch) x [c1, c1+cw) (pixel-corner coordinates) zoomed bilinearly to the
    image's size (HALCON: crop_rectangle1 + zoom_image_size); separable, rows then columns."""
    h, w = img.shape[:2]
    rows = r1 + (np.arange(h) + 0.5) * (ch / h) - 0.5
    cols = c1 + (np.arange(w) + 0.5) * (cw / w) - 0.5
    return _linear_axis(_linear_axis(img, rows, 0), cols, 1)


def _inner_rectangle(w: float, h: float, angle: float) -> tuple[float, float]:
    """Width and height of the largest axis-parallel rectangle centred in a w x h rectangle
    rotated by ``angle`` (radians), clipped to the w x h frame."""
    s, c = abs(math.sin(angle)), abs(math.cos(angle))
    long_side, short_side = max(w, h), min(w, h)
    if s < 1e-12:
        return w, h
    if short_side <= 2.0 * s * c * long_side or abs(s - c) < 1e-12:
        # two corners of the inner rectangle touch the long sides only
        x = 0.5 * short_side
        wr, hr = (x / s, x / c) if w >= h else (x / c, x / s)
    else:
        cos2 = c * c - s * s
        wr, hr = (w * c - h * s) / cos2, (h * c - w * s) / cos2
    return min(abs(wr), w), min(abs(hr), h)


def _rotate_range_image(img: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate by ``degrees`` (counter-clockwise, HALCON's sense) about the image centre, crop
    the largest axis-parallel rectangle holding only image pixels and zoom it back to the
    image's size, in one bilinear resampling."""
    h, w = img.shape[:2]
    quarter = float(degrees).is_integer() and int(degrees) % 90 == 0
    if quarter and (h == w or int(degrees) % 180 == 0):
        return np.rot90(img, (int(degrees) // 90) % 4, axes=(0, 1))
    a = math.radians(degrees)
    wr, hr = _inner_rectangle(float(w), float(h), a)
    # output pixel centre -> point of the rotated image (pixel-corner coordinates, centred)
    dr = (np.arange(h) + 0.5) * (hr / h) - hr / 2.0
    dc = (np.arange(w) + 0.5) * (wr / w) - wr / 2.0
    dr, dc = np.meshgrid(dr, dc, indexing="ij")
    # inverse rotation: forward maps (dr, dc) -> (cos a dr - sin a dc, sin a dr + cos a dc)
    ca, sa = math.cos(a), math.sin(a)
    src_r = ca * dr + sa * dc + h / 2.0 - 0.5
    src_c = -sa * dr + ca * dc + w / 2.0 - 0.5
    return _bilinear(img, src_r, src_c)


def _spot(h: int, w: int, value: float, size: float, row: float, col: float) -> np.ndarray:
    """HALCON's brightness spot: a Gaussian of peak ``value`` and standard deviation
    size / (2 pi) centred at (row, col), cut to the size x size square around it
    (gen_gauss_filter(1, 1, 'none', 'dc_center', size, size) placed at the spot)."""
    sigma = size / (2.0 * math.pi)
    dr = np.arange(h) - row
    dc = np.arange(w) - col
    gr = np.where(np.abs(dr) <= size / 2.0, np.exp(-dr * dr / (2 * sigma * sigma)), 0.0)
    gc = np.where(np.abs(dc) <= size / 2.0, np.exp(-dc * dc / (2 * sigma * sigma)), 0.0)
    return value * gr[:, None] * gc[None, :]


# --------------------------------------------------------------------------------------------
# boxes
# --------------------------------------------------------------------------------------------
def _wrap(phi: np.ndarray, half: bool) -> np.ndarray:
    """phi into (-pi, pi], or (-pi/2, pi/2] when ``half`` (ignore_direction)."""
    period = math.pi if half else 2.0 * math.pi
    top = period / 2.0
    out = np.mod(phi + top, period) - top  # [-top, top)
    out = np.where(np.isclose(out, -top, rtol=0.0, atol=1e-12), top, out)
    return out


def _point_rot90(r, c, k, h, w):
    """Pixel-centre point (r, c) of an h x w image after np.rot90(k) (counter-clockwise)."""
    k %= 4
    if k == 0:
        return r, c
    if k == 1:
        return (w - 1.0) - c, r
    if k == 2:
        return (h - 1.0) - r, (w - 1.0) - c
    return c, (h - 1.0) - r


def _rotate_boxes(info: dict, k: int, p: dict) -> dict:
    h, w = info["h"], info["w"]
    b = info["boxes"]
    if info["rect"] == "rectangle1":
        ra, ca = _point_rot90(b["bbox_row1"], b["bbox_col1"], k, h, w)
        rb, cb = _point_rot90(b["bbox_row2"], b["bbox_col2"], k, h, w)
        return {"bbox_row1": np.minimum(ra, rb), "bbox_col1": np.minimum(ca, cb),
                "bbox_row2": np.maximum(ra, rb), "bbox_col2": np.maximum(ca, cb)}
    r, c = _point_rot90(b["bbox_row"], b["bbox_col"], k, h, w)
    phi = _wrap(b["bbox_phi"] + k * math.pi / 2.0, p["ignore_direction"])
    l1, l2 = b["bbox_length1"].copy(), b["bbox_length2"].copy()
    no_orient = _no_orientation(info, p)
    if no_orient.any():
        phi = np.where(no_orient, 0.0, phi)
        if k % 2 == 1:  # HALCON: those classes keep phi = 0, so the lengths swap
            l1, l2 = np.where(no_orient, b["bbox_length2"], l1), \
                np.where(no_orient, b["bbox_length1"], l2)
    return {"bbox_row": r, "bbox_col": c, "bbox_phi": phi, "bbox_length1": l1,
            "bbox_length2": l2}


def _no_orientation(info: dict, p: dict) -> np.ndarray:
    b = info["boxes"]
    n = len(next(iter(b.values())))
    if not p["class_ids_no_orientation"] or "bbox_label_id" not in b:
        return np.zeros(n, dtype=bool)
    return np.isin(b["bbox_label_id"], np.asarray(p["class_ids_no_orientation"], np.float64))


def _mirror_boxes(info: dict, axes: str, p: dict) -> dict:
    h, w = info["h"], info["w"]
    b = {k: v.copy() for k, v in info["boxes"].items()}
    no_orient = _no_orientation(info, p) if info["rect"] == "rectangle2" else None
    for ax in axes:
        if info["rect"] == "rectangle1":
            if ax == "c":
                b["bbox_col1"], b["bbox_col2"] = \
                    (w - 1.0) - b["bbox_col2"], (w - 1.0) - b["bbox_col1"]
            else:
                b["bbox_row1"], b["bbox_row2"] = \
                    (h - 1.0) - b["bbox_row2"], (h - 1.0) - b["bbox_row1"]
        else:
            if ax == "c":
                b["bbox_col"] = (w - 1.0) - b["bbox_col"]
                phi = math.pi - b["bbox_phi"]
            else:
                b["bbox_row"] = (h - 1.0) - b["bbox_row"]
                phi = -b["bbox_phi"]
            b["bbox_phi"] = np.where(no_orient, b["bbox_phi"], _wrap(phi, p["ignore_direction"]))
    b.pop("bbox_label_id", None)
    return b


# --------------------------------------------------------------------------------------------
# one sample
# --------------------------------------------------------------------------------------------
def _augment_one(sample: dict, info: dict, p: dict, methods: list[str],
                 rng: np.random.Generator) -> dict:
    """The new values of the sample's keys (nothing is written here)."""
    if rng.random() * 100.0 > p["augmentation_percentage"]:
        return {}
    candidates = [m for m in methods
                  if not (m == "saturation_variation" and info["channels"] != 3)]
    if not candidates:
        return {}
    method = candidates[int(rng.random() * len(candidates))]
    img = sample["image"]
    h, w = info["h"], info["w"]
    out: dict[str, Any] = {}

    if method == "rotate":
        step = p["rotate"]
        n = 360 // step - 1
        angle = step * (int(n * rng.random()) + 1)
        if h != w and angle % 180 != 0:
            return {}  # HALCON: 90/270 degree rotations of non-square images are skipped
        k = angle // 90
        out["image"] = np.ascontiguousarray(np.rot90(img, k, axes=(0, 1)))
        for key in info["labels"]:
            out[key] = np.ascontiguousarray(np.rot90(sample[key], k, axes=(0, 1)))
        if info["rect"] is not None:
            out.update(_rotate_boxes(info, k, p))
        return out

    if method == "mirror":
        chars = p["mirror"]
        prob = 1.0 / len(chars)
        chosen = ""
        while not chosen:  # HALCON: each allowed axis with probability 1/len, not none
            chosen = "".join(ch for ch in chars if rng.random() < prob)
        out["image"] = img
        labels = {key: sample[key] for key in info["labels"]}
        for ax in chosen:
            axis = 1 if ax == "c" else 0
            out["image"] = np.flip(out["image"], axis=axis)
            labels = {key: np.flip(v, axis=axis) for key, v in labels.items()}
        out["image"] = np.ascontiguousarray(out["image"])
        out.update({key: np.ascontiguousarray(v) for key, v in labels.items()})
        if info["rect"] is not None:
            out.update(_mirror_boxes(info, chosen, p))
        return out

    # photometric and classification-only methods work on an (H, W, C) copy: float32 for
    # float32 images, float64 otherwise
    work = np.float32 if img.dtype == np.float32 else np.float64
    x = img.astype(work, copy=True)
    if x.ndim == 2:
        x = x[:, :, None]
    unit = (p["image_range_max"] - p["image_range_min"]) / 255.0  # one byte gray value

    if method == "brightness_variation":
        x += (rng.random() * 2.0 - 1.0) * p["brightness_variation"] * unit
    elif method == "brightness_variation_spot":
        value = (rng.random() * 2.0 - 1.0) * p["brightness_variation_spot"] * unit
        size = w * (rng.random() / 2.0 + 0.5)
        row, col = rng.random() * h, rng.random() * w
        x += _spot(h, w, value, size, row, col)[:, :, None]
    elif method == "contrast_variation":
        f = 1.0 + (rng.random() * 2.0 - 1.0) * p["contrast_variation"]
        mean = x.mean()
        x = (x - mean) * f + mean
    elif method == "saturation_variation":
        f = 1.0 + (rng.random() * 2.0 - 1.0) * p["saturation_variation"]
        gray = x @ np.array([0.299, 0.587, 0.114])
        x = gray[:, :, None] + f * (x - gray[:, :, None])
    elif method == "crop_percentage":
        rate = p["crop_percentage"] / 100.0
        ch, cw = max(1, int(round(rate * h))), max(1, int(round(rate * w)))
        r1 = math.floor((h - ch) * rng.random())
        c1 = math.floor((w - cw) * rng.random())
        x = _crop_zoom(x, r1, c1, ch, cw)
    elif method == "crop_pixel":
        ch, cw = min(p["crop_pixel"], h), min(p["crop_pixel"], w)
        r1 = math.floor((h - ch) * rng.random())
        c1 = math.floor((w - cw) * rng.random())
        x = _crop_zoom(x, r1, c1, ch, cw)
    elif method == "remove_pixel":
        nx, ny = p["remove_pixel"]
        kx = min(int(rng.integers(0, nx + 1)), w - 1)
        ky = min(int(rng.integers(0, ny + 1)), h - 1)
        left = int(rng.integers(0, kx + 1))
        top = int(rng.integers(0, ky + 1))
        x = _crop_zoom(x, top, left, h - ky, w - kx)
    elif method == "rotate_range":
        deg = min(float(int(p["rotate_range"] * rng.random()) + 1), p["rotate_range"])
        if rng.random() < 0.5:
            deg = -deg
        x = _rotate_range_image(x, deg)

    x = x.reshape(img.shape)
    if np.issubdtype(img.dtype, np.integer):
        lim = np.iinfo(img.dtype)
        x = np.clip(np.rint(x), lim.min, lim.max)
    out["image"] = np.ascontiguousarray(x.astype(img.dtype))
    return out


# --------------------------------------------------------------------------------------------
# the procedure
# --------------------------------------------------------------------------------------------
@operator
def augment_dl_samples(dlsample_batch: Any, gen_param: Any) -> None:
    """HALCON's augment_dl_samples(DLSampleBatch, GenParam : ): augment the samples in place.

    ``dlsample_batch``: a DLSample dict or a list of them (preprocessed: 'image' (H, W, C) in
    the model's range, optional 'segmentation_image', 'weight_image', 'anomaly_ground_truth'
    (H, W), rectangle1 or rectangle2 boxes).  ``gen_param``: a dict with HALCON's keys
    (augmentation_percentage, rotate, rotate_range, mirror, brightness_variation,
    brightness_variation_spot, crop_percentage, crop_pixel, contrast_variation,
    saturation_variation, remove_pixel, ignore_direction, class_ids_no_orientation) and
    halcdl's 'seed', 'epoch', 'image_range_min', 'image_range_max'; ``[]`` does nothing.
    Unknown keys raise 7911, bad values 7914, bad samples 1201/1301; nothing is changed then.
    """
    p = _parse_gen_param(gen_param)
    if isinstance(dlsample_batch, dict):
        batch = [dlsample_batch]
    elif isinstance(dlsample_batch, (list, tuple)):
        batch = list(dlsample_batch)
    else:
        raise _err(1201, "Wrong type of control parameter 1: dlsample_batch must be a DLSample "
                         f"dict or a list of them, got {type(dlsample_batch).__name__}")
    if p is None:
        return
    if not batch:
        raise _err(1301, "Wrong value of control parameter 1: there are no DLSamples to be "
                         "processed (empty dlsample_batch)")
    infos = [_check_sample(s, i) for i, s in enumerate(batch)]
    methods = _methods(p)
    for m in methods:
        if m in _CLASSIFICATION_ONLY:
            for i, info in enumerate(infos):
                if info["rect"] is not None or info["labels"]:
                    raise _err(H_ERR_GENVALUE,
                               f"Unsupported generic value for '{m}': the method is only "
                               f"allowed for classification samples, but dlsample_batch[{i}] "
                               f"has {'boxes' if info['rect'] else info['labels'][0]}")
    if p["augmentation_percentage"] == 0 or not methods:
        return
    seed = p["seed"] if p["seed"] is not None else int(_system.get_system_value("seed_rand"))
    if p["epoch"] is not None:
        epoch = p["epoch"]
    else:
        gen = getattr(_system, "_seed_generation", 0)
        if _call_state["generation"] != gen:
            _call_state["generation"], _call_state["count"] = gen, 0
        epoch = _call_state["count"]
        _call_state["count"] += 1

    updates = []
    for i, (sample, info) in enumerate(zip(batch, infos)):
        rng = _sample_rng(seed, epoch, info["image_id"], i)
        updates.append(_augment_one(sample, info, p, methods, rng))
    # every result is computed: only now write (nothing changes if anything above raised)
    for sample, new in zip(batch, updates):
        for key, value in new.items():
            if key.startswith("bbox_"):
                sample[key] = _store_like(sample[key], value)
            else:
                sample[key] = value

"""HALCON's dataset procedures: building a DLDataset from folders or a COCO file, splitting it,
finding samples and turning samples into DLSample dicts with their images.

A DLDataset is a plain dict (docs/datasets.md)::

    {'image_dir': str, 'class_names': [...], 'class_ids': [...],
     'samples': [{'image_id': int, 'image_file_name': str (relative to image_dir),
                  'image_label_id' | 'segmentation_file_name' | 'bbox_*' + 'bbox_label_id',
                  'split': 'train' | 'validation' | 'test'}, ...],
     optional 'segmentation_dir', 'dlsample_dir', 'preprocess_param'}

Every bad input raises HOperatorError with HALCON's number (1200+n / 1300+n / 1400+n for
parameter n, 5200 missing file or folder, 7780 unreadable image, 7925 invalid dataset,
7926 invalid sample index) and leaves the dataset as it was.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from typing import Any

import numpy as np

from ..errors import (
    H_ERR_CNN_INVALID_LABELS,
    H_ERR_DL_CLASS_IDS_NOT_UNIQUE,
    H_ERR_DL_FILE_READ,
    H_ERR_DL_INVALID_DATASET,
    H_ERR_DL_INVALID_SAMPLE_INDEX,
    H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
    H_ERR_FNF,
    HOperatorError,
)
from ..hobject import image_list as _image_list
from ..operators._tuple import (
    as_float,
    is_int,
    is_number,
    is_str,
    operator,
    py_value,
    to_tuple,
    wrong_num,
    wrong_type,
    wrong_value,
)
from .images import is_image_file, read_image

__all__ = [
    "read_dl_dataset_classification",
    "read_dl_dataset_segmentation",
    "read_dl_dataset_from_coco",
    "split_dl_dataset",
    "find_dl_samples",
    "gen_dl_samples",
    "gen_dl_samples_from_images",
    "read_dl_samples",
]

BBOX_RECT1_KEYS = ("bbox_row1", "bbox_col1", "bbox_row2", "bbox_col2")
BBOX_RECT2_KEYS = ("bbox_row", "bbox_col", "bbox_phi", "bbox_length1", "bbox_length2")


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _gen_param(gen_param: Any, pos: int, allowed: tuple[str, ...]) -> dict:
    """GenParam as a dict: a dict, [] / None (empty), or [names, values]; unknown keys → 1300+pos."""
    if gen_param is None or (isinstance(gen_param, (list, tuple)) and len(gen_param) == 0):
        return {}
    if isinstance(gen_param, (list, tuple)) and len(gen_param) == 2 \
            and isinstance(gen_param[0], (list, tuple)):
        names, values = list(gen_param[0]), to_tuple(gen_param[1])
        if len(names) != len(values):
            raise wrong_num(pos, f"gen_param: {len(names)} names but {len(values)} values")
        gen_param = dict(zip(names, values))
    if not isinstance(gen_param, dict):
        raise wrong_type(pos, f"gen_param must be a dict or [], got {type(gen_param).__name__}")
    out = {}
    for k, v in gen_param.items():
        if not is_str(k):
            raise wrong_type(pos, f"gen_param keys must be strings, got {k!r}")
        if str(k) not in allowed:
            raise wrong_value(pos, f"unknown gen_param key {k!r} (supported: {list(allowed)})")
        out[str(k)] = py_value(v)
    return out


def _bool_param(value: Any, pos: int, name: str) -> bool:
    v = to_tuple(value)
    if len(v) != 1:
        raise wrong_num(pos, f"gen_param {name!r} takes one value, got {len(v)}")
    v = v[0]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if is_str(v) and v in ("true", "false"):
        return v == "true"
    if is_int(v) and int(v) in (0, 1):
        return bool(v)
    raise wrong_value(pos, f"gen_param {name!r} must be 'true' or 'false', got {v!r}")


def _str_param(value: Any, pos: int, name: str) -> str:
    v = to_tuple(value)
    if len(v) != 1 or not is_str(v[0]):
        raise wrong_type(pos, f"{name} must be one string, got {value!r}")
    return str(v[0])


def _folder(value: Any, pos: int, name: str) -> str:
    p = _str_param(value, pos, name)
    if not os.path.isdir(p):
        what = "is a file, not a folder" if os.path.exists(p) else "not found"
        raise HOperatorError(H_ERR_FNF, f"{name} '{p}' {what}")
    return p


def _rel(path: str, start: str) -> str:
    return os.path.relpath(path, start).replace(os.sep, "/")


def _list_images(folder: str) -> list[str]:
    """All image files below ``folder`` (recursive), absolute-free: joined paths, sorted."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in files:
            if is_image_file(f):
                out.append(os.path.join(root, f))
    return sorted(out, key=lambda p: _rel(p, folder))


def _samples(dldataset: Any, pos: int = 1) -> list:
    if not isinstance(dldataset, dict):
        raise wrong_type(pos, f"dldataset must be a dict, got {type(dldataset).__name__}")
    samples = dldataset.get("samples")
    if isinstance(samples, dict):
        # a one-sample dataset read from an .hdict file: HALCON's one-element tuple reads as
        # the value (docs/hdict.md); the dict is the sample itself, so changes reach it
        return [samples]
    if not isinstance(samples, list):
        raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                             "the dataset has no list 'samples'" if samples is None else
                             f"the dataset's 'samples' must be a list of dicts, got "
                             f"{type(samples).__name__}")
    for i, s in enumerate(samples):
        if not isinstance(s, dict):
            raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                                 f"sample {i} of the dataset is a {type(s).__name__}, not a dict")
    return samples


def _indices(sample_indices: Any, n: int) -> list[int]:
    if isinstance(sample_indices, np.ndarray) and sample_indices.ndim > 1:
        raise HOperatorError(H_ERR_DL_INVALID_SAMPLE_INDEX,
                             f"sample_indices must be a list of integers, got an array of shape "
                             f"{sample_indices.shape}")
    out = []
    for v in to_tuple(sample_indices):
        if not is_int(v):
            raise HOperatorError(H_ERR_DL_INVALID_SAMPLE_INDEX,
                                 f"sample index {v!r} is not an integer")
        if not 0 <= int(v) < n:
            raise HOperatorError(H_ERR_DL_INVALID_SAMPLE_INDEX,
                                 f"sample index {int(v)} outside 0 … {n - 1} "
                                 f"(the dataset has {n} samples)")
        out.append(int(v))
    return out


def _natural_join(folder: str, name: str) -> str:
    """``folder/name`` with HALCON's Windows separators turned into this system's."""
    if os.sep == "/":
        name = name.replace("\\", "/")
    return os.path.join(folder, name)


# --------------------------------------------------------------------------------------------
# read_dl_dataset_classification
# --------------------------------------------------------------------------------------------
_TRAILING = re.compile(r"[0-9_]+$")


@operator
def read_dl_dataset_classification(raw_image_folder: Any, label_source: Any) -> dict:
    """DLDataset for classification from the image files below ``raw_image_folder`` (one folder
    or a list; listed recursively, sorted).  ``label_source``: 'last_folder' (the class is the
    name of the file's folder), 'file_name' (the file name without extension and without
    trailing digits and underscores: 'apple_012.png' → 'apple') or a dict {file: class name}
    whose keys are paths (as listed, or relative to the folder) or base names; files the dict
    does not name are left out."""
    folders = to_tuple(raw_image_folder)
    if not folders:
        raise wrong_num(1, "raw_image_folder holds no folder")
    folders = [_folder(f, 1, "raw_image_folder") for f in folders]
    mapping = None
    if isinstance(label_source, dict):
        mapping = {}
        for k, v in label_source.items():
            if not is_str(k) or not is_str(v):
                raise wrong_type(2, f"label_source dict maps file names (str) to class names "
                                    f"(str), got {k!r}: {v!r}")
            mapping[str(k)] = str(v)
        mode = "dict"
    else:
        mode = _str_param(label_source, 2, "label_source")
        if mode not in ("last_folder", "file_name"):
            raise wrong_value(2, f"label_source must be 'last_folder', 'file_name' or a dict, "
                                 f"got {mode!r}")
    norm = [os.path.normpath(f) for f in folders]
    image_dir = norm[0] if len(set(norm)) == 1 else os.path.commonpath(
        [os.path.abspath(f) for f in norm])
    files: list[tuple[str, str]] = []  # (full path, folder it was found in)
    seen = set()
    for f in norm:
        for p in _list_images(f):
            key = os.path.abspath(p)
            if key not in seen:
                seen.add(key)
                files.append((p, f))
    files.sort(key=lambda pf: _rel(pf[0], image_dir))
    if not files:
        raise HOperatorError(H_ERR_FNF, f"no image files found in raw_image_folder {folders} "
                                        f"(extensions read: png, jpg, tif, bmp, pgm, ...)")
    labels: list[str | None] = []
    if mode == "last_folder":
        labels = [os.path.basename(os.path.dirname(os.path.abspath(p))) for p, _ in files]
    elif mode == "file_name":
        for p, _ in files:
            stem = os.path.splitext(os.path.basename(p))[0]
            name = _TRAILING.sub("", stem)
            if not name:
                raise wrong_value(2, f"label_source 'file_name': the file name of '{p}' holds "
                                     f"no class name (only digits and underscores)")
            labels.append(name)
    else:
        lookup: dict[str, str] = {}
        by_base: dict[str, list[str]] = {}
        for p, f in files:
            for k in {p, os.path.abspath(p), _rel(p, f), _rel(p, image_dir), p.replace(os.sep, "/")}:
                lookup[k] = p
            by_base.setdefault(os.path.basename(p), []).append(p)
        label_of: dict[str, str] = {}
        for k, cls in mapping.items():
            kk = k.replace("\\", "/") if os.sep == "/" else k
            if kk in lookup:
                label_of[lookup[kk]] = cls
            elif kk in by_base:
                if len(by_base[kk]) > 1:
                    raise wrong_value(2, f"label_source key {k!r} names several files: "
                                         f"{by_base[kk]}; use a path")
                label_of[by_base[kk][0]] = cls
            else:
                raise HOperatorError(H_ERR_FNF, f"label_source names the file {k!r}, which is no "
                                                f"image file in raw_image_folder {folders}")
        files = [(p, f) for p, f in files if p in label_of]
        labels = [label_of[p] for p, _ in files]
    class_names = sorted(set(labels))
    cid = {c: i for i, c in enumerate(class_names)}
    samples = [{"image_id": i, "image_file_name": _rel(p, image_dir), "image_label_id": cid[c]}
               for i, ((p, _), c) in enumerate(zip(files, labels))]
    return {"image_dir": image_dir, "class_names": class_names,
            "class_ids": list(range(len(class_names))), "samples": samples}


# --------------------------------------------------------------------------------------------
# read_dl_dataset_segmentation
# --------------------------------------------------------------------------------------------
_LABEL_EXT_PREFERENCE = (".png", ".tif", ".tiff", ".bmp", ".pgm", ".pnm", ".ppm", ".gif",
                         ".jpg", ".jpeg")


def _file_list(value: Any, pos: int, name: str, folder: str) -> list[str] | None:
    """[] → None (all files); else the relative names, each existing in ``folder``."""
    names = to_tuple(value)
    if not names:
        return None
    out = []
    for v in names:
        if not is_str(v):
            raise wrong_type(pos, f"{name} holds file names (str), got {v!r}")
        p = _natural_join(folder, str(v))
        if not os.path.isfile(p):
            raise HOperatorError(H_ERR_FNF, f"{name}: file '{p}' not found")
        out.append(_rel(p, folder))
    return out


@operator
def read_dl_dataset_segmentation(image_dir: Any, segmentation_dir: Any, class_names: Any,
                                 class_ids: Any, image_list: Any, segmentation_list: Any,
                                 gen_param: Any) -> dict:
    """DLDataset for semantic segmentation: the images of ``image_dir`` paired with the label
    images of ``segmentation_dir``.  ``image_list`` [] = every image file below image_dir
    (recursive, sorted), else the file names (relative to image_dir).  ``segmentation_list`` []
    = for each image the label file with the same relative path and base name (any image
    extension; .png preferred), else the label files, paired by position."""
    img_dir = _folder(image_dir, 1, "image_dir")
    seg_dir = _folder(segmentation_dir, 2, "segmentation_dir")
    names = to_tuple(class_names)
    ids = to_tuple(class_ids)
    if not names:
        raise wrong_num(3, "class_names is empty")
    for n in names:
        if not is_str(n):
            raise wrong_type(3, f"class_names holds strings, got {n!r}")
    for i in ids:
        if not is_int(i):
            raise wrong_type(4, f"class_ids holds integers, got {i!r}")
    if len(ids) != len(names):
        raise wrong_num(4, f"{len(ids)} class_ids for {len(names)} class_names")
    if len(set(ids)) != len(ids):
        raise HOperatorError(H_ERR_DL_CLASS_IDS_NOT_UNIQUE, f"class_ids are not unique: {ids}")
    if len(set(names)) != len(names):
        raise wrong_value(3, f"class_names are not unique: {names}")
    _gen_param(gen_param, 7, ())
    images = _file_list(image_list, 5, "image_list", img_dir)
    if images is None:
        images = [_rel(p, img_dir) for p in _list_images(img_dir)]
        if not images:
            raise HOperatorError(H_ERR_FNF, f"no image files found in image_dir '{img_dir}'")
    labels = _file_list(segmentation_list, 6, "segmentation_list", seg_dir)
    if labels is None:
        available: dict[str, list[str]] = {}
        for p in _list_images(seg_dir):
            r = _rel(p, seg_dir)
            available.setdefault(os.path.splitext(r)[0], []).append(r)
        labels = []
        for im in images:
            cands = available.get(os.path.splitext(im)[0])
            if not cands:
                raise HOperatorError(H_ERR_FNF,
                                     f"no label image for image '{im}': expected a file "
                                     f"'{os.path.splitext(im)[0]}.<png|tif|...>' in "
                                     f"segmentation_dir '{seg_dir}'")
            ext_im = os.path.splitext(im)[1].lower()
            rank = {e: i for i, e in enumerate(_LABEL_EXT_PREFERENCE)}
            cands = sorted(cands, key=lambda c: (rank.get(os.path.splitext(c)[1].lower(), 99),
                                                 os.path.splitext(c)[1].lower() != ext_im, c))
            labels.append(cands[0])
    elif len(labels) != len(images):
        raise wrong_num(6, f"{len(labels)} segmentation files for {len(images)} images")
    samples = [{"image_id": i, "image_file_name": im, "segmentation_file_name": lb}
               for i, (im, lb) in enumerate(zip(images, labels))]
    return {"image_dir": img_dir, "segmentation_dir": seg_dir,
            "class_names": [str(n) for n in names], "class_ids": [int(i) for i in ids],
            "samples": samples}


# --------------------------------------------------------------------------------------------
# read_dl_dataset_from_coco
# --------------------------------------------------------------------------------------------
def _coco_bad(detail: str) -> HOperatorError:
    return HOperatorError(H_ERR_DL_INVALID_DATASET, f"invalid COCO file: {detail}")


@operator
def read_dl_dataset_from_coco(coco_file_name: Any, image_dir: Any, gen_param: Any) -> dict:
    """Detection DLDataset (instance_type rectangle1) from a COCO annotation file.

    Boxes: COCO's ``[x, y, w, h]`` becomes bbox_row1 = y, bbox_col1 = x, bbox_row2 = y + h,
    bbox_col2 = x + w (no half-pixel shift).  class_ids are the category ids (sorted),
    class_names their names; every image becomes a sample (image_id = the COCO image id, in
    the file's order), images without annotations with empty box lists.  gen_param:
    'read_only_non_crowd' (alias 'skip_crowd'; default 'false': crowd boxes are kept),
    'read_raw_annotations' (default 'false'; 'true' stores the annotation dicts in the sample
    under 'coco_raw_annotations'), 'read_segmentation_masks' (only 'false' supported)."""
    path = _str_param(coco_file_name, 1, "coco_file_name")
    img_dir = _str_param(image_dir, 2, "image_dir")
    gp = _gen_param(gen_param, 3, ("read_only_non_crowd", "skip_crowd", "read_raw_annotations",
                                   "read_segmentation_masks"))
    non_crowd = any(_bool_param(gp[k], 3, k) for k in ("read_only_non_crowd", "skip_crowd")
                    if k in gp)
    raw = _bool_param(gp["read_raw_annotations"], 3, "read_raw_annotations") \
        if "read_raw_annotations" in gp else False
    if "read_segmentation_masks" in gp and _bool_param(gp["read_segmentation_masks"], 3,
                                                        "read_segmentation_masks"):
        raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                             "gen_param 'read_segmentation_masks' = 'true' is not supported: "
                             "halcdl reads boxes only")
    if not os.path.isfile(path):
        raise HOperatorError(H_ERR_FNF, f"COCO file '{path}' not found")
    try:
        with open(path, "rb") as fh:
            coco = json.loads(fh.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise HOperatorError(H_ERR_DL_FILE_READ,
                             f"cannot read COCO file '{path}': {type(err).__name__}: {err}") from None
    if not isinstance(coco, dict):
        raise _coco_bad(f"'{path}' holds a {type(coco).__name__}, not an object")
    for key in ("images", "categories"):
        if not isinstance(coco.get(key), list):
            raise _coco_bad(f"'{path}' has no list '{key}'")
    anns = coco.get("annotations", [])
    if not isinstance(anns, list):
        raise _coco_bad(f"'annotations' of '{path}' is not a list")
    cats = {}
    for c in coco["categories"]:
        if not isinstance(c, dict) or not is_int(c.get("id")) or not is_str(c.get("name")):
            raise _coco_bad(f"category {c!r} needs an integer 'id' and a string 'name'")
        if c["id"] in cats:
            raise HOperatorError(H_ERR_DL_CLASS_IDS_NOT_UNIQUE,
                                 f"COCO file '{path}': category id {c['id']} appears twice")
        cats[int(c["id"])] = str(c["name"])
    images = []
    img_index = {}
    for im in coco["images"]:
        if not isinstance(im, dict) or not is_int(im.get("id")) or not is_str(im.get("file_name")):
            raise _coco_bad(f"image {im!r} needs an integer 'id' and a string 'file_name'")
        if im["id"] in img_index:
            raise _coco_bad(f"image id {im['id']} appears twice")
        img_index[int(im["id"])] = len(images)
        images.append(im)
    boxes: list[list] = [[] for _ in images]
    for a in anns:
        if not isinstance(a, dict):
            raise _coco_bad(f"annotation {a!r} is not an object")
        iid, cid, bb = a.get("image_id"), a.get("category_id"), a.get("bbox")
        if not is_int(iid) or int(iid) not in img_index:
            raise _coco_bad(f"annotation {a.get('id')!r} refers to unknown image_id {iid!r}")
        if not is_int(cid) or int(cid) not in cats:
            raise _coco_bad(f"annotation {a.get('id')!r} refers to unknown category_id {cid!r}")
        if not isinstance(bb, list) or len(bb) != 4 or not all(is_number(v) for v in bb) \
                or not all(math.isfinite(v) for v in bb) or bb[2] < 0 or bb[3] < 0:
            raise _coco_bad(f"annotation {a.get('id')!r} has no valid bbox [x, y, w, h] "
                            f"(finite, w, h >= 0): {bb!r}")
        crowd = a.get("iscrowd", 0)
        if non_crowd and crowd not in (0, False, None):
            continue
        boxes[img_index[int(iid)]].append(a)
    class_ids = sorted(cats)
    samples = []
    for im, bl in zip(images, boxes):
        x = np.array([a["bbox"][0] for a in bl], np.float64)
        y = np.array([a["bbox"][1] for a in bl], np.float64)
        w = np.array([a["bbox"][2] for a in bl], np.float64)
        h = np.array([a["bbox"][3] for a in bl], np.float64)
        s = {"image_id": int(im["id"]), "image_file_name": str(im["file_name"]),
             "bbox_row1": y.tolist(), "bbox_col1": x.tolist(),
             "bbox_row2": (y + h).tolist(), "bbox_col2": (x + w).tolist(),
             "bbox_label_id": [int(a["category_id"]) for a in bl]}
        if raw:
            s["coco_raw_annotations"] = copy.deepcopy(bl)
        samples.append(s)
    return {"image_dir": img_dir, "class_ids": class_ids,
            "class_names": [cats[i] for i in class_ids], "samples": samples}


# --------------------------------------------------------------------------------------------
# split_dl_dataset
# --------------------------------------------------------------------------------------------
_MODEL_TYPES = ("classification", "detection", "segmentation", "anomaly_detection")


def _guess_model_type(samples: list) -> str:
    s = samples[0]
    if "image_label_id" in s:
        return "classification"
    if "bbox_label_id" in s:
        return "detection"
    if "segmentation_file_name" in s:
        return "segmentation"
    if "anomaly_label_id" in s or "anomaly_label" in s:
        return "anomaly_detection"
    return "none"


def _split_group(idx: np.ndarray, tp: float, vp: float, rng, out: list) -> None:
    n = len(idx)
    perm = idx[rng.permutation(n)]
    n_train = int(math.floor(n * tp / 100.0 + 0.5))
    n_val = int(math.floor(n * vp / 100.0 + 0.5))
    n_train = min(n_train, n)
    n_val = min(n_val, n - n_train)
    for k, i in enumerate(perm):
        out[int(i)] = "train" if k < n_train else ("validation" if k < n_train + n_val else "test")


def _percent(value: Any, pos: int, name: str) -> float:
    v = to_tuple(value)
    if len(v) != 1:
        raise wrong_num(pos, f"{name} takes one number, got {len(v)} values")
    return as_float(v[0], pos, name)


@operator
def split_dl_dataset(dldataset: Any, training_percent: Any, validation_percent: Any,
                     gen_param: Any) -> None:
    """Write 'split' ('train' / 'validation' / 'test') into every sample of ``dldataset``.

    Each class gets round(n·training_percent/100) training and round(n·validation_percent/100)
    validation samples, the rest test.  Classification: stratified by image_label_id;
    detection: each image counts for the rarest class among its boxes (images without boxes
    form their own group); anomaly detection: by anomaly_label_id (or anomaly_label);
    segmentation and others: one group.  Shuffled with a numpy
    Generator seeded from get_system('seed_rand').  gen_param: 'overwrite_split' (default
    'false': a dataset that already has a split raises 1301), 'model_type'."""
    from ..operators.system import get_system_value

    samples = _samples(dldataset, 1)
    tp = _percent(training_percent, 2, "training_percent")
    vp = _percent(validation_percent, 3, "validation_percent")
    if not 0 <= tp <= 100:
        raise wrong_value(2, f"training_percent must lie in 0 … 100, got {tp}")
    if not 0 <= vp <= 100:
        raise wrong_value(3, f"validation_percent must lie in 0 … 100, got {vp}")
    if tp + vp > 100:
        raise wrong_value(3, f"training_percent + validation_percent = {tp + vp} exceeds 100")
    gp = _gen_param(gen_param, 4, ("overwrite_split", "model_type"))
    overwrite = _bool_param(gp["overwrite_split"], 4, "overwrite_split") \
        if "overwrite_split" in gp else False
    if not samples:
        raise HOperatorError(H_ERR_DL_INVALID_DATASET, "the dataset has no samples to split")
    if "model_type" in gp:
        model_type = _str_param(gp["model_type"], 4, "gen_param 'model_type'")
        if model_type not in _MODEL_TYPES:
            raise wrong_value(4, f"gen_param 'model_type' must be one of {list(_MODEL_TYPES)}, "
                                 f"got {model_type!r}")
    else:
        model_type = _guess_model_type(samples)
    if not overwrite:
        done = [i for i, s in enumerate(samples) if "split" in s]
        if done:
            raise wrong_value(1, f"the dataset is already split (sample {done[0]} has 'split' = "
                                 f"{samples[done[0]]['split']!r}); pass gen_param "
                                 f"{{'overwrite_split': 'true'}} to split it anew")
    n = len(samples)
    if model_type == "classification":
        labels = []
        for i, s in enumerate(samples):
            v = s.get("image_label_id")
            v = to_tuple(v)
            if len(v) != 1 or not is_int(v[0]) or not -2**63 <= int(v[0]) < 2**63:
                raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                                     f"sample {i} has no (64-bit) integer 'image_label_id' (a "
                                     f"classification split needs one per sample)")
            labels.append(int(v[0]))
        group = np.asarray(labels, np.int64)
    elif model_type == "detection":
        per = []
        for i, s in enumerate(samples):
            v = to_tuple(s.get("bbox_label_id", []))
            if not all(is_int(x) for x in v):
                raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                                     f"sample {i}: 'bbox_label_id' must hold integers, got {v!r}")
            per.append([int(x) for x in v])
        counts: dict[int, int] = {}
        for v in per:
            for c in set(v):
                counts[c] = counts.get(c, 0) + 1
        none = min(counts, default=0) - 1  # a group id no class uses
        group = np.asarray([min(set(v), key=lambda c: (counts[c], c)) if v else none
                            for v in per], np.int64)
    elif model_type == "anomaly_detection":
        key = "anomaly_label_id" if "anomaly_label_id" in samples[0] else "anomaly_label"
        vals = []
        for i, s in enumerate(samples):
            v = to_tuple(s.get(key))
            if len(v) != 1 or not (is_int(v[0]) or is_str(v[0])):
                raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                                     f"sample {i} has no single '{key}' (an anomaly-detection "
                                     f"split is stratified by it)")
            vals.append(str(v[0]))
        group = np.unique(np.asarray(vals), return_inverse=True)[1].astype(np.int64)
    else:
        group = np.zeros(n, np.int64)
    rng = np.random.default_rng(int(get_system_value("seed_rand")))
    out: list = [None] * n
    for g in np.unique(group):
        _split_group(np.flatnonzero(group == g), tp, vp, rng, out)
    for s, sp in zip(samples, out):  # everything validated: now write
        s["split"] = sp


# --------------------------------------------------------------------------------------------
# find_dl_samples
# --------------------------------------------------------------------------------------------
def _eq(a: Any, b: Any) -> bool:
    a, b = py_value(a), py_value(b)
    if is_str(a) or is_str(b):
        return is_str(a) and is_str(b) and str(a) == str(b)
    if is_number(a) and is_number(b):
        return bool(a == b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return False  # an image is no key value
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - incomparable values are unequal
        return False


@operator
def find_dl_samples(samples: Any, key_name: Any, key_value: Any, mode: Any) -> list[int]:
    """Indices (0-based) of the samples whose entry ``key_name`` fits ``key_value``.
    Mode 'match': the entry, as a tuple, equals key_value; 'or': the entry is a single value
    equal to one of key_value; 'contain': the entry tuple contains at least one of key_value.
    Samples without the key never match."""
    if isinstance(samples, dict) and "samples" in samples:
        raise wrong_type(1, "samples is the list of samples (dldataset['samples']), not the "
                            "dataset")
    if isinstance(samples, dict):  # one sample (a one-sample dataset read from .hdict)
        samples = [samples]
    if not isinstance(samples, (list, tuple)):
        raise wrong_type(1, f"samples must be a list of sample dicts, got "
                            f"{type(samples).__name__}")
    for i, s in enumerate(samples):
        if not isinstance(s, dict):
            raise wrong_type(1, f"sample {i} is a {type(s).__name__}, not a dict")
    key = _str_param(key_name, 2, "key_name")
    values = to_tuple(key_value)
    for v in values:
        if not (is_str(v) or is_number(v) or isinstance(v, (bool, np.bool_))):
            raise wrong_type(3, f"key_value holds numbers or strings, got {type(v).__name__}")
    m = _str_param(mode, 4, "mode")
    if m not in ("match", "or", "contain"):
        raise wrong_value(4, f"mode must be 'match', 'or' or 'contain', got {m!r}")
    out = []
    for i, s in enumerate(samples):
        if key not in s:
            continue
        entry = s[key]
        tup = to_tuple(entry) if not (isinstance(entry, np.ndarray) and entry.ndim > 1) else None
        if tup is None:
            continue
        if m == "match":
            ok = len(tup) == len(values) and all(_eq(a, b) for a, b in zip(tup, values))
        elif m == "or":
            ok = len(tup) == 1 and any(_eq(tup[0], b) for b in values)
        else:
            ok = any(_eq(a, b) for a in tup for b in values)
        if ok:
            out.append(i)
    return out


# --------------------------------------------------------------------------------------------
# gen_dl_samples / gen_dl_samples_from_images / read_dl_samples
# --------------------------------------------------------------------------------------------
_RESTRICT = ("classification", "detection", "segmentation", "anomaly_detection",
             "image_only", "off")


def _as_hwc(img: np.ndarray) -> np.ndarray:
    return img[:, :, None] if img.ndim == 2 else img


def _label_image(path: str, hint: str) -> np.ndarray:
    lab = read_image(path, palette="index", hint=hint)
    if lab.ndim == 3:
        if not (lab == lab[:, :, :1]).all():
            raise HOperatorError(H_ERR_CNN_INVALID_LABELS,
                                 f"label image '{path}' is a color image with different "
                                 f"channels; a label image holds one class id per pixel")
        lab = np.ascontiguousarray(lab[:, :, 0])
    if not np.issubdtype(lab.dtype, np.integer):
        raise HOperatorError(H_ERR_CNN_INVALID_LABELS,
                             f"label image '{path}' has sample type {lab.dtype}, not integer")
    return lab


def _sample_keys(i: int, s: dict, restrict: str, has_seg_dir: bool) -> list[str]:
    want_cls = restrict == "classification"
    want_det = restrict == "detection"
    want_seg = restrict == "segmentation"
    keys = []
    if want_cls or (restrict == "off" and "image_label_id" in s):
        if "image_label_id" not in s:
            raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                                 f"sample {i} has no 'image_label_id' (restrict_keys_dlsample "
                                 f"'classification')")
        keys.append("image_label_id")
    if want_det or (restrict == "off" and "bbox_label_id" in s):
        if "bbox_label_id" not in s:
            raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                                 f"sample {i} has no 'bbox_label_id' (restrict_keys_dlsample "
                                 f"'detection')")
        r1 = [k for k in BBOX_RECT1_KEYS if k in s]
        r2 = [k for k in BBOX_RECT2_KEYS if k in s]
        if len(r1) not in (0, 4) or len(r2) not in (0, 5) or not (r1 or r2):
            raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                                 f"sample {i} needs all of {BBOX_RECT1_KEYS} or all of "
                                 f"{BBOX_RECT2_KEYS}, has {r1 + r2}")
        n = len(to_tuple(s["bbox_label_id"]))
        for k in r1 + r2:
            if len(to_tuple(s[k])) != n:
                raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                                     f"sample {i}: '{k}' holds {len(to_tuple(s[k]))} values "
                                     f"for {n} bbox_label_id")
        keys += ["bbox_label_id", *r1, *r2]
    if want_seg or (restrict == "off" and "segmentation_file_name" in s and has_seg_dir):
        if "segmentation_file_name" not in s or not is_str(s["segmentation_file_name"]):
            raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                                 f"sample {i} has no string 'segmentation_file_name' "
                                 f"(restrict_keys_dlsample 'segmentation')")
        keys.append("segmentation_image")
    return keys


@operator
def gen_dl_samples(dldataset: Any, sample_indices: Any, restrict_keys_dlsample: Any,
                   gen_param: Any) -> list[dict]:
    """DLSample dicts (image read from the file, plus labels) for ``sample_indices``.

    'image' is ``(H, W, C)`` in the file's sample type (C = 1 or 3); restrict_keys_dlsample
    chooses the label keys: 'classification' (image_label_id), 'detection' (bbox_label_id and
    the box keys), 'segmentation' (segmentation_image, read from segmentation_dir),
    'image_only', 'off' (every label the sample has).  'anomaly_detection' is not supported
    (7914).  gen_param {'image_dir': folder, 'segmentation_dir': folder} reads the files from
    other folders than the dataset names (e.g. a dataset written on Windows)."""
    samples = _samples(dldataset, 1)
    idx = _indices(sample_indices, len(samples))
    restrict = _str_param(restrict_keys_dlsample, 3, "restrict_keys_dlsample")
    if restrict not in _RESTRICT:
        raise wrong_value(3, f"restrict_keys_dlsample must be one of {list(_RESTRICT)}, "
                             f"got {restrict!r}")
    if restrict == "anomaly_detection":
        raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                             "restrict_keys_dlsample 'anomaly_detection' is not supported")
    gp = _gen_param(gen_param, 4, ("image_dir", "segmentation_dir"))
    if "image_dir" in gp:
        img_dir = _str_param(gp["image_dir"], 4, "gen_param 'image_dir'")
        img_hint = f" (image_dir from gen_param 'image_dir' = '{img_dir}')"
    else:
        img_dir = dldataset.get("image_dir")
        if not is_str(img_dir):
            raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                                 "the dataset has no string 'image_dir' (or pass gen_param "
                                 "{'image_dir': folder})")
        img_hint = (f"; the dataset's image_dir is '{img_dir}': to read the images from "
                    f"another folder pass gen_param {{'image_dir': '/path/to/images'}}")
    seg_dir = None
    if "segmentation_dir" in gp:
        seg_dir = _str_param(gp["segmentation_dir"], 4, "gen_param 'segmentation_dir'")
        seg_hint = f" (segmentation_dir from gen_param 'segmentation_dir' = '{seg_dir}')"
    elif is_str(dldataset.get("segmentation_dir")):
        seg_dir = str(dldataset["segmentation_dir"])
        seg_hint = (f"; the dataset's segmentation_dir is '{seg_dir}': to read the label images "
                    f"from another folder pass gen_param {{'segmentation_dir': '/path'}}")
    plans = []
    for i in idx:
        s = samples[i]
        if not is_str(s.get("image_file_name")):
            raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                                 f"sample {i} has no string 'image_file_name'")
        if not is_int(s.get("image_id")):
            raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                                 f"sample {i} has no integer 'image_id'")
        keys = _sample_keys(i, s, restrict, seg_dir is not None)
        if "segmentation_image" in keys and seg_dir is None:
            raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                                 "the dataset has no 'segmentation_dir' (or pass gen_param "
                                 "{'segmentation_dir': folder})")
        plans.append((i, s, keys))
    out = []
    for i, s, keys in plans:
        img = read_image(_natural_join(img_dir, str(s["image_file_name"])),
                         hint=f" (sample {i}, image_id {s['image_id']}){img_hint}")
        d: dict = {"image": _as_hwc(img), "image_id": int(s["image_id"])}
        for k in keys:
            if k == "segmentation_image":
                d[k] = _label_image(_natural_join(seg_dir, str(s["segmentation_file_name"])),
                                    f" (sample {i}, image_id {s['image_id']}){seg_hint}")
                if d[k].shape != img.shape[:2]:
                    raise HOperatorError(H_ERR_CNN_INVALID_LABELS,
                                         f"sample {i}: label image {d[k].shape} and image "
                                         f"{img.shape[:2]} differ in size")
            elif k == "image_label_id":
                v = to_tuple(s[k])
                d[k] = v[0] if len(v) == 1 else v
            else:
                d[k] = list(to_tuple(s[k]))
        out.append(d)
    return out


@operator
def gen_dl_samples_from_images(images: Any) -> list[dict]:
    """One DLSample {'image': (H, W, C), 'image_id': i} per image (numpy arrays, a list of them
    or an HObject); image_id counts from 0.  The arrays are copied."""
    ims = _image_list(images, 1)
    out = []
    for i, im in enumerate(ims):
        a = np.array(im)
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3)) or a.size == 0:
            raise wrong_type(1, f"image {i} has shape {a.shape}; an image is (H, W) or "
                                f"(H, W, C) with C = 1 or 3")
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise wrong_type(1, f"image {i} has dtype {a.dtype}, not a number type")
        out.append({"image": _as_hwc(a), "image_id": i})
    return out


@operator
def read_dl_samples(dldataset: Any, sample_indices: Any) -> list[dict]:
    """The DLSample dicts of ``sample_indices``: read from
    ``<dlsample_dir>/<sample['dlsample_file_name']>`` (.hdict files written by
    preprocess_dl_dataset) when the dataset has 'dlsample_dir', else generated from the raw
    files by gen_dl_samples(dldataset, sample_indices, 'off', []) (not preprocessed)."""
    samples = _samples(dldataset, 1)
    idx = _indices(sample_indices, len(samples))
    if "dlsample_dir" not in dldataset:
        return gen_dl_samples(dldataset, idx, "off", {})
    d = dldataset["dlsample_dir"]
    if not is_str(d):
        raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                             f"the dataset's 'dlsample_dir' must be a string, got {d!r}")
    paths = []
    for i in idx:
        name = samples[i].get("dlsample_file_name")
        if not is_str(name):
            raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                                 f"sample {i} has no string 'dlsample_file_name' (the dataset "
                                 f"has a 'dlsample_dir')")
        p = _natural_join(str(d), str(name))
        if not os.path.isfile(p):
            raise HOperatorError(H_ERR_FNF, f"DLSample file '{p}' of sample {i} not found")
        paths.append((i, p))
    try:
        from ..io.hdict import read_hdict
    except ImportError as err:  # pragma: no cover - hdict codec missing from this build
        raise HOperatorError(H_ERR_DL_FILE_READ,
                             f"cannot read DLSample files: the .hdict codec is not available "
                             f"({err})") from None
    out = []
    for i, p in paths:
        try:
            obj = read_hdict(p)
        except HOperatorError:
            raise
        except Exception as err:  # noqa: BLE001 - any codec failure is a read error here
            raise HOperatorError(H_ERR_DL_FILE_READ,
                                 f"cannot read DLSample file '{p}' of sample {i}: "
                                 f"{type(err).__name__}: {err}") from None
        if not isinstance(obj, dict):
            raise HOperatorError(H_ERR_DL_FILE_READ,
                                 f"DLSample file '{p}' of sample {i} holds no dict")
        out.append(obj)
    return out

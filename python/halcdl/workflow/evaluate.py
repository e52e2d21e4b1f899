"""evaluate_dl_model and the evaluation measures (classification, segmentation, detection).

``evaluate_dl_model(dldataset, dlmodel_handle, sample_select_method, sample_select_values,
gen_param)`` runs apply_dl_model in batches of the model's batch_size over the selected samples
(read with ``read_dl_samples``) and computes HALCON's measures for the model's type:

* classification: ``top1_error`` … ``topK_error``, ``precision``, ``recall``, ``f_score`` (the
  mean over the evaluated classes, and ``*_per_class``), ``absolute_confusion_matrix`` and
  ``relative_confusion_matrix`` (HALCON's orientation: **rows = predicted class, columns =
  ground-truth class**, in the order of the evaluated class ids; the relative matrix divides
  each column by its ground-truth count, so columns sum to 1);
* segmentation: ``pixel_accuracy``, ``mean_accuracy``, ``mean_iou``, ``class_iou``,
  ``class_pixel_accuracy``, ``frequency_weighted_iou``, ``pixel_confusion_matrix`` (rows =
  predicted, columns = ground truth, like the classification matrix);
* detection: dispatched to ``halcdl.workflow.evaluate_detection.evaluate_detection`` when that
  module exists, else HOperatorError 7914.

:func:`evaluate_segmentation` / :func:`segmentation_confusion_matrix` are the lower-level
segmentation helpers (results and samples in hand, matrix rows = ground truth as before; they
moved here from ``workflow/evaluation.py``, which re-exports them).  This is bookkeeping over
labels (confusion matrices by ``np.bincount``), not model arithmetic, so it lives above the
engine.  See docs/workflow.md.
"""

from __future__ import annotations

import importlib
import math
import re
from typing import Any, Iterable

import numpy as np

from ..errors import (
    H_ERR_CNN_INVALID_LABELS,
    H_ERR_CNN_INVALID_SHAPE,
    H_ERR_DL_CLASS_IDS_INVALID_OVERLAP,
    H_ERR_DL_INVALID_DATASET,
    H_ERR_DL_INVALID_SAMPLE_INDEX,
    H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM,
    H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
    HOperatorError,
)
from ..operators._tuple import (
    is_int,
    is_str,
    operator,
    py_value,
    to_tuple,
    wrong_type,
    wrong_value,
)

__all__ = [
    "evaluate_dl_model",
    "evaluate_segmentation",
    "segmentation_confusion_matrix",
    "classification_measures",
]


def _label_images(items: Any, what: str) -> list[np.ndarray]:
    """(H, W) id images from DLResult / DLSample dicts (key ``segmentation_image``) or from
    arrays; one item or a list of them."""
    if isinstance(items, (dict, np.ndarray)):
        items = [items]
    out = []
    for i, it in enumerate(items):
        if isinstance(it, dict):
            if "segmentation_image" not in it:
                raise HOperatorError(H_ERR_CNN_INVALID_SHAPE,
                                     f"{what} {i} has no key 'segmentation_image'")
            it = it["segmentation_image"]
        a = np.asarray(it)
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[:, :, 0]
        if a.ndim != 2 or not (np.issubdtype(a.dtype, np.integer)
                               or np.issubdtype(a.dtype, np.floating)):
            raise HOperatorError(H_ERR_CNN_INVALID_SHAPE,
                                 f"{what} {i}: expected an (H, W) image of class ids, got "
                                 f"shape {a.shape} dtype {a.dtype}")
        if np.issubdtype(a.dtype, np.floating):
            if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
                raise HOperatorError(H_ERR_CNN_INVALID_LABELS,
                                     f"{what} {i}: class ids must be integers")
        out.append(a.astype(np.int64, copy=False))
    return out


def _index_image(ids: np.ndarray, sorted_ids: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Class index (position in class_ids) of every pixel; −1 where the id is no class id."""
    pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == ids, order[pos], -1)


def _class_model_args(class_ids: Any, ignore_class_ids: Any) -> tuple[list[int], list[int]]:
    params = getattr(class_ids, "params", None)  # a DLModel handle
    if isinstance(params, dict):
        if ignore_class_ids is None:
            ignore_class_ids = params.get("ignore_class_ids", [])
        class_ids = params["class_ids"]
    if isinstance(class_ids, (int, np.integer)):
        class_ids = [class_ids]
    ids = [int(c) for c in class_ids]
    ign = [] if ignore_class_ids is None else (
        [int(ignore_class_ids)] if isinstance(ignore_class_ids, (int, np.integer))
        else [int(c) for c in ignore_class_ids])
    if not ids or len(set(ids)) != len(ids):
        raise HOperatorError(H_ERR_CNN_INVALID_LABELS,
                             f"class_ids must be a non-empty list of unique ids, got {ids}")
    overlap = sorted(set(ids) & set(ign))
    if overlap:
        raise HOperatorError(H_ERR_DL_CLASS_IDS_INVALID_OVERLAP,
                             f"ids {overlap} are both class ids and ignore class ids")
    return ids, ign


def segmentation_confusion_matrix(results: Any, ground_truth: Any, class_ids: Any,
                                  ignore_class_ids: Iterable[int] | None = None) -> np.ndarray:
    """K × K pixel counts (int64): row = ground-truth class, column = predicted class, in the
    order of ``class_ids``.  Pixels whose ground truth is an ignore class id are not counted.
    ``class_ids`` may be a model handle (its class_ids and ignore_class_ids are used)."""
    ids, ign = _class_model_args(class_ids, ignore_class_ids)
    preds = _label_images(results, "result")
    gts = _label_images(ground_truth, "ground truth")
    if len(preds) != len(gts):
        raise HOperatorError(H_ERR_CNN_INVALID_SHAPE,
                             f"{len(preds)} results but {len(gts)} ground-truth images")
    k = len(ids)
    arr = np.asarray(ids, dtype=np.int64)
    order = np.argsort(arr, kind="stable")
    sorted_ids = arr[order]
    ign_arr = np.asarray(sorted(ign), dtype=np.int64)
    cm = np.zeros((k, k), dtype=np.int64)
    for i, (p, g) in enumerate(zip(preds, gts)):
        if p.shape != g.shape:
            raise HOperatorError(H_ERR_CNN_INVALID_SHAPE,
                                 f"sample {i}: result {p.shape} and ground truth {g.shape} "
                                 f"differ in size")
        gi = _index_image(g, sorted_ids, order)
        pi = _index_image(p, sorted_ids, order)
        ignored = np.isin(g, ign_arr) if len(ign_arr) else np.zeros(g.shape, dtype=bool)
        bad_gt = (gi < 0) & ~ignored
        if bad_gt.any():
            raise HOperatorError(H_ERR_CNN_INVALID_LABELS,
                                 f"sample {i}: ground truth holds id {int(g[bad_gt][0])}, "
                                 f"neither a class id nor an ignore class id")
        keep = ~ignored
        if (pi[keep] < 0).any():
            raise HOperatorError(H_ERR_CNN_INVALID_LABELS,
                                 f"sample {i}: result holds id {int(p[keep][pi[keep] < 0][0])}, "
                                 f"which is not a class id")
        cm += np.bincount(gi[keep] * k + pi[keep], minlength=k * k).reshape(k, k)
    return cm


def evaluate_segmentation(results: Any, ground_truth: Any, class_ids: Any,
                          ignore_class_ids: Iterable[int] | None = None) -> dict:
    """Segmentation measures over all pixels of all samples (ignored pixels excluded).

    ``results``: DLResult dicts from apply_dl_model (or (H, W) arrays of class ids);
    ``ground_truth``: DLSample dicts with ``segmentation_image`` (or arrays), in the same
    order; ``class_ids``: the model's class ids, or the model handle itself (then its
    ``ignore_class_ids`` are used unless given).

    Returns a dict (HALCON's measure names):

    - ``pixel_accuracy``: correctly classified pixels / counted pixels
    - ``class_pixel_accuracy``: per class, correct / ground-truth pixels of that class
      (NaN for a class absent from the ground truth)
    - ``mean_accuracy``: mean of class_pixel_accuracy over the classes present
    - ``class_iou``: per class, TP / (TP + FP + FN) (NaN when the class appears neither in
      the ground truth nor in the results)
    - ``mean_iou``: mean of class_iou over the classes that appear (NaN entries skipped)
    - ``frequency_weighted_iou``: class_iou weighted by the ground-truth pixel frequency
    - ``confusion_matrix``: K × K int64 counts (rows ground truth, columns prediction)
    - ``class_ids``: the order of the per-class lists
    """
    ids, ign = _class_model_args(class_ids, ignore_class_ids)
    cm = segmentation_confusion_matrix(results, ground_truth, ids, ign)
    tp = np.diag(cm).astype(np.float64)
    gt = cm.sum(axis=1).astype(np.float64)
    pred = cm.sum(axis=0).astype(np.float64)
    total = float(cm.sum())
    union = gt + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    present = ~np.isnan(iou)
    return {
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "class_pixel_accuracy": acc.tolist(),
        "mean_accuracy": float(np.nanmean(acc)) if (gt > 0).any() else float("nan"),
        "class_iou": iou.tolist(),
        "mean_iou": float(iou[present].mean()) if present.any() else float("nan"),
        "frequency_weighted_iou": float(np.nansum(gt / total * iou)) if total
        else float("nan"),
        "confusion_matrix": cm,
        "class_ids": list(ids),
    }


# --------------------------------------------------------------------------------------------
# evaluate_dl_model
# --------------------------------------------------------------------------------------------
_CLASSIFICATION_ALL = ("top1_error", "precision", "recall", "f_score",
                       "absolute_confusion_matrix", "relative_confusion_matrix")
_SEGMENTATION_ALL = ("pixel_accuracy", "mean_accuracy", "mean_iou", "class_iou",
                     "class_pixel_accuracy", "frequency_weighted_iou", "pixel_confusion_matrix")
_TOPK = re.compile(r"^top([1-9][0-9]*)_error$")
_GEN_KEYS = ("measures", "class_ids_to_evaluate", "class_names_to_evaluate", "show_progress",
             # detection (passed on to the detection evaluation)
             "iou_threshold", "max_num_detections", "area_ranges", "detailed_evaluation",
             "interpolate_pr_curves", "allocation_block_length")


def read_samples(dldataset: dict, indices: list[int]) -> list[dict]:
    """The DLSample dicts of ``indices`` (``halcdl.workflow.dataset.read_dl_samples``).
    train.py and evaluate.py read through this one function."""
    from .dataset import read_dl_samples  # noqa: PLC0415  (lazy: another module of the workflow)

    return read_dl_samples(dldataset, list(indices))


def check_dataset(dldataset: Any, pos: int) -> list:
    """The samples list of a DLDataset dict (7925 when it is not one)."""
    if not isinstance(dldataset, dict):
        raise wrong_type(pos, f"dldataset must be a dict (DLDataset), got "
                              f"{type(dldataset).__name__}")
    samples = dldataset.get("samples")
    if not isinstance(samples, (list, tuple)):
        raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                             "the dataset has no list under key 'samples'")
    for i, s in enumerate(samples):
        if not isinstance(s, dict):
            raise HOperatorError(H_ERR_DL_INVALID_DATASET, f"dataset sample {i} is not a dict")
    return list(samples)


def select_samples(samples: list, method: Any, values: Any, pos: int = 3) -> list[int]:
    """Dataset indices chosen by 'split' | 'image_ids' | 'sample_indices'."""
    m = to_tuple(method)
    if len(m) != 1 or not is_str(m[0]):
        raise wrong_type(pos, f"sample_select_method must be one string, got {method!r}")
    m = str(m[0])
    vals = to_tuple(values)
    if m == "split":
        if not vals or not all(is_str(v) for v in vals):
            raise wrong_type(pos + 1, f"sample_select_values for 'split' must be split names "
                                      f"('train', 'validation', 'test'), got {values!r}")
        wanted = {str(v) for v in vals}
        missing = [i for i, s in enumerate(samples) if "split" not in s]
        if missing:
            raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                                 f"dataset sample {missing[0]} has no key 'split' "
                                 f"(call split_dl_dataset first)")
        idx = [i for i, s in enumerate(samples) if str(s["split"]) in wanted]
    elif m == "image_ids":
        if not vals or not all(is_int(v) for v in vals):
            raise wrong_type(pos + 1, f"sample_select_values for 'image_ids' must be integers, "
                                      f"got {values!r}")
        where: dict[int, int] = {}
        for i, s in enumerate(samples):
            if "image_id" in s and is_int(py_value(s["image_id"])):
                where.setdefault(int(s["image_id"]), i)
        idx = []
        for v in vals:
            if int(v) not in where:
                raise HOperatorError(H_ERR_DL_INVALID_SAMPLE_INDEX,
                                     f"no sample with image_id {int(v)} in the dataset")
            idx.append(where[int(v)])
    elif m == "sample_indices":
        if not vals or not all(is_int(v) for v in vals):
            raise wrong_type(pos + 1, f"sample_select_values for 'sample_indices' must be "
                                      f"integers, got {values!r}")
        idx = [int(v) for v in vals]
        bad = [v for v in idx if not 0 <= v < len(samples)]
        if bad:
            raise HOperatorError(H_ERR_DL_INVALID_SAMPLE_INDEX,
                                 f"sample index {bad[0]} out of range 0..{len(samples) - 1}")
    else:
        raise wrong_value(pos, f"sample_select_method must be 'split', 'image_ids' or "
                               f"'sample_indices', got {m!r}")
    if not idx:
        raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                             f"no samples selected by {m!r} = {vals!r}")
    return idx


def gen_param_dict(gen_param: Any, pos: int, allowed: Iterable[str] | None = None,
                   what: str = "gen_param") -> dict:
    """A GenParam argument as a dict: a dict, [] / None, or a [names, values] pair of lists.
    Names outside ``allowed`` raise 7911."""
    if gen_param is None or (isinstance(gen_param, (list, tuple)) and len(gen_param) == 0):
        d: dict = {}
    elif isinstance(gen_param, dict):
        d = dict(gen_param)
    elif (isinstance(gen_param, (list, tuple)) and len(gen_param) == 2
          and isinstance(gen_param[0], (list, tuple))):
        names, values = list(gen_param[0]), list(gen_param[1]) \
            if isinstance(gen_param[1], (list, tuple)) else [gen_param[1]]
        if len(names) != len(values):
            raise HOperatorError(1400 + pos, f"{what}: {len(names)} names but "
                                             f"{len(values)} values")
        d = dict(zip(names, values))
    else:
        raise wrong_type(pos, f"{what} must be a dict or [], got {type(gen_param).__name__}")
    for k in d:
        if not is_str(k):
            raise wrong_type(pos, f"{what} keys must be strings, got {k!r}")
        if allowed is not None and k not in allowed:
            raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM,
                                 f"unsupported {what} key {k!r} (supported: "
                                 f"{', '.join(allowed)})")
    return {str(k): v for k, v in d.items()}


def _measures(value: Any, model_type: str, num_classes: int) -> list[str]:
    """The measure names asked for ('all' expands to the type's standard set)."""
    names = ["all"] if value is None else to_tuple(value)
    if not names or not all(is_str(n) for n in names):
        raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                             f"'measures' must be measure names, got {value!r}")
    allset = _CLASSIFICATION_ALL if model_type == "classification" else _SEGMENTATION_ALL
    out: list[str] = []
    for n in map(str, names):
        if n == "all":
            out.extend(allset)
            continue
        if model_type == "classification":
            k = _TOPK.match(n)
            if k:
                if int(k.group(1)) > num_classes:
                    raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                                         f"measure {n!r}: the model has only {num_classes} "
                                         f"classes")
                out.append(n)
                continue
        if n not in allset:
            raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                                 f"unsupported measure {n!r} for a {model_type} model "
                                 f"(supported: {', '.join(allset)}"
                                 f"{', topK_error' if model_type == 'classification' else ''})")
        out.append(n)
    return list(dict.fromkeys(out))


def _classes_to_evaluate(gp: dict, class_ids: list[int], class_names: list[str]) -> list[int]:
    ids_v, names_v = gp.get("class_ids_to_evaluate"), gp.get("class_names_to_evaluate")
    if ids_v is not None and names_v is not None:
        raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                             "give class_ids_to_evaluate or class_names_to_evaluate, not both")
    if ids_v is not None and to_tuple(ids_v) not in (["global"], ["all"]):
        ids = to_tuple(ids_v)
        if not ids or not all(is_int(c) for c in ids):
            raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                                 f"class_ids_to_evaluate must be class ids, got {ids_v!r}")
        unknown = [int(c) for c in ids if int(c) not in class_ids]
        if unknown or len(set(ids)) != len(ids):
            raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                                 f"class_ids_to_evaluate: {unknown or ids} are not unique class "
                                 f"ids of the model ({class_ids})")
        return [int(c) for c in ids]
    if names_v is not None and to_tuple(names_v) not in (["global"], ["all"]):
        names = to_tuple(names_v)
        unknown = [n for n in names if n not in class_names]
        if not names or unknown or len(set(names)) != len(names):
            raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                                 f"class_names_to_evaluate: {unknown or names} are not unique "
                                 f"class names of the model ({class_names})")
        return [class_ids[class_names.index(n)] for n in names]
    return list(class_ids)


def classification_measures(predicted_ids: Any, ranked_ids: Any, ground_truth_ids: Any,
                            class_ids: list[int], measures: Iterable[str],
                            eval_class_ids: list[int] | None = None) -> dict:
    """Classification measures from predictions (``predicted_ids``: the top-1 class id per
    sample; ``ranked_ids``: (N, K) class ids by descending confidence, for topK_error) and
    the ground-truth ids.  Samples whose ground truth is not among ``eval_class_ids`` are
    left out; per-class lists follow ``eval_class_ids`` (precision/recall/f_score of a class
    with no prediction / no ground truth is 0, as scikit-learn's zero_division=0)."""
    eval_ids = list(class_ids) if eval_class_ids is None else list(eval_class_ids)
    gt = np.asarray(ground_truth_ids, dtype=np.int64).reshape(-1)
    pred = np.asarray(predicted_ids, dtype=np.int64).reshape(-1)
    ranked = np.asarray(ranked_ids, dtype=np.int64).reshape(len(gt), -1)
    keep = np.isin(gt, np.asarray(eval_ids, dtype=np.int64))
    gt, pred, ranked = gt[keep], pred[keep], ranked[keep]
    k = len(eval_ids)
    lookup = {c: i for i, c in enumerate(eval_ids)}
    gi = np.array([lookup[int(c)] for c in gt], dtype=np.int64)
    pi = np.array([lookup.get(int(c), -1) for c in pred], dtype=np.int64)
    inside = pi >= 0  # predictions of a class outside the evaluated ones count as wrong only
    cm = np.zeros((k, k), dtype=np.int64)  # rows predicted, columns ground truth
    np.add.at(cm, (pi[inside], gi[inside]), 1)
    tp = np.diag(cm).astype(np.float64)
    n_pred = np.bincount(pi[inside], minlength=k).astype(np.float64)
    n_gt = np.bincount(gi, minlength=k).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_pred > 0, tp / n_pred, 0.0)
        recall = np.where(n_gt > 0, tp / n_gt, 0.0)
        denom = precision + recall
        f_score = np.where(denom > 0, 2 * precision * recall / denom, 0.0)
        relative = np.where(n_gt[None, :] > 0, cm / n_gt[None, :], 0.0)
    out: dict = {}
    n = len(gt)
    for name in measures:
        topk = _TOPK.match(name)
        if topk:
            kk = int(topk.group(1))
            hit = (ranked[:, :kk] == gt[:, None]).any(axis=1) if n else np.zeros(0, bool)
            out[name] = float(1.0 - hit.mean()) if n else float("nan")
        elif name == "precision":
            out["precision"] = float(precision.mean())
            out["precision_per_class"] = precision.tolist()
        elif name == "recall":
            out["recall"] = float(recall.mean())
            out["recall_per_class"] = recall.tolist()
        elif name == "f_score":
            out["f_score"] = float(f_score.mean())
            out["f_score_per_class"] = f_score.tolist()
        elif name == "absolute_confusion_matrix":
            out[name] = cm
        elif name == "relative_confusion_matrix":
            out[name] = relative
    return out


def _ground_truth_labels(samples: list, indices: list, class_ids: list[int]) -> list[int]:
    out = []
    for s, i in zip(samples, indices):
        v = to_tuple(s.get("image_label_id")) if isinstance(s, dict) else []
        if len(v) != 1 or not is_int(v[0]):
            raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                                 f"dataset sample {i} has no single integer 'image_label_id'")
        if int(v[0]) not in class_ids:
            raise HOperatorError(H_ERR_DL_INVALID_DATASET,
                                 f"dataset sample {i}: image_label_id {int(v[0])} is not a "
                                 f"class id of the model ({class_ids})")
        out.append(int(v[0]))
    return out


def _evaluate_detection(results: list, samples: list, model: Any, gp: dict) -> dict:
    try:
        mod = importlib.import_module("halcdl.workflow.evaluate_detection")
    except ImportError:
        raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                             "detection evaluation is not available in this build "
                             "(halcdl.workflow.evaluate_detection is missing)") from None
    return mod.evaluate_detection(results, samples, dict(model.params), gp)


@operator
def evaluate_dl_model(dldataset: Any, dlmodel_handle: Any, sample_select_method: Any,
                      sample_select_values: Any, gen_param: Any) -> tuple[dict, dict]:
    """Evaluate a model on samples of a dataset: ``(evaluation_result, eval_params)``.

    ``sample_select_method``: 'split' (values: split names), 'image_ids' or 'sample_indices';
    ``gen_param``: a dict (or []) with 'measures' (default 'all'; classification also
    'top<K>_error'), 'class_ids_to_evaluate' / 'class_names_to_evaluate' (default all
    classes), 'show_progress' (accepted, ignored), detection keys passed on.  The samples are
    read with read_dl_samples and inferred with apply_dl_model in batches of the model's
    batch_size.  The model is not changed.  See docs/workflow.md for the measures."""
    from ..operators.dl_model import apply_dl_model, check_model  # noqa: PLC0415

    samples = check_dataset(dldataset, 1)
    m = check_model(dlmodel_handle, 2)
    idx = select_samples(samples, sample_select_method, sample_select_values, 3)
    gp = gen_param_dict(gen_param, 5, _GEN_KEYS)
    model_type = str(m.params["type"])
    class_ids = [int(c) for c in m.params["class_ids"]]
    class_names = [str(c) for c in m.params["class_names"]]
    eval_params: dict = {"evaluation_type": model_type, "class_ids": class_ids,
                         "class_names": class_names, "num_samples": len(idx)}
    if model_type == "detection":
        measures = to_tuple(gp.get("measures", "all"))
    else:
        measures = _measures(gp.get("measures"), model_type, len(class_ids))
        eval_ids = _classes_to_evaluate(gp, class_ids, class_names)
        eval_params["class_ids_to_evaluate"] = eval_ids
        eval_params["class_names_to_evaluate"] = [class_names[class_ids.index(c)]
                                                  for c in eval_ids]
    eval_params["measures"] = list(measures)
    if model_type == "classification":
        # the ground truth first: a bad label fails before any inference
        gt = _ground_truth_labels([samples[i] for i in idx], idx, class_ids)
    batch = max(1, int(m.params["batch_size"]))
    if model_type == "segmentation":
        ign = [int(c) for c in m.params.get("ignore_class_ids", [])]
        cm = np.zeros((len(class_ids), len(class_ids)), dtype=np.int64)
        for start in range(0, len(idx), batch):
            chunk = idx[start:start + batch]
            batch_samples = read_samples(dldataset, chunk)
            results = apply_dl_model(m, batch_samples, ["segmentation_image"])
            cm += segmentation_confusion_matrix(results, batch_samples, class_ids, ign)
        return _segmentation_result(cm, class_ids, eval_ids, measures), eval_params
    results_all: list = []
    samples_all: list = []
    for start in range(0, len(idx), batch):
        chunk = idx[start:start + batch]
        batch_samples = read_samples(dldataset, chunk)
        keys = [] if model_type == "detection" else ["classification_class_ids"]
        results_all.extend(apply_dl_model(m, batch_samples, keys))
        if model_type == "detection":
            samples_all.extend(batch_samples)
    if model_type == "detection":
        return _evaluate_detection(results_all, samples_all, m, gp), eval_params
    if model_type != "classification":
        raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
                             f"evaluate_dl_model does not support models of type {model_type!r}")
    ranked = np.array([r["classification_class_ids"] for r in results_all], dtype=np.int64)
    result = classification_measures(ranked[:, 0], ranked, gt, class_ids, measures, eval_ids)
    return result, eval_params


def _segmentation_result(cm: np.ndarray, class_ids: list[int], eval_ids: list[int],
                         measures: Iterable[str]) -> dict:
    """The segmentation measures from a K × K pixel confusion matrix (rows ground truth)."""
    sel = [class_ids.index(c) for c in eval_ids]
    tp = np.diag(cm).astype(np.float64)[sel]
    gt = cm.sum(axis=1).astype(np.float64)[sel]
    pred = cm.sum(axis=0).astype(np.float64)[sel]
    total = float(cm.sum())
    union = gt + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    present = ~np.isnan(iou)
    all_tp = float(np.trace(cm))
    values = {
        "pixel_accuracy": all_tp / total if total else float("nan"),
        "class_pixel_accuracy": acc.tolist(),
        "mean_accuracy": float(np.nanmean(acc)) if (gt > 0).any() else float("nan"),
        "class_iou": iou.tolist(),
        "mean_iou": float(iou[present].mean()) if present.any() else float("nan"),
        "frequency_weighted_iou": float(np.nansum(gt / total * iou)) if total
        else float("nan"),
        "pixel_confusion_matrix": cm.T.copy(),  # HALCON's orientation: rows predicted
    }
    return {k: values[k] for k in measures}

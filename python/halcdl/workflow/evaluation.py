"""Evaluation measures computed from apply_dl_model's results and the ground truth.

:func:`evaluate_segmentation` gives the measures HALCON's ``evaluate_dl_model`` reports for
segmentation models (pixel accuracy, per-class and mean IoU, …) from DLResult and DLSample
dicts.  This is bookkeeping over label images (a confusion matrix by ``np.bincount``), not
model arithmetic, so it lives above the engine.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from ..errors import (
    H_ERR_CNN_INVALID_LABELS,
    H_ERR_CNN_INVALID_SHAPE,
    H_ERR_DL_CLASS_IDS_INVALID_OVERLAP,
    HOperatorError,
)

__all__ = ["evaluate_segmentation", "segmentation_confusion_matrix"]


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

"""Detection measures of evaluate_dl_model: mean average precision as COCO defines it
(docs/detection.md).

``evaluate_detection(results, samples, model_params, gen_param)`` takes apply_dl_model's
DLResult dicts and the matching DLSample dicts (ground truth ``bbox_row1`` … ``bbox_col2``,
``bbox_label_id``) and returns HALCON's nested result::

    result['max_num_detections_all']['area_all']['mean_ap']
    result[...][...]['ap_iou_05'], ['ap_iou_055'], … ['ap_iou_095']   (mean over classes)
    result[...][...]['class_ap']                       (per class, over the IoU thresholds)
    result[...][...]['class_ap_iou_05'] …              (per class at one threshold)

Per class and IoU threshold t: per image the class's detections by descending confidence
(at most max_num_detections of them), each matched greedily to the unmatched ground-truth box
of best IoU ≥ t; ground truth outside the area range is ignored (and so are detections
matched to it or, unmatched, outside the range); over all images the detections sorted by
confidence (stable), cumulative TP / FP, precision made monotone (interpolate_pr_curves),
AP = mean precision at the 101 recall points 0, 0.01, …, 1.  mean_ap averages over the
classes that have ground truth and over the thresholds.  This is exactly pycocotools'
COCOeval (bbox), which the tests compare against.

rectangle2 (model_params instance_type 'rectangle2', boxes bbox_row, bbox_col, bbox_phi,
bbox_length1, bbox_length2): the same with the oriented IoU of the engine (convex polygon
clipping, ``core.det_iou_matrix``) and area 4·length1·length2, plus SoAP, the score of
angle precision of WORKFLOW.md: SoAP = 1 − mean |Δφ| / π over the true positives, Δφ the
angle between a true positive and its ground truth taken modulo 2π into [0, π] (modulo π into
[0, π/2] with ignore_direction 'true').  Per class and IoU threshold the mean over all
true positives; ``soap`` averages over the classes with true positives (classes of
class_ids_no_orientation are left out: their boxes have phi 0) and the thresholds,
``soap_iou_05`` … per threshold, ``class_soap`` per class (−1 without true positives).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import (
    H_ERR_DL_INPUTS_MISSING,
    H_ERR_CNN_INVALID_INPUT_DATA,
    H_ERR_DL_INPUT_WRONG_VALUES,
    HOperatorError,
)

__all__ = ["evaluate_detection", "detection_iou", "rect2_iou"]

DEFAULT_IOU = [round(0.5 + 0.05 * i, 2) for i in range(10)]
_REC = np.linspace(0.0, 1.0, 101)


def _key(t: float) -> str:
    """0.5 → '05', 0.55 → '055', 0.95 → '095'."""
    return ("%.2f" % t).rstrip("0").replace(".", "") if t != 0 else "0"


def detection_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of (n, 4) and (m, 4) boxes (row1, col1, row2, col2)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)[:, None, :]
    b = np.asarray(b, np.float64).reshape(-1, 4)[None, :, :]
    ih = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iw = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = ih * iw
    ua = ((a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
          + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ua > 0, inter / np.where(ua > 0, ua, 1), 0.0)


RECT1_KEYS = ("bbox_row1", "bbox_col1", "bbox_row2", "bbox_col2")
# the engine's order of a rectangle2 box
RECT2_KEYS = ("bbox_row", "bbox_col", "bbox_length1", "bbox_length2", "bbox_phi")


def rect2_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of (n, 5) and (m, 5) rectangle2 boxes (row, col, length1, length2, phi): the
    engine's oriented IoU (polygon clipping in C++)."""
    from .._native import core  # noqa: PLC0415

    a = np.ascontiguousarray(np.asarray(a, np.float32).reshape(-1, 5))
    b = np.ascontiguousarray(np.asarray(b, np.float32).reshape(-1, 5))
    return np.asarray(core.det_iou_matrix(a, b), np.float64).reshape(len(a), len(b))


def _area(b: np.ndarray) -> np.ndarray:
    if b.shape[1] == 5:
        return 4.0 * b[:, 2] * b[:, 3]
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def _boxes(d: dict, i: int, what: str, label_key: str, extra: str | None = None,
           rect2: bool = False):
    nb = 5 if rect2 else 4
    keys = (RECT2_KEYS if rect2 else RECT1_KEYS) + (label_key,) + ((extra,) if extra else ())
    for k in keys:
        if k not in d:
            raise HOperatorError(H_ERR_DL_INPUTS_MISSING, f"{what} {i} has no key {k!r}")
    try:
        cols = [np.asarray(d[k], np.float64).reshape(-1) for k in keys]
    except (TypeError, ValueError):
        raise HOperatorError(H_ERR_CNN_INVALID_INPUT_DATA,
                             f"{what} {i}: the bbox entries must be numbers") from None
    n = len(cols[0])
    if any(len(c) != n for c in cols):
        raise HOperatorError(H_ERR_CNN_INVALID_INPUT_DATA,
                             f"{what} {i}: the bbox lists have unequal lengths")
    if not all(np.isfinite(c).all() for c in cols):
        raise HOperatorError(H_ERR_CNN_INVALID_INPUT_DATA,
                             f"{what} {i}: NaN or infinite bbox values")
    return np.stack(cols[:nb], 1), cols[nb].astype(np.int64), (cols[nb + 1] if extra else None)


def _gen(gen_param: Any) -> dict:
    if gen_param is None or (isinstance(gen_param, (list, tuple)) and len(gen_param) == 0):
        return {}
    if isinstance(gen_param, (list, tuple)) and len(gen_param) == 1 and isinstance(
            gen_param[0], dict):
        gen_param = gen_param[0]
    if not isinstance(gen_param, dict):
        raise HOperatorError(H_ERR_DL_INPUT_WRONG_VALUES, "gen_param must be a dict")
    return gen_param


def _image_eval(det_b, det_s, gt_b, gt_area, lo, hi, max_det, thrs, period=0.0):
    """COCOeval.evaluateImg for one image and class: (scores, matched (T, D), ignored
    (T, D), number of non-ignored ground-truth boxes, |Δφ| (T, D) of the matches)."""
    order = np.argsort(-det_s, kind="mergesort")[:max_det]
    db, ds = det_b[order], det_s[order]
    g_ig = (gt_area < lo) | (gt_area > hi)
    gorder = np.argsort(g_ig, kind="mergesort")
    gb, g_ig = gt_b[gorder], g_ig[gorder]
    T, D, G = len(thrs), len(db), len(gb)
    dtm = np.zeros((T, D), bool)
    dt_ig = np.zeros((T, D), bool)
    dphi = np.zeros((T, D))
    if G and D:
        ious = rect2_iou(db, gb) if db.shape[1] == 5 else detection_iou(db, gb)
        gtm = np.zeros((T, G), bool)
        for ti, t in enumerate(thrs):
            for di in range(D):
                iou = min(t, 1 - 1e-10)
                m = -1
                for gi in range(G):
                    if gtm[ti, gi]:
                        continue
                    if m > -1 and not g_ig[m] and g_ig[gi]:
                        break
                    if ious[di, gi] < iou:
                        continue
                    iou, m = ious[di, gi], gi
                if m == -1:
                    continue
                dt_ig[ti, di] = g_ig[m]
                dtm[ti, di] = True
                gtm[ti, m] = True
                if period:
                    x = np.mod(db[di, 4] - gb[m, 4], period)
                    dphi[ti, di] = min(x, period - x)
    d_area = _area(db) if D else np.zeros(0)
    out_rng = (d_area < lo) | (d_area > hi)
    dt_ig = dt_ig | (~dtm & out_rng[None, :])
    return ds, dtm, dt_ig, int((~g_ig).sum()), dphi


def _ap(scores, dtm, dt_ig, npig, interpolate):
    """AP per threshold (T,) from the concatenated detections of all images; -1 when the
    class has no ground truth."""
    T = dtm.shape[0]
    if npig == 0:
        return np.full(T, -1.0)
    order = np.argsort(-scores, kind="mergesort")
    dtm, dt_ig = dtm[:, order], dt_ig[:, order]
    tps = np.cumsum(dtm & ~dt_ig, axis=1).astype(np.float64)
    fps = np.cumsum(~dtm & ~dt_ig, axis=1).astype(np.float64)
    out = np.zeros(T)
    for t in range(T):
        tp, fp = tps[t], fps[t]
        rc = tp / npig
        pr = tp / (fp + tp + np.spacing(1))
        if interpolate:
            pr = np.maximum.accumulate(pr[::-1])[::-1] if len(pr) else pr
        q = np.zeros(len(_REC))
        inds = np.searchsorted(rc, _REC, side="left")
        ok = inds < len(pr)
        q[ok] = pr[inds[ok]]
        out[t] = q.mean()
    return out


def evaluate_detection(results: Any, samples: Any, model_params: Any, gen_param: Any) -> dict:
    """Mean average precision of detections ``results`` (DLResult dicts of apply_dl_model,
    one per sample) against ``samples`` (DLSample dicts with the ground-truth boxes).
    ``model_params``: dict with 'class_ids' (the classes evaluated, in this order).
    gen_param: 'iou_threshold' (default 0.50:0.05:0.95), 'max_num_detections' (int or list;
    −1 = all, per image and class as in COCO), 'area_ranges' ({'name': [...], 'min': [...],
    'max': [...]}, default all = [0, 2e8]), 'interpolate_pr_curves' ('true')."""
    if isinstance(results, dict):
        results = [results]
    if isinstance(samples, dict):
        samples = [samples]
    results, samples = list(results), list(samples)
    if len(results) != len(samples):
        raise HOperatorError(H_ERR_DL_INPUT_WRONG_VALUES,
                             f"{len(results)} results for {len(samples)} samples")
    g = _gen(gen_param)
    if not isinstance(model_params, dict) or "class_ids" not in model_params:
        raise HOperatorError(H_ERR_DL_INPUTS_MISSING, "model_params needs 'class_ids'")
    class_ids = [int(c) for c in np.asarray(model_params["class_ids"]).reshape(-1)]
    thrs = [float(t) for t in np.asarray(g.get("iou_threshold", DEFAULT_IOU),
                                         np.float64).reshape(-1)]
    if not thrs or any(not 0 < t <= 1 for t in thrs):
        raise HOperatorError(H_ERR_DL_INPUT_WRONG_VALUES, "iou_threshold must be in (0, 1]")
    max_dets = [int(x) for x in np.asarray(g.get("max_num_detections", -1)).reshape(-1)]
    ar = g.get("area_ranges", {"name": ["all"], "min": [0.0], "max": [2e8]})
    try:
        names = [str(x) for x in np.asarray(ar["name"]).reshape(-1)]
        los = [float(x) for x in np.asarray(ar["min"], np.float64).reshape(-1)]
        his = [float(x) for x in np.asarray(ar["max"], np.float64).reshape(-1)]
    except (KeyError, TypeError, ValueError):
        raise HOperatorError(H_ERR_DL_INPUT_WRONG_VALUES,
                             "area_ranges needs 'name', 'min' and 'max' lists") from None
    if not (len(names) == len(los) == len(his)):
        raise HOperatorError(H_ERR_DL_INPUT_WRONG_VALUES, "area_ranges lists differ in length")
    interpolate = str(g.get("interpolate_pr_curves", "true")) != "false"
    def one(key):  # a value or a tuple of one (get_dl_model_param's form)
        v = model_params.get(key)
        return v[0] if isinstance(v, (list, tuple)) and len(v) == 1 else v

    rect2 = one("instance_type") == "rectangle2"
    period = (np.pi if one("ignore_direction") in ("true", True, 1) else 2 * np.pi) \
        if rect2 else 0.0
    no_orient = {int(c) for c in np.asarray(model_params.get("class_ids_no_orientation", []))
                 .reshape(-1)} if rect2 else set()

    dets, gts = [], []
    for i, (r, s) in enumerate(zip(results, samples)):
        db, dl, ds = _boxes(r, i, "result", "bbox_class_id", "bbox_confidence", rect2)
        gb, gl, _ = _boxes(s, i, "sample", "bbox_label_id", None, rect2)
        dets.append((db, dl, ds))
        gts.append((gb, gl))

    out: dict = {}
    for md in max_dets:
        md_key = "max_num_detections_all" if md < 0 else f"max_num_detections_{md}"
        per_area = {}
        for name, lo, hi in zip(names, los, his):
            ap = np.zeros((len(class_ids), len(thrs)))
            soap = np.full((len(class_ids), len(thrs)), -1.0)
            for ki, c in enumerate(class_ids):
                sc, tm, ig, dp, npig = [], [], [], [], 0
                for (db, dl, ds), (gb, gl) in zip(dets, gts):
                    dsel, gsel = dl == c, gl == c
                    g_b = gb[gsel]
                    s_, m_, i_, n_, p_ = _image_eval(db[dsel], ds[dsel], g_b, _area(g_b), lo, hi,
                                                     len(ds) if md < 0 else md, thrs, period)
                    sc.append(s_)
                    tm.append(m_)
                    ig.append(i_)
                    dp.append(p_)
                    npig += n_
                tm_, ig_ = np.concatenate(tm, 1), np.concatenate(ig, 1)
                ap[ki] = _ap(np.concatenate(sc), tm_, ig_, npig, interpolate)
                if rect2 and c not in no_orient:
                    tp, dp_ = tm_ & ~ig_, np.concatenate(dp, 1)
                    for ti in range(len(thrs)):
                        if tp[ti].any():
                            soap[ki, ti] = 1.0 - float(dp_[ti][tp[ti]].mean()) / np.pi
            valid = ap[:, 0] > -1
            res: dict = {"mean_ap": float(ap[valid].mean()) if valid.any() else -1.0,
                         "class_ap": [float(ap[k].mean()) if valid[k] else -1.0
                                      for k in range(len(class_ids))],
                         "class_ids": list(class_ids)}
            for ti, t in enumerate(thrs):
                res[f"ap_iou_{_key(t)}"] = float(ap[valid, ti].mean()) if valid.any() else -1.0
                res[f"class_ap_iou_{_key(t)}"] = [float(ap[k, ti]) if valid[k] else -1.0
                                                  for k in range(len(class_ids))]
            if rect2:
                ok = soap > -1
                res["soap"] = float(soap[ok].mean()) if ok.any() else -1.0
                res["class_soap"] = [float(soap[k][ok[k]].mean()) if ok[k].any() else -1.0
                                     for k in range(len(class_ids))]
                for ti, t in enumerate(thrs):
                    res[f"soap_iou_{_key(t)}"] = (float(soap[ok[:, ti], ti].mean())
                                                  if ok[:, ti].any() else -1.0)
            per_area[f"area_{name}"] = res
        out[md_key] = per_area
    return out

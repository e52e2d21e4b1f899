"""End to end: a detector trained on CPU on images built from scikit-image's bundled data
(a coffee cup and a cat cut from skimage.data.coffee / chelsea, pasted at random sizes and
places on brick, grass and gravel textures, so every box is known exactly), evaluated on
held-out images with pycocotools' COCOeval and with halcdl's evaluate_detection."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest

import halcdl as ha
from halcdl.workflow import evaluate_detection

warnings.filterwarnings("ignore", category=ha.NotPretrainedWarning)

skdata = pytest.importorskip("skimage.data")
from skimage import transform  # noqa: E402

def _textures():
    out = []
    for f in (skdata.brick, skdata.grass, skdata.gravel):
        t = f().astype(np.float32) / 255.0
        out.append(t)
    return out

def _objects():
    cup = skdata.coffee()[30:370, 120:480].astype(np.float32) / 255.0
    cat = skdata.chelsea()[20:260, 100:360].astype(np.float32) / 255.0
    return [cup, cat]

TEX, OBJ = None, None

def make_image(rng, size=128, max_obj=3):
    global TEX, OBJ
    if TEX is None:
        TEX, OBJ = _textures(), _objects()
    t = TEX[rng.integers(len(TEX))]
    y0, x0 = rng.integers(0, t.shape[0] - size), rng.integers(0, t.shape[1] - size)
    img = np.repeat(t[y0:y0 + size, x0:x0 + size, None], 3, 2).copy()
    boxes, labels = [], []
    for _ in range(int(rng.integers(1, max_obj + 1))):
        c = int(rng.integers(len(OBJ)))
        h = int(rng.integers(24, 57))
        w = int(np.clip(h * rng.uniform(0.75, 1.33), 20, 64))
        for _try in range(20):
            r, q = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
            ok = all(r >= b[2] or r + h <= b[0] or q >= b[3] or q + w <= b[1] for b in boxes)
            if ok:
                break
        else:
            continue
        patch = transform.resize(OBJ[c], (h, w), anti_aliasing=True).astype(np.float32)
        img[r:r + h, q:q + w] = patch
        boxes.append((r, q, r + h, q + w))
        labels.append(c)
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return {"image": (img - 0.5) * 2.0, "bbox_row1": b[:, 0].tolist(), "bbox_col1": b[:, 1].tolist(),
            "bbox_row2": b[:, 2].tolist(), "bbox_col2": b[:, 3].tolist(), "bbox_label_id": labels}


def _coco_map50(samples, results):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, dets = [], [], []
    for i, (s, r) in enumerate(zip(samples, results)):
        images.append({"id": i, "width": 128, "height": 128})
        for r1, c1, r2, c2, lab in zip(s["bbox_row1"], s["bbox_col1"], s["bbox_row2"],
                                       s["bbox_col2"], s["bbox_label_id"]):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(lab),
                         "bbox": [c1, r1, c2 - c1, r2 - r1], "area": (c2 - c1) * (r2 - r1),
                         "iscrowd": 0})
        for r1, c1, r2, c2, lab, sc in zip(r["bbox_row1"], r["bbox_col1"], r["bbox_row2"],
                                           r["bbox_col2"], r["bbox_class_id"],
                                           r["bbox_confidence"]):
            dets.append({"image_id": i, "category_id": int(lab),
                         "bbox": [c1, r1, c2 - c1, r2 - r1], "score": sc})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": 1}, {"id": 2}]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.params.maxDets = [100]
        ev.params.areaRng = [[0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    p = ev.eval["precision"][0, :, :, 0, 0]
    return float(np.mean(p[p > -1]))


def _labelled(rng, n):
    out = [make_image(rng) for _ in range(n)]
    for i, s in enumerate(out):
        s["bbox_label_id"] = [lab + 1 for lab in s["bbox_label_id"]]
        s["image_id"] = i
    return out


@pytest.mark.slow
def test_detector_learns_cups_and_cats():
    m = ha.create_dl_model_detection(
        "pretrained_dl_classifier_compact.hdl", 2,
        {"image_width": 128, "image_height": 128, "capacity": "medium", "min_level": 3,
         "max_level": 4, "anchor_num_subscales": 2, "class_ids": [1, 2],
         "class_names": ["cup", "cat"]})
    ha.set_dl_model_param(m, "batch_size", 8)
    ha.set_dl_model_param(m, "solver_type", "adam")
    ha.set_dl_model_param(m, "learning_rate", 1e-3)
    rng = np.random.default_rng(0)
    first = last = None
    for it in range(80):  # fresh images every step: no sample is seen twice
        r = ha.train_dl_model_batch(m, _labelled(rng, 8))
        first = r["total_loss"] if first is None else first
        last = r["total_loss"]
    assert last < 0.3 * first
    test = _labelled(np.random.default_rng(12345), 60)
    ha.set_dl_model_param(m, "min_confidence", 0.05)
    results = ha.apply_dl_model(m, test, [])
    coco = _coco_map50(test, results)
    ours = evaluate_detection(results, test, {"class_ids": [1, 2]},
                              {})["max_num_detections_all"]["area_all"]["ap_iou_05"]
    print(f"mAP@0.5 on 60 held-out images: COCOeval {coco:.4f}, evaluate_detection {ours:.4f}")
    assert abs(coco - ours) <= 1e-6
    assert coco >= 0.8
    names = {n for r in results for n in r["bbox_class_name"]}
    assert names <= {"cup", "cat"}

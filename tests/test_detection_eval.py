"""evaluate_detection against pycocotools' COCOeval on the same detections; write/read of a
detector and bit-identical resumption."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest

import halcdl as ha
from halcdl.workflow import evaluate_detection

warnings.filterwarnings("ignore", category=ha.NotPretrainedWarning)
pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402


def _random_case(rng, n_img=12, classes=(1, 4, 7)):
    samples, results = [], []
    for i in range(n_img):
        ng = int(rng.integers(0, 6))
        c = rng.uniform(10, 190, (ng, 2))
        s = rng.uniform(4, 60, (ng, 2))
        gb = np.concatenate([c - s / 2, c + s / 2], 1)
        gl = rng.choice(classes, ng)
        # detections: jittered ground truth plus false positives
        keep = rng.random(ng) < 0.8
        db = gb[keep] + rng.normal(0, 3, (int(keep.sum()), 4))
        dl = gl[keep].copy()
        flip = rng.random(len(dl)) < 0.1
        dl[flip] = rng.choice(classes, int(flip.sum()))
        nf = int(rng.integers(0, 4))
        fc = rng.uniform(10, 190, (nf, 2))
        fs = rng.uniform(4, 60, (nf, 2))
        db = np.concatenate([db, np.concatenate([fc - fs / 2, fc + fs / 2], 1)])
        db[:, 2:] = np.maximum(db[:, 2:], db[:, :2] + 1)
        dl = np.concatenate([dl, rng.choice(classes, nf)])
        ds = rng.random(len(dl))
        samples.append({"image_id": i, "bbox_row1": gb[:, 0].tolist(), "bbox_col1": gb[:, 1].tolist(),
                        "bbox_row2": gb[:, 2].tolist(), "bbox_col2": gb[:, 3].tolist(),
                        "bbox_label_id": gl.tolist()})
        results.append({"bbox_row1": db[:, 0].tolist(), "bbox_col1": db[:, 1].tolist(),
                        "bbox_row2": db[:, 2].tolist(), "bbox_col2": db[:, 3].tolist(),
                        "bbox_class_id": dl.tolist(), "bbox_confidence": ds.tolist()})
    return samples, results


def coco_eval(samples, results, classes, max_dets=100, area=(0, 1e10)):
    """pycocotools' COCOeval (bbox) on the same data: (mean AP, AP per threshold)."""
    images, anns = [], []
    for s in samples:
        images.append({"id": s["image_id"], "width": 200, "height": 200})
        for r1, c1, r2, c2, lab in zip(s["bbox_row1"], s["bbox_col1"], s["bbox_row2"],
                                       s["bbox_col2"], s["bbox_label_id"]):
            anns.append({"id": len(anns) + 1, "image_id": s["image_id"], "category_id": int(lab),
                         "bbox": [c1, r1, c2 - c1, r2 - r1], "area": (c2 - c1) * (r2 - r1),
                         "iscrowd": 0})
    dets = []
    for s, r in zip(samples, results):
        for r1, c1, r2, c2, lab, sc in zip(r["bbox_row1"], r["bbox_col1"], r["bbox_row2"],
                                           r["bbox_col2"], r["bbox_class_id"],
                                           r["bbox_confidence"]):
            dets.append({"image_id": s["image_id"], "category_id": int(lab),
                         "bbox": [c1, r1, c2 - c1, r2 - r1], "score": sc})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": c} for c in classes]}
        gt.createIndex()
        dt = gt.loadRes(dets) if dets else COCO()
        ev = COCOeval(gt, dt, "bbox")
        ev.params.maxDets = [max_dets]
        ev.params.areaRng = [list(area)]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    p = ev.eval["precision"][:, :, :, 0, 0]          # (T, R, K)
    per_t = [float(np.mean(p[t][p[t] > -1])) for t in range(p.shape[0])]
    return float(np.mean(p[p > -1])), per_t


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_ap_matches_cocoeval(seed):
    rng = np.random.default_rng(seed)
    classes = [1, 4, 7]
    samples, results = _random_case(rng, classes=tuple(classes))
    r = evaluate_detection(results, samples, {"class_ids": classes}, {})
    res = r["max_num_detections_all"]["area_all"]
    ref, per_t = coco_eval(samples, results, classes, max_dets=1000)
    assert abs(res["mean_ap"] - ref) <= 1e-6, (res["mean_ap"], ref)
    assert abs(res["ap_iou_05"] - per_t[0]) <= 1e-6
    assert abs(res["ap_iou_075"] - per_t[5]) <= 1e-6
    assert abs(res["ap_iou_095"] - per_t[9]) <= 1e-6
    # max_num_detections and an area range
    r = evaluate_detection(results, samples, {"class_ids": classes},
                           {"max_num_detections": 2,
                            "area_ranges": {"name": ["medium"], "min": [32 ** 2],
                                            "max": [96 ** 2]}})
    ref, _ = coco_eval(samples, results, classes, max_dets=2, area=(32 ** 2, 96 ** 2))
    assert abs(r["max_num_detections_2"]["area_medium"]["mean_ap"] - ref) <= 1e-6


def test_perfect_detections_give_ap_1():
    rng = np.random.default_rng(3)
    samples, _ = _random_case(rng)
    results = [{"bbox_row1": s["bbox_row1"], "bbox_col1": s["bbox_col1"],
                "bbox_row2": s["bbox_row2"], "bbox_col2": s["bbox_col2"],
                "bbox_class_id": s["bbox_label_id"],
                "bbox_confidence": [0.9] * len(s["bbox_label_id"])} for s in samples]
    r = evaluate_detection(results, samples, {"class_ids": [1, 4, 7]}, [])
    assert r["max_num_detections_all"]["area_all"]["mean_ap"] == pytest.approx(1.0)


def test_bad_input():
    with pytest.raises(ha.HOperatorError) as e:
        evaluate_detection([{}], [{"bbox_row1": []}], {"class_ids": [0]}, {})
    assert e.value.error_code == 7783


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
def _det_samples(rng, n=2):
    out = []
    for _ in range(n):
        out.append({"image": rng.normal(0, 1, (64, 64, 3)).astype(np.float32),
                    "bbox_row1": [5.0, 20.0], "bbox_col1": [6.0, 30.0],
                    "bbox_row2": [30.0, 60.0], "bbox_col2": [40.0, 62.0],
                    "bbox_label_id": [0, 1]})
    return out


def test_write_read_resumes_bit_identically(tmp_path):
    m = ha.create_dl_model_detection(
        "pretrained_dl_classifier_compact.hdl", 2,
        {"image_width": 64, "image_height": 64, "capacity": "low", "min_level": 2,
         "max_level": 3, "anchor_num_subscales": 1, "anchor_aspect_ratios": [1.0, 2.0],
         "min_confidence": 0.05})
    ha.set_dl_model_param(m, "batch_size", 2)
    ha.set_dl_model_param(m, "learning_rate", 0.01)
    rng = np.random.default_rng(0)
    batch = _det_samples(rng)
    ha.train_dl_model_batch(m, batch)
    path = str(tmp_path / "det.hdl")
    ha.write_dl_model(m, path)
    m2 = ha.read_dl_model(path)
    for key in ("type", "min_level", "anchor_aspect_ratios", "min_confidence", "class_ids",
                "backbone"):
        assert ha.get_dl_model_param(m2, key) == ha.get_dl_model_param(m, key), key
    r1 = [ha.train_dl_model_batch(m, batch)["total_loss"] for _ in range(2)]
    r2 = [ha.train_dl_model_batch(m2, batch)["total_loss"] for _ in range(2)]
    assert r1 == r2
    for n in m.core.param_names():
        assert np.array_equal(m.core.get_param(n), m2.core.get_param(n)), n
    a1 = ha.apply_dl_model(m, batch, [])
    a2 = ha.apply_dl_model(m2, batch, [])
    assert a1 == a2
    # a class-count change of the read model re-creates the class head only
    ha.set_dl_model_param(m2, "class_ids", [0, 1, 2])
    assert m2.spec[-1]["num_classes"] == 3


# --------------------------------------------------------------------------------------------
# determine_dl_model_detection_param
# --------------------------------------------------------------------------------------------
def _dataset(tmp_path, boxes_per_image, size=(200, 100)):
    from PIL import Image

    samples = []
    for i, boxes in enumerate(boxes_per_image):
        Image.new("RGB", size).save(tmp_path / f"im{i}.png")
        b = np.asarray(boxes, np.float64).reshape(-1, 4)
        samples.append({"image_id": i, "image_file_name": f"im{i}.png", "split": "train",
                        "bbox_row1": b[:, 0].tolist(), "bbox_col1": b[:, 1].tolist(),
                        "bbox_row2": b[:, 2].tolist(), "bbox_col2": b[:, 3].tolist(),
                        "bbox_label_id": [0] * len(b)})
    return {"image_dir": str(tmp_path), "class_ids": [0], "class_names": ["a"],
            "samples": samples}


def test_determine_detection_param(tmp_path):
    # images 200 wide, 100 high, target 512 × 256: boxes scale by 2.56
    ds = _dataset(tmp_path, [[(0, 0, 8, 8), (10, 10, 60, 60)], [], [(5, 5, 30, 30)]])
    p = ha.determine_dl_model_detection_param(ds, 512, 256, {})
    zmin, zmax = 8 * 2.56, 50 * 2.56
    assert p["min_level"] == max(1, int(np.floor(np.log2(zmin / 4))))           # 2
    assert p["max_level"] == int(np.ceil(np.log2(zmax / (4 * 2 ** (2 / 3)))))   # 5
    assert (p["image_width"], p["image_height"]) == (512, 256)
    # the level is capped where 2^level no longer divides the target size (200 = 8 · 25)
    assert ha.determine_dl_model_detection_param(ds, 400, 200, {})["max_level"] == 3
    assert p["anchor_aspect_ratios"] == [1.0] and p["anchor_num_subscales"] == 3
    # the result feeds create_dl_model_detection
    m = ha.create_dl_model_detection("pretrained_dl_classifier_compact.hdl", 1,
                                     {**p, "capacity": "low"})
    assert ha.get_dl_model_param(m, "max_level") == [p["max_level"]]
    # elongated boxes give three ratios (quantiles of h / w)
    ds = _dataset(tmp_path, [[(0, 0, 40, 10), (0, 0, 10, 40), (0, 0, 20, 20), (0, 0, 30, 15)]])
    p = ha.determine_dl_model_detection_param(ds, 200, 100, [])
    r = np.quantile([4.0, 0.25, 1.0, 2.0], [0.1, 0.5, 0.9]).round(2)
    assert p["anchor_aspect_ratios"] == sorted(set(r.tolist()))
    with pytest.raises(ha.HOperatorError) as e:
        ha.determine_dl_model_detection_param(_dataset(tmp_path, [[]]), 200, 100, {})
    assert e.value.error_code == 7783

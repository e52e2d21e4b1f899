"""evaluate_dl_model: classification measures against scikit-learn, segmentation measures
against an independent numpy computation, sample selection, bad input.

Datasets are preprocessed ones (one DLSample .hdict file per sample under 'dlsample_dir'),
read by the real read_dl_samples, wrapped to log the indices (see tests/test_train.py).
"""
from __future__ import annotations

import copy
import os
import warnings

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

import halcdl as ha
from halcdl.io.hdict import write_hdict
from halcdl.workflow import evaluate as ev

SAMPLE_DIR: list = []


@pytest.fixture(autouse=True)
def _sample_dir(tmp_path_factory):
    SAMPLE_DIR[:] = [str(tmp_path_factory.mktemp("dlsamples"))]


def with_files(ds: dict) -> dict:
    """Write every sample's DLSample file (image + labels) and point the dataset at them."""
    for i, s in enumerate(ds["samples"]):
        name = f"{s['image_id']}_dlsample.hdict"
        d = {"image": s["_image"], "image_id": s["image_id"]}
        for k in ("image_label_id", "segmentation_image"):
            if k in s:
                d[k] = s[k]
        write_hdict(d, os.path.join(SAMPLE_DIR[0], name))
        s["dlsample_file_name"] = name
    ds["dlsample_dir"] = SAMPLE_DIR[0]
    return ds


@pytest.fixture
def reader(monkeypatch):
    log = []
    real = ev.read_samples

    def read(dldataset, indices):
        log.append(list(indices))
        return real(dldataset, indices)

    monkeypatch.setattr(ev, "read_samples", read)
    read.log = log
    return read


def classification_setup(n=37, classes=4, seed=0, class_ids=(3, 7, 1, 9)):
    rng = np.random.default_rng(seed)
    ha.set_system("seed_rand", seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    ha.set_dl_model_param(m, "image_dimensions", [16, 16, 3])
    ha.set_dl_model_param(m, "class_ids", list(class_ids))
    ha.set_dl_model_param(m, "batch_size", 5)
    samples = []
    for i in range(n):
        samples.append({"image_id": 1000 + i, "_image": rng.normal(0, 60, (16, 16, 3))
                        .astype(np.float32), "image_label_id": int(class_ids[i % classes]),
                        "split": "test" if i % 3 else "validation"})
    return m, with_files({"class_ids": list(class_ids), "samples": samples})


def predictions(m, ds, idx):
    """Independent of evaluate_dl_model: apply_dl_model on all selected samples at once."""
    s = [{"image": ds["samples"][i]["_image"]} for i in idx]
    res = ha.apply_dl_model(m, s, [])
    ranked = np.array([r["classification_class_ids"] for r in res])
    gt = np.array([ds["samples"][i]["image_label_id"] for i in idx])
    return ranked, gt


def test_classification_against_sklearn(reader):
    m, ds = classification_setup()
    idx = [i for i, s in enumerate(ds["samples"]) if s["split"] == "test"]
    result, params = ha.evaluate_dl_model(ds, m, "split", "test",
                                          {"measures": ["all", "top2_error", "top3_error"]})
    ranked, gt = predictions(m, ds, idx)
    ids = [3, 7, 1, 9]
    pred = ranked[:, 0]
    assert len(set(pred)) > 1  # a random network still predicts several classes here
    cm = confusion_matrix(gt, pred, labels=ids)  # sklearn: rows truth, columns predicted
    np.testing.assert_array_equal(result["absolute_confusion_matrix"], cm.T)
    rel = cm.T / np.maximum(cm.sum(axis=1), 1)[None, :]
    np.testing.assert_allclose(result["relative_confusion_matrix"], rel)
    p, r, f, _ = precision_recall_fscore_support(gt, pred, labels=ids, zero_division=0)
    np.testing.assert_allclose(result["precision_per_class"], p)
    np.testing.assert_allclose(result["recall_per_class"], r)
    np.testing.assert_allclose(result["f_score_per_class"], f)
    np.testing.assert_allclose([result["precision"], result["recall"], result["f_score"]],
                               [p.mean(), r.mean(), f.mean()])
    assert result["top1_error"] == pytest.approx(float(np.mean(pred != gt)))
    # scores whose ranking is the network's: 1/(rank+1) per class, for sklearn's top-k
    scores = np.zeros((len(gt), 4))
    for n, row in enumerate(ranked):
        for rank, c in enumerate(row):
            scores[n, ids.index(c)] = 1.0 / (rank + 1)
    for k in (2, 3):
        acc = top_k_accuracy_score([ids.index(g) for g in gt], scores, k=k, labels=range(4))
        assert result[f"top{k}_error"] == pytest.approx(1 - acc)
    assert params["class_ids"] == ids and params["num_samples"] == len(idx)
    assert params["evaluation_type"] == "classification"
    # the samples were read in batches of the model's batch_size (5)
    assert [len(b) for b in reader.log] == [5] * (len(idx) // 5) + ([len(idx) % 5]
                                                                     if len(idx) % 5 else [])


def test_classification_measures_function_against_sklearn():
    rng = np.random.default_rng(4)
    ids = [0, 1, 2, 5, 6]
    gt = rng.choice(ids, 200)
    ranked = np.array([rng.permutation(ids) for _ in range(200)])
    ranked[:120, 0] = gt[:120]  # make it better than chance
    # keep each row a permutation
    for n in range(120):
        row = [gt[n]] + [c for c in rng.permutation(ids) if c != gt[n]]
        ranked[n] = row
    res = ev.classification_measures(ranked[:, 0], ranked, gt, ids,
                                     ["top1_error", "precision", "recall", "f_score",
                                      "absolute_confusion_matrix"])
    p, r, f, _ = precision_recall_fscore_support(gt, ranked[:, 0], labels=ids,
                                                 zero_division=0)
    np.testing.assert_allclose(res["precision_per_class"], p)
    np.testing.assert_allclose(res["recall_per_class"], r)
    np.testing.assert_allclose(res["f_score_per_class"], f)
    np.testing.assert_array_equal(res["absolute_confusion_matrix"],
                                  confusion_matrix(gt, ranked[:, 0], labels=ids).T)
    # a subset of classes: samples of other classes are left out
    sub = ev.classification_measures(ranked[:, 0], ranked, gt, ids, ["recall", "top1_error"],
                                     [5, 0])
    keep = np.isin(gt, [5, 0])
    _, r2, _, _ = precision_recall_fscore_support(gt[keep], ranked[keep, 0], labels=[5, 0],
                                                  zero_division=0)
    np.testing.assert_allclose(sub["recall_per_class"], r2)
    assert sub["top1_error"] == pytest.approx(np.mean(ranked[keep, 0] != gt[keep]))


def test_class_subset_and_selection_methods(reader):
    m, ds = classification_setup()
    res_names, par = ha.evaluate_dl_model(ds, m, "sample_indices", list(range(20)),
                                          {"class_names_to_evaluate": ["9", "3"],
                                           "measures": ["recall"]})
    assert par["class_ids_to_evaluate"] == [9, 3]
    assert set(res_names) == {"recall", "recall_per_class"}
    ranked, gt = predictions(m, ds, list(range(20)))
    keep = np.isin(gt, [9, 3])
    _, r, _, _ = precision_recall_fscore_support(gt[keep], ranked[keep, 0], labels=[9, 3],
                                                 zero_division=0)
    np.testing.assert_allclose(res_names["recall_per_class"], r)
    res_ids, _ = ha.evaluate_dl_model(ds, m, "sample_indices", list(range(20)),
                                      {"class_ids_to_evaluate": [9, 3],
                                       "measures": ["recall"]})
    assert res_ids["recall_per_class"] == res_names["recall_per_class"]
    a, _ = ha.evaluate_dl_model(ds, m, "image_ids", [1000 + i for i in (4, 2, 9)], [])
    b, _ = ha.evaluate_dl_model(ds, m, "sample_indices", [4, 2, 9], [])
    assert a["top1_error"] == b["top1_error"]
    np.testing.assert_array_equal(a["absolute_confusion_matrix"],
                                  b["absolute_confusion_matrix"])
    both, p = ha.evaluate_dl_model(ds, m, "split", ["test", "validation"], [])
    assert p["num_samples"] == len(ds["samples"])


def seg_setup(n=7, seed=1):
    rng = np.random.default_rng(seed)
    ha.set_system("seed_rand", seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = ha.read_dl_model("pretrained_dl_segmentation_compact.hdl")
    ha.set_dl_model_param(m, "image_dimensions", [16, 16, 3])
    ha.set_dl_model_param(m, "class_ids", [0, 4, 2])
    ha.set_dl_model_param(m, "ignore_class_ids", [255])
    ha.set_dl_model_param(m, "batch_size", 3)
    samples = []
    for i in range(n):
        seg = rng.choice([0, 4, 2, 255], (16, 16), p=[0.4, 0.3, 0.2, 0.1]).astype(np.uint8)
        samples.append({"image_id": i, "split": "test", "segmentation_image": seg,
                        "_image": rng.normal(0, 50, (16, 16, 3)).astype(np.float32)})
    return m, with_files({"class_ids": [0, 4, 2], "samples": samples})


def test_segmentation_against_numpy(reader):
    m, ds = seg_setup()
    result, params = ha.evaluate_dl_model(ds, m, "split", "test", [])
    preds = [r["segmentation_image"] for r in
             ha.apply_dl_model(m, [{"image": s["_image"]} for s in ds["samples"]], [])]
    gts = [s["segmentation_image"] for s in ds["samples"]]
    ids = [0, 4, 2]
    # independent: per-class pixel sets
    valid = [g != 255 for g in gts]
    tp = np.array([sum(((p == c) & (g == c) & v).sum() for p, g, v in zip(preds, gts, valid))
                   for c in ids], float)
    n_gt = np.array([sum(((g == c) & v).sum() for g, v in zip(gts, valid)) for c in ids], float)
    n_pr = np.array([sum(((p == c) & v).sum() for p, v in zip(preds, valid)) for c in ids],
                    float)
    total = sum(v.sum() for v in valid)
    iou = tp / (n_gt + n_pr - tp)
    assert result["pixel_accuracy"] == pytest.approx(tp.sum() / total)
    np.testing.assert_allclose(result["class_iou"], iou)
    assert result["mean_iou"] == pytest.approx(iou.mean())
    np.testing.assert_allclose(result["class_pixel_accuracy"], tp / n_gt)
    assert result["mean_accuracy"] == pytest.approx((tp / n_gt).mean())
    assert result["frequency_weighted_iou"] == pytest.approx(float((n_gt / total * iou).sum()))
    cm = np.array([[sum(((p == cp) & (g == cg) & v).sum() for p, g, v in zip(preds, gts, valid))
                    for cg in ids] for cp in ids])  # rows predicted, columns truth
    np.testing.assert_array_equal(result["pixel_confusion_matrix"], cm)
    assert params["evaluation_type"] == "segmentation"
    assert [len(b) for b in reader.log] == [3, 3, 1]
    only, _ = ha.evaluate_dl_model(ds, m, "split", "test", {"measures": "mean_iou"})
    assert set(only) == {"mean_iou"}


def detection_setup(n=3, seed=2):
    rng = np.random.default_rng(seed)
    ha.set_system("seed_rand", seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = ha.create_dl_model_detection(
            "pretrained_dl_classifier_compact.hdl", 2,
            {"image_width": 64, "image_height": 64, "capacity": "low", "min_level": 2,
             "max_level": 3, "anchor_num_subscales": 1, "anchor_aspect_ratios": [1.0, 2.0],
             "min_confidence": 0.0})
    ha.set_dl_model_param(m, "batch_size", 2)
    samples = []
    for i in range(n):
        samples.append({"image_id": 50 + i, "split": "validation" if i else "train",
                        "_image": rng.normal(0, 1, (64, 64, 3)).astype(np.float32),
                        "bbox_row1": [5.0, 20.0 + i], "bbox_col1": [6.0, 30.0],
                        "bbox_row2": [30.0, 60.0], "bbox_col2": [40.0, 62.0 - i],
                        "bbox_label_id": [0, 1]})
    ds = {"class_ids": [0, 1], "samples": samples, "dlsample_dir": SAMPLE_DIR[0]}
    for s in samples:
        name = f"det_{s['image_id']}_dlsample.hdict"
        write_hdict({"image": s["_image"], "image_id": s["image_id"],
                     **{k: s[k] for k in s if k.startswith("bbox_")}},
                    os.path.join(SAMPLE_DIR[0], name))
        s["dlsample_file_name"] = name
    return m, ds


def test_detection_dispatch(reader):
    """A detection model's evaluation is halcdl.workflow.evaluate_detection's mean_ap over
    apply_dl_model's results, read in batches like the other types."""
    evaluate_detection = pytest.importorskip("halcdl.workflow.evaluate_detection")
    m, ds = detection_setup()
    result, params = ha.evaluate_dl_model(ds, m, "sample_indices", [0, 1, 2],
                                          {"iou_threshold": [0.5, 0.75]})
    assert params["evaluation_type"] == "detection" and params["num_samples"] == 3
    assert [len(b) for b in reader.log] == [2, 1]
    samples = ev.read_samples(ds, [0, 1, 2])
    results = ha.apply_dl_model(m, samples, [])
    expected = evaluate_detection.evaluate_detection(results, samples, dict(m.params),
                                                     {"iou_threshold": [0.5, 0.75]})
    assert result["max_num_detections_all"]["area_all"]["mean_ap"] == \
        pytest.approx(expected["max_num_detections_all"]["area_all"]["mean_ap"])
    # train_dl_model compares detection evaluations by mean_ap, found in the nested result
    tp = ha.create_dl_train_param(m, 1, 1, "false", 1, ["serialize"], [[]])
    assert tp["evaluation_comparison_keys"] == ["mean_ap"]
    ds["samples"][2]["split"] = "train"  # two training samples: one batch
    _, _, evals = ha.train_dl_model(ds, m, tp, 0)
    assert len(evals) == 1 and evals[0]["comparison_value"] == pytest.approx(
        evals[0]["result"]["max_num_detections_all"]["area_all"]["mean_ap"])


def test_detection_without_its_evaluation_module(reader, monkeypatch):
    m, ds = detection_setup(n=1)
    real = ev.importlib.import_module

    def no_detection(name, *a):
        if name.endswith("evaluate_detection"):
            raise ImportError(name)
        return real(name, *a)

    monkeypatch.setattr(ev.importlib, "import_module", no_detection)
    with pytest.raises(ha.HOperatorError) as e:
        ha.evaluate_dl_model(ds, m, "sample_indices", [0], [])
    assert e.value.error_code == 7914 and "detection evaluation" in e.value.message


@pytest.mark.parametrize("args,code", [
    (("nope", "split", "test", []), 1201),
    (({"samples": 1}, "split", "test", []), 7925),
    ((None, "by_color", "test", []), 1303),
    ((None, "split", 3, []), 1204),
    ((None, "split", "training", []), 7925),  # nothing selected
    ((None, "sample_indices", [0, 99], []), 7926),
    ((None, "image_ids", [5], []), 7926),
    ((None, "split", "test", {"measures": "top9_error"}), 7914),
    ((None, "split", "test", {"measures": "mean_iou"}), 7914),
    ((None, "split", "test", {"colour": 1}), 7911),
    ((None, "split", "test", {"class_ids_to_evaluate": [3, 4]}), 7914),
    ((None, "split", "test", {"class_names_to_evaluate": ["x"]}), 7914),
    ((None, "split", "test", "measures"), 1205),
])
def test_bad_input(reader, args, code):
    m, ds = classification_setup(n=8)
    before = copy.deepcopy([{k: v for k, v in s.items() if k != "_image"}
                            for s in ds["samples"]])
    d = ds if args[0] is None else args[0]
    with pytest.raises(ha.HOperatorError) as e:
        ha.evaluate_dl_model(d, m, *args[1:])
    assert e.value.error_code == code, e.value.message
    assert reader.log == []
    assert [{k: v for k, v in s.items() if k != "_image"} for s in ds["samples"]] == before


def test_bad_label(reader):
    m, ds = classification_setup(n=6)
    ds["samples"][2]["image_label_id"] = 5  # not a class id of the model
    with pytest.raises(ha.HOperatorError) as e:
        ha.evaluate_dl_model(ds, m, "sample_indices", [0, 1, 2], [])
    assert e.value.error_code == 7925 and "sample 2" in e.value.message
    assert reader.log == []

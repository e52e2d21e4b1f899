"""Dataset procedures (halcdl.workflow.dataset) and image reading (halcdl.workflow.images).

The image files are crops of scikit-image's bundled photographs, written in tmp_path as PNG,
JPEG, TIFF, BMP and PGM (8- and 16-bit, gray and color).  References: the arrays written
(lossless formats), Pillow's / scikit-image's decoding (JPEG), pycocotools' COCO API (boxes),
numpy counts (splits).
"""
from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

import halcdl as ha
from halcdl import errors
from halcdl.workflow.images import read_image
from helpers import halcon_files_dir

CAMERA = skdata.camera()  # (512, 512) uint8
CHELSEA = skdata.chelsea()  # (300, 451, 3) uint8
COFFEE = skdata.coffee()  # (400, 600, 3) uint8
ASTRONAUT = skdata.astronaut()  # (512, 512, 3) uint8


def crop(img, k, h=24, w=32):
    """The k-th distinct patch of ``img``."""
    r = (k * 37) % (img.shape[0] - h)
    c = (k * 53) % (img.shape[1] - w)
    return np.ascontiguousarray(img[r:r + h, c:c + w])


def gray16(k):
    return (crop(CAMERA, k).astype(np.uint16) * 257 + k).astype(np.uint16)


def code(excinfo):
    return excinfo.value.error_code


# class -> list of (file name, array written, lossless?)
def _write(path, arr, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path, **kw)


@pytest.fixture()
def class_tree(tmp_path):
    """tmp/images/<class>/... with 10 'cat', 7 'camera', 5 'coffee' images of mixed formats;
    returns (root, {relative path: expected array or None for JPEG})."""
    root = tmp_path / "images"
    expect = {}
    for k in range(10):  # color: PNG, TIFF, JPEG
        a = crop(CHELSEA, k)
        ext = ["png", "tif", "jpg"][k % 3]
        rel = f"cat/cat_{k:03d}.{ext}"
        _write(str(root / rel), a, **({"quality": 95} if ext == "jpg" else {}))
        expect[rel] = None if ext == "jpg" else a
    for k in range(7):  # gray 8-bit PNG / BMP, 16-bit PNG / TIFF, PGM; one in a subfolder
        if k % 2:
            a = gray16(k)
            ext = ["png", "tif"][k % 4 == 3]
        else:
            a = crop(CAMERA, k)
            ext = ["png", "bmp", "pgm", "png"][k // 2]
        rel = f"camera/{'sub/' if k == 6 else ''}camera{k}.{ext}"
        _write(str(root / rel), a)
        expect[rel] = a
    for k in range(5):  # color BMP
        a = crop(COFFEE, k)
        rel = f"coffee/coffee_{k}.bmp"
        _write(str(root / rel), a)
        expect[rel] = a
    (root / "coffee" / "notes.txt").write_text("not an image")
    return str(root), expect


# ---------------------------------------------------------------------------------------------
# read_image
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext,kind", [
    ("png", "gray8"), ("png", "rgb8"), ("png", "gray16"),
    ("tif", "gray8"), ("tif", "rgb8"), ("tif", "gray16"),
    ("bmp", "gray8"), ("bmp", "rgb8"), ("pgm", "gray8"), ("pgm", "gray16"), ("ppm", "rgb8"),
])
def test_read_image_lossless(tmp_path, ext, kind):
    a = {"gray8": crop(CAMERA, 3), "rgb8": crop(ASTRONAUT, 4), "gray16": gray16(5)}[kind]
    p = str(tmp_path / f"x.{ext}")
    _write(p, a)
    got = read_image(p)
    assert got.dtype == a.dtype and got.shape == a.shape
    np.testing.assert_array_equal(got, a)


def test_read_image_jpeg_matches_pillow_and_skimage(tmp_path):
    from skimage import io as skio
    for k, a in enumerate([crop(COFFEE, 2), crop(CAMERA, 2)]):
        p = str(tmp_path / f"x{k}.jpg")
        _write(p, a, quality=90)
        got = read_image(p)
        ref = skio.imread(p)
        assert got.dtype == np.uint8 and got.shape == a.shape
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(got, np.asarray(Image.open(p)))
        assert np.abs(got.astype(int) - a).mean() < 8  # really the photo, not noise


def test_read_image_modes_converted(tmp_path):
    rgb = crop(ASTRONAUT, 1)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    _write(str(tmp_path / "rgba.png"), rgba)
    np.testing.assert_array_equal(read_image(str(tmp_path / "rgba.png")), rgb)
    g = crop(CAMERA, 1)
    Image.fromarray(np.dstack([g, g // 2])).save(str(tmp_path / "la.png"))
    np.testing.assert_array_equal(read_image(str(tmp_path / "la.png")), g)
    # palette: RGB by default, indices on request
    pal = Image.fromarray(rgb).quantize(colors=16)
    pal.save(str(tmp_path / "pal.png"))
    idx = np.asarray(pal)
    lut = np.asarray(pal.getpalette()[:48], np.uint8).reshape(16, 3)
    np.testing.assert_array_equal(read_image(str(tmp_path / "pal.png")), lut[idx])
    got = read_image(str(tmp_path / "pal.png"), palette="index")
    assert got.dtype == np.uint8 and got.ndim == 2
    np.testing.assert_array_equal(got, idx)
    # 1-bit → 0 / 255 bytes
    b = (g > 128)
    Image.fromarray(b).save(str(tmp_path / "bin.png"))
    np.testing.assert_array_equal(read_image(str(tmp_path / "bin.png")),
                                  b.astype(np.uint8) * 255)


def test_read_image_errors(tmp_path):
    with pytest.raises(ha.HOperatorError) as e:
        read_image(str(tmp_path / "missing.png"))
    assert code(e) == errors.H_ERR_FNF and "missing.png" in str(e.value)
    with pytest.raises(ha.HOperatorError) as e:
        read_image(str(tmp_path))
    assert code(e) == errors.H_ERR_FNF
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    with pytest.raises(ha.HOperatorError) as e:
        read_image(str(bad))
    assert code(e) == errors.H_ERR_DL_FILE_READ and "corrupt.png" in str(e.value)
    good = tmp_path / "good.png"
    _write(str(good), crop(ASTRONAUT, 0, 64, 64))
    cut = tmp_path / "truncated.png"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ha.HOperatorError) as e:
        read_image(str(cut))
    assert code(e) == errors.H_ERR_DL_FILE_READ and "truncated.png" in str(e.value)


# ---------------------------------------------------------------------------------------------
# read_dl_dataset_classification
# ---------------------------------------------------------------------------------------------
def test_classification_last_folder(class_tree):
    root, expect = class_tree
    ds = ha.read_dl_dataset_classification(root, "last_folder")
    assert ds["image_dir"] == os.path.normpath(root)
    # 'last_folder' is the file's own folder: camera/sub/camera6.png is of class 'sub'
    assert ds["class_names"] == ["camera", "cat", "coffee", "sub"]
    assert ds["class_ids"] == [0, 1, 2, 3]
    names = [s["image_file_name"] for s in ds["samples"]]
    assert sorted(names) == sorted(expect) and names == sorted(names)
    assert [s["image_id"] for s in ds["samples"]] == list(range(len(expect)))
    for s in ds["samples"]:
        parent = os.path.basename(os.path.dirname(s["image_file_name"]))
        assert ds["class_names"][s["image_label_id"]] == parent
    assert not any(s["image_file_name"].endswith(".txt") for s in ds["samples"])


def test_classification_last_folder_is_the_parent_folder(class_tree):
    root, _ = class_tree
    ds = ha.read_dl_dataset_classification([os.path.join(root, c) for c in
                                            ("cat", "camera", "coffee")], "last_folder")
    # several folders: image_dir is their common parent, names relative to it
    assert ds["image_dir"] == os.path.abspath(root)
    counts = np.bincount([s["image_label_id"] for s in ds["samples"]])
    by_name = dict(zip(ds["class_names"], counts))
    assert by_name == {"camera": 6, "sub": 1, "cat": 10, "coffee": 5}
    for s in ds["samples"]:
        assert os.path.isfile(os.path.join(ds["image_dir"], s["image_file_name"]))


def test_classification_file_name_and_dict(tmp_path):
    d = tmp_path / "flat"
    files = {"apple_01.png": "apple", "apple2.png": "apple", "pear_10.png": "pear",
             "pear__3_7.png": "pear", "big_box_5.png": "big_box", "kiwi.png": "kiwi"}
    for k, f in enumerate(files):
        _write(str(d / f), crop(CAMERA, k))
    ds = ha.read_dl_dataset_classification(str(d), "file_name")
    assert ds["class_names"] == sorted(set(files.values()))
    for s in ds["samples"]:
        assert ds["class_names"][s["image_label_id"]] == files[s["image_file_name"]]
    # dict: keys are base names or paths; unnamed files are left out
    mapping = {"apple_01.png": "good", str(d / "pear_10.png"): "bad", "kiwi.png": "good"}
    ds = ha.read_dl_dataset_classification(str(d), mapping)
    assert ds["class_names"] == ["bad", "good"]
    got = {s["image_file_name"]: ds["class_names"][s["image_label_id"]] for s in ds["samples"]}
    assert got == {"apple_01.png": "good", "pear_10.png": "bad", "kiwi.png": "good"}


def test_classification_errors(tmp_path):
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    (empty / "cls" / "readme.txt").write_text("x")
    cases = [
        ((str(tmp_path / "nope"), "last_folder"), errors.H_ERR_FNF),
        ((str(empty), "last_folder"), errors.H_ERR_FNF),
        (([], "last_folder"), errors.H_ERR_WIPN1),
        ((5, "last_folder"), errors.H_ERR_WIPT1),
        ((str(empty), "folder"), errors.H_ERR_WIPV2),
        ((str(empty), 3), errors.H_ERR_WIPT2),
        ((str(empty), {"a.png": 1}), errors.H_ERR_WIPT2),
    ]
    for args, want in cases:
        with pytest.raises(ha.HOperatorError) as e:
            ha.read_dl_dataset_classification(*args)
        assert code(e) == want, (args, e.value)
    _write(str(tmp_path / "d" / "123.png"), crop(CAMERA, 0))
    with pytest.raises(ha.HOperatorError) as e:
        ha.read_dl_dataset_classification(str(tmp_path / "d"), "file_name")
    assert code(e) == errors.H_ERR_WIPV2 and "123.png" in str(e.value)
    with pytest.raises(ha.HOperatorError) as e:
        ha.read_dl_dataset_classification(str(tmp_path / "d"), {"other.png": "x"})
    assert code(e) == errors.H_ERR_FNF and "other.png" in str(e.value)


# ---------------------------------------------------------------------------------------------
# split_dl_dataset
# ---------------------------------------------------------------------------------------------
def _cls_dataset(counts):
    samples, k = [], 0
    for c, n in enumerate(counts):
        for _ in range(n):
            samples.append({"image_id": k, "image_file_name": f"{k}.png", "image_label_id": c})
            k += 1
    return {"image_dir": "/x", "class_names": [str(c) for c in range(len(counts))],
            "class_ids": list(range(len(counts))), "samples": samples}


@pytest.mark.parametrize("tp,vp", [(70, 15), (50, 50), (100, 0), (0, 0), (33.3, 33.3)])
def test_split_stratified_counts(tp, vp):
    counts = [10, 7, 5, 23, 1]
    ds = _cls_dataset(counts)
    ha.set_system("seed_rand", 11)
    ha.split_dl_dataset(ds, tp, vp, [])
    labels = np.array([s["image_label_id"] for s in ds["samples"]])
    splits = np.array([s["split"] for s in ds["samples"]])
    assert set(splits) <= {"train", "validation", "test"}
    for c, n in enumerate(counts):
        n_tr = int(np.floor(n * tp / 100 + 0.5))
        n_va = min(int(np.floor(n * vp / 100 + 0.5)), n - n_tr)
        sel = splits[labels == c]
        assert (sel == "train").sum() == n_tr
        assert (sel == "validation").sum() == n_va
        assert (sel == "test").sum() == n - n_tr - n_va


def test_split_deterministic_under_seed():
    def run(seed):
        ds = _cls_dataset([20, 20, 20])
        ha.set_system("seed_rand", seed)
        ha.split_dl_dataset(ds, 60, 20, {})
        return [s["split"] for s in ds["samples"]]
    a, b, c = run(3), run(3), run(4)
    assert a == b
    assert a != c
    # shuffled, not the first 60 % of each class
    assert run(3)[:12] != ["train"] * 12


def test_split_overwrite_and_errors():
    ds = _cls_dataset([6, 4])
    ha.set_system("seed_rand", 1)
    ha.split_dl_dataset(ds, 50, 25, [])
    before = copy.deepcopy(ds)
    with pytest.raises(ha.HOperatorError) as e:
        ha.split_dl_dataset(ds, 80, 10, [])
    assert code(e) == errors.H_ERR_WIPV1 and "overwrite_split" in str(e.value)
    assert ds == before
    ha.split_dl_dataset(ds, 100, 0, {"overwrite_split": "true"})
    assert all(s["split"] == "train" for s in ds["samples"])
    ha.split_dl_dataset(ds, 0, 100, [["overwrite_split"], ["true"]])
    assert all(s["split"] == "validation" for s in ds["samples"])

    fresh = _cls_dataset([6, 4])
    ref = copy.deepcopy(fresh)
    cases = [
        ((fresh, 101, 0, []), errors.H_ERR_WIPV2),
        ((fresh, -1, 0, []), errors.H_ERR_WIPV2),
        ((fresh, 50, -5, []), errors.H_ERR_WIPV3),
        ((fresh, 60, 50, []), errors.H_ERR_WIPV3),
        ((fresh, "50", 10, []), errors.H_ERR_WIPT2),
        ((fresh, 50, float("nan"), []), errors.H_ERR_WIPV3),
        ((fresh, 50, [1, 2], []), errors.H_ERR_WIPN3),
        ((fresh, 50, 10, {"unknown": 1}), errors.H_ERR_WIPV4),
        ((fresh, 50, 10, {"model_type": "ocr"}), errors.H_ERR_WIPV4),
        ((fresh, 50, 10, "x"), errors.H_ERR_WIPT4),
        (([], 50, 10, []), errors.H_ERR_WIPT1),
        (({"image_dir": "/x"}, 50, 10, []), errors.H_ERR_DL_INVALID_DATASET),
        (({"samples": [1]}, 50, 10, []), errors.H_ERR_DL_INVALID_DATASET),
        (({"samples": []}, 50, 10, []), errors.H_ERR_DL_INVALID_DATASET),
    ]
    for args, want in cases:
        with pytest.raises(ha.HOperatorError) as e:
            ha.split_dl_dataset(*args)
        assert code(e) == want, (args[1:], e.value)
    assert fresh == ref
    # a sample without a label: nothing written into the others
    broken = _cls_dataset([5, 5])
    del broken["samples"][7]["image_label_id"]
    ref = copy.deepcopy(broken)
    with pytest.raises(ha.HOperatorError) as e:
        ha.split_dl_dataset(broken, 50, 20, {"model_type": "classification"})
    assert code(e) == errors.H_ERR_DL_INVALID_DATASET and "sample 7" in str(e.value)
    assert broken == ref


def test_split_detection_and_segmentation():
    rng = np.random.default_rng(0)
    samples = []
    for k in range(60):
        n = int(rng.integers(0, 4))
        samples.append({"image_id": k, "image_file_name": f"{k}.png",
                        "bbox_label_id": [int(v) for v in rng.choice([1, 2, 9], n,
                                                                     p=[.6, .3, .1])],
                        "bbox_row1": [0.0] * n, "bbox_col1": [0.0] * n,
                        "bbox_row2": [1.0] * n, "bbox_col2": [1.0] * n})
    ds = {"image_dir": "/x", "class_ids": [1, 2, 9], "class_names": ["a", "b", "c"],
          "samples": samples}
    ha.set_system("seed_rand", 5)
    ha.split_dl_dataset(ds, 50, 25, [])
    splits = np.array([s["split"] for s in samples])
    assert abs((splits == "train").sum() - 30) <= 3
    assert abs((splits == "validation").sum() - 15) <= 3
    # every class that occurs in >= 4 images has boxes in the train split
    for c in (1, 2, 9):
        imgs = [i for i, s in enumerate(samples) if c in s["bbox_label_id"]]
        if len(imgs) >= 4:
            assert any(splits[i] == "train" for i in imgs)
    seg = {"image_dir": "/x", "samples": [{"image_id": k, "image_file_name": f"{k}.png",
                                            "segmentation_file_name": f"{k}.png"}
                                           for k in range(9)]}
    ha.split_dl_dataset(seg, 70, 20, [])
    sp = [s["split"] for s in seg["samples"]]
    assert sp.count("train") == 6 and sp.count("validation") == 2 and sp.count("test") == 1


def test_split_anomaly_stratified():
    labels = ["ok"] * 12 + ["nok"] * 5
    ds = {"image_dir": "/x", "samples": [{"image_id": k, "image_file_name": f"{k}.png",
                                          "anomaly_label": lab} for k, lab in enumerate(labels)]}
    ha.split_dl_dataset(ds, 50, 20, [])
    for lab, n in (("ok", 12), ("nok", 5)):
        sp = [s["split"] for s in ds["samples"] if s["anomaly_label"] == lab]
        n_tr = int(np.floor(n * 0.5 + 0.5))
        n_va = int(np.floor(n * 0.2 + 0.5))
        assert (sp.count("train"), sp.count("validation")) == (n_tr, n_va)


# ---------------------------------------------------------------------------------------------
# find_dl_samples
# ---------------------------------------------------------------------------------------------
def test_find_dl_samples_modes():
    samples = [
        {"split": "train", "bbox_label_id": [1, 2], "image_label_id": 0},
        {"split": "test", "bbox_label_id": [2], "image_label_id": 1},
        {"split": "train", "bbox_label_id": [], "image_label_id": 2},
        {"bbox_label_id": [3, 1, 1], "image_label_id": 1.0},
        {"split": ["train"], "bbox_label_id": [1, 2], "image_label_id": "1"},
    ]
    assert ha.find_dl_samples(samples, "split", "train", "match") == [0, 2, 4]
    assert ha.find_dl_samples(samples, "split", ["train", "test"], "or") == [0, 1, 2, 4]
    assert ha.find_dl_samples(samples, "split", ["train", "test"], "match") == []
    assert ha.find_dl_samples(samples, "bbox_label_id", [1, 2], "match") == [0, 4]
    assert ha.find_dl_samples(samples, "bbox_label_id", [2], "or") == [1]
    assert ha.find_dl_samples(samples, "bbox_label_id", [1, 3], "contain") == [0, 3, 4]
    assert ha.find_dl_samples(samples, "bbox_label_id", [], "match") == [2]
    # numbers compare by value, never with strings
    assert ha.find_dl_samples(samples, "image_label_id", 1, "or") == [1, 3]
    assert ha.find_dl_samples(samples, "image_label_id", np.int64(1), "match") == [1, 3]
    assert ha.find_dl_samples(samples, "missing_key", 1, "or") == []
    assert ha.find_dl_samples(samples[1], "split", "test", "match") == [0]  # one sample
    cases = [
        (({"samples": samples}, "split", "train", "match"), errors.H_ERR_WIPT1),
        (([1, 2], "split", "train", "match"), errors.H_ERR_WIPT1),
        ((samples, 3, "train", "match"), errors.H_ERR_WIPT2),
        ((samples, "split", "train", "any"), errors.H_ERR_WIPV4),
        ((samples, "split", [np.zeros((2, 2))], "or"), errors.H_ERR_WIPT3),
    ]
    for args, want in cases:
        with pytest.raises(ha.HOperatorError) as e:
            ha.find_dl_samples(*args)
        assert code(e) == want


# ---------------------------------------------------------------------------------------------
# gen_dl_samples / gen_dl_samples_from_images / read_dl_samples
# ---------------------------------------------------------------------------------------------
def test_gen_dl_samples_pixels(class_tree):
    root, expect = class_tree
    ds = ha.read_dl_dataset_classification(root, "last_folder")
    n = len(ds["samples"])
    batch = ha.gen_dl_samples(ds, list(range(n)), "classification", [])
    assert len(batch) == n
    for s, b in zip(ds["samples"], batch):
        assert set(b) == {"image", "image_id", "image_label_id"}
        assert b["image_id"] == s["image_id"] and b["image_label_id"] == s["image_label_id"]
        path = os.path.join(root, s["image_file_name"])
        ref = expect[s["image_file_name"]]
        if ref is None:  # JPEG: Pillow's decoding
            ref = np.asarray(Image.open(path))
        ref = ref[:, :, None] if ref.ndim == 2 else ref
        assert b["image"].dtype == ref.dtype and b["image"].shape == ref.shape
        np.testing.assert_array_equal(b["image"], ref)
    assert {b["image"].dtype for b in batch} == {np.dtype(np.uint8), np.dtype(np.uint16)}
    only = ha.gen_dl_samples(ds, 3, "image_only", {})
    assert len(only) == 1 and set(only[0]) == {"image", "image_id"}
    off = ha.gen_dl_samples(ds, [2, 0], "off", [])
    idx = ha.gen_dl_samples(ds, np.array([2, 0]), "off", [])
    assert [b["image_id"] for b in idx] == [2, 0]
    assert [b["image_id"] for b in off] == [2, 0] and "image_label_id" in off[0]


def test_gen_dl_samples_image_dir_override(class_tree, tmp_path):
    root, _ = class_tree
    ds = ha.read_dl_dataset_classification(root, "last_folder")
    moved = str(tmp_path / "moved")
    os.rename(root, moved)
    ref = copy.deepcopy(ds)
    with pytest.raises(ha.HOperatorError) as e:
        ha.gen_dl_samples(ds, [0], "classification", [])
    assert code(e) == errors.H_ERR_FNF
    msg = str(e.value)
    assert ds["samples"][0]["image_file_name"] in msg and "'image_dir'" in msg
    assert ds == ref
    got = ha.gen_dl_samples(ds, [0, 1], "classification", {"image_dir": moved})
    assert len(got) == 2
    # a dataset written on Windows: backslash separators are read as folders
    win = copy.deepcopy(ds)
    for s in win["samples"]:
        s["image_file_name"] = s["image_file_name"].replace("/", "\\")
    got2 = ha.gen_dl_samples(win, [0, 1], "classification", {"image_dir": moved})
    for a, b in zip(got, got2):
        np.testing.assert_array_equal(a["image"], b["image"])


def test_gen_dl_samples_errors(class_tree):
    root, _ = class_tree
    ds = ha.read_dl_dataset_classification(root, "last_folder")
    n = len(ds["samples"])
    ref = copy.deepcopy(ds)
    cases = [
        ((ds, [n], "classification", []), errors.H_ERR_DL_INVALID_SAMPLE_INDEX),
        ((ds, [-1], "classification", []), errors.H_ERR_DL_INVALID_SAMPLE_INDEX),
        ((ds, [1.0], "classification", []), errors.H_ERR_DL_INVALID_SAMPLE_INDEX),
        ((ds, ["0"], "classification", []), errors.H_ERR_DL_INVALID_SAMPLE_INDEX),
        ((ds, [0], "classify", []), errors.H_ERR_WIPV3),
        ((ds, [0], 1, []), errors.H_ERR_WIPT3),
        ((ds, [0], "anomaly_detection", []), errors.H_ERR_DL_UNSUPPORTED_GENVALUE),
        ((ds, [0], "detection", []), errors.H_ERR_DL_INVALID_DATASET),
        ((ds, [0], "segmentation", []), errors.H_ERR_DL_INVALID_DATASET),
        ((ds, [0], "off", {"imagedir": "/x"}), errors.H_ERR_WIPV4),
        (({"samples": "x"}, [0], "off", []), errors.H_ERR_DL_INVALID_DATASET),
        (("ds", [0], "off", []), errors.H_ERR_WIPT1),
    ]
    for args, want in cases:
        with pytest.raises(ha.HOperatorError) as e:
            ha.gen_dl_samples(*args)
        assert code(e) == want, (args[1:], e.value)
    assert ds == ref
    # a corrupt file: 7780 naming it
    bad = ds["samples"][4]["image_file_name"]
    with open(os.path.join(root, bad), "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(ha.HOperatorError) as e:
        ha.gen_dl_samples(ds, [0, 4], "classification", [])
    assert code(e) == errors.H_ERR_DL_FILE_READ and os.path.basename(bad) in str(e.value)


def test_gen_dl_samples_from_images():
    a, b = crop(CAMERA, 0), crop(ASTRONAUT, 1)
    out = ha.gen_dl_samples_from_images([a, b])
    assert [s["image_id"] for s in out] == [0, 1]
    assert out[0]["image"].shape == a.shape + (1,) and out[1]["image"].shape == b.shape
    np.testing.assert_array_equal(out[0]["image"][:, :, 0], a)
    np.testing.assert_array_equal(out[1]["image"], b)
    assert not np.shares_memory(out[1]["image"], b)
    out = ha.gen_dl_samples_from_images(ha.HObject([b, b]))
    assert len(out) == 2 and out[1]["image_id"] == 1
    batch = np.stack([a, a, a])  # (N, H, W)
    assert len(ha.gen_dl_samples_from_images(batch)) == 3
    assert len(ha.gen_dl_samples_from_images(b)) == 1
    with pytest.raises(ha.HOperatorError) as e:
        ha.gen_dl_samples_from_images("image.png")
    assert code(e) == errors.H_ERR_WIPT1


def test_read_dl_samples_raw_and_dlsample_dir(class_tree, tmp_path):
    root, _ = class_tree
    ds = ha.read_dl_dataset_classification(root, "last_folder")
    got = ha.read_dl_samples(ds, [1, 5])
    ref = ha.gen_dl_samples(ds, [1, 5], "off", [])
    for a, b in zip(got, ref):
        assert a.keys() == b.keys()
        np.testing.assert_array_equal(a["image"], b["image"])
    with pytest.raises(ha.HOperatorError) as e:
        ha.read_dl_samples(ds, [len(ds["samples"])])
    assert code(e) == errors.H_ERR_DL_INVALID_SAMPLE_INDEX
    pre = copy.deepcopy(ds)
    pre["dlsample_dir"] = str(tmp_path / "pre")
    for s in pre["samples"]:
        s["dlsample_file_name"] = f"samples/{s['image_id']}_dlsample.hdict"
    with pytest.raises(ha.HOperatorError) as e:
        ha.read_dl_samples(pre, [0])
    assert code(e) == errors.H_ERR_FNF and "0_dlsample.hdict" in str(e.value)
    del pre["samples"][2]["dlsample_file_name"]
    with pytest.raises(ha.HOperatorError) as e:
        ha.read_dl_samples(pre, [2])
    assert code(e) == errors.H_ERR_DL_INVALID_DATASET


def test_read_dl_samples_from_hdict_files(tmp_path):
    from halcdl.io.hdict import write_hdict
    os.makedirs(tmp_path / "pre" / "samples")
    rng = np.random.default_rng(2)
    ds = {"image_dir": "/nowhere", "dlsample_dir": str(tmp_path / "pre"), "samples": []}
    written = []
    for k in range(3):
        smp = {"image": rng.random((8, 6, 3)).astype(np.float32), "image_id": k,
               "image_label_id": k % 2}
        name = f"samples/{k}_dlsample.hdict"
        write_hdict(smp, str(tmp_path / "pre" / name))
        ds["samples"].append({"image_id": k, "image_file_name": f"{k}.png",
                              "image_label_id": k % 2, "dlsample_file_name": name})
        written.append(smp)
    got = ha.read_dl_samples(ds, [2, 0])
    for g, w in zip(got, [written[2], written[0]]):
        np.testing.assert_array_equal(np.asarray(g["image"]), w["image"])
        assert int(np.asarray(g["image_id"]).ravel()[0]) == w["image_id"]


# ---------------------------------------------------------------------------------------------
# read_dl_dataset_segmentation
# ---------------------------------------------------------------------------------------------
@pytest.fixture()
def seg_tree(tmp_path):
    img_dir, seg_dir = tmp_path / "img", tmp_path / "lbl"
    labels = {}
    for k in range(5):
        im = crop(ASTRONAUT, k) if k % 2 else crop(CAMERA, k)
        lab = np.digitize(crop(CAMERA, k + 10), [80, 170]).astype(np.uint8)  # classes 0, 1, 2
        ext = "jpg" if k == 0 else "png"
        sub = "a/" if k == 4 else ""
        _write(str(img_dir / f"{sub}img_{k}.{ext}"), im)
        _write(str(seg_dir / f"{sub}img_{k}.png"), lab)
        labels[f"{sub}img_{k}.{ext}"] = lab
    _write(str(seg_dir / "img_1.tif"), np.zeros((24, 32), np.uint8))  # .png is preferred
    return str(img_dir), str(seg_dir), labels


def test_segmentation_pairing(seg_tree):
    img_dir, seg_dir, labels = seg_tree
    ds = ha.read_dl_dataset_segmentation(img_dir, seg_dir, ["bg", "dark", "bright"], [0, 1, 2],
                                         [], [], [])
    assert ds["segmentation_dir"] == seg_dir and ds["class_ids"] == [0, 1, 2]
    names = [s["image_file_name"] for s in ds["samples"]]
    assert names == sorted(labels)
    for s in ds["samples"]:
        assert os.path.splitext(s["segmentation_file_name"])[0] == \
            os.path.splitext(s["image_file_name"])[0]
        assert s["segmentation_file_name"].endswith(".png")
    batch = ha.gen_dl_samples(ds, list(range(len(names))), "segmentation", [])
    for s, b in zip(ds["samples"], batch):
        assert set(b) == {"image", "image_id", "segmentation_image"}
        assert b["segmentation_image"].shape == b["image"].shape[:2]
        np.testing.assert_array_equal(b["segmentation_image"], labels[s["image_file_name"]])
    # explicit lists, paired by position
    ds2 = ha.read_dl_dataset_segmentation(img_dir, seg_dir, ["bg", "dark", "bright"],
                                          [0, 1, 2], ["img_2.png", "img_1.png"],
                                          ["img_2.png", "img_1.tif"], {})
    assert [(s["image_file_name"], s["segmentation_file_name"]) for s in ds2["samples"]] == \
        [("img_2.png", "img_2.png"), ("img_1.png", "img_1.tif")]


def test_segmentation_errors(seg_tree, tmp_path):
    img_dir, seg_dir, _ = seg_tree
    cn, ci = ["bg", "dark", "bright"], [0, 1, 2]
    cases = [
        ((str(tmp_path / "no"), seg_dir, cn, ci, [], [], []), errors.H_ERR_FNF),
        ((img_dir, str(tmp_path / "no"), cn, ci, [], [], []), errors.H_ERR_FNF),
        ((img_dir, seg_dir, cn, [0, 1], [], [], []), errors.H_ERR_WIPN4),
        ((img_dir, seg_dir, cn, [0, 1, 1], [], [], []), errors.H_ERR_DL_CLASS_IDS_NOT_UNIQUE),
        ((img_dir, seg_dir, cn, [0, 1, "2"], [], [], []), errors.H_ERR_WIPT4),
        ((img_dir, seg_dir, [], [], [], [], []), errors.H_ERR_WIPN3),
        ((img_dir, seg_dir, cn, ci, ["img_9.png"], [], []), errors.H_ERR_FNF),
        ((img_dir, seg_dir, cn, ci, ["img_1.png", "img_2.png"], ["img_1.png"], []),
         errors.H_ERR_WIPN6),
        ((img_dir, seg_dir, cn, ci, [], [], {"x": 1}), errors.H_ERR_WIPV7),
    ]
    for args, want in cases:
        with pytest.raises(ha.HOperatorError) as e:
            ha.read_dl_dataset_segmentation(*args)
        assert code(e) == want, (e.value)
    os.remove(os.path.join(seg_dir, "img_3.png"))
    with pytest.raises(ha.HOperatorError) as e:
        ha.read_dl_dataset_segmentation(img_dir, seg_dir, cn, ci, [], [], [])
    assert code(e) == errors.H_ERR_FNF and "img_3" in str(e.value)


# ---------------------------------------------------------------------------------------------
# read_dl_dataset_from_coco
# ---------------------------------------------------------------------------------------------
def _coco(tmp_path):
    rng = np.random.default_rng(7)
    images = [{"id": i, "file_name": f"im{i}.png", "width": 64, "height": 48}
              for i in (10, 3, 25, 4)]
    cats = [{"id": 7, "name": "bolt"}, {"id": 1, "name": "nut"}, {"id": 3, "name": "washer"}]
    anns, aid = [], 1
    for im in images[:3]:  # image 4 has no annotations
        for _ in range(int(rng.integers(1, 5))):
            x, y = rng.uniform(0, 40, 2)
            w, h = rng.uniform(1, 20, 2)
            anns.append({"id": aid, "image_id": im["id"],
                         "category_id": int(rng.choice([7, 1, 3])),
                         "bbox": [float(x), float(y), float(w), float(h)],
                         "area": float(w * h), "iscrowd": int(aid % 4 == 0),
                         "segmentation": [[float(x), float(y), float(x + w), float(y),
                                           float(x + w), float(y + h)]]})
            aid += 1
    coco = {"images": images, "categories": cats, "annotations": anns}
    p = tmp_path / "coco.json"
    p.write_text(json.dumps(coco))
    return str(p), coco


def test_coco_boxes_match_pycocotools(tmp_path):
    from pycocotools.coco import COCO
    path, raw = _coco(tmp_path)
    ds = ha.read_dl_dataset_from_coco(path, str(tmp_path / "imgs"), [])
    api = COCO(path)
    assert ds["class_ids"] == sorted(api.getCatIds())
    assert ds["class_names"] == [api.loadCats(i)[0]["name"] for i in ds["class_ids"]]
    assert ds["image_dir"] == str(tmp_path / "imgs")
    assert [s["image_id"] for s in ds["samples"]] == [im["id"] for im in raw["images"]]
    for s in ds["samples"]:
        anns = api.loadAnns(api.getAnnIds(imgIds=s["image_id"]))
        assert s["image_file_name"] == api.loadImgs(s["image_id"])[0]["file_name"]
        assert s["bbox_label_id"] == [a["category_id"] for a in anns]
        b = np.array([a["bbox"] for a in anns]).reshape(-1, 4)
        np.testing.assert_array_equal(s["bbox_row1"], b[:, 1])
        np.testing.assert_array_equal(s["bbox_col1"], b[:, 0])
        np.testing.assert_array_equal(s["bbox_row2"], b[:, 1] + b[:, 3])
        np.testing.assert_array_equal(s["bbox_col2"], b[:, 0] + b[:, 2])
    assert ds["samples"][3]["bbox_label_id"] == [] and ds["samples"][3]["bbox_row1"] == []
    # non-crowd only
    nc = ha.read_dl_dataset_from_coco(path, "imgs", {"read_only_non_crowd": "true"})
    for s in nc["samples"]:
        anns = api.loadAnns(api.getAnnIds(imgIds=s["image_id"], iscrowd=False))
        assert s["bbox_label_id"] == [a["category_id"] for a in anns]
    assert sum(map(len, (s["bbox_label_id"] for s in nc["samples"]))) < \
        sum(map(len, (s["bbox_label_id"] for s in ds["samples"])))
    rw = ha.read_dl_dataset_from_coco(path, "imgs", {"read_raw_annotations": "true"})
    assert rw["samples"][0]["coco_raw_annotations"] == \
        api.loadAnns(api.getAnnIds(imgIds=rw["samples"][0]["image_id"]))
    # the dataset splits and finds like any other
    ha.set_system("seed_rand", 2)
    ha.split_dl_dataset(ds, 50, 25, [])
    assert all("split" in s for s in ds["samples"])
    assert ha.find_dl_samples(ds["samples"], "bbox_label_id", [7], "contain") == \
        [i for i, s in enumerate(ds["samples"]) if 7 in s["bbox_label_id"]]


def test_coco_detection_samples(tmp_path):
    path, raw = _coco(tmp_path)
    d = tmp_path / "imgs"
    for im in raw["images"]:
        _write(str(d / im["file_name"]), crop(ASTRONAUT, im["id"], 48, 64))
    ds = ha.read_dl_dataset_from_coco(path, str(d), [])
    batch = ha.gen_dl_samples(ds, [0, 3], "detection", [])
    assert set(batch[0]) == {"image", "image_id", "bbox_label_id", "bbox_row1", "bbox_col1",
                             "bbox_row2", "bbox_col2"}
    assert batch[0]["bbox_col2"] == ds["samples"][0]["bbox_col2"]
    assert batch[1]["bbox_label_id"] == []
    np.testing.assert_array_equal(batch[0]["image"], crop(ASTRONAUT, 10, 48, 64))


def test_coco_errors(tmp_path):
    path, raw = _coco(tmp_path)

    count = iter(range(100))

    def write(obj):
        p = tmp_path / f"bad{next(count)}.json"
        p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
        return str(p)
    bad_cat = copy.deepcopy(raw)
    bad_cat["annotations"][0]["category_id"] = 99
    bad_img = copy.deepcopy(raw)
    bad_img["annotations"][0]["image_id"] = 99
    bad_box = copy.deepcopy(raw)
    bad_box["annotations"][0]["bbox"] = [1, 2, -3, 4]
    dup = copy.deepcopy(raw)
    dup["categories"].append({"id": 7, "name": "again"})
    cases = [
        ((str(tmp_path / "none.json"), "i", []), errors.H_ERR_FNF),
        ((write("{not json"), "i", []), errors.H_ERR_DL_FILE_READ),
        ((write([1, 2]), "i", []), errors.H_ERR_DL_INVALID_DATASET),
        ((write({"images": []}), "i", []), errors.H_ERR_DL_INVALID_DATASET),
        ((write(bad_cat), "i", []), errors.H_ERR_DL_INVALID_DATASET),
        ((write(bad_img), "i", []), errors.H_ERR_DL_INVALID_DATASET),
        ((write(bad_box), "i", []), errors.H_ERR_DL_INVALID_DATASET),
        ((write(dup), "i", []), errors.H_ERR_DL_CLASS_IDS_NOT_UNIQUE),
        ((path, 3, []), errors.H_ERR_WIPT2),
        ((path, "i", {"read_segmentation_masks": "true"}), errors.H_ERR_DL_UNSUPPORTED_GENVALUE),
        ((path, "i", {"read_only_non_crowd": "maybe"}), errors.H_ERR_WIPV3),
        ((path, "i", {"masks": "true"}), errors.H_ERR_WIPV3),
    ]
    for args, want in cases:
        with pytest.raises(ha.HOperatorError) as e:
            ha.read_dl_dataset_from_coco(*args)
        assert code(e) == want, (args, e.value)


def test_top_level_exports():
    for name in ("read_dl_dataset_classification", "read_dl_dataset_segmentation",
                 "read_dl_dataset_from_coco", "split_dl_dataset", "find_dl_samples",
                 "gen_dl_samples", "gen_dl_samples_from_images", "read_dl_samples"):
        assert name in ha.__all__ and callable(getattr(ha, name))
    with pytest.raises(ha.HOperatorError) as e:
        ha.find_dl_samples([], "k", 1, "nope")
    assert e.value.operator == "find_dl_samples"


# ---------------------------------------------------------------------------------------------
# a real DLDataset written by MVTec's Deep Learning Tool (Windows image_dir, rectangle2 boxes)
# ---------------------------------------------------------------------------------------------
CUP = os.path.join(halcon_files_dir() or "/nonexistent", "cup_detection")


@pytest.mark.skipif(not os.path.isfile(os.path.join(CUP, "labels.hdict")),
                    reason="the real HALCON files are not on this machine")
def test_real_halcon_dataset_redirected_image_dir():
    from halcdl.io.hdict import read_hdict
    ds = read_hdict(os.path.join(CUP, "labels.hdict"))
    assert ds["image_dir"].startswith("E:/")
    with pytest.raises(ha.HOperatorError) as e:
        ha.gen_dl_samples(ds, [0], "detection", [])
    assert code(e) == errors.H_ERR_FNF and "gen_param {'image_dir'" in str(e.value)
    n = len(ds["samples"])
    batch = ha.gen_dl_samples(ds, list(range(n)), "detection",
                              {"image_dir": os.path.join(CUP, "images")})
    for s, b in zip(ds["samples"], batch):
        ref = np.asarray(Image.open(os.path.join(CUP, "images", s["image_file_name"])))
        np.testing.assert_array_equal(b["image"], ref if ref.ndim == 3 else ref[:, :, None])
        assert b["image"].shape[:2] == (320, 512)
        assert b["image_id"] == s["image_id"]
        for k in ("bbox_row", "bbox_col", "bbox_phi", "bbox_length1", "bbox_length2",
                  "bbox_label_id"):
            want = s[k] if isinstance(s[k], list) else [s[k]]  # one box reads as a scalar
            assert b[k] == want
    ha.set_system("seed_rand", 42)
    ha.split_dl_dataset(ds, 60, 20, [])
    sp = [s["split"] for s in ds["samples"]]
    assert abs(sp.count("train") - 0.6 * n) <= 2 and sp.count("test") >= 1
    with_cls1 = ha.find_dl_samples(ds["samples"], "bbox_label_id", 1, "contain")
    assert with_cls1 == [i for i, s in enumerate(ds["samples"])
                         if 1 in (s["bbox_label_id"] if isinstance(s["bbox_label_id"], list)
                                  else [s["bbox_label_id"]])]
    assert len(with_cls1) > 0
    assert ha.find_dl_samples(ds["samples"], "bbox_label_id", [0, 1], "match") == \
        [i for i, s in enumerate(ds["samples"]) if s["bbox_label_id"] == [0, 1]]


def test_one_sample_dataset_from_hdict_reads_as_dict(tmp_path):
    _write(str(tmp_path / "a.png"), crop(CAMERA, 1))
    ds = {"image_dir": str(tmp_path), "class_ids": 0, "class_names": "x",
          "samples": {"image_id": 5, "image_file_name": "a.png", "image_label_id": 0}}
    b = ha.gen_dl_samples(ds, 0, "classification", [])
    assert b[0]["image_id"] == 5 and b[0]["image_label_id"] == 0
    ha.split_dl_dataset(ds, 100, 0, [])
    assert ds["samples"]["split"] == "train"


def test_no_other_exception_escapes(tmp_path):
    """A grab-bag of wrong values for every parameter: only HOperatorError comes out."""
    weird = [None, 3, -1, 2.5, float("nan"), "", "x", [], [1, "a"], {}, {"samples": 5},
             {"samples": [{}]}, {"samples": [{"image_file_name": 3, "image_id": "a"}]},
             np.zeros((2, 2, 2, 2)), b"bytes", object(), str(tmp_path), [[1]], {1: 2}]
    good = {"samples": [{"image_id": 0, "image_file_name": "a.png", "image_label_id": 0}],
            "image_dir": str(tmp_path)}
    d = str(tmp_path)
    calls = [  # each operator with arguments that get past the parameters not replaced
        (ha.read_dl_dataset_classification, lambda: [d, "last_folder"]),
        (ha.read_dl_dataset_segmentation, lambda: [d, d, ["a"], [0], [], [], []]),
        (ha.read_dl_dataset_from_coco, lambda: [d, d, []]),
        (ha.split_dl_dataset, lambda: [copy.deepcopy(good), 50, 20, []]),
        (ha.find_dl_samples, lambda: [copy.deepcopy(good["samples"]), "image_id", 0, "or"]),
        (ha.gen_dl_samples, lambda: [copy.deepcopy(good), [0], "off", []]),
        (ha.gen_dl_samples_from_images, lambda: [np.zeros((2, 2))]),
        (ha.read_dl_samples, lambda: [copy.deepcopy(good), [0]]),
    ]
    for fn, base in calls:
        for pos in range(len(base())):
            for w in weird:
                args = base()
                args[pos] = w
                try:
                    fn(*args)
                except ha.HOperatorError:
                    pass

"""HALCON's preprocessing procedures (workflow/preprocess.py, docs/preprocessing.md).

References: Pillow's resampling (BOX when shrinking, BILINEAR when enlarging), closed-form
gray-value scalings, drawn boxes that must still enclose their pixels, the 7736 guard with a
real model, and bad inputs that must raise HALCON's numbers and change nothing."""
from __future__ import annotations

import copy
import os
import pickle

import numpy as np
import pytest
from PIL import Image

import halcdl as ha
from halcdl.workflow import preprocess as pp

from helpers import assert_close, halcon_files_dir


def param(mt="classification", w=32, h=24, c=3, norm="none", dom="full_domain", gp=None,
          ign=(), bg=(), cb=()):
    return ha.create_dl_preprocess_param(mt, w, h, c, [], [], norm, dom, list(ign), list(bg),
                                         list(cb), gp or {})


def raises(code, fn):
    with pytest.raises(ha.HOperatorError) as info:
        fn()
    assert info.value.error_code == code, info.value.message
    return info.value


# ------------------------------------------------------------------------------------------
# create_dl_preprocess_param
# ------------------------------------------------------------------------------------------
def test_keys_of_halcon24_detection_file():
    # the key set of detection_preprocess_params_{a,b}.hdict (HALCON 24.x), from `strings`
    halcon_keys = {"model_type", "instance_type", "image_width", "image_height",
                   "image_num_channels", "image_range_min", "image_range_max",
                   "normalization_type", "domain_handling", "augmentation"}
    p = param("detection", 512, 320, 3, gp={"augmentation": "true"})
    assert set(p) == halcon_keys
    assert p["instance_type"] == "rectangle1" and p["image_range_min"] == -127
    assert p["image_range_max"] == 128


def test_keys_match_the_real_halcon_files():
    from halcdl.io.hdict import read_hdict
    base = halcon_files_dir()
    if not base:
        pytest.skip("the real HALCON files are not available")
    for f in ("detection_preprocess_params_a.hdict", "detection_preprocess_params_b.hdict"):
        real = read_hdict(os.path.join(base, f))
        p = param("detection", int(real["image_width"]), int(real["image_height"]),
                  int(real["image_num_channels"]), gp={"augmentation": real["augmentation"]})
        assert set(p) == set(real)
        assert p == {k: real[k] for k in p}  # same values too (HALCON's defaults)
        pp._check_preprocess_param(real)  # HALCON's own dict is accepted as it is
        s = {"image": np.zeros((40, 60, 3), np.uint8), "bbox_row1": [1.0], "bbox_col1": [2.0],
             "bbox_row2": [9.0], "bbox_col2": [19.0], "bbox_label_id": [0]}
        ha.preprocess_dl_samples([s], real)
        assert s["image"].shape == (real["image_height"], real["image_width"], 3)


def test_segmentation_and_rectangle2_keys():
    p = param("segmentation", ign=[255], bg=[0], cb=[3, 4])
    assert p["ignore_class_ids"] == [255] and p["set_background_id"] == [0]
    assert p["class_ids_background"] == [3, 4]
    p2 = param("detection", gp={"instance_type": "rectangle2",
                                "class_ids_no_orientation": [1]})
    assert p2["ignore_direction"] == 0 and p2["class_ids_no_orientation"] == [1]
    p3 = ha.create_dl_preprocess_param("classification", 8, 8, 1, 0, 255, "none",
                                       "full_domain", [], [], [], [["down_scaling"], [0.5]])
    assert p3["down_scaling"] == 0.5 and p3["image_range_min"] == 0


def test_from_model():
    ha.set_system("seed_rand", 3)
    m = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    ha.set_dl_model_param(m, "image_dimensions", [40, 30, 1])
    p = ha.create_dl_preprocess_param_from_model(m, "none", "full_domain", [], [], [])
    assert (p["image_width"], p["image_height"], p["image_num_channels"]) == (40, 30, 1)
    assert p["model_type"] == "classification"
    raises(1302, lambda: ha.create_dl_preprocess_param_from_model(m, "bad", "full_domain", [],
                                                                  [], []))
    raises(1201, lambda: ha.create_dl_preprocess_param_from_model("m", "none", "full_domain",
                                                                  [], [], []))


@pytest.mark.parametrize("args,code", [
    (dict(mt="regression"), 1301), (dict(mt=3), 1201), (dict(w=0), 1302), (dict(w=2.5), 1202),
    (dict(h=-1), 1303), (dict(c=2), 1304), (dict(norm="max"), 1307), (dict(dom="x"), 1308),
    (dict(dom="keep_domain"), 1308), (dict(mt="segmentation", bg=[0]), 1311),
    (dict(mt="segmentation", bg=[0, 1], cb=[2]), 1410),
    (dict(mt="segmentation", bg=[0], cb=[0]), 1311),
    (dict(mt="segmentation", ign=[3], bg=[0], cb=[3]), 1309),
    (dict(ign=["a"]), 1209), (dict(gp={"nonsense": 1}), 7911),
    (dict(gp={"instance_type": "rectangle1"}), 7911),
    (dict(mt="detection", gp={"instance_type": "circle"}), 7914),
    (dict(gp={"down_scaling": 1.5}), 7914), (dict(gp={"down_scaling": 0}), 7914),
    (dict(norm="constant_values", gp={"deviation_values_normalization": [0, 1, 1]}), 7914),
    (dict(gp={"mean_values_normalization": [1, 2]}), 7914),
])
def test_create_bad_arguments(args, code):
    raises(code, lambda: param(**args))


def test_create_range_and_gen_param_errors():
    f = ha.create_dl_preprocess_param
    raises(1306, lambda: f("classification", 8, 8, 3, 10, 10, "none", "full_domain", [], [], [],
                           {}))
    raises(1205, lambda: f("classification", 8, 8, 3, "lo", [], "none", "full_domain", [], [],
                           [], {}))
    raises(1305, lambda: f("classification", 8, 8, 3, float("nan"), [], "none", "full_domain",
                           [], [], [], {}))
    raises(1212, lambda: f("classification", 8, 8, 3, [], [], "none", "full_domain", [], [], [],
                           "x"))


# ------------------------------------------------------------------------------------------
# resizing against Pillow
# ------------------------------------------------------------------------------------------
def area_average(img, h_out, w_out):
    """Independent exact area averaging: repeat every pixel h_out x w_out times (nearest),
    then average blocks of h_in x w_in."""
    h, w = img.shape[:2]
    big = np.repeat(np.repeat(img, h_out, axis=0), w_out, axis=1)
    return big.reshape(h_out, h, w_out, w, -1).mean(axis=(1, 3))


def test_shrink_is_exact_area_averaging():
    rng = np.random.default_rng(9)
    img = rng.uniform(0, 255, size=(37, 50, 3))
    assert_close(pp.resize_image(img, 16, 20), area_average(img, 16, 20), 1e-9, 1e-9,
                 "area averaging")


@pytest.mark.parametrize("hw_in,hw_out,flt", [((36, 50), (18, 25), Image.BOX),
                                              ((13, 9), (40, 31), Image.BILINEAR),
                                              ((24, 24), (24, 24), Image.BOX)])
def test_resize_matches_pillow(hw_in, hw_out, flt):
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, size=hw_in + (3,))
    ours = pp.resize_image(img, *hw_out)
    ref = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(img[:, :, c], dtype=np.float32), "F")
                               .resize(hw_out[::-1], flt)) for c in range(3)], axis=2)
    assert_close(ours, ref, atol=1e-3, rtol=1e-5, what="resize vs Pillow")


def test_resize_through_preprocess_and_scaling_closed_form():
    from skimage import data
    img = data.astronaut()[::2, ::2]  # uint8 (256, 256, 3)
    p = param(w=64, h=48)
    s = {"image": img}
    pp.preprocess_dl_samples([s], p)
    ref = area_average(img.astype(np.float64), 48, 64)
    assert s["image"].dtype == np.float32 and s["image"].shape == (48, 64, 3)
    assert_close(s["image"], ref * (255.0 / 255.0) - 127.0, atol=2e-3, rtol=1e-5,
                 what="uint8 -> [-127, 128]")


def test_scalings_closed_forms():
    rng = np.random.default_rng(1)
    u16 = rng.integers(0, 65536, size=(8, 8, 3)).astype(np.uint16)
    s = {"image": u16}
    pp.preprocess_dl_samples([s], param(w=8, h=8))
    assert_close(s["image"], u16 * (255.0 / 65535.0) - 127.0, 1e-3, 1e-6, "uint16")
    flt = rng.uniform(-3, 7, size=(8, 8, 3))
    s = {"image": flt.copy()}
    pp.preprocess_dl_samples([s], param(w=8, h=8))
    assert_close(s["image"], flt, 1e-5, 1e-6, "float passes unchanged")
    s = {"image": flt.copy()}
    pp.preprocess_dl_samples([s], param(w=8, h=8, norm="all_channels"))
    mn, mx = flt.min(axis=(0, 1)), flt.max(axis=(0, 1))
    assert_close(s["image"], (flt - mn) / (mx - mn) * 255.0 - 127.0, 1e-3, 1e-6, "all_channels")
    s = {"image": flt.copy()}
    pp.preprocess_dl_samples([s], param(w=8, h=8, norm="first_channel"))
    exp = (flt - mn[0]) / (mx[0] - mn[0]) * 255.0 - 127.0  # one scale for all channels
    assert_close(s["image"], exp, 1e-3, 1e-6, "first_channel")
    const = np.full((8, 8, 3), 5.0)  # a constant channel is only shifted (scale 1)
    s = {"image": const.copy()}
    pp.preprocess_dl_samples([s], param(w=8, h=8, norm="all_channels"))
    assert_close(s["image"], const - 5.0 - 127.0, 1e-6, 0, "constant image")
    mean, dev = [10.0, 20.0, 30.0], [2.0, 4.0, 8.0]
    s = {"image": flt.copy()}
    pp.preprocess_dl_samples([s], param(w=8, h=8, norm="constant_values",
                                        gp={"mean_values_normalization": mean,
                                            "deviation_values_normalization": dev}))
    assert_close(s["image"], (flt - mean) / dev, 1e-4, 1e-6, "constant_values")
    # HALCON's defaults (ImageNet statistics); a gray image is replicated first
    g = rng.integers(0, 256, size=(8, 8)).astype(np.uint8)
    s = {"image": g}
    pp.preprocess_dl_samples([s], param(w=8, h=8, norm="constant_values"))
    exp = (g[:, :, None] - np.array([123.675, 116.28, 103.53])) / \
        np.array([58.395, 57.12, 57.375])
    assert_close(s["image"], exp, 1e-4, 1e-6, "constant_values defaults")


def test_gray_color_conversions():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(6, 7, 3)).astype(np.uint8)
    s = {"image": rgb}
    pp.preprocess_dl_samples([s], param(w=7, h=6, c=1))
    gray = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert s["image"].shape == (6, 7, 1)
    assert_close(s["image"][:, :, 0], gray - 127.0, 1e-3, 1e-6, "rgb1_to_gray")
    g = rng.integers(0, 256, size=(6, 7)).astype(np.uint8)
    s = {"image": g}
    pp.preprocess_dl_samples([s], param(w=7, h=6, c=3))
    assert s["image"].shape == (6, 7, 3)
    for ch in range(3):
        assert_close(s["image"][:, :, ch], g - 127.0, 1e-4, 0, "gray replicated")


# ------------------------------------------------------------------------------------------
# labels and boxes move with the image
# ------------------------------------------------------------------------------------------
def test_segmentation_and_weight_images_nearest_and_integer():
    rng = np.random.default_rng(3)
    seg = rng.choice([0, 1, 2, 7], size=(30, 40)).astype(np.uint8)
    wim = rng.uniform(0, 2, size=(30, 40)).astype(np.float32)
    s = {"image": rng.integers(0, 256, (30, 40, 3)).astype(np.uint8),
         "segmentation_image": seg, "weight_image": wim}
    p = param("segmentation", w=17, h=11, bg=[0], cb=[7])
    pp.preprocess_dl_samples([s], p)
    out = s["segmentation_image"]
    assert out.shape == (11, 17) and out.dtype == np.uint8
    ref = np.asarray(Image.fromarray(seg).resize((17, 11), Image.NEAREST))
    ref = np.where(ref == 7, 0, ref)
    assert np.array_equal(out, ref)
    assert set(np.unique(out)) <= {0, 1, 2}
    wref = np.asarray(Image.fromarray(wim, "F").resize((17, 11), Image.NEAREST))
    assert s["weight_image"].dtype == np.float32
    assert np.array_equal(s["weight_image"], wref)


@pytest.mark.parametrize("out_hw", [(24, 32), (50, 20), (120, 90)])
def test_rectangle1_box_still_encloses_drawn_pixels(out_hw):
    img = np.zeros((60, 80), np.uint8)
    r1, c1, r2, c2 = 12, 30, 40, 61  # inclusive pixel rows / cols
    img[r1:r2 + 1, c1:c2 + 1] = 255
    s = {"image": img, "bbox_row1": [r1 - 0.5], "bbox_col1": [c1 - 0.5],
         "bbox_row2": [r2 + 0.5], "bbox_col2": [c2 + 0.5], "bbox_label_id": [3]}
    pp.preprocess_dl_samples([s], param("detection", w=out_hw[1], h=out_hw[0], c=1))
    a = s["image"][:, :, 0] + 127.0  # back to 0..255
    rows, cols = np.nonzero(a > 127.5)  # pixels mostly inside the drawn rectangle
    b = [s[k][0] for k in ("bbox_row1", "bbox_col1", "bbox_row2", "bbox_col2")]
    assert s["bbox_label_id"] == [3]
    assert rows.min() >= b[0] and rows.max() <= b[2] and cols.min() >= b[1] \
        and cols.max() <= b[3]
    # and tight: the box edges lie within one pixel of the outermost such pixels
    assert rows.min() - b[0] <= 1.0 and b[2] - rows.max() <= 1.0
    assert cols.min() - b[1] <= 1.0 and b[3] - cols.max() <= 1.0


def _inside_rect2(rr, cc, row, col, phi, l1, l2, tol=0.0):
    dr, dc = rr - row, cc - col
    u = dc * np.cos(phi) - dr * np.sin(phi)      # along length1 (row axis points down)
    v = dc * np.sin(phi) + dr * np.cos(phi)
    return (np.abs(u) <= l1 + tol) & (np.abs(v) <= l2 + tol)


@pytest.mark.parametrize("out_hw", [(60, 80), (30, 80), (90, 40)])
def test_rectangle2_box_moves_with_the_image(out_hw):
    h, w = 90, 120
    row, col, phi, l1, l2 = 44.0, 58.0, 0.6, 30.0, 12.0
    rr, cc = np.mgrid[0:h, 0:w]
    img = np.where(_inside_rect2(rr, cc, row, col, phi, l1, l2), 255, 0).astype(np.uint8)
    s = {"image": img, "bbox_row": [row], "bbox_col": [col], "bbox_phi": [phi],
         "bbox_length1": [l1], "bbox_length2": [l2], "bbox_label_id": [1]}
    p = param("detection", w=out_hw[1], h=out_hw[0], c=1,
              gp={"instance_type": "rectangle2"})
    pp.preprocess_dl_samples([s], p)
    a = s["image"][:, :, 0] + 127.0
    R, Cc = np.mgrid[0:out_hw[0], 0:out_hw[1]]
    b = [s[k][0] for k in ("bbox_row", "bbox_col", "bbox_phi", "bbox_length1", "bbox_length2")]
    bright = a > 200
    inside = _inside_rect2(R, Cc, *b, tol=1.0)
    assert bright.any() and np.all(inside[bright]), "bright pixels outside the new box"
    # area and centre of mass agree with the drawn region
    fy, fx = out_hw[0] / h, out_hw[1] / w
    # the box encloses the scaled (parallelogram) box, hardly larger; exact when isotropic
    area = 4 * l1 * l2 * fx * fy
    assert area * (1 - 1e-9) <= 4 * b[3] * b[4] <= 1.6 * area
    if fx == fy:
        assert abs(4 * b[3] * b[4] - area) < 1e-6 * area
    com = np.array([(R * a).sum(), (Cc * a).sum()]) / a.sum()
    assert np.allclose(com, [b[0], b[1]], atol=0.6)


def test_crop_domain_moves_boxes_and_crops_labels():
    img = np.arange(40 * 50, dtype=np.float64).reshape(40, 50)
    seg = (np.arange(40 * 50).reshape(40, 50) % 3).astype(np.uint8)
    s = {"image": img, "domain": [10, 5, 29, 44], "segmentation_image": seg,
         "bbox_row1": [12.0, 0.0], "bbox_col1": [6.0, 0.0], "bbox_row2": [20.0, 3.0],
         "bbox_col2": [50.0, 3.0], "bbox_label_id": [1, 2]}
    p = param("detection", w=40, h=20, c=1, dom="crop_domain")
    pp.preprocess_dl_samples([s], p)
    assert np.array_equal(s["image"][:, :, 0], img[10:30, 5:45].astype(np.float32))
    assert "domain" not in s
    assert s["bbox_label_id"] == [1]  # the second box lies outside the domain
    assert s["bbox_row1"] == [2.0] and s["bbox_col1"] == [1.0]
    assert s["bbox_col2"] == [39.5]  # clipped to the domain's right edge
    assert np.array_equal(s["segmentation_image"], seg[10:30, 5:45])


def test_down_scaling_same_in_training_and_inference():
    from skimage import data
    img = data.camera()  # (512, 512) uint8
    p = param(w=128, h=128, c=1, gp={"down_scaling": 0.5})
    a, b = {"image": img}, {"image": img.copy()}
    pp.preprocess_dl_samples([a], p)
    pp.preprocess_dl_samples(b, p)
    assert np.array_equal(a["image"], b["image"])
    # 512 -> 256 -> 128 by area averaging equals 4x4 block means
    blocks = img.astype(np.float64).reshape(128, 4, 128, 4).mean(axis=(1, 3)) - 127.0
    assert_close(a["image"][:, :, 0], blocks, 1e-3, 1e-6, "down_scaling 0.5")


# ------------------------------------------------------------------------------------------
# bad inputs: HALCON's numbers, nothing changed
# ------------------------------------------------------------------------------------------
def test_bad_samples_change_nothing():
    good = {"image": np.zeros((10, 10, 3), np.uint8), "image_id": 1}
    p = param(w=8, h=8)
    cases = [
        ({"image_id": 2}, 7783),
        ({"image": "a picture"}, 7736),
        ({"image": np.full((4, 4), np.nan)}, 7736),
        ({"image": np.zeros((4, 4, 2))}, 7736),
        ({"image": np.zeros((4, 4, 3)), "bbox_row1": [3.0], "bbox_col1": [1.0],
          "bbox_row2": [2.0], "bbox_col2": [3.0], "bbox_label_id": [0]}, 7736),
        ({"image": np.zeros((4, 4)), "segmentation_image": np.zeros((3, 4))}, 7736),
        ({"image": np.zeros((4, 4)), "segmentation_image": np.full((4, 4), 0.5)}, 7736),
    ]
    for bad, code in cases:
        batch = [copy.deepcopy(good), bad]
        before = pickle.dumps(batch)
        raises(code, lambda: pp.preprocess_dl_samples(batch, p))
        assert pickle.dumps(batch) == before, f"batch changed by a failing call ({bad})"
    raises(1201, lambda: pp.preprocess_dl_samples("x", p))
    raises(1202, lambda: pp.preprocess_dl_samples([good], "x"))
    bad_p = dict(p, image_width=0)
    raises(1302, lambda: pp.preprocess_dl_samples([good], bad_p))
    raises(1302, lambda: pp.preprocess_dl_samples([good], dict(p, unknown=1)))
    raises(1302, lambda: pp.preprocess_dl_samples([good], {k: v for k, v in p.items()
                                                           if k != "domain_handling"}))


# ------------------------------------------------------------------------------------------
# the 7736 guard in train_dl_model_batch / apply_dl_model
# ------------------------------------------------------------------------------------------
def test_integer_image_guard_then_preprocess_trains():
    ha.set_system("seed_rand", 7)
    m = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    ha.set_dl_model_param(m, "image_dimensions", [16, 16, 3])
    ha.set_dl_model_param(m, "class_ids", [0, 1])
    ha.set_dl_model_param(m, "batch_size", 2)
    rng = np.random.default_rng(4)
    raw = [{"image": rng.integers(0, 256, (20, 24, 3)).astype(np.uint8), "image_label_id": i}
           for i in (0, 1)]
    same = [{"image": rng.integers(0, 256, (16, 16, 3)).astype(np.uint8), "image_label_id": i}
            for i in (0, 1)]
    e = raises(7736, lambda: ha.train_dl_model_batch(m, same))
    assert "preprocess_dl_samples" in e.message and "-127" in e.message
    raises(7736, lambda: ha.apply_dl_model(m, [{"image": same[0]["image"].astype(np.uint16)}],
                                           []))
    raises(7736, lambda: ha.apply_dl_model(m, [{"image": same[0]["image"].astype(np.int64)}],
                                           []))
    p = ha.create_dl_preprocess_param_from_model(m, "none", "full_domain", [], [], [])
    ha.preprocess_dl_samples(raw, p)
    r = ha.train_dl_model_batch(m, raw)
    assert np.isfinite(r["total_loss"])
    ha.apply_dl_model(m, [{"image": same[0]["image"].astype(np.float64)}], [])  # float: ok
    # a model whose range is the uint8 range takes uint8 images as they are
    ha.set_dl_model_param(m, "image_range_min", 0)
    ha.set_dl_model_param(m, "image_range_max", 255)
    ha.train_dl_model_batch(m, same)


# ------------------------------------------------------------------------------------------
# class weights, weight images, preprocess_dl_dataset (writer swapped for pickle until the
# .hdict codec is on this branch)
# ------------------------------------------------------------------------------------------
def halcon_weights(counts, max_weight):
    """HALCON's calculate_dl_segmentation_class_weights, written out per class."""
    total = sum(counts)
    w = [1.0 / (c / total + 0.0001) if c > 0 else 0.0 for c in counts]
    m = min(x for x, c in zip(w, counts) if c > 0)
    return [min(x / m, max_weight) for x in w]


def test_class_weights_formula():
    counts = [900, 90, 10, 0]
    assert_close(pp.class_weights_from_counts(np.array(counts), 50.0),
                 halcon_weights(counts, 50.0), 1e-12, 1e-12, "weights")
    w = pp.class_weights_from_counts(np.array(counts), 1000.0)
    assert w[0] == 1.0 and w[3] == 0.0 and 9.0 < w[1] < 10.0
    assert np.allclose(pp.class_weights_from_counts(np.array([5, 5, 5]), 10.0), 1.0)
    wi = pp.weight_image(np.array([[0, 1], [255, 2]]), [0, 1, 2], [0.5, 2.0, 3.0], [255])
    assert wi.dtype == np.float32 and np.array_equal(wi, [[0.5, 2.0], [0.0, 3.0]])


@pytest.fixture
def fake_io(monkeypatch, tmp_path):
    """Raw samples generated in memory; .hdict files written with pickle."""
    rng = np.random.default_rng(5)
    raw = {i: {"image": rng.integers(0, 256, (20, 30, 3)).astype(np.uint8), "image_id": i,
               "segmentation_image": rng.choice([0, 1, 2], size=(20, 30)).astype(np.uint8)}
           for i in (10, 11, 12)}

    def gen(ds, idx, *model_type):
        return [copy.deepcopy(raw[ds["samples"][j]["image_id"]]) for j in idx]

    def write(obj, path):
        with open(path, "wb") as f:
            pickle.dump(obj, f)

    def read(path):
        with open(path, "rb") as f:
            return pickle.load(f)
    monkeypatch.setattr(pp, "_gen_samples", gen)
    monkeypatch.setattr(pp, "_read_sample_files", gen)
    monkeypatch.setattr(pp, "_write_hdict", write)
    monkeypatch.setattr(pp, "_read_hdict", read)
    ds = {"image_dir": str(tmp_path), "class_names": ["a", "b", "c"], "class_ids": [0, 1, 2],
          "samples": [{"image_id": i, "image_file_name": f"{i}.png",
                       "segmentation_file_name": f"{i}_seg.png", "split": "train"}
                      for i in (10, 11, 12)]}
    return ds, raw, read


def test_preprocess_dl_dataset_writes_and_overwrite(fake_io, tmp_path):
    ds, raw, read = fake_io
    p = param("segmentation", w=15, h=10)
    out = tmp_path / "prep"
    name = ha.preprocess_dl_dataset(ds, str(out), p, {"max_weight": 5.0,
                                                      "show_progress": "false"})
    assert name == str(out / "dl_dataset.hdict")
    assert sorted(os.listdir(out)) == ["dl_dataset.hdict", "samples"]
    assert sorted(os.listdir(out / "samples")) == [f"{i}_dlsample.hdict" for i in (10, 11, 12)]
    written = read(name)
    assert written["dlsample_dir"] == str(out / "samples")
    assert written["preprocess_param"] == p
    assert ds["dlsample_dir"] == str(out / "samples")
    assert ds["samples"][0]["dlsample_file_name"] == "10_dlsample.hdict"
    smp = read(str(out / "samples" / "11_dlsample.hdict"))
    assert smp["image"].shape == (10, 15, 3) and smp["image"].dtype == np.float32
    seg = np.concatenate([raw[i]["segmentation_image"].ravel() for i in (10, 11, 12)])
    w = np.array(halcon_weights(np.bincount(seg, minlength=3).tolist(), 5.0))
    assert_close(smp["weight_image"], w[smp["segmentation_image"]], 1e-6, 1e-6, "weights")
    # existing folder: 'false' (default) -> 7914 and nothing touched; 'true' replaces it
    before = pickle.dumps(ds)
    stamp = os.path.getmtime(name)
    raises(7914, lambda: ha.preprocess_dl_dataset(ds, str(out), p, {}))
    assert pickle.dumps(ds) == before and os.path.getmtime(name) == stamp
    (out / "stale.txt").write_text("old")
    ha.preprocess_dl_dataset(ds, str(out), p, {"overwrite_files": "true",
                                               "class_weights": [1.0, 2.0, 3.0]})
    assert not (out / "stale.txt").exists()
    smp = read(str(out / "samples" / "10_dlsample.hdict"))
    exp = np.choose(smp["segmentation_image"].astype(int), [1.0, 2.0, 3.0])
    assert np.array_equal(smp["weight_image"], exp.astype(np.float32))
    raises(7914, lambda: ha.preprocess_dl_dataset(ds, str(out), p,
                                                  {"overwrite_files": "auto"}))
    assert [f for f in os.listdir(tmp_path) if f.startswith(".")] == []
    (tmp_path / "empty").mkdir()  # HALCON: any existing folder needs overwrite_files
    raises(7914, lambda: ha.preprocess_dl_dataset(ds, str(tmp_path / "empty"), p, {}))


def test_preprocess_dl_dataset_failure_leaves_nothing(fake_io, tmp_path):
    ds, raw, _ = fake_io
    raw[12]["image"] = np.full((5, 5), np.nan)
    before = pickle.dumps(ds)
    out = tmp_path / "prep2"
    raises(7736, lambda: ha.preprocess_dl_dataset(ds, str(out), param("segmentation"), []))
    assert not out.exists() and os.listdir(tmp_path) == []
    assert pickle.dumps(ds) == before
    raises(7911, lambda: ha.preprocess_dl_dataset(ds, str(out), param(), {"speed": 1}))
    raises(7911, lambda: ha.preprocess_dl_dataset(ds, str(out), param(), {"max_weight": 2}))
    raises(7914, lambda: ha.preprocess_dl_dataset(ds, str(out), param(),
                                                  {"overwrite_files": "maybe"}))
    raises(1303, lambda: ha.preprocess_dl_dataset(ds, str(out), param("segmentation", bg=[9],
                                                                      cb=[1]), {}))
    raises(1201, lambda: ha.preprocess_dl_dataset([], str(out), param(), {}))
    raises(7925, lambda: ha.preprocess_dl_dataset({}, str(out), param(), {}))
    raises(1203, lambda: ha.preprocess_dl_dataset(ds, str(out), 5, {}))


def test_calculate_class_weights_and_weight_images(fake_io, tmp_path):
    ds, raw, read = fake_io
    w = ha.calculate_dl_segmentation_class_weights(ds, 1000.0, [2])
    seg = np.concatenate([raw[i]["segmentation_image"].ravel() for i in (10, 11, 12)])
    n0, n1 = int((seg == 0).sum()), int((seg == 1).sum())
    assert_close(w, halcon_weights([n0, n1], 1000.0) + [0.0], 1e-12, 1e-12, "weights")
    nosplit = copy.deepcopy(ds)
    for s in nosplit["samples"]:
        s["split"] = "test"
    raises(7925, lambda: ha.calculate_dl_segmentation_class_weights(nosplit, 10.0, []))
    raises(1302, lambda: ha.calculate_dl_segmentation_class_weights(ds, 0, []))
    raises(1202, lambda: ha.calculate_dl_segmentation_class_weights(ds, "x", []))
    p = param("segmentation", w=15, h=10, ign=[2])
    out = tmp_path / "prep3"
    ha.preprocess_dl_dataset(ds, str(out), p, {"show_progress": "false"})
    ha.gen_dl_segmentation_weight_images(ds, p, [1.0, 2.0, 3.0], {})
    smp = read(str(out / "samples" / "10_dlsample.hdict"))
    exp = np.choose(smp["segmentation_image"].astype(int), [1.0, 2.0, 0.0])
    assert np.array_equal(smp["weight_image"], exp.astype(np.float32))
    raises(1403, lambda: ha.gen_dl_segmentation_weight_images(ds, p, [1.0], {}))
    raises(7911, lambda: ha.gen_dl_segmentation_weight_images(ds, p, [1, 1, 1], {"x": 1}))


def test_legacy_classifier_gets_the_guard_too():
    ha.set_system("seed_rand", 8)
    c = ha.read_dl_classifier("pretrained_dl_classifier_compact.hdl")
    ha.set_dl_classifier_param(c, "classes", ["a", "b"])
    ha.set_dl_classifier_param(c, "image_dimensions", [16, 16, 3])
    ha.set_dl_classifier_param(c, "batch_size", 2)
    rng = np.random.default_rng(6)
    ims = [rng.integers(0, 256, (16, 16, 3)).astype(np.uint8) for _ in range(2)]
    e = raises(7736, lambda: ha.train_dl_classifier_batch(ims, c, ["a", "b"]))
    assert e.operator == "train_dl_classifier_batch"
    raises(7736, lambda: ha.apply_dl_classifier(ims, c))
    p = {"model_type": "classification", "image_width": 16, "image_height": 16,
         "image_num_channels": 3, "image_range_min": -127, "image_range_max": 128,
         "normalization_type": "none", "domain_handling": "full_domain"}
    samples = [{"image": im} for im in ims]
    ha.preprocess_dl_samples(samples, p)
    ha.train_dl_classifier_batch([s["image"] for s in samples], c, ["a", "b"])


def test_workflow_end_to_end_with_files(tmp_path):
    """read_dl_dataset_classification → split → preprocess_dl_dataset (real .hdict files) →
    read_dl_samples → train_dl_model_batch; the raw uint8 samples hit the guard."""
    from skimage import data
    from halcdl.io.hdict import read_hdict
    for cls, ims in (("gray", [data.camera(), data.moon()]),
                     ("color", [data.chelsea(), data.coffee()])):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for k, im in enumerate(ims):
            Image.fromarray(im).save(tmp_path / "imgs" / cls / f"{k}.png")
    ds = ha.read_dl_dataset_classification(str(tmp_path / "imgs"), "last_folder")
    ha.split_dl_dataset(ds, 50, 0, {})
    ha.set_system("seed_rand", 11)
    m = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    ha.set_dl_model_param(m, "image_dimensions", [24, 24, 3])
    ha.set_dl_model_param(m, "class_ids", ds["class_ids"])
    ha.set_dl_model_param(m, "batch_size", 2)
    p = ha.create_dl_preprocess_param_from_model(m, "none", "full_domain", [], [], [])
    name = ha.preprocess_dl_dataset(ds, str(tmp_path / "prep"), p, {"show_progress": "false"})
    back = read_hdict(name)
    assert back["dlsample_dir"] == str(tmp_path / "prep" / "samples")
    assert len(back["samples"]) == 4
    samples = ha.read_dl_samples(back, [0, 1, 2, 3])
    for s in samples:
        assert s["image"].shape == (24, 24, 3) and s["image"].dtype == np.float32
        assert -127.0 <= s["image"].min() and s["image"].max() <= 128.0
    r = ha.train_dl_model_batch(m, samples[:2])
    assert np.isfinite(r["total_loss"])
    raw = ha.gen_dl_samples(ds, [0, 1], "classification", {})
    raises(7736, lambda: ha.train_dl_model_batch(m, raw))

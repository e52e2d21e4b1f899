"""augment_dl_samples (python/halcdl/workflow/augment.py, docs/augmentation.md).

References are independent of the implementation: which pixel went where is read back from
index images moved by numpy (np.rot90 / np.flip are only used to *recognise* the result),
boxes are checked against the drawn pixels they must enclose, rectangle2 boxes against their
polygon corners moved by an affine map fitted to the moved index image, and the photometric
methods against their closed forms.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest

import halcdl as ha
from halcdl import errors

N = 12  # square test images


def _rect2_corners(r, c, phi, l1, l2):
    """HALCON's rectangle2 corners: length1 along (row, col) = (-sin phi, cos phi)."""
    d1 = np.array([-math.sin(phi), math.cos(phi)])
    d2 = np.array([math.cos(phi), math.sin(phi)])
    ctr = np.array([r, c])
    return np.array([ctr + s1 * l1 * d1 + s2 * l2 * d2 for s1 in (-1, 1) for s2 in (-1, 1)])


def _same_point_set(a, b, tol=1e-9):
    a = sorted(map(tuple, np.round(np.asarray(a), 9)))
    b = sorted(map(tuple, np.round(np.asarray(b), 9)))
    return np.allclose(np.array(a), np.array(b), atol=tol)


def _box_sample(image_id, h=N, w=N, rng=None):
    """Image, label image with filled boxes (ids 1..3), weight image and rectangle1 boxes in
    pixel-centre coordinates (box = first and last covered pixel row/column)."""
    rng = np.random.default_rng(image_id) if rng is None else rng
    img = rng.normal(size=(h, w, 3)).astype(np.float32)
    seg = np.zeros((h, w), np.uint8)
    boxes = [(1, 2, 3, 6), (5, 0, 9, 2), (7, 6, 10, 10)]
    boxes = [(r1, c1, min(r2, h - 1), min(c2, w - 1)) for r1, c1, r2, c2 in boxes]
    for j, (r1, c1, r2, c2) in enumerate(boxes, start=1):
        seg[r1:r2 + 1, c1:c2 + 1] = j
    weight = rng.random((h, w)).astype(np.float32)
    anomaly = (rng.random((h, w, 1)) > 0.5).astype(np.uint8)
    return {
        "image": img, "image_id": image_id, "segmentation_image": seg, "weight_image": weight,
        "anomaly_ground_truth": anomaly,
        "bbox_row1": [float(b[0]) for b in boxes], "bbox_col1": [float(b[1]) for b in boxes],
        "bbox_row2": [float(b[2]) for b in boxes], "bbox_col2": [float(b[3]) for b in boxes],
        "bbox_label_id": [1, 2, 3],
    }


def _pixel_bbox(seg, j):
    rows, cols = np.nonzero(seg == j)
    return rows.min(), cols.min(), rows.max(), cols.max()


def _which(candidates, result):
    """Names of the candidate arrays equal to result."""
    return [name for name, arr in candidates.items()
            if arr.shape == result.shape and np.array_equal(arr, result)]


def _geometric_variants(x):
    return {"rot90": np.rot90(x, 1), "rot180": np.rot90(x, 2), "rot270": np.rot90(x, 3),
            "flip_r": x[::-1], "flip_c": x[:, ::-1], "flip_rc": x[::-1, ::-1], "id": x}


# ---------------------------------------------------------------------------------------------
# rotate / mirror: pixel-exact on image, label image, weight image and boxes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("param,expected", [
    ({"rotate": 90}, {"rot90", "rot180", "rot270"}),
    ({"rotate": 180}, {"rot180"}),
    ({"mirror": "rc"}, {"flip_r", "flip_c", "flip_rc"}),
    ({"mirror": "r"}, {"flip_r"}),
    ({"mirror": "c"}, {"flip_c"}),
])
def test_geometry_moves_everything_together(param, expected):
    seen = set()
    for image_id in range(40):
        s = _box_sample(image_id)
        orig = copy.deepcopy(s)
        ha.augment_dl_samples([s], {"augmentation_percentage": 100, "seed": 3, **param})
        # identify the transform from the image; label and weight image moved identically
        names = set(_which(_geometric_variants(orig["image"]), s["image"])) - {"id"}
        # a half turn and mirroring both axes are the same array operation: name it the way
        # the method under test calls it
        if {"rot180", "flip_rc"} <= names:
            names -= {"flip_rc"} if "rotate" in param else {"rot180"}
        assert len(names) == 1, names
        name = names.pop()
        seen.add(name)
        assert name in _which(_geometric_variants(orig["segmentation_image"]),
                              s["segmentation_image"])
        assert name in _which(_geometric_variants(orig["weight_image"]), s["weight_image"])
        assert name in _which(_geometric_variants(orig["anomaly_ground_truth"]),
                              s["anomaly_ground_truth"])
        assert s["segmentation_image"].dtype == np.uint8
        assert s["image"].dtype == np.float32 and s["image"].flags.c_contiguous
        # each box encloses exactly the moved pixels of its label
        for j in range(3):
            box = (s["bbox_row1"][j], s["bbox_col1"][j], s["bbox_row2"][j], s["bbox_col2"][j])
            assert box == tuple(float(v) for v in _pixel_bbox(s["segmentation_image"], j + 1))
        assert s["bbox_label_id"] == [1, 2, 3]
    assert seen == expected


def test_rotate_90_is_counter_clockwise_like_halcon():
    """rotate_image turns counter-clockwise: the top-right pixel goes to the top-left."""
    img = np.zeros((N, N, 1), np.float32)
    img[0, N - 1] = 1.0
    for image_id in range(30):
        s = {"image": img.copy(), "image_id": image_id}
        ha.augment_dl_samples(s, {"augmentation_percentage": 100, "rotate": 90, "seed": 0})
        pos = tuple(np.argwhere(s["image"][..., 0] == 1.0)[0])
        assert pos in {(0, 0), (N - 1, 0), (N - 1, N - 1)}
        if pos == (0, 0):  # 90 degrees
            return
    pytest.fail("no 90 degree rotation in 30 samples")


def test_rotate_90_skips_non_square_images_but_rotates_180():
    results = set()
    for image_id in range(40):
        s = _box_sample(image_id, h=8, w=12)
        orig = copy.deepcopy(s)
        ha.augment_dl_samples(s, {"augmentation_percentage": 100, "rotate": 90, "seed": 1})
        assert s["image"].shape == (8, 12, 3)
        if np.array_equal(s["image"], orig["image"]):
            assert s["bbox_row1"] == orig["bbox_row1"]  # skipped: nothing moved
            results.add("skipped")
        else:
            assert np.array_equal(s["image"], orig["image"][::-1, ::-1])
            assert np.array_equal(s["segmentation_image"], orig["segmentation_image"][::-1, ::-1])
            for j in range(3):
                box = (s["bbox_row1"][j], s["bbox_col1"][j], s["bbox_row2"][j], s["bbox_col2"][j])
                assert box == tuple(float(v) for v in _pixel_bbox(s["segmentation_image"], j + 1))
            results.add("rot180")
    assert results == {"skipped", "rot180"}


def _affine_from_index_image(before_idx, after_idx):
    """Affine map (pixel-centre coordinates) taking each pixel's old position to its new one,
    read from an index image moved by the augmentation (least squares over all pixels)."""
    h, w = before_idx.shape
    rr, cc = np.indices(after_idx.shape)
    old = np.stack([after_idx.ravel() // w, after_idx.ravel() % w], 1).astype(float)
    new = np.stack([rr.ravel(), cc.ravel()], 1).astype(float)
    a = np.hstack([old, np.ones((len(old), 1))])
    m, *_ = np.linalg.lstsq(a, new, rcond=None)
    assert np.allclose(a @ m, new, atol=1e-9)
    return lambda pts: np.hstack([pts, np.ones((len(pts), 1))]) @ m


@pytest.mark.parametrize("param", [{"rotate": 90}, {"mirror": "rc"}])
@pytest.mark.parametrize("ignore_direction", [False, True])
def test_rectangle2_corners_follow_the_image(param, ignore_direction):
    rng = np.random.default_rng(5)
    for image_id in range(25):
        idx = np.arange(N * N, dtype=np.float64).reshape(N, N, 1)
        n = 4
        phis = rng.uniform(-math.pi, math.pi, n)
        if ignore_direction:
            phis = np.mod(phis + math.pi / 2, math.pi) - math.pi / 2
        phis[0] = math.pi / 2 if ignore_direction else math.pi  # the range's closed end
        s = {"image": idx.copy(), "image_id": image_id,
             "bbox_row": list(rng.uniform(2, 9, n)), "bbox_col": list(rng.uniform(2, 9, n)),
             "bbox_phi": list(phis), "bbox_length1": list(rng.uniform(1, 3, n)),
             "bbox_length2": list(rng.uniform(0.5, 2, n)), "bbox_label_id": [0, 1, 2, 0]}
        orig = copy.deepcopy(s)
        ha.augment_dl_samples(s, {"augmentation_percentage": 100, "seed": 2,
                                  "ignore_direction": ignore_direction, **param})
        move = _affine_from_index_image(idx[..., 0], s["image"][..., 0].astype(np.int64))
        lo, hi = (-math.pi / 2, math.pi / 2) if ignore_direction else (-math.pi, math.pi)
        for j in range(n):
            before = _rect2_corners(orig["bbox_row"][j], orig["bbox_col"][j], orig["bbox_phi"][j],
                                    orig["bbox_length1"][j], orig["bbox_length2"][j])
            after = _rect2_corners(s["bbox_row"][j], s["bbox_col"][j], s["bbox_phi"][j],
                                   s["bbox_length1"][j], s["bbox_length2"][j])
            assert _same_point_set(move(before), after)
            assert lo < s["bbox_phi"][j] <= hi + 1e-12
            if not ignore_direction:
                # the direction (corner order) is kept: length1's arrow moves with the image
                tip_b = move(np.array([[orig["bbox_row"][j] - math.sin(orig["bbox_phi"][j]),
                                        orig["bbox_col"][j] + math.cos(orig["bbox_phi"][j])]]))
                tip_a = np.array([s["bbox_row"][j] - math.sin(s["bbox_phi"][j]),
                                  s["bbox_col"][j] + math.cos(s["bbox_phi"][j])])
                assert np.allclose(tip_b[0], tip_a, atol=1e-9)


def test_class_ids_no_orientation():
    for image_id in range(20):
        s = {"image": np.zeros((N, N, 1), np.float32), "image_id": image_id,
             "bbox_row": [4.0, 5.0], "bbox_col": [6.0, 3.0], "bbox_phi": [0.0, 0.3],
             "bbox_length1": [1.0, 2.0], "bbox_length2": [3.0, 1.0], "bbox_label_id": [7, 1]}
        s["image"][0, N - 1] = 1  # tells the rotation
        ha.augment_dl_samples(s, {"augmentation_percentage": 100, "rotate": 90, "seed": 4,
                                  "class_ids_no_orientation": [7]})
        pos = tuple(np.argwhere(s["image"][..., 0] == 1)[0])
        quarter = pos in {(0, 0), (N - 1, N - 1)}  # 90 or 270 degrees
        assert s["bbox_phi"][0] == 0.0
        lengths = (s["bbox_length1"][0], s["bbox_length2"][0])
        assert lengths == ((3.0, 1.0) if quarter else (1.0, 3.0))
        # the oriented class turns with the image and keeps its lengths
        assert (s["bbox_length1"][1], s["bbox_length2"][1]) == (2.0, 1.0)
        assert s["bbox_phi"][1] != 0.3


def test_numpy_box_containers_stay_numpy_and_integers_become_float():
    s = _box_sample(1)
    s["bbox_row1"] = np.asarray(s["bbox_row1"], np.float32)
    s["bbox_col1"] = [int(v) for v in s["bbox_col1"]]
    ha.augment_dl_samples(s, {"augmentation_percentage": 100, "mirror": "c", "seed": 0})
    assert isinstance(s["bbox_row1"], np.ndarray) and s["bbox_row1"].dtype == np.float32
    assert all(isinstance(v, float) for v in s["bbox_col1"])


def test_two_dimensional_and_integer_images():
    gray = np.arange(N * N, dtype=np.float32).reshape(N, N)
    s = {"image": gray.copy(), "image_id": 1}
    ha.augment_dl_samples(s, {"augmentation_percentage": 100, "mirror": "c"})
    assert np.array_equal(s["image"], gray[:, ::-1])
    img = np.full((N, N, 3), 128, np.uint8)
    img[0], img[1] = 3, 250
    for image_id in range(10):
        s = {"image": img.copy(), "image_id": image_id}
        ha.augment_dl_samples(s, {"augmentation_percentage": 100, "brightness_variation": 100,
                                  "image_range_min": 0, "image_range_max": 255})
        assert s["image"].dtype == np.uint8
        d = s["image"].astype(int) - img
        off = d[2, 0, 0]
        assert np.all(d[2:] == off) and -100 <= off <= 100
        # rounded, then clipped to the type's range
        assert np.all(s["image"][0] == np.clip(3 + off, 0, 255))
        assert np.all(s["image"][1] == np.clip(250 + off, 0, 255))


# ---------------------------------------------------------------------------------------------
# randomness
# ---------------------------------------------------------------------------------------------
PHOTO = {"augmentation_percentage": 70, "mirror": "rc", "rotate": 90,
         "brightness_variation": 20, "brightness_variation_spot": 30, "contrast_variation": 0.3,
         "saturation_variation": 0.4}


def _batch(ids):
    return [_box_sample(i) for i in ids]


def test_same_seed_same_result_and_batch_composition_does_not_matter():
    a = _batch(range(12))
    ha.augment_dl_samples(a, {**PHOTO, "seed": 11, "epoch": 3})
    b = _batch(range(12))
    ha.augment_dl_samples(b, {**PHOTO, "seed": 11, "epoch": 3})
    for x, y in zip(a, b):
        for k in x:
            assert np.array_equal(np.asarray(x[k]), np.asarray(y[k]))
    # the same samples in other batches (other sizes, other order) -> the same per sample
    for ids in ([5], [11, 2, 7], list(range(11, -1, -1))):
        c = _batch(ids)
        ha.augment_dl_samples(c, {**PHOTO, "seed": 11, "epoch": 3})
        for i, s in zip(ids, c):
            assert np.array_equal(s["image"], a[i]["image"])
            assert s["bbox_row1"] == a[i]["bbox_row1"]
    # another epoch or seed -> other augmentations
    for other in ({"seed": 11, "epoch": 4}, {"seed": 12, "epoch": 3}):
        d = _batch(range(12))
        ha.augment_dl_samples(d, {**PHOTO, **other})
        assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(a, d))


def test_default_seed_is_seed_rand_and_calls_are_counted_from_set_system():
    ha.set_system("seed_rand", 21)
    first, second = _batch(range(8)), _batch(range(8))
    ha.augment_dl_samples(first, PHOTO)
    ha.augment_dl_samples(second, PHOTO)
    assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(first, second))
    explicit = _batch(range(8))
    ha.augment_dl_samples(explicit, {**PHOTO, "seed": 21, "epoch": 0})
    assert all(np.array_equal(x["image"], y["image"]) for x, y in zip(first, explicit))
    ha.set_system("seed_rand", 21)  # the same sequence again
    again1, again2 = _batch(range(8)), _batch(range(8))
    ha.augment_dl_samples(again1, PHOTO)
    ha.augment_dl_samples(again2, PHOTO)
    for x, y in zip(first + second, again1 + again2):
        assert np.array_equal(x["image"], y["image"])
    ha.set_system("seed_rand", 42)


@pytest.mark.parametrize("pct", [0, 100])
def test_percentage_0_and_100_are_exact(pct):
    batch = _batch(range(30))
    orig = copy.deepcopy(batch)
    ha.augment_dl_samples(batch, {"augmentation_percentage": pct, "brightness_variation": 50,
                                  "seed": 1})
    changed = [not np.array_equal(x["image"], y["image"]) for x, y in zip(batch, orig)]
    assert changed == [pct == 100] * 30


def test_percentage_statistically():
    n = 600
    batch = [{"image": np.zeros((4, 4, 1), np.float32), "image_id": i} for i in range(n)]
    ha.augment_dl_samples(batch, {"augmentation_percentage": 30, "brightness_variation": 10,
                                  "seed": 9})
    k = sum(bool(np.any(s["image"] != 0)) for s in batch)
    sd = math.sqrt(n * 0.3 * 0.7)
    assert abs(k - 0.3 * n) < 5 * sd


def test_one_method_per_sample_uniformly():
    n = 600
    batch = [{"image": np.ones((6, 6, 3), np.float32) * np.array([1.0, 2.0, 3.0], np.float32),
              "image_id": i} for i in range(n)]
    ha.augment_dl_samples(batch, {"augmentation_percentage": 100, "brightness_variation": 10,
                                  "saturation_variation": 0.5, "seed": 2})
    bright = sat = 0
    for s in batch:
        d = s["image"] - np.array([1.0, 2.0, 3.0], np.float32)
        if np.allclose(d, d[0, 0, 0], atol=1e-5):
            bright += 1  # a constant offset on every channel
        else:
            sat += 1  # channels moved apart or together around their gray value
    assert bright + sat == n and abs(bright - n / 2) < 5 * math.sqrt(n / 4)


def test_saturation_is_never_chosen_for_gray_images():
    batch = [{"image": np.zeros((4, 4, 1), np.float32), "image_id": i} for i in range(50)]
    ha.augment_dl_samples(batch, {"augmentation_percentage": 100, "saturation_variation": 0.5,
                                  "brightness_variation": 10, "seed": 0})
    assert all(np.any(s["image"] != 0) for s in batch)  # brightness every time


# ---------------------------------------------------------------------------------------------
# photometric ranges
# ---------------------------------------------------------------------------------------------
def _rgb(i):
    return np.random.default_rng(100 + i).uniform(-100, 100, (10, 14, 3)).astype(np.float32)


@pytest.mark.parametrize("rng_min,rng_max", [(-127, 128), (0, 1), (-1, 1)])
def test_brightness_variation_is_one_offset_in_byte_units(rng_min, rng_max):
    v = 40
    unit = (rng_max - rng_min) / 255.0
    offsets = []
    for i in range(60):
        img = _rgb(i)
        s = {"image": img.copy(), "image_id": i}
        ha.augment_dl_samples(s, {"augmentation_percentage": 100, "brightness_variation": v,
                                  "image_range_min": rng_min, "image_range_max": rng_max})
        d = s["image"].astype(np.float64) - img
        assert np.allclose(d, d.flat[0], atol=1e-4 * max(1, abs(d.flat[0])))
        offsets.append(d.flat[0] / unit)
    offsets = np.array(offsets)
    assert np.all(np.abs(offsets) <= v + 1e-3)
    assert offsets.min() < -v / 2 and offsets.max() > v / 2  # uses the range, both signs


def test_brightness_variation_spot_is_a_one_signed_bump():
    v = 60
    peaks = []
    for i in range(40):
        img = _rgb(i)
        s = {"image": img.copy(), "image_id": i}
        ha.augment_dl_samples(s, {"augmentation_percentage": 100, "brightness_variation_spot": v})
        d = s["image"].astype(np.float64) - img
        assert np.allclose(d[..., 0], d[..., 1], atol=1e-4)
        assert np.allclose(d[..., 0], d[..., 2], atol=1e-4)
        assert np.all(d >= -1e-4) or np.all(d <= 1e-4)
        peak = d[np.unravel_index(np.abs(d).argmax(), d.shape)]
        assert abs(peak) <= v + 1e-3
        # a smooth, local spot: not a constant offset
        assert np.ptp(d) > 0.05 * abs(peak)
        peaks.append(peak)
    assert min(peaks) < 0 < max(peaks)


def test_contrast_variation_scales_around_the_mean():
    v = 0.4
    factors = []
    for i in range(40):
        img = _rgb(i)
        s = {"image": img.copy(), "image_id": i}
        ha.augment_dl_samples(s, {"augmentation_percentage": 100, "contrast_variation": v})
        x = img.astype(np.float64)
        y = s["image"].astype(np.float64)
        f = np.std(y) / np.std(x)
        assert np.allclose(y - y.mean(), (x - x.mean()) * f, atol=1e-3)
        assert abs(y.mean() - x.mean()) < 1e-3
        factors.append(f)
    assert min(factors) >= 1 - v - 1e-6 and max(factors) <= 1 + v + 1e-6
    assert min(factors) < 1 < max(factors)


def test_saturation_variation_keeps_the_gray_value():
    v = 0.5
    for i in range(30):
        img = _rgb(i)
        s = {"image": img.copy(), "image_id": i}
        ha.augment_dl_samples(s, {"augmentation_percentage": 100, "saturation_variation": v})
        w = np.array([0.299, 0.587, 0.114])
        x, y = img.astype(np.float64), s["image"].astype(np.float64)
        gx, gy = x @ w, y @ w
        assert np.allclose(gx, gy, atol=1e-3)
        f = np.linalg.norm(y - gy[..., None]) / np.linalg.norm(x - gx[..., None])
        assert np.allclose(y - gy[..., None], f * (x - gx[..., None]), atol=1e-3)
        assert 1 - v - 1e-6 <= f <= 1 + v + 1e-6


# ---------------------------------------------------------------------------------------------
# classification-only methods: crop, remove_pixel, rotate_range
# ---------------------------------------------------------------------------------------------
def _ramp(h, w):
    """Channel 0 = row, channel 1 = column: bilinear resampling of it returns the source
    coordinates exactly (where they lie inside the image)."""
    rr, cc = np.indices((h, w), dtype=np.float64)
    return np.stack([rr, cc], axis=-1)


def _fit_source(out):
    """Affine maps (output pixel -> source row, source col) of a resampled _ramp: fitted on
    the pixels whose source lies strictly inside the pixel-centre grid, then checked on all
    pixels, where bilinear sampling clamps to the edge pixels (the half-pixel border)."""
    h, w = out.shape[:2]
    src_r, src_c = out[..., 0].ravel(), out[..., 1].ravel()
    ii, jj = np.indices((h, w))
    a = np.stack([ii.ravel(), jj.ravel(), np.ones(h * w)], 1).astype(np.float64)
    hs, ws = out[..., 0].max(), out[..., 1].max()  # = source size - 1 (the ramp's maxima)
    inside = (src_r > 1e-9) & (src_r < hs - 1e-9) & (src_c > 1e-9) & (src_c < ws - 1e-9)
    assert inside.sum() >= 3
    mr, *_ = np.linalg.lstsq(a[inside], src_r[inside], rcond=None)
    mc, *_ = np.linalg.lstsq(a[inside], src_c[inside], rcond=None)
    pr, pc = a @ mr, a @ mc
    assert np.allclose(np.clip(pr, 0, hs), src_r, atol=1e-6)
    assert np.allclose(np.clip(pc, 0, ws), src_c, atol=1e-6)
    # nothing outside the image is sampled (no fill value): within the outer pixel edges
    assert pr.min() >= -0.5 - 1e-6 and pr.max() <= hs + 0.5 + 1e-6
    assert pc.min() >= -0.5 - 1e-6 and pc.max() <= ws + 0.5 + 1e-6
    return mr, mc


def _source_frame(out):
    """(row scale, col scale, source row of output pixel 0, source col of output pixel 0) of
    a crop-and-zoom result of _ramp, checking that it is one (axis-parallel)."""
    mr, mc = _fit_source(out)
    assert abs(mr[1]) < 1e-9 and abs(mc[0]) < 1e-9
    return mr[0], mc[1], mr[2], mc[2]


@pytest.mark.parametrize("h,w", [(20, 30), (17, 17)])
def test_crop_percentage_is_a_random_part_zoomed_back(h, w):
    p = 60
    starts = set()
    for i in range(30):
        s = {"image": _ramp(h, w), "image_id": i, "image_label_id": 0}
        ha.augment_dl_samples(s, {"augmentation_percentage": 100, "crop_percentage": p})
        sr, sc, r0, c0 = _source_frame(s["image"])
        ch, cw = round(p / 100 * h), round(p / 100 * w)
        assert math.isclose(sr, ch / h) and math.isclose(sc, cw / w)
        top, left = r0 + 0.5 - 0.5 * ch / h, c0 + 0.5 - 0.5 * cw / w  # crop's corner
        assert math.isclose(top, round(top), abs_tol=1e-9) and 0 <= round(top) <= h - ch
        assert math.isclose(left, round(left), abs_tol=1e-9) and 0 <= round(left) <= w - cw
        starts.add((round(top), round(left)))
    assert len(starts) > 5


def test_crop_percentage_100_is_the_identity():
    img = np.random.default_rng(0).random((9, 13, 3)).astype(np.float32)
    s = {"image": img.copy(), "image_id": 0}
    ha.augment_dl_samples(s, {"augmentation_percentage": 100, "crop_percentage": 100})
    assert np.allclose(s["image"], img, atol=1e-6)


def test_crop_pixel_and_remove_pixel():
    h, w = 20, 30
    for i in range(20):
        s = {"image": _ramp(h, w), "image_id": i}
        ha.augment_dl_samples(s, {"augmentation_percentage": 100, "crop_pixel": 8})
        sr, sc, r0, c0 = _source_frame(s["image"])
        assert math.isclose(sr, 8 / h) and math.isclose(sc, 8 / w)
        s = {"image": _ramp(h, w), "image_id": i}
        ha.augment_dl_samples(s, {"augmentation_percentage": 100, "remove_pixel": [4, 2]})
        sr, sc, r0, c0 = _source_frame(s["image"])
        kh, kw = h - sr * h, w - sc * w  # removed rows / columns
        assert 0 <= round(kh) <= 2 and 0 <= round(kw) <= 4
        assert math.isclose(kh, round(kh), abs_tol=1e-9)
        assert math.isclose(kw, round(kw), abs_tol=1e-9)
    # crop_pixel larger than the image: the whole image
    s = {"image": _ramp(6, 7), "image_id": 0}
    ha.augment_dl_samples(s, {"augmentation_percentage": 100, "crop_pixel": 50})
    assert np.allclose(s["image"], _ramp(6, 7))


@pytest.mark.parametrize("h,w,r", [(24, 24, 30), (20, 32, 15), (16, 16, 180)])
def test_rotate_range_rotates_crops_inside_and_zooms(h, w, r):
    angles = []
    for i in range(30):
        s = {"image": _ramp(h, w), "image_id": i}
        ha.augment_dl_samples(s, {"augmentation_percentage": 100, "rotate_range": r})
        out = s["image"]
        assert out.shape == (h, w, 2)
        mr, mc = _fit_source(out)
        # turning the image counter-clockwise by a (rows down, columns right) maps the
        # output's column axis to the source direction (sin a, cos a)
        ang = math.degrees(math.atan2(mr[1], mc[1]))
        assert math.isclose(ang, round(ang), abs_tol=1e-6) and 1 <= abs(round(ang)) <= r
        angles.append(round(ang))
        # the crop's corners (outer pixel edges) lie inside the source image, one on its border
        corners = np.array([[ci, cj, 1.0] for ci in (-0.5, h - 0.5) for cj in (-0.5, w - 0.5)])
        pr, pc = corners @ mr, corners @ mc
        assert np.all(pr >= -0.5 - 1e-6) and np.all(pr <= h - 0.5 + 1e-6)
        assert np.all(pc >= -0.5 - 1e-6) and np.all(pc <= w - 0.5 + 1e-6)
        margin = np.min(np.concatenate([pr + 0.5, h - 0.5 - pr, pc + 0.5, w - 0.5 - pc]))
        assert margin < 1e-6  # largest: it touches the border
    assert min(angles) < 0 < max(angles)


def test_rotate_range_general_path_turns_like_rotate():
    """Near 90 degrees the interpolating path agrees with the exact quarter turn (np.rot90,
    itself checked against HALCON's counter-clockwise sense above)."""
    from halcdl.workflow.augment import _rotate_range_image

    img = np.random.default_rng(3).random((15, 15, 2))
    exact = _rotate_range_image(img, 90)
    assert np.array_equal(exact, np.rot90(img, 1))
    near = _rotate_range_image(img, 90 - 1e-7)
    assert np.allclose(near, exact, atol=1e-4)
    near = _rotate_range_image(img, -90 + 1e-7)
    assert np.allclose(near, np.rot90(img, 3), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# bad input: codes, and nothing changed
# ---------------------------------------------------------------------------------------------
BAD_GEN = [
    ({"no_such_key": 1}, errors.H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM),
    ({1: 2}, 7911),
    ({"augmentation_percentage": 101}, 7914),
    ({"augmentation_percentage": -1}, 7914),
    ({"augmentation_percentage": "50"}, 7914),
    ({"augmentation_percentage": float("nan")}, 7914),
    ({"augmentation_percentage": [10, 20]}, 7914),
    ({"rotate": 45}, 7914),
    ({"rotate": "90"}, 7914),
    ({"rotate_range": 181}, 7914),
    ({"mirror": "x"}, 7914),
    ({"mirror": 1}, 7914),
    ({"brightness_variation": 256}, 7914),
    ({"brightness_variation_spot": -3}, 7914),
    ({"contrast_variation": 1.5}, 7914),
    ({"saturation_variation": -0.1}, 7914),
    ({"crop_percentage": 0.5}, 7914),
    ({"crop_percentage": "on"}, 7914),
    ({"crop_pixel": 0}, 7914),
    ({"crop_pixel": 2.5}, 7914),
    ({"remove_pixel": -1}, 7914),
    ({"remove_pixel": [1, 2, 3]}, 7914),
    ({"ignore_direction": "yes"}, 7914),
    ({"class_ids_no_orientation": ["a"]}, 7914),
    ({"seed": 1.5}, 7914),
    ({"epoch": "1"}, 7914),
    ({"image_range_min": 5, "image_range_max": 5}, 7914),
    ({"augmentation_percentage": 100, "brightness_variation": 10, "bogus": 0}, 7911),
]


@pytest.mark.parametrize("gen_param,code", BAD_GEN)
def test_bad_gen_param(gen_param, code):
    batch = _batch(range(3))
    orig = copy.deepcopy(batch)
    with pytest.raises(ha.HOperatorError) as info:
        ha.augment_dl_samples(batch, {"augmentation_percentage": 100, "mirror": "rc",
                                      **gen_param})
    assert info.value.error_code == code
    assert "augment_dl_samples" in info.value.message
    _assert_unchanged(batch, orig)


def _assert_unchanged(batch, orig):
    for x, y in zip(batch, orig):
        assert x.keys() == y.keys()
        for k in x:
            assert np.array_equal(np.asarray(x[k]), np.asarray(y[k])), k


def _bad_batches():
    good = _box_sample(0)
    yield [good, "not a dict"], 1201
    yield [good, {"image_id": 1}], 1301
    yield [good, {"image": np.zeros((4, 4, 3), np.complex64)}], 1301
    yield [good, {"image": [[1.0]]}], 1301
    yield [good, {"image": np.zeros((4, 4, 1)), "image_id": "x"}], 1301
    yield [good, {"image": np.zeros((4, 4, 1)), "segmentation_image": np.zeros((4, 5))}], 1301
    yield [good, {"image": np.zeros((4, 4, 1)), "weight_image": np.zeros((4, 4, 2))}], 1301
    yield [good, {"image": np.zeros((4, 4, 1)), "bbox_row1": [1.0]}], 1301
    bad = _box_sample(1)
    bad["bbox_col2"] = [1.0]
    yield [good, bad], 1301
    bad = _box_sample(2)
    bad["bbox_row1"] = [float("nan"), 1.0, 2.0]
    yield [good, bad], 1301
    bad = _box_sample(3)
    bad["bbox_label_id"] = [1]
    yield [good, bad], 1301
    yield [], 1301


@pytest.mark.parametrize("case", range(12))
def test_bad_samples_leave_the_batch_unchanged(case):
    batch, code = list(_bad_batches())[case]
    orig = copy.deepcopy(batch)
    with pytest.raises(ha.HOperatorError) as info:
        ha.augment_dl_samples(batch, {"augmentation_percentage": 100, "mirror": "rc"})
    assert info.value.error_code == code
    if batch:
        assert "dlsample_batch[1]" in info.value.message
        assert batch[0].keys() == orig[0].keys()
        _assert_unchanged(batch[:1], orig[:1])


def test_wrong_argument_types():
    with pytest.raises(ha.HOperatorError) as info:
        ha.augment_dl_samples(_batch([0]), "mirror")
    assert info.value.error_code == 1202
    with pytest.raises(ha.HOperatorError) as info:
        ha.augment_dl_samples(42, {})
    assert info.value.error_code == 1201


@pytest.mark.parametrize("method", [{"rotate_range": 10}, {"crop_percentage": 50},
                                    {"crop_pixel": 4}, {"remove_pixel": 2}])
def test_classification_only_methods_refuse_geometric_labels(method):
    batch = [{"image": np.zeros((8, 8, 1), np.float32), "image_id": 0, "image_label_id": 1},
             _box_sample(1)]
    seg = {"image": np.zeros((8, 8, 1), np.float32), "image_id": 2,
           "segmentation_image": np.zeros((8, 8), np.uint8)}
    for b in (batch, [batch[0], seg]):
        orig = copy.deepcopy(b)
        with pytest.raises(ha.HOperatorError) as info:
            ha.augment_dl_samples(b, {"augmentation_percentage": 100, **method})
        assert info.value.error_code == 7914 and "dlsample_batch[1]" in info.value.message
        _assert_unchanged(b, orig)


def test_empty_gen_param_and_nothing_enabled_do_nothing():
    batch = _batch(range(3))
    orig = copy.deepcopy(batch)
    ha.augment_dl_samples(batch, [])
    ha.augment_dl_samples(batch, {})
    ha.augment_dl_samples(batch, {"augmentation_percentage": 100, "mirror": "off",
                                  "crop_percentage": "off", "remove_pixel": "off"})
    _assert_unchanged(batch, orig)
    # a single DLSample dict is a batch of one
    s = _box_sample(4)
    ha.augment_dl_samples(s, {"augmentation_percentage": 100, "mirror": "c"})
    assert s["bbox_col1"] != _box_sample(4)["bbox_col1"]


def test_top_level_export():
    assert "augment_dl_samples" in ha.__all__
    from halcdl.workflow import augment_dl_samples
    assert ha.augment_dl_samples is augment_dl_samples

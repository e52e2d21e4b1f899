"""Oriented-box detection, instance_type 'rectangle2' (docs/detection.md): the engine's
oriented IoU against a plain-numpy Sutherland–Hodgman polygon clipping, encoding / decoding
with the angle (ignore_direction), matching, the focal + Huber losses (with the angle term,
class_ids_no_orientation) against PyTorch, oriented NMS, the operator's keys and errors,
evaluation (mean_ap with the oriented IoU, SoAP), files, and a training run on real labels of
MVTec's Deep Learning Tool (cup_detection)."""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import halcdl as ha
from halcdl import HOperatorError
from halcdl._native import core
from halcdl.workflow.evaluate_detection import evaluate_detection

from helpers import halcon_files_dir

warnings.filterwarnings("ignore", category=ha.NotPretrainedWarning)

PI = math.pi


# --------------------------------------------------------------------------------------------
# independent references (numpy, float64)
# --------------------------------------------------------------------------------------------
def np_corners(b):
    """Corners (x, y) = (col, row) of a HALCON rectangle2 (row, col, l1, l2, phi): length1
    along phi (counter-clockwise from the column axis, rows pointing down)."""
    r, c, l1, l2, phi = (float(v) for v in b)
    d1 = np.array([math.cos(phi), -math.sin(phi)]) * l1     # (col, row) of the l1 axis
    d2 = np.array([math.sin(phi), math.cos(phi)]) * l2      # perpendicular
    ctr = np.array([c, r])
    return np.array([ctr + d1 + d2, ctr - d1 + d2, ctr - d1 - d2, ctr + d1 - d2])


def np_area(p):
    x, y = p[:, 0], p[:, 1]
    return 0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def np_clip(subject, clip):
    """Sutherland–Hodgman: ``subject`` clipped by the convex polygon ``clip`` (both with the
    same winding)."""
    sign = 1.0 if np_area(clip) > 0 else -1.0
    out = [p for p in subject]
    for i in range(len(clip)):
        e0, e1 = clip[i], clip[(i + 1) % len(clip)]
        inp, out = out, []
        if not inp:
            break

        def side(p):
            return sign * ((e1[0] - e0[0]) * (p[1] - e0[1]) - (e1[1] - e0[1]) * (p[0] - e0[0]))

        for j in range(len(inp)):
            p, q = inp[j], inp[(j + 1) % len(inp)]
            sp, sq = side(p), side(q)
            if sp >= 0:
                out.append(p)
            if (sp >= 0) != (sq >= 0):
                out.append(p + (q - p) * (sp / (sp - sq)))
    return np.array(out)


def np_iou2(a, b):
    if math.hypot(a[0] - b[0], a[1] - b[1]) >= math.hypot(a[2], a[3]) + math.hypot(b[2], b[3]):
        return 0.0  # the circumscribed circles do not meet
    pa, pb = np_corners(a), np_corners(b)
    inter = np_clip(pa, pb)
    ia = abs(np_area(inter)) if len(inter) >= 3 else 0.0
    ua = 4 * a[2] * a[3] + 4 * b[2] * b[3] - ia
    return ia / ua if ua > 0 else 0.0


def wrap(x, period):
    return (np.asarray(x, np.float64) + period / 2) % period - period / 2


def np_encode2(a, g, ignore_direction=False):
    a, g = np.asarray(a, np.float64), np.asarray(g, np.float64)
    s, c = np.sin(a[:, 4]), np.cos(a[:, 4])
    dr, dc = g[:, 0] - a[:, 0], g[:, 1] - a[:, 1]
    return np.stack([(c * dr + s * dc) / (2 * a[:, 3]), (-s * dr + c * dc) / (2 * a[:, 2]),
                     np.log(g[:, 2] / a[:, 2]), np.log(g[:, 3] / a[:, 3]),
                     wrap(g[:, 4] - a[:, 4], PI if ignore_direction else 2 * PI)], 1)


def rand_boxes(rng, n, spread=20.0):
    return np.stack([rng.uniform(40, 60, n), rng.uniform(40, 60, n), rng.uniform(3, spread, n),
                     rng.uniform(3, spread, n), rng.uniform(-4, 4, n)], 1).astype(np.float32)


# --------------------------------------------------------------------------------------------
# engine parts
# --------------------------------------------------------------------------------------------
def test_oriented_iou_matches_numpy_polygon_clipping():
    rng = np.random.default_rng(0)
    a, b = rand_boxes(rng, 40), rand_boxes(rng, 30)
    got = np.asarray(core.det_iou_matrix(a, b))
    want = np.array([[np_iou2(x, y) for y in b] for x in a])
    assert (want > 0.05).sum() > 200  # many genuine overlaps
    np.testing.assert_allclose(got, want, atol=2e-6)
    # special cases: the same box, turned by π, by π/2 with swapped lengths, disjoint,
    # contained, and axis-parallel boxes equal to the rectangle1 IoU
    x = np.array([[50, 50, 20, 8, 0.3]], np.float32)
    same = np.array([[50, 50, 20, 8, 0.3], [50, 50, 20, 8, 0.3 + PI], [50, 50, 8, 20, 0.3 + PI / 2],
                     [50, 200, 20, 8, 0.3], [50, 50, 10, 4, 0.3]], np.float32)
    np.testing.assert_allclose(np.asarray(core.det_iou_matrix(x, same))[0],
                               [1, 1, 1, 0, 0.25], atol=1e-5)
    r1 = np.array([[10, 20, 30, 60], [15, 25, 40, 50]], np.float32)
    r2 = np.stack([(r1[:, 0] + r1[:, 2]) / 2, (r1[:, 1] + r1[:, 3]) / 2, (r1[:, 3] - r1[:, 1]) / 2,
                   (r1[:, 2] - r1[:, 0]) / 2, np.zeros(2)], 1).astype(np.float32)
    np.testing.assert_allclose(np.asarray(core.det_iou_matrix(r2, r2)),
                               np.asarray(core.det_iou_matrix(r1, r1)), atol=1e-6)


@pytest.mark.parametrize("ignore_direction", [False, True])
def test_encode_decode_round_trip_and_formula(ignore_direction):
    rng = np.random.default_rng(1)
    a, g = rand_boxes(rng, 200), rand_boxes(rng, 200)
    t = np.asarray(core.det_encode(a, g, ignore_direction))
    period = PI if ignore_direction else 2 * PI
    np.testing.assert_allclose(t, np_encode2(a, g, ignore_direction), atol=2e-5)
    assert (t[:, 4] >= -period / 2 - 1e-6).all() and (t[:, 4] < period / 2 + 1e-6).all()
    back = np.asarray(core.det_decode(a, t, ignore_direction))
    np.testing.assert_allclose(back[:, :4], g[:, :4], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(wrap(back[:, 4] - g[:, 4], period), 0, atol=1e-5)
    assert (np.abs(back[:, 4]) <= period / 2 + 1e-6).all()
    # phi and phi + π: the same target with ignore_direction, different ones without
    g2 = g.copy()
    g2[:, 4] += PI
    t2 = np.asarray(core.det_encode(a, g2, ignore_direction))
    if ignore_direction:
        np.testing.assert_allclose(t2, t, atol=2e-5)
    else:
        np.testing.assert_allclose(np.abs(wrap(t2[:, 4] - t[:, 4], 2 * PI)), PI, atol=2e-5)


CFG = {"min_level": 3, "max_level": 4, "anchor_num_subscales": 1,
       "anchor_aspect_ratios": [1.0, 0.5], "oriented": True, "anchor_angles": [0.0, PI / 3]}
LEVELS = [(4, 6, 8), (2, 3, 16)]


def test_anchors_with_angles():
    a = np.asarray(core.det_anchors(CFG, LEVELS))
    assert a.shape == ((24 + 6) * 4, 5)
    # first position of level 3: ratio 1 at angles 0, π/3, then ratio 0.5 (height / width):
    # length1 = width / 2, length2 = height / 2
    np.testing.assert_allclose(a[:4], [[4, 4, 16, 16, 0], [4, 4, 16, 16, PI / 3],
                                       [4, 4, 16 * math.sqrt(2), 16 / math.sqrt(2), 0],
                                       [4, 4, 16 * math.sqrt(2), 16 / math.sqrt(2), PI / 3]],
                               rtol=1e-6)


def np_match(anchors, boxes, fg=0.5, bg=0.4):
    """torchvision's Matcher rule on the oriented IoU matrix (anchors × boxes)."""
    if len(boxes) == 0:
        return np.full(len(anchors), -1)
    q = np.array([[np_iou2(x, y) for y in boxes] for x in anchors])
    best, arg = q.max(1), q.argmax(1)
    m = np.where(best >= fg, arg, np.where(best < bg, -1, -2))
    for g in range(len(boxes)):
        hv = q[:, g].max()
        if hv > 0:
            sel = q[:, g] == hv
            m[sel] = arg[sel]
    return m


def np_axis_parallel(b):
    s, c = abs(math.sin(b[4])), abs(math.cos(b[4]))
    return np.array([b[0], b[1], c * b[2] + s * b[3], s * b[2] + c * b[3], 0.0])


def torch_sums2(x, anchors, boxes, labels, no_orientation=(), beta=0.11, gamma=2.0):
    """On the torch output x (bs, na, k + 5): the focal sum (no α) over the anchors not
    ignored, the smooth-L1(β) sum on the 5 offsets of the foreground anchors (4 for a class
    without orientation, whose box is its axis-parallel rectangle written at the anchor's
    quarter turn) and the number of foreground anchors."""
    k = x.shape[2] - 5
    cls_sum, box_sum, nfg = 0, 0, 0
    for i in range(x.shape[0]):
        b = np.asarray(boxes[i], np.float64).reshape(-1, 5).copy()
        lab = np.asarray(labels[i], np.int64)
        for j in range(len(b)):
            if lab[j] in no_orientation:
                b[j] = np_axis_parallel(b[j])
        m = np_match(anchors, b)
        valid = torch.tensor(m != -2)
        fg = np.nonzero(m >= 0)[0]
        nfg += len(fg)
        t = torch.zeros(x.shape[1], k, dtype=torch.float64)
        z = x[i, :, :k]
        p = torch.sigmoid(z)
        if len(fg):
            t[torch.tensor(fg), torch.tensor(lab[m[fg]])] = 1.0
        ce = F.binary_cross_entropy_with_logits(z, t, reduction="none")
        p_t = p * t + (1 - p) * (1 - t)
        cls_sum = cls_sum + (ce * (1 - p_t) ** gamma)[valid].sum()
        if not len(fg):
            continue
        g = b[m[fg]].copy()
        an = anchors[fg].astype(np.float64)
        oriented = np.array([c not in no_orientation for c in lab[m[fg]]])
        q = np.round(an[:, 4] / (PI / 2)).astype(np.int64) % 4
        sw = ~oriented & (q % 2 == 1)
        g[sw, 2], g[sw, 3] = g[sw, 3].copy(), g[sw, 2].copy()
        g[~oriented, 4] = an[~oriented, 4]
        tgt = torch.tensor(np_encode2(an, g))
        mask = torch.ones(len(fg), 5, dtype=torch.float64)
        mask[torch.tensor(~oriented), 4] = 0.0
        hub = F.smooth_l1_loss(x[i, torch.tensor(fg), k:], tgt, beta=beta, reduction="none")
        box_sum = box_sum + (hub * mask).sum()
    return cls_sum, box_sum, nfg


def torch_loss2(out, anchors, boxes, labels, no_orientation=()):
    x = torch.tensor(out, dtype=torch.float64, requires_grad=True)
    cls_sum, box_sum, nfg = torch_sums2(x, anchors, boxes, labels, no_orientation)
    norm = max(1, nfg)
    cls, box = cls_sum / norm, box_sum / norm
    (cls + box).backward()
    return float(cls.detach()), float(box.detach()), x.grad.numpy(), nfg


@pytest.mark.parametrize("no_orientation", [[], [1]])
def test_matching_losses_and_gradients_against_torch(no_orientation):
    rng = np.random.default_rng(2)
    anchors = np.asarray(core.det_anchors(CFG, LEVELS))
    ls = [0, 24 * 4, 30 * 4]
    boxes, labels = [], []
    for n in (3, 2):
        idx = rng.choice(len(anchors), n, replace=False)
        a = anchors[idx]
        b = a + np.concatenate([rng.uniform(-3, 3, (n, 2)), a[:, 2:4] * rng.uniform(-0.2, 0.2, (n, 2)),
                                rng.uniform(-0.3, 0.3, (n, 1))], 1)
        boxes.append(b.astype(np.float32))
        labels.append([int(v) for v in rng.integers(0, 2, n)])
    for b in boxes:  # the engine's matching = the rule on the polygon-clipping IoU
        assert np.array_equal(np.asarray(core.det_match(anchors, b, CFG)), np_match(anchors, b))
    out = rng.normal(0, 1, (2, len(anchors), 2 + 5)).astype(np.float32)
    cfg = {**CFG, "no_orientation": no_orientation}
    d, grad = core.det_loss(out, anchors, ls, boxes, labels, cfg, [])
    cls, box, g, nfg = torch_loss2(out, anchors, boxes, labels, tuple(no_orientation))
    assert d["num_fg"] == nfg > 0
    assert abs(d["cls"] - cls) < 1e-4 * max(1, cls) and abs(d["box"] - box) < 1e-4 * max(1, box)
    np.testing.assert_allclose(np.asarray(grad), g, atol=2e-6)
    if no_orientation:
        assert np.count_nonzero(np.asarray(grad)[..., 2 + 4]) < nfg  # no angle term for class 1


def test_oriented_nms_matches_numpy():
    rng = np.random.default_rng(3)
    b = rand_boxes(rng, 60)
    s = rng.uniform(0, 1, 60).astype(np.float32)
    for thr in (0.2, 0.5):
        order = np.argsort(-s, kind="stable")
        keep = []
        for i in order:
            if all(np_iou2(b[i], b[j]) <= thr for j in keep):
                keep.append(int(i))
        assert list(core.det_nms(b, s, thr)) == keep


def test_detect_no_orientation_class_is_axis_parallel():
    rng = np.random.default_rng(4)
    anchors = np.asarray(core.det_anchors(CFG, LEVELS))
    out = rng.normal(0, 1, (len(anchors), 2 + 5)).astype(np.float32)
    cfg = {**CFG, "min_confidence": 0.3, "no_orientation": [0], "max_overlap": 0.7}
    boxes, cls, score = core.det_detect(out, anchors, [0, 96, 120], cfg, 32, 48)
    boxes, cls = np.asarray(boxes), np.asarray(cls)
    assert boxes.shape[1] == 5 and (cls == 0).any() and (cls == 1).any()
    assert (boxes[cls == 0, 4] == 0).all() and (boxes[cls == 1, 4] != 0).any()
    assert list(score) == sorted(score, reverse=True)
    # class 1: plain decoding of its anchors' offsets
    boxes_all = np.asarray(core.det_decode(anchors, out[:, 2:]))
    for bx, c in zip(boxes, cls):
        if c == 1:
            assert np.abs(boxes_all - bx).max(1).min() < 1e-5


# --------------------------------------------------------------------------------------------
# the operator
# --------------------------------------------------------------------------------------------
SMALL2 = {"image_width": 64, "image_height": 64, "capacity": "low", "min_level": 2,
          "max_level": 3, "anchor_num_subscales": 1, "anchor_aspect_ratios": [1.0, 2.0],
          "instance_type": "rectangle2", "anchor_angles": [0.0, PI / 2]}


def small2(**over):
    return ha.create_dl_model_detection("pretrained_dl_classifier_compact.hdl", 2,
                                        {**SMALL2, **over})


def sample2(rng, boxes=((20, 20, 12, 6, 0.4), (40, 44, 10, 8, -1.0)), labels=(0, 1)):
    b = np.asarray(boxes, np.float64).reshape(-1, 5)
    return {"image": rng.normal(0, 1, (64, 64, 3)).astype(np.float32),
            "bbox_row": b[:, 0].tolist(), "bbox_col": b[:, 1].tolist(),
            "bbox_length1": b[:, 2].tolist(), "bbox_length2": b[:, 3].tolist(),
            "bbox_phi": b[:, 4].tolist(), "bbox_label_id": list(labels)}


def test_rectangle2_raw_rows_hold_five_box_values():
    """infer_detection_raw of a rectangle2 model: (n, anchors, K + 5) rows (the array once had
    K + 4 columns and the engine wrote past its end), the same for any batch size, and its
    best row decodes (docs/detection.md) to apply_dl_model's top detection."""
    m = small2()
    rng = np.random.default_rng(4)
    ha.train_dl_model_batch(m, [sample2(rng)])
    imgs = [{"image": sample2(rng)["image"]} for _ in range(3)]
    raw = m.core.infer_detection_raw(imgs, 2, 64, 64, 3)
    a, _ = m.core.det_anchors(64, 64)
    assert raw.shape == (3, a.shape[0], 2 + 5)
    assert np.array_equal(raw, m.core.infer_detection_raw(imgs, 1, 64, 64, 3))
    assert np.array_equal(raw, m.core.infer_detection_raw(imgs, 3, 64, 64, 3))
    ha.set_dl_model_param(m, "min_confidence", 0.0)
    r = ha.apply_dl_model(m, imgs[:1], [])[0]
    best = int(np.argmax(raw[0, :, :2].max(1)))
    conf = 1 / (1 + np.exp(-raw[0, best, :2].astype(np.float64)))
    assert abs(r["bbox_confidence"][0] - conf.max()) < 1e-5


def test_create_rectangle2_params_and_results():
    m = small2(ignore_direction="true", class_ids_no_orientation=[1])
    g = lambda k: ha.get_dl_model_param(m, k)  # noqa: E731
    assert g("instance_type") == ["rectangle2"] and g("ignore_direction") == ["true"]
    assert g("anchor_angles") == [0.0, PI / 2] and g("class_ids_no_orientation") == [1]
    det = m.spec[-1]
    assert det["box_values"] == 5 and det["num_anchors"] == 4
    a, _ = m.core.det_anchors(64, 64)
    assert a.shape == ((16 * 16 + 8 * 8) * 4, 5)
    ha.set_dl_model_param(m, "min_confidence", 0.0)
    ha.set_dl_model_param(m, "max_num_detections", 50)
    rng = np.random.default_rng(0)
    ha.train_dl_model_batch(m, [sample2(rng)])
    r = ha.apply_dl_model(m, [sample2(rng)], [])[0]
    assert set(r) == {"bbox_row", "bbox_col", "bbox_phi", "bbox_length1", "bbox_length2",
                      "bbox_class_id", "bbox_class_name", "bbox_confidence"}
    assert 0 < len(r["bbox_row"]) <= 50
    assert r["bbox_confidence"] == sorted(r["bbox_confidence"], reverse=True)
    phi, cid = np.asarray(r["bbox_phi"]), np.asarray(r["bbox_class_id"])
    assert (phi[cid == 1] == 0).all()                               # no orientation
    assert ((phi > -PI / 2 - 1e-6) & (phi <= PI / 2 + 1e-6)).all()  # ignore_direction
    assert (np.asarray(r["bbox_length1"]) > 0).all()
    assert ha.apply_dl_model(m, [sample2(rng)], ["bbox_phi"])[0].keys() == {"bbox_phi"}


def test_five_steps_against_torch_rectangle2():
    """5 SGD steps (momentum, weight prior, head weights, a class without orientation) of a
    rectangle2 detector against the same detector in PyTorch with the loss of torch_sums2."""
    from test_detection import torch_forward  # noqa: PLC0415

    ha.set_system("seed_rand", 42)  # the initialisation must not depend on the test order
    m = small2(class_heads_weight=1.2, bbox_heads_weight=0.7, class_ids_no_orientation=[1],
               anchor_angles=[0.0, 1.0])
    ha.set_dl_model_param(m, "batch_size", 2)
    ha.set_dl_model_param(m, "learning_rate", 0.01)
    ha.set_dl_model_param(m, "momentum", 0.9)
    ha.set_dl_model_param(m, "weight_prior", 1e-3)
    rng = np.random.default_rng(8)
    batches = [[sample2(rng), sample2(rng, boxes=((30, 28, 14, 9, 2.5),), labels=(0,))]
               for _ in range(5)]
    spec = m.spec
    shared = {n["name"] for n in spec if "share" in n}
    c = m.core
    names = [n for n in c.param_names() if "running" not in n
             and n.rsplit(".", 1)[0] not in shared]
    params = {n: torch.tensor(c.get_param(n), dtype=torch.float64, requires_grad=True)
              for n in names}
    decay = {n for n in names if n.endswith((".weight", ".scale"))}
    vel = {n: torch.zeros_like(p) for n, p in params.items()}
    anchors, _ = c.det_anchors(64, 64)
    anchors = np.asarray(anchors, np.float64)
    got, ref = [], []
    for batch in batches:
        got.append(ha.train_dl_model_batch(m, batch)["total_loss"])
        x = torch.tensor(np.stack([s["image"] for s in batch]).transpose(0, 3, 1, 2),
                         dtype=torch.float64)
        out = torch_forward(spec, params, x)
        boxes = [np.stack([s[k] for k in ("bbox_row", "bbox_col", "bbox_length1",
                                          "bbox_length2", "bbox_phi")], 1) for s in batch]
        cls_sum, box_sum, nfg = torch_sums2(out, anchors, boxes,
                                            [s["bbox_label_id"] for s in batch], (1,))
        assert nfg > 0
        data = (1.2 * cls_sum + 0.7 * box_sum) / max(1, nfg)
        reg = 0.5 * 1e-3 * sum((params[n] ** 2).sum() for n in decay)
        ref.append(float((data + reg).detach()))
        for p in params.values():
            p.grad = None
        data.backward()
        with torch.no_grad():
            for n, p in params.items():
                g = p.grad + (1e-3 * p if n in decay else 0)
                vel[n] = 0.9 * vel[n] - 0.01 * g
                p += vel[n]
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-4)
    # the heads and the FPN (where the rectangle2 loss's gradient enters) agree to float32
    # rounding; the backbone's batch norms over 2 images of a few pixels amplify the float32
    # vs float64 difference (measured: ≤ 1e-3 on weights of magnitude ~0.3 after 5 steps)
    for n in ("fpn.lateral2.weight", "fpn.smooth2.weight", "cls_head2.conv0.weight",
              "cls_head2.logits.weight", "box_head2.conv0.weight", "box_head2.logits.weight",
              "box_head2.logits.bias"):
        np.testing.assert_allclose(c.get_param(n), params[n].detach().numpy(), atol=1e-4,
                                   rtol=1e-3, err_msg=n)
    for n in ("conv1.weight", "conv5.weight"):
        np.testing.assert_allclose(c.get_param(n), params[n].detach().numpy(), atol=3e-3,
                                   rtol=1e-2, err_msg=n)


def test_create_rectangle2_errors():
    for bad, code in (({"anchor_angles": []}, 7822), ({"anchor_angles": [float("nan")]}, 7822),
                      ({"ignore_direction": "maybe"}, 7822),
                      ({"class_ids_no_orientation": [-1]}, 7822), ({"instance_type": "rect"}, 7824)):
        with pytest.raises(HOperatorError) as e:
            small2(**bad)
        assert e.value.error_code == code, (bad, e.value)


def _drop(s, key):
    return {k: v for k, v in s.items() if k != key}


def _set(s, key, value):
    s = dict(s)
    s[key] = value
    return s


@pytest.mark.parametrize("mutate,code", [
    (lambda s: _drop(s, "bbox_phi"), 7783),
    (lambda s: _drop(s, "bbox_length2"), 7783),
    (lambda s: _set(s, "bbox_label_id", [0, 9]), 7714),
    (lambda s: _set(s, "bbox_phi", [0.1, float("nan")]), 7736),
    (lambda s: _set(s, "bbox_length1", [-3.0, 5.0]), 7736),
    (lambda s: _set(s, "bbox_length2", [0.0, 5.0]), 7736),
    (lambda s: _set(s, "bbox_col", [5.0]), 7736),
])
def test_rectangle2_bad_samples_leave_the_model_unchanged(mutate, code):
    m = small2()
    good = sample2(np.random.default_rng(0))
    before = {n: m.core.get_param(n).copy() for n in m.core.param_names()}
    with pytest.raises(HOperatorError) as e:
        ha.train_dl_model_batch(m, [mutate(good)])
    assert e.value.error_code == code, e.value
    for n, v in before.items():
        assert np.array_equal(v, m.core.get_param(n)), n


def test_rectangle2_write_read_round_trip(tmp_path):
    m = small2(ignore_direction="true", class_ids_no_orientation=[0], anchor_angles=[0.0, 0.7])
    ha.set_dl_model_param(m, "class_ids", [3, 8])
    ha.set_dl_model_param(m, "min_confidence", 0.05)
    rng = np.random.default_rng(5)
    s = sample2(rng, labels=(3, 8))
    for _ in range(2):
        ha.train_dl_model_batch(m, [s])
    path = str(tmp_path / "r2.hdl")
    ha.write_dl_model(m, path)
    m2 = ha.read_dl_model(path)
    for k in ("instance_type", "anchor_angles", "ignore_direction", "class_ids_no_orientation",
              "class_ids", "min_confidence"):
        assert ha.get_dl_model_param(m2, k) == ha.get_dl_model_param(m, k), k
    assert ha.apply_dl_model(m2, [s], []) == ha.apply_dl_model(m, [s], [])
    r1, r2 = ha.train_dl_model_batch(m, [s]), ha.train_dl_model_batch(m2, [s])
    assert r1 == r2  # resumes bit-identically


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------
def _res(boxes, ids, conf):
    b = np.asarray(boxes, np.float64).reshape(-1, 5)
    return {"bbox_row": b[:, 0].tolist(), "bbox_col": b[:, 1].tolist(),
            "bbox_length1": b[:, 2].tolist(), "bbox_length2": b[:, 3].tolist(),
            "bbox_phi": b[:, 4].tolist(), "bbox_class_id": list(ids), "bbox_confidence": list(conf)}


def _gt(boxes, ids):
    r = _res(boxes, ids, [1.0] * len(ids))
    del r["bbox_class_id"], r["bbox_confidence"]
    r["bbox_label_id"] = list(ids)
    return r


def test_evaluation_rectangle2_map_and_soap():
    gt = [_gt([[50, 50, 30, 10, 0.5], [20, 80, 10, 6, -0.3]], [0, 1])]
    mp = {"class_ids": [0, 1], "instance_type": "rectangle2"}
    perfect = [_res([[50, 50, 30, 10, 0.5], [20, 80, 10, 6, -0.3]], [0, 1], [0.9, 0.8])]
    r = evaluate_detection(perfect, gt, mp, {})["max_num_detections_all"]["area_all"]
    assert r["mean_ap"] == pytest.approx(1.0) and r["soap"] == pytest.approx(1.0)
    # turned by 0.1: still a true positive at IoU 0.5, SoAP 1 − 0.1/π
    turned = [_res([[50, 50, 30, 10, 0.6], [20, 80, 10, 6, -0.3]], [0, 1], [0.9, 0.8])]
    r = evaluate_detection(turned, gt, mp, {"iou_threshold": [0.5]})
    r = r["max_num_detections_all"]["area_all"]
    assert r["ap_iou_05"] == pytest.approx(1.0)
    assert r["class_soap"] == pytest.approx([1 - 0.1 / PI, 1.0], abs=1e-6)
    assert r["soap"] == pytest.approx(1 - 0.05 / PI, abs=1e-6)
    # turned by π: the same box, but the opposite direction unless ignore_direction
    flipped = [_res([[50, 50, 30, 10, 0.5 + PI], [20, 80, 10, 6, -0.3]], [0, 1], [0.9, 0.8])]
    r = evaluate_detection(flipped, gt, mp, {"iou_threshold": [0.5]})
    assert r["max_num_detections_all"]["area_all"]["class_soap"][0] == pytest.approx(0.0, abs=1e-6)
    r = evaluate_detection(flipped, gt, {**mp, "ignore_direction": "true"}, {"iou_threshold": [0.5]})
    assert r["max_num_detections_all"]["area_all"]["class_soap"][0] == pytest.approx(1.0)
    r = evaluate_detection(flipped, gt, {**mp, "class_ids_no_orientation": [0]}, {})
    assert r["max_num_detections_all"]["area_all"]["class_soap"][0] == -1.0


def test_evaluation_axis_parallel_rectangle2_equals_rectangle1():
    """Boxes with phi 0 give exactly the rectangle1 figures (which match COCOeval)."""
    rng = np.random.default_rng(6)
    res1, gt1, res2, gt2 = [], [], [], []

    def r1(b):
        return {"bbox_row1": (b[:, 0] - b[:, 3]).tolist(), "bbox_col1": (b[:, 1] - b[:, 2]).tolist(),
                "bbox_row2": (b[:, 0] + b[:, 3]).tolist(), "bbox_col2": (b[:, 1] + b[:, 2]).tolist()}

    for _ in range(6):
        g = np.concatenate([rng.uniform(20, 80, (4, 2)), rng.uniform(4, 20, (4, 2)),
                            np.zeros((4, 1))], 1)
        d = np.concatenate([g[:, :2] + rng.normal(0, 2, (4, 2)), g[:, 2:4] * rng.uniform(0.8, 1.2, (4, 2)),
                            np.zeros((4, 1))], 1)
        d = np.concatenate([d, rand_boxes(rng, 2).astype(np.float64)], 0)
        d[4:, 4] = 0
        gl, dl = rng.integers(0, 2, 4).tolist(), rng.integers(0, 2, 6).tolist()
        conf = rng.uniform(0, 1, 6).tolist()
        gt2.append(_gt(g, gl))
        res2.append(_res(d, dl, conf))
        gt1.append({**r1(g), "bbox_label_id": gl})
        res1.append({**r1(d), "bbox_class_id": dl, "bbox_confidence": conf})
    a = evaluate_detection(res1, gt1, {"class_ids": [0, 1]}, {})["max_num_detections_all"]["area_all"]
    b = evaluate_detection(res2, gt2, {"class_ids": [0, 1], "instance_type": "rectangle2"},
                           {})["max_num_detections_all"]["area_all"]
    assert 0 < a["mean_ap"] < 1
    for k in a:
        assert np.allclose(a[k], b[k], atol=1e-6), k


# --------------------------------------------------------------------------------------------
# real labels: MVTec Deep Learning Tool's cup dataset (rectangle2)
# --------------------------------------------------------------------------------------------
CUP = os.path.join(halcon_files_dir() or "/nonexistent", "cup_detection")


@pytest.mark.skipif(not os.path.isfile(os.path.join(CUP, "labels.hdict")),
                    reason="the real HALCON files are not on this machine")
def test_cup_detection_rectangle2_trains_and_returns_oriented_boxes():
    from halcdl.io.hdict import read_hdict

    ds = read_hdict(os.path.join(CUP, "labels.hdict"))
    n = len(ds["samples"])
    raw = ha.gen_dl_samples(ds, list(range(n)), "detection",
                            {"image_dir": os.path.join(CUP, "images")})
    pp = ha.create_dl_preprocess_param("detection", 128, 80, 3, -127, 128, "none", "full_domain",
                                       [], [], [], {"instance_type": "rectangle2",
                                                    "ignore_direction": "true"})
    ha.preprocess_dl_samples(raw, pp)  # in place
    samples = raw
    ha.set_system("seed_rand", 7)
    m = ha.create_dl_model_detection(
        "pretrained_dl_classifier_compact.hdl", 2,
        {"image_width": 128, "image_height": 80, "image_num_channels": 3, "capacity": "low",
         "min_level": 3, "max_level": 4, "anchor_num_subscales": 2,
         "anchor_aspect_ratios": [1.0, 0.5], "anchor_angles": [0.0, PI / 2],
         "instance_type": "rectangle2", "ignore_direction": "true",
         "class_ids": ds["class_ids"], "class_names": ds["class_names"]})
    ha.set_dl_model_param(m, "solver_type", "adam")
    ha.set_dl_model_param(m, "learning_rate", 2e-3)
    ha.set_dl_model_param(m, "batch_size", 4)
    first = last = None
    rng = np.random.default_rng(0)
    held = [int(i) for i in rng.choice(n, 6, replace=False)]
    train = [i for i in range(n) if i not in held]
    for epoch in range(10):
        order = rng.permutation(train)
        for j in range(0, len(train) - 3, 4):
            r = ha.train_dl_model_batch(m, [samples[i] for i in order[j:j + 4]])
            first = r["total_loss"] if first is None else first
            last = r["total_loss"]
    assert last < 0.6 * first, (first, last)
    ha.set_dl_model_param(m, "min_confidence", 0.2)
    mp = {k: ha.get_dl_model_param(m, k) for k in ("class_ids", "instance_type",
                                                    "ignore_direction")}
    figs = {}
    for name, idx in (("train", train), ("held-out", held)):
        res = ha.apply_dl_model(m, [samples[i] for i in idx], [])
        assert sum(len(r["bbox_phi"]) for r in res) > 0
        phis = np.concatenate([r["bbox_phi"] for r in res])
        assert (np.abs(phis) > 0.3).mean() > 0.5     # the cups stand: phi ≈ ±π/2, not 0
        ev = evaluate_detection(res, [samples[i] for i in idx], mp, {"iou_threshold": [0.5]})
        figs[name] = ev["max_num_detections_all"]["area_all"]
        print(f"cup rectangle2 ({name}): loss {first:.3f} -> {last:.3f}, mAP@0.5 "
              f"{figs[name]['mean_ap']:.3f}, SoAP {figs[name]['soap']:.3f}")
    assert figs["train"]["mean_ap"] > 0.5 and figs["train"]["soap"] > 0.8
    assert figs["held-out"]["mean_ap"] > 0.4 and figs["held-out"]["soap"] > 0.75


@pytest.mark.skipif(not os.path.isfile(os.path.join(CUP, "labels.hdict")),
                    reason="the real HALCON files are not on this machine")
def test_determine_detection_param_from_rectangle2_labels():
    from halcdl.io.hdict import read_hdict

    ds = read_hdict(os.path.join(CUP, "labels.hdict"))
    ds["image_dir"] = os.path.join(CUP, "images")
    p = ha.determine_dl_model_detection_param(ds, 256, 160, {})
    assert p["instance_type"] == "rectangle2"
    # the cups stand upright: one anchor angle ≈ ±π/2 (modulo π)
    assert len(p["anchor_angles"]) == 1 and abs(abs(p["anchor_angles"][0]) - PI / 2) < 0.3
    l1 = np.concatenate([np.atleast_1d(s["bbox_length1"]) for s in ds["samples"]]) / 2
    l2 = np.concatenate([np.atleast_1d(s["bbox_length2"]) for s in ds["samples"]]) / 2
    z = 2 * np.sqrt(l1 * l2)  # 512×320 → 256×160: both axes by 1/2
    assert p["min_level"] == max(1, math.floor(math.log2(z.min() / 4)))
    r = l2 / l1
    want = sorted({round(float(q), 2) for q in np.quantile(r, [0.1, 0.5, 0.9])})
    assert p["anchor_aspect_ratios"] == want
    m = ha.create_dl_model_detection("pretrained_dl_classifier_compact.hdl", 2,
                                     {**p, "capacity": "low"})
    assert ha.get_dl_model_param(m, "anchor_angles") == p["anchor_angles"]


def _np_wrap(phi, ignore_direction):
    period = math.pi if ignore_direction else 2 * math.pi
    x = math.fmod(0.5 * period - phi, period)
    if x < 0:
        x += period
    r = 0.5 * period - x
    return 0.5 * period if r <= -0.5 * period else r


def _np_decode2(a, t, oriented, ignore_direction):
    """docs/onnx.md's rectangle2 decoding, written from the text in float64."""
    clip = math.log(1000 / 16)
    if not oriented:
        t = [t[0], t[1], t[2], t[3], 0.0]
    s, co = math.sin(a[4]), math.cos(a[4])
    d2, d1 = t[0] * 2 * a[3], t[1] * 2 * a[2]
    b = [a[0] - s * d1 + co * d2, a[1] + co * d1 + s * d2, math.exp(min(t[2], clip)) * a[2],
         math.exp(min(t[3], clip)) * a[3], _np_wrap(a[4] + t[4], ignore_direction and oriented)]
    if not oriented:
        if round(a[4] / (math.pi / 2)) % 2:
            b[2], b[3] = b[3], b[2]
        b[4] = 0.0
    return b


@pytest.mark.parametrize("over", [{}, {"ignore_direction": "true", "class_ids_no_orientation": [1]}],
                         ids=["oriented", "ignore_direction+no_orientation"])
def test_rectangle2_onnx_export_matches_the_engine(tmp_path, over):
    """A rectangle2 detector exports up to its raw heads as rectangle1 does: onnxruntime's
    class_logits / box_deltas (5 values) equal the engine's rows, the anchors (row, col,
    length1, length2, phi) equal det_anchors, and the documented decoding of the best row
    gives apply_dl_model's top detection (also for a class without orientation)."""
    import json

    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    m = small2(**over)
    rng = np.random.default_rng(6)
    ha.set_dl_model_param(m, "batch_size", 2)
    ha.train_dl_model_batch(m, [sample2(rng), sample2(rng)])
    path = tmp_path / "det2.onnx"
    ha.write_dl_model(m, str(path))
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    param = json.loads(props["halcdl.detection.param"])
    assert param["instance_type"] == "rectangle2"
    assert param["ignore_direction"] == over.get("ignore_direction", "false")
    imgs = [sample2(rng)["image"] for _ in range(3)]
    raw = m.core.infer_detection_raw([{"image": x} for x in imgs], 2, 64, 64, 3)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.stack(imgs).transpose(0, 3, 1, 2).astype(np.float32)
    cls, box, anc = sess.run(["class_logits", "box_deltas", "anchors"], {"image": x})
    assert cls.shape == raw.shape[:2] + (2,) and box.shape == raw.shape[:2] + (5,)
    assert np.abs(cls - raw[..., :2]).max() <= 2e-4 and np.abs(box - raw[..., 2:]).max() <= 2e-4
    a_ref, _ = m.core.det_anchors(64, 64)
    assert np.array_equal(anc, a_ref)
    ha.set_dl_model_param(m, "min_confidence", 0.0)
    ha.set_dl_model_param(m, "max_num_detections", 5)
    no_orient = set(over.get("class_ids_no_orientation", []))
    seen = set()
    for i in range(3):
        res = ha.apply_dl_model(m, [{"image": imgs[i]}], [])[0]
        best = int(np.argmax(cls[i], axis=None))
        ai, ci = divmod(best, 2)
        assert res["bbox_class_id"][0] == ci
        seen.add(ci)
        dec = _np_decode2(anc[ai].astype(np.float64).tolist(), box[i, ai].astype(np.float64).tolist(),
                          ci not in no_orient, over.get("ignore_direction") == "true")
        got = [res[k][0] for k in ("bbox_row", "bbox_col", "bbox_length1", "bbox_length2", "bbox_phi")]
        assert np.allclose(got, dec, atol=2e-3, rtol=1e-4), (got, dec)
    assert not no_orient or seen & no_orient, "no top detection of a class without orientation"

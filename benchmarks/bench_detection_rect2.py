"""rectangle2 vs rectangle1 detection on the CPU (docs/detection.md): median seconds of a
train step and of apply_dl_model for the same detector (compact backbone, levels 2-4, three
ratios, three subscales) once with axis-parallel boxes and once with oriented boxes and two
anchor angles (twice the anchors), plus the engine's matching alone. Measured, not asserted.

    OMP_NUM_THREADS=2 python benchmarks/bench_detection_rect2.py [--size 256x160] [--batch 4]
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings

import common  # noqa: F401  (puts the checkout's python/ first)
import numpy as np


def boxes(rng, n, h, w):
    r = rng.uniform(0.2 * h, 0.8 * h, n)
    c = rng.uniform(0.2 * w, 0.8 * w, n)
    l1 = rng.uniform(0.05, 0.2, n) * min(h, w)
    l2 = l1 * rng.uniform(0.4, 1.0, n)
    phi = rng.uniform(-math.pi, math.pi, n)
    return r, c, l1, l2, phi


def sample(rng, h, w, rect2, n=6):
    r, c, l1, l2, phi = boxes(rng, n, h, w)
    s = {"image": rng.normal(0, 1, (h, w, 3)).astype(np.float32),
         "bbox_label_id": rng.integers(0, 2, n).tolist()}
    if rect2:
        s.update(bbox_row=r.tolist(), bbox_col=c.tolist(), bbox_length1=l1.tolist(),
                 bbox_length2=l2.tolist(), bbox_phi=phi.tolist())
    else:  # the axis-parallel bounding boxes
        er = np.abs(np.sin(phi)) * l1 + np.abs(np.cos(phi)) * l2
        ec = np.abs(np.cos(phi)) * l1 + np.abs(np.sin(phi)) * l2
        s.update(bbox_row1=(r - er).tolist(), bbox_col1=(c - ec).tolist(),
                 bbox_row2=(r + er).tolist(), bbox_col2=(c + ec).tolist())
    return s


def median_time(f, reps):
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="256x160")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    w, h = (int(x) for x in a.size.split("x"))
    import halcdl as ha
    from halcdl._native import core
    warnings.filterwarnings("ignore", category=ha.NotPretrainedWarning)
    rng = np.random.default_rng(0)
    for kind in ("rectangle1", "rectangle2"):
        p = {"image_width": w, "image_height": h, "capacity": "medium", "min_level": 2,
             "max_level": 4, "instance_type": kind}
        if kind == "rectangle2":
            p["anchor_angles"] = [0.0, math.pi / 2]
        m = ha.create_dl_model_detection("pretrained_dl_classifier_compact.hdl", 2, p)
        ha.set_dl_model_param(m, "batch_size", a.batch)
        batch = [sample(rng, h, w, kind == "rectangle2") for _ in range(a.batch)]
        tr = median_time(lambda: ha.train_dl_model_batch(m, batch), a.reps)
        ha.set_dl_model_param(m, "min_confidence", 0.05)
        inf = median_time(lambda: ha.apply_dl_model(m, batch, []), a.reps)
        anc, _ = m.core.det_anchors(h, w)
        s = batch[0]
        cfg = {"min_level": 2, "max_level": 4, "oriented": kind == "rectangle2",
               "anchor_angles": [0.0, math.pi / 2]}
        keys = (("bbox_row", "bbox_col", "bbox_length1", "bbox_length2", "bbox_phi")
                if kind == "rectangle2" else ("bbox_row1", "bbox_col1", "bbox_row2", "bbox_col2"))
        bx = np.ascontiguousarray(np.stack([s[k] for k in keys], 1), dtype=np.float32)
        mt = median_time(lambda: core.det_match(anc, bx, cfg), a.reps)
        print(f"{kind}: {len(anc)} anchors, train step (batch {a.batch}) {tr:.3f} s, "
              f"apply {inf:.3f} s, matching of one image (6 boxes) {1e3 * mt:.1f} ms")


if __name__ == "__main__":
    main()

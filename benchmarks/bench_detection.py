"""Detection train step and inference: halcdl vs the same detector in plain PyTorch
(torchvision's RetinaNet formulation re-implemented: same backbone, FPN, shared heads,
anchors, matching, sigmoid focal loss and smooth-L1; SGD with momentum and weight decay).

    OMP_NUM_THREADS=<n> python benchmarks/bench_detection.py [--backbone resnet18]
        [--size 256] [--batch 8] [--steps 5] [--threads n]

Prints one line per measurement and the ratios (docs/detection.md, "Performance")."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import halcdl as ha  # noqa: E402

warnings.filterwarnings("ignore")


def torch_forward(spec, params, x, training=True):
    vals = {}
    for n in spec:
        op, name, ins = n["op"], n["name"], n.get("inputs", [])
        if op == "input":
            out = x
        elif op == "conv":
            src = n.get("share", name)
            pad = n.get("pad", 0)
            pad = tuple(pad) if isinstance(pad, (list, tuple)) else (pad, pad)
            out = F.conv2d(vals[ins[0]], params[f"{src}.weight"], params.get(f"{src}.bias"),
                           stride=n.get("stride", 1), padding=pad, groups=int(n.get("groups", 1)))
        elif op == "bn":
            out = F.batch_norm(vals[ins[0]], params[f"{name}.running_mean"],
                               params[f"{name}.running_var"], params[f"{name}.scale"],
                               params[f"{name}.shift"], training=training)
        elif op == "relu":
            out = F.relu(vals[ins[0]])
        elif op == "relu6":
            out = F.relu6(vals[ins[0]])
        elif op == "maxpool":
            pad = n.get("pad", 0)
            pad = tuple(pad) if isinstance(pad, (list, tuple)) else (pad, pad)
            out = F.max_pool2d(vals[ins[0]], n["kernel"], n.get("stride", n["kernel"]), pad)
        elif op == "add":
            out = vals[ins[0]] + vals[ins[1]]
        elif op == "upsample_nearest":
            out = F.interpolate(vals[ins[0]], scale_factor=n.get("scale", 2), mode="nearest")
        elif op == "detection_output":
            k, a = n["num_classes"], n["num_anchors"]
            rows = []
            for c, b in zip(ins[0::2], ins[1::2]):
                zc, zb = vals[c], vals[b]
                nb, _, h, w = zc.shape
                rows.append(torch.cat([zc.view(nb, a, k, h, w).permute(0, 3, 4, 1, 2).reshape(nb, -1, k),
                                       zb.view(nb, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(nb, -1, 4)], 2))
            out = torch.cat(rows, 1)
        else:
            raise ValueError(op)
        vals[name] = out
    return out


def box_iou(a, b):
    ih = (torch.min(a[:, None, 2], b[None, :, 2]) - torch.max(a[:, None, 0], b[None, :, 0])).clamp(min=0)
    iw = (torch.min(a[:, None, 3], b[None, :, 3]) - torch.max(a[:, None, 1], b[None, :, 1])).clamp(min=0)
    inter = ih * iw
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def torch_loss(out, anchors, boxes, labels, k):
    cls, box, nfg = 0, 0, 0
    for i in range(out.shape[0]):
        t = torch.zeros(out.shape[1], k)
        valid = torch.ones(out.shape[1], dtype=torch.bool)
        if len(boxes[i]):
            q = box_iou(anchors, boxes[i])
            best, arg = q.max(1)
            m = torch.where(best >= 0.5, arg, torch.where(best < 0.4, -1, -2))
            hi = q.max(0).values
            sel = (q == hi[None, :]) & (hi[None, :] > 0)
            low = sel.any(1)
            m[low] = arg[low]
            fg = m >= 0
            valid = m != -2
            t[fg.nonzero()[:, 0], labels[i][m[fg]]] = 1.0
            a, g = anchors[fg], boxes[i][m[fg]]
            ah, aw = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
            gh, gw = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
            tgt = torch.stack([(g[:, 0] + gh / 2 - a[:, 0] - ah / 2) / ah,
                               (g[:, 1] + gw / 2 - a[:, 1] - aw / 2) / aw,
                               torch.log(gh / ah), torch.log(gw / aw)], 1)
            box = box + F.smooth_l1_loss(out[i, fg, k:], tgt, beta=0.11, reduction="sum")
            nfg += int(fg.sum())
        z = out[i, :, :k]
        p = torch.sigmoid(z)
        ce = F.binary_cross_entropy_with_logits(z, t, reduction="none")
        p_t = p * t + (1 - p) * (1 - t)
        cls = cls + (ce * (1 - p_t) ** 2)[valid].sum()
    return (cls + box) / max(1, nfg)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ha.set_system("thread_num", a.threads)
    m = ha.create_dl_model_detection(f"pretrained_dl_classifier_{a.backbone}.hdl", 3,
                                     {"image_width": a.size, "image_height": a.size,
                                      "capacity": "medium", "min_level": 3, "max_level": 5})
    ha.set_dl_model_param(m, "batch_size", a.batch)
    ha.set_dl_model_param(m, "learning_rate", 1e-3)
    ha.set_dl_model_param(m, "weight_prior", 1e-5)
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(a.batch):
        c = rng.uniform(20, a.size - 20, (4, 2))
        s = rng.uniform(16, 80, (4, 2))
        b = np.clip(np.concatenate([c - s / 2, c + s / 2], 1), 0, a.size)
        samples.append({"image": rng.normal(0, 1, (a.size, a.size, 3)).astype(np.float32),
                        "bbox_row1": b[:, 0].tolist(), "bbox_col1": b[:, 1].tolist(),
                        "bbox_row2": b[:, 2].tolist(), "bbox_col2": b[:, 3].tolist(),
                        "bbox_label_id": rng.integers(0, 3, 4).tolist()})
    spec = m.spec
    shared = {n["name"] for n in spec if "share" in n}
    params = {n: torch.tensor(m.core.get_param(n), requires_grad="running" not in n)
              for n in m.core.param_names() if n.rsplit(".", 1)[0] not in shared}
    train = [p for n, p in params.items() if "running" not in n]
    opt = torch.optim.SGD(train, lr=1e-3, momentum=0.9, weight_decay=1e-5)
    anchors = torch.tensor(m.core.det_anchors(a.size, a.size)[0])
    boxes = [torch.tensor(np.stack([s["bbox_row1"], s["bbox_col1"], s["bbox_row2"],
                                    s["bbox_col2"]], 1), dtype=torch.float32) for s in samples]
    labels = [torch.tensor(s["bbox_label_id"]) for s in samples]

    def halcdl_step():
        ha.train_dl_model_batch(m, samples)

    def torch_step():
        x = torch.from_numpy(np.stack([s["image"] for s in samples]).transpose(0, 3, 1, 2).copy())
        opt.zero_grad()
        torch_loss(torch_forward(spec, params, x), anchors, boxes, labels, 3).backward()
        opt.step()

    def halcdl_apply():
        ha.apply_dl_model(m, samples, [])

    def torch_apply():
        with torch.inference_mode():
            x = torch.from_numpy(np.stack([s["image"] for s in samples]).transpose(0, 3, 1, 2).copy())
            out = torch_forward(spec, params, x, training=False)
            torch.sigmoid(out[..., :3]).numpy()

    res = {}
    for name, fn in (("halcdl train", halcdl_step), ("torch train", torch_step),
                     ("halcdl apply", halcdl_apply), ("torch apply", torch_apply)):
        fn()  # warm-up
        t = []
        for _ in range(a.steps):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
        res[name] = float(np.median(t))
        print(f"{name:14s} {res[name] * 1000:8.1f} ms/batch ({a.batch / res[name]:.1f} img/s)")
    print(f"train ratio (torch / halcdl time): {res['torch train'] / res['halcdl train']:.2f}")
    print(f"apply ratio (torch forward only / halcdl incl. decoding and NMS): "
          f"{res['torch apply'] / res['halcdl apply']:.2f}")
    print(f"backbone {a.backbone}, {a.size}x{a.size}, batch {a.batch}, threads {a.threads}")


if __name__ == "__main__":
    main()

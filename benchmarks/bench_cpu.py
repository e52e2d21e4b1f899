"""CPU speed of halcdl vs PyTorch eager on the same architecture, batch, size and threads.

    python benchmarks/bench_cpu.py                       # resnet18 bs16, compact bs32, 224x224
    python benchmarks/bench_cpu.py --models compact --batch 64 --repeats 20 --threads 4
    python benchmarks/bench_cpu.py --json out/bench.json

For each model: halcdl's train_dl_model_batch (forward, loss, backward, SGD update: one
call) and apply_dl_model (one batch, results as DLResult dicts), against the same graph in
PyTorch eager built by tests/torch_twin.py from the model's spec with halcdl's weights copied
in: forward + cross-entropy + backward + torch.optim.SGD(momentum, weight_decay) step, and
an inference-mode forward + softmax. Both sides start from the same numpy DLSample batch
(torch stacks it into a tensor inside the timed region, as a user would). Reported: median
images/s over --repeats timed calls after --warmup untimed ones, and halcdl / torch.
Measured, never asserted. Every row of issue 6 (bf16, optimize_for_inference, peak memory,
overhead) in one command: benchmarks/run_all.py, results in docs/performance.md.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))     # torch_twin
_py = os.path.join(os.path.dirname(HERE), "python")
if glob.glob(os.path.join(_py, "halcdl", "_core*.so")):   # built in place: use the checkout
    sys.path.insert(0, _py)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import halcdl as ha  # noqa: E402
from torch_twin import from_model, images_to_nchw  # noqa: E402

FILES = {
    "compact": "pretrained_dl_classifier_compact.hdl",
    "enhanced": "pretrained_dl_classifier_enhanced.hdl",
    "resnet18": "pretrained_dl_classifier_resnet18.hdl",
    "resnet50": "pretrained_dl_classifier_resnet50.hdl",
    "mobilenet_v2": "pretrained_dl_classifier_mobilenet_v2.hdl",
    "alexnet": "pretrained_dl_classifier_alexnet.hdl",
}
DEFAULT_BATCH = {"resnet18": 16, "compact": 32}


def median_time(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_model(name, batch, size, classes, warmup, repeats, lr=1e-3, momentum=0.9,
                wp=1e-4, channels_last=False, log=print):
    ha.set_system("seed_rand", 0)
    model = ha.read_dl_model(FILES[name])
    if name != "alexnet":
        ha.set_dl_model_param(model, "image_dimensions", [size, size, 3])
    size_h = int(ha.get_dl_model_param_s(model, "image_height"))
    size_w = int(ha.get_dl_model_param_s(model, "image_width"))
    ha.set_dl_model_param(model, "class_ids", list(range(classes)))
    ha.set_dl_model_param(model, "batch_size", batch)
    ha.set_dl_model_param(model, "learning_rate", lr)
    ha.set_dl_model_param(model, "momentum", momentum)
    ha.set_dl_model_param(model, "weight_prior", wp)

    rng = np.random.default_rng(0)
    samples = [{"image": rng.uniform(-127, 128, (size_h, size_w, 3)).astype(np.float32),
                "image_label_id": int(i % classes)} for i in range(batch)]
    labels = torch.tensor([s["image_label_id"] for s in samples])

    twin = from_model(model)               # float32 copy of the same weights
    if channels_last:
        twin = twin.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD([p for _, _, p in twin.named_trainable()], lr=lr,
                          momentum=momentum, weight_decay=wp)

    def torch_train():
        twin.train()
        x = images_to_nchw(samples)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(twin(x), labels)
        loss.backward()
        opt.step()
        return float(loss)

    def torch_apply():
        twin.eval()
        with torch.inference_mode():
            x = images_to_nchw(samples)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            probs = torch.softmax(twin(x), dim=1)
            conf, ids = probs.sort(dim=1, descending=True)
            return ids.numpy(), conf.numpy()

    rows = []
    for phase, h_fn, t_fn in [
        ("train", lambda: ha.train_dl_model_batch(model, samples), torch_train),
        ("apply", lambda: ha.apply_dl_model(model, samples, []), torch_apply),
    ]:
        th = median_time(h_fn, warmup, repeats)
        tt = median_time(t_fn, warmup, repeats)
        row = {"model": name, "batch": batch, "size": [size_h, size_w], "phase": phase,
               "halcdl_s": th, "torch_s": tt, "halcdl_img_s": batch / th,
               "torch_img_s": batch / tt, "ratio": tt / th}
        log(f"  {name:12s} bs{batch:<4d} {phase:5s}  halcdl {row['halcdl_img_s']:8.1f} img/s"
            f"  torch {row['torch_img_s']:8.1f} img/s  ratio {row['ratio']:.2f}")
        rows.append(row)
    ha.clear_dl_model(model)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description="halcdl vs PyTorch eager, CPU")
    p.add_argument("--models", default="resnet18,compact",
                   help=f"comma-separated, from {','.join(FILES)}")
    p.add_argument("--batch", type=int, default=0,
                   help="batch size for all models (default: resnet18 16, compact 32, else 16)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--channels-last", action="store_true",
                   help="run the torch side in channels_last memory format")
    p.add_argument("--json", default=None, help="write the rows to this JSON file")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    ha.set_system("thread_num", args.threads)
    print(f"threads {args.threads} (torch {torch.get_num_threads()}, halcdl "
          f"{ha.get_system_s('thread_num')}), torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus")
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        batch = args.batch or DEFAULT_BATCH.get(name, 16)
        rows += bench_model(name, batch, args.size, args.classes, args.warmup, args.repeats,
                            channels_last=args.channels_last)

    print()
    print(f"| model | batch | size | phase | halcdl img/s | torch img/s | halcdl/torch |")
    print(f"|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['size'][0]}x{r['size'][1]} | {r['phase']} | "
              f"{r['halcdl_img_s']:.1f} | {r['torch_img_s']:.1f} | {r['ratio']:.2f} |")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "torch": torch.__version__,
                       "warmup": args.warmup, "repeats": args.repeats,
                       "machine": platform.machine(), "cpus": os.cpu_count(),
                       "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()

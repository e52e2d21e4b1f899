"""Data-parallel training (docs/distributed.md): the all-reduce's cost per step, measured on the
CPU with Gloo ranks on 127.0.0.1, and the scaling model on paper.

    python benchmarks/bench_distributed.py                  # resnet18 224x224 bs8, 2 ranks
    python benchmarks/bench_distributed.py --model compact --batch 32 --ranks 2 --steps 8
    python benchmarks/bench_distributed.py --paper          # the tables of docs/distributed.md

Measured: every rank (one process each, `--threads` OpenMP threads) first runs `--steps`
train_dl_model_batch calls on its own (no data parallelism; all ranks at once, so they compete
for the cores as they do later), then joins ('data_parallel' 'torch') and runs `--steps` more.
Reported by rank 0 (medians after `--warmup` untimed steps): the step time alone and data
parallel, the time inside the engine's reduce callback (the all-reduce of the gradient arena
plus the small one of the BN statistics and the loss), its share of the data-parallel step,
and a bare torch.distributed.all_reduce of a tensor of the arena's size.  On a machine whose
cores are fewer than ranks × threads the ranks also compete for the cores: say so with the
figures (the script prints the core count and load).

--paper: per zoo model the all-reduce volume (4 bytes × num_trainable_params), a ring
all-reduce's time 2(n−1)/n × bytes / bandwidth on PCIe / NVLink / 25 / 100 Gb Ethernet, and the
efficiency t_step / (t_step + t_allreduce) (no overlap: halcdl reduces after the backward pass)
for resnet18 and resnet50 at batch 32 and 128 on 1 … 64 GPUs, from the single-GPU throughput
assumed in SINGLE_GPU_IMG_S.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Link bandwidths for the ring's bus bandwidth, GB/s per direction (nominal; NCCL reaches
# ~75-90 % of them): PCIe 4.0 x16, NVLink 3 (A100: 12 links × 25 GB/s), 25 / 100 Gb Ethernet.
LINKS = {"PCIe 4.0 x16 (32 GB/s)": 32e9, "NVLink 3 (300 GB/s)": 300e9,
         "25 GbE (3.1 GB/s)": 25e9 / 8, "100 GbE (12.5 GB/s)": 100e9 / 8}
# Assumed single-GPU training throughput, fp32 with TF32 on an A100-class GPU (images/s at
# 224x224): resnet50 ~1000 (NVIDIA's DeepLearningExamples report ~1000 img/s TF32 on A100),
# resnet18 ~3 × that (2.3× fewer FLOPs, less memory-bound). Not measured here (no GPU).
SINGLE_GPU_IMG_S = {"resnet18": 3000.0, "resnet50": 1000.0}
GPUS = [1, 2, 4, 8, 16, 32, 64]
FILES = {
    "compact": "pretrained_dl_classifier_compact.hdl",
    "enhanced": "pretrained_dl_classifier_enhanced.hdl",
    "resnet18": "pretrained_dl_classifier_resnet18.hdl",
    "resnet50": "pretrained_dl_classifier_resnet50.hdl",
    "mobilenet_v2": "pretrained_dl_classifier_mobilenet_v2.hdl",
    "alexnet": "pretrained_dl_classifier_alexnet.hdl",
}


def _halcdl():
    sys.path.insert(0, os.path.join(ROOT, "python"))
    import halcdl as ha  # noqa: PLC0415

    return ha


def ring_seconds(nbytes: float, n: int, bandwidth: float) -> float:
    return 0.0 if n <= 1 else 2.0 * (n - 1) / n * nbytes / bandwidth


def paper(classes: int = 1000) -> str:
    import warnings  # noqa: PLC0415

    warnings.simplefilter("ignore")
    ha = _halcdl()
    out = [f"All-reduce volume per step ({classes} classes, fp32 gradients):", "",
           "| model | trainable parameters | bytes per step |", "|---|---|---|"]
    params = {}
    for name, f in FILES.items():
        m = ha.read_dl_model(f)
        ha.set_dl_model_param(m, "class_ids", list(range(classes)))
        params[name] = ha.get_dl_model_param_s(m, "num_trainable_params")
        out.append(f"| {name} | {params[name]:,} | {4 * params[name] / 1e6:.1f} MB |")
        ha.clear_dl_model(m)
    out += ["", "Ring all-reduce time per step, ms (2(n−1)/n × bytes / bandwidth):", ""]
    out += ["| model | link | " + " | ".join(f"n={n}" for n in GPUS) + " |",
            "|---|---|" + "---|" * len(GPUS)]
    for name in ("resnet18", "resnet50"):
        for link, bw in LINKS.items():
            row = [f"{1e3 * ring_seconds(4 * params[name], n, bw):.1f}" for n in GPUS]
            out.append(f"| {name} | {link} | " + " | ".join(row) + " |")
    out += ["", "Efficiency t_step / (t_step + t_allreduce), no overlap (assumed single-GPU "
            "throughput: " + ", ".join(f"{k} {v:.0f} img/s" for k, v in
                                       SINGLE_GPU_IMG_S.items()) + "):", ""]
    out += ["| model | batch/GPU | step | link | " + " | ".join(f"n={n}" for n in GPUS) + " |",
            "|---|---|---|---|" + "---|" * len(GPUS)]
    for name in ("resnet18", "resnet50"):
        for batch in (32, 128):
            t = batch / SINGLE_GPU_IMG_S[name]
            for link, bw in LINKS.items():
                row = [f"{100 * t / (t + ring_seconds(4 * params[name], n, bw)):.0f} %"
                       for n in GPUS]
                out.append(f"| {name} | {batch} | {1e3 * t:.1f} ms | {link} | "
                           + " | ".join(row) + " |")
    return "\n".join(out)


# ---- measured ---------------------------------------------------------------------------------
def worker(a) -> None:
    import warnings  # noqa: PLC0415

    warnings.simplefilter("ignore")
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    torch.set_num_threads(a.threads)
    ha = _halcdl()
    import torch.distributed as dist  # noqa: PLC0415

    ha.set_system("thread_num", a.threads)
    rank = int(os.environ["RANK"])
    ha.set_system("seed_rand", 0)
    m = ha.read_dl_model(FILES[a.model])
    if a.model != "alexnet":
        ha.set_dl_model_param(m, "image_dimensions", [a.size, a.size, 3])
    ha.set_dl_model_param(m, "class_ids", list(range(10)))
    ha.set_dl_model_param(m, "batch_size", a.batch)
    ha.set_dl_model_param(m, "learning_rate", 1e-3)
    rng = np.random.default_rng(rank)
    batch = [{"image": rng.uniform(-1, 1, (a.size, a.size, 3)).astype(np.float32),
              "image_label_id": int(i % 10)} for i in range(a.batch)]

    def timed(n):
        ts = []
        for i in range(a.warmup + n):
            t0 = time.perf_counter()
            ha.train_dl_model_batch(m, batch)
            if i >= a.warmup:
                ts.append(time.perf_counter() - t0)
        return ts

    alone = timed(a.steps)
    ha.set_dl_model_param(m, "data_parallel", "torch")
    dp = m.data_parallel
    inner = []
    orig = dp.reduce

    def reduce(*args):
        t0 = time.perf_counter()
        orig(*args)
        inner.append(time.perf_counter() - t0)

    dp.reduce = reduce
    with_dp = timed(a.steps)
    inner = inner[a.warmup:]
    n = ha.get_dl_model_param_s(m, "num_trainable_params")
    x = torch.zeros(n, dtype=torch.float32)
    bare = []
    for i in range(a.warmup + a.steps):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(x)
        if i >= a.warmup:
            bare.append(time.perf_counter() - t0)
    ha.set_dl_model_param(m, "data_parallel", "false")
    if rank == 0:
        med = statistics.median
        res = {"model": a.model, "size": a.size, "batch_per_rank": a.batch, "ranks": a.ranks,
               "threads_per_rank": a.threads, "cores": os.cpu_count(),
               "load_avg": os.getloadavg(), "params": n, "bytes": 4 * n,
               "step_alone_ms": 1e3 * med(alone), "step_dp_ms": 1e3 * med(with_dp),
               "reduce_ms": 1e3 * med(inner), "bare_allreduce_ms": 1e3 * med(bare)}
        res["reduce_share_of_dp_step"] = res["reduce_ms"] / res["step_dp_ms"]
        res["dp_overhead_ms"] = res["step_dp_ms"] - res["step_alone_ms"]
        print(json.dumps(res))


def launch(a) -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               WORLD_SIZE=str(a.ranks), GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS=str(a.threads))
    args = [sys.executable, os.path.abspath(__file__), "--worker", "--model", a.model,
            "--size", str(a.size), "--batch", str(a.batch), "--steps", str(a.steps),
            "--warmup", str(a.warmup), "--threads", str(a.threads), "--ranks", str(a.ranks)]
    procs = [subprocess.Popen(args, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, text=True) for r in range(a.ranks)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        print("a rank failed", [p.returncode for p in procs], file=sys.stderr)
        return 1
    res = json.loads(outs[0].strip().splitlines()[-1])
    print(json.dumps(res, indent=1))
    print(f"\n{a.model} {a.size}x{a.size}, batch {a.batch} per rank, {a.ranks} ranks x "
          f"{a.threads} thread(s) on {res['cores']} cores (load {res['load_avg'][0]:.1f}): "
          f"step alone {res['step_alone_ms']:.0f} ms, data parallel {res['step_dp_ms']:.0f} ms; "
          f"reduce {res['reduce_ms']:.1f} ms = {100 * res['reduce_share_of_dp_step']:.1f} % of "
          f"the step ({res['bytes'] / 1e6:.1f} MB; bare all_reduce "
          f"{res['bare_allreduce_ms']:.1f} ms)")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--paper", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="resnet18", choices=sorted(FILES))
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    a = p.parse_args()
    if a.paper:
        print(paper())
        return 0
    if a.worker:
        worker(a)
        return 0
    return launch(a)


if __name__ == "__main__":
    sys.exit(main())

"""Data-parallel training of the compact classifier on scikit-learn's digits (docs/distributed.md).

One machine, 2 processes on the CPU (Gloo):

    torchrun --nproc_per_node=2 examples/train_distributed.py --epochs 4

Several machines (here 2, each with 4 GPUs and NCCL; run the same line on every machine):

    torchrun --nnodes=2 --nproc_per_node=4 --rdzv-backend=c10d \\
             --rdzv-endpoint=HOST_OF_NODE0:29500 --rdzv-id=digits \\
             examples/train_distributed.py --gpu

torchrun starts one process per rank and gives it RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; `set_dl_model_param(model, 'data_parallel', 'torch')` reads them, initialises
torch.distributed's default process group (NCCL when the model is on a GPU, else Gloo) and
gives every rank rank 0's weights.  Every rank trains on its own share of each batch (the same
shuffle everywhere, cut by rank), the gradients are averaged after every step, and all ranks
stay bit-identical.  Only rank 0 prints and writes.  Needs `pip install 'halcdl[distributed]'`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import halcdl as ha  # noqa: E402
from train_digits import accuracy, digits_samples  # noqa: E402


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16, help="per rank")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=1, help="OpenMP threads per rank")
    p.add_argument("--gpu", action="store_true", help="train on GPU LOCAL_RANK (NCCL)")
    p.add_argument("--out", default=None, help="folder for the model and a summary (rank 0)")
    args = p.parse_args(argv)

    ha.set_system("thread_num", args.threads)
    train, test = digits_samples(args.size, seed=0)
    ha.set_system("seed_rand", args.seed)
    model = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    ha.set_dl_model_param(model, "image_dimensions", [args.size, args.size, 3])
    ha.set_dl_model_param(model, "class_ids", list(range(10)))
    ha.set_dl_model_param(model, "batch_size", args.batch_size)
    ha.set_dl_model_param(model, "learning_rate", args.lr)
    ha.set_dl_model_param(model, "momentum", 0.9)
    ha.set_dl_model_param(model, "weight_prior", 1e-4)
    if args.gpu:
        ha.set_dl_model_param(model, "gpu", int(os.environ.get("LOCAL_RANK", "0")))
        ha.set_dl_model_param(model, "runtime", "gpu")
    # collective: every rank joins, rank 0's model is broadcast
    ha.set_dl_model_param(model, "data_parallel", "torch")
    rank = ha.get_dl_model_param_s(model, "data_parallel_rank")
    world = ha.get_dl_model_param_s(model, "data_parallel_world_size")
    log = print if rank == 0 else (lambda *a, **k: None)
    log(f"{world} rank(s), batch {args.batch_size} per rank = {world * args.batch_size} "
        f"per step; {len(train)} training images")

    rng = np.random.default_rng(args.seed)   # the same permutation on every rank
    share, step = args.batch_size, args.batch_size * world
    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        if epoch == int(0.75 * args.epochs) + 1:
            ha.set_dl_model_param(model, "learning_rate", args.lr / 10)
        order = rng.permutation(len(train))
        losses = []
        for s in range(len(train) // step):
            mine = order[s * step + rank * share:s * step + (rank + 1) * share]
            r = ha.train_dl_model_batch(model, [train[i] for i in mine])
            losses.append(r["total_loss"])            # the mean over all ranks
        acc = accuracy(model, test)                   # identical on every rank
        log(f"epoch {epoch}/{args.epochs}  loss {np.mean(losses):.4f}  "
            f"test accuracy {100 * acc:.2f} %  ({time.perf_counter() - t0:.0f} s)")
    if rank == 0 and args.out:
        os.makedirs(args.out, exist_ok=True)
        ha.write_dl_model(model, os.path.join(args.out, "digits_compact.hdl"))
        with open(os.path.join(args.out, "train_distributed.json"), "w") as f:
            json.dump({"test_accuracy": acc, "ranks": world, "args": vars(args)}, f, indent=2)
    ha.set_dl_model_param(model, "data_parallel", "false")
    return acc


if __name__ == "__main__":
    main()

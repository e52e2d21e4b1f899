"""Cost of the training step's divergence check (docs/robustness.md, issue 15: < 1 %).

    OMP_NUM_THREADS=2 python benchmarks/bench_divergence.py               # compact, resnet18
    OMP_NUM_THREADS=2 python benchmarks/bench_divergence.py --blocks 9 --solver adam

The check (CPU) is switched with the benchmark switch `core._set_divergence_check(on)` (also
HALCDL_DIVERGENCE_CHECK=0 in the environment; never a user option). Two measurements per
model, 224x224 like benchmarks/run_all.py section 1 (compact bs32, resnet18 bs16), SGD with
momentum:

1. whole steps: `--blocks` pairs of blocks of `--block` train_dl_model_batch calls, check
   on / off, the order reversed every pair; the first call of each block is untimed (after a
   switch the check recomputes the maxima of the weights and optimizer state once, which a
   run that never switches pays only on its first step). Reported: the medians of all timed
   calls, their ratio (on / off - 1) and the median of the per-pair differences of the
   block medians. On a shared machine this difference is within the noise (percent).
2. the check itself: with the per-op timer on (`core.set_op_timer`), the engine times the
   check ("train_step:check": the gradient pass, bounds, running statistics) and the update
   ("train_step:update" with the maxima fused in, "train_step:update_unchecked" without);
   cost = (check + update - update_unchecked) / median step with the check off (from 1).
   This is the precise figure; 1 bounds it from noise.

The load average is printed before and after each model.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import common  # noqa: F401  (sets sys.path)
from common import load_avg, make_model, make_samples

import halcdl as ha  # noqa: E402
from halcdl._native import core  # noqa: E402

warnings.filterwarnings("ignore", category=ha.NotPretrainedWarning)

ROWS = {"compact": 32, "resnet18": 16, "mobilenet_v2": 16, "resnet50": 8}


def step_time(model, samples) -> float:
    t0 = time.perf_counter()
    ha.train_dl_model_batch(model, samples)
    return time.perf_counter() - t0


def whole_steps(model, samples, blocks: int, block: int) -> dict:
    on, off, pairs = [], [], []
    for b in range(2 * blocks):
        flag = (b % 4 in (0, 3))  # on off off on on off ...
        core._set_divergence_check(flag)
        step_time(model, samples)  # untimed: the first step after the switch
        ts = [step_time(model, samples) for _ in range(block)]
        (on if flag else off).extend(ts)
        pairs.append((flag, statistics.median(ts)))
    core._set_divergence_check(True)
    diffs = []
    for i in range(0, len(pairs) - 1, 2):
        (f1, m1), (_, m2) = pairs[i], pairs[i + 1]
        diffs.append(m1 - m2 if f1 else m2 - m1)
    return {"on": statistics.median(on), "off": statistics.median(off),
            "pair_diff": statistics.median(diffs), "n": len(on)}


def timed_check(model, samples, steps: int) -> dict:
    out = {}
    was = core.op_timer()
    core.set_op_timer(True)
    try:
        for flag in (True, False):
            core._set_divergence_check(flag)
            step_time(model, samples)
            core.reset_op_times()
            for _ in range(steps):
                ha.train_dl_model_batch(model, samples)
            t = core.op_times()
            for k in ("train_step:check", "train_step:update", "train_step:update_unchecked"):
                if k in t:
                    out[k] = t[k][0] / t[k][1]
    finally:
        core._set_divergence_check(True)
        core.set_op_timer(was)
        core.reset_op_times()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=5, help="pairs of on/off blocks (>= 5)")
    ap.add_argument("--block", type=int, default=3, help="timed steps per block")
    ap.add_argument("--timed-steps", type=int, default=10)
    ap.add_argument("--solver", default="sgd", choices=("sgd", "adam"))
    ap.add_argument("--models", default="compact,resnet18")
    ap.add_argument("--size", type=int, default=224)
    a = ap.parse_args()
    ha.set_system("thread_num", a.threads)
    print(f"threads {a.threads}  solver {a.solver}  blocks {a.blocks}x2 of {a.block}  "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}  load {load_avg()}", flush=True)
    for name in a.models.split(","):
        bs = ROWS[name]
        model = make_model(ha, name, bs, size=a.size)
        if a.solver == "adam":
            ha.set_dl_model_param(model, "solver", "adam")
            ha.set_dl_model_param(model, "learning_rate", 1e-4)
        samples = make_samples(bs, a.size, a.size)
        n_params = sum(int(core_size) for core_size in
                       (model.core.get_param(p).size for p in model.core.param_names()))
        for _ in range(a.warmup):
            ha.train_dl_model_batch(model, samples)
        w = whole_steps(model, samples, a.blocks, a.block)
        t = timed_check(model, samples, a.timed_steps)
        chk = t.get("train_step:check", float("nan"))
        upd, upd0 = t.get("train_step:update", float("nan")), \
            t.get("train_step:update_unchecked", float("nan"))
        cost = chk + upd - upd0
        print(f"  {name:9s} bs{bs:<3d} {n_params / 1e6:5.2f} M values  step check on "
              f"{1e3 * w['on']:8.1f} ms  off {1e3 * w['off']:8.1f} ms  (on/off - 1 = "
              f"{100 * (w['on'] / w['off'] - 1):+.2f} %, paired {1e3 * w['pair_diff']:+.1f} ms, "
              f"n={w['n']})", flush=True)
        print(f"  {'':9s} timer: check {1e3 * chk:.3f} ms  update {1e3 * upd:.3f} ms  unchecked "
              f"update {1e3 * upd0:.3f} ms  => check cost {1e3 * cost:.3f} ms = "
              f"{100 * cost / w['off']:.3f} % of a step  load {load_avg()}", flush=True)


if __name__ == "__main__":
    main()

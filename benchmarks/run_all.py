"""Every row of issue 6 in one command: halcdl vs PyTorch eager on the CPU.

    python benchmarks/run_all.py --quick                      # ~5 min on 2 cores
    python benchmarks/run_all.py --json out/bench.json --md out/bench.md
    python benchmarks/run_all.py --sections 1,5 --quick       # a subset

Sections (224x224, 10 classes, --threads threads for both libraries, default 2):
  1 train fp32     train_dl_model_batch vs torch fp32 (forward + cross-entropy + backward +
                   SGD(momentum, weight_decay) step): resnet18 bs16, compact bs32,
                   mobilenet_v2 bs16, resnet50 bs8
  2 train bf16     halcdl with set_dl_model_param(model, 'precision', 'bfloat16') vs torch
                   fp32 and vs torch under torch.autocast('cpu', dtype=torch.bfloat16)
                   (and halcdl fp32, for bf16's own speed-up): resnet18 bs16, compact bs32
  3 inference      apply_dl_model fp32 bs16, without and with 'optimize_for_inference', vs
                   torch eval() + inference_mode() forward + softmax + sort
  4 peak memory    of train steps, each library alone in a fresh process
                   (benchmarks/peak_mem.py, which documents what is included)
  5 overhead       resnet18 bs16: train_dl_model_batch vs model.core.train_step and
                   apply_dl_model vs model.core.infer (the engine call); the Python layer
                   alone (the engine call replaced by a stub returning a cached result); the
                   input staging alone (the engine's sample checks + HWC->NCHW copy, timed as
                   core.train_step on a batch whose last pixel is NaN, which raises 7736 after
                   copying every image and before any compute)

Timing: within a row the candidates run interleaved in one process (A B C, then C B A, ...)
after `warmup` untimed rounds; reported are medians of `repeats` timed calls as images/s and
the ratio of medians (> 1: halcdl faster). The machine may be shared: the load average is
recorded before and after every section. Both sides start from the same numpy DLSample
batch; torch stacks it into a tensor inside the timed region, as a user would. Speed is
measured, never asserted; the "met" column compares with issue 6's targets.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import common  # noqa: F401  (sets sys.path)
from common import (INFER_BATCH, INFER_MODELS, TRAIN_BF16, TRAIN_FP32, load_avg,
                    make_model, make_samples, torch_fns)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import halcdl as ha  # noqa: E402
from torch_twin import from_model  # noqa: E402

warnings.filterwarnings("ignore", category=ha.NotPretrainedWarning)  # random weights: fine

TARGETS = {
    "train_fp32": 1.3,            # x torch fp32
    "train_bf16_vs_fp32": 2.5,    # x torch fp32
    "train_bf16_vs_autocast": 1.3,
    "infer": 1.5,
    "memory": 1.0,                # halcdl / torch <= 1
    "overhead_pct": 5.0,
}

LOG = print


# ---- timing -----------------------------------------------------------------------------
def interleaved(fns: dict, warmup: int, repeats: int) -> dict:
    """{name: [seconds per call]}: all fns run once per round, order reversed every round."""
    keys = list(fns)
    for _ in range(warmup):
        for k in keys:
            fns[k]()
    times = {k: [] for k in keys}
    for r in range(repeats):
        for k in (keys if r % 2 == 0 else keys[::-1]):
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def med(ts) -> float:
    return statistics.median(ts)


def best_ratio(ts, ref, cand):
    """Ratio of the fastest calls: less sensitive to a loaded machine than the medians."""
    return min(ts[ref]) / min(ts[cand])


def spread(ts) -> float:
    """(max - min) / median: how noisy a row was."""
    return (max(ts) - min(ts)) / med(ts) if ts else float("nan")


def fmt(x, nd=1):
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "n/a"
    return f"{x:.{nd}f}"


def met(ratio, target, higher_better=True):
    if ratio is None or (isinstance(ratio, float) and np.isnan(ratio)):
        return "n/a"
    return "yes" if (ratio >= target if higher_better else ratio <= target) else "no"


def try_make(name, batch, **kw):
    """(model, None) or (None, 'error text') for precision / optimize_for_inference that this
    halcdl does not support (yet)."""
    try:
        return make_model(ha, name, batch, **kw), None
    except ha.HOperatorError as err:
        return None, f"{type(err).__name__}: {err}"


def image_hw(model):
    return (int(ha.get_dl_model_param_s(model, "image_height")),
            int(ha.get_dl_model_param_s(model, "image_width")))


# ---- sections ---------------------------------------------------------------------------
def section_train_fp32(cfg):
    rows = []
    for name, bs in TRAIN_FP32:
        model = make_model(ha, name, bs)
        samples = make_samples(bs, *image_hw(model))
        t_train, _ = torch_fns(from_model(model), samples)
        ts = interleaved({"halcdl": lambda: ha.train_dl_model_batch(model, samples),
                          "torch": t_train}, cfg.warmup, cfg.repeats)
        r = {"model": name, "batch": bs, "times": ts,
             "halcdl_img_s": bs / med(ts["halcdl"]), "torch_img_s": bs / med(ts["torch"]),
             "ratio": med(ts["torch"]) / med(ts["halcdl"]),
             "ratio_best": best_ratio(ts, "torch", "halcdl"),
             "spread": max(spread(v) for v in ts.values())}
        LOG(f"  train fp32 {name:12s} bs{bs:<3d} halcdl {r['halcdl_img_s']:6.1f} img/s  torch "
            f"{r['torch_img_s']:6.1f} img/s  ratio {r['ratio']:.2f} (best {r['ratio_best']:.2f}, "
            f"spread {r['spread']:.0%})")
        rows.append(r)
        ha.clear_dl_model(model)
    return rows


def section_train_bf16(cfg):
    rows = []
    for name, bs in TRAIN_BF16:
        ref = make_model(ha, name, bs)                      # fp32, same seed: same weights
        samples = make_samples(bs, *image_hw(ref))
        t_fp32, _ = torch_fns(from_model(ref), samples)
        t_auto, _ = torch_fns(from_model(ref), samples, autocast_bf16=True)
        model, err = try_make(name, bs, precision="bfloat16")
        fns = {"halcdl_fp32": lambda: ha.train_dl_model_batch(ref, samples),
               "torch_fp32": t_fp32, "torch_bf16": t_auto}
        if model is not None:
            fns = {"halcdl_bf16": lambda: ha.train_dl_model_batch(model, samples), **fns}
            prec = ha.get_dl_model_param_s(model, "precision")
        ts = interleaved(fns, cfg.warmup, cfg.repeats)
        r = {"model": name, "batch": bs, "times": ts, "error": err,
             "torch_fp32_img_s": bs / med(ts["torch_fp32"]),
             "torch_bf16_img_s": bs / med(ts["torch_bf16"]),
             "halcdl_fp32_img_s": bs / med(ts["halcdl_fp32"]),
             "spread": max(spread(v) for v in ts.values())}
        ha.clear_dl_model(ref)
        if model is not None:
            r["halcdl_precision"] = prec
            r["halcdl_bf16_img_s"] = bs / med(ts["halcdl_bf16"])
            r["ratio_vs_fp32"] = med(ts["torch_fp32"]) / med(ts["halcdl_bf16"])
            r["ratio_vs_autocast"] = med(ts["torch_bf16"]) / med(ts["halcdl_bf16"])
            r["ratio_vs_fp32_best"] = best_ratio(ts, "torch_fp32", "halcdl_bf16")
            r["ratio_vs_autocast_best"] = best_ratio(ts, "torch_bf16", "halcdl_bf16")
            r["bf16_speedup"] = med(ts["halcdl_fp32"]) / med(ts["halcdl_bf16"])
            ha.clear_dl_model(model)
        LOG(f"  train bf16 {name:12s} bs{bs:<3d} halcdl {fmt(r.get('halcdl_bf16_img_s')):>6s} "
            f"img/s  torch fp32 {r['torch_fp32_img_s']:6.1f}  torch autocast "
            f"{r['torch_bf16_img_s']:6.1f}  ratios {fmt(r.get('ratio_vs_fp32'), 2)} / "
            f"{fmt(r.get('ratio_vs_autocast'), 2)}  (halcdl fp32 {r['halcdl_fp32_img_s']:.1f})"
            + (f"  [{err}]" if err else ""))
        rows.append(r)
    return rows


def section_infer(cfg):
    rows = []
    bs = INFER_BATCH
    for name in INFER_MODELS:
        model = make_model(ha, name, bs)
        samples = make_samples(bs, *image_hw(model))
        _, t_apply = torch_fns(from_model(model), samples)
        opt, err = try_make(name, bs, optimize=True)
        fns = {"halcdl": lambda: ha.apply_dl_model(model, samples, []), "torch": t_apply}
        if opt is not None:
            fns["halcdl_opt"] = lambda: ha.apply_dl_model(opt, samples, [])
        ts = interleaved(fns, cfg.warmup, cfg.infer_repeats)
        r = {"model": name, "batch": bs, "times": ts, "error": err,
             "halcdl_img_s": bs / med(ts["halcdl"]), "torch_img_s": bs / med(ts["torch"]),
             "ratio": med(ts["torch"]) / med(ts["halcdl"]),
             "ratio_best": best_ratio(ts, "torch", "halcdl"),
             "spread": max(spread(v) for v in ts.values())}
        if opt is not None:
            r["halcdl_opt_img_s"] = bs / med(ts["halcdl_opt"])
            r["ratio_opt"] = med(ts["torch"]) / med(ts["halcdl_opt"])
            r["ratio_opt_best"] = best_ratio(ts, "torch", "halcdl_opt")
            ha.clear_dl_model(opt)
        LOG(f"  infer      {name:12s} bs{bs:<3d} halcdl {r['halcdl_img_s']:6.1f} img/s  "
            f"optimized {fmt(r.get('halcdl_opt_img_s')):>6s}  torch {r['torch_img_s']:6.1f}  "
            f"ratios {r['ratio']:.2f} / {fmt(r.get('ratio_opt'), 2)}"
            + (f"  [{err}]" if err else ""))
        rows.append(r)
        ha.clear_dl_model(model)
    return rows


def _child(args):
    cmd = [sys.executable, os.path.join(common.HERE, "peak_mem.py")] + args
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": tail}
    return json.loads(p.stdout.strip().splitlines()[-1])


def section_memory(cfg):
    rows = []
    configs = [(n, b, "float32") for n, b in TRAIN_FP32] + \
              [(n, b, "bfloat16") for n, b in TRAIN_BF16]
    with tempfile.TemporaryDirectory() as tmp:
        for name, bs, prec in configs:
            model = make_model(ha, name, bs)
            h, w = image_hw(model)
            spec_file = os.path.join(tmp, f"{name}.json")
            with open(spec_file, "w") as f:
                json.dump({"spec": model.spec, "height": h, "width": w,
                           "channels": int(ha.get_dl_model_param_s(model,
                                                                   "image_num_channels"))},
                          f, default=lambda o: o.item() if hasattr(o, "item") else list(o))
            ha.clear_dl_model(model)
            common_args = ["--model", name, "--batch", str(bs), "--precision", prec,
                           "--steps", str(cfg.mem_steps), "--threads", str(cfg.threads)]
            hm = _child(["--side", "halcdl"] + common_args)
            tm = _child(["--side", "torch", "--spec", spec_file] + common_args)
            r = {"model": name, "batch": bs, "precision": prec, "halcdl": hm, "torch": tm}
            if "error" not in hm and "error" not in tm:
                r["ratio_step"] = hm["step_mb"] / tm["step_mb"] if tm["step_mb"] > 0 else None
                r["ratio_total"] = hm["total_mb"] / tm["total_mb"] if tm["total_mb"] > 0 \
                    else None
            LOG(f"  memory     {name:12s} bs{bs:<3d} {prec:8s} halcdl step "
                f"{fmt(hm.get('step_mb'), 0):>5s} MB (incl. model {fmt(hm.get('total_mb'), 0)})"
                f"  torch step {fmt(tm.get('step_mb'), 0):>5s} MB (incl. model "
                f"{fmt(tm.get('total_mb'), 0)})"
                + (f"  [halcdl: {hm['error']}]" if "error" in hm else "")
                + (f"  [torch: {tm['error']}]" if "error" in tm else ""))
            rows.append(r)
    return rows


class _StubCore:
    """The engine model with train_step / infer answering a cached result at once: timing
    the operators over it gives the Python layer alone."""

    def __init__(self, core, train_result, probs):
        self._core, self._train, self._probs = core, train_result, probs

    def __getattr__(self, k):
        return getattr(self._core, k)

    def train_step(self, *a, **k):
        return dict(self._train)

    def infer(self, *a, **k):
        return self._probs.copy()


def section_overhead(cfg, name="resnet18", bs=16):
    model = make_model(ha, name, bs)
    h, w = image_hw(model)
    c = int(ha.get_dl_model_param_s(model, "image_num_channels"))
    samples = make_samples(bs, h, w)
    core = model.core
    fns = {"api_train": lambda: ha.train_dl_model_batch(model, samples),
           "core_train": lambda: core.train_step(samples, bs, 1, h, w, c)}
    ts = interleaved(fns, cfg.warmup, cfg.overhead_repeats)
    fns = {"api_apply": lambda: ha.apply_dl_model(model, samples, []),
           "core_infer": lambda: core.infer(samples, bs, h, w, c)}
    ts.update(interleaved(fns, cfg.warmup, cfg.overhead_repeats * 2))

    # the Python layer alone
    train_result = core.train_step(samples, bs, 1, h, w, c)
    probs = core.infer(samples, bs, h, w, c)
    model.core = _StubCore(core, train_result, probs)
    try:
        n = cfg.stub_repeats
        ts["py_train"] = interleaved(
            {"x": lambda: ha.train_dl_model_batch(model, samples)}, 5, n)["x"]
        ts["py_apply"] = interleaved(
            {"x": lambda: ha.apply_dl_model(model, samples, [])}, 5, n)["x"]
    finally:
        model.core = core

    # input staging alone: checks + HWC->NCHW copy of every image, then 7736 at the last pixel
    bad = list(samples)
    img = samples[-1]["image"].copy()
    img[-1, -1, -1] = np.nan
    bad[-1] = {"image": img, "image_label_id": samples[-1]["image_label_id"]}

    def staging():
        try:
            core.train_step(bad, bs, 1, h, w, c)
        except ha.HOperatorError as err:
            assert err.error_code == 7736, err
        else:
            raise AssertionError("the NaN batch was accepted")
    ts["staging"] = interleaved({"x": staging}, 3, cfg.stub_repeats)["x"]
    ha.clear_dl_model(model)

    m = {k: med(v) for k, v in ts.items()}
    rows = []
    for call, api, eng, py in (("train_dl_model_batch", "api_train", "core_train", "py_train"),
                               ("apply_dl_model", "api_apply", "core_infer", "py_apply")):
        r = {"model": name, "batch": bs, "call": call, "api_ms": m[api] * 1e3,
             "engine_ms": m[eng] * 1e3, "diff_pct": 100 * (m[api] - m[eng]) / m[api],
             "python_ms": m[py] * 1e3, "python_pct": 100 * m[py] / m[api],
             "staging_ms": m["staging"] * 1e3, "staging_pct": 100 * m["staging"] / m[api],
             "spread": max(spread(ts[api]), spread(ts[eng]))}
        r["outside_pct"] = r["python_pct"] + r["staging_pct"]
        LOG(f"  overhead   {call:20s} api {r['api_ms']:7.1f} ms  engine call "
            f"{r['engine_ms']:7.1f} ms ({r['diff_pct']:+.1f} %)  python layer "
            f"{r['python_ms'] * 1e3:.0f} us ({r['python_pct']:.3f} %)  input staging "
            f"{r['staging_ms']:.2f} ms ({r['staging_pct']:.2f} %)")
        rows.append(r)
    return {"rows": rows, "times": ts}


# ---- report -----------------------------------------------------------------------------
def machine_info() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            if k.strip() == "Model name":
                info["cpu"] = v.strip()
            if k.strip() == "Flags":
                flags = v.split()
                info["bf16_isa"] = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    except OSError:
        pass
    return info


def core_mtime() -> str:
    so = sorted(__import__("glob").glob(os.path.join(common.ROOT, "python", "halcdl",
                                                     "_core*.so")))
    return (datetime.datetime.fromtimestamp(os.path.getmtime(so[0])).isoformat(
        timespec="seconds") if so else "installed package")


def build_info() -> str:
    """Which halcdl was measured: HEAD, uncommitted engine/Python changes, _core's mtime."""
    def git(*a):
        return subprocess.run(["git", "-C", common.ROOT, *a], capture_output=True,
                              text=True).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--", "csrc", "python")
    when = core_mtime()
    return f"{head}{' + uncommitted csrc/python changes' if dirty else ''}, _core built {when}"


def report(res) -> str:
    L = []
    a = res["args"]
    L.append(f"- command: `{res['command']}`")
    L.append(f"- date: {res['date']}; machine: {res['machine']['cpu']}, "
             f"{res['machine']['cores']} cores (bf16 ISA: "
             f"{', '.join(res['machine'].get('bf16_isa', [])) or 'none'}); threads "
             f"{a['threads']} for both; torch {res['torch']}, oneDNN {res['onednn']}")
    L.append(f"- halcdl: {res['build']}")
    if len(res.get("builds_seen", [])) > 1:
        L.append("- WARNING: _core was rebuilt during the run (builds of "
                 + ", ".join(res["builds_seen"]) + "); this process kept the first one, "
                 "the memory children loaded whichever was on disk: measure again")
    L.append(f"- load average (1/5/15 min): start {res['load']['start']}, end "
             f"{res['load']['end']}; per section: " + "; ".join(
                 f"{k} {v[0][0]}->{v[1][0]}" for k, v in res["load"]["sections"].items()))
    L.append(f"- timing: warmup {a['warmup']}, repeats {a['repeats']} (train), "
             f"{a['infer_repeats']} (inference), interleaved; medians; ratio = torch time / "
             f"halcdl time (> 1: halcdl faster); (best) = the same from the fastest calls; "
             f"spread = (max-min)/median of the noisier side; 'met' uses the median ratio")
    s = res["sections"]
    if "train_fp32" in s:
        L += ["", "**1. Training fp32** (train_dl_model_batch vs torch fp32 eager; target "
              f"≥ {TARGETS['train_fp32']}×)", "",
              "| model | batch | halcdl img/s | torch img/s | ratio | ratio (best) | met "
              "| spread |",
              "|---|---|---|---|---|---|---|---|"]
        for r in s["train_fp32"]:
            L.append(f"| {r['model']} | {r['batch']} | {r['halcdl_img_s']:.1f} | "
                     f"{r['torch_img_s']:.1f} | {r['ratio']:.2f} | {r['ratio_best']:.2f} | "
                     f"{met(r['ratio'], TARGETS['train_fp32'])} | {r['spread']:.0%} |")
    if "train_bf16" in s:
        L += ["", "**2. Training bf16** (halcdl 'precision' 'bfloat16' vs torch fp32, target "
              f"≥ {TARGETS['train_bf16_vs_fp32']}×, and vs torch bf16 autocast, target ≥ "
              f"{TARGETS['train_bf16_vs_autocast']}×)", "",
              "| model | batch | halcdl bf16 img/s | torch fp32 img/s | torch autocast img/s "
              "| vs fp32 (best) | met | vs autocast (best) | met | halcdl fp32 img/s "
              "| bf16 / fp32 halcdl | spread |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in s["train_bf16"]:
            L.append(f"| {r['model']} | {r['batch']} | {fmt(r.get('halcdl_bf16_img_s'))} | "
                     f"{r['torch_fp32_img_s']:.1f} | {r['torch_bf16_img_s']:.1f} | "
                     f"{fmt(r.get('ratio_vs_fp32'), 2)} ({fmt(r.get('ratio_vs_fp32_best'), 2)}) | "
                     f"{met(r.get('ratio_vs_fp32'), TARGETS['train_bf16_vs_fp32'])} | "
                     f"{fmt(r.get('ratio_vs_autocast'), 2)} "
                     f"({fmt(r.get('ratio_vs_autocast_best'), 2)}) | "
                     f"{met(r.get('ratio_vs_autocast'), TARGETS['train_bf16_vs_autocast'])} | "
                     f"{r['halcdl_fp32_img_s']:.1f} | {fmt(r.get('bf16_speedup'), 2)} | "
                     f"{r['spread']:.0%} |")
        errs = {r["error"] for r in s["train_bf16"] if r.get("error")}
        for e in errs:
            L.append(f"\nhalcdl bf16 not measured: {e}")
    if "infer" in s:
        L += ["", f"**3. Inference fp32** (apply_dl_model bs {INFER_BATCH} vs torch eval + "
              f"inference_mode; target ≥ {TARGETS['infer']}×)", "",
              "| model | batch | halcdl img/s | optimize_for_inference img/s | torch img/s "
              "| ratio (best) | ratio optimized (best) | met | spread |",
              "|---|---|---|---|---|---|---|---|---|"]
        for r in s["infer"]:
            best = max(r["ratio"], r.get("ratio_opt") or 0)
            L.append(f"| {r['model']} | {r['batch']} | {r['halcdl_img_s']:.1f} | "
                     f"{fmt(r.get('halcdl_opt_img_s'))} | {r['torch_img_s']:.1f} | "
                     f"{r['ratio']:.2f} ({r['ratio_best']:.2f}) | {fmt(r.get('ratio_opt'), 2)} "
                     f"({fmt(r.get('ratio_opt_best'), 2)}) | "
                     f"{met(best, TARGETS['infer'])} | {r['spread']:.0%} |")
        errs = {r["error"] for r in s["infer"] if r.get("error")}
        for e in errs:
            L.append(f"\noptimize_for_inference not measured: {e}")
    if "memory" in s:
        L += ["", f"**4. Peak memory of a train step** (MB; fresh process per library, "
              f"{a['mem_steps']} steps; step = peak RSS during the steps − RSS after imports, "
              "model, optimizer and input batch; incl. model = peak − RSS after imports; "
              "target: halcdl ≤ torch)", "",
              "| model | batch | precision | halcdl step | torch step | halcdl incl. model "
              "| torch incl. model | halcdl/torch (step) | halcdl/torch (incl. model) | met |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for r in s["memory"]:
            hm, tm = r["halcdl"], r["torch"]
            L.append(f"| {r['model']} | {r['batch']} | {r['precision']} | "
                     f"{fmt(hm.get('step_mb'), 0)} | {fmt(tm.get('step_mb'), 0)} | "
                     f"{fmt(hm.get('total_mb'), 0)} | {fmt(tm.get('total_mb'), 0)} | "
                     f"{fmt(r.get('ratio_step'), 2)} | {fmt(r.get('ratio_total'), 2)} | "
                     f"{met(r.get('ratio_total'), TARGETS['memory'], higher_better=False)} |")
        for r in s["memory"]:
            for side in ("halcdl", "torch"):
                if "error" in r[side]:
                    L.append(f"\n{side} {r['model']} {r['precision']}: {r[side]['error']}")
    if "overhead" in s:
        L += ["", "**5. Overhead outside the engine** (resnet18 bs 16 224×224; target ≤ "
              f"{TARGETS['overhead_pct']} % of the step)", "",
              "| call | operator ms | engine call ms | difference | Python layer µs (%) "
              "| input staging ms (%) | outside compute % | met |",
              "|---|---|---|---|---|---|---|---|"]
        for r in s["overhead"]["rows"]:
            L.append(f"| {r['call']} | {r['api_ms']:.1f} | {r['engine_ms']:.1f} | "
                     f"{r['diff_pct']:+.1f} % | {r['python_ms'] * 1e3:.0f} "
                     f"({r['python_pct']:.3f} %) | {r['staging_ms']:.2f} "
                     f"({r['staging_pct']:.2f} %) | {r['outside_pct']:.2f} | "
                     f"{met(r['outside_pct'], TARGETS['overhead_pct'], higher_better=False)} |")
        L.append("\nPython layer: the operator with the engine call stubbed out (argument "
                 "checks, lock, hyper-parameter push, result dicts). Input staging: the "
                 "engine's per-sample checks and the HWC→NCHW float32 copy with the NaN/Inf "
                 "check (inside the engine call). Difference: operator − engine call, both "
                 "measured in full (noisy: it is a small difference of two ~1 s medians).")
    return "\n".join(L)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="fewer repeats (warmup 1, repeats 3 instead of 2 and 9)")
    p.add_argument("--sections", default="1,2,3,4,5")
    p.add_argument("--models", help="only these models (comma-separated), in every section")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--json", help="write all results (incl. every timing) to this file")
    p.add_argument("--md", help="write the markdown report to this file")
    cfg = p.parse_args(argv)
    q = cfg.quick
    cfg.warmup = cfg.warmup if cfg.warmup is not None else (1 if q else 2)
    cfg.repeats = cfg.repeats or (3 if q else 9)
    cfg.infer_repeats = cfg.repeats * 2 + 1
    cfg.overhead_repeats = cfg.repeats
    cfg.stub_repeats = 30 if q else 100
    cfg.mem_steps = 2 if q else 3
    sections = {s.strip() for s in cfg.sections.split(",")}
    if cfg.models:
        keep = {m.strip() for m in cfg.models.split(",")}
        for lst in (TRAIN_FP32, TRAIN_BF16, INFER_MODELS):
            lst[:] = [x for x in lst if (x[0] if isinstance(x, tuple) else x) in keep]

    torch.set_num_threads(cfg.threads)
    ha.set_system("thread_num", cfg.threads)
    from halcdl._native import core as _core
    res = {"command": "python benchmarks/run_all.py " + " ".join(
               sys.argv[1:] if argv is None else argv),
           "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": machine_info(), "torch": torch.__version__,
           "onednn": ".".join(map(str, _core.dnnl_version())), "build": build_info(),
           "python": platform.python_version(),
           "args": {k: getattr(cfg, k) for k in ("threads", "warmup", "repeats",
                                                 "infer_repeats", "mem_steps", "quick")},
           "load": {"start": load_avg(), "sections": {}}, "sections": {}}
    LOG(f"{res['machine']['cpu']}, {res['machine']['cores']} cores, threads {cfg.threads}, "
        f"torch {res['torch']}, oneDNN {res['onednn']}, load {res['load']['start']}")
    t_start = time.time()
    builds = [core_mtime()]
    for key, num, fn in (("train_fp32", "1", section_train_fp32),
                         ("train_bf16", "2", section_train_bf16),
                         ("infer", "3", section_infer),
                         ("memory", "4", section_memory),
                         ("overhead", "5", section_overhead)):
        if num not in sections:
            continue
        l0, t0 = load_avg(), time.time()
        builds.append(core_mtime())
        res["sections"][key] = fn(cfg)
        res["load"]["sections"][key] = [l0, load_avg()]
        LOG(f"  ({key}: {time.time() - t0:.0f} s, load {l0[0]} -> {load_avg()[0]})")
    res["load"]["end"] = load_avg()
    builds.append(core_mtime())
    res["builds_seen"] = list(dict.fromkeys(builds))
    res["elapsed_s"] = time.time() - t_start
    text = report(res)
    print()
    print(text)
    print(f"\n(total {res['elapsed_s']:.0f} s)")
    for path, content in ((cfg.json, lambda f: json.dump(res, f, indent=1, default=str)),
                          (cfg.md, lambda f: f.write(text + "\n"))):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
            with open(path, "w") as f:
                content(f)
    return res


if __name__ == "__main__":
    main()

"""halcdl against what a user would pick instead on the CPU (issue 16).

    python benchmarks/bench_peers.py --quick                 # sanity: 3 models, few repeats
    python benchmarks/bench_peers.py --json out/peers.json   # full: the rows of docs/performance.md
    python benchmarks/bench_peers.py --sections peak,ops     # a subset

Sections (--threads threads everywhere, default 2):
  infer   apply_dl_model (float32) on every zoo classifier (batch 16, 224x224; alexnet at its
          fixed 224x224) and both segmentation models (batch 4, 256x256) against
          onnxruntime (CPUExecutionProvider, intra_op_num_threads = threads) and OpenVINO
          (CPU plugin, INFERENCE_PRECISION_HINT f32, PERFORMANCE_HINT LATENCY, static batch),
          both running halcdl's own ONNX export of the same model (write_dl_model(.onnx)).
          The peers' timed region is what a user writes: stack the HWC samples into NCHW, run,
          sort the confidences (classification) or argmax over the classes (segmentation).
          Networks with residual adds also get a `halcdl_no_sum_fusion` candidate (a plan
          built under HALCDL_NO_FUSE=sum): the before/after of that fusion in the same run.
          bfloat16 rows (halcdl precision 'bfloat16' vs OpenVINO's bf16 hint) are measured only
          where the CPU has bf16 instructions; elsewhere they are reported as not available.
  train   train_dl_model_batch against torch.compile (inductor) of the PyTorch twin, forward +
          cross-entropy + backward + SGD(momentum, weight_decay), resnet18 and mobilenet_v2 bs16
          (compiled in an untimed first call; --no-compile skips it); plus
          `halcdl_no_add_relu_fusion` and `halcdl_no_grad_share` (plans built under
          HALCDL_NO_FUSE=add_relu / grad_share): the before/after of the training add → relu
          fusion and of the add's gradients shared in place, with each plan's workspace bytes.
          --models picks among resnet18, mobilenet_v2.
  peak    the machine's fp32 convolution rate: a oneDNN forward convolution micro-benchmark
          (benchmarks/conv_peak.cpp, compiled here with g++ against the oneDNN halcdl uses).
  ops     the engine's per-op timer (HALCDL_OP_TIMER / halcdl._native core.set_op_timer) on
          resnet18 and mobilenet_v2: time per node type for apply and for a train step, and the
          fraction of the measured peak that resnet18's convolutions reach.

Timing as in run_all.py: candidates interleaved in one process (order reversed every round),
medians of the timed calls, ratios of medians (> 1: halcdl faster). Peers are optional
benchmark dependencies: `pip install halcdl[bench]` (onnxruntime, openvino); a missing one
turns its rows into "n/a", never an error.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import common  # noqa: F401  (sets sys.path)
from common import LR, MOMENTUM, WP, load_avg, make_samples

import numpy as np  # noqa: E402

import halcdl as ha  # noqa: E402

warnings.filterwarnings("ignore", category=ha.NotPretrainedWarning)

HERE = os.path.dirname(os.path.abspath(__file__))
CLASSIFIERS = ["compact", "enhanced", "resnet18", "resnet50", "mobilenet_v2", "alexnet"]
SEGMENTATION = ["segmentation_compact", "segmentation_enhanced"]
QUICK_INFER = ["compact", "resnet18", "mobilenet_v2", "segmentation_compact"]
TRAIN = [("resnet18", 16), ("mobilenet_v2", 16)]
LOG = print


def core_of(model):
    return model.core


def native():
    from halcdl import _native
    return _native.core


def interleaved(fns: dict, warmup: int, repeats: int) -> dict:
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


def med(ts):
    return statistics.median(ts)


def make(name: str, batch: int, precision: str | None = None, seed: int = 0):
    ha.set_system("seed_rand", seed)
    if name.startswith("segmentation_"):
        model = ha.read_dl_model(f"pretrained_dl_{name}.hdl")
        ha.set_dl_model_param(model, "image_dimensions", [256, 256, 3])
        ha.set_dl_model_param(model, "class_ids", [0, 1])
    else:
        model = ha.read_dl_model(common.FILES[name])
        if name != "alexnet":
            ha.set_dl_model_param(model, "image_dimensions", [224, 224, 3])
        ha.set_dl_model_param(model, "class_ids", list(range(common.CLASSES)))
    ha.set_dl_model_param(model, "batch_size", batch)
    ha.set_dl_model_param(model, "learning_rate", LR)
    ha.set_dl_model_param(model, "momentum", MOMENTUM)
    ha.set_dl_model_param(model, "weight_prior", WP)
    if precision and precision != "float32":
        ha.set_dl_model_param(model, "precision", precision)
    return model


def hw(model):
    return (int(ha.get_dl_model_param_s(model, "image_height")),
            int(ha.get_dl_model_param_s(model, "image_width")))


def nchw(samples):
    return np.ascontiguousarray(np.stack([s["image"] for s in samples]).transpose(0, 3, 1, 2))


def post(conf, segmentation):
    if segmentation:
        return conf.argmax(axis=1), conf.max(axis=1)
    ids = np.argsort(-conf, axis=1, kind="stable")
    return ids, np.take_along_axis(conf, ids, axis=1)


# ---- peers ------------------------------------------------------------------------------
def ort_fn(path, samples, threads, segmentation):
    try:
        import onnxruntime as ort
    except ImportError as e:
        return None, f"onnxruntime not installed ({e})"
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    def run():
        return post(sess.run(["confidences"], {"image": nchw(samples)})[0], segmentation)
    return run, None


def ov_fn(path, samples, threads, segmentation, precision="f32"):
    try:
        import openvino as ov
    except ImportError as e:
        return None, f"openvino not installed ({e})"
    core = ov.Core()
    if precision == "bf16":
        caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if "BF16" not in caps:
            return None, f"OpenVINO CPU plugin has no bf16 here (capabilities {list(caps)})"
    m = core.read_model(path)
    x = nchw(samples)
    m.reshape({"image": list(x.shape)})
    cm = core.compile_model(m, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                       "PERFORMANCE_HINT": "LATENCY",
                                       "INFERENCE_PRECISION_HINT": precision})
    req = cm.create_infer_request()

    def run():
        req.infer({0: nchw(samples)})
        return post(req.get_output_tensor(0).data.copy(), segmentation)
    return run, None


def section_infer(cfg):
    rows = []
    models = QUICK_INFER if cfg.quick else CLASSIFIERS + SEGMENTATION
    if cfg.models:
        models = [m for m in models if m in cfg.models.split(",")]
    tmp = tempfile.mkdtemp(prefix="halcdl_peers_")
    for name in models:
        seg = name.startswith("segmentation_")
        bs = 4 if seg else 16
        model = make(name, bs)
        samples = make_samples(bs, *hw(model))
        path = os.path.join(tmp, f"{name}.onnx")
        ha.write_dl_model(model, path)
        fns = {"halcdl": lambda: ha.apply_dl_model(model, samples, [])}
        unfused = None
        if cfg.before and any(n["op"] == "add" for n in model.spec):
            # before/after of the residual fusion in this run: a plan built without it
            os.environ["HALCDL_NO_FUSE"] = "sum"
            try:
                unfused = make(name, bs)
                ha.apply_dl_model(unfused, samples, [])   # builds its plan now
            finally:
                del os.environ["HALCDL_NO_FUSE"]
            fns["halcdl_no_sum_fusion"] = lambda: ha.apply_dl_model(unfused, samples, [])
        errs = {}
        for k, (fn, err) in {"onnxruntime": ort_fn(path, samples, cfg.threads, seg),
                             "openvino": ov_fn(path, samples, cfg.threads, seg)}.items():
            if fn is None:
                errs[k] = err
            else:
                fns[k] = fn
        # agreement: the peers' top class / per-pixel class equals halcdl's
        res = ha.apply_dl_model(model, samples, [])
        agree = {}
        for k in ("onnxruntime", "openvino"):
            if k in fns:
                ids = fns[k]()[0]
                if seg:
                    mine = np.stack([np.asarray(r["segmentation_image"]).reshape(ids.shape[1:])
                                     for r in res])
                    agree[k] = float((mine == ids).mean())
                else:
                    mine = np.array([r["classification_class_ids"][0] for r in res])
                    agree[k] = float((mine == ids[:, 0]).mean())
        ts = interleaved(fns, cfg.warmup, cfg.repeats)
        r = {"model": name, "batch": bs, "precision": "float32", "times": ts, "errors": errs,
             "agreement": agree, "img_s": {k: bs / med(v) for k, v in ts.items()}}
        r["ratio"] = {k: med(ts[k]) / med(ts["halcdl"]) for k in ts if k != "halcdl"}
        peers = [v for k, v in r["ratio"].items() if k in ("onnxruntime", "openvino")]
        r["ratio_vs_best"] = min(peers) if peers else None
        if "halcdl_no_sum_fusion" in ts:
            r["fusion_speedup"] = r["ratio"].pop("halcdl_no_sum_fusion")
        LOG(f"  infer f32 {name:22s} bs{bs:<3d} " + "  ".join(
            f"{k} {v:6.1f} img/s" for k, v in r["img_s"].items()) + "  ratios " + "  ".join(
            f"{k} {v:.2f}" for k, v in r["ratio"].items())
            + (f"  sum fusion x{r['fusion_speedup']:.2f}" if "fusion_speedup" in r else "")
            + f"  agree {agree}"
            + (f"  [{errs}]" if errs else ""))
        rows.append(r)
        # bfloat16 against OpenVINO's bf16
        bf = {"model": name, "batch": bs, "precision": "bfloat16"}
        if not native().bf16_supported():
            bf["error"] = "not available: this CPU has no bfloat16 instructions (AVX512-BF16/AMX)"
        else:
            mb = make(name, bs, precision="bfloat16")
            ovb, err = ov_fn(path, samples, cfg.threads, seg, precision="bf16")
            if ovb is None:
                bf["error"] = err
            else:
                tb = interleaved({"halcdl": lambda: ha.apply_dl_model(mb, samples, []),
                                  "openvino": ovb}, cfg.warmup, cfg.repeats)
                bf["times"] = tb
                bf["ratio"] = {"openvino": med(tb["openvino"]) / med(tb["halcdl"])}
            ha.clear_dl_model(mb)
        LOG(f"  infer bf16 {name:21s} " + (f"ratio vs openvino {bf['ratio']['openvino']:.2f}"
                                           if "ratio" in bf else bf["error"]))
        rows.append(bf)
        ha.clear_dl_model(model)
        if unfused is not None:
            ha.clear_dl_model(unfused)
    return rows


def section_train(cfg):
    import torch
    import torch.nn.functional as F
    from torch_twin import from_model, images_to_nchw
    rows = []
    todo = TRAIN[:1] if cfg.quick else TRAIN
    if cfg.models:
        todo = [t for t in TRAIN if t[0] in cfg.models.split(",")]
    for name, bs in todo:
        model = make(name, bs)
        samples = make_samples(bs, *hw(model))
        twin = from_model(model)
        labels = torch.tensor([s["image_label_id"] for s in samples])
        opt = torch.optim.SGD([p for _, _, p in twin.named_trainable()], lr=LR,
                              momentum=MOMENTUM, weight_decay=WP)
        err = None
        if not cfg.compile:
            compiled, err = None, "torch.compile skipped (--no-compile)"
        else:
            try:
                compiled = torch.compile(twin)
            except Exception as e:  # noqa: BLE001  (reported, not hidden)
                compiled, err = None, f"{type(e).__name__}: {e}"

        def t_step():
            twin.train()
            x = images_to_nchw(samples)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(compiled(x), labels)
            loss.backward()
            opt.step()
            return loss.item()
        t0 = time.perf_counter()
        if compiled is not None:
            try:
                t_step()                                 # compile outside the timing
            except Exception as e:  # noqa: BLE001
                err = f"{type(e).__name__}: {str(e)[:300]}"
        compile_s = time.perf_counter() - t0
        fns = {"halcdl": lambda: ha.train_dl_model_batch(model, samples)}
        befores = {}  # candidate -> model whose plans were built without one fusion
        if cfg.before and any(n["op"] == "add" for n in model.spec):
            # before/after of the training add → relu fusion and of the gradients shared in
            # place through the adds (no copies in the add backward), in this run
            for cand, what in (("halcdl_no_add_relu_fusion", "add_relu"),
                               ("halcdl_no_grad_share", "grad_share")):
                os.environ["HALCDL_NO_FUSE"] = what
                try:
                    befores[cand] = make(name, bs)
                    ha.train_dl_model_batch(befores[cand], samples)  # builds its plan now
                finally:
                    del os.environ["HALCDL_NO_FUSE"]
                fns[cand] = (lambda m: lambda: ha.train_dl_model_batch(m, samples))(befores[cand])
        if err is None:
            fns["torch_compile"] = t_step
        ts = interleaved(fns, cfg.warmup, cfg.train_repeats)
        r = {"model": name, "batch": bs, "times": ts, "error": err,
             "compile_s": compile_s, "img_s": {k: bs / med(v) for k, v in ts.items()}}
        if "torch_compile" in ts:
            r["ratio"] = med(ts["torch_compile"]) / med(ts["halcdl"])
        if befores:
            r["fusion_speedup"] = med(ts["halcdl_no_add_relu_fusion"]) / med(ts["halcdl"])
            r["grad_share_speedup"] = med(ts["halcdl_no_grad_share"]) / med(ts["halcdl"])
            r["plan_bytes"] = {"halcdl": core_of(model).cpu_plan_bytes(),
                               **{k: core_of(m).cpu_plan_bytes() for k, m in befores.items()}}
            for m in befores.values():
                ha.clear_dl_model(m)
        LOG(f"  train {name:12s} bs{bs:<3d} " + "  ".join(
            f"{k} {v:6.1f} img/s" for k, v in r["img_s"].items())
            + (f"  ratio {r['ratio']:.2f}  (compile {compile_s:.0f} s)" if "ratio" in r
               else f"  [{err}]")
            + (f"  add+relu fusion x{r['fusion_speedup']:.2f}" if "fusion_speedup" in r else "")
            + (f"  grad share x{r['grad_share_speedup']:.2f}, plan MB "
               + ", ".join(f"{k} {v / 2**20:.0f}" for k, v in r["plan_bytes"].items())
               if "grad_share_speedup" in r else ""))
        rows.append(r)
        ha.clear_dl_model(model)
    return rows


# ---- peak -------------------------------------------------------------------------------
def dnnl_paths():
    """(include dir, lib dir) of the oneDNN package halcdl builds against."""
    from importlib import metadata
    files = metadata.files("onednn-devel-cpu-gomp") or []
    inc = lib = None
    for f in files:
        p = str(f.locate())
        if p.endswith(os.path.join("include", "dnnl.hpp")):
            inc = os.path.dirname(os.path.abspath(p))
    libs = metadata.files("onednn-cpu-gomp") or []
    for f in list(libs) + list(files):
        p = str(f.locate())
        if "libdnnl.so" in os.path.basename(p):
            lib = os.path.dirname(os.path.abspath(p))
    return inc, lib


def section_peak(cfg):
    inc, lib = dnnl_paths()
    if not inc or not lib:
        return [{"error": f"oneDNN headers/library not found (include {inc}, lib {lib})"}]
    exe = os.path.join(tempfile.mkdtemp(prefix="halcdl_peak_"), "conv_peak")
    cmd = ["g++", "-O2", "-std=c++17", os.path.join(HERE, "conv_peak.cpp"), f"-I{inc}",
           f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}", "-fopenmp", "-o", exe]
    subprocess.run(cmd, check=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg.threads))
    reps = "5" if cfg.quick else "15"
    out = subprocess.run([exe, reps], check=True, capture_output=True, text=True, env=env).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    for r in rows:
        LOG(f"  peak {r['name']:34s} {r['gflops']:7.1f} GFLOP/s  (median of {r['reps']}, "
            f"impl {r['impl']})")
    return rows


# ---- per-op timer -----------------------------------------------------------------------
def conv_flops(model, bs):
    """Forward FLOPs (2 per multiply-add) of every convolution of the model at batch bs, from
    its spec and the engine's node shapes, and those of the first one (its backward computes
    no data gradient)."""
    h, w = hw(model)
    shapes = model.core.node_shapes(h, w)
    tot = []
    for n in model.spec:
        if n["op"] != "conv":
            continue
        k = n.get("kernel", 1)
        kh, kw = (k, k) if isinstance(k, int) else (k[0], k[-1])
        cin = shapes[n["inputs"][0]][1]
        out = shapes[n["name"]]
        tot.append(2 * bs * out[1] * out[2] * out[3] * cin // n.get("groups", 1) * kh * kw)
    return sum(tot), tot[0]


def section_ops(cfg, peak):
    core = native()
    rows = []
    reps = 3 if cfg.quick else 10
    for name in cfg.ops_models.split(","):
        bs = 4 if name.startswith("segmentation_") else 16
        model = make(name, bs)
        samples = make_samples(bs, *hw(model))
        ha.apply_dl_model(model, samples, [])
        ha.train_dl_model_batch(model, samples)
        core.reset_op_times()
        core.set_op_timer(True)
        try:
            for _ in range(reps):
                ha.apply_dl_model(model, samples, [])
                ha.train_dl_model_batch(model, samples)
        finally:
            core.set_op_timer(False)
        t = {k: (s / reps, c // reps) for k, (s, c) in core.op_times().items()}
        core.reset_op_times()
        r = {"model": name, "batch": bs, "per_call": t}
        for ph in ("infer", "train_fwd", "train_bwd"):
            tot = sum(s for k, (s, _) in t.items() if k.startswith(ph + ":"))
            LOG(f"  ops {name} {ph}: {tot * 1e3:.1f} ms per call")
            for k, (s, c) in sorted(t.items(), key=lambda kv: -kv[1][0]):
                if k.startswith(ph + ":") and s > 0.01 * tot:
                    LOG(f"      {k.split(':', 1)[1]:28s} {s * 1e3:8.2f} ms  {s / tot:5.1%}  "
                        f"({c} nodes)")
        fl, f0 = conv_flops(model, bs)
        conv = lambda ph: sum(s for k, (s, _) in t.items()  # noqa: E731
                              if k.startswith(ph + ":conv"))
        r["conv_gflop"] = fl / 1e9
        r["infer_conv_gflops"] = fl / conv("infer") / 1e9
        r["train_conv_gflops"] = (3 * fl - f0) / (conv("train_fwd") + conv("train_bwd")) / 1e9
        if peak:
            r["infer_conv_peak_frac"] = r["infer_conv_gflops"] / peak
            r["train_conv_peak_frac"] = r["train_conv_gflops"] / peak
        LOG(f"  ops {name}: convolutions {r['infer_conv_gflops']:.1f} GFLOP/s in apply, "
            f"{r['train_conv_gflops']:.1f} GFLOP/s in training"
            + (f" = {r['infer_conv_peak_frac']:.0%} / {r['train_conv_peak_frac']:.0%} of the "
               f"measured peak {peak:.1f}" if peak else ""))
        rows.append(r)
        ha.clear_dl_model(model)
    return rows


def machine():
    info = {"load_avg": load_avg()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("Model name", "CPU(s)", "Flags"):
                info[k.strip()] = v.strip()
    except OSError:
        pass
    flags = info.pop("Flags", "").split()
    info["isa"] = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    info["onednn"] = ".".join(map(str, native().dnnl_version()))
    return info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sections", default="infer,train,peak,ops")
    p.add_argument("--models")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--json")
    p.add_argument("--ops-models", default="resnet18,mobilenet_v2")
    p.add_argument("--no-before", dest="before", action="store_false",
                   help="skip the before/after candidates (HALCDL_NO_FUSE=sum, add_relu, grad_share)")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="train: skip the torch.compile row (halcdl and its before/after only)")
    cfg = p.parse_args(argv)
    cfg.warmup = cfg.warmup if cfg.warmup is not None else (1 if cfg.quick else 3)
    cfg.repeats = cfg.repeats or (4 if cfg.quick else 15)
    cfg.train_repeats = max(3, cfg.repeats // 2 if cfg.quick else cfg.repeats)
    ha.set_system("thread_num", cfg.threads)
    try:
        import torch
        torch.set_num_threads(cfg.threads)
    except ImportError:
        pass
    res = {"machine": machine(), "config": vars(cfg)}
    LOG(f"machine: {res['machine']}")
    secs = cfg.sections.split(",")
    peak = None
    if "peak" in secs or "ops" in secs:
        res["peak"] = section_peak(cfg)
        ok = [r["gflops"] for r in res["peak"] if "gflops" in r]
        peak = max(ok) if ok else None
    if "infer" in secs:
        res["infer"] = section_infer(cfg)
    if "train" in secs:
        res["train"] = section_train(cfg)
    if "ops" in secs:
        res["ops"] = section_ops(cfg, peak)
    res["machine"]["load_avg_end"] = load_avg()
    if cfg.json:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.json)), exist_ok=True)
        with open(cfg.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

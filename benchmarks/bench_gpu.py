"""halcdl on the GPU vs PyTorch eager (cuDNN) in one run.

    python benchmarks/bench_gpu.py                               # every section (~3 min, H200)
    python benchmarks/bench_gpu.py --quick                       # fewer repeats (~1.5 min)
    python benchmarks/bench_gpu.py --json out/gpu.json --md out/gpu.md
    python benchmarks/bench_gpu.py --sections train --models resnet50 --batches 128

Rows: resnet18 and resnet50 (the zoo files, benchmarks/common.py: make_model) at 224x224,
10 classes, batch 32 and 128; fp32 with TF32 allowed on both sides. Sections (run in the
order train, infer, det, bf16):
  train   one training step: halcdl train_dl_model_batch (SGD lr 1e-3, momentum 0.9,
          weight_prior 1e-4) vs torch forward + cross-entropy + backward +
          SGD(momentum 0.9, weight_decay 1e-4). Candidates, interleaved in one process:
            halcdl        numpy samples (the engine stages them and copies them up)
            halcdl_cupy   samples whose 'image' is a CuPy array (assembled on the device)
            torch         the same numpy samples: np.stack -> .to('cuda') -> NHWC viewed as
                          NCHW (channels_last, no copy), labels to the GPU, step, loss.item()
            torch_dev     an input tensor already resident on the GPU (channels_last)
          headline ratio halcdl/torch (img/s; target >= 1.0), and halcdl_cupy/torch_dev.
  det     the cost of set_system('cudnn_deterministic', 'true'): two halcdl models of the
          same architecture and seed, one trained with 'false' and one with 'true'
          (set_system right before each call; each model keeps its own option, so no plan
          is rebuilt between the interleaved calls). Ratio true/false (img/s).
  infer   apply_dl_model (host results) vs torch eval() + no_grad forward + softmax + sort,
          results to the host; plus halcdl with CuPy input, halcdl with CuPy input and
          set_dl_model_param(model, 'gpu_outputs', 'true') (CuPy results), and torch with a
          resident input and results left on the GPU.
  bf16    halcdl precision 'bfloat16' vs torch.autocast('cuda', bfloat16), one training step
          (halcdl_bf16 vs torch_autocast, same SGD as train; target >= 1.2) and inference
          (halcdl_bf16_apply: apply_dl_model, host results, vs torch_autocast_apply: eval() +
          no_grad + autocast forward, softmax + sort, results to the host; target >= 1.2);
          measured only when get_dl_device_param(gpu, 'precisions') lists 'bfloat16' (compute
          capability >= 8.0), else reported as 'not implemented'.
The CuPy-vs-numpy input table is derived from the train and infer rows.

halcdl runs on GPU 0 (set_dl_model_param(model, 'device', handle) with the handle from
query_available_dl_devices(['runtime'], ['gpu'])), after set_system('tf32', 'true') and
set_system('cudnn_deterministic', 'false'). torch: cudnn.benchmark = True,
cudnn.allow_tf32 = cuda.matmul.allow_tf32 = True, model and inputs channels_last; the model
is tests/torch_twin.py's twin of the halcdl graph (halcdl's initial weights), or
torchvision's resnet with --torch-model torchvision.

Timing: every call is bracketed by torch.cuda.synchronize() (cudaDeviceSynchronize: every
stream of the device, halcdl's own and CuPy's included) and timed with the host clock. Per
row the first call of each candidate is untimed (plan building, cuDNN autotuning), then
`warmup` more untimed rounds, then `repeats` timed rounds in alternating order (A B C D,
D C B A, ...), cut short after --row-seconds (at least 3 rounds). Reported: medians as
images/s and ratios of medians; spread = (max - min) / median of the noisiest candidate.
Measured, never asserted.

--json / --md are rewritten after every row, so a run killed by a time box keeps what it
measured; --deadline SECONDS skips (and records) the rows that would start after it.

Fail-soft: a candidate that raises (HOperatorError or anything else) is dropped from its row
with the error printed and recorded; a row that raises is recorded as failed; the run
continues. Exit status: 0 when at least one halcdl row was measured, 1 when nothing ran,
2 when there is no GPU (halcdl reports none; the reason is printed).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import warnings

import common  # noqa: F401  (sets sys.path: tests/ for torch_twin, an in-place build)
from common import CLASSES, LR, MOMENTUM, SIZE, WP, make_model, make_samples

import numpy as np  # noqa: E402

import halcdl as ha  # noqa: E402

warnings.filterwarnings("ignore", category=ha.NotPretrainedWarning)  # random weights: fine

MODELS = ["resnet18", "resnet50"]
BATCHES = [32, 128]
TARGET = 1.0          # halcdl / torch img/s, fp32 training
MIN_ROUNDS = 3

LOG = print
torch = None          # the torch module when torch has CUDA, else None
cupy = None           # the cupy module when importable, else None
GPU = None            # halcdl's DLDevice of GPU 0
TDEV = "cuda:0"       # torch's name of that GPU
DEADLINE = None       # time.perf_counter() after which rows are skipped (--deadline)
FLUSH = lambda: None  # noqa: E731  (writes the report so far; set by main)
MADE = []             # the halcdl models of the current row (cleared after it)


# ---- set-up ----------------------------------------------------------------------------
def describe(err: BaseException) -> str:
    """One line for the report: HOperatorError's text carries its HALCON number."""
    text = " ".join(str(err).split())
    if len(text) > 400:
        text = text[:400] + " ..."
    return f"{type(err).__name__}: {text}"


def report_error(where: str, err: BaseException) -> str:
    d = describe(err)
    LOG(f"    {where}: FAILED {d}")
    if not isinstance(err, ha.HOperatorError):
        tb = traceback.format_exception(type(err), err, err.__traceback__)
        LOG("      " + "".join(tb[-3:]).rstrip().replace("\n", "\n      "))
    return d


def find_gpu():
    """(halcdl GPU 0 handle, None) or (None, why there is none)."""
    try:
        devs = ha.query_available_dl_devices(["runtime"], ["gpu"])
    except Exception as err:  # noqa: BLE001
        return None, describe(err)
    if devs:
        return devs[0], None
    try:  # ask for the HALCON error that says why (7742 / 7709 / 7717 / 7718 / 7708)
        from halcdl import _gpu
        _gpu.require_gpu(0)
    except Exception as err:  # noqa: BLE001
        return None, describe(err)
    return None, "query_available_dl_devices(['runtime'], ['gpu']) is empty"


def load_torch():
    """(torch module or None, note)."""
    try:
        import torch as t
    except Exception as err:  # noqa: BLE001
        return None, f"torch not importable ({describe(err)})"
    if not t.cuda.is_available():
        return None, f"torch {t.__version__} sees no CUDA device (torch.version.cuda = " \
                     f"{t.version.cuda})"
    return t, f"torch {t.__version__}"


def setup_torch():
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.deterministic = False
    with warnings.catch_warnings():       # torch >= 2.9 suggests its fp32_precision API
        warnings.simplefilter("ignore")
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = True


def sync():
    if torch is not None:
        torch.cuda.synchronize()
    elif cupy is not None:
        cupy.cuda.Device(GPU.id).synchronize()


def new_model(name, bs):
    """make_model (benchmarks/common.py), cleared by run_row after the row."""
    model = make_model(ha, name, bs)
    MADE.append(model)
    return model


def place(model):
    ha.set_dl_model_param(model, "device", GPU)
    return model


def image_hw(model):
    return (int(ha.get_dl_model_param_s(model, "image_height")),
            int(ha.get_dl_model_param_s(model, "image_width")))


def cupy_samples(samples):
    with cupy.cuda.Device(GPU.id):
        out = [{"image": cupy.asarray(s["image"]), "image_label_id": s["image_label_id"]}
               for s in samples]
        cupy.cuda.Device(GPU.id).synchronize()
    return out


def torch_net(model, name, cfg, train: bool):
    """The torch model on the GPU, channels_last: the twin of the halcdl graph (its current
    weights; call before placing the halcdl model) or torchvision's resnet."""
    if cfg.torch_model == "torchvision":
        import torchvision
        net = getattr(torchvision.models, name)(num_classes=CLASSES)
        params = list(net.parameters())
    else:
        from torch_twin import from_model
        net = from_model(model)
        params = [p for _, _, p in net.named_trainable()]
    net = net.to(device=TDEV, memory_format=torch.channels_last)
    net.train(train)
    return net, params


def host_to_gpu(samples):
    """What a channels_last torch user writes: one NHWC stack, one copy, an NCHW view."""
    x = torch.from_numpy(np.stack([s["image"] for s in samples]))
    return x.to(TDEV).permute(0, 3, 1, 2)


def labels_of(samples):
    return [int(s["image_label_id"]) for s in samples]


# ---- timing ----------------------------------------------------------------------------
def timed(fn) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def interleaved(cands: dict, cfg):
    """({name: [seconds]}, {name: error}) over the candidates that did not raise."""
    errors, live = {}, []
    for k, fn in cands.items():          # first call untimed: plans, autotuning
        try:
            timed(fn)
            live.append(k)
        except Exception as err:  # noqa: BLE001
            errors[k] = report_error(k, err)
    times = {k: [] for k in live}
    dead = set()
    t_end = None
    for r in range(cfg.warmup + cfg.repeats):
        if r == cfg.warmup:
            t_end = time.perf_counter() + cfg.row_seconds
        keys = live if r % 2 == 0 else live[::-1]
        for k in keys:
            if k in dead:
                continue
            try:
                t = timed(cands[k])
            except Exception as err:  # noqa: BLE001
                errors[k] = report_error(k, err)
                dead.add(k)
                continue
            if r >= cfg.warmup:
                times[k].append(t)
        done = r + 1 - cfg.warmup
        if done >= 1 and past_deadline():
            break
        if t_end is not None and time.perf_counter() > t_end and done >= MIN_ROUNDS:
            break
    return {k: v for k, v in times.items() if v and k not in dead}, errors


def med(ts):
    return statistics.median(ts)


def img_s(ts, k, bs):
    return bs / med(ts[k]) if k in ts else None


def speed_ratio(ts, fast, ref):
    """img/s of `fast` over img/s of `ref` (> 1: `fast` is faster)."""
    return med(ts[ref]) / med(ts[fast]) if fast in ts and ref in ts else None


def spread(ts):
    vals = [(max(v) - min(v)) / med(v) for v in ts.values() if v]
    return max(vals) if vals else None


def fmt(x, nd=1):
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "n/a"
    return f"{x:.{nd}f}"


def pct(x):
    return "n/a" if x is None else f"{x:.0%}"


def cleanup(*models):
    for m in models:
        if m is not None:
            try:
                ha.clear_dl_model(m)
            except Exception:  # noqa: BLE001
                pass
    gc.collect()
    try:
        if torch is not None:
            torch.cuda.empty_cache()
        if cupy is not None:
            cupy.get_default_memory_pool().free_all_blocks()
    except Exception:  # noqa: BLE001  (a broken context: the next row reports it)
        pass


def rows_of(cfg, batches=None):
    return [(m, b) for m in cfg.models for b in (batches or cfg.batches)]


def past_deadline() -> bool:
    return DEADLINE is not None and time.perf_counter() > DEADLINE


def run_row(section, name, bs, fn, rows):
    """Append fn()'s row to `rows` (an exception: a failed row; past --deadline: a skipped
    row), then write the report so far."""
    if past_deadline():
        LOG(f"  {section} {name} bs{bs}: skipped (--deadline reached)")
        rows.append({"model": name, "batch": bs, "error": "skipped: --deadline reached"})
    else:
        try:
            rows.append(fn())
        except Exception as err:  # noqa: BLE001
            d = report_error(f"{section} {name} bs{bs}", err)
            rows.append({"model": name, "batch": bs, "error": d})
    cleanup(*MADE)
    MADE.clear()
    FLUSH()


# ---- sections ----------------------------------------------------------------------------
def train_fns(net, params, samples, autocast_bf16=False):
    """(host-input step, resident-input step) for torch."""
    F = torch.nn.functional
    opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WP)
    dev = TDEV
    x_dev = host_to_gpu(samples).clone(memory_format=torch.channels_last)
    y_dev = torch.tensor(labels_of(samples), device=dev)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        if autocast_bf16:
            with torch.autocast(torch.device(TDEV).type, dtype=torch.bfloat16):
                loss = F.cross_entropy(net(x), y)
        else:
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    def host():
        return step(host_to_gpu(samples), torch.tensor(labels_of(samples)).to(dev))

    return host, (lambda: step(x_dev, y_dev))


def section_train(cfg, rows):
    for name, bs in rows_of(cfg):
        def row(name=name, bs=bs):
            model = new_model(name, bs)
            samples = make_samples(bs, *image_hw(model))
            cands = {}
            net = None
            if torch is not None:
                net, params = torch_net(model, name, cfg, train=True)
                t_host, t_dev = train_fns(net, params, samples)
            place(model)
            cands["halcdl"] = lambda: ha.train_dl_model_batch(model, samples)
            if cupy is not None:
                s_cp = cupy_samples(samples)
                cands["halcdl_cupy"] = lambda: ha.train_dl_model_batch(model, s_cp)
            if torch is not None:
                cands["torch"] = t_host
                cands["torch_dev"] = t_dev
            ts, errs = interleaved(cands, cfg)
            r = {"model": name, "batch": bs, "times": ts, "errors": errs,
                 "img_s": {k: img_s(ts, k, bs) for k in ts},
                 "ratio": speed_ratio(ts, "halcdl", "torch"),
                 "ratio_dev": speed_ratio(ts, "halcdl_cupy", "torch_dev"),
                 "cupy_vs_numpy": speed_ratio(ts, "halcdl_cupy", "halcdl"),
                 "spread": spread(ts)}
            i = r["img_s"]
            LOG(f"  train {name:9s} bs{bs:<4d} halcdl {fmt(i.get('halcdl')):>7s} img/s  torch "
                f"{fmt(i.get('torch')):>7s}  ratio {fmt(r['ratio'], 2)}  | CuPy in "
                f"{fmt(i.get('halcdl_cupy')):>7s}  torch resident {fmt(i.get('torch_dev')):>7s}"
                f"  ratio {fmt(r['ratio_dev'], 2)}  (spread {pct(r['spread'])})")
            return r
        run_row("train", name, bs, row, rows)


def section_det(cfg, rows):
    for name, bs in rows_of(cfg, cfg.det_batches):
        def row(name=name, bs=bs):
            models = []
            try:
                for _ in range(2):       # same seed: same weights
                    models.append(place(new_model(name, bs)))
                samples = make_samples(bs, *image_hw(models[0]))

                def call(model, flag):
                    def f():
                        ha.set_system("cudnn_deterministic", flag)
                        return ha.train_dl_model_batch(model, samples)
                    return f
                ts, errs = interleaved({"nondeterministic": call(models[0], "false"),
                                        "deterministic": call(models[1], "true")}, cfg)
            finally:
                ha.set_system("cudnn_deterministic", "false")
                cleanup(*models)
            r = {"model": name, "batch": bs, "times": ts, "errors": errs,
                 "img_s": {k: img_s(ts, k, bs) for k in ts},
                 "ratio": speed_ratio(ts, "deterministic", "nondeterministic"),
                 "spread": spread(ts)}
            LOG(f"  det   {name:9s} bs{bs:<4d} cudnn_deterministic false "
                f"{fmt(r['img_s'].get('nondeterministic')):>7s} img/s  true "
                f"{fmt(r['img_s'].get('deterministic')):>7s}  true/false {fmt(r['ratio'], 2)}"
                f"  (spread {pct(r['spread'])})")
            return r
        run_row("det", name, bs, row, rows)


def section_infer(cfg, rows):
    for name, bs in rows_of(cfg):
        def row(name=name, bs=bs):
            model = new_model(name, bs)
            samples = make_samples(bs, *image_hw(model))
            cands = {}
            net = None
            if torch is not None:
                net, _ = torch_net(model, name, cfg, train=False)
                x_dev = host_to_gpu(samples).clone(memory_format=torch.channels_last)

                def t_apply(x_fn, to_host):
                    def f():
                        with torch.no_grad():
                            probs = torch.softmax(net(x_fn()), dim=1)
                            conf, ids = probs.sort(dim=1, descending=True)
                            if to_host:
                                return ids.cpu().numpy(), conf.cpu().numpy()
                            return ids, conf
                    return f
            place(model)
            out_model = None
            cands["halcdl"] = lambda: ha.apply_dl_model(model, samples, [])
            if cupy is not None:
                s_cp = cupy_samples(samples)
                cands["halcdl_cupy"] = lambda: ha.apply_dl_model(model, s_cp, [])
                try:
                    out_model = place(new_model(name, bs))
                    ha.set_dl_model_param(out_model, "gpu_outputs", "true")
                    cands["halcdl_gpu_out"] = lambda: ha.apply_dl_model(out_model, s_cp, [])
                except Exception as err:  # noqa: BLE001
                    report_error("halcdl_gpu_out", err)
            if torch is not None:
                cands["torch"] = t_apply(lambda: host_to_gpu(samples), True)
                cands["torch_dev"] = t_apply(lambda: x_dev, False)
            ts, errs = interleaved(cands, cfg)
            r = {"model": name, "batch": bs, "times": ts, "errors": errs,
                 "img_s": {k: img_s(ts, k, bs) for k in ts},
                 "ratio": speed_ratio(ts, "halcdl", "torch"),
                 "ratio_dev": speed_ratio(ts, "halcdl_gpu_out", "torch_dev"),
                 "cupy_vs_numpy": speed_ratio(ts, "halcdl_cupy", "halcdl"),
                 "spread": spread(ts)}
            i = r["img_s"]
            LOG(f"  infer {name:9s} bs{bs:<4d} halcdl {fmt(i.get('halcdl')):>7s} img/s  torch "
                f"{fmt(i.get('torch')):>7s}  ratio {fmt(r['ratio'], 2)}  | CuPy in "
                f"{fmt(i.get('halcdl_cupy')):>7s}  CuPy in+out {fmt(i.get('halcdl_gpu_out')):>7s}"
                f"  torch resident {fmt(i.get('torch_dev')):>7s}  ratio {fmt(r['ratio_dev'], 2)}"
                f"  (spread {pct(r['spread'])})")
            return r
        run_row("infer", name, bs, row, rows)


def section_bf16(cfg, rows, precisions):
    if "bfloat16" not in precisions:
        LOG(f"  bf16: not implemented (get_dl_device_param(gpu, 'precisions') = {precisions})")
        rows += [{"model": n, "batch": b, "status": "not implemented"} for n, b in rows_of(cfg)]
        return
    for name, bs in rows_of(cfg):
        def row(name=name, bs=bs):
            model = new_model(name, bs)
            samples = make_samples(bs, *image_hw(model))
            cands = {}
            net = None
            if torch is not None:
                net, params = torch_net(model, name, cfg, train=True)
                t_host, _ = train_fns(net, params, samples, autocast_bf16=True)

                def t_apply():
                    # the train candidate's module in eval mode for this call only
                    was = net.training
                    net.eval()
                    try:
                        with torch.no_grad(), torch.autocast(torch.device(TDEV).type, dtype=torch.bfloat16):
                            probs = torch.softmax(net(host_to_gpu(samples)).float(), dim=1)
                        conf, ids = probs.sort(dim=1, descending=True)
                        return ids.cpu().numpy(), conf.cpu().numpy()
                    finally:
                        net.train(was)
            place(model)
            ha.set_dl_model_param(model, "precision", "bfloat16")
            cands["halcdl_bf16"] = lambda: ha.train_dl_model_batch(model, samples)
            cands["halcdl_bf16_apply"] = lambda: ha.apply_dl_model(model, samples, [])
            if torch is not None:
                cands["torch_autocast"] = t_host
                cands["torch_autocast_apply"] = t_apply
            ts, errs = interleaved(cands, cfg)
            r = {"model": name, "batch": bs, "times": ts, "errors": errs, "status": "measured",
                 "img_s": {k: img_s(ts, k, bs) for k in ts},
                 "ratio": speed_ratio(ts, "halcdl_bf16", "torch_autocast"),
                 "ratio_infer": speed_ratio(ts, "halcdl_bf16_apply", "torch_autocast_apply"),
                 "spread": spread(ts)}
            i = r["img_s"]
            LOG(f"  bf16  {name:9s} bs{bs:<4d} train halcdl {fmt(i.get('halcdl_bf16')):>7s} "
                f"img/s  torch autocast {fmt(i.get('torch_autocast')):>7s}  ratio "
                f"{fmt(r['ratio'], 2)}  | infer halcdl {fmt(i.get('halcdl_bf16_apply')):>7s}  torch "
                f"{fmt(i.get('torch_autocast_apply')):>7s}  ratio {fmt(r['ratio_infer'], 2)}"
                f"  (spread {pct(r['spread'])})")
            return r
        run_row("bf16", name, bs, row, rows)


# ---- report ------------------------------------------------------------------------------
def environment(precisions) -> dict:
    from halcdl import _native
    env = {"python": platform.python_version(), "cpu_cores": os.cpu_count(),
           "halcdl_threads": ha.get_system("thread_num"),
           "halcdl_core": _native.core.__file__,
           "halcdl_cuda_library": _native.cuda_library_path,
           "cuda_dependencies": list(getattr(_native, "cuda_dependency_paths", [])),
           "gpu": {}}
    for key in ("name", "compute_capability", "memory"):
        try:
            env["gpu"][key] = ha.get_dl_device_param(GPU, key)[0]
        except Exception as err:  # noqa: BLE001
            env["gpu"][key] = describe(err)
    env["gpu"]["precisions"] = precisions
    if torch is not None:
        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
        env["torch_cudnn"] = torch.backends.cudnn.version()
        try:
            env["torch_device"] = torch.cuda.get_device_name(torch.device(TDEV))
        except Exception as err:  # noqa: BLE001
            env["torch_device"] = describe(err)
        env["torch_threads"] = torch.get_num_threads()
    if cupy is not None:
        env["cupy"] = cupy.__version__
    try:
        env["driver"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        env["driver"] = "?"
    try:
        env["git"] = subprocess.run(["git", "-C", common.ROOT, "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        env["git"] = ""
    return env


def errors_md(rows):
    out = []
    for r in rows:
        if r.get("error"):
            e = r["error"]
            out.append(f"- {r['model']} bs {r['batch']}: "
                       f"{e if e.startswith('skipped') else 'failed: ' + e}")
        for k, e in (r.get("errors") or {}).items():
            out.append(f"- {r['model']} bs {r['batch']}, {k}: {e}")
    return ([""] + out) if out else []


def report(res) -> str:
    e, a, s = res["env"], res["args"], res["sections"]
    L = [f"- command: `{res['command']}`",
         f"- date: {res['date']}; GPU: {e['gpu'].get('name')} (compute capability "
         f"{e['gpu'].get('compute_capability')}), driver {e.get('driver')}",
         f"- torch {e.get('torch', 'n/a')} (CUDA {e.get('torch_cuda', 'n/a')}, cuDNN "
         f"{e.get('torch_cudnn', 'n/a')}), CuPy {e.get('cupy', 'n/a')}, Python {e['python']}, "
         f"torch model: {a['torch_model']}",
         f"- halcdl: {e['halcdl_cuda_library'] or 'no CUDA library'}; set_system tf32 true, "
         "cudnn_deterministic false; torch cudnn.benchmark, TF32 allowed, channels_last",
         f"- warmup {a['warmup']} (after one untimed first call), repeats {a['repeats']} "
         f"(at most {a['row_seconds']} s per row); img/s from medians; ratios of medians "
         "(> 1: halcdl faster)"]
    if "train" in s:
        L += ["", f"**Training step, fp32 (TF32), 224×224, 10 classes** (target halcdl/torch "
              f"≥ {TARGET})", "",
              "| model | batch | halcdl img/s | torch img/s | halcdl/torch | met | halcdl CuPy in "
              "img/s | torch resident img/s | CuPy/resident | spread |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for r in s["train"]:
            i = r.get("img_s", {})
            ok = "n/a" if r.get("ratio") is None else ("yes" if r["ratio"] >= TARGET else "no")
            L.append(f"| {r['model']} | {r['batch']} | {fmt(i.get('halcdl'))} | "
                     f"{fmt(i.get('torch'))} | {fmt(r.get('ratio'), 2)} | {ok} | "
                     f"{fmt(i.get('halcdl_cupy'))} | {fmt(i.get('torch_dev'))} | "
                     f"{fmt(r.get('ratio_dev'), 2)} | {pct(r.get('spread'))} |")
        L += errors_md(s["train"])
        L.append("\nhalcdl and torch start from the same numpy samples (torch: np.stack, one "
                 "copy to the GPU, channels_last view). CuPy in: samples whose 'image' is a "
                 "CuPy array; torch resident: the input tensor already on the GPU.")
    if "det" in s:
        L += ["", "**cudnn_deterministic** (training step, fp32/TF32)", "",
              "| model | batch | 'false' img/s | 'true' img/s | true/false | spread |",
              "|---|---|---|---|---|---|"]
        for r in s["det"]:
            i = r.get("img_s", {})
            L.append(f"| {r['model']} | {r['batch']} | {fmt(i.get('nondeterministic'))} | "
                     f"{fmt(i.get('deterministic'))} | {fmt(r.get('ratio'), 2)} | "
                     f"{pct(r.get('spread'))} |")
        L += errors_md(s["det"])
    if "infer" in s:
        L += ["", "**Inference** (apply_dl_model vs torch eval + no_grad, softmax, sort)", "",
              "| model | batch | halcdl img/s | torch img/s | halcdl/torch | halcdl CuPy in | "
              "halcdl CuPy in + gpu_outputs | torch resident, GPU results | "
              "gpu_outputs/resident | spread |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for r in s["infer"]:
            i = r.get("img_s", {})
            L.append(f"| {r['model']} | {r['batch']} | {fmt(i.get('halcdl'))} | "
                     f"{fmt(i.get('torch'))} | {fmt(r.get('ratio'), 2)} | "
                     f"{fmt(i.get('halcdl_cupy'))} | {fmt(i.get('halcdl_gpu_out'))} | "
                     f"{fmt(i.get('torch_dev'))} | {fmt(r.get('ratio_dev'), 2)} | "
                     f"{pct(r.get('spread'))} |")
        L += errors_md(s["infer"])
    cup = [(ph, r) for ph in ("train", "infer") for r in s.get(ph, [])
           if r.get("cupy_vs_numpy") is not None]
    if cup:
        L += ["", "**CuPy input vs numpy input** (halcdl, same model and batch)", "",
              "| phase | model | batch | numpy img/s | CuPy img/s | CuPy/numpy |",
              "|---|---|---|---|---|---|"]
        for ph, r in cup:
            i = r["img_s"]
            L.append(f"| {ph} | {r['model']} | {r['batch']} | {fmt(i.get('halcdl'))} | "
                     f"{fmt(i.get('halcdl_cupy'))} | {fmt(r['cupy_vs_numpy'], 2)} |")
    if "bf16" in s:
        L += ["", "**bfloat16 training and inference** (halcdl precision 'bfloat16' vs "
              "torch.autocast('cuda', bfloat16))", ""]
        if all(r.get("status") == "not implemented" for r in s["bf16"]):
            L.append("not implemented: halcdl's GPU reports precisions "
                     f"{e['gpu'].get('precisions')}")
        else:
            L += ["| model | batch | train: halcdl bf16 img/s | torch autocast img/s | halcdl/torch "
                  "| infer: halcdl bf16 img/s | torch autocast img/s | halcdl/torch | spread |",
                  "|---|---|---|---|---|---|---|---|---|"]
            for r in s["bf16"]:
                i = r.get("img_s", {})
                L.append(f"| {r['model']} | {r['batch']} | {fmt(i.get('halcdl_bf16'))} | "
                         f"{fmt(i.get('torch_autocast'))} | {fmt(r.get('ratio'), 2)} | "
                         f"{fmt(i.get('halcdl_bf16_apply'))} | {fmt(i.get('torch_autocast_apply'))} | "
                         f"{fmt(r.get('ratio_infer'), 2)} | {pct(r.get('spread'))} |")
            L += errors_md(s["bf16"])
    return "\n".join(L)


def write(path, writer):
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        with open(path, "w") as f:
            writer(f)


# ---- main --------------------------------------------------------------------------------
def measured(res) -> int:
    """Rows with at least one timed halcdl candidate."""
    return sum(1 for rows in res["sections"].values() for r in rows
               if any(k.startswith("halcdl") or k in ("deterministic", "nondeterministic")
                      for k in (r.get("times") or {})))


SECTIONS = ("train", "infer", "det", "bf16")   # run in this order


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--quick", action="store_true",
                   help="warmup 1, repeats 6, 20 s per row, det at batch 32 only "
                        "(default warmup 3, repeats 20, 60 s per row)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated, from {','.join(SECTIONS)}")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batches", default=",".join(map(str, BATCHES)))
    p.add_argument("--warmup", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--row-seconds", type=float, help="stop a row's timed rounds after this")
    p.add_argument("--deadline", type=float,
                   help="seconds for the whole run: later rows are skipped (and recorded), "
                        "the report is written; gpu_check.sh passes what its time box leaves")
    p.add_argument("--torch-model", choices=("twin", "torchvision"), default="twin",
                   help="torch side: tests/torch_twin.py's twin of the halcdl graph (default) "
                        "or torchvision.models.<name>")
    p.add_argument("--json", help="write every result (incl. all timings) to this file")
    p.add_argument("--md", help="write the markdown report to this file")
    cfg = p.parse_args(argv)
    q = cfg.quick
    cfg.warmup = cfg.warmup if cfg.warmup is not None else (1 if q else 3)
    cfg.repeats = cfg.repeats or (6 if q else 20)
    cfg.row_seconds = cfg.row_seconds or (20.0 if q else 60.0)
    cfg.models = [m.strip() for m in cfg.models.split(",") if m.strip()]
    cfg.batches = [int(b) for b in cfg.batches.split(",") if b.strip()]
    cfg.det_batches = ([b for b in cfg.batches if b <= 32] or cfg.batches[:1]) if q \
        else cfg.batches
    cfg.sections = [x.strip() for x in cfg.sections.split(",") if x.strip()]
    bad = [x for x in cfg.sections if x not in SECTIONS]
    if bad:
        p.error(f"unknown section(s) {bad}; choose from {SECTIONS}")
    bad = [m for m in cfg.models if m not in common.FILES]
    if bad:
        p.error(f"unknown model(s) {bad}; choose from {list(common.FILES)}")
    return cfg


def main(argv=None) -> int:
    global torch, cupy, GPU, TDEV, DEADLINE, FLUSH
    cfg = parse(argv)
    t0 = time.time()

    GPU, why = find_gpu()
    t, torch_note = load_torch()
    if GPU is None:
        LOG("no GPU: halcdl reports no GPU device, nothing to measure.")
        LOG(f"  halcdl: {why}")
        LOG(f"  {torch_note}")
        LOG("  (benchmarks/gpu_check.sh builds halcdl with the CUDA backend on a GPU machine; "
            "docs/gpu.md)")
        return 2
    torch = t
    TDEV = f"cuda:{GPU.id}"
    if torch is None:
        LOG(f"warning: {torch_note}: halcdl is measured alone (torch columns n/a)")
    else:
        setup_torch()
    try:
        import cupy as cp
        cupy = cp
    except Exception as err:  # noqa: BLE001
        LOG(f"warning: CuPy not importable ({describe(err)}): CuPy columns n/a")

    ha.set_system("tf32", "true")
    ha.set_system("cudnn_deterministic", "false")
    try:
        precisions = [str(x) for x in ha.get_dl_device_param(GPU, "precisions")]
    except Exception as err:  # noqa: BLE001
        precisions = []
        report_error("get_dl_device_param(gpu, 'precisions')", err)

    env = environment(precisions)
    LOG(f"GPU {env['gpu'].get('name')} (cc {env['gpu'].get('compute_capability')}, driver "
        f"{env.get('driver')}), {torch_note}, CuPy {env.get('cupy', 'n/a')}, halcdl "
        f"{env['halcdl_cuda_library'] or '(no CUDA library)'}; sections {cfg.sections}, models "
        f"{cfg.models}, batches {cfg.batches}, image {SIZE}x{SIZE}")
    res = {"command": "python benchmarks/bench_gpu.py " + " ".join(
               sys.argv[1:] if argv is None else argv),
           "date": datetime.datetime.now().isoformat(timespec="seconds"), "env": env,
           "args": {"quick": cfg.quick, "warmup": cfg.warmup, "repeats": cfg.repeats,
                    "row_seconds": cfg.row_seconds, "torch_model": cfg.torch_model,
                    "models": cfg.models, "batches": cfg.batches, "size": SIZE,
                    "classes": CLASSES, "lr": LR, "momentum": MOMENTUM, "weight_prior": WP},
           "sections": {}}
    runners = {"train": section_train, "det": section_det, "infer": section_infer,
               "bf16": lambda c, rows: section_bf16(c, rows, precisions)}

    def flush():
        res["elapsed_s"] = time.time() - t0
        res["rows_measured"] = measured(res)
        text = report(res)
        write(cfg.json, lambda f: json.dump(res, f, indent=1, default=str))
        write(cfg.md, lambda f: f.write(text + "\n"))
        return text
    FLUSH = flush
    if cfg.deadline:
        DEADLINE = time.perf_counter() + cfg.deadline
    for key in SECTIONS:
        if key not in cfg.sections:
            continue
        ts = time.time()
        rows = res["sections"][key] = []
        try:
            runners[key](cfg, rows)
        except Exception as err:  # noqa: BLE001  (a section-level failure: keep going)
            rows.append({"model": "-", "batch": "-", "error": report_error(key, err)})
        LOG(f"  ({key}: {time.time() - ts:.0f} s)")
    text = flush()
    LOG()
    LOG(text)
    LOG(f"\n({res['rows_measured']} row(s) measured, total {res['elapsed_s']:.0f} s)")
    return 0 if res["rows_measured"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Peak memory of training steps, one library per fresh process (run by run_all.py).

    python benchmarks/peak_mem.py --side halcdl --model resnet18 --batch 16
    python benchmarks/peak_mem.py --side torch --model resnet18 --batch 16 --spec spec.json

Prints one JSON line. Measured in this process, which imports only the library it measures:
  import_mb   RSS after the imports (numpy + halcdl, or numpy + torch + torch_twin)
  base_mb     RSS after creating the model, the optimizer (torch) and the input batch
  peak_mb     peak RSS over --steps training steps (VmHWM, reset to the current RSS just
              before the first step with /proc/self/clear_refs; ru_maxrss where that is not
              permitted: then the peak of the whole process)
  step_mb     = peak_mb - base_mb: what a train step adds on top of the built model
              (activations, gradients, workspace, and for torch the optimizer's momentum
              buffers, which it creates lazily at the first step)
  total_mb    = peak_mb - import_mb: the model and its training, whatever was allocated when
  ru_maxrss_mb  getrusage(RUSAGE_SELF).ru_maxrss, for reference (it can also hold the
              launching process's peak, which the kernel carries over at exec)
The torch side builds the twin from the spec the parent wrote (--spec, JSON), so it never
imports halcdl; its weights get torch's default Kaiming initialisation (values do not change
the memory). --precision bfloat16: halcdl's 'precision' parameter, torch's bf16 autocast.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys

import common


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--side", choices=("halcdl", "torch"), required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--size", type=int, default=common.SIZE)
    p.add_argument("--precision", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--spec", help="JSON file with the model's spec (torch side)")
    a = p.parse_args(argv)

    import numpy as np  # noqa: F401
    out = {"side": a.side, "model": a.model, "batch": a.batch, "precision": a.precision,
           "steps": a.steps}
    if a.side == "halcdl":
        import halcdl as ha
        ha.set_system("thread_num", a.threads)
        out["import_mb"] = common.rss_mb()
        model = common.make_model(ha, a.model, a.batch, a.size, precision=a.precision)
        h = int(ha.get_dl_model_param_s(model, "image_height"))
        w = int(ha.get_dl_model_param_s(model, "image_width"))
        samples = common.make_samples(a.batch, h, w)

        def step():
            return ha.train_dl_model_batch(model, samples)["total_loss"]
    else:
        import torch
        import torch.nn as nn
        from torch_twin import TorchTwin
        torch.set_num_threads(a.threads)
        out["import_mb"] = common.rss_mb()
        with open(a.spec) as f:
            spec_info = json.load(f)
        twin = TorchTwin(spec_info["spec"], in_channels=spec_info["channels"])
        with torch.no_grad():
            for _, role, t in twin.named_trainable():
                if role == "weight" and t.dim() > 1:
                    nn.init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu")
        samples = common.make_samples(a.batch, spec_info["height"], spec_info["width"])
        step, _ = common.torch_fns(twin, samples, autocast_bf16=a.precision == "bfloat16")

    out["base_mb"] = common.rss_mb()
    reset = common.reset_hwm()
    for _ in range(a.steps):
        step()
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["peak_mb"] = common.hwm_mb() if reset else ru
    out["peak_source"] = "VmHWM after clear_refs" if reset else "ru_maxrss"
    out["ru_maxrss_mb"] = ru
    out["end_mb"] = common.rss_mb()
    out["step_mb"] = out["peak_mb"] - out["base_mb"]
    out["total_mb"] = out["peak_mb"] - out["import_mb"]
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

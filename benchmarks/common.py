"""Shared set-up of the benchmarks: paths, model configurations, the halcdl model and the
PyTorch step functions. Imports neither torch nor halcdl at module level, so the peak-memory
child processes (benchmarks/peak_mem.py) load only the library they measure."""
from __future__ import annotations

import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if os.path.join(ROOT, "tests") not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, "tests"))          # torch_twin
_py = os.path.join(ROOT, "python")
if glob.glob(os.path.join(_py, "halcdl", "_core*.so")) and _py not in sys.path:
    sys.path.insert(0, _py)                                   # built in place: the checkout

FILES = {
    "compact": "pretrained_dl_classifier_compact.hdl",
    "enhanced": "pretrained_dl_classifier_enhanced.hdl",
    "resnet18": "pretrained_dl_classifier_resnet18.hdl",
    "resnet50": "pretrained_dl_classifier_resnet50.hdl",
    "mobilenet_v2": "pretrained_dl_classifier_mobilenet_v2.hdl",
    "alexnet": "pretrained_dl_classifier_alexnet.hdl",
}

# issue 6's rows
TRAIN_FP32 = [("resnet18", 16), ("compact", 32), ("mobilenet_v2", 16), ("resnet50", 8)]
TRAIN_BF16 = [("resnet18", 16), ("compact", 32)]
INFER_BATCH = 16
INFER_MODELS = ["resnet18", "compact", "mobilenet_v2", "resnet50"]

SIZE = 224
CLASSES = 10
LR, MOMENTUM, WP = 1e-3, 0.9, 1e-4


def make_model(ha, name: str, batch: int, size: int = SIZE, classes: int = CLASSES,
               precision: str | None = None, optimize: bool = False, seed: int = 0):
    """A halcdl model configured like the torch side. precision / optimize_for_inference are
    set when asked; a halcdl without them raises HOperatorError (the caller reports it)."""
    ha.set_system("seed_rand", seed)
    model = ha.read_dl_model(FILES[name])
    if name != "alexnet":
        ha.set_dl_model_param(model, "image_dimensions", [size, size, 3])
    ha.set_dl_model_param(model, "class_ids", list(range(classes)))
    ha.set_dl_model_param(model, "batch_size", batch)
    ha.set_dl_model_param(model, "learning_rate", LR)
    ha.set_dl_model_param(model, "momentum", MOMENTUM)
    ha.set_dl_model_param(model, "weight_prior", WP)
    if precision is not None and precision != "float32":
        ha.set_dl_model_param(model, "precision", precision)
    if optimize:
        ha.set_dl_model_param(model, "optimize_for_inference", "true")
    return model


def make_samples(batch: int, h: int, w: int, classes: int = CLASSES, seed: int = 0):
    import numpy as np
    rng = np.random.default_rng(seed)
    return [{"image": rng.uniform(-127, 128, (h, w, 3)).astype(np.float32),
             "image_label_id": int(i % classes)} for i in range(batch)]


def torch_fns(twin, samples, autocast_bf16: bool = False):
    """(train_step, apply) closures for a TorchTwin: what a PyTorch user writes. The images
    are stacked into an NCHW tensor inside the timed region (halcdl copies them in too).
    train: forward + cross-entropy + backward + SGD(momentum, weight_decay) step, optionally
    under torch.autocast('cpu', bfloat16) (forward and loss; backward outside, as documented).
    apply: eval mode, inference_mode, softmax, sorted confidences as numpy."""
    import torch
    import torch.nn.functional as F
    from torch_twin import images_to_nchw

    labels = torch.tensor([s["image_label_id"] for s in samples])
    opt = torch.optim.SGD([p for _, _, p in twin.named_trainable()], lr=LR,
                          momentum=MOMENTUM, weight_decay=WP)

    def train():
        twin.train()
        x = images_to_nchw(samples)
        opt.zero_grad(set_to_none=True)
        if autocast_bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(twin(x), labels)
        else:
            loss = F.cross_entropy(twin(x), labels)
        loss.backward()
        opt.step()
        return loss.item()

    def apply():
        twin.eval()
        with torch.inference_mode():
            x = images_to_nchw(samples)
            probs = torch.softmax(twin(x), dim=1)
            conf, ids = probs.sort(dim=1, descending=True)
            return ids.numpy(), conf.numpy()

    return train, apply


def rss_mb() -> float:
    """Current resident set size (MB) from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def hwm_mb() -> float:
    """Peak RSS of this process's address space (VmHWM, MB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs 5). False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def load_avg() -> tuple:
    return tuple(round(x, 2) for x in os.getloadavg())

"""optimize_dl_model_for_inference (docs/introspection.md, section "Inference precision").

* 'float32': a copy of the model for the device.
* 'bfloat16' (CPU): a copy computing in bfloat16 (fp32 weights kept); 7742 on a CPU without
  bfloat16 instructions, as set_dl_model_param(m, 'precision', 'bfloat16').
* 'int8' (CPU): **simulated** quantization.  The copy's convolution and dense weights are
  rounded to int8 with one symmetric scale per output channel (scale = max |w| / 127), and
  the activation scale of every convolution / dense input is calibrated on DLSamples (max
  |x| / 127 over the samples, read with the engine's kept layer outputs).  The copy still
  computes in float32 with those rounded weights: activations are not rounded and no int8
  primitive runs, so there is no int8 speed-up (none is claimed).  The report gives the
  calibrated scales and the accuracy on DLSamples before and after.
* 'float16': not on the CPU (7742); the GPU path has no conversion yet (7742).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import H_ERR_CNN_RUNTIME_FAILED, HOperatorError
from ..io.native import read_model_bytes
from ..operators._tuple import as_str, operator, to_scalar, to_tuple, wrong_type, wrong_value
from ..operators.dl_device import DLDevice
from ..operators.dl_model import apply_dl_model, check_model
from .serialize import model_bytes

__all__ = ["optimize_dl_model_for_inference"]

_PRECISIONS = ("float32", "float16", "bfloat16", "int8")


def _device(h: Any) -> DLDevice:
    if isinstance(h, (list, tuple)) and len(h) == 1:
        h = h[0]
    if not isinstance(h, DLDevice):
        raise wrong_type(2, f"dldevice_handle must be a device handle from "
                            f"query_available_dl_devices, got {type(h).__name__}")
    return h


def _top1(m, samples: list) -> np.ndarray:
    res = apply_dl_model(m, samples, ["classification_class_ids"])
    return np.array([r["classification_class_ids"][0] for r in res])


def _quantize_per_channel(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8, one scale per output channel (axis 0); returns the dequantized
    weights and the scales."""
    flat = w.reshape(w.shape[0], -1)
    s = np.abs(flat).max(axis=1) / 127.0
    s = np.where(s > 0, s, 1.0).astype(np.float32)
    q = np.clip(np.rint(flat / s[:, None]), -127, 127)
    return (q * s[:, None]).astype(np.float32).reshape(w.shape), s


def _calibrate(m, samples: list) -> dict:
    """Activation scales (max |x| / 127) of every conv / fc input over the samples."""
    inputs = sorted({n["inputs"][0] for n in m.spec if n["op"] in ("conv", "fc")})
    core = m.core
    old = list(core.keep_names())
    p = m.params
    amax = {}
    core.set_keep(sorted(set(old) | set(inputs)))
    try:
        bs = int(p["batch_size"])
        for start in range(0, len(samples), bs):
            chunk = samples[start:start + bs]
            core.infer(chunk, bs, p["image_height"], p["image_width"], p["image_num_channels"])
            for n in inputs:
                v = float(np.abs(np.asarray(core.layer_tensor(n, False))).max())
                amax[n] = max(amax.get(n, 0.0), v)
    finally:
        core.set_keep(old)
    return {n: (a / 127.0 if a > 0 else 1.0) for n, a in amax.items()}


@operator
def optimize_dl_model_for_inference(dlmodel_handle: Any, dldevice_handle: Any, precision: Any,
                                    dlsamples: Any, gen_param: Any) -> tuple:
    """A converted copy of the model and a conversion report (dict); see the module
    docstring for what each precision does.  The input model is not changed."""
    m = check_model(dlmodel_handle, 1)
    dev = _device(dldevice_handle)
    prec = as_str(to_scalar(precision, 3, "one precision"), 3, "precision")
    if prec not in _PRECISIONS:
        raise wrong_value(3, f"precision must be one of {_PRECISIONS}, got {prec!r}")
    samples = [dlsamples] if isinstance(dlsamples, dict) else list(to_tuple(dlsamples))
    if not all(isinstance(s, dict) for s in samples):
        raise wrong_type(4, "dlsamples must be a list of DLSample dicts")
    if gen_param not in (None, [], ()) and not (isinstance(gen_param, dict) and not gen_param):
        raise wrong_value(5, "gen_param: no generic parameters are supported (pass {} or [])")
    if dev.type != "cpu":
        if prec != "float32":
            raise HOperatorError(H_ERR_CNN_RUNTIME_FAILED, f"precision {prec!r} on the GPU is not "
                                 f"implemented in halcdl yet (float32 only)")
    elif prec == "float16":
        raise HOperatorError(H_ERR_CNN_RUNTIME_FAILED, "precision 'float16' is a GPU precision; "
                             "on the CPU use 'float32', 'bfloat16' or 'int8'")
    if prec == "int8":
        if m.is_detection or m.is_segmentation:
            raise HOperatorError(H_ERR_CNN_RUNTIME_FAILED, "int8 conversion supports "
                                 "classification models only")
        if not samples:
            raise wrong_value(4, "int8 needs calibration samples in dlsamples")
    with m.lock:
        check_model(m)
        if m.core.device() >= 0 and prec == "int8":
            raise HOperatorError(H_ERR_CNN_RUNTIME_FAILED, "int8 calibration runs on the CPU: "
                                 "move the model to the CPU first")
        data = model_bytes(m)
    out = read_model_bytes(data, "optimized model")
    report: dict = {"precision": prec, "device": dev.type}
    if prec == "bfloat16":
        out.core.set_precision("bfloat16")  # 7742 without bfloat16 hardware; `out` is dropped
    if dev.type == "gpu":
        from ..operators.dl_model import set_dl_model_param  # noqa: PLC0415

        set_dl_model_param(out, "device", dev)
    if prec == "int8":
        scales = {}
        for n in out.spec:
            if n["op"] not in ("conv", "fc"):
                continue
            pname = f"{n['name']}.weight"
            w = np.asarray(out.core.get_param(pname), dtype=np.float32)
            wq, s = _quantize_per_channel(w)
            out.core.set_param(pname, wq)
            scales[n["name"]] = s.tolist()
        report["int8_mode"] = "simulated: int8-rounded weights, float32 compute"
        report["weight_scales"] = scales
        report["activation_scales"] = _calibrate(out, samples)
        report["missing"] = ("oneDNN int8 convolution / inner-product primitives and rounding of "
                             "the activations are not implemented; no int8 speed-up")
    out.params["precision_is_converted"] = "true"
    if samples and not m.is_detection and not m.is_segmentation:
        before = _top1(m, samples)
        after = _top1(out, samples)
        report["num_samples"] = len(samples)
        report["top1_agreement"] = float(np.mean(before == after))
        labels = [s.get("image_label_id") for s in samples]
        if all(lb is not None for lb in labels):
            y = np.array([int(np.asarray(lb).reshape(-1)[0]) for lb in labels])
            a0, a1 = float(np.mean(before == y)), float(np.mean(after == y))
            report["accuracy_original"] = a0
            report["accuracy_converted"] = a1
            report["accuracy_change_points"] = 100.0 * (a1 - a0)
    return out, report

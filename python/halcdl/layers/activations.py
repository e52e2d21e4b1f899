"""Layer outputs and gradients, and heatmaps: get_dl_model_layer_activations,
get_dl_model_layer_gradients, gen_dl_model_heatmap (docs/introspection.md).

The engine keeps a layer's output (and, in a training step, its gradient) readable after a
batch only for the layers in the model's keep set (``set_dl_model_param(m,
'keep_layer_outputs', [...])``, a halcdl extension): kept layers are not fused and their
buffers are not reused, everything else runs as before, so an empty set costs nothing.

* After apply_dl_model (on the CPU) the activations of *any* layer can be read, as in
  HALCON: a layer that was not kept is added to the keep set and the last batch of that call
  is run once more (the model must not have changed in between; halcdl keeps references to
  that batch's sample dicts, no pixel copies).
* After train_dl_model_batch, activations and gradients exist for the kept layers only
  (the weights have changed since the step, so nothing can be recomputed): name the layers
  before the step.  The values are those of the step's last sub-batch, computed with the
  weights before the update.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import (
    H_ERR_CNN_RUNTIME_FAILED,
    H_ERR_DL_PARAM_NOT_AVAILABLE,
    HOperatorError,
)
from ..hobject import HObject
from ..operators._tuple import as_str, operator, single, to_scalar, to_tuple, wrong_type, wrong_value
from ..operators.dl_model import check_model

__all__ = [
    "get_dl_model_layer_activations",
    "get_dl_model_layer_gradients",
    "gen_dl_model_heatmap",
    "gen_dl_model_heatmap_s",
]


def layer_node(m, layer_name: str, pos: int) -> str:
    """The engine node whose output is the HALCON layer's output: '<layer>/activation' for a
    convolution or batch normalization with a fused ReLU, else the layer's own node."""
    names = {n["name"] for n in m.spec}
    if f"{layer_name}/activation" in names:
        return f"{layer_name}/activation"
    if layer_name in names:
        return layer_name
    from .api import extra_layers  # noqa: PLC0415

    if any(r["name"] == layer_name for r in extra_layers(m)):
        raise HOperatorError(H_ERR_DL_PARAM_NOT_AVAILABLE,
                             f"layer {layer_name!r} (softmax, loss or label input) is not computed "
                             f"by halcdl's engine, which returns the scores before the softmax; "
                             f"its activations are not available")
    raise wrong_value(pos, f"the model has no layer {layer_name!r}")


def _image_object(a: np.ndarray) -> HObject:
    """(N, C[, H, W]) → one (H, W, C) float32 image per sample (HALCON: width × height ×
    depth images, one per batch item); (N, K) outputs become 1 × 1 × K images."""
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 2:
        a = a[:, :, None, None]
    return HObject([np.ascontiguousarray(x.transpose(1, 2, 0)) for x in a])


def _read(dlmodel_handle: Any, layer_name: Any, grad: bool) -> HObject:
    m = check_model(dlmodel_handle, 1)
    name = as_str(to_scalar(layer_name, 2, "one layer name"), 2, "layer_name")
    with m.lock:
        check_model(m)
        if m.core.device() >= 0:
            raise HOperatorError(H_ERR_CNN_RUNTIME_FAILED,
                                 "layer activations and gradients are not available on the GPU "
                                 "yet: run the model on the CPU to read them")
        node = layer_node(m, name, 2)
        kept = list(m.core.keep_names())
        if node not in kept:
            last = getattr(m, "_introspect_last", None)
            if grad or last is None or last[0] is not m.core:
                what = "gradients" if grad else "activations"
                raise HOperatorError(H_ERR_DL_PARAM_NOT_AVAILABLE,
                                     f"the {what} of layer {name!r} were not kept: name the layer "
                                     f"with set_dl_model_param(model, 'keep_layer_outputs', [...]) "
                                     f"before train_dl_model_batch"
                                     + ("" if grad else " (after apply_dl_model any layer can be "
                                                        "read)"))
            _, kind, batch = last
            p = m.params
            m.core.set_keep(kept + [node])
            args = (batch, p["batch_size"], p["image_height"], p["image_width"],
                    p["image_num_channels"])
            if kind == "segmentation":
                m.core.infer_segmentation(*args)
            else:
                m.core.infer(*args)
        return _image_object(m.core.layer_tensor(node, grad))


@operator
def get_dl_model_layer_activations(dlmodel_handle: Any, layer_name: Any) -> HObject:
    """The output of layer ``layer_name`` for the last batch the model ran (apply_dl_model:
    its last batch; train_dl_model_batch: the last sub-batch, before the update), one
    (H, W, depth) float32 image per sample.  See the module docstring for which layers are
    available when."""
    return _read(dlmodel_handle, layer_name, False)


@operator
def get_dl_model_layer_gradients(dlmodel_handle: Any, layer_name: Any) -> HObject:
    """The gradient of the loss with respect to the output of the kept layer ``layer_name``
    in the last training step (its last sub-batch; the loss as train_dl_model_batch
    computes it, divided by the batch size and the multiplier), one (H, W, depth) float32
    image per sample."""
    return _read(dlmodel_handle, layer_name, True)


# --------------------------------------------------------------------------------------------
# heatmaps
# --------------------------------------------------------------------------------------------
_METHODS = ("grad_cam", "guided_grad_cam")


def _default_target(m) -> str:
    """HALCON's default: the deepest convolution whose output is wider or higher than 1."""
    p = m.params
    shapes = dict(m.core.node_shapes(p["image_height"], p["image_width"]))
    best = None
    for n in m.spec:
        if n["op"] != "conv":
            continue
        d = shapes.get(n["name"])
        if d is not None and len(d) == 4 and (d[2] > 1 or d[3] > 1):
            best = n["name"]
    if best is None:
        raise HOperatorError(H_ERR_DL_PARAM_NOT_AVAILABLE, "the network has no convolution "
                             "with an output larger than 1 x 1 for a heatmap")
    return best


def _zoom_bilinear(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """(N, h0, w0) → (N, h, w), bilinear with half-pixel centers (align_corners false)."""
    n, h0, w0 = a.shape
    if (h0, w0) == (h, w):
        return a.astype(np.float32)

    def axis(size_in: int, size_out: int):
        x = (np.arange(size_out, dtype=np.float64) + 0.5) * (size_in / size_out) - 0.5
        x = np.clip(x, 0, size_in - 1)
        lo = np.floor(x).astype(np.int64)
        hi = np.minimum(lo + 1, size_in - 1)
        return lo, hi, (x - lo)

    ylo, yhi, fy = axis(h0, h)
    xlo, xhi, fx = axis(w0, w)
    a = a.astype(np.float64)
    top = a[:, ylo][:, :, xlo] * (1 - fx) + a[:, ylo][:, :, xhi] * fx
    bot = a[:, yhi][:, :, xlo] * (1 - fx) + a[:, yhi][:, :, xhi] * fx
    return (top * (1 - fy)[None, :, None] + bot * fy[None, :, None]).astype(np.float32)


def grad_cam(act: np.ndarray, grad: np.ndarray, h: int, w: int) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017): ReLU(Σ_k α_k A_k), α_k the spatial mean of the
    class score's gradient on channel k, zoomed bilinearly to the image size and divided by
    its maximum (all zeros stay zeros).  act, grad: (N, C, h0, w0)."""
    alpha = grad.mean(axis=(2, 3), keepdims=True)
    cam = np.maximum((alpha * act).sum(axis=1), 0.0)
    cam = _zoom_bilinear(cam, h, w)
    mx = cam.reshape(len(cam), -1).max(axis=1)
    return np.where(mx[:, None, None] > 0, cam / np.where(mx > 0, mx, 1)[:, None, None], 0.0) \
        .astype(np.float32)


def _heatmap(dlmodel_handle: Any, dlsample: Any, heatmap_method: Any, target_classes: Any,
             gen_param: Any) -> list[dict]:
    m = check_model(dlmodel_handle, 1)
    samples = [dlsample] if isinstance(dlsample, dict) else list(to_tuple(dlsample))
    if not samples or not all(isinstance(s, dict) for s in samples):
        raise wrong_type(2, "dlsample must be a DLSample dict or a list of them")
    method = as_str(to_scalar(heatmap_method, 3, "one heatmap method"), 3, "heatmap_method")
    if method not in _METHODS:
        raise wrong_value(3, f"heatmap_method must be one of {_METHODS}, got {method!r}")
    targets = list(to_tuple(target_classes))
    if len(targets) > 1:
        raise wrong_value(4, "target_classes takes one class id or an empty tuple (as HALCON)")
    gp = {} if gen_param in (None, [], ()) else gen_param
    if not isinstance(gp, dict):
        raise wrong_type(5, "gen_param must be a dict")
    for k in gp:
        if k != "target_conv_layer":
            raise wrong_value(5, f"unknown gen_param key {k!r} (supported: target_conv_layer)")
    with m.lock:
        check_model(m)
        if m.is_detection or m.is_segmentation:
            raise HOperatorError(H_ERR_CNN_RUNTIME_FAILED, "gen_dl_model_heatmap supports "
                                 "classification models only")
        if m.core.device() >= 0:
            raise HOperatorError(H_ERR_CNN_RUNTIME_FAILED, "heatmaps are not supported on the "
                                 "GPU yet: run the model on the CPU")
        p = m.params
        class_ids = [int(c) for c in p["class_ids"]]
        if targets:
            t = targets[0]
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or int(t) not in class_ids:
                raise wrong_value(4, f"target class {t!r} is not a class id of the model "
                                     f"({class_ids})")
        if "target_conv_layer" in gp:
            layer = as_str(gp["target_conv_layer"], 5, "target_conv_layer")
            node = layer_node(m, layer, 5)
        else:
            layer = _default_target(m)
            node = layer_node(m, layer, 5)
        h, w, c = p["image_height"], p["image_width"], p["image_num_channels"]
        old = list(m.core.keep_names())
        m.core.set_keep(old + [node])
        try:
            results = []
            bs = max(1, int(p["batch_size"]))
            for start in range(0, len(samples), bs):
                chunk = samples[start:start + bs]
                try:
                    logits = np.asarray(m.core.grad_forward(chunk, h, w, c))
                except TypeError as err:
                    raise wrong_type(2, f"dlsample must be DLSample dicts ({err})") from None
                z = logits.reshape(len(chunk), -1)
                e = np.exp(z - z.max(axis=1, keepdims=True))
                probs = e / e.sum(axis=1, keepdims=True)
                idx = (np.full(len(chunk), class_ids.index(int(targets[0]))) if targets
                       else z.argmax(axis=1))
                g = np.zeros_like(z)
                g[np.arange(len(chunk)), idx] = 1.0
                m.core.grad_backward(g.reshape(logits.shape))
                act = np.asarray(m.core.layer_tensor(node, False))
                grd = np.asarray(m.core.layer_tensor(node, True))
                if act.ndim != 4:
                    raise HOperatorError(H_ERR_DL_PARAM_NOT_AVAILABLE,
                                         f"target_conv_layer {layer!r} has no spatial output")
                cams = grad_cam(act, grd, h, w)
                if method == "guided_grad_cam":
                    # guided backpropagation (ReLUs pass positive gradients only) down to
                    # the image, times the Grad-CAM map: (N, C, H, W) → (H, W, C) images
                    m.core.grad_forward(chunk, h, w, c, True)
                    m.core.grad_backward(g.reshape(logits.shape))
                    gb = np.asarray(m.core.grad_input())
                    cams = (gb * cams[:, None]).transpose(0, 2, 3, 1).astype(np.float32)
                key = "heatmap_" + method
                order = np.argsort(-probs, axis=1, kind="stable")
                for i in range(len(chunk)):
                    cid = class_ids[int(idx[i])]
                    results.append({
                        "classification_class_ids": [class_ids[j] for j in order[i]],
                        "classification_class_names": [p["class_names"][j] for j in order[i]],
                        "classification_confidences": probs[i][order[i]].tolist(),
                        key: {f"heatmap_image_class_{cid}": np.ascontiguousarray(cams[i])},
                    })
            return results
        finally:
            m.core.set_keep(old)


@operator
def gen_dl_model_heatmap(dlmodel_handle: Any, dlsample: Any, heatmap_method: Any,
                         target_classes: Any, gen_param: Any) -> list:
    """Infer the samples and compute a heatmap per sample for the target class (one class id,
    or [] for each sample's top class): DLResult dicts with the classification results and
    'heatmap_grad_cam': {'heatmap_image_class_<id>': (H, W) float32 in [0, 1]}, or for
    'guided_grad_cam' 'heatmap_guided_grad_cam': {...: (H, W, C) float32, the guided
    backpropagation's image gradient times the Grad-CAM map}.  GenParam:
    'target_conv_layer' (default: the deepest convolution with an output larger than 1 x 1).
    Inference mode (running statistics, no dropout); weights, statistics and optimizer state
    are not touched."""
    return _heatmap(dlmodel_handle, dlsample, heatmap_method, target_classes, gen_param)


@operator
def gen_dl_model_heatmap_s(dlmodel_handle: Any, dlsample: Any, heatmap_method: Any,
                           target_classes: Any, gen_param: Any) -> dict:
    return single(_heatmap(dlmodel_handle, dlsample, heatmap_method, target_classes, gen_param))

"""A PyTorch twin of a halcdl graph spec.

`TorchTwin(spec)` is a torch.nn.Module that computes exactly what docs/internals.md says
the spec's ops compute, with parameters in PyTorch layouts under halcdl's names
(`NODE.weight`, `NODE.bias`, `NODE.scale`, `NODE.shift`, `NODE.running_mean`,
`NODE.running_var`). There is no torchvision here: for the benchmarks this module *is*
the PyTorch reference architecture, and for the golden tests it is the forward pass of the
independent reference implementation (the optimizer and the loss are written out by hand
in the tests, never taken from halcdl).

    twin = TorchTwin(model.spec)          # model: a halcdl model handle
    twin.load_from_halcdl(model.core)     # copy every parameter (incl. running stats)
    logits = twin(x_nchw)                 # (N, K)
    twin.copy_to_halcdl(model.core)       # and back

Op semantics (from docs/internals.md):
  conv     F.conv2d(stride, padding, dilation, groups), optional bias
  bn       batch statistics in training (biased variance for normalising, running stats
           updated with `bn_momentum` in PyTorch's convention and the unbiased variance),
           running statistics at inference
  relu / relu6, maxpool (floor mode), avgpool (padding excluded from the count),
  gap (N,C,1,1), fc (input flattened in C,H,W order; `in_features` attribute, default
  the input's channels), add, concat (channel axis),
  dropout (inverted; identity at inference), softmax (over channels),
  deconv   F.conv_transpose2d(stride, padding, output_padding, dilation), weight (I, O, kh, kw),
           optional bias
  upsample_nearest / upsample_bilinear   F.interpolate(scale_factor=scale), bilinear with
           align_corners=False
  sigmoid, tanh; depth_to_space (crd: F.pixel_shuffle, else ONNX's DCR order);
  resize_nearest / resize_bilinear   F.interpolate(size=(height, width)), 'nearest-exact' /
           'bilinear' with align_corners=False; reshape (per sample, NCHW order);
  permute (torch.permute of the C, H, W axes by `perm`); depth_max (torch.max over the
           channels, its index as a float with `argmax`); lrn (F.local_response_norm);
  reduce (sum / mean / L2 norm over `axes` of N C H W by `mode` 0 / 1 / 2, keepdim);
  matmul (op(A) @ op(B) over the last two axes, op transposes by trans_a / trans_b)
The output is flattened to (N, K) when the last node gives (N, K, 1, 1).
"""
from __future__ import annotations

from typing import Dict, Iterable, List

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# role of every parameter suffix: "weight" params get weight_prior, "bias" params do not,
# "state" params are not trained (bn running statistics).
SUFFIX_ROLE = {
    "weight": "weight", "bias": "bias",
    "scale": "weight", "shift": "bias",
    "running_mean": "state", "running_var": "state",
}

OPS = ("input", "conv", "bn", "relu", "relu6", "maxpool", "avgpool", "gap", "fc", "add",
       "concat", "dropout", "softmax", "deconv", "upsample_nearest", "upsample_bilinear",
       "sigmoid", "tanh", "depth_to_space", "resize_nearest", "resize_bilinear", "reshape",
       "permute", "depth_max", "lrn", "reduce", "matmul")


def _pair(v) -> tuple:
    if isinstance(v, (list, tuple)):
        assert len(v) == 2, v
        return int(v[0]), int(v[1])
    return int(v), int(v)


def depth_to_space(x: torch.Tensor, b: int, crd: bool = True) -> torch.Tensor:
    """ONNX's DepthToSpace: CRD (= F.pixel_shuffle) or DCR."""
    if crd:
        return F.pixel_shuffle(x, b)
    n, c, h, w = x.shape
    co = c // (b * b)
    return x.reshape(n, b, b, co, h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, co, h * b, w * b)


def param_shapes(spec: List[dict], in_channels: int | None = None) -> Dict[str, tuple]:
    """{halcdl param name: shape} for a spec, in spec order (weights before bias per node).
    Channel counts are inferred by walking the graph."""
    chans: Dict[str, int | None] = {}
    shapes: Dict[str, tuple] = {}
    for node in spec:
        op, name, ins = node["op"], node["name"], node.get("inputs", [])
        if op == "input":
            chans[name] = int(in_channels if in_channels is not None else node["channels"])
        elif op == "conv":
            c = chans[ins[0]]
            kh, kw = _pair(node["kernel"])
            g = int(node.get("groups", 1))
            o = int(node["out_channels"])
            shapes[f"{name}.weight"] = (o, c // g, kh, kw)
            if node.get("bias", True):
                shapes[f"{name}.bias"] = (o,)
            chans[name] = o
        elif op == "deconv":
            c = chans[ins[0]]
            kh, kw = _pair(node["kernel"])
            o = int(node["out_channels"])
            shapes[f"{name}.weight"] = (c, o, kh, kw)
            if node.get("bias", True):
                shapes[f"{name}.bias"] = (o,)
            chans[name] = o
        elif op == "bn":
            c = chans[ins[0]]
            for s in ("scale", "shift", "running_mean", "running_var"):
                shapes[f"{name}.{s}"] = (c,)
            chans[name] = c
        elif op == "fc":
            o = int(node["out_features"])
            # like the engine: `in_features` when given (flattened C*H*W), else the input's
            # channel count (an input of spatial size 1x1)
            shapes[f"{name}.weight"] = (o, int(node.get("in_features", chans[ins[0]])))
            if node.get("bias", True):
                shapes[f"{name}.bias"] = (o,)
            chans[name] = o
        elif op == "concat":
            chans[name] = sum(chans[i] for i in ins)
        elif op == "depth_to_space":
            chans[name] = chans[ins[0]] // int(node.get("block_size", 2)) ** 2
        elif op == "reshape":
            chans[name] = int(node["channels"])
        elif op == "permute":
            chans[name] = int(node.get("channels", chans[ins[0]]))
        elif op == "depth_max" or (op == "reduce" and 1 in node["axes"]):
            chans[name] = 1
        elif op in OPS:
            chans[name] = chans[ins[0]]
        else:
            raise ValueError(f"torch_twin: unknown op {op!r} in node {name!r}")
    return shapes


class TorchTwin(nn.Module):
    """nn.Module computing a halcdl spec. See the module docstring."""

    def __init__(self, spec: List[dict], image_hw: tuple | None = None,
                 in_channels: int | None = None, bn_momentum: float = 0.1,
                 dtype=torch.float32):
        super().__init__()
        self.spec = [dict(n) for n in spec]
        for n in self.spec:
            if n["op"] not in OPS:
                raise ValueError(f"torch_twin: unknown op {n['op']!r} in node {n['name']!r}")
        assert self.spec[0]["op"] == "input", "the first node must be the input"
        self.bn_momentum = bn_momentum
        # optional hook relu_fn(node_name, x) -> relu(x), e.g. to record the inputs of every
        # ReLU or to choose the derivative at points float32 cannot place (test_training_golden)
        self.relu_fn = None
        # optional dict: forward() stores every node's output under its name (introspection)
        self.record = None
        self.in_channels = int(in_channels if in_channels is not None
                               else self.spec[0]["channels"])
        shapes = param_shapes(self.spec, self.in_channels)
        self.image_hw = image_hw     # informational; shapes follow the spec as in the engine
        # torch keys may not contain '.', so parameters live under k0, k1, ... and
        # self.names maps halcdl names to those keys.
        self.names: Dict[str, str] = {}
        self.roles: Dict[str, str] = {}
        self.p = nn.ParameterDict()
        for i, (hname, shape) in enumerate(shapes.items()):
            key = f"k{i}"
            suffix = hname.rsplit(".", 1)[1]
            role = SUFFIX_ROLE[suffix]
            init = torch.ones(shape, dtype=dtype) if suffix in ("scale", "running_var") \
                else torch.zeros(shape, dtype=dtype)
            if role == "state":
                self.register_buffer(key, init)
            else:
                self.p[key] = nn.Parameter(init)
            self.names[hname] = key
            self.roles[hname] = role

    # -- parameter access under halcdl names -----------------------------------------------
    def tensor(self, hname: str) -> torch.Tensor:
        key = self.names[hname]
        return self.p[key] if key in self.p else getattr(self, key)

    def halcdl_names(self, role: str | None = None) -> List[str]:
        return [n for n in self.names if role is None or self.roles[n] == role]

    def named_trainable(self) -> Iterable[tuple]:
        """(halcdl name, role, parameter) for every trainable parameter."""
        for n, key in self.names.items():
            if self.roles[n] != "state":
                yield n, self.roles[n], self.p[key]

    def state_numpy(self) -> Dict[str, np.ndarray]:
        return {n: self.tensor(n).detach().cpu().numpy().copy() for n in self.names}

    def load_state(self, state: Dict[str, np.ndarray]) -> None:
        with torch.no_grad():
            for n, arr in state.items():
                t = self.tensor(n)
                a = torch.as_tensor(np.asarray(arr), dtype=t.dtype)
                if tuple(a.shape) != tuple(t.shape):
                    raise ValueError(f"torch_twin: {n}: shape {tuple(a.shape)} != "
                                     f"twin {tuple(t.shape)}")
                t.copy_(a)

    def load_from_halcdl(self, core_model) -> None:
        """Copy every parameter (weights, biases, bn scale/shift and running stats) from a
        halcdl core.Model (or a model handle with .core). Names must match both ways."""
        core_model = getattr(core_model, "core", core_model)
        theirs = list(core_model.param_names())
        if set(theirs) != set(self.names):
            raise ValueError("torch_twin: parameter names differ: only in halcdl: "
                             f"{sorted(set(theirs) - set(self.names))}, only in twin: "
                             f"{sorted(set(self.names) - set(theirs))}")
        self.load_state({n: core_model.get_param(n) for n in theirs})

    def copy_to_halcdl(self, core_model) -> None:
        core_model = getattr(core_model, "core", core_model)
        for n, arr in self.state_numpy().items():
            core_model.set_param(n, np.ascontiguousarray(arr, dtype=np.float32))

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vals: Dict[str, torch.Tensor] = {}
        out = x
        for node in self.spec:
            op, name, ins = node["op"], node["name"], node.get("inputs", [])
            if op == "input":
                out = x
            else:
                a = vals[ins[0]]
                if op == "conv":
                    out = F.conv2d(
                        a, self.tensor(f"{name}.weight"),
                        self.tensor(f"{name}.bias") if f"{name}.bias" in self.names else None,
                        stride=_pair(node.get("stride", 1)), padding=_pair(node.get("pad", 0)),
                        dilation=_pair(node.get("dilation", 1)), groups=int(node.get("groups", 1)))
                elif op == "deconv":
                    out = F.conv_transpose2d(
                        a, self.tensor(f"{name}.weight"),
                        self.tensor(f"{name}.bias") if f"{name}.bias" in self.names else None,
                        stride=_pair(node.get("stride", 1)), padding=_pair(node.get("pad", 0)),
                        output_padding=_pair(node.get("output_padding", 0)),
                        dilation=_pair(node.get("dilation", 1)))
                elif op == "upsample_nearest":
                    out = F.interpolate(a, scale_factor=int(node.get("scale", 2)), mode="nearest")
                elif op == "upsample_bilinear":
                    out = F.interpolate(a, scale_factor=int(node.get("scale", 2)),
                                        mode="bilinear", align_corners=False)
                elif op == "sigmoid":
                    out = torch.sigmoid(a)
                elif op == "tanh":
                    out = torch.tanh(a)
                elif op == "depth_to_space":
                    out = depth_to_space(a, int(node.get("block_size", 2)), bool(node.get("crd", True)))
                elif op == "reshape":
                    out = a.reshape(a.shape[0], int(node["channels"]), int(node["height"]),
                                    int(node["width"]))
                elif op == "permute":
                    out = a.permute(0, *[1 + int(p) for p in node["perm"]])
                elif op == "depth_max":
                    v, i = torch.max(a, 1, keepdim=True)
                    out = i.to(a.dtype) if node.get("argmax", False) else v
                elif op == "lrn":
                    out = F.local_response_norm(a, int(node.get("size", 5)), float(node.get("alpha", 1e-4)),
                                                float(node.get("beta", 0.75)), float(node.get("k", 1.0)))
                elif op == "matmul":
                    z = vals[ins[1]]
                    out = ((a.transpose(2, 3) if node.get("trans_a", False) else a)
                           @ (z.transpose(2, 3) if node.get("trans_b", False) else z))
                elif op == "reduce":
                    ax = [int(d) for d in node["axes"]]
                    mode = int(node.get("mode", 0))
                    out = (a.sum(ax, keepdim=True) if mode == 0 else a.mean(ax, keepdim=True) if mode == 1
                           else a.square().sum(ax, keepdim=True).sqrt())
                elif op in ("resize_nearest", "resize_bilinear"):
                    size = (int(node["height"]), int(node["width"]))
                    out = (F.interpolate(a, size=size, mode="nearest-exact") if op == "resize_nearest"
                           else F.interpolate(a, size=size, mode="bilinear", align_corners=False))
                elif op == "bn":
                    out = F.batch_norm(
                        a, self.tensor(f"{name}.running_mean"), self.tensor(f"{name}.running_var"),
                        self.tensor(f"{name}.scale"), self.tensor(f"{name}.shift"),
                        training=self.training, momentum=self.bn_momentum,
                        eps=float(node.get("eps", 1e-5)))
                elif op == "relu":
                    out = F.relu(a) if self.relu_fn is None else self.relu_fn(name, a)
                elif op == "relu6":
                    out = F.relu6(a)
                elif op == "maxpool":
                    out = F.max_pool2d(a, _pair(node["kernel"]),
                                       _pair(node.get("stride", node["kernel"])),
                                       _pair(node.get("pad", 0)))
                elif op == "avgpool":
                    out = F.avg_pool2d(a, _pair(node["kernel"]),
                                       _pair(node.get("stride", node["kernel"])),
                                       _pair(node.get("pad", 0)), count_include_pad=False)
                elif op == "gap":
                    out = a.mean(dim=(2, 3), keepdim=True)
                elif op == "fc":
                    out = F.linear(a.flatten(1), self.tensor(f"{name}.weight"),
                                   self.tensor(f"{name}.bias")
                                   if f"{name}.bias" in self.names else None)
                elif op == "add":
                    out = a + vals[ins[1]]
                elif op == "concat":
                    out = torch.cat([vals[i] for i in ins], dim=1)
                elif op == "dropout":
                    out = F.dropout(a, float(node.get("p", 0.5)), training=self.training)
                elif op == "softmax":
                    out = F.softmax(a, dim=1)
                else:  # pragma: no cover - rejected in __init__
                    raise ValueError(op)
            vals[name] = out
            if self.record is not None:
                self.record[name] = out
        return out.flatten(1) if out.dim() == 4 and out.shape[2:] == (1, 1) else out


def from_model(model, dtype=torch.float32, bn_momentum: float = 0.1) -> TorchTwin:
    """Twin of a halcdl model handle (uses model.spec, model.core and the image size)."""
    import halcdl as ha
    h = int(ha.get_dl_model_param_s(model, "image_height"))
    w = int(ha.get_dl_model_param_s(model, "image_width"))
    c = int(ha.get_dl_model_param_s(model, "image_num_channels"))
    twin = TorchTwin(model.spec, image_hw=(h, w), in_channels=c, bn_momentum=bn_momentum,
                     dtype=dtype)
    twin.load_from_halcdl(model.core)
    return twin


def images_to_nchw(samples, dtype=torch.float32) -> torch.Tensor:
    """Stack DLSample images ((H, W) or (H, W, C)) into an NCHW tensor."""
    imgs = [np.asarray(s["image"]) for s in samples]
    imgs = [im[:, :, None] if im.ndim == 2 else im for im in imgs]
    return torch.from_numpy(np.stack(imgs).astype(np.float32)).permute(0, 3, 1, 2) \
        .contiguous().to(dtype)

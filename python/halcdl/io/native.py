"""halcdl's native model file: a safetensors file with the model in its metadata.

See docs/model_format.md for the format.  :func:`write_model` and :func:`read_model` raise
HOperatorError with HALCON's numbers (7780 read, 7781 write, 7782 newer format version) and
a message that names the file and the problem.  Reading parses JSON and numbers only; it
never runs code from the file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from typing import Any

import numpy as np

from ..errors import (
    H_ERR_DL_FILE_READ,
    H_ERR_DL_FILE_WRITE,
    H_ERR_DL_FILE_WRONG_VERSION,
    H_ERR_MEM,
    HOperatorError,
)
from ..models.handle import DLModel
from .arch import arch_from_record, arch_record
from .files import (
    FileFormatError,
    atomic_write,
    canonical_json,
    load_json,
    parse_safetensors,
    tensor_table,
    tensor_view,
    write_safetensors,
)

__all__ = ["FORMAT", "FORMAT_VERSION", "write_model", "read_model", "read_model_bytes"]

FORMAT = "halcdl.dl_model"
FORMAT_VERSION = 1
_M1, _M2 = "optimizer/m1", "optimizer/m2"


def _writer() -> str:
    try:
        from importlib.metadata import version

        return f"halcdl {version('halcdl')}"
    except Exception:  # source tree
        return "halcdl"


def checksum(meta_without_checksum: dict, table: dict, arrays) -> str:
    """``sha256:<hex>`` of the canonical JSON header without the checksum entry, followed by
    the data section (docs/model_format.md)."""
    h = hashlib.sha256()
    h.update(canonical_json({"__metadata__": meta_without_checksum, **table}).encode("ascii"))
    for a in arrays:
        h.update(memoryview(a.reshape(-1)).cast("B") if isinstance(a, np.ndarray) else a)
    return "sha256:" + h.hexdigest()


# --------------------------------------------------------------------------------------------
# write
# --------------------------------------------------------------------------------------------
def model_contents(m: DLModel) -> tuple[dict, list]:
    """(metadata, [(tensor name, array)]) of a model: a consistent snapshot (call it with the
    handle's lock held)."""
    core = m.core
    state = dict(core.get_state())
    tensors = [(name, np.asarray(core.get_param(name), dtype=np.float32))
               for name in core.param_names()]
    names = {n for n, _ in tensors}
    opt: dict[str, Any] = {"adam_t": int(state["adam_t"]), "steps": int(state["steps"]),
                           "seed": int(state["seed"])}
    for key, tname in (("m1", _M1), ("m2", _M2)):
        if tname in names:
            raise ValueError(f"a parameter is named {tname!r}, a name the format reserves")
        arr = np.asarray(state[key], dtype=np.float32)
        opt[key] = bool(np.any(arr))  # all-zero moments are not stored (fresh or SGD)
        if opt[key]:
            tensors.append((tname, arr))
    model = {
        "architecture": arch_record(m.arch),
        "seed": int(m.seed),
        "spec": m.spec,
        "params": m.params,
        "optimizer": opt,
    }
    get_precision = getattr(core, "get_precision", None)  # engines with bfloat16 training
    if get_precision is not None:
        model["precision"] = str(get_precision())
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "writer": _writer(),
        "model": canonical_json(model),
    }
    return meta, tensors


def write_model(m: DLModel, path: str) -> None:
    """Write ``m`` (the caller holds its lock) to ``path`` atomically; 7781 on failure."""
    try:
        meta, tensors = model_contents(m)
        table, arrays = tensor_table(tensors)
    except (TypeError, ValueError) as err:  # parameters JSON cannot hold (NaN, objects)
        raise HOperatorError(H_ERR_DL_FILE_WRITE,
                             f"cannot write model file {path!r}: {err}") from None
    meta["checksum"] = checksum(meta, table, arrays)
    header = {"__metadata__": meta, **table}
    try:
        atomic_write(path, lambda put: write_safetensors(put, header, arrays))
    except OSError as err:
        reason = err.strerror or str(err)
        raise HOperatorError(H_ERR_DL_FILE_WRITE,
                             f"cannot write model file {path!r}: {reason}") from None


# --------------------------------------------------------------------------------------------
# read
# --------------------------------------------------------------------------------------------
def _fail(path: str, what: str, code: int = H_ERR_DL_FILE_READ) -> HOperatorError:
    return HOperatorError(code, f"cannot read model file {path!r}: {what}")


def format_error(path: str, err: FileFormatError) -> HOperatorError:
    """7780 for a structural error of the container."""
    what = {"truncated": "the file is truncated",
            "corrupted": "the file is corrupted",
            "magic": "not a halcdl model file (wrong magic)"}[err.kind]
    return _fail(path, f"{what}: {err}")


def read_model(path: str) -> DLModel:
    """Read a native model file (5200 handling is the caller's; this raises 7780/7782)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise _fail(path, err.strerror or str(err)) from None
    return read_model_bytes(data, path)


def read_model_bytes(data: bytes, path: str, parsed: tuple | None = None) -> DLModel:
    """The model in a native file's bytes (``path`` names the file in messages); ``parsed``:
    ``(metadata, table, data_section)`` when the container was parsed already."""
    try:
        meta, table, body = parse_safetensors(data) if parsed is None else parsed
    except FileFormatError as err:
        raise format_error(path, err) from None
    meta = dict(meta)
    fmt = meta.get("format")
    if fmt != FORMAT:
        raise _fail(path, f"not a halcdl model file (wrong magic: format {fmt!r}, expected "
                          f"{FORMAT!r})")
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise _fail(path, f"the file is corrupted: format_version "
                          f"{meta.get('format_version')!r} is not a number") from None
    if version > FORMAT_VERSION:
        raise _fail(path, f"format version {version} was written by a newer halcdl "
                          f"({meta.get('writer', '?')}); this one reads versions up to "
                          f"{FORMAT_VERSION}", H_ERR_DL_FILE_WRONG_VERSION)
    if version < 1:
        raise _fail(path, f"the file is corrupted: format_version {version}")
    stored = meta.pop("checksum", None)
    if stored is None:
        raise _fail(path, "the file is corrupted: it has no checksum")
    if checksum(meta, table, [body]) != stored:
        raise _fail(path, "checksum mismatch: the file is corrupted")
    try:
        return _build(meta, table, body)
    except HOperatorError as err:
        if err.error_code == H_ERR_MEM:
            raise
        raise _fail(path, f"the content is inconsistent: {err.message}") from None
    except FileFormatError as err:
        raise _fail(path, f"the content is inconsistent: {err}") from None
    except MemoryError:
        raise HOperatorError(H_ERR_MEM, f"cannot read model file {path!r}: not enough "
                                        f"memory") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError,
            RecursionError) as err:
        raise _fail(path, f"the content is inconsistent: {type(err).__name__}: {err}") \
            from None


def _ints(v: Any, n: int | None = None) -> bool:
    return (isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool)
                                        for x in v) and (n is None or len(v) == n))


_U64 = 2**64
_INT63 = 2**63
_FLT_MAX = float(np.finfo(np.float32).max)
_FLT_TINY = float(np.finfo(np.float32).tiny)
# (lo, hi, lo_open, hi_open, normal) as set_dl_model_param accepts them
_FLOAT_RANGES = {
    "learning_rate": (0.0, _FLT_MAX, False, False, False),
    "momentum": (0.0, 1.0, False, False, False),
    "weight_prior": (0.0, _FLT_MAX, False, False, False),
    "adam_beta1": (0.0, 1.0, False, True, False),
    "adam_beta2": (0.0, 1.0, False, True, False),
    "adam_epsilon": (0.0, _FLT_MAX, True, False, True),
    "batchnorm_momentum": (0.0, 1.0, False, False, False),
    "image_range_min": (-1e30, 1e30, False, False, False),
    "image_range_max": (-1e30, 1e30, False, False, False),
}
_INT_RANGES = {"image_width": 32768, "image_height": 32768, "image_num_channels": 3,
               "batch_size": 65536, "batch_size_multiplier": 65536}


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _uint(v: Any, bound: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < bound


def _check_params(params: dict, k: int) -> None:
    """Every saved parameter within what set_dl_model_param accepts (ValueError)."""
    class_ids = params["class_ids"]
    if not _ints(class_ids) or len(class_ids) != k or \
            not all(0 <= c < _INT63 for c in class_ids):
        raise ValueError("class_ids must be non-negative 64-bit integers, one per output")
    if len(set(class_ids)) != k:
        raise ValueError("class_ids are not unique")
    if not (isinstance(params["class_names"], list) and len(params["class_names"]) == k
            and all(isinstance(s, str) for s in params["class_names"])):
        raise ValueError("class_names must be one string per class id")
    cw = params["class_weights"]
    if cw is not None:
        if not (isinstance(cw, list) and len(cw) == k and all(_num(w) for w in cw)):
            raise ValueError("class_weights must be null or one number per class id")
        fw = [float(w) for w in cw]  # OverflowError for 10**400: caught by the caller
        if any(not math.isfinite(w) or w < 0 or w > _FLT_MAX or 0 < w < _FLT_TINY
               for w in fw) or sum(fw) <= 0 or sum(fw) > _FLT_MAX:
            raise ValueError(f"class_weights must be float32 numbers >= 0, not all 0: {cw}")
    for key, hi in _INT_RANGES.items():
        v = params[key]
        if not _ints([v]) or not 1 <= v <= hi:
            raise ValueError(f"{key} must be an integer in [1, {hi}], got {v!r}")
    for key, (lo, hi, lo_open, hi_open, normal) in _FLOAT_RANGES.items():
        v = params[key]
        if not _num(v):
            raise ValueError(f"{key} must be a number")
        f = float(v)
        if not math.isfinite(f) or (f <= lo if lo_open else f < lo) or \
                (f >= hi if hi_open else f > hi) or (normal and f < _FLT_TINY):
            raise ValueError(f"{key} = {v!r} is out of range")
        params[key] = f
    md = params["meta_data"]
    if not isinstance(md, dict):
        raise ValueError("meta_data must be an object")
    for key, v in md.items():
        if not (isinstance(v, str) or (_num(v) and (isinstance(v, int) or math.isfinite(v)))):
            raise ValueError(f"meta_data {key!r} must be a string or a finite number")


def _check_tensors(spec: list, table: dict, body: memoryview, opt: dict) -> int:
    """The tensor table against the parameters the spec declares, before any model is
    built (nothing allocated yet): names, dtypes (optimizer state included), shapes, finite
    values, running variances >= 0.  Returns the number of trainable floats."""
    declared = core_module().spec_params(spec)  # graph only: 7735 for an invalid spec
    expected = {name: (tuple(shape), kind) for name, shape, kind in declared}
    n_train = sum(math.prod(shape) for shape, kind in expected.values() if kind != "state")
    want = set(expected)
    for key, tname in (("m1", _M1), ("m2", _M2)):
        if opt.get(key):
            want.add(tname)
            expected[tname] = ((n_train,), "optimizer")
    if set(table) != want:
        missing = sorted(want - set(table))[:5]
        extra = sorted(set(table) - want)[:5]
        raise ValueError(f"tensors do not match the graph (missing {missing}, unexpected "
                         f"{extra})")
    for name, (shape, kind) in expected.items():
        e = table[name]
        if e["dtype"] != "F32":
            raise ValueError(f"tensor {name!r} is {e['dtype']}, not F32")
        if tuple(e["shape"]) != shape:
            raise ValueError(f"tensor {name!r} has shape {e['shape']}, the graph says "
                             f"{list(shape)}")
        a = tensor_view(table, body, name)
        if not np.isfinite(a).all():
            raise ValueError(f"tensor {name!r} holds NaN or Inf")
        if name.endswith(".running_var") and kind == "state" and (a < 0).any():
            raise ValueError(f"tensor {name!r} holds a negative running variance")
    return n_train


def core_module():
    from .._native import core

    return core


def _build(meta: dict, table: dict, body: memoryview) -> DLModel:
    if not isinstance(meta.get("model"), str):
        raise ValueError("the metadata has no model description")
    model = load_json(meta["model"], "the model description")
    if not isinstance(model, dict):
        raise ValueError("the model description is not an object")
    spec = model["spec"]
    saved = model["params"]
    opt = model["optimizer"]
    if not (isinstance(spec, list) and spec and all(isinstance(n, dict) for n in spec)):
        raise ValueError("spec must be a non-empty list of nodes")
    if not isinstance(saved, dict) or not isinstance(opt, dict):
        raise ValueError("params and optimizer must be objects")
    class_ids = saved["class_ids"]
    if not _ints(class_ids) or not class_ids:
        raise ValueError("class_ids must be a non-empty list of integers")
    k = len(class_ids)
    if not (_uint(model["seed"], _U64) and _uint(opt["adam_t"], _INT63)
            and _uint(opt["steps"], _U64) and _uint(opt["seed"], _U64)):
        raise ValueError("seed, adam_t and steps must be integers in [0, 2**64) "
                         "(adam_t < 2**63)")
    if not _ints([spec[0].get("channels")]) or spec[0]["channels"] not in (1, 3):
        raise ValueError("the input node must have 1 or 3 channels")
    channels = int(spec[0]["channels"])
    _check_tensors(spec, table, body, opt)  # before anything is allocated
    arch = arch_from_record(model["architecture"], spec, k, channels)
    m = DLModel(arch, int(model["seed"]), num_classes=k)  # builds the engine model from spec
    params = copy.deepcopy(m.params)
    for key, value in saved.items():
        if key in params:
            params[key] = value
    _check_params(params, k)
    if params["image_num_channels"] != channels:
        raise ValueError("image_num_channels differs from the graph's input channels")

    core = m.core
    names = list(core.param_names())
    expected = set(names)
    opt = model["optimizer"]
    for key, tname in (("m1", _M1), ("m2", _M2)):
        if opt.get(key):
            expected.add(tname)
    if set(table) != expected:
        missing = sorted(expected - set(table))[:5]
        extra = sorted(set(table) - expected)[:5]
        raise ValueError(f"tensors do not match the graph (missing {missing}, unexpected "
                         f"{extra})")
    for name in names:
        core.set_param(name, tensor_view(table, body, name))  # 7735 on a shape mismatch
    core.set_class_ids([int(c) for c in class_ids])
    params["runtime"] = "cpu"  # a read model starts on the CPU; set runtime to move it
    m.params = params
    m.mark_hparams_dirty()
    m.push_hparams()  # before set_state: a solver change would reset the optimizer state
    n = int(core.num_trainable_params())
    state = {"adam_t": int(opt["adam_t"]), "steps": int(opt["steps"]), "seed": int(opt["seed"])}
    for key, tname in (("m1", _M1), ("m2", _M2)):
        state[key] = (tensor_view(table, body, tname) if opt.get(key)
                      else np.zeros(n, dtype=np.float32))
    core.set_state(state)
    if "precision" in model and hasattr(core, "set_precision"):
        precision = str(model["precision"])
        # A model trained in bfloat16 on a GPU is read on the CPU (runtime 'cpu'); a CPU
        # without bfloat16 instructions keeps float32 then (the weights are fp32 masters in
        # either precision): set 'precision' again after moving the model to the GPU.
        if precision != "bfloat16" or core_module().bf16_supported():
            core.set_precision(precision)
    return m

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
    HOperatorError,
)
from ..models.handle import DLModel
from .arch import arch_from_record, arch_record
from .files import (
    FileFormatError,
    atomic_write,
    canonical_json,
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


def read_model(path: str) -> DLModel:
    """Read a native model file (5200 handling is the caller's; this raises 7780/7782)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise _fail(path, err.strerror or str(err)) from None
    return read_model_bytes(data, path)


def read_model_bytes(data: bytes, path: str) -> DLModel:
    """The model in a native file's bytes (``path`` names the file in messages)."""
    try:
        meta, table, body = parse_safetensors(data)
    except FileFormatError as err:
        what = {"truncated": "the file is truncated",
                "corrupted": "the file is corrupted",
                "magic": "not a halcdl model file (wrong magic)"}[err.kind]
        raise _fail(path, f"{what}: {err}") from None
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
        raise _fail(path, f"the content is inconsistent: {err.message}") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise _fail(path, f"the content is inconsistent: {type(err).__name__}: {err}") \
            from None


def _ints(v: Any, n: int | None = None) -> bool:
    return (isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool)
                                        for x in v) and (n is None or len(v) == n))


def _build(meta: dict, table: dict, body: memoryview) -> DLModel:
    model = json.loads(meta["model"])
    spec = model["spec"]
    saved = model["params"]
    class_ids = saved["class_ids"]
    if not _ints(class_ids) or not class_ids:
        raise ValueError("class_ids must be a non-empty list of integers")
    k = len(class_ids)
    channels = int(spec[0]["channels"])
    arch = arch_from_record(model["architecture"], spec, k, channels)
    m = DLModel(arch, int(model["seed"]), num_classes=k)  # builds the engine model from spec
    params = copy.deepcopy(m.params)
    for key, value in saved.items():
        if key in params:
            params[key] = value
    if not (isinstance(params["class_names"], list) and len(params["class_names"]) == k
            and all(isinstance(s, str) for s in params["class_names"])):
        raise ValueError("class_names must be one string per class id")
    cw = params["class_weights"]
    if cw is not None and not (isinstance(cw, list) and len(cw) == k
                               and all(isinstance(w, (int, float)) for w in cw)):
        raise ValueError("class_weights must be null or one number per class id")
    for key in ("image_width", "image_height", "image_num_channels", "batch_size",
                "batch_size_multiplier"):
        if not _ints([params[key]]) or params[key] < 1:
            raise ValueError(f"{key} must be a positive integer")
    if params["image_num_channels"] != channels:
        raise ValueError("image_num_channels differs from the graph's input channels")
    for key in ("learning_rate", "momentum", "weight_prior", "adam_beta1", "adam_beta2",
                "adam_epsilon", "batchnorm_momentum", "image_range_min", "image_range_max"):
        if not isinstance(params[key], (int, float)) or not math.isfinite(params[key]):
            raise ValueError(f"{key} must be a finite number")
        params[key] = float(params[key])
    if not isinstance(params["meta_data"], dict):
        raise ValueError("meta_data must be an object")

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
        if table[name]["dtype"] != "F32":
            raise ValueError(f"tensor {name!r} is not float32")
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
        core.set_precision(str(model["precision"]))
    return m

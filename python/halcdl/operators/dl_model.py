"""Deep-learning model operators: read_dl_model, write_dl_model, set/get_dl_model_param,
train_dl_model_batch, apply_dl_model, clear_dl_model.

Every operator validates all of its arguments before it changes anything, so a call that
raises leaves the model exactly as it was.  Error numbers: see docs/operators.md.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from typing import Any, Callable

import numpy as np

from ..errors import (
    H_ERR_CNN_GPU_REQUIRED,
    H_ERR_CNN_INVALID_INPUT_DATA,
    H_ERR_CNN_INVALID_INPUT_DEPTH,
    H_ERR_CNN_INVALID_INPUT_SIZE,
    H_ERR_CNNGRAPH_NO_IMAGE_RESIZE,
    H_ERR_DL_CLASS_IDS_INVALID,
    H_ERR_DL_CLASS_IDS_INVALID_OVERLAP,
    H_ERR_DL_CLASS_IDS_NOT_UNIQUE,
    H_ERR_DL_FILE_READ,
    H_ERR_DL_INPUT_WRONG_LENGTH,
    H_ERR_DL_INPUT_WRONG_TYPE,
    H_ERR_DL_INPUT_WRONG_VALUES,
    H_ERR_DL_INPUTS_MISSING,
    H_ERR_DL_MODEL_INVALID_NUM_SAMPLES,
    H_ERR_DL_MODEL_RUNTIME,
    H_ERR_MEM,
    H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM,
    H_ERR_DL_SOLVER_INVALID_TYPE,
    H_ERR_DL_WRONG_BS_MULTIPLIER,
    H_ERR_FNF,
    H_ERR_HANDLE_CLEARED,
    HOperatorError,
    NotPretrainedWarning,
)
from .. import io as model_io
from ..models.handle import DLModel
from ..models.zoo import ARCHITECTURES, get_architecture
from ._tuple import (
    INT32_MAX,
    as_str,
    check_float32,
    to_float,
    is_int,
    is_number,
    is_str,
    operator,
    py_value,
    single,
    to_scalar,
    to_tuple,
    wrong_num,
    wrong_type,
    wrong_value,
)
from .. import _gpu
from .. import distributed
from .dl_device import DLDevice, cpu_device, gpu_device
from .system import next_model_seed

__all__ = [
    "DLModel",
    "read_dl_model",
    "write_dl_model",
    "set_dl_model_param",
    "get_dl_model_param",
    "get_dl_model_param_s",
    "train_dl_model_batch",
    "apply_dl_model",
    "apply_dl_model_s",
    "clear_dl_model",
]

_NOT_PRETRAINED_WARNED = False
_NOT_PRETRAINED_TEXT = (
    "halcdl ships no pretrained (ImageNet) weights: {name} is randomly initialised "
    "(Kaiming normal, seeded by set_system('seed_rand', ...)). Train it from scratch; "
    "its meta_data says so. (This warning is shown once per process.)"
)


# --------------------------------------------------------------------------------------------
# handle checks
# --------------------------------------------------------------------------------------------
def check_model(handle: Any, pos: int = 1) -> DLModel:
    """The model behind ``handle`` (1200+pos if it is not a model handle, 2454 if cleared)."""
    if isinstance(handle, (list, tuple)) and len(handle) == 1:
        handle = handle[0]
    if not isinstance(handle, DLModel):
        raise wrong_type(pos, f"expected a DL model handle, got {type(handle).__name__}")
    if handle.cleared:
        raise HOperatorError(H_ERR_HANDLE_CLEARED, "the DL model handle has been cleared")
    return handle


def _sample_list(batch: Any, pos: int) -> list:
    """A DLSampleBatch as a list (a single dict is a batch of one).  The samples themselves
    are validated by the engine."""
    if isinstance(batch, dict):
        return [batch]
    if isinstance(batch, list):
        return batch
    if isinstance(batch, tuple):
        return list(batch)
    raise wrong_type(pos, f"dlsample_batch must be a dict or a list of dicts, got "
                          f"{type(batch).__name__}")


# --------------------------------------------------------------------------------------------
# read_dl_model
# --------------------------------------------------------------------------------------------
def _warn_not_pretrained(name: str) -> None:
    global _NOT_PRETRAINED_WARNED
    if not _NOT_PRETRAINED_WARNED:
        _NOT_PRETRAINED_WARNED = True
        warnings.warn(_NOT_PRETRAINED_TEXT.format(name=name), NotPretrainedWarning, stacklevel=4)


def create_model(file_name: str) -> DLModel:
    """A new model for a zoo file name (no argument checks, no warning).  Used by
    read_dl_model and by the legacy classifier shim."""
    arch = get_architecture(file_name)
    if arch is None:
        raise KeyError(file_name)
    return DLModel(arch, next_model_seed())


def _file_name(file_name: Any, pos: int) -> str:
    if isinstance(file_name, os.PathLike):
        file_name = os.fspath(file_name)
    if isinstance(file_name, bytes):
        raise wrong_type(pos, "file_name must be a string, got bytes")
    name = as_str(to_scalar(file_name, pos, "one file name"), pos, "file_name")
    if not name:
        raise wrong_value(pos, "file_name must not be empty")
    if "\0" in name:
        raise wrong_value(pos, f"file_name must not contain a NUL character: {name!r}")
    try:
        os.fsencode(name)
    except UnicodeEncodeError:
        raise wrong_value(pos, f"file_name cannot be encoded for the file system "
                               f"(lone surrogate?): {name!r}") from None
    return name


def _existing_file(name: str) -> str | None:
    """The file read_dl_model reads for ``name``: ``name`` itself, else ``name + '.hdl'`` when
    ``name`` has no extension.  A folder of that name is a read error (7780)."""
    candidates = [name]
    if not os.path.splitext(name)[1]:
        candidates.append(name + ".hdl")
    for path in candidates:
        if os.path.isfile(path):
            return path
        if os.path.isdir(path):
            raise HOperatorError(H_ERR_DL_FILE_READ,
                                 f"cannot read model file {path!r}: it is a folder")
    return None


@operator
def read_dl_model(file_name: Any) -> DLModel:
    """Read a model.

    A file of that name (or with ``.hdl`` appended) is read when it exists: a file written by
    write_dl_model (recognised by its content, whatever its extension: weights, optimizer
    state and parameters as written), or an ONNX classification or segmentation network
    (``*.onnx``, needs ``halcdl[onnx]``).  Otherwise the built-in architectures answer to
    HALCON's file names (``pretrained_dl_classifier_compact.hdl`` …, directory ignored,
    ``.hdl`` optional) with randomly initialised weights (warned once per process).
    Errors: 5200 no such file or architecture; 7780 unreadable, truncated or corrupted file,
    wrong magic or checksum; 7782 written by a newer halcdl; 7801 ONNX that cannot be
    imported.  See docs/model_format.md and docs/onnx.md."""
    name = _file_name(file_name, 1)
    arch = get_architecture(name)
    path = _existing_file(name)
    if path is not None:
        try:
            return model_io.read_file(path, next_model_seed())
        except model_io.NotAModelFile as err:
            if arch is None:
                raise
            # e.g. HALCON's own pretrained file next to the script: halcdl cannot read that
            # format, so it builds the architecture of the same name, as without the file
            warnings.warn(f"{err._text}; using halcdl's built-in {arch.file_name} instead",
                          UserWarning, stacklevel=3)
    if arch is None:
        raise HOperatorError(
            H_ERR_FNF,
            f"File not found: {name!r} (built-in models: {', '.join(ARCHITECTURES)})",
        )
    model = DLModel(arch, next_model_seed())
    _warn_not_pretrained(arch.file_name)
    return model


@operator
def write_dl_model(dlmodel_handle: Any, file_name: Any) -> None:
    """Write a model to ``file_name``: everything needed to continue training exactly where
    it stopped (graph, weights, batch-norm statistics, optimizer state, all parameters),
    in halcdl's format (docs/model_format.md), whatever the extension; or, for a name ending
    in ``.onnx``, the inference graph as ONNX (opset 17, needs ``halcdl[onnx]``).  The write
    is atomic: on any error the previous file stays as it was and no partial file is left.
    Errors: 7781 the file cannot be written; 7803 the model cannot be exported to ONNX."""
    m = check_model(dlmodel_handle, 1)
    name = _file_name(file_name, 2)
    with m.lock:
        check_model(m)
        model_io.write_file(m, name)


# --------------------------------------------------------------------------------------------
# parameter validation (each setter validates everything, then applies)
# --------------------------------------------------------------------------------------------
# gen_param_value is control parameter 3 of set_dl_model_param: where HALCON has no more
# specific number, a wrong type is 1203, a wrong value 1303, a wrong number of values 1403.
_VAL = 3


def _one(vals: list, name: str) -> Any:
    if len(vals) != 1:
        raise wrong_num(_VAL, f"{name} takes one value, got {len(vals)}")
    return vals[0]


def _int(v: Any, name: str) -> int:
    if not is_int(v):
        raise wrong_type(_VAL, f"{name} must be an integer, got {v!r}")
    return int(v)


def _float(v: Any, name: str, normal: bool = False) -> float:
    """A number the engine can hold: finite as a float32 (and, with ``normal``, not a nonzero
    value that float32 rounds to a subnormal or 0).  1203 wrong type, 1303 wrong value."""
    if not is_number(v):
        raise wrong_type(_VAL, f"{name} must be a number, got {v!r}")
    f = to_float(v)
    if not math.isfinite(f):
        raise wrong_value(_VAL, f"{name} must be finite, got {f!r}")
    return check_float32(f, name, lambda msg: wrong_value(_VAL, msg), normal)


# Upper bounds of the counts (documented in docs/robustness.md): checked here, before any plan
# or buffer is made, so a huge value fails naming its parameter.
MAX_BATCH_SIZE = 65536
MAX_IMAGE_SIDE = 32768


def _int_param(vals: list, name: str, minimum: int, maximum: int = INT32_MAX) -> int:
    v = _int(_one(vals, name), name)
    if v < minimum or v > maximum:
        raise wrong_value(_VAL, f"{name} must be in [{minimum}, {maximum}], got {v}")
    return v


def _float_param(vals: list, name: str, lo: float, hi: float | None = None,
                 lo_open: bool = False, hi_open: bool = False) -> float:
    v = _float(_one(vals, name), name, normal=lo_open)
    bad_lo = v <= lo if lo_open else v < lo
    bad_hi = hi is not None and (v >= hi if hi_open else v > hi)
    if bad_lo or bad_hi:
        left = "(" if lo_open else "["
        right = ")" if (hi_open or hi is None) else "]"
        upper = "inf" if hi is None else hi
        raise wrong_value(_VAL, f"{name} must be in {left}{lo}, {upper}{right}, got {v}")
    return v


def _choice(vals: list, name: str, choices: tuple, code: int | None = None) -> str:
    v = _one(vals, name)
    msg = f"{name} must be one of {choices}, got {v!r}"
    if not is_str(v):
        raise wrong_type(_VAL, msg) if code is None else HOperatorError(code, msg)
    if str(v) not in choices:
        raise wrong_value(_VAL, msg) if code is None else HOperatorError(code, msg)
    return str(v)


def _check_image_size(m: DLModel, width: int, height: int) -> None:
    """7775 for fixed-size networks, 7722 if too small (zoo minimum, then the engine)."""
    arch = m.arch
    if (width, height) == (m.params["image_width"], m.params["image_height"]):
        return
    if m.is_detection:
        from ..models.detection import check_image_size  # noqa: PLC0415

        check_image_size(m.params, width, height)  # 7730
    if arch.fixed_size:
        raise HOperatorError(
            H_ERR_CNNGRAPH_NO_IMAGE_RESIZE,
            f"{arch.file_name} has fully-connected layers: its image size is fixed to "
            f"{arch.image_width}x{arch.image_height}",
        )
    f = int(arch.size_multiple)
    if f > 1 and (width % f or height % f):
        raise HOperatorError(
            H_ERR_CNN_INVALID_INPUT_SIZE,
            f"{arch.file_name} downsamples by {f} and upsamples back: image_width and "
            f"image_height must be multiples of {f}, got {width}x{height}",
        )
    if width < arch.min_size or height < arch.min_size:
        raise HOperatorError(
            H_ERR_CNN_INVALID_INPUT_SIZE,
            f"{arch.file_name} needs image_width and image_height >= {arch.min_size}, got "
            f"{width}x{height}",
        )
    m.core.output_shape(int(height), int(width))  # raises 7722 itself if too small


def _check_channels(v: Any) -> int:
    c = _int(v, "image_num_channels")
    if c not in (1, 3):
        raise HOperatorError(H_ERR_CNN_INVALID_INPUT_DEPTH,
                             f"image_num_channels must be 1 or 3, got {c}")
    return c


def _set_channels(m: DLModel, c: int) -> None:
    if c == m.params["image_num_channels"]:
        return
    spec, new = m.rebuilt(m.num_classes, c, m.params["class_ids"], m.params["class_weights"])
    m.adopt(spec, new)
    m.params["image_num_channels"] = c


def _set_batch_size(m: DLModel, vals: list) -> None:
    m.params["batch_size"] = _int_param(vals, "batch_size", 1, MAX_BATCH_SIZE)


def _set_multiplier(m: DLModel, vals: list) -> None:
    v = _int(_one(vals, "batch_size_multiplier"), "batch_size_multiplier")
    if v > MAX_BATCH_SIZE:
        raise wrong_value(_VAL, f"batch_size_multiplier must be <= {MAX_BATCH_SIZE}, got {v}")
    if v < 1:
        raise HOperatorError(H_ERR_DL_WRONG_BS_MULTIPLIER,
                             f"batch_size_multiplier must be greater than 0, got {v}")
    m.params["batch_size_multiplier"] = v


def _hparam_setter(name: str, **limits) -> Callable[[DLModel, list], None]:
    def setter(m: DLModel, vals: list) -> None:
        m.params[name] = _float_param(vals, name, **limits)
        m.mark_hparams_dirty()

    return setter


def _set_solver(m: DLModel, vals: list) -> None:
    v = _choice(vals, "solver_type", ("sgd", "adam"), H_ERR_DL_SOLVER_INVALID_TYPE)
    if v != m.params["solver_type"]:
        m.core.reset_optimizer()
        m.params["solver_type"] = v
        m.mark_hparams_dirty()


def _set_class_ids(m: DLModel, vals: list) -> None:
    if not vals:
        raise HOperatorError(H_ERR_DL_CLASS_IDS_INVALID, "class_ids must not be empty")
    for v in vals:
        if not is_int(v) or not 0 <= int(v) < 2**63:
            raise HOperatorError(H_ERR_DL_CLASS_IDS_INVALID,
                                 f"class ids must be non-negative 64-bit integers, got {v!r}")
    ids = [int(v) for v in vals]
    if len(set(ids)) != len(ids):
        raise HOperatorError(H_ERR_DL_CLASS_IDS_NOT_UNIQUE, f"class ids are not unique: {ids}")
    overlap = sorted(set(ids) & set(m.ignore_class_ids))
    if overlap:
        raise HOperatorError(H_ERR_DL_CLASS_IDS_INVALID_OVERLAP,
                             f"class ids {overlap} are also ignore_class_ids")
    p = m.params
    if len(ids) == len(p["class_ids"]):
        m.core.set_class_ids(ids)
        p["class_ids"] = ids
        m.mark_hparams_dirty()  # a detector's class_ids_no_orientation map to new indices
        return
    # new class count: re-create the head (everything else keeps its values)
    spec, new = m.rebuilt(len(ids), p["image_num_channels"], ids, None)
    m.adopt(spec, new)
    p["class_ids"] = ids
    p["class_names"] = [str(i) for i in ids]
    p["class_weights"] = None
    m.mark_hparams_dirty()


def _set_class_names(m: DLModel, vals: list) -> None:
    k = m.num_classes
    if len(vals) != k:
        raise HOperatorError(H_ERR_DL_INPUT_WRONG_LENGTH,
                             f"class_names needs {k} names (one per class id), got {len(vals)}")
    for v in vals:
        if not is_str(v):
            raise HOperatorError(H_ERR_DL_INPUT_WRONG_TYPE,
                                 f"class_names must be strings, got {v!r}")
    m.params["class_names"] = [str(v) for v in vals]


def _set_class_weights(m: DLModel, vals: list) -> None:
    k = m.num_classes
    if not vals:  # [] = uniform
        m.params["class_weights"] = None
        m.mark_hparams_dirty()
        return
    if len(vals) != k:
        raise HOperatorError(H_ERR_DL_INPUT_WRONG_LENGTH,
                             f"class_weights needs {k} values (one per class id), got "
                             f"{len(vals)}")
    for v in vals:
        if not is_number(v):
            raise HOperatorError(H_ERR_DL_INPUT_WRONG_TYPE,
                                 f"class_weights must be numbers, got {v!r}")
    weights = [to_float(v) for v in vals]
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise HOperatorError(H_ERR_DL_INPUT_WRONG_VALUES,
                             f"class_weights must be finite, >= 0 and not all 0: {weights}")
    # what the engine holds: float32, normal numbers (1e-300 would be 0), a finite sum
    def bad(msg: str) -> HOperatorError:
        return HOperatorError(H_ERR_DL_INPUT_WRONG_VALUES, msg)
    for w in weights:
        check_float32(w, "class weight", bad, normal=True)
    with np.errstate(over="ignore"):
        total = float(np.sum(np.asarray(weights, np.float32), dtype=np.float32))
    if not math.isfinite(total):
        raise bad(f"class_weights sum to more than the largest float32: {weights}")
    m.params["class_weights"] = weights
    m.mark_hparams_dirty()


def _set_ignore_class_ids(m: DLModel, vals: list) -> None:
    if not m.is_segmentation:
        raise _unsupported("ignore_class_ids", f"a model of type {m.params['type']!r} "
                                               f"(segmentation models only)")
    for v in vals:
        if not is_int(v):
            raise HOperatorError(H_ERR_DL_INPUT_WRONG_TYPE,
                                 f"ignore_class_ids must be integers, got {v!r}")
    ids = [int(v) for v in vals]
    if any(not 0 <= i < 2**63 for i in ids):
        raise HOperatorError(H_ERR_DL_INPUT_WRONG_VALUES,
                             f"ignore_class_ids must be non-negative 64-bit integers, got {ids}")
    if len(set(ids)) != len(ids):
        raise HOperatorError(H_ERR_DL_CLASS_IDS_NOT_UNIQUE,
                             f"ignore_class_ids are not unique: {ids}")
    overlap = sorted(set(ids) & set(m.params["class_ids"]))
    if overlap:
        raise HOperatorError(H_ERR_DL_CLASS_IDS_INVALID_OVERLAP,
                             f"ignore class ids {overlap} are also class_ids")
    m.core.set_ignore_ids(ids)
    m.params["ignore_class_ids"] = ids


def _set_image_width(m: DLModel, vals: list) -> None:
    w = _int_param(vals, "image_width", 1, MAX_IMAGE_SIDE)
    _check_image_size(m, w, m.params["image_height"])
    m.params["image_width"] = w


def _set_image_height(m: DLModel, vals: list) -> None:
    h = _int_param(vals, "image_height", 1, MAX_IMAGE_SIDE)
    _check_image_size(m, m.params["image_width"], h)
    m.params["image_height"] = h


def _set_num_channels(m: DLModel, vals: list) -> None:
    _set_channels(m, _check_channels(_one(vals, "image_num_channels")))


def _set_image_dimensions(m: DLModel, vals: list) -> None:
    if len(vals) != 3:
        raise wrong_num(_VAL, f"image_dimensions is [width, height, channels], got {vals!r}")
    w = _int(vals[0], "image width")
    h = _int(vals[1], "image height")
    if not (1 <= w <= MAX_IMAGE_SIDE and 1 <= h <= MAX_IMAGE_SIDE):
        raise wrong_value(_VAL, f"image width and height must be in [1, {MAX_IMAGE_SIDE}], "
                                f"got {w}x{h}")
    c = _check_channels(vals[2])
    _check_image_size(m, w, h)
    _set_channels(m, c)  # may rebuild; the size was validated on the current graph
    m.params["image_width"] = w
    m.params["image_height"] = h


def _range_setter(name: str) -> Callable[[DLModel, list], None]:
    def setter(m: DLModel, vals: list) -> None:
        # float32-finite (images are float32); |value| <= 1e30 keeps max - min finite too
        v = _float(_one(vals, name), name)
        if abs(v) > 1e30:
            raise wrong_value(_VAL, f"{name} must be within [-1e30, 1e30], got {v!r}")
        m.params[name] = v

    return setter


def _set_runtime(m: DLModel, vals: list) -> None:
    # moves weights, running statistics and optimizer state; a failure (7742 no CUDA build,
    # 7709/7717/7718 libraries, 7708 no GPU, 6021) leaves the model where it was
    v = _choice(vals, "runtime", ("cpu", "gpu"))
    DLModel.place(m.core, m.params["gpu"] if v == "gpu" else -1)
    m.params["runtime"] = v


def _set_device(m: DLModel, vals: list) -> None:
    dev = _one(vals, "device")
    if not isinstance(dev, DLDevice):
        raise wrong_type(_VAL, f"device must be a handle from query_available_dl_devices, got "
                               f"{type(dev).__name__}")
    if dev.type == "gpu" and dev.id < 0:  # place(-1) would mean the CPU
        raise HOperatorError(H_ERR_CNN_GPU_REQUIRED, f"device {dev!r}: invalid GPU id {dev.id}")
    if dev.type == "gpu":
        DLModel.place(m.core, dev.id)
        m.params["runtime"] = "gpu"
        m.params["gpu"] = dev.id
    elif dev.type == "cpu":
        DLModel.place(m.core, -1)
        m.params["runtime"] = "cpu"
    else:
        raise HOperatorError(H_ERR_CNN_GPU_REQUIRED, f"device {dev!r}: unknown device type")


def _set_gpu(m: DLModel, vals: list) -> None:
    g = _int_param(vals, "gpu", 0)
    if m.params["runtime"] == "gpu":  # already on a GPU: move to the new one
        DLModel.place(m.core, g)
    m.params["gpu"] = g


def _set_gpu_outputs(m: DLModel, vals: list) -> None:
    # halcdl's own: apply_dl_model returns CuPy arrays (no host copy) for a model on the GPU
    m.params["gpu_outputs"] = _choice(vals, "gpu_outputs", ("true", "false"))


def _set_runtime_init(m: DLModel, vals: list) -> None:
    m.params["runtime_init"] = _choice(vals, "runtime_init", ("immediately", "deferred"))


def _set_optimize_for_inference(m: DLModel, vals: list) -> None:
    # inference plans are always fused (conv+bn+relu); 'true' also frees the training
    # workspaces, which a later train step rebuilds
    v = _choice(vals, "optimize_for_inference", ("true", "false"))
    if v == "true":
        m.core.release_training_plans()
    m.params["optimize_for_inference"] = v


def _set_keep_layer_outputs(m: DLModel, vals: list) -> None:
    """halcdl extension: the layers whose outputs (and gradients in training) the engine
    keeps readable after each batch (docs/introspection.md); [] for none."""
    from ..layers.activations import layer_node  # noqa: PLC0415

    names = []
    for v in vals:
        if not isinstance(v, str):
            raise wrong_type(3, f"keep_layer_outputs takes layer names, got {v!r}")
        names.append(layer_node(m, v, 3))
    m.core.set_keep(names)


def _set_precision(m: DLModel, vals: list) -> None:
    # bf16 compute with fp32 master weights; the engine raises 7742 on a CPU without bf16
    m.core.set_precision(_choice(vals, "precision", ("float32", "bfloat16")))


def _set_meta_data(m: DLModel, vals: list) -> None:
    d = _one(vals, "meta_data")
    if not isinstance(d, dict):
        raise wrong_type(_VAL, f"meta_data must be a dict, got {type(d).__name__}")
    for k, v in d.items():
        if not is_str(k):
            raise HOperatorError(H_ERR_DL_INPUT_WRONG_TYPE, f"meta_data keys must be strings, "
                                                            f"got {k!r}")
        if not (is_str(v) or is_number(v)):
            raise HOperatorError(H_ERR_DL_INPUT_WRONG_TYPE,
                                 f"meta_data values must be strings or numbers, got {v!r}")
        # what write_dl_model can store: UTF-8 text, finite numbers, 64-bit integers
        for t in (k, v):
            if is_str(t):
                try:
                    str(t).encode("utf-8")
                except UnicodeEncodeError:
                    raise HOperatorError(H_ERR_DL_INPUT_WRONG_VALUES,
                                         f"meta_data holds a string that is not valid text "
                                         f"(lone surrogate): {t!r}") from None
        if is_int(v) and not -2**63 <= int(v) < 2**63:
            raise HOperatorError(H_ERR_DL_INPUT_WRONG_VALUES,
                                 f"meta_data integer {k!r} = {v} does not fit in 64 bits")
        if is_number(v) and not is_int(v) and not math.isfinite(float(v)):
            raise HOperatorError(H_ERR_DL_INPUT_WRONG_VALUES,
                                 f"meta_data value {k!r} = {v!r} is not finite")
    m.params["meta_data"] = {str(k): py_value(v) for k, v in d.items()}


def _dp_settings(m: DLModel) -> str:
    """The settings every rank of a data-parallel run must share (checked on joining)."""
    keys = ("type", "batch_size", "batch_size_multiplier", "learning_rate", "momentum",
            "weight_prior", "solver_type", "adam_beta1", "adam_beta2", "adam_epsilon",
            "batchnorm_momentum", "class_ids", "class_weights", "image_width", "image_height",
            "image_num_channels", "ignore_class_ids")
    return repr([(k, m.params.get(k)) for k in keys] + [m.core.get_precision()])


def _set_data_parallel(m: DLModel, vals: list) -> None:
    # halcdl's own (docs/distributed.md): 'torch' joins torch.distributed's default process
    # group (collective: every rank calls it; rank 0's model is broadcast), 'false' leaves
    v = _choice(vals, "data_parallel", ("torch", "false"))
    if v == "torch" and m.is_detection:
        raise HOperatorError(H_ERR_DL_MODEL_RUNTIME, "data_parallel: detection models cannot be "
                                                     "trained data parallel yet")
    if v == "torch":
        if m.data_parallel is None:
            m.data_parallel = distributed.join(m.core, m.core.device() >= 0, _dp_settings(m))
    elif m.data_parallel is not None:
        dp, m.data_parallel = m.data_parallel, None
        distributed.leave(dp)


_SETTERS: dict[str, Callable[[DLModel, list], None]] = {
    "batch_size": _set_batch_size,
    "batch_size_multiplier": _set_multiplier,
    "learning_rate": _hparam_setter("learning_rate", lo=0.0),
    "momentum": _hparam_setter("momentum", lo=0.0, hi=1.0),
    "weight_prior": _hparam_setter("weight_prior", lo=0.0),
    "adam_beta1": _hparam_setter("adam_beta1", lo=0.0, hi=1.0, hi_open=True),
    "adam_beta2": _hparam_setter("adam_beta2", lo=0.0, hi=1.0, hi_open=True),
    "adam_epsilon": _hparam_setter("adam_epsilon", lo=0.0, lo_open=True),
    "batchnorm_momentum": _hparam_setter("batchnorm_momentum", lo=0.0, hi=1.0),
    "solver_type": _set_solver,
    "class_ids": _set_class_ids,
    "class_names": _set_class_names,
    "class_weights": _set_class_weights,
    "ignore_class_ids": _set_ignore_class_ids,
    "image_width": _set_image_width,
    "image_height": _set_image_height,
    "image_num_channels": _set_num_channels,
    "image_dimensions": _set_image_dimensions,
    "image_range_min": _range_setter("image_range_min"),
    "image_range_max": _range_setter("image_range_max"),
    "runtime": _set_runtime,
    "device": _set_device,
    "gpu": _set_gpu,
    "gpu_outputs": _set_gpu_outputs,
    "runtime_init": _set_runtime_init,
    "optimize_for_inference": _set_optimize_for_inference,
    "meta_data": _set_meta_data,
    "precision": _set_precision,
    "data_parallel": _set_data_parallel,
    "keep_layer_outputs": _set_keep_layer_outputs,
}

_READ_ONLY = ("type", "num_trainable_params", "summary", "input_dimensions",
              "data_parallel_rank", "data_parallel_world_size")


def _unsupported(name: str, what: str) -> HOperatorError:
    return HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM,
                          f"Unsupported generic parameter {name!r} for {what}")


def _param_name(gen_param_name: Any) -> str:
    return as_str(to_scalar(gen_param_name, 2, "one parameter name"), 2, "gen_param_name")


def _refuse_during_job(m: DLModel, what: str) -> None:
    """HOperatorError 7913 when a background job (workflow/jobs.py) has reserved the model and
    the caller is not that job's thread: a change of parameters or a training step from another
    thread would interleave with the job's batches."""
    job = getattr(m, "training_job", None)
    if job is not None and not job.owns_current_thread():
        raise HOperatorError(H_ERR_DL_MODEL_RUNTIME, f"{what}: the model is being trained by a "
                             f"background job (stop it or wait for it)")


@operator
def set_dl_model_param(dlmodel_handle: Any, gen_param_name: Any, gen_param_value: Any) -> None:
    """Set one model parameter (see docs/operators.md for names, values and error numbers).
    A call that raises leaves the model unchanged."""
    m = check_model(dlmodel_handle, 1)
    name = _param_name(gen_param_name)
    setter = _SETTERS.get(name)
    if m.is_detection:
        det = _detection_setter(m, name)
        if det is not None:
            setter = det
    if setter is None:
        if name in _READ_ONLY:
            raise _unsupported(name, "set_dl_model_param (read-only)")
        raise _unsupported(name, "set_dl_model_param")
    vals = [gen_param_value] if isinstance(gen_param_value, dict) else to_tuple(gen_param_value)
    _refuse_during_job(m, "set_dl_model_param")
    with m.lock:
        check_model(m)  # may have been cleared while waiting
        _refuse_during_job(m, "set_dl_model_param")  # a job may have started while waiting
        if m.data_parallel is None or name == "data_parallel":
            setter(m, vals)
            return
        # data parallel: a change that re-creates layers would give each rank its own new
        # initialisation, so it is refused (and undone)
        old = (m.spec, m.core, copy.deepcopy(m.params))
        setter(m, vals)
        if m.core is not old[1]:
            m.adopt(old[0], old[1])
            m.params = old[2]
            m.mark_hparams_dirty()
            raise HOperatorError(H_ERR_DL_MODEL_RUNTIME,
                                 f"{name}: the change re-creates layers, which a data-parallel "
                                 f"model cannot do; set 'data_parallel' to 'false' first, "
                                 f"change it, and join again")


def _detection_setter(m: DLModel, name: str) -> Callable[[DLModel, list], None] | None:
    """Setters of the detection parameters (None: not a detection key)."""
    from ..models import detection as D  # noqa: PLC0415

    if name in D.SETTABLE_AFTER_CREATION:
        def setter(model: DLModel, vals: list) -> None:
            value = D.validate_value(name, vals, model.num_classes)
            cfg = D.engine_config({**model.params, name: value})
            model.core.set_detection(cfg)  # the engine checks too; nothing changed on failure
            model.params[name] = value
            model.mark_hparams_dirty()

        return setter
    if name in D.DETECTION_DEFAULTS or name == "backbone":
        def read_only(model: DLModel, vals: list) -> None:
            raise _unsupported(name, "set_dl_model_param (fixed when the detection model is "
                                     "created: create a new one with create_dl_model_detection)")

        return read_only
    if name in ("ignore_class_ids",):
        return None
    return None


# --------------------------------------------------------------------------------------------
# get_dl_model_param
# --------------------------------------------------------------------------------------------
def _get_param(m: DLModel, name: str) -> list:
    p = m.params
    if name in ("image_dimensions", "input_dimensions"):
        return [p["image_width"], p["image_height"], p["image_num_channels"]]
    if name == "class_weights":
        w = p["class_weights"]
        return [1.0] * m.num_classes if w is None else list(w)
    if name in ("class_ids", "class_names"):
        return list(p[name])
    if name == "ignore_class_ids":
        if not m.is_segmentation:
            raise _unsupported(name, f"a model of type {p['type']!r} (segmentation models only)")
        return list(p[name])
    if name == "meta_data":
        return [dict(p["meta_data"])]
    if name == "num_trainable_params":
        return [int(m.core.num_trainable_params()) - int(m.core.num_shared_params())]
    if m.is_detection and isinstance(p.get(name), list):
        return list(p[name])
    if name == "summary":
        return str(m.core.summary()).splitlines()
    if name == "precision":
        return [m.core.get_precision()]
    if name == "keep_layer_outputs":
        return [n.split("/", 1)[0] for n in m.core.keep_names()]
    if name == "device":
        return [gpu_device(m.core.device()) if m.core.device() >= 0 else cpu_device()]
    if name == "data_parallel":
        return ["false" if m.data_parallel is None else "torch"]
    if name in ("data_parallel_rank", "data_parallel_world_size"):
        rank, world = distributed.rank_and_world_size(m)
        return [rank if name == "data_parallel_rank" else world]
    if name in p:
        return [p[name]]
    raise _unsupported(name, "get_dl_model_param")


def _get_dl_model_param(dlmodel_handle: Any, gen_param_name: Any) -> list:
    m = check_model(dlmodel_handle, 1)
    name = _param_name(gen_param_name)
    with m.lock:
        check_model(m)
        return _get_param(m, name)


@operator
def get_dl_model_param(dlmodel_handle: Any, gen_param_name: Any) -> list:
    """Value of a model parameter, as a list."""
    return _get_dl_model_param(dlmodel_handle, gen_param_name)


@operator
def get_dl_model_param_s(dlmodel_handle: Any, gen_param_name: Any) -> Any:
    """Value of a model parameter that holds exactly one value."""
    return single(_get_dl_model_param(dlmodel_handle, gen_param_name))


# --------------------------------------------------------------------------------------------
# the integer-image guard (issue 11: samples that would silently train wrong)
# --------------------------------------------------------------------------------------------
def _check_integer_images(m: DLModel, samples: list) -> None:
    """7736 for an integer-typed image (uint8, uint16, int*, bool) whose type's gray-value
    range is not the model's image_range_min … image_range_max.  The engine would convert
    its values unchanged to float, so e.g. a uint8 image (0 … 255) fed to a model expecting
    −127 … 128 would train to garbage.  Float images pass (they are taken as already in the
    model's range).  Only arrays (objects with a dtype) are checked; the engine validates
    everything else."""
    p = m.params
    lo_m, hi_m = float(p["image_range_min"]), float(p["image_range_max"])
    for i, s in enumerate(samples):
        if not isinstance(s, dict):
            continue
        dt = getattr(s.get("image"), "dtype", None)
        try:
            dt = np.dtype(dt) if dt is not None else None
        except TypeError:
            continue
        if dt is None or dt.kind not in "uib":
            continue
        if dt.kind == "b":
            lo, hi = 0, 1
        else:
            info = np.iinfo(dt)
            lo, hi = int(info.min), int(info.max)
        if (float(lo), float(hi)) != (lo_m, hi_m):
            raise HOperatorError(
                H_ERR_CNN_INVALID_INPUT_DATA,
                f"sample {i}: 'image' is a {dt} image (gray values {lo} … {hi}), but the "
                f"model expects values in image_range_min … image_range_max = "
                f"{lo_m:g} … {hi_m:g}; convert the samples with preprocess_dl_samples "
                f"(create_dl_preprocess_param_from_model) or pass float images already in "
                f"that range")


# --------------------------------------------------------------------------------------------
# training and inference
# --------------------------------------------------------------------------------------------
def _available_memory() -> int:
    """MemAvailable + SwapFree of /proc/meminfo in bytes (0: unknown)."""
    total = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith(("MemAvailable:", "SwapFree:")):
                    total += int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    return total


def _check_plan_memory(m: DLModel, training: bool) -> None:
    """6001 before the engine plans a batch whose activations alone cannot fit in the
    machine's memory (CPU runtime; the GPU plan checks its one allocation itself).  The
    bound is a lower bound of what the plan needs — batch_size × the activations of one
    sample: every node's output when training (all are kept for the backward pass), the two
    largest when inferring — so it refuses only what must fail; an allocation failure beyond
    it is 6001 from the engine.  Without it a plan far beyond RAM would be overcommitted by
    the kernel and the process killed by the OOM killer when the memory is touched."""
    if m.core.device() >= 0:
        return
    p = m.params
    key = (id(m.core), training, p["batch_size"], p["image_height"], p["image_width"],
           p["image_num_channels"], p.get("precision"))
    if getattr(m, "_memory_checked", None) == key:
        return
    shapes = m.core.node_shapes(int(p["image_height"]), int(p["image_width"]))
    per = sorted(int(np.prod(np.asarray(d[1:], dtype=np.float64))) for d in shapes.values())
    elem = 2 if p.get("precision") == "bfloat16" else 4
    per_sample = float(sum(per) if training else sum(per[-2:])) * elem
    need = per_sample * float(p["batch_size"])
    avail = _available_memory()
    if avail and need > avail:
        raise HOperatorError(
            H_ERR_MEM,
            f"not enough memory: batch_size {p['batch_size']} at {p['image_width']}x"
            f"{p['image_height']} needs at least {need / 2**30:.1f} GiB of activations for "
            f"{'training' if training else 'inference'}, {avail / 2**30:.1f} GiB are available "
            f"(lower batch_size or the image size)")
    m._memory_checked = key


@operator
def train_dl_model_batch(dlmodel_handle: Any, dlsample_batch: Any) -> dict:
    """One training step (one weight update) on batch_size × batch_size_multiplier samples.
    Returns the DLTrainResult dict: ``total_loss`` plus one key per loss term."""
    m = check_model(dlmodel_handle, 1)
    samples = _sample_list(dlsample_batch, 2)
    _refuse_during_job(m, "train_dl_model_batch")
    with m.lock:
        check_model(m)
        _refuse_during_job(m, "train_dl_model_batch")
        _check_integer_images(m, samples)
        _check_plan_memory(m, True)
        p = m.params
        m.push_hparams()
        m.sync_gpu_options()
        dev = _device_images(m, samples)  # CuPy images: assembled on the GPU, used in place
        dp = m.data_parallel
        m._introspect_last = None
        try:
            if dp is None:
                result = m.core.train_step(samples, p["batch_size"], p["batch_size_multiplier"],
                                           p["image_height"], p["image_width"],
                                           p["image_num_channels"],
                                           0 if dev is None else dev.data.ptr)
            else:  # the engine calls dp.reduce between backward and update
                result = m.core.train_step(samples, p["batch_size"], p["batch_size_multiplier"],
                                           p["image_height"], p["image_width"],
                                           p["image_num_channels"],
                                           0 if dev is None else dev.data.ptr, dp.reduce,
                                           dp.world_size, dp.rank * p["batch_size_multiplier"])
        except TypeError as err:  # argument conversion in the bindings
            raise wrong_type(2, f"dlsample_batch must be a list of DLSample dicts ({err})") \
                from None
    return {str(k): py_value(v) for k, v in dict(result).items()}


_RESULT_KEYS = (
    "classification_class_ids",
    "classification_class_names",
    "classification_confidences",
)
_SEGMENTATION_RESULT_KEYS = ("segmentation_image", "segmentation_confidence")


def _device_images(m: DLModel, samples: list):
    """The batch as one CuPy NCHW array when its images are CuPy arrays, else None."""
    p = m.params
    return _gpu.device_batch(samples, p["image_height"], p["image_width"],
                             p["image_num_channels"], m.core.device())


def _gpu_outputs(m: DLModel) -> bool:
    return m.core.device() >= 0 and m.params.get("gpu_outputs", "false") == "true"


def _outputs(outputs: Any, available: tuple = _RESULT_KEYS) -> tuple:
    if isinstance(outputs, np.ndarray) and outputs.ndim > 1:
        raise wrong_type(3, f"outputs must be a list of names, got a {outputs.ndim}-D array")
    names = to_tuple(outputs)
    if not names or (len(names) == 1 and is_str(names[0]) and names[0] == "default"):
        return available
    for n in names:
        if not is_str(n):
            raise wrong_type(3, f"outputs must be names, got {n!r}")
        if n not in available:
            raise wrong_value(3, f"unknown output {n!r} (available: {', '.join(available)})")
    return tuple(dict.fromkeys(str(n) for n in names))


# apply_dl_model hands the engine at most this many samples per call (rounded up to a multiple
# of batch_size, so the batches, and the results, are those of one call): Python sees a
# Ctrl-C (KeyboardInterrupt) between two such chunks, and the staging memory stays bounded.
APPLY_CHUNK_SAMPLES = 256


def _chunks(samples: list, batch_size: int):
    n = max(1, -(-APPLY_CHUNK_SAMPLES // batch_size)) * batch_size
    for start in range(0, len(samples), n):
        yield samples[start:start + n]


def _remember_batch(m: DLModel, chunk: list, kind: str) -> None:
    """The engine's last batch of an apply (references to its sample dicts, no pixel
    copies): get_dl_model_layer_activations runs it again for a layer that was not kept
    (layers/activations.py)."""
    bs = int(m.params["batch_size"])
    m._introspect_last = (m.core, kind, list(chunk[(len(chunk) - 1) // bs * bs:]))


def _apply_segmentation(m: DLModel, samples: list, keys: tuple) -> list:
    """apply_dl_model of a segmentation model (the caller holds the lock): per sample the
    class id of the winning class per pixel and its softmax probability, (H, W) arrays at
    the model's image size."""
    p = m.params
    dev = _device_images(m, samples)
    if dev is not None or _gpu_outputs(m):
        return _apply_segmentation_gpu(m, samples, keys, dev)
    parts = []
    for chunk in _chunks(samples, p["batch_size"]):
        try:
            parts.append(m.core.infer_segmentation(
                chunk, p["batch_size"], p["image_height"], p["image_width"],
                p["image_num_channels"]))
        except TypeError as err:
            raise wrong_type(2, f"dlsample_batch must be a list of DLSample dicts ({err})") \
                from None
        _remember_batch(m, chunk, "segmentation")
    index = np.concatenate([np.asarray(i) for i, _ in parts]) if len(parts) > 1 \
        else np.asarray(parts[0][0])
    confidence = np.concatenate([np.asarray(c) for _, c in parts]) if len(parts) > 1 \
        else parts[0][1]
    ids = np.asarray(p["class_ids"], dtype=np.int32)[np.asarray(index)]  # index → class id
    confidence = np.asarray(confidence, dtype=np.float32)
    columns = {"segmentation_image": ids, "segmentation_confidence": confidence}
    return [{k: columns[k][i] for k in keys} for i in range(len(samples))]


def _to_device(m: DLModel, samples: list):
    """Host images → one CuPy NCHW batch (for gpu_outputs with numpy input)."""
    p = m.params
    host = []
    for i, s in enumerate(samples):  # the checks and numbers of the engine's host path
        if not isinstance(s, dict):
            raise HOperatorError(H_ERR_DL_INPUTS_MISSING, f"sample {i} is not a dict (DLSample)")
        if "image" not in s:
            raise HOperatorError(H_ERR_DL_INPUTS_MISSING, f"sample {i} has no key 'image'")
        try:
            a = np.asarray(s["image"], dtype=np.float32)
        except (TypeError, ValueError):
            a = np.zeros(0, np.float32)
        if a.size == 0 or isinstance(s["image"], (str, bytes)):
            raise HOperatorError(H_ERR_CNN_INVALID_INPUT_DATA,
                                 f"sample {i}: 'image' is not a numeric image array")
        host.append(a)
    cp = _gpu.cupy()
    with cp.cuda.Device(m.core.device()):
        imgs = [cp.asarray(a) for a in host]
        return _gpu.device_batch([{"image": x} for x in imgs], p["image_height"],
                                 p["image_width"], p["image_num_channels"], m.core.device())


def _apply_segmentation_gpu(m: DLModel, samples: list, keys: tuple, dev) -> list:
    p = m.params
    if dev is None:
        dev = _to_device(m, samples)
    cp = _gpu.cupy()
    n, h, w = len(samples), p["image_height"], p["image_width"]
    with cp.cuda.Device(m.core.device()):
        index = cp.empty((n, h, w), dtype=cp.int32)
        conf = cp.empty((n, h, w), dtype=cp.float32)
        m.core.infer_segmentation(samples, p["batch_size"], h, w, p["image_num_channels"],
                                  dev.data.ptr, index.data.ptr, conf.data.ptr)
        ids = cp.asarray(np.asarray(p["class_ids"], dtype=np.int32))[index]
    if not _gpu_outputs(m):
        ids, conf = cp.asnumpy(ids), cp.asnumpy(conf)
    columns = {"segmentation_image": ids, "segmentation_confidence": conf}
    return [{k: columns[k][i] for k in keys} for i in range(n)]


def _apply_classification_gpu(m: DLModel, samples: list, keys: tuple, dev) -> list | None:
    """Device inference: probabilities stay on the GPU; with gpu_outputs the per-sample
    class ids and confidences are CuPy arrays (sorted by descending confidence), else the
    probabilities come back to the host and the usual lists are built (returns None)."""
    p = m.params
    if dev is None:
        dev = _to_device(m, samples)
    cp = _gpu.cupy()
    n = len(samples)
    with cp.cuda.Device(m.core.device()):
        probs = cp.empty((n, m.num_classes), dtype=cp.float32)
        m.core.infer(samples, p["batch_size"], p["image_height"], p["image_width"],
                     p["image_num_channels"], dev.data.ptr, probs.data.ptr)
        if not _gpu_outputs(m):
            return cp.asnumpy(probs)
        order = cp.argsort(-probs, axis=1)
        ids = cp.asarray(np.asarray(p["class_ids"], dtype=np.int64))[order]
        conf = cp.take_along_axis(probs, order, axis=1)
    names = np.asarray(p["class_names"], dtype=object)[cp.asnumpy(order)]
    columns = {"classification_class_ids": ids, "classification_class_names": names.tolist(),
               "classification_confidences": conf}
    return [{k: columns[k][i] for k in keys} for i in range(n)]


@operator
def apply_dl_model(dlmodel_handle: Any, dlsample_batch: Any, outputs: Any) -> list:
    """Infer any number of samples (in chunks of batch_size).  Returns one DLResult dict per
    sample.  Classification: classification_class_ids, classification_class_names and
    classification_confidences over all classes, sorted by descending confidence.
    Segmentation: segmentation_image (int32 (H, W) class ids) and segmentation_confidence
    (float32 (H, W), the winning class's probability).  ``outputs`` = [] for all keys of the
    model's type, or a subset of these names."""
    m = check_model(dlmodel_handle, 1)
    samples = _sample_list(dlsample_batch, 2)
    from .dl_detection import apply_detection, result_keys  # noqa: PLC0415

    keys = _outputs(outputs, result_keys(m) if m.is_detection else
                    _SEGMENTATION_RESULT_KEYS if m.is_segmentation else _RESULT_KEYS)
    if not samples:
        raise HOperatorError(H_ERR_DL_MODEL_INVALID_NUM_SAMPLES,
                             "apply_dl_model needs at least one sample")
    with m.lock:
        check_model(m)
        _check_integer_images(m, samples)
        m.sync_gpu_options()
        _check_plan_memory(m, False)
        if m.is_detection:
            m.push_hparams()
            return apply_detection(m, samples, keys)
        if m.is_segmentation:
            return _apply_segmentation(m, samples, keys)
        p = m.params
        dev = _device_images(m, samples)
        if dev is not None or _gpu_outputs(m):
            got = _apply_classification_gpu(m, samples, keys, dev)
            if not isinstance(got, np.ndarray):
                return got
            probs = got
        else:
            parts = []
            for chunk in _chunks(samples, p["batch_size"]):
                try:
                    parts.append(m.core.infer(chunk, p["batch_size"], p["image_height"],
                                              p["image_width"], p["image_num_channels"]))
                    _remember_batch(m, chunk, "classification")
                except TypeError as err:
                    raise wrong_type(2, f"dlsample_batch must be a list of DLSample dicts "
                                        f"({err})") from None
            probs = np.concatenate(parts) if len(parts) > 1 else parts[0]
        class_ids = np.asarray(p["class_ids"], dtype=np.int64)
        class_names = np.asarray(p["class_names"], dtype=object)
    probs = np.asarray(probs).reshape(len(samples), -1)
    order = np.argsort(-probs, axis=1, kind="stable")
    columns = {
        "classification_class_ids": class_ids[order].tolist(),
        "classification_class_names": class_names[order].tolist(),
        "classification_confidences": np.take_along_axis(probs, order, axis=1).tolist(),
    }
    return [{k: columns[k][i] for k in keys} for i in range(len(samples))]


@operator
def apply_dl_model_s(dlmodel_handle: Any, dlsample_batch: Any, outputs: Any) -> dict:
    """apply_dl_model for exactly one sample: its DLResult dict (HTupleConversionError if the
    batch does not hold exactly one sample)."""
    return single(apply_dl_model.__wrapped__(dlmodel_handle, dlsample_batch, outputs))


@operator
def clear_dl_model(dlmodel_handle: Any) -> None:
    """Free one model or a list of models.  Using a cleared handle raises 2454; clearing it
    again does nothing."""
    handles = dlmodel_handle if isinstance(dlmodel_handle, (list, tuple)) else [dlmodel_handle]
    for h in handles:
        if not isinstance(h, DLModel):
            raise wrong_type(1, f"expected DL model handles, got {type(h).__name__}")
        _refuse_during_job(h, "clear_dl_model")  # before anything is cleared
    for h in handles:
        with h.lock:
            dp, h.data_parallel = getattr(h, "data_parallel", None), None
            distributed.leave(dp)
            h.clear()

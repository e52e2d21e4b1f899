"""The legacy ``*_dl_classifier`` operators: a thin shim over the DL model operators.

A classifier handle wraps one :class:`~halcdl.models.handle.DLModel` (the same engine, the
same architectures and files as read_dl_model).  Nothing here trains or infers by itself:

* ``classes`` (class names) become the model's ``class_ids`` = 0 … K−1 and ``class_names``;
  a label (name or index) becomes the ``image_label_id`` of a DLSample;
* train_dl_classifier_batch builds the list of DLSample dicts and runs the body of
  train_dl_model_batch; apply_dl_classifier runs the body of apply_dl_model;
* the other parameters are the model's, set through the model's own setters;
* write_dl_classifier / read_dl_classifier are write_dl_model / read_dl_model.

Error numbers: see docs/legacy.md.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from ..errors import (
    H_ERR_CNN_INVALID_LABELS,
    H_ERR_CNN_MULTIPLE_CLASSES,
    H_ERR_DL_CLASS_IDS_MISSING,
    H_ERR_DL_FILE_WRITE,
    H_ERR_DL_INPUT_WRONG_BS_WITH_MULTIPLIER,
    H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM,
    H_ERR_HANDLE_CLEARED,
    HOperatorError,
)
from ..hobject import image_list
from ..models.handle import DLModel
from ..models.zoo import get_architecture
from . import dl_model as _dlm
from ._tuple import (
    as_str,
    is_int,
    is_str,
    operator,
    single,
    to_scalar,
    to_tuple,
    wrong_num,
    wrong_type,
    wrong_value,
)

__all__ = [
    "DLClassifier",
    "DLClassifierResult",
    "DLClassifierTrainResult",
    "read_dl_classifier",
    "write_dl_classifier",
    "set_dl_classifier_param",
    "get_dl_classifier_param",
    "get_dl_classifier_param_s",
    "train_dl_classifier_batch",
    "get_dl_classifier_train_result",
    "get_dl_classifier_train_result_s",
    "apply_dl_classifier",
    "get_dl_classifier_result",
    "get_dl_classifier_result_s",
    "clear_dl_classifier",
    "clear_dl_classifier_result",
    "clear_dl_classifier_train_result",
]

# meta_data key that records whether the classes of a classifier were set (files written by
# write_dl_classifier carry it; read_dl_classifier reads it back)
CLASSES_KEY = "dl_classifier_classes"

# the model parameters a classifier exposes under the same name
_MODEL_PARAMS = (
    "batch_size",
    "batch_size_multiplier",
    "learning_rate",
    "momentum",
    "weight_prior",
    "image_width",
    "image_height",
    "image_num_channels",
    "image_dimensions",
    "image_range_min",
    "image_range_max",
    "runtime",
    "gpu",
    "runtime_init",
)
_PARAMS = ("classes",) + _MODEL_PARAMS


# --------------------------------------------------------------------------------------------
# handles
# --------------------------------------------------------------------------------------------
class DLClassifier:
    """A legacy classifier handle (what read_dl_classifier returns).

    ``model`` is the DL model handle doing the work (``None`` after clear_dl_classifier);
    ``classes`` the class names, ``None`` until they are set."""

    def __init__(self, model: DLModel, classes: list[str] | None) -> None:
        self.model: DLModel | None = model
        self.classes = classes

    @property
    def cleared(self) -> bool:
        return self.model is None or self.model.cleared

    def __repr__(self) -> str:
        if self.cleared:
            return "<DLClassifier (cleared)>"
        what = "no classes" if self.classes is None else f"{len(self.classes)} classes"
        arch = getattr(self.model.arch, "file_name", "model")
        return f"<DLClassifier {arch} ({what})>"


class DLClassifierTrainResult:
    """What train_dl_classifier_batch returns; ``result`` is the DLTrainResult dict of the
    step (``total_loss``, ``loss_cls``), ``None`` after clearing."""

    def __init__(self, result: dict) -> None:
        self.result: dict | None = result

    @property
    def cleared(self) -> bool:
        return self.result is None

    def __repr__(self) -> str:
        return "<DLClassifierTrainResult (cleared)>" if self.cleared else \
            f"<DLClassifierTrainResult {self.result}>"


class DLClassifierResult:
    """What apply_dl_classifier returns; ``results`` is the list of DLResult dicts (one per
    image, classes sorted by descending confidence), ``None`` after clearing."""

    def __init__(self, results: list) -> None:
        self.results: list | None = results

    @property
    def cleared(self) -> bool:
        return self.results is None

    def __repr__(self) -> str:
        return "<DLClassifierResult (cleared)>" if self.cleared else \
            f"<DLClassifierResult {len(self.results)} image(s)>"


def _unwrap(handle: Any) -> Any:
    if isinstance(handle, (list, tuple)) and len(handle) == 1:
        return handle[0]
    return handle


def _check(handle: Any, cls: type, pos: int, what: str):
    """The handle (1200+pos if it is not a ``cls``, 2454 if it was cleared)."""
    handle = _unwrap(handle)
    if not isinstance(handle, cls):
        raise wrong_type(pos, f"expected a {what} handle, got {type(handle).__name__}")
    if handle.cleared:
        raise HOperatorError(H_ERR_HANDLE_CLEARED, f"the {what} handle has been cleared")
    return handle


def _classifier(handle: Any, pos: int) -> DLClassifier:
    return _check(handle, DLClassifier, pos, "DL classifier")


def _need_classes(c: DLClassifier) -> list[str]:
    if c.classes is None:
        raise HOperatorError(
            H_ERR_DL_CLASS_IDS_MISSING,
            "the classifier has no classes: set them with "
            "set_dl_classifier_param(handle, 'classes', [...]) first",
        )
    return c.classes


def _unsupported(name: Any, op: str) -> HOperatorError:
    return HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM,
                          f"Unsupported generic parameter {name!r} for {op}")


# --------------------------------------------------------------------------------------------
# read / write
# --------------------------------------------------------------------------------------------
def _is_file(name: str) -> bool:
    """read_dl_model reads a file when ``name`` (or ``name + '.hdl'`` without an extension)
    exists; otherwise a built-in architecture of that name."""
    return os.path.isfile(name) or (not os.path.splitext(name)[1]
                                    and os.path.isfile(name + ".hdl"))


def _classes_of(model: DLModel, file_name: str) -> list[str] | None:
    """The classes stored in a model read from ``file_name`` (None: not set)."""
    marker = model.params.get("meta_data", {}).get(CLASSES_KEY)
    if marker is not None:
        return list(model.params["class_names"]) if marker == "set" else None
    if not _is_file(file_name):
        return None  # a built-in architecture: HALCON's pretrained files have no classes
    ids, names = model.params["class_ids"], [str(n) for n in model.params["class_names"]]
    zoo = get_architecture(file_name)
    if zoo is not None and names == [str(i) for i in ids] and len(ids) == zoo.num_classes:
        # the untouched placeholder head of a zoo name (e.g. HALCON's own file of that
        # name, which read_dl_model answers with the built-in architecture)
        return None
    return names if len(set(names)) == len(names) else None


def _not_a_classifier(name: str, kind: str) -> HOperatorError:
    return wrong_value(1, f"{name!r} holds a {kind} model, not a classifier "
                          f"(use read_dl_model)")


@operator
def read_dl_classifier(file_name: Any) -> DLClassifier:
    """Read a classifier: the built-in architectures (``pretrained_dl_classifier_*.hdl``,
    classes not set) or a file written by write_dl_classifier / write_dl_model (classes
    restored).  Everything read_dl_model accepts, with its error numbers."""
    if isinstance(file_name, os.PathLike):
        file_name = os.fspath(file_name)
    name = as_str(to_scalar(file_name, 1, "one file name"), 1, "file_name")
    arch = get_architecture(name)
    if arch is not None and not _is_file(name):
        if getattr(arch, "model_type", "classification") != "classification":
            raise _not_a_classifier(name, arch.model_type)
        # warn here so that the warning points at the caller's line (once per process)
        _dlm._warn_not_pretrained(arch.file_name)
    model = _dlm.read_dl_model.__wrapped__(name)
    kind = model.params.get("type", "classification")
    if kind != "classification":
        model.clear()
        raise _not_a_classifier(name, kind)
    classes = _classes_of(model, name)
    if classes is not None and model.params["class_ids"] != list(range(len(classes))):
        _dlm._SETTERS["class_ids"](model, list(range(len(classes))))  # same count: mapping
        model.params["class_names"] = list(classes)
    model.params["meta_data"][CLASSES_KEY] = "unset" if classes is None else "set"
    return DLClassifier(model, classes)


@operator
def write_dl_classifier(dlclassifier_handle: Any, file_name: Any) -> None:
    """Write the classifier (weights, optimizer state, every parameter, the classes) with
    write_dl_model; read_dl_classifier restores it."""
    c = _classifier(dlclassifier_handle, 1)
    write = getattr(_dlm, "write_dl_model", None)
    if write is None:  # pragma: no cover - model files not available in this build
        raise HOperatorError(H_ERR_DL_FILE_WRITE, "model files are not supported by this build")
    with c.model.lock:
        _classifier(c, 1)
        write.__wrapped__(c.model, file_name)


# --------------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------------
def _check_classes(vals: list) -> list[str]:
    if not vals:
        raise wrong_num(3, "classes needs at least one class name")
    for v in vals:
        if not is_str(v):
            raise wrong_type(3, f"classes must be strings (class names), got {v!r}")
    names = [str(v) for v in vals]
    seen = set()
    for n in names:
        if n in seen:
            raise HOperatorError(H_ERR_CNN_MULTIPLE_CLASSES,
                                 f"Invalid classes: {n!r} appears more than once")
        seen.add(n)
    return names


def _set_classes(c: DLClassifier, vals: list) -> None:
    names = _check_classes(vals)
    m = c.model
    _dlm._SETTERS["class_ids"](m, list(range(len(names))))  # new count: new head
    m.params["class_names"] = names
    m.params["meta_data"][CLASSES_KEY] = "set"
    c.classes = names


def _snapshot(c: DLClassifier) -> tuple:
    m = c.model
    return (c.classes, m.spec, m.core, copy.deepcopy(m.params), m._hparams_dirty,
            m.core.device())


def _restore(c: DLClassifier, snap: tuple) -> None:
    m = c.model
    c.classes, m.spec, m.core, m.params, m._hparams_dirty, device = snap
    # a same-count class_ids set may have touched the engine's mapping: put it back
    m.core.set_class_ids([int(i) for i in m.params["class_ids"]])
    if m.core.device() != device:  # 'runtime' / 'gpu' moved the engine model: move it back
        try:
            DLModel.place(m.core, device)
        except HOperatorError:  # cannot go back (e.g. the GPU is full): say where it is
            m.params["runtime"] = "gpu" if m.core.device() >= 0 else "cpu"
            if m.core.device() >= 0:
                m.params["gpu"] = m.core.device()


@operator
def set_dl_classifier_param(dlclassifier_handle: Any, gen_param_name: Any,
                            gen_param_value: Any) -> None:
    """Set classifier parameters.  One name takes the whole value tuple
    (``'classes', ['a', 'b']``); several names take one value each (equal lengths, else
    1403), applied in order in one call.  All or nothing: if one fails, the classifier is
    left exactly as it was."""
    c = _classifier(dlclassifier_handle, 1)
    names = to_tuple(gen_param_name)
    if not names:
        raise wrong_num(2, "no parameter name")
    for n in names:
        if not is_str(n):
            raise wrong_type(2, f"gen_param_name must be strings, got {n!r}")
        if n not in _PARAMS:
            raise _unsupported(n, "set_dl_classifier_param")
    if len(names) == 1:
        pairs = [(str(names[0]), to_tuple(gen_param_value))]
    else:
        values = to_tuple(gen_param_value)
        if len(values) != len(names):
            raise wrong_num(3, f"{len(names)} parameter names but {len(values)} values")
        pairs = [(str(n), to_tuple(v)) for n, v in zip(names, values)]
    with c.model.lock:
        _classifier(c, 1)
        snap = _snapshot(c)
        try:
            for name, vals in pairs:
                if name == "classes":
                    _set_classes(c, vals)
                else:
                    _dlm._SETTERS[name](c.model, vals)
        except BaseException:
            _restore(c, snap)
            raise


def _get_classifier_param(dlclassifier_handle: Any, gen_param_name: Any) -> list:
    c = _classifier(dlclassifier_handle, 1)
    names = to_tuple(gen_param_name)
    for n in names:
        if not is_str(n):
            raise wrong_type(2, f"gen_param_name must be strings, got {n!r}")
        if n not in _PARAMS:
            raise _unsupported(n, "get_dl_classifier_param")
    if len(names) != 1:
        raise wrong_num(2, f"expected one parameter name, got {len(names)}")
    name = str(names[0])
    with c.model.lock:
        _classifier(c, 1)
        if name == "classes":
            return [] if c.classes is None else list(c.classes)
        return _dlm._get_param(c.model, name)


@operator
def get_dl_classifier_param(dlclassifier_handle: Any, gen_param_name: Any) -> list:
    """Value of a classifier parameter, as a list (``'classes'``: ``[]`` until set)."""
    return _get_classifier_param(dlclassifier_handle, gen_param_name)


@operator
def get_dl_classifier_param_s(dlclassifier_handle: Any, gen_param_name: Any) -> Any:
    """Value of a classifier parameter that holds exactly one value."""
    return single(_get_classifier_param(dlclassifier_handle, gen_param_name))


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
def _label_indices(labels: list, classes: list[str]) -> list[int]:
    """Class names or indices into ``classes`` → indices (7714 for anything else or a mix)."""
    if all(is_str(v) for v in labels):
        index = {n: i for i, n in enumerate(classes)}
        unknown = [v for v in labels if str(v) not in index]
        if unknown:
            raise HOperatorError(H_ERR_CNN_INVALID_LABELS,
                                 f"Invalid labels: unknown class names {unknown[:5]!r} "
                                 f"(classes: {classes!r})")
        return [index[str(v)] for v in labels]
    if all(is_int(v) for v in labels):
        bad = [v for v in labels if not 0 <= int(v) < len(classes)]
        if bad:
            raise HOperatorError(H_ERR_CNN_INVALID_LABELS,
                                 f"Invalid labels: class indices {bad[:5]!r} outside "
                                 f"0 … {len(classes) - 1}")
        return [int(v) for v in labels]
    kinds = sorted({type(v).__name__ for v in labels})
    raise HOperatorError(H_ERR_CNN_INVALID_LABELS,
                         f"Invalid labels: all class names or all class indices, got {kinds}")


@operator
def train_dl_classifier_batch(batch_images: Any, dlclassifier_handle: Any,
                              batch_labels: Any) -> DLClassifierTrainResult:
    """One training step (one weight update) on batch_size × batch_size_multiplier images
    with their labels (class names or indices into ``classes``).  The images and labels go to
    the engine as DLSample dicts, exactly as train_dl_model_batch sends them."""
    c = _classifier(dlclassifier_handle, 2)
    images = image_list(batch_images, 1)
    labels = to_tuple(batch_labels)
    m = c.model
    with m.lock:
        _classifier(c, 2)
        classes = _need_classes(c)
        n = m.params["batch_size"] * m.params["batch_size_multiplier"]
        if len(images) != n or len(labels) != n:
            raise HOperatorError(
                H_ERR_DL_INPUT_WRONG_BS_WITH_MULTIPLIER,
                f"{len(images)} images and {len(labels)} labels, but batch_size × "
                f"batch_size_multiplier = {n}",
            )
        ids = _label_indices(labels, classes)
        samples = [{"image": im, "image_label_id": i} for im, i in zip(images, ids)]
        result = _dlm.train_dl_model_batch.__wrapped__(m, samples)
    return DLClassifierTrainResult(result)


_TRAIN_ALIASES = {"loss": "total_loss"}


def _train_result(handle: Any, gen_param_name: Any) -> list:
    r = _check(handle, DLClassifierTrainResult, 1, "DL classifier train result")
    res = r.result
    available = ["loss"] + [k for k in res if k != "total_loss"]
    names = to_tuple(gen_param_name)
    if not names:
        raise wrong_num(2, "no result name")
    out: list = []
    for n in names:
        if not is_str(n):
            raise wrong_type(2, f"gen_param_name must be strings, got {n!r}")
        n = str(n)
        if n == "all":
            out.extend(res[_TRAIN_ALIASES.get(k, k)] for k in available)
        elif n in res or n in _TRAIN_ALIASES:
            out.append(res[_TRAIN_ALIASES.get(n, n)])
        else:
            raise _unsupported(n, "get_dl_classifier_train_result (available: 'all', "
                                  + ", ".join(repr(k) for k in available + ["total_loss"]) + ")")
    return out


@operator
def get_dl_classifier_train_result(dlclassifier_train_result_handle: Any,
                                   gen_param_name: Any) -> list:
    """Values of a training step: ``'loss'`` (= ``'total_loss'``, the total loss including
    the weight_prior term), each loss term (``'loss_cls'``), ``'all'`` (``loss`` then the
    terms); several names give their values in order."""
    return _train_result(dlclassifier_train_result_handle, gen_param_name)


@operator
def get_dl_classifier_train_result_s(dlclassifier_train_result_handle: Any,
                                     gen_param_name: Any) -> Any:
    """Like get_dl_classifier_train_result, for exactly one value."""
    return single(_train_result(dlclassifier_train_result_handle, gen_param_name))


# --------------------------------------------------------------------------------------------
# inference
# --------------------------------------------------------------------------------------------
@operator
def apply_dl_classifier(images: Any, dlclassifier_handle: Any) -> DLClassifierResult:
    """Classify any number ≥ 1 of images (in chunks of batch_size), as apply_dl_model."""
    c = _classifier(dlclassifier_handle, 2)
    ims = image_list(images, 1)
    with c.model.lock:
        _classifier(c, 2)
        _need_classes(c)
        m = c.model
        saved = m.params.get("gpu_outputs")
        m.params["gpu_outputs"] = "false"  # legacy results are host values (no CuPy needed)
        try:
            results = _dlm.apply_dl_model.__wrapped__(m, [{"image": im} for im in ims], [])
        finally:
            if saved is None:
                del m.params["gpu_outputs"]
            else:
                m.params["gpu_outputs"] = saved
    return DLClassifierResult(results)


_RESULT_NAMES = {
    "predicted_classes": "classification_class_names",
    "confidences": "classification_confidences",
    "predicted_class_indices": "classification_class_ids",
}


def _classifier_result(handle: Any, index: Any, gen_result_name: Any) -> list:
    r = _check(handle, DLClassifierResult, 1, "DL classifier result")
    results = r.results
    idx = to_scalar(index, 2, "one image index or 'all'")
    if is_str(idx):
        if str(idx) != "all":
            raise wrong_value(2, f"index must be an image index or 'all', got {idx!r}")
        idx = None
    elif is_int(idx):
        idx = int(idx)
        if not 0 <= idx < len(results):
            raise wrong_value(2, f"image index {idx} outside 0 … {len(results) - 1}")
    else:
        raise wrong_type(2, f"index must be an integer or 'all', got {idx!r}")
    names = to_tuple(gen_result_name)
    if not names:
        raise wrong_num(3, "no result name")
    keys = []
    for n in names:
        if not is_str(n):
            raise wrong_type(3, f"gen_result_name must be strings, got {n!r}")
        if str(n) not in _RESULT_NAMES:
            raise _unsupported(n, "get_dl_classifier_result (available: "
                                  + ", ".join(repr(k) for k in _RESULT_NAMES) + ")")
        keys.append(_RESULT_NAMES[str(n)])
    out: list = []
    for key in keys:
        if idx is None:  # the best class of every image
            out.extend(res[key][0] for res in results)
        else:  # every class of one image, by descending confidence
            out.extend(results[idx][key])
    return out


@operator
def get_dl_classifier_result(dlclassifier_result_handle: Any, index: Any,
                             gen_result_name: Any) -> list:
    """Results of apply_dl_classifier.  ``index`` = an image (0-based): all classes of that
    image, by descending confidence; ``'all'``: the best class of every image.
    ``gen_result_name``: ``'predicted_classes'`` (names), ``'confidences'``,
    ``'predicted_class_indices'`` (positions in ``classes``); several names concatenate."""
    return _classifier_result(dlclassifier_result_handle, index, gen_result_name)


@operator
def get_dl_classifier_result_s(dlclassifier_result_handle: Any, index: Any,
                               gen_result_name: Any) -> Any:
    """Like get_dl_classifier_result, for exactly one value (e.g. ``'all'`` on one image)."""
    return single(_classifier_result(dlclassifier_result_handle, index, gen_result_name))


# --------------------------------------------------------------------------------------------
# clearing
# --------------------------------------------------------------------------------------------
def _clear(handles: Any, cls: type, what: str, clear) -> None:
    hs = handles if isinstance(handles, (list, tuple)) else [handles]
    for h in hs:
        if not isinstance(h, cls):
            raise wrong_type(1, f"expected {what} handles, got {type(h).__name__}")
    for h in hs:
        clear(h)


def _clear_classifier(c: DLClassifier) -> None:
    m = c.model
    if m is None:
        return
    with m.lock:
        m.clear()
        c.model = None


@operator
def clear_dl_classifier(dlclassifier_handle: Any) -> None:
    """Free one classifier or a list; a cleared handle used again raises 2454, clearing it
    again does nothing."""
    _clear(dlclassifier_handle, DLClassifier, "DL classifier", _clear_classifier)


@operator
def clear_dl_classifier_result(dlclassifier_result_handle: Any) -> None:
    """Free one result handle or a list (later use: 2454)."""
    _clear(dlclassifier_result_handle, DLClassifierResult, "DL classifier result",
           lambda h: setattr(h, "results", None))


@operator
def clear_dl_classifier_train_result(dlclassifier_train_result_handle: Any) -> None:
    """Free one train-result handle or a list (later use: 2454)."""
    _clear(dlclassifier_train_result_handle, DLClassifierTrainResult,
           "DL classifier train result", lambda h: setattr(h, "result", None))

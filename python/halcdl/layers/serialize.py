"""Serialized models: serialize_dl_model, deserialize_dl_model and the _dl_classifier twins.

A serialized item holds exactly the bytes write_dl_model writes (halcdl's native format,
docs/model_format.md: graph, weights, batch-norm statistics, optimizer state and every
parameter, with its checksum), so deserializing gives a model that infers and keeps training
bit-identically.  The bytes are built in memory; no file is touched.
"""

from __future__ import annotations

from typing import Any

from ..errors import H_ERR_DL_FILE_READ, H_ERR_DL_FILE_WRITE, H_ERR_HANDLE_CLEARED, \
    HOperatorError
from ..io.files import header_bytes, tensor_table
from ..io.native import checksum, model_contents, read_model_bytes
from ..models.handle import DLModel
from ..operators._tuple import operator, wrong_type
from ..operators import dl_classifier as _dlc
from ..operators.dl_model import check_model

__all__ = ["SerializedItem", "serialize_dl_model", "deserialize_dl_model",
           "serialize_dl_classifier", "deserialize_dl_classifier", "model_bytes"]

_NAME = "<serialized item>"


class SerializedItem:
    """A serialized item handle: ``data`` (bytes, read-only).  ``bytes(item)`` gives them;
    ``SerializedItem(data)`` wraps bytes read from elsewhere (e.g. a socket)."""

    __slots__ = ("_data", "cleared")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise wrong_type(1, f"a serialized item holds bytes, got {type(data).__name__}")
        self._data = bytes(data)
        self.cleared = False

    @property
    def data(self) -> bytes:
        return self._data

    def __bytes__(self) -> bytes:
        return self._data

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"<SerializedItem {len(self._data)} bytes>"


def model_bytes(m: DLModel) -> bytes:
    """The native-format bytes of ``m`` (the caller holds its lock); 7781 if the model holds
    something the format cannot store."""
    try:
        meta, tensors = model_contents(m)
        table, arrays = tensor_table(tensors)
    except (TypeError, ValueError) as err:
        raise HOperatorError(H_ERR_DL_FILE_WRITE, f"cannot serialize the model: {err}") \
            from None
    meta["checksum"] = checksum(meta, table, arrays)
    parts = [header_bytes({"__metadata__": meta, **table})]
    parts += [memoryview(a.reshape(-1)).cast("B") for a in arrays if a.nbytes]
    return b"".join(parts)


def _item(handle: Any, pos: int) -> SerializedItem:
    if isinstance(handle, (list, tuple)) and len(handle) == 1:
        handle = handle[0]
    if isinstance(handle, (bytes, bytearray, memoryview)):
        return SerializedItem(handle)
    if not isinstance(handle, SerializedItem):
        raise wrong_type(pos, f"expected a serialized item handle, got {type(handle).__name__}")
    if handle.cleared:
        raise HOperatorError(H_ERR_HANDLE_CLEARED, "the serialized item handle has been cleared")
    return handle


@operator
def serialize_dl_model(dlmodel_handle: Any) -> SerializedItem:
    """The model as a serialized item: everything write_dl_model writes (weights, batch-norm
    statistics, optimizer state, parameters).  The model is not changed."""
    m = check_model(dlmodel_handle, 1)
    with m.lock:
        check_model(m)
        return SerializedItem(model_bytes(m))


@operator
def deserialize_dl_model(serialized_item_handle: Any) -> DLModel:
    """A new model from a serialized item (serialize_dl_model's, or the bytes of a model file
    written by write_dl_model).  7780 for bytes that are no (intact) halcdl model, 7782 for a
    newer format version.  The model starts on the CPU, as after read_dl_model."""
    item = _item(serialized_item_handle, 1)
    try:
        return read_model_bytes(item.data, _NAME)
    except HOperatorError:
        raise
    except Exception as err:  # noqa: BLE001  (never let anything else escape)
        raise HOperatorError(H_ERR_DL_FILE_READ, f"cannot deserialize the model: "
                                                 f"{type(err).__name__}: {err}") from None


@operator
def serialize_dl_classifier(dlclassifier_handle: Any) -> SerializedItem:
    """The legacy classifier (its model and classes) as a serialized item."""
    c = _dlc._classifier(dlclassifier_handle, 1)
    with c.model.lock:
        _dlc._classifier(c, 1)
        return SerializedItem(model_bytes(c.model))


@operator
def deserialize_dl_classifier(serialized_item_handle: Any) -> "_dlc.DLClassifier":
    """A legacy classifier from serialize_dl_classifier's item (classes restored); a
    serialized model that is not a classifier → 1301."""
    m = deserialize_dl_model.__wrapped__(serialized_item_handle)
    kind = m.params.get("type", "classification")
    if kind != "classification":
        m.clear()
        raise _dlc._not_a_classifier(_NAME, kind)
    marker = m.params.get("meta_data", {}).get(_dlc.CLASSES_KEY)
    if marker is None:
        names = [str(n) for n in m.params["class_names"]]
        classes = names if len(set(names)) == len(names) else None
    else:
        classes = list(m.params["class_names"]) if marker == "set" else None
    m.params["meta_data"][_dlc.CLASSES_KEY] = "unset" if classes is None else "set"
    return _dlc.DLClassifier(m, classes)

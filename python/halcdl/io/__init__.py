"""Model files: halcdl's native format (docs/model_format.md) and ONNX (docs/onnx.md).

:func:`read_file` recognises a file by its content (a halcdl model file starts with the
safetensors header length and ``{``; an ONNX file is a protobuf ``ModelProto`` whose first
field is ``ir_version``) and, for ONNX, by the ``.onnx`` extension.  :func:`write_file`
writes the native format, or ONNX when the name ends in ``.onnx``.  Both raise
HOperatorError with HALCON's numbers and a message naming the file.  ``onnx`` is imported
only on an ONNX path.
"""

from __future__ import annotations


import os

from ..errors import H_ERR_DL_FILE_READ, HOperatorError
from ..models.handle import DLModel
from .files import FileFormatError, looks_like_safetensors, read_safetensors_file
from .native import FORMAT, FORMAT_VERSION, format_error, read_model_bytes, write_model

__all__ = ["FORMAT", "FORMAT_VERSION", "read_file", "write_file", "is_onnx_name",
           "NotAModelFile"]


# protobuf's own limit for one message is 2 GiB
MAX_ONNX_BYTES = 2**31 - 1


class NotAModelFile(HOperatorError):
    """7780: the file is neither a halcdl model file nor an ONNX model (wrong magic)."""


def is_onnx_name(path: str) -> bool:
    return str(path).lower().endswith(".onnx")


def _looks_like_onnx(head: bytes) -> bool:
    # protobuf field 1 (ir_version, varint) first, as every ONNX writer serialises it
    return len(head) >= 2 and head[0] == 0x08


def read_file(path: str, seed: int) -> DLModel:
    """The model stored in the file ``path`` (which exists).  ``seed``: engine seed for a
    model whose file carries none (ONNX)."""
    # The first bytes decide what the file is before the rest is read: a halcdl file is read
    # only as far as its header promises (files.read_safetensors_file), an ONNX file only up
    # to MAX_ONNX_BYTES, anything else not at all.
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(16)
            f.seek(0)
            if looks_like_safetensors(head):
                try:
                    data, parsed = read_safetensors_file(f, size)
                    return read_model_bytes(data, path, parsed)
                except FileFormatError as err:
                    raise format_error(path, err) from None
            elif is_onnx_name(path) or _looks_like_onnx(head):
                if size > MAX_ONNX_BYTES:
                    raise HOperatorError(H_ERR_DL_FILE_READ,
                                         f"cannot read model file {path!r}: {size} bytes, more "
                                         f"than an ONNX model may have ({MAX_ONNX_BYTES})")
                data = f.read()
            else:
                data = head
    except OSError as err:
        raise HOperatorError(H_ERR_DL_FILE_READ, f"cannot read model file {path!r}: "
                                                 f"{err.strerror or err}") from None
    if is_onnx_name(path) and not looks_like_safetensors(data[:16]):
        from .onnx_import import import_onnx

        return import_onnx(path, seed, data)
    if len(data) >= 9 and not looks_like_safetensors(data[:16]):
        if _looks_like_onnx(data[:16]):
            from .onnx_import import OnnxParseError, import_onnx

            try:
                return import_onnx(path, seed, data)
            except OnnxParseError:
                pass  # only looked like one
        raise NotAModelFile(H_ERR_DL_FILE_READ, f"cannot read model file {path!r}: not a "
                                                f"halcdl model file (wrong magic) and not an "
                                                f"ONNX model")
    return read_model_bytes(data, path)


def write_file(m: DLModel, path: str) -> None:
    """Write ``m`` (its lock held by the caller): ONNX for ``*.onnx``, else native."""
    if is_onnx_name(path):
        from .onnx_export import export_onnx

        export_onnx(m, path)
    else:
        write_model(m, path)

"""Model files: halcdl's native format (docs/model_format.md).

:func:`read_file` recognises a halcdl model file by its content (the safetensors header
length, then ``{``), whatever its extension.  :func:`write_file` writes the native format.
Both raise HOperatorError with HALCON's numbers and a message naming the file.
"""

from __future__ import annotations

from ..errors import H_ERR_DL_FILE_READ, HOperatorError
from ..models.handle import DLModel
from .files import looks_like_safetensors
from .native import FORMAT, FORMAT_VERSION, read_model_bytes, write_model

__all__ = ["FORMAT", "FORMAT_VERSION", "read_file", "write_file", "NotAModelFile"]


class NotAModelFile(HOperatorError):
    """7780: the file is not a halcdl model file (wrong magic)."""


def read_file(path: str, seed: int) -> DLModel:
    """The model stored in the file ``path`` (which exists).  ``seed``: engine seed for a
    model whose file carries none."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise HOperatorError(H_ERR_DL_FILE_READ, f"cannot read model file {path!r}: "
                                                 f"{err.strerror or err}") from None
    if len(data) >= 9 and not looks_like_safetensors(data[:16]):
        raise NotAModelFile(H_ERR_DL_FILE_READ, f"cannot read model file {path!r}: not a "
                                                f"halcdl model file (wrong magic)")
    return read_model_bytes(data, path)


def write_file(m: DLModel, path: str) -> None:
    """Write ``m`` (its lock held by the caller) in the native format."""
    write_model(m, path)

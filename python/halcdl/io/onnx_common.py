"""What the ONNX importer and exporter share: the lazy import of the optional packages."""

from __future__ import annotations

from ..errors import HOperatorError

__all__ = ["require_onnx", "EXTRA_HINT"]

EXTRA_HINT = "install the optional extra: pip install 'halcdl[onnx]'"


def require_onnx(code: int):
    """The ``onnx`` module, or HOperatorError ``code`` (7801 read / 7803 write) naming the
    extra that provides it.  Imported here, only when an ONNX path is used."""
    try:
        import onnx  # noqa: F401
        from onnx import helper, numpy_helper  # noqa: F401
    except ImportError as err:
        raise HOperatorError(code, f"ONNX support needs the 'onnx' package, which is not "
                                   f"installed ({err}); {EXTRA_HINT}") from None
    return onnx

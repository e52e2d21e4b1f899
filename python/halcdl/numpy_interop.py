"""``halcon.numpy_interop`` of HALCON's binding: ``from halcdl.numpy_interop import
himage_as_numpy_array, himage_from_numpy_array`` (docs/interop.md)."""

from .operators.interop import himage_as_numpy_array, himage_from_numpy_array

__all__ = ["himage_as_numpy_array", "himage_from_numpy_array"]

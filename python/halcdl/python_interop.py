"""``halcon.python_interop`` of HALCON's binding: ``from halcdl.python_interop import
as_python_dict, from_python_dict`` (docs/interop.md)."""

from .operators.interop import as_python_dict, from_python_dict

__all__ = ["as_python_dict", "from_python_dict"]

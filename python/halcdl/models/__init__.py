"""Architectures as graph specs (pure Python data) and the model handle."""

from .zoo import ARCHITECTURES, Architecture, get_architecture

__all__ = ["ARCHITECTURES", "Architecture", "get_architecture"]

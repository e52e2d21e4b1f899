"""HALCON's procedures above the operators (preprocessing, …) and the evaluation measures.

``__all__`` lists the HALCON procedures only: ``halcdl/__init__.py`` re-exports them at the top
level (tests/test_conventions.py checks their signatures).  The segmentation measures stay
importable from here by name."""

from .evaluation import evaluate_segmentation, segmentation_confusion_matrix  # noqa: F401
from . import preprocess as _preprocess
from .preprocess import *  # noqa: F401,F403

__all__ = [*_preprocess.__all__]

"""HALCON's deep-learning procedures (``__all__``, exported at the top level) and halcdl's
evaluation helpers (importable from here: evaluate_segmentation, segmentation_confusion_matrix;
not HALCON procedures, so not in ``__all__``)."""

from .augment import augment_dl_samples
from .evaluation import evaluate_segmentation, segmentation_confusion_matrix  # noqa: F401

__all__ = [
    "augment_dl_samples",
]

"""HALCON's deep-learning procedures (``__all__``, exported at the top level) and halcdl's
evaluation helpers (importable from here: evaluate_segmentation, segmentation_confusion_matrix;
not HALCON procedures, so not in ``__all__``)."""

from .augment import augment_dl_samples
from .evaluation import evaluate_segmentation, segmentation_confusion_matrix  # noqa: F401
# HALCON's dataset procedures (docs/datasets.md)
from . import dataset as _dataset  # noqa: E402
from .dataset import *  # noqa: E402,F401,F403

__all__ = [
    "augment_dl_samples",
    *_dataset.__all__,
]

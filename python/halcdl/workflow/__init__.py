"""Workflow helpers above the operators: evaluation measures (more procedures to come)."""

from .evaluation import evaluate_segmentation, segmentation_confusion_matrix

__all__ = ["evaluate_segmentation", "segmentation_confusion_matrix"]

# HALCON's dataset procedures (docs/datasets.md); exported at the top level (halcdl.<name>).
from . import dataset as _dataset  # noqa: E402
from .dataset import *  # noqa: E402,F401,F403

# The evaluation helpers above are halcdl's own (not HALCON procedures): importable from
# halcdl.workflow, but not part of the top-level operator set.
__all__ = [*_dataset.__all__]

"""Moved: the segmentation measures live in :mod:`halcdl.workflow.evaluate` (next to
evaluate_dl_model).  This module re-exports them for old imports."""

from .evaluate import evaluate_segmentation, segmentation_confusion_matrix

__all__ = ["evaluate_segmentation", "segmentation_confusion_matrix"]

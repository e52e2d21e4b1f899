"""Workflow helpers above the operators: evaluation measures (more procedures to come)."""

from .evaluate_detection import evaluate_detection
from .evaluation import evaluate_segmentation, segmentation_confusion_matrix

__all__ = ["evaluate_segmentation", "segmentation_confusion_matrix", "evaluate_detection"]

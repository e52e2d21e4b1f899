"""HALCON's deep-learning procedures above the operators (exported at the top level)."""

from .evaluation import evaluate_segmentation, segmentation_confusion_matrix
from .evaluate import evaluate_dl_model
from .train import create_dl_train_param, set_dl_model_param_max_gpu_batch_size, train_dl_model

# the procedures (exported by ``halcdl``); evaluate_segmentation and
# segmentation_confusion_matrix stay importable from here but are no HALCON procedures
__all__ = [
    "create_dl_train_param",
    "evaluate_dl_model",
    "set_dl_model_param_max_gpu_batch_size",
    "train_dl_model",
]

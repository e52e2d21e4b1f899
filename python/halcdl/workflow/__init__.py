"""HALCON's deep-learning procedures (``__all__``, exported at the top level) and halcdl's
evaluation helpers (importable from here: evaluate_segmentation, segmentation_confusion_matrix,
evaluate_detection;
not HALCON procedures, so not in ``__all__``)."""

from .augment import augment_dl_samples
from .evaluate_detection import evaluate_detection  # noqa: F401
from .evaluation import evaluate_segmentation, segmentation_confusion_matrix  # noqa: F401
from .evaluate import evaluate_dl_model
from .detection_param import determine_dl_model_detection_param
from .train import create_dl_train_param, set_dl_model_param_max_gpu_batch_size, train_dl_model
from .batch_size import optimize_dl_model_batch_size
from .jobs import TrainingJob, TrainingQueue, start_train_dl_model
# HALCON's dataset procedures (docs/datasets.md)
from . import dataset as _dataset  # noqa: E402
from .dataset import *  # noqa: E402,F401,F403
# HALCON's preprocessing procedures (docs/preprocessing.md)
from . import preprocess as _preprocess  # noqa: E402
from .preprocess import *  # noqa: E402,F401,F403

__all__ = [
    "augment_dl_samples",
    "create_dl_train_param",
    "determine_dl_model_detection_param",
    "evaluate_dl_model",
    "set_dl_model_param_max_gpu_batch_size",
    "train_dl_model",
    "optimize_dl_model_batch_size",
    "start_train_dl_model",
    "TrainingJob",
    "TrainingQueue",
    *_dataset.__all__,
    *_preprocess.__all__,
]

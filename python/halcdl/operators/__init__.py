"""HALCON's operators (thin: argument normalisation, validation, error numbers)."""

from .dict_ops import (
    copy_dict,
    create_dict,
    get_dict_object,
    get_dict_param,
    get_dict_param_s,
    get_dict_tuple,
    get_dict_tuple_s,
    remove_dict_key,
    set_dict_object,
    set_dict_tuple,
)
from .dict_ops import dict_to_json, json_to_dict, read_dict, write_dict
from .dl_classifier import (
    DLClassifier,
    DLClassifierResult,
    DLClassifierTrainResult,
    apply_dl_classifier,
    clear_dl_classifier,
    clear_dl_classifier_result,
    clear_dl_classifier_train_result,
    get_dl_classifier_param,
    get_dl_classifier_param_s,
    get_dl_classifier_result,
    get_dl_classifier_result_s,
    get_dl_classifier_train_result,
    get_dl_classifier_train_result_s,
    read_dl_classifier,
    set_dl_classifier_param,
    train_dl_classifier_batch,
    write_dl_classifier,
)
from .dl_device import (
    DLDevice,
    get_dl_device_param,
    get_dl_device_param_s,
    query_available_dl_devices,
    query_available_dl_devices_s,
)
from .dl_model import (
    DLModel,
    apply_dl_model,
    apply_dl_model_s,
    clear_dl_model,
    get_dl_model_param,
    get_dl_model_param_s,
    read_dl_model,
    set_dl_model_param,
    train_dl_model_batch,
    write_dl_model,
)
from .dl_detection import create_dl_model_detection
from .system import get_system, get_system_s, set_system

__all__ = [
<<<<<<< HEAD
    "create_dl_model_detection",
=======
    "read_dict",
    "write_dict",
    "dict_to_json",
    "json_to_dict",
>>>>>>> main
    "apply_dl_classifier",
    "apply_dl_model",
    "apply_dl_model_s",
    "clear_dl_classifier",
    "clear_dl_classifier_result",
    "clear_dl_classifier_train_result",
    "clear_dl_model",
    "copy_dict",
    "create_dict",
    "get_dict_object",
    "get_dict_param",
    "get_dict_param_s",
    "get_dict_tuple",
    "get_dict_tuple_s",
    "get_dl_classifier_param",
    "get_dl_classifier_param_s",
    "get_dl_classifier_result",
    "get_dl_classifier_result_s",
    "get_dl_classifier_train_result",
    "get_dl_classifier_train_result_s",
    "get_dl_device_param",
    "get_dl_device_param_s",
    "get_dl_model_param",
    "get_dl_model_param_s",
    "get_system",
    "get_system_s",
    "query_available_dl_devices",
    "query_available_dl_devices_s",
    "read_dl_classifier",
    "read_dl_model",
    "remove_dict_key",
    "set_dict_object",
    "set_dict_tuple",
    "set_dl_classifier_param",
    "set_dl_model_param",
    "set_system",
    "train_dl_classifier_batch",
    "train_dl_model_batch",
    "write_dl_classifier",
    "write_dl_model",
    "DLModel",
    "DLDevice",
    "DLClassifier",
    "DLClassifierResult",
    "DLClassifierTrainResult",
]

# the HALCON operators (everything in __all__ except the handle classes)
OPERATORS = tuple(n for n in __all__ if not n[0].isupper())

"""halcdl: HALCON's procedural deep-learning API for Python, over a C++ engine.

``import halcdl as ha`` gives the operators (``ha.read_dl_model``, ``ha.train_dl_model_batch``,
…), the error classes (``ha.HOperatorError``) and ``ha.errors`` with the ``H_ERR_*`` numbers.
"""

try:
    from importlib.metadata import version as _version

    __version__ = _version("halcdl")
except Exception:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

from ._native import core as _core
from . import errors
from .errors import HError, HOperatorError, HTupleConversionError, NotPretrainedWarning

# Errors thrown by the engine arrive as HOperatorError(error_code, message).
_core.set_error_class(HOperatorError)

from .operators import (  # noqa: E402  (the operator set)
    apply_dl_classifier,
    apply_dl_model,
    apply_dl_model_s,
    clear_dl_classifier,
    clear_dl_classifier_result,
    clear_dl_classifier_train_result,
    clear_dl_model,
    copy_dict,
    create_dict,
    get_dict_object,
    get_dict_param,
    get_dict_param_s,
    get_dict_tuple,
    get_dict_tuple_s,
    get_dl_classifier_param,
    get_dl_classifier_param_s,
    get_dl_classifier_result,
    get_dl_classifier_result_s,
    get_dl_classifier_train_result,
    get_dl_classifier_train_result_s,
    get_dl_device_param,
    get_dl_device_param_s,
    get_dl_model_param,
    get_dl_model_param_s,
    get_system,
    get_system_s,
    query_available_dl_devices,
    query_available_dl_devices_s,
    read_dl_classifier,
    read_dl_model,
    remove_dict_key,
    set_dict_object,
    set_dict_tuple,
    set_dl_classifier_param,
    set_dl_model_param,
    set_system,
    train_dl_classifier_batch,
    train_dl_model_batch,
    write_dl_classifier,
    write_dl_model,
    DLClassifier,
    DLClassifierResult,
    DLClassifierTrainResult,
    DLDevice,
    DLModel,
)
from .hobject import HObject, concat_obj, count_obj, gen_empty_obj, select_obj  # noqa: E402

__all__ = [
    "apply_dl_classifier",
    "apply_dl_model",
    "apply_dl_model_s",
    "clear_dl_classifier",
    "clear_dl_classifier_result",
    "clear_dl_classifier_train_result",
    "clear_dl_model",
    "concat_obj",
    "count_obj",
    "copy_dict",
    "create_dict",
    "get_dict_object",
    "gen_empty_obj",
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
    "select_obj",
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
    "HObject",
    "HError",
    "HOperatorError",
    "HTupleConversionError",
    "NotPretrainedWarning",
    "errors",
    "__version__",
]

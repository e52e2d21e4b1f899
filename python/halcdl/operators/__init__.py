"""HALCON's operators (thin: argument normalisation, validation, error numbers)."""

from .dict_ops import (
    copy_dict,
    create_dict,
    get_dict_object,
    get_dict_param,
    get_dict_tuple,
    get_dict_tuple_s,
    remove_dict_key,
    set_dict_object,
    set_dict_tuple,
)
from .dl_device import DLDevice, get_dl_device_param, query_available_dl_devices
from .dl_model import (
    DLModel,
    apply_dl_model,
    clear_dl_model,
    get_dl_model_param,
    get_dl_model_param_s,
    read_dl_model,
    set_dl_model_param,
    train_dl_model_batch,
)
from .system import get_system, get_system_s, set_system

__all__ = [
    "apply_dl_model",
    "clear_dl_model",
    "copy_dict",
    "create_dict",
    "get_dict_object",
    "get_dict_param",
    "get_dict_tuple",
    "get_dict_tuple_s",
    "get_dl_device_param",
    "get_dl_model_param",
    "get_dl_model_param_s",
    "get_system",
    "get_system_s",
    "query_available_dl_devices",
    "read_dl_model",
    "remove_dict_key",
    "set_dict_object",
    "set_dict_tuple",
    "set_dl_model_param",
    "set_system",
    "train_dl_model_batch",
    "DLModel",
    "DLDevice",
]

# the HALCON operators (everything in __all__ except the handle classes)
OPERATORS = tuple(__all__[:-2])

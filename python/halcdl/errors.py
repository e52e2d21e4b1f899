"""Exceptions and HALCON error numbers.

halcdl raises the exceptions of HALCON's Python binding:

* :class:`HError` -- base class, carries ``.message``.
* :class:`HOperatorError` -- an operator failed; ``.error_code`` is HALCON's error number
  (the ``H_ERR_*`` constants below), ``.message`` the text.  ``str(err) == err.message`` and
  the message starts with ``"HALCON error #<code>: "`` like HALCON's own.
* :class:`HTupleConversionError` -- an ``_s`` operator returned a tuple that does not hold
  exactly one value.

The constants carry HALCON's own names (so ported code that imports them keeps working) and,
for the deep-learning codes halcdl raises, descriptive aliases (``H_ERR_DL_WRONG_BATCH_SIZE``
is ``H_ERR_DL_INPUT_WRONG_BS_WITH_MULTIPLIER`` = 7800).  :data:`ERROR_MESSAGES` maps every
code to a short meaning.
"""

from __future__ import annotations

__all__ = [
    "HError",
    "HOperatorError",
    "HTupleConversionError",
    "NotPretrainedWarning",
    "ERROR_MESSAGES",
    "error_message",
]


class HError(Exception):
    """Base class of every halcdl error.  ``.message`` holds the text."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = str(message)

    def __str__(self) -> str:
        return self.message


class HOperatorError(HError):
    """An operator failed.

    ``HOperatorError(error_code, message)``: ``.error_code`` (int, HALCON's number),
    ``.message`` (``"HALCON error #<code>: <text>"``), ``.operator`` (name of the operator
    that raised, filled in by the operator wrapper, else ``None``).  The C++ engine raises
    this class through ``core.set_error_class``.
    """

    def __init__(self, error_code: int, message: str = "") -> None:
        code = int(error_code)
        text = str(message) if message else ERROR_MESSAGES.get(code, "error")
        self._text = text
        if text.startswith("HALCON error #"):
            full = text
        else:
            full = f"HALCON error #{code}: {text}"
        super().__init__(full)
        self.error_code = code
        self.operator: str | None = None

    def __reduce__(self):  # picklable (multiprocessing, pytest-xdist)
        return (type(self), (self.error_code, self._text))

    def __repr__(self) -> str:
        return f"HOperatorError({self.error_code}, {self._text!r})"


class HTupleConversionError(HError):
    """A tuple result could not be converted to the single value an ``_s`` operator returns."""


class NotPretrainedWarning(UserWarning):
    """read_dl_model: halcdl ships no ImageNet weights; the network is randomly initialised."""


def error_message(code: int) -> str:
    """Short meaning of HALCON error ``code`` (``'unknown error'`` if not listed)."""
    return ERROR_MESSAGES.get(int(code), "unknown error")


# --------------------------------------------------------------------------------------------
# Generic parameter checks: 1200 + n / 1300 + n / 1400 + n for control parameter n.
# halcdl counts n over the Python parameters of the operator, 1-based.
# --------------------------------------------------------------------------------------------
H_ERR_WIPT1 = 1201  # wrong type of control parameter 1
H_ERR_WIPT2 = 1202  # wrong type of control parameter 2
H_ERR_WIPT3 = 1203  # wrong type of control parameter 3
H_ERR_WIPT4 = 1204  # wrong type of control parameter 4
H_ERR_WIPT5 = 1205  # wrong type of control parameter 5
H_ERR_WIPT6 = 1206  # wrong type of control parameter 6
H_ERR_WIPT7 = 1207  # wrong type of control parameter 7
H_ERR_WIPT8 = 1208  # wrong type of control parameter 8
H_ERR_WIPT9 = 1209  # wrong type of control parameter 9
H_ERR_WIPT10 = 1210  # wrong type of control parameter 10
H_ERR_WIPT11 = 1211  # wrong type of control parameter 11
H_ERR_WIPT12 = 1212  # wrong type of control parameter 12
H_ERR_WIPT13 = 1213  # wrong type of control parameter 13
H_ERR_WIPT14 = 1214  # wrong type of control parameter 14
H_ERR_WIPT15 = 1215  # wrong type of control parameter 15
H_ERR_WIPT16 = 1216  # wrong type of control parameter 16
H_ERR_WIPT17 = 1217  # wrong type of control parameter 17
H_ERR_WIPT18 = 1218  # wrong type of control parameter 18
H_ERR_WIPT19 = 1219  # wrong type of control parameter 19
H_ERR_WIPT20 = 1220  # wrong type of control parameter 20

H_ERR_WIPV1 = 1301  # wrong value of control parameter 1
H_ERR_WIPV2 = 1302  # wrong value of control parameter 2
H_ERR_WIPV3 = 1303  # wrong value of control parameter 3
H_ERR_WIPV4 = 1304  # wrong value of control parameter 4
H_ERR_WIPV5 = 1305  # wrong value of control parameter 5
H_ERR_WIPV6 = 1306  # wrong value of control parameter 6
H_ERR_WIPV7 = 1307  # wrong value of control parameter 7
H_ERR_WIPV8 = 1308  # wrong value of control parameter 8
H_ERR_WIPV9 = 1309  # wrong value of control parameter 9
H_ERR_WIPV10 = 1310  # wrong value of control parameter 10
H_ERR_WIPV11 = 1311  # wrong value of control parameter 11
H_ERR_WIPV12 = 1312  # wrong value of control parameter 12
H_ERR_WIPV13 = 1313  # wrong value of control parameter 13
H_ERR_WIPV14 = 1314  # wrong value of control parameter 14
H_ERR_WIPV15 = 1315  # wrong value of control parameter 15
H_ERR_WIPV16 = 1316  # wrong value of control parameter 16
H_ERR_WIPV17 = 1317  # wrong value of control parameter 17
H_ERR_WIPV18 = 1318  # wrong value of control parameter 18
H_ERR_WIPV19 = 1319  # wrong value of control parameter 19
H_ERR_WIPV20 = 1320  # wrong value of control parameter 20

H_ERR_WIPN1 = 1401  # wrong number of values of control parameter 1
H_ERR_WIPN2 = 1402  # wrong number of values of control parameter 2
H_ERR_WIPN3 = 1403  # wrong number of values of control parameter 3
H_ERR_WIPN4 = 1404  # wrong number of values of control parameter 4
H_ERR_WIPN5 = 1405  # wrong number of values of control parameter 5
H_ERR_WIPN6 = 1406  # wrong number of values of control parameter 6
H_ERR_WIPN7 = 1407  # wrong number of values of control parameter 7
H_ERR_WIPN8 = 1408  # wrong number of values of control parameter 8
H_ERR_WIPN9 = 1409  # wrong number of values of control parameter 9
H_ERR_WIPN10 = 1410  # wrong number of values of control parameter 10
H_ERR_WIPN11 = 1411  # wrong number of values of control parameter 11
H_ERR_WIPN12 = 1412  # wrong number of values of control parameter 12
H_ERR_WIPN13 = 1413  # wrong number of values of control parameter 13
H_ERR_WIPN14 = 1414  # wrong number of values of control parameter 14
H_ERR_WIPN15 = 1415  # wrong number of values of control parameter 15
H_ERR_WIPN16 = 1416  # wrong number of values of control parameter 16
H_ERR_WIPN17 = 1417  # wrong number of values of control parameter 17
H_ERR_WIPN18 = 1418  # wrong number of values of control parameter 18
H_ERR_WIPN19 = 1419  # wrong number of values of control parameter 19
H_ERR_WIPN20 = 1420  # wrong number of values of control parameter 20
# --------------------------------------------------------------------------------------------
# Handles, dicts, files, memory
# --------------------------------------------------------------------------------------------
H_ERR_WRONG_HANDLE_TYPE = 2404  # wrong handle type
H_ERR_HANDLE_CLEARED = 2454  # handle was cleared
H_ERR_WT_CTRL_EXPECTED = 2460  # control value expected, iconic object found
H_ERR_WT_ICONIC_EXPECTED = 2461  # iconic object expected, control value found
H_ERR_DICT_KEY = 2894  # dict does not contain the requested key
H_ERR_FNF = 5200  # file not found
H_ERR_MEM = 6001  # not enough memory
H_ERR_MEM_VID = 6021  # not enough GPU memory

# --------------------------------------------------------------------------------------------
# Deep learning (HALCON's names)
# --------------------------------------------------------------------------------------------
H_ERR_CNN_TRAINING_NOT_SUP = 7707
H_ERR_CNN_GPU_REQUIRED = 7708
H_ERR_CNN_CUDA_LIBS_MISSING = 7709
H_ERR_CNN_WGPN = 7713
H_ERR_CNN_INVALID_LABELS = 7714
H_ERR_CNN_MULTIPLE_CLASSES = 7716
H_ERR_CNN_CUBLAS_LIBS_MISSING = 7717
H_ERR_CNN_CUDNN_LIBS_MISSING = 7718
H_ERR_CNN_TRAINING_FAILED = 7720
H_ERR_CNN_INVALID_INPUT_SIZE = 7722
H_ERR_CNN_INVALID_INPUT_DEPTH = 7724
H_ERR_CNN_DEPTH_NOT_AVAILABLE = 7725
H_ERR_CNN_INVALID_IMAGE_SIZE = 7730
H_ERR_DL_LAYER_PARAM = 7731  # layer API: invalid layer parameters (number unconfirmed)
H_ERR_DL_LAYER_INPUT = 7732  # layer API: layer inputs missing or not fitting (unconfirmed)
H_ERR_DL_GRAPH = 7733  # layer API: invalid network graph (cycle, names, outputs; unconfirmed)
H_ERR_CNN_INVALID_SHAPE = 7735
H_ERR_CNN_INVALID_INPUT_DATA = 7736
H_ERR_CNN_RUNTIME_FAILED = 7742
H_ERR_CNNGRAPH_NO_CLASS_CHANGE = 7774
H_ERR_CNNGRAPH_NO_IMAGE_RESIZE = 7775
H_ERR_DL_FILE_READ = 7780
H_ERR_DL_FILE_WRITE = 7781
H_ERR_DL_FILE_WRONG_VERSION = 7782
H_ERR_DL_INPUTS_MISSING = 7783
H_ERR_DL_PARAM_NOT_AVAILABLE = 7788
H_ERR_DL_INPUT_WRONG_LENGTH = 7789
H_ERR_DL_INPUT_WRONG_TYPE = 7790
H_ERR_DL_INPUT_WRONG_VALUES = 7791
H_ERR_DL_CLASS_IDS_NOT_UNIQUE = 7792
H_ERR_DL_CLASS_IDS_INVALID = 7793
H_ERR_DL_CLASS_IDS_INVALID_OVERLAP = 7797
H_ERR_DL_WRONG_BS_MULTIPLIER = 7799
H_ERR_DL_INPUT_WRONG_BS_WITH_MULTIPLIER = 7800
H_ERR_DL_READ_ONNX = 7801
H_ERR_DL_CLASS_IDS_MISSING = 7802
H_ERR_DL_WRITE_ONNX = 7803
H_ERR_DL_FPN_SCALES = 7810
H_ERR_DL_FPN_INVALID_BACKBONE = 7811
H_ERR_DL_FPN_INVALID_FEATURE_MAP_SIZE = 7812
H_ERR_DL_FPN_INVALID_LEVELS = 7813
H_ERR_DL_DETECTOR_INVALID_PARAM = 7821
H_ERR_DL_DETECTOR_INVALID_PARAM_VALUE = 7822
H_ERR_DL_DETECTOR_INVALID_INSTANCE_TYPE = 7824
H_ERR_DL_SOLVER_INVALID_TYPE = 7840
H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM = 7911
H_ERR_DL_MODEL_RUNTIME = 7913
H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE = 7914
H_ERR_DL_MODEL_INVALID_NUM_SAMPLES = 7915
H_ERR_DL_INVALID_DATASET = 7925
H_ERR_DL_INVALID_SAMPLE_INDEX = 7926

# --------------------------------------------------------------------------------------------
# Descriptive aliases (same numbers)
# --------------------------------------------------------------------------------------------
H_ERR_DICT_KEY_MISSING = H_ERR_DICT_KEY
H_ERR_FILE_NOT_FOUND = H_ERR_FNF
H_ERR_OUT_OF_MEMORY = H_ERR_MEM
H_ERR_OUT_OF_GPU_MEMORY = H_ERR_MEM_VID
H_ERR_DL_TRAINING_NOT_SUPPORTED = H_ERR_CNN_TRAINING_NOT_SUP
H_ERR_DL_GPU_REQUIRED = H_ERR_CNN_GPU_REQUIRED
H_ERR_DL_CUDA_MISSING = H_ERR_CNN_CUDA_LIBS_MISSING
H_ERR_DL_CUBLAS_MISSING = H_ERR_CNN_CUBLAS_LIBS_MISSING
H_ERR_DL_CUDNN_MISSING = H_ERR_CNN_CUDNN_LIBS_MISSING
H_ERR_DL_WRONG_GENPARAM_NAME = H_ERR_CNN_WGPN
H_ERR_DL_INVALID_LABELS = H_ERR_CNN_INVALID_LABELS
H_ERR_DL_DUPLICATE_CLASS = H_ERR_CNN_MULTIPLE_CLASSES
H_ERR_DL_TRAINING_FAILED = H_ERR_CNN_TRAINING_FAILED
H_ERR_DL_INPUT_SIZE_TOO_SMALL = H_ERR_CNN_INVALID_INPUT_SIZE
H_ERR_DL_INVALID_NUM_CHANNELS = H_ERR_CNN_INVALID_INPUT_DEPTH
H_ERR_DL_CANNOT_SWITCH_1_TO_3_CHANNELS = H_ERR_CNN_DEPTH_NOT_AVAILABLE
H_ERR_DL_INVALID_DETECTION_IMAGE_SIZE = H_ERR_CNN_INVALID_IMAGE_SIZE
H_ERR_DL_INVALID_INPUT_SHAPE = H_ERR_CNN_INVALID_SHAPE
H_ERR_DL_INVALID_INPUT_DATA = H_ERR_CNN_INVALID_INPUT_DATA
H_ERR_DL_RUNTIME_NOT_SUPPORTED = H_ERR_CNN_RUNTIME_FAILED
H_ERR_DL_NO_CLASS_CHANGE = H_ERR_CNNGRAPH_NO_CLASS_CHANGE
H_ERR_DL_NO_IMAGE_RESIZE = H_ERR_CNNGRAPH_NO_IMAGE_RESIZE
H_ERR_DL_READ_FILE = H_ERR_DL_FILE_READ
H_ERR_DL_WRITE_FILE = H_ERR_DL_FILE_WRITE
H_ERR_DL_WRONG_FILE_VERSION = H_ERR_DL_FILE_WRONG_VERSION
H_ERR_DL_TUPLE_WRONG_LENGTH = H_ERR_DL_INPUT_WRONG_LENGTH
H_ERR_DL_TUPLE_WRONG_TYPE = H_ERR_DL_INPUT_WRONG_TYPE
H_ERR_DL_TUPLE_WRONG_VALUES = H_ERR_DL_INPUT_WRONG_VALUES
H_ERR_DL_WRONG_BATCH_SIZE_MULTIPLIER = H_ERR_DL_WRONG_BS_MULTIPLIER
H_ERR_DL_WRONG_BATCH_SIZE = H_ERR_DL_INPUT_WRONG_BS_WITH_MULTIPLIER
H_ERR_DL_INVALID_SOLVER = H_ERR_DL_SOLVER_INVALID_TYPE
H_ERR_DL_UNSUPPORTED_GENPARAM = H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM
H_ERR_DL_RUNTIME_CANNOT_BE_SET = H_ERR_DL_MODEL_RUNTIME
H_ERR_DL_UNSUPPORTED_GENVALUE = H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE
H_ERR_DL_INVALID_NUM_SAMPLES = H_ERR_DL_MODEL_INVALID_NUM_SAMPLES


ERROR_MESSAGES: dict[int, str] = {
    **{1200 + n: f"Wrong type of control parameter {n}" for n in range(1, 21)},
    **{1300 + n: f"Wrong value of control parameter {n}" for n in range(1, 21)},
    **{1400 + n: f"Wrong number of values of control parameter {n}" for n in range(1, 21)},
    2404: "Wrong handle type",
    2454: "Handle was cleared",
    2460: "Wrong type: control value expected, iconic object found",
    2461: "Wrong type: iconic object expected, control value found",
    2894: "Dict does not contain the requested key",
    5200: "File not found",
    6001: "Not enough memory available",
    6021: "Not enough GPU memory available",
    7707: "Training is not supported in the current environment",
    7708: "A GPU is required for this operation",
    7709: "The CUDA library is not available",
    7713: "Wrong generic parameter name",
    7714: "Invalid labels",
    7716: "Invalid classes: at least one class appears twice",
    7717: "The cuBLAS library is not available",
    7718: "The cuDNN library is not available",
    7720: "Training step failed (unsuitable training parameters, e.g. the loss diverged)",
    7722: "New input size is too small to produce meaningful features",
    7724: "New number of channels must be either 1 or 3",
    7725: "Number of channels cannot be switched from 1 to 3 for this network",
    7730: "Invalid input image size for a detection model",
    7731: "Invalid layer parameters",
    7732: "Layer inputs missing or not fitting",
    7733: "Invalid network graph",
    7735: "Invalid input shape",
    7736: "Invalid input data",
    7742: "Runtime not supported on this machine",
    7774: "Architecture not suitable for changing the number of classes",
    7775: "Architecture not suitable for changing the image size",
    7780: "Error reading a model file",
    7781: "Error writing a model file",
    7782: "Wrong model file version",
    7783: "Inputs missing in input dict",
    7788: "Parameter is not available",
    7789: "Tuple inputs have incorrect length",
    7790: "Tuple inputs have incorrect type",
    7791: "Some inputs have incorrect values",
    7792: "Some class ids are not unique",
    7793: "Some class ids are invalid",
    7797: "Some class ids overlap with ignore class ids",
    7799: "Batch size multiplier needs to be greater than 0",
    7800: "Number of samples must equal batch_size * batch_size_multiplier",
    7801: "Error reading an ONNX model",
    7802: "Model does not have class ids",
    7803: "Error writing an ONNX model",
    7810: "Wrong scales during FPN creation",
    7811: "Backbone unusable for FPN creation",
    7812: "Backbone feature maps not divisible by 2",
    7813: "Invalid FPN levels",
    7821: "Invalid detector parameter",
    7822: "Invalid detector parameter value",
    7824: "Invalid instance type",
    7840: "Invalid solver type",
    7911: "Unsupported generic parameter",
    7913: "Requested runtime cannot be set",
    7914: "Unsupported generic value(s)",
    7915: "Invalid number of samples",
    7925: "The given dataset is incorrect",
    7926: "Invalid sample index",
}

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

from . import operators as _operators  # noqa: E402
from .operators import *  # noqa: E402,F401,F403  (the operator set and handle classes)
from . import workflow as _workflow  # noqa: E402
from .workflow import *  # noqa: E402,F401,F403  (HALCON's procedures)
from . import layers as _layers  # noqa: E402
from .layers import *  # noqa: E402,F401,F403  (layer API, introspection, serialization)
from .hobject import HObject, concat_obj, count_obj, gen_empty_obj, select_obj  # noqa: E402

__all__ = [
    *_operators.__all__,
    *_workflow.__all__,
    *_layers.__all__,
    "concat_obj",
    "count_obj",
    "gen_empty_obj",
    "select_obj",
    "HObject",
    "HError",
    "HOperatorError",
    "HTupleConversionError",
    "NotPretrainedWarning",
    "errors",
    "__version__",
]

"""HALCON's layer API, model introspection and model serialization (issue 14).

* :mod:`.serialize`: serialize_dl_model / deserialize_dl_model and the _dl_classifier twins
  (a :class:`SerializedItem` holding halcdl's native model bytes).
* :mod:`.introspect`: get/set_dl_model_layer_param, get/set_dl_model_layer_weights,
  load_dl_model_weights, get_dl_model_layer, get_dl_layer_param.
* :mod:`.activations`: get_dl_model_layer_activations / _gradients, gen_dl_model_heatmap
  (docs/introspection.md).
* :mod:`.api`: create_dl_layer_* and create_dl_model, building the engine's graph spec
  directly (docs/layers.md).
"""

from . import activations as _activations
from . import api as _api
from . import introspect as _introspect
from .activations import *  # noqa: F401,F403
from .api import *  # noqa: F401,F403
from .introspect import *  # noqa: F401,F403
from .optimize import optimize_dl_model_for_inference
from .serialize import (
    SerializedItem,
    deserialize_dl_classifier,
    deserialize_dl_model,
    serialize_dl_classifier,
    serialize_dl_model,
)

__all__ = [
    *_api.__all__,
    *_activations.__all__,
    "optimize_dl_model_for_inference",
    *_introspect.__all__,
    "SerializedItem",
    "serialize_dl_model",
    "deserialize_dl_model",
    "serialize_dl_classifier",
    "deserialize_dl_classifier",
]

"""The model handle: a graph spec, the engine model built from it, and HALCON's parameters.

This module knows nothing about HALCON's tuple conventions or error numbers; the operators
(``halcdl.operators.dl_model``) validate arguments and then call these methods.
"""

from __future__ import annotations

import threading
from typing import Any

from .. import _gpu
from .._native import core
from ..errors import H_ERR_CNN_INVALID_SHAPE, HOperatorError
from .zoo import Architecture

__all__ = ["DLModel", "build_core_model"]


def build_core_model(spec: list, seed: int, class_ids: list[int]):
    """A new engine model for ``spec`` with its class-id mapping set."""
    m = core.Model(spec, int(seed))
    m.set_class_ids([int(c) for c in class_ids])
    return m


def copy_matching_params(src, dst) -> list[str]:
    """Copy every parameter (weights, biases, BN statistics) that exists in both engine models
    with the same name and shape from ``src`` to ``dst``.  Returns the names not copied (new
    or re-shaped parameters, which keep ``dst``'s fresh initialisation)."""
    src_names = set(src.param_names())
    skipped = []
    for name in dst.param_names():
        if name not in src_names:
            skipped.append(name)
            continue
        try:
            dst.set_param(name, src.get_param(name))
        except HOperatorError as err:  # re-shaped (the engine checks the shape first)
            if err.error_code != H_ERR_CNN_INVALID_SHAPE:
                raise
            skipped.append(name)
    return skipped


class DLModel:
    """A deep-learning model handle (what read_dl_model returns).

    Public attributes: ``spec`` (the node list the engine model was built from), ``core``
    (the ``halcdl._core.Model``; ``None`` after clear_dl_model), ``arch`` (the zoo entry),
    ``seed`` (engine seed of the initialisation), ``params`` (HALCON's model parameters, the
    values get_dl_model_param reports).
    """

    def __init__(self, arch: Architecture, seed: int, num_classes: int | None = None) -> None:
        k = arch.num_classes if num_classes is None else int(num_classes)
        self.arch = arch
        self.seed = int(seed)
        self.lock = threading.RLock()
        class_ids = list(range(k))
        self.spec: list = arch.build(k, arch.image_num_channels)
        self.core = build_core_model(self.spec, self.seed, class_ids)
        self.params: dict[str, Any] = {
            "type": arch.model_type,
            "batch_size": 1,
            "batch_size_multiplier": 1,
            "learning_rate": 0.001,
            "momentum": 0.9,
            "weight_prior": 0.0,
            "solver_type": "sgd",
            "adam_beta1": 0.9,
            "adam_beta2": 0.999,
            "adam_epsilon": 1e-8,
            "batchnorm_momentum": 0.1,
            "class_ids": class_ids,
            "class_names": [str(c) for c in class_ids],
            "class_weights": None,  # None = uniform
            "image_width": arch.image_width,
            "image_height": arch.image_height,
            "image_num_channels": arch.image_num_channels,
            "image_range_min": float(arch.image_range_min),
            "image_range_max": float(arch.image_range_max),
            "runtime": "cpu",
            "gpu": 0,
            "runtime_init": "immediately",
            "gpu_outputs": "false",
            "optimize_for_inference": "false",
            "meta_data": {
                "architecture": arch.file_name,
                "pretrained": "false",
                "weights": "randomly initialised (Kaiming normal, fan_out); halcdl ships no "
                "ImageNet weights",
            },
        }
        if self.is_segmentation:
            self.params["ignore_class_ids"] = []  # segmentation only: ids the loss skips
        if self.is_detection:  # create_dl_model_detection / a file sets the real values
            from .detection import DETECTION_DEFAULTS  # noqa: PLC0415
            import copy as _copy  # noqa: PLC0415

            self.params.update(_copy.deepcopy(DETECTION_DEFAULTS))
            self.params["backbone"] = ""
        self._hparams_dirty = True
        # halcdl.distributed.DataParallel while the model is data parallel ('data_parallel'),
        # else None; not a model parameter: never written to a file
        self.data_parallel = None

    # ----------------------------------------------------------------------------------------
    @property
    def cleared(self) -> bool:
        return self.core is None

    @property
    def is_segmentation(self) -> bool:
        """True for a model of type 'segmentation' (one class score per pixel)."""
        return self.params["type"] == "segmentation"

    @property
    def is_detection(self) -> bool:
        """True for a model of type 'detection' (boxes, docs/detection.md)."""
        return self.params["type"] == "detection"

    @property
    def ignore_class_ids(self) -> list[int]:
        return list(self.params.get("ignore_class_ids", []))

    @property
    def num_classes(self) -> int:
        return len(self.params["class_ids"])

    def hparams(self) -> dict:
        """The optimiser/loss settings in the engine's vocabulary (core.Model.set_hparams)."""
        p = self.params
        return {
            "learning_rate": float(p["learning_rate"]),
            "momentum": float(p["momentum"]),
            "weight_prior": float(p["weight_prior"]),
            "solver": p["solver_type"],
            "adam_beta1": float(p["adam_beta1"]),
            "adam_beta2": float(p["adam_beta2"]),
            "adam_epsilon": float(p["adam_epsilon"]),
            "class_weights": [] if p["class_weights"] is None else [float(w) for w in
                                                                     p["class_weights"]],
            "batchnorm_momentum": float(p["batchnorm_momentum"]),
        }

    def mark_hparams_dirty(self) -> None:
        self._hparams_dirty = True

    def push_hparams(self) -> None:
        """Send the hyper-parameters to the engine if they changed since the last push."""
        if self._hparams_dirty:
            self.core.set_hparams(self.hparams())
            if self.is_segmentation:
                self.core.set_ignore_ids(self.ignore_class_ids)
            if self.is_detection:
                from .detection import engine_config  # noqa: PLC0415

                self.core.set_detection(engine_config(self.params))
            self._hparams_dirty = False

    def rebuilt(self, num_classes: int, channels: int, class_ids: list[int],
                class_weights: list[float] | None):
        """A new (spec, engine model) pair for another class count and/or channel count.

        The new model starts from its own initialisation (same seed as this handle) and gets
        every parameter of the current model whose name and shape still match: only the
        re-shaped layers (the head for a new class count, the first conv for a new channel
        count) are newly initialised.  Nothing of ``self`` changes; the caller swaps with
        :meth:`adopt` once everything succeeded.  Optimiser state is not carried over.
        """
        spec = self.arch.build(int(num_classes), int(channels))
        new = build_core_model(spec, self.seed, class_ids)
        skipped = copy_matching_params(self.core, new)
        if self.is_detection:
            from .detection import engine_config, init_head_params  # noqa: PLC0415

            init_head_params(new, spec, self.seed, only=set(skipped))
            new.set_detection(engine_config(self.params))
        hp = self.hparams()
        hp["class_weights"] = [] if class_weights is None else [float(w) for w in class_weights]
        new.set_hparams(hp)
        if self.is_segmentation:
            new.set_ignore_ids(self.ignore_class_ids)  # 7797 if a new class id is ignored
        new.set_precision(self.core.get_precision())
        if self.core.device() >= 0:  # the new model lives where the old one did
            self.place(new, self.core.device())
        return spec, new

    @staticmethod
    def place(core_model, gpu: int) -> None:
        """Move an engine model to GPU ``gpu`` (-1: the CPU) with the current set_system GPU
        options; weights, running statistics and optimizer state move along.  Raises
        7742/7708/7709/7717/7718/6021 and leaves the model where it was."""
        from ..operators.system import gpu_options  # noqa: PLC0415  (import cycle)

        if gpu >= 0:
            _gpu.require_gpu(gpu)
            core_model.set_gpu_options(*gpu_options())
        core_model.set_device(gpu)

    def sync_gpu_options(self) -> None:
        """Apply the current set_system GPU options (cheap when unchanged)."""
        if self.core.device() >= 0:
            from ..operators.system import gpu_options  # noqa: PLC0415

            self.core.set_gpu_options(*gpu_options())

    def adopt(self, spec: list, new_core) -> None:
        """Swap in a model produced by :meth:`rebuilt` (its hparams are already pushed)."""
        self.spec = spec
        self.core = new_core
        self._hparams_dirty = False

    def clear(self) -> None:
        """Free the engine model; later use raises (checked by the operators)."""
        self.core = None

    def __repr__(self) -> str:
        state = "cleared" if self.cleared else f"{self.num_classes} classes"
        return f"<DLModel {self.arch.file_name} ({state})>"

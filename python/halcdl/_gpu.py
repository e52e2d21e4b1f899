"""The Python side of the GPU backend: device discovery and CuPy batches.

Nothing here imports CuPy or loads a CUDA library at ``import halcdl`` time: the CUDA backend
(``libhalcdl_cuda.so``) is loaded by :func:`halcdl._native.ensure_cuda` on the first GPU
request, CuPy only when a sample actually holds a CuPy array.
"""

from __future__ import annotations

import threading
from typing import Any

from . import _native
from ._native import core
from .errors import (
    H_ERR_CNN_GPU_REQUIRED,
    H_ERR_CNN_INVALID_INPUT_DATA,
    H_ERR_CNN_INVALID_SHAPE,
    HOperatorError,
)

__all__ = ["gpu_list", "require_gpu", "is_device_array", "device_batch", "cupy"]

_lock = threading.Lock()
_gpus: list[dict] | None = None


def gpu_list() -> list[dict]:
    """The GPUs of this machine (core.gpu_device_info dicts); [] when this build has no CUDA
    backend or the machine no driver/GPU.  Probed once per process."""
    global _gpus
    with _lock:
        if _gpus is None:
            try:
                _native.ensure_cuda()
                n = core.gpu_device_count()
            except HOperatorError:
                n = 0
            gpus = []
            for i in range(n):
                try:
                    gpus.append(dict(core.gpu_device_info(i)))
                except HOperatorError:  # e.g. in use by another process (exclusive mode)
                    pass
            _gpus = gpus
        return list(_gpus)


def require_gpu(index: int) -> None:
    """Raise the HALCON error that says why GPU ``index`` cannot be used: 7742 (no CUDA build),
    7709/7717/7718 (CUDA, cuBLAS or cuDNN missing), 7708 (no such GPU)."""
    _native.ensure_cuda()            # raises 7742 / 7709 / 7717 / 7718
    n = core.gpu_device_count()      # raises 7709 when the driver is missing
    if n == 0:
        raise HOperatorError(H_ERR_CNN_GPU_REQUIRED, "runtime 'gpu': no CUDA GPU found on this machine")
    if not 0 <= index < n:
        raise HOperatorError(H_ERR_CNN_GPU_REQUIRED,
                             f"gpu {index}: this machine has {n} CUDA GPU(s) (0 .. {n - 1})")


def is_device_array(x: Any) -> bool:
    """True for a CUDA array (CuPy, or anything with __cuda_array_interface__)."""
    return hasattr(x, "__cuda_array_interface__")


def cupy():
    """The cupy module (imported on first use); 7736 when it is not installed."""
    try:
        import cupy as cp  # noqa: PLC0415  (optional dependency)
    except ImportError as err:
        raise HOperatorError(H_ERR_CNN_INVALID_INPUT_DATA,
                             f"GPU arrays need CuPy (pip install cupy-cuda13x): {err}") from None
    return cp


def device_batch(samples: list, h: int, w: int, c: int, gpu: int):
    """The samples' CuPy images as one contiguous float32 NCHW CuPy array on GPU ``gpu``
    (the model's device, -1 for the CPU), assembled on the device (no host round trip).
    Returns None when no sample holds a device array; 7736 when only some do, when the model
    is not on a GPU, when they live on another GPU or hold NaN/Inf; 7735 on a wrong size."""
    imgs = [s.get("image") if isinstance(s, dict) else None for s in samples]
    on_dev = [is_device_array(x) for x in imgs]
    if not any(on_dev):
        return None
    if not all(on_dev):
        raise HOperatorError(H_ERR_CNN_INVALID_INPUT_DATA,
                             "a batch must hold only GPU (CuPy) images or only host images")
    if gpu < 0:
        raise HOperatorError(H_ERR_CNN_INVALID_INPUT_DATA,
                             "GPU (CuPy) images need the model on the GPU: set 'runtime' to 'gpu'")
    cp = cupy()
    out = []
    for i, x in enumerate(imgs):
        a = cp.asarray(x)
        if a.device.id != gpu:
            raise HOperatorError(H_ERR_CNN_INVALID_INPUT_DATA,
                                 f"sample {i}: the image is on GPU {a.device.id}, the model on GPU {gpu}")
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3 or a.shape[0] != h or a.shape[1] != w:
            raise HOperatorError(H_ERR_CNN_INVALID_SHAPE,
                                 f"sample {i}: image shape {tuple(a.shape)} does not match the "
                                 f"model's image size {w}x{h}")
        if a.shape[2] != c:
            raise HOperatorError(H_ERR_CNN_INVALID_INPUT_DATA,
                                 f"sample {i}: image has {a.shape[2]} channel(s), the model takes {c}")
        out.append(a)
    with cp.cuda.Device(gpu):
        batch = cp.ascontiguousarray(cp.stack(out).transpose(0, 3, 1, 2), dtype=cp.float32)
        finite = cp.isfinite(batch).reshape(len(out), -1).all(axis=1)
        if not bool(finite.all()):  # as the host path (which checks while assembling)
            bad = int(cp.argmin(finite))
            raise HOperatorError(H_ERR_CNN_INVALID_INPUT_DATA,
                                 f"sample {bad}: the image holds NaN or Inf values")
        # the engine runs on its own stream: what CuPy queued must be done first
        cp.cuda.get_current_stream().synchronize()
    return batch

"""Deep-learning devices: query_available_dl_devices, get_dl_device_param.

The device list holds the CPU and, in a CUDA-enabled build on a machine with an NVIDIA
driver, every CUDA GPU (probed once, on the first query; see halcdl._gpu).
"""

from __future__ import annotations

import platform
from functools import lru_cache
from typing import Any

from .. import _gpu
from .._native import core
from ..errors import H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM, HOperatorError
from ._tuple import (
    as_str,
    is_int,
    is_str,
    operator,
    single,
    to_scalar,
    to_tuple,
    wrong_num,
    wrong_type,
)

__all__ = [
    "DLDevice",
    "query_available_dl_devices",
    "query_available_dl_devices_s",
    "get_dl_device_param",
    "get_dl_device_param_s",
    "set_dl_device_param",
    "available_devices",
]


class DLDevice:
    """A deep-learning device handle (what query_available_dl_devices returns)."""

    def __init__(self, type: str, id: int, name: str, info: dict | None = None) -> None:  # noqa: A002
        self.type = type
        self.id = int(id)
        self.name = name
        self.info = dict(info or {})

    @property
    def runtime(self) -> str:
        return self.type

    def params(self) -> dict[str, list]:
        if self.type == "gpu":
            cc = self.info.get("compute_capability", (0, 0))
            return {
                "type": ["gpu"],
                "runtime": ["gpu"],
                "id": [self.id],
                "name": [self.name],
                "ai_accelerator_interface": ["none"],
                "inference_only": ["false"],
                # bfloat16: compute capability >= 8.0 (the backend's GpuInfo::bf16)
                "precisions": ["float32", "bfloat16"] if self.info.get("bf16") else ["float32"],
                "conversion_supported": ["false"],  # optimize_dl_model_for_inference: float32 only
                "settable_device_params": [{}],
                "compute_capability": [f"{cc[0]}.{cc[1]}"],
                "memory": [int(self.info.get("total_bytes", 0))],
            }
        return {
            "type": [self.type],
            "runtime": [self.runtime],
            "id": [self.id],
            "name": [self.name],
            "ai_accelerator_interface": ["none"],
            "inference_only": ["false"],
            "precisions": ["float32", "bfloat16"] if core.bf16_supported() else ["float32"],
            # optimize_dl_model_for_inference: float32, bfloat16 (with the hardware), int8
            # (simulated, docs/introspection.md)
            "conversion_supported": ["true"],
            "settable_device_params": [{}],
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DLDevice) and (self.type, self.id) == (other.type, other.id)

    def __hash__(self) -> int:
        return hash((self.type, self.id))

    def __repr__(self) -> str:
        return f"<DLDevice {self.type}:{self.id} {self.name!r}>"


@lru_cache(maxsize=1)
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


_CPU = None


def cpu_device() -> DLDevice:
    global _CPU
    if _CPU is None:
        _CPU = DLDevice("cpu", 0, _cpu_name())
    return _CPU


_GPUS: list[DLDevice] | None = None


def gpu_devices() -> list[DLDevice]:
    """The CUDA GPUs (empty without a CUDA build, driver or GPU)."""
    global _GPUS
    if _GPUS is None:
        _GPUS = [DLDevice("gpu", d["index"], str(d["name"]), d) for d in _gpu.gpu_list()]
    return list(_GPUS)


def gpu_device(index: int) -> DLDevice:
    for d in gpu_devices():
        if d.id == index:
            return d
    return DLDevice("gpu", index, f"gpu {index}")


def available_devices() -> list[DLDevice]:
    """All devices: the CPU, then the GPUs."""
    return [cpu_device(), *gpu_devices()]


_QUERY_KEYS = ("runtime", "type", "id", "name")


def _matches(dev: DLDevice, key: str, value: Any) -> bool:
    if key in ("runtime", "type"):
        return dev.type == value
    if key == "id":
        return is_int(value) and dev.id == int(value)
    return dev.name == value  # 'name'


def _query(gen_param_name: Any, gen_param_value: Any) -> list:
    """Devices matching the filter.  Several values for the same name are alternatives and
    keep their order (``(['runtime', 'runtime'], ['gpu', 'cpu'])`` lists GPUs first);
    different names must all match.  Names: 'runtime' / 'type' ('cpu', 'gpu'), 'id', 'name'.
    Unknown name → 7911."""
    names = to_tuple(gen_param_name)
    values = to_tuple(gen_param_value)
    if len(names) != len(values):
        raise wrong_num(2, f"{len(names)} parameter names but {len(values)} values")
    groups: dict[str, list] = {}
    for n, v in zip(names, values):
        if not is_str(n):
            raise wrong_type(1, f"gen_param_name must be strings, got {n!r}")
        if n not in _QUERY_KEYS:
            raise HOperatorError(
                H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM,
                f"Unsupported generic parameter {n!r} (supported: {', '.join(_QUERY_KEYS)})",
            )
        groups.setdefault("type" if n == "runtime" else n, []).append(v)
    devices = available_devices()
    if not groups:
        return list(devices)
    # order: by the first group's alternatives, then device order
    first_key, first_values = next(iter(groups.items()))
    out: list[DLDevice] = []
    for v in first_values:
        for dev in devices:
            if dev in out or not _matches(dev, first_key, v):
                continue
            if all(any(_matches(dev, k, x) for x in vs) for k, vs in groups.items()):
                out.append(dev)
    return out


@operator
def query_available_dl_devices(gen_param_name: Any, gen_param_value: Any) -> list:
    """Devices matching the filter, as a list of device handles (see :func:`_query`)."""
    return _query(gen_param_name, gen_param_value)


@operator
def query_available_dl_devices_s(gen_param_name: Any, gen_param_value: Any) -> DLDevice:
    """The one device matching the filter (HTupleConversionError for none or several)."""
    return single(_query(gen_param_name, gen_param_value))


def _device_param(dldevice_handle: Any, gen_param_name: Any) -> list:
    dev = dldevice_handle
    if isinstance(dev, (list, tuple)) and len(dev) == 1:
        dev = dev[0]
    if not isinstance(dev, DLDevice):
        raise wrong_type(1, f"dldevice_handle must be a device handle, got {type(dev).__name__}")
    name = as_str(to_scalar(gen_param_name, 2, "one parameter name"), 2, "gen_param_name")
    params = dev.params()
    if name not in params:
        raise HOperatorError(
            H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM,
            f"Unsupported generic parameter {name!r} (supported: {', '.join(params)})",
        )
    return list(params[name])


@operator
def get_dl_device_param(dldevice_handle: Any, gen_param_name: Any) -> list:
    """Device information: 'type' ('cpu'/'gpu'), 'runtime', 'id', 'name',
    'ai_accelerator_interface', 'inference_only', 'precisions'.  Unknown name → 7911."""
    return _device_param(dldevice_handle, gen_param_name)


@operator
def get_dl_device_param_s(dldevice_handle: Any, gen_param_name: Any) -> Any:
    """Like get_dl_device_param, for a parameter with exactly one value."""
    return single(_device_param(dldevice_handle, gen_param_name))


@operator
def set_dl_device_param(dldevice_handle: Any, gen_param_name: Any, gen_param_value: Any) -> None:
    """Set device parameters.  halcdl's CPU and CUDA devices have no settable parameters
    (their 'settable_device_params' dict is empty; HALCON's settable ones belong to AI²
    plug-in devices): every known name is read-only and every other name unknown, both
    7911, after the arguments are checked (1201/1402 for a wrong handle or a name/value
    count mismatch).  Nothing changes."""
    dev = dldevice_handle
    if isinstance(dev, (list, tuple)) and len(dev) == 1:
        dev = dev[0]
    if not isinstance(dev, DLDevice):
        raise wrong_type(1, f"dldevice_handle must be a device handle, got {type(dev).__name__}")
    names = to_tuple(gen_param_name)
    values = to_tuple(gen_param_value)
    if not names or len(names) != len(values):
        raise wrong_num(2, f"{len(names)} parameter names but {len(values)} values")
    for n in names:
        if not is_str(n):
            raise wrong_type(2, f"gen_param_name must be strings, got {n!r}")
    params = dev.params()
    n = names[0]
    if n in params:
        raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM,
                             f"device parameter {n!r} is read-only (a {dev.type} device has no "
                             f"settable parameters)")
    raise HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENPARAM,
                         f"Unsupported generic parameter {n!r} for set_dl_device_param (a "
                         f"{dev.type} device has no settable parameters)")

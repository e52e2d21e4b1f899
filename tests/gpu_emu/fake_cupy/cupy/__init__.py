"""A FAKE CuPy for the emulated GPU backend (tests/gpu_emu): just the part of CuPy's API that
halcdl (python/halcdl/_gpu.py, operators/dl_model.py) and tests/test_gpu.py use, over numpy.

Arrays live in the emulated GPU's memory — fake_cudart.cpp's cudaMalloc, reached through the
exported hooks fake_cudart_device_alloc / _free of the backend _core has loaded
(HALCDL_CUDA_LIBRARY) — so ``a.data.ptr`` is a device pointer the engine's checks accept, and
the paths for device images (images_on_device) and device outputs (gpu_outputs) run. Every
operation computes with numpy on that (host-addressable) memory; a result that is not a view
is copied into a new device allocation, freed when the array is collected. Streams and
devices are context managers that do nothing (the emulation runs synchronously; one GPU).

Only for tests/test_gpu_emulated.py, which puts this directory first on PYTHONPATH of the
test_gpu.py subprocess. It is not CuPy.
"""
from __future__ import annotations

import ctypes
import os
import weakref

import numpy as _np

__version__ = "0.0-halcdl-emulation"
nan = _np.nan
float32, float64, int32, int64, uint8, bool_ = _np.float32, _np.float64, _np.int32, _np.int64, _np.uint8, _np.bool_

_lib = None


def _runtime():
    global _lib
    if _lib is None:
        from halcdl._native import ensure_cuda  # noqa: PLC0415

        ensure_cuda()
        lib = ctypes.CDLL(os.environ["HALCDL_CUDA_LIBRARY"], mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        lib.fake_cudart_device_alloc.restype = ctypes.c_void_p
        lib.fake_cudart_device_alloc.argtypes = [ctypes.c_size_t]
        lib.fake_cudart_device_free.argtypes = [ctypes.c_void_p]
        _lib = lib
    return _lib


class _Alloc:
    """One device allocation."""

    def __init__(self, nbytes: int):
        lib = _runtime()
        self.ptr = lib.fake_cudart_device_alloc(max(int(nbytes), 1))
        if not self.ptr:
            raise MemoryError(f"fake cupy: out of (emulated) device memory allocating {nbytes} bytes")
        self.mem = (ctypes.c_char * max(int(nbytes), 1)).from_address(self.ptr)
        weakref.finalize(self, lib.fake_cudart_device_free, self.ptr)


class _Data:
    def __init__(self, ptr: int):
        self.ptr = ptr


class _DeviceId:
    id = 0


def _host(x):
    return x._a if isinstance(x, ndarray) else x


def _device_copy(r) -> "ndarray":
    r = _np.asarray(r)
    alloc = _Alloc(r.nbytes)
    a = _np.ndarray(r.shape, dtype=r.dtype, buffer=alloc.mem)
    a[...] = r
    return ndarray(a, alloc)


def _result(r, owner: "ndarray | None" = None):
    """A numpy result as a fake device array: a view of `owner` stays a view, anything else is
    copied into device memory; numpy scalars are returned as 0-d device arrays."""
    if owner is not None and isinstance(r, _np.ndarray) and _np.shares_memory(r, owner._a):
        return ndarray(r, owner._alloc)
    return _device_copy(r)


class ndarray:  # noqa: N801 - CuPy's name
    def __init__(self, a: _np.ndarray, alloc: _Alloc):
        self._a = a
        self._alloc = alloc

    # -- what CuPy users and halcdl read
    @property
    def shape(self):
        return self._a.shape

    @property
    def ndim(self):
        return self._a.ndim

    @property
    def dtype(self):
        return self._a.dtype

    @property
    def size(self):
        return self._a.size

    @property
    def data(self):
        return _Data(self._a.__array_interface__["data"][0])

    @property
    def device(self):
        return _DeviceId()

    @property
    def __cuda_array_interface__(self):
        ai = self._a.__array_interface__
        return {"shape": ai["shape"], "typestr": ai["typestr"], "data": ai["data"], "strides": ai["strides"],
                "version": 3, "stream": None}

    def __array__(self, *a, **k):  # CuPy forbids implicit conversion
        raise TypeError("Implicit conversion to a NumPy array is not allowed (fake cupy). Use .get()")

    def get(self):
        return self._a.copy()

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"fake_cupy.ndarray({self._a!r})"

    # -- indexing and shape
    def __getitem__(self, idx):
        idx = tuple(_host(i) for i in idx) if isinstance(idx, tuple) else _host(idx)
        return _result(self._a[idx], self)

    def __setitem__(self, idx, value):
        idx = tuple(_host(i) for i in idx) if isinstance(idx, tuple) else _host(idx)
        self._a[idx] = _host(value)

    def transpose(self, *axes):
        return _result(self._a.transpose(*axes), self)

    def reshape(self, *shape):
        return _result(self._a.reshape(*shape), self)

    def astype(self, dtype):
        return _device_copy(self._a.astype(dtype))

    def all(self, axis=None):
        return _device_copy(self._a.all(axis=axis))

    def any(self, axis=None):
        return _device_copy(self._a.any(axis=axis))

    def sum(self, axis=None):
        return _device_copy(self._a.sum(axis=axis))

    def copy(self):
        return _device_copy(self._a)

    def tolist(self):
        return self._a.tolist()

    def __bool__(self):
        return bool(self._a)

    def __int__(self):
        return int(self._a)

    def __float__(self):
        return float(self._a)

    def __index__(self):
        return int(self._a)

    # -- arithmetic
    def _op(self, other, f):
        return _device_copy(f(self._a, _host(other)))

    def __add__(self, o):
        return self._op(o, _np.add)

    def __radd__(self, o):
        return self._op(o, lambda a, b: _np.add(b, a))

    def __sub__(self, o):
        return self._op(o, _np.subtract)

    def __mul__(self, o):
        return self._op(o, _np.multiply)

    def __rmul__(self, o):
        return self._op(o, lambda a, b: _np.multiply(b, a))

    def __truediv__(self, o):
        return self._op(o, _np.true_divide)

    def __neg__(self):
        return _device_copy(-self._a)

    def __eq__(self, o):
        return self._op(o, _np.equal)

    def __ne__(self, o):
        return self._op(o, _np.not_equal)

    def __lt__(self, o):
        return self._op(o, _np.less)

    def __gt__(self, o):
        return self._op(o, _np.greater)

    __hash__ = None


# ---- module functions ---------------------------------------------------------------------------
def asarray(x, dtype=None):
    if isinstance(x, ndarray) and (dtype is None or _np.dtype(dtype) == x.dtype):
        return x
    return _device_copy(_np.asarray(_host(x), dtype=dtype))


array = asarray


def asnumpy(x):
    return _host(x).copy() if isinstance(x, ndarray) else _np.asarray(x)


def empty(shape, dtype=float64):
    alloc = _Alloc(int(_np.prod(shape)) * _np.dtype(dtype).itemsize)
    a = _np.ndarray(shape, dtype=dtype, buffer=alloc.mem)
    a.view(_np.uint8)[...] = 0xFF  # garbage, as on a GPU
    return ndarray(a, alloc)


def zeros(shape, dtype=float64):
    return _device_copy(_np.zeros(shape, dtype))


def stack(arrays, axis=0):
    return _device_copy(_np.stack([_host(a) for a in arrays], axis=axis))


def ascontiguousarray(a, dtype=None):
    h = _host(a)
    if isinstance(a, ndarray) and h.flags.c_contiguous and (dtype is None or _np.dtype(dtype) == h.dtype):
        return a
    return _device_copy(_np.ascontiguousarray(h, dtype=dtype))


def isfinite(a):
    return _device_copy(_np.isfinite(_host(a)))


def argmin(a, axis=None):
    return _device_copy(_np.argmin(_host(a), axis=axis))


def argmax(a, axis=None):
    return _device_copy(_np.argmax(_host(a), axis=axis))


def argsort(a, axis=-1):
    return _device_copy(_np.argsort(_host(a), axis=axis, kind="stable"))


def take_along_axis(a, indices, axis):
    return _device_copy(_np.take_along_axis(_host(a), _host(indices), axis=axis))


# ---- cupy.cuda ---------------------------------------------------------------------------------
class _Cuda:
    class Device:
        def __init__(self, device=0):
            self.id = int(device)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def synchronize(self):
            pass

    class Stream:
        null = None

        def __init__(self, null=False, non_blocking=False, ptds=False):
            self.non_blocking = non_blocking

        def __enter__(self):
            _Cuda._stack.append(self)
            return self

        def __exit__(self, *exc):
            _Cuda._stack.pop()
            return False

        def synchronize(self):
            pass

    _stack: list = []

    @staticmethod
    def get_current_stream():
        return _Cuda._stack[-1] if _Cuda._stack else _Cuda.Stream(null=True)


cuda = _Cuda

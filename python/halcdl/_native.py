"""Loads the C++ engine, ``halcdl._core``, and exposes it as ``core``; loads the CUDA backend
on demand (:func:`ensure_cuda`).

The extension links against oneDNN's ``libdnnl.so.3``, which the ``onednn-cpu-gomp`` wheel
installs under the environment's prefix (``<prefix>/lib``), outside site-packages. The
extension carries an RPATH ``$ORIGIN/../../..`` that finds it in venv and ``--user`` layouts;
for any other layout we preload the library here, located through the wheel's metadata, with
``RTLD_GLOBAL`` so the dynamic loader reuses it when ``_core`` asks for ``libdnnl.so.3``.
If the lookup or the load fails we stay silent and let the RPATH (or LD_LIBRARY_PATH) decide;
a real failure then surfaces as the ImportError of ``_core`` itself.

A GPU build also installs ``libhalcdl_cuda.so`` next to ``_core`` (``cuda_library_path``).
Nothing CUDA is loaded at import: ``_core`` dlopens that library on the first GPU request,
after :func:`ensure_cuda` has preloaded cuBLAS and cuDNN from the ``nvidia-cublas`` /
``nvidia-cudnn-cu13`` wheels the same way (the library's RPATH finds them only when the
wheels sit in the same site-packages).

Test hook: the environment variable ``HALCDL_CUDA_LIBRARY``, when set (before this module is
imported), names the CUDA backend library to load instead of the installed one — the emulated
backend of tests/gpu_emu (``libhalcdl_cuda_emu.so``: the real csrc/cuda host code on fake
CUDA/cuDNN/cuBLAS libraries, running on the CPU). :func:`ensure_cuda` then preloads nothing from
the NVIDIA wheels. Not for production use.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import pathlib
import threading

_DNNL_SONAME = "libdnnl.so.3"
_CUDA_LIBRARY = "libhalcdl_cuda.so"
# (distribution, sonames in load order): libcublas needs libcublasLt; libcudnn.so.9 dlopens its
# sub-libraries (libcudnn_ops.so.9, ...) from its own directory by itself, but its runtime-
# compiled engines dlopen libnvrtc.so.13, which nvidia-cuda-nvrtc (a dependency of
# nvidia-cublas) puts in another directory: preloaded, it is found by its soname.
_CUDA_DEPENDENCIES = (
    ("nvidia-cuda-nvrtc", ("libnvrtc.so.13",)),
    ("nvidia-cublas", ("libcublasLt.so.13", "libcublas.so.13")),
    ("nvidia-cudnn-cu13", ("libcudnn.so.9",)),
)


def _dist_files(dist: str) -> dict[str, pathlib.Path]:
    """File name -> path of the files the distribution installed ({} when it is absent)."""
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    return {f.name: pathlib.Path(f.locate()) for f in files}


def _preload(path: pathlib.Path) -> bool:
    try:
        ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return False
    return True


def _preload_dnnl() -> str | None:
    """Load libdnnl.so.3 from the onednn-cpu-gomp distribution; return its path or None."""
    path = _dist_files("onednn-cpu-gomp").get(_DNNL_SONAME)
    if path is None or not _preload(path):
        return None
    return str(path)


dnnl_path = _preload_dnnl()

from . import _core as core  # noqa: E402  (must follow the preload)

# "" when this build has no CUDA backend (then a GPU request raises 7742).
_cuda_lib = pathlib.Path(core.__file__).with_name(_CUDA_LIBRARY)
cuda_library_path = str(_cuda_lib) if _cuda_lib.is_file() else ""
# Test hook (see the module docstring): another backend library, without the wheel preloads.
_cuda_library_override = os.environ.get("HALCDL_CUDA_LIBRARY", "")
if _cuda_library_override:
    cuda_library_path = _cuda_library_override
if hasattr(core, "set_cuda_library_path"):
    core.set_cuda_library_path(cuda_library_path)

_cuda_lock = threading.Lock()
_cuda_loaded = False
_cuda_preloaded = False
cuda_dependency_paths: list[str] = []  # what ensure_cuda preloaded from the wheels


def ensure_cuda() -> None:
    """Load the CUDA backend (once per process; cheap afterwards).

    Preloads cuBLAS and cuDNN from their wheels when they are installed (silently skipping what
    is absent: the library's RPATH or the system may still provide them), then has ``_core``
    dlopen ``libhalcdl_cuda.so``. Raises HOperatorError 7742 (this build has no CUDA backend),
    7718 / 7717 / 7709 (cuDNN / cuBLAS / the CUDA runtime cannot be loaded).
    """
    global _cuda_loaded, _cuda_preloaded
    if _cuda_loaded:
        return
    with _cuda_lock:
        if _cuda_loaded:
            return
        if not _cuda_preloaded and cuda_library_path and not _cuda_library_override:
            for dist, sonames in _CUDA_DEPENDENCIES:
                files = _dist_files(dist)
                for soname in sonames:
                    path = files.get(soname)
                    if path is not None and _preload(path):
                        cuda_dependency_paths.append(str(path))
            _cuda_preloaded = True
        core.load_cuda()
        _cuda_loaded = True


__all__ = ["core", "dnnl_path", "cuda_library_path", "ensure_cuda"]

"""Loads the C++ engine, ``halcdl._core``, and exposes it as ``core``.

The extension links against oneDNN's ``libdnnl.so.3``, which the ``onednn-cpu-gomp`` wheel
installs under the environment's prefix (``<prefix>/lib``), outside site-packages. The
extension carries an RPATH ``$ORIGIN/../../..`` that finds it in venv and ``--user`` layouts;
for any other layout we preload the library here, located through the wheel's metadata, with
``RTLD_GLOBAL`` so the dynamic loader reuses it when ``_core`` asks for ``libdnnl.so.3``.
If the lookup or the load fails we stay silent and let the RPATH (or LD_LIBRARY_PATH) decide;
a real failure then surfaces as the ImportError of ``_core`` itself.
"""

from __future__ import annotations

import ctypes
import importlib.metadata

_DNNL_SONAME = "libdnnl.so.3"


def _preload_dnnl() -> str | None:
    """Load libdnnl.so.3 from the onednn-cpu-gomp distribution; return its path or None."""
    try:
        files = importlib.metadata.files("onednn-cpu-gomp") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files:
        if entry.name != _DNNL_SONAME:
            continue
        path = entry.locate()
        try:
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError:
            return None
        return str(path)
    return None


dnnl_path = _preload_dnnl()

from . import _core as core  # noqa: E402  (must follow the preload)

__all__ = ["core", "dnnl_path"]

"""pytest configuration: markers, seeds, import paths, thread count.

Markers:
  gpu   compares a GPU run with the CPU twin; skipped unless halcdl reports a GPU.
  slow  end-to-end training (minutes); deselect with `-m "not slow"`.
"""
import glob
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# tests import their helpers as plain modules (tests/ is not a package)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
# A source checkout built in place (the extension next to the sources in python/halcdl)
# is tested as such; otherwise (a clean clone + `pip install .`) the installed package is.
_py = os.path.join(ROOT, "python")
if glob.glob(os.path.join(_py, "halcdl", "_core*.so")) + \
        glob.glob(os.path.join(_py, "halcdl", "_core*.pyd")) and _py not in sys.path \
        and not os.environ.get("HALCDL_TEST_INSTALLED"):
    sys.path.insert(0, _py)

from helpers import has_gpu, seed_everything  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a GPU; compares GPU results with the CPU twin")
    config.addinivalue_line("markers", "slow: end-to-end training that takes minutes")


def pytest_collection_modifyitems(config, items):
    if any("gpu" in item.keywords for item in items) and not has_gpu():
        skip = pytest.mark.skip(reason="no GPU available to halcdl")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same Python/numpy/torch random state."""
    seed_everything(0)
    yield


@pytest.fixture(scope="session", autouse=True)
def _threads():
    """Use HALCDL_TEST_THREADS threads (default: all cores) for both halcdl and torch."""
    n = int(os.environ.get("HALCDL_TEST_THREADS", "0")) or (os.cpu_count() or 1)
    try:
        import torch
        torch.set_num_threads(n)
    except ImportError:  # pragma: no cover
        pass
    try:
        import halcdl as ha
        ha.set_system("thread_num", n)
    except Exception:
        pass
    yield

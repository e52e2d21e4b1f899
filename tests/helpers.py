"""Shared test helpers: the one tolerance check, seeds, sample builders.

Every numeric comparison in the test suite goes through :func:`assert_close`, so the
tolerance rule is written down exactly once:

    |actual - expected| <= atol + rtol * |expected|      (element-wise)

On failure it reports the observed maximum absolute error, the maximum relative error,
the worst element (index, actual, expected) and by how much the bound was exceeded, so a
failing run says how far off it was, not only that it was off.
"""
from __future__ import annotations

import os
import random

import numpy as np

__all__ = [
    "assert_close",
    "max_errors",
    "seed_everything",
    "to_numpy",
    "make_samples",
    "has_gpu",
]


def to_numpy(x) -> np.ndarray:
    """torch tensors, lists and scalars -> float64 numpy (for comparisons only)."""
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def max_errors(actual, expected):
    """(max abs error, max rel error) of actual against expected."""
    a, e = to_numpy(actual), to_numpy(expected)
    err = np.abs(a - e)
    rel = err / np.maximum(np.abs(e), np.finfo(np.float64).tiny)
    return float(err.max(initial=0.0)), float(rel.max(initial=0.0))


def assert_close(actual, expected, atol: float, rtol: float, what: str) -> None:
    """Assert |actual - expected| <= atol + rtol*|expected| element-wise.

    `expected` is the reference (PyTorch / the independent implementation).
    Shapes must be equal (no broadcasting: a shape bug must not hide behind it).
    NaN anywhere fails.
    """
    a, e = to_numpy(actual), to_numpy(expected)
    if a.shape != e.shape:
        raise AssertionError(f"{what}: shape {a.shape} != expected {e.shape}")
    if a.size == 0:
        return
    if not np.all(np.isfinite(a)) or not np.all(np.isfinite(e)):
        raise AssertionError(
            f"{what}: non-finite values (actual: {int((~np.isfinite(a)).sum())}, "
            f"expected: {int((~np.isfinite(e)).sum())} of {a.size})")
    err = np.abs(a - e)
    bound = atol + rtol * np.abs(e)
    if np.all(err <= bound):
        return
    ratio = err / bound
    worst = np.unravel_index(int(np.argmax(ratio)), a.shape)
    max_abs, max_rel = max_errors(a, e)
    n_bad = int((err > bound).sum())
    raise AssertionError(
        f"{what}: {n_bad}/{a.size} elements out of tolerance (atol={atol:g}, rtol={rtol:g}); "
        f"max abs err {max_abs:.3e}, max rel err {max_rel:.3e}, "
        f"worst at {tuple(int(i) for i in worst)}: actual {a[worst]!r} vs expected {e[worst]!r} "
        f"({ratio[worst]:.1f}x the bound); max |expected| {np.abs(e).max():.3e}")


def seed_everything(seed: int = 0) -> None:
    """Seed Python, numpy and (when present) torch."""
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a test dependency
        pass


def make_samples(n: int, h: int, w: int, c: int, class_ids, rng: np.random.Generator,
                 lo: float = -127.0, hi: float = 128.0):
    """n classification DLSample dicts with random images in [lo, hi] and labels from
    class_ids (cycled, then shuffled, so every class appears when n >= len(class_ids))."""
    labels = [class_ids[i % len(class_ids)] for i in range(n)]
    rng.shuffle(labels)
    return [{"image": rng.uniform(lo, hi, size=(h, w, c)).astype(np.float32),
             "image_label_id": int(lab)} for lab in labels]


def has_gpu() -> bool:
    """True when halcdl reports a usable GPU device (the `gpu` marker depends on it)."""
    if os.environ.get("HALCDL_TEST_NO_GPU"):
        return False
    try:
        import halcdl as ha
        devs = ha.query_available_dl_devices(["runtime"], ["gpu"])
        return len(devs) > 0
    except Exception:
        return False


def halcon_files_dir() -> str:
    """The real HALCON files (shared/data/halcon_files): $HALCDL_HALCON_FILES, else the shared/
    folder beside the checkout (where CI puts it), else /work/shared. '' when none exists."""
    here = os.path.dirname(os.path.abspath(__file__))
    for d in (os.environ.get("HALCDL_HALCON_FILES", ""),
              os.path.join(here, "..", "..", "shared", "data", "halcon_files"),
              "/work/shared/data/halcon_files"):
        if d and os.path.isdir(d):
            return os.path.abspath(d)
    return ""


def halcdl_path() -> str:
    """The folder holding the halcdl package this test process imports: python/ of a checkout
    built in place (tests/conftest.py puts it first), or site-packages of an installed one.
    Subprocesses put it first on PYTHONPATH so they test the same halcdl (a clean clone has no
    _core in python/, so pointing them at python/ would import a package without its engine)."""
    import importlib.util
    spec = importlib.util.find_spec("halcdl")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("halcdl is not importable")
    return os.path.dirname(os.path.abspath(list(spec.submodule_search_locations)[0]))

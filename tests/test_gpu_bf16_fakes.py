"""The fake cuBLAS's bfloat16 GEMM (tests/gpu_emu/fake_cublas.cpp), the contract the GPU bf16 fc
layers will be run against on the emulated backend: cublasGemmEx with CUDA_R_16BF A and B,
CUDA_R_16BF or CUDA_R_32F C and CUBLAS_COMPUTE_32F (cuBLAS's GemmEx table), compared with
torch in float64 on the bf16 values; a bf16 C is the float result rounded once to nearest even
(torch.bfloat16's rounding). Combinations cuBLAS does not list are refused (NOT_SUPPORTED).

The library is the emulated GPU backend (tests/gpu_emu/build.py), loaded with ctypes; its
fake_cudart_device_alloc gives "device" memory (host memory the fakes check ranges against).
Skipped where the emulated backend cannot be built (no g++ or no CUDA / cuDNN / cuBLAS headers).
"""
from __future__ import annotations

import ctypes as C
import importlib.util
import os

import numpy as np
import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("halcdl_gpu_emu_build_bf16", os.path.join(HERE, "gpu_emu", "build.py"))
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)
_ok, _why = build.available()
pytestmark = pytest.mark.skipif(not _ok, reason=f"emulated GPU backend unavailable: {_why}")

CUDA_R_32F, CUDA_R_16BF = 0, 14
COMPUTE_32F, COMPUTE_32F_FAST_TF32 = 68, 77
OP_N, OP_T = 0, 1
SUCCESS, NOT_SUPPORTED = 0, 15


@pytest.fixture(scope="module")
def lib():
    L = C.CDLL(build.build())
    L.fake_cudart_device_alloc.restype = C.c_void_p
    L.fake_cudart_device_alloc.argtypes = [C.c_size_t]
    L.fake_cudart_device_free.argtypes = [C.c_void_p]
    P, I, F = C.c_void_p, C.c_int, C.c_float
    L.fake_cublas_test_gemm.argtypes = [I, I, I, I, I, F, P, I, I, P, I, I, F, P, I, I, I]
    return L


class Dev:
    """A numpy array copied into fake device memory (and back)."""

    def __init__(self, L, a: np.ndarray):
        self.L, self.a = L, np.ascontiguousarray(a)
        self.p = L.fake_cudart_device_alloc(max(1, self.a.nbytes))
        C.memmove(self.p, self.a.ctypes.data, self.a.nbytes)

    def get(self) -> np.ndarray:
        out = np.empty_like(self.a)
        C.memmove(out.ctypes.data, self.p, out.nbytes)
        return out

    def free(self):
        self.L.fake_cudart_device_free(self.p)


def bf16_bits(a) -> np.ndarray:
    return torch.tensor(np.asarray(a, np.float32)).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def bf16_vals(h) -> np.ndarray:
    return (np.asarray(h, np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


@pytest.mark.parametrize("ta,tb", [(OP_T, OP_N), (OP_N, OP_T), (OP_N, OP_N)])
@pytest.mark.parametrize("c_bf16", [True, False])
def test_bf16_gemm_matches_torch(lib, ta, tb, c_bf16):
    rng = np.random.default_rng(ta * 4 + tb * 2 + c_bf16)
    m, n, k = 7, 5, 33
    # column-major op(A) m×k and op(B) k×n, stored as numpy row-major transposes
    a_store = rng.standard_normal((m, k) if ta == OP_T else (k, m)).astype(np.float32)  # (cols, rows) of A
    b_store = rng.standard_normal((k, n) if tb == OP_T else (n, k)).astype(np.float32)
    ha, hb = bf16_bits(a_store), bf16_bits(b_store)
    A = bf16_vals(ha).astype(np.float64)
    Bm = bf16_vals(hb).astype(np.float64)
    opA = A if ta == OP_T else A.T          # m × k
    opB = Bm if tb == OP_T else Bm.T        # k × n
    lda = k if ta == OP_T else m
    ldb = n if tb == OP_T else k
    ref = opA @ opB                          # m × n
    for alpha, beta in [(1.0, 0.0), (0.5, -2.0)]:
        old = rng.standard_normal((n, m)).astype(np.float32)  # column-major m×n
        c0 = bf16_bits(old) if c_bf16 else old
        if beta == 0.0:
            c0 = np.full_like(c0, 0x7FC0 if c_bf16 else np.nan)  # must not be read
        da, db, dc = Dev(lib, ha), Dev(lib, hb), Dev(lib, c0)
        try:
            st = lib.fake_cublas_test_gemm(ta, tb, m, n, k, alpha, da.p, CUDA_R_16BF, lda, db.p, CUDA_R_16BF, ldb, beta,
                                           dc.p, CUDA_R_16BF if c_bf16 else CUDA_R_32F, m, COMPUTE_32F)
            assert st == SUCCESS
            got = dc.get()
        finally:
            for d in (da, db, dc):
                d.free()
        prev = (bf16_vals(bf16_bits(old)) if c_bf16 else old).astype(np.float64)
        exp = alpha * ref.T + (beta * prev if beta else 0.0)   # (n, m) = column-major m×n
        if c_bf16:
            np.testing.assert_array_equal(got, bf16_bits(exp.astype(np.float32)),
                                          err_msg="bf16 C: the fp32 result rounded once (torch's rounding)")
        else:
            np.testing.assert_allclose(got, exp, rtol=1e-6, atol=1e-6 * np.abs(exp).max())


def test_bf16_gemm_refuses_unlisted_combinations(lib):
    m = n = k = 4
    h = bf16_bits(np.ones((4, 4)))
    f = np.ones((4, 4), np.float32)
    bufs = [Dev(lib, h), Dev(lib, h), Dev(lib, f), Dev(lib, f)]
    try:
        cases = [(CUDA_R_16BF, CUDA_R_16BF, CUDA_R_16BF, COMPUTE_32F_FAST_TF32),  # bf16 with TF32 compute
                 (CUDA_R_16BF, CUDA_R_32F, CUDA_R_32F, COMPUTE_32F),             # mixed inputs
                 (CUDA_R_32F, CUDA_R_32F, CUDA_R_16BF, COMPUTE_32F)]             # fp32 inputs, bf16 output
        for at, bt, ct, comp in cases:
            pa = bufs[0].p if at == CUDA_R_16BF else bufs[2].p
            pb = bufs[1].p if bt == CUDA_R_16BF else bufs[3].p
            st = lib.fake_cublas_test_gemm(OP_N, OP_N, m, n, k, 1.0, pa, at, 4, pb, bt, 4, 0.0, bufs[3].p, ct, 4, comp)
            assert st == NOT_SUPPORTED, (at, bt, ct, comp, st)
    finally:
        for d in bufs:
            d.free()

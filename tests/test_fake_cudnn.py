"""Validates the fake cuDNN of the emulated GPU backend (tests/gpu_emu/fake_cudnn.cpp) against torch
(float64) BEFORE it is used to judge csrc/cuda/: convolution forward / backward data / backward
filter (NHWC and NCHW tensors, KRSC and KCRS filters, groups, dilation, padding, stride, both
convolution modes, alpha / beta), the algorithm queries, batch norm (training, inference,
backward) and pooling (max, max deterministic, average with / without padding), plus the error
statuses of invalid or unsupported calls.

The fake is compiled against the REAL cudnn.h (from the nvidia-cudnn-cu13 wheel, found like
CMakeLists.txt finds it) and /usr/local/cuda/include/cuda_runtime_api.h, with
-DFAKE_CUDNN_TEST_API (a few extern "C" wrappers that drive the public cuDNN API). Skipped when
the headers or g++ are absent.
"""
from __future__ import annotations

import ctypes as C
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "gpu_emu", "fake_cudnn.cpp")

SUCCESS, BAD_PARAM, NOT_SUPPORTED = 0, 2000, 3000
NCHW, NHWC = 0, 1
CONVOLUTION, CROSS_CORRELATION = 0, 1
DEFAULT_MATH, TENSOR_OP_MATH, FMA_MATH = 0, 1, 3
POOL_MAX, POOL_AVG_INCL, POOL_AVG_EXCL, POOL_MAX_DET = 0, 1, 2, 3
BN_PER_ACTIVATION, BN_SPATIAL = 0, 1
NON_DETERMINISTIC, DETERMINISTIC = 0, 1
# the fake's algorithms (see fake_cudnn.cpp): (algo, needs workspace, deterministic) per direction
FWD_ALGOS = [(1, True, True), (0, False, True)]        # IMPLICIT_PRECOMP_GEMM, IMPLICIT_GEMM
BWD_ALGOS = [(0, False, False), (1, True, True)]       # ALGO_0, ALGO_1 (data and filter)
FFT = [4, 2, 2]                                          # FWD_ALGO_FFT, BWD_DATA_ALGO_FFT, BWD_FILTER_ALGO_FFT
MAX_COUNT = [8, 6, 7]


def _site_dirs() -> list[str]:
    dirs = []
    for key in ("purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p and p not in dirs:
            dirs.append(p)
    try:
        import site
        for p in site.getsitepackages() + [site.getusersitepackages()]:
            if p not in dirs:
                dirs.append(p)
    except Exception:  # pragma: no cover
        pass
    return dirs


def find_cudnn_include() -> str | None:
    cands = []
    root = os.environ.get("CUDNN_ROOT")
    if root:
        cands.append(os.path.join(root, "include"))
    try:
        from importlib import metadata
        dist = metadata.distribution("nvidia-cudnn-cu13")
        cands.append(str(dist.locate_file("nvidia/cudnn/include")))
    except Exception:
        pass
    cands += [os.path.join(d, "nvidia", "cudnn", "include") for d in _site_dirs()]
    cands += ["/usr/include", "/usr/local/cuda/include"]
    for c in cands:
        if os.path.isfile(os.path.join(c, "cudnn.h")) and os.path.isfile(os.path.join(c, "cudnn_version.h")):
            return c
    return None


def find_cuda_include() -> str | None:
    cands = [os.path.join(os.environ[v], "include") for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    cands += ["/usr/local/cuda/include"] + sorted(glob.glob("/usr/local/cuda-*/include"), reverse=True)
    for c in cands:
        if os.path.isfile(os.path.join(c, "cuda_runtime_api.h")):
            return c
    return None


def _build() -> tuple[C.CDLL | None, str]:
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None or not sys.platform.startswith("linux"):
        return None, "no g++ (or not Linux)"
    dnn, cuda = find_cudnn_include(), find_cuda_include()
    if dnn is None:
        return None, "cudnn.h not found (pip install nvidia-cudnn-cu13)"
    if cuda is None:
        return None, "cuda_runtime_api.h not found (CUDA toolkit headers)"
    # -Bsymbolic: the test wrappers must call THIS file's cudnn* functions even when the real
    # libcudnn.so.9 is already loaded with RTLD_GLOBAL (halcdl preloads it on a GPU request,
    # e.g. in test_gpu_selection.py earlier in the same process), which would otherwise win.
    flags = ["-std=c++17", "-O2", "-fPIC", "-shared", "-Wl,-Bsymbolic", "-Wall", "-Wno-deprecated-declarations",
             "-DFAKE_CUDNN_TEST_API", f"-I{dnn}", f"-I{cuda}"]
    with open(SRC, "rb") as f:
        key = hashlib.sha256(f.read() + " ".join(flags).encode()).hexdigest()[:16]
    out_dir = os.path.join(tempfile.gettempdir(), f"halcdl_fake_cudnn_{os.getuid()}")
    os.makedirs(out_dir, exist_ok=True)
    so = os.path.join(out_dir, f"fake_cudnn_{key}.so")
    if not os.path.isfile(so):
        tmp = so + f".{os.getpid()}.tmp"
        r = subprocess.run([cxx, *flags, SRC, "-o", tmp], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.fail(f"building the fake cuDNN failed:\n{r.stderr[-4000:]}")
        os.replace(tmp, so)
    return C.CDLL(so), ""


_LIB, _WHY = None, ""


@pytest.fixture(scope="module")
def L():
    global _LIB, _WHY
    if _LIB is None and not _WHY:
        _LIB, _WHY = _build()
    if _LIB is None:
        pytest.skip(_WHY)
    lib = _LIB
    P, I, Fl, D, LL = C.c_void_p, C.c_int, C.c_float, C.c_double, C.c_longlong
    lib.fake_cudnn_test_conv_dims.argtypes = [I, I, P, P]
    lib.fake_cudnn_test_conv_types.argtypes = [I, I, I]
    lib.fake_cudnn_test_conv_types.restype = None
    lib.fake_cudnn_test_conv.argtypes = [I, I, I, P, I, Fl, Fl, P, P, P, LL, P]
    lib.fake_cudnn_test_conv_algos.argtypes = [I, I, I, I, P, I, P, P, P, P, P, P, P]
    lib.fake_cudnn_test_bn.argtypes = [I, I, I, P, P, P, P, P, P, P, P, P, D, P, P, D, P, P]
    lib.fake_cudnn_test_pool.argtypes = [I, I, I, I, P, Fl, Fl, P, P, P, P, P]
    lib.cudnnGetErrorString.restype = C.c_char_p
    lib.cudnnGetErrorString.argtypes = [I]
    lib.cudnnGetLastErrorString.argtypes = [C.c_char_p, C.c_size_t]
    lib.cudnnGetLastErrorString.restype = None
    lib.cudnnGetVersion.restype = C.c_size_t
    return lib


def ptr(a):
    return None if a is None else a.ctypes.data


def ints(*v):
    return np.array(v, dtype=np.int32)


def last_error(L) -> str:
    buf = C.create_string_buffer(512)
    L.cudnnGetLastErrorString(buf, 512)
    return buf.value.decode()


def to_layout(a: np.ndarray, fmt: int) -> np.ndarray:
    """NCHW (or KCRS) -> the layout of `fmt`, as contiguous float32."""
    a = a if fmt == NCHW else a.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(a, dtype=np.float32)


def from_layout(a: np.ndarray, fmt: int) -> np.ndarray:
    return (a if fmt == NCHW else a.transpose(0, 3, 1, 2)).astype(np.float64)


def close(got, ref, tol=2e-5):
    scale = max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * scale)


# ---- the exported surface ---------------------------------------------------------------------

def _csrc_cudnn_calls() -> set[str]:
    import re
    names = set()
    for f in glob.glob(os.path.join(os.path.dirname(HERE), "csrc", "cuda", "*")):
        with open(f, encoding="utf-8", errors="replace") as fh:
            names |= set(re.findall(r"\bcudnn[A-Z][A-Za-z0-9_]*", fh.read()))
    return {n for n in names if not n.endswith("_t") and n != "cudnnFind"}


def test_every_cudnn_call_of_csrc_is_exported(L):
    calls = _csrc_cudnn_calls()
    if not calls:
        pytest.skip("csrc/cuda not found")
    missing = [n for n in sorted(calls) if not hasattr(L, n)]
    assert not missing, f"the fake cuDNN lacks {missing}"


def test_version_and_error_strings(L):
    assert L.cudnnGetVersion() // 10000 == 9
    assert L.cudnnGetErrorString(BAD_PARAM) == b"CUDNN_STATUS_BAD_PARAM"
    assert L.cudnnGetErrorString(NOT_SUPPORTED) == b"CUDNN_STATUS_NOT_SUPPORTED"
    assert L.cudnnGetErrorString(4004) == b"CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED"
    # an invalid call leaves a message, read (and cleared) by cudnnGetLastErrorString
    out = np.zeros(4, np.int32)
    st = L.fake_cudnn_test_conv_dims(NHWC, NHWC, ptr(ints(1, 6, 8, 8, 4, 3, 3, 1, 1, 1, 1, 1, 1, 4, 1, 0)), ptr(out))
    assert st == BAD_PARAM  # 6 channels, 4 groups
    msg = last_error(L)
    assert "fake cuDNN" in msg and "groups" in msg, msg
    assert last_error(L) == ""


# ---- convolution --------------------------------------------------------------------------------

# N, C, H, W, K, R, S, ph, pw, sh, sw, dh, dw, groups
CONV_CASES = [
    (2, 3, 9, 9, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1),        # plain 3x3 'same'
    (2, 4, 11, 10, 6, 3, 2, 2, 0, 2, 3, 1, 1, 2),     # grouped, rectangular, uneven stride / pad
    (1, 6, 12, 13, 6, 3, 3, 2, 3, 1, 2, 2, 3, 6),     # depthwise, dilated
    (3, 8, 7, 7, 4, 1, 1, 0, 0, 2, 2, 1, 1, 4),       # 1x1 stride 2, grouped (Kg = 1)
    (2, 5, 8, 6, 7, 5, 3, 0, 1, 3, 1, 1, 2, 1),       # stride > 1 with unused input rows
    (1, 2, 5, 5, 3, 5, 5, 2, 2, 1, 1, 1, 1, 1),       # kernel = input
]


def _conv_ref(x, w, case, mode):
    N, Cc, H, W, K, R, S, ph, pw, sh, sw, dh, dw, G = case
    wr = w.flip(2, 3) if mode == CONVOLUTION else w
    return lambda xx, ww: F.conv2d(xx, ww.flip(2, 3) if mode == CONVOLUTION else ww, None, (sh, sw), (ph, pw),
                                   (dh, dw), G), wr


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("xfmt,wfmt,mode", [(NHWC, NHWC, CROSS_CORRELATION), (NCHW, NCHW, CROSS_CORRELATION),
                                            (NHWC, NCHW, CONVOLUTION), (NCHW, NHWC, CROSS_CORRELATION)])
def test_conv_matches_torch(L, case, xfmt, wfmt, mode):
    rng = np.random.default_rng(sum(case) * 7 + xfmt * 3 + wfmt + mode * 11)
    N, Cc, H, W, K, R, S, ph, pw, sh, sw, dh, dw, G = case
    p = ints(*case, mode, FMA_MATH)
    dims = np.zeros(4, np.int32)
    assert L.fake_cudnn_test_conv_dims(xfmt, wfmt, ptr(p), ptr(dims)) == SUCCESS
    x = torch.tensor(rng.standard_normal((N, Cc, H, W)))
    w = torch.tensor(rng.standard_normal((K, Cc // G, R, S)))
    fn, _ = _conv_ref(x, w, case, mode)
    y = fn(x, w)
    assert tuple(dims) == tuple(y.shape)
    dy = torch.tensor(rng.standard_normal(tuple(y.shape)))
    gx, gw = torch.autograd.functional.vjp(lambda a, b: fn(a, b), (x, w), dy)[1]

    for (algo_f, _, _), (algo_b, _, _) in zip(FWD_ALGOS, BWD_ALGOS):
        for alpha, beta in [(1.0, 0.0), (0.75, -0.5)]:
            # forward; with beta = 0 the output starts as NaN (must not be read)
            y0 = rng.standard_normal(tuple(y.shape))
            yb = to_layout(y0 if beta else np.full(tuple(y.shape), np.nan), xfmt)
            xa, wa = to_layout(x.numpy(), xfmt), to_layout(w.numpy(), wfmt)
            st = L.fake_cudnn_test_conv(0, xfmt, wfmt, ptr(p), algo_f, alpha, beta, ptr(xa), ptr(wa), ptr(yb), -1, None)
            assert st == SUCCESS, last_error(L)
            close(from_layout(yb, xfmt), alpha * y.numpy() + beta * y0)
            # backward data: x <- w, dy
            x0 = rng.standard_normal((N, Cc, H, W))
            xb = to_layout(x0 if beta else np.full((N, Cc, H, W), np.nan), xfmt)
            dya = to_layout(dy.numpy(), xfmt)
            st = L.fake_cudnn_test_conv(1, xfmt, wfmt, ptr(p), algo_b, alpha, beta, ptr(xb), ptr(wa), ptr(dya), -1, None)
            assert st == SUCCESS, last_error(L)
            close(from_layout(xb, xfmt), alpha * gx.numpy() + beta * x0)
            # backward filter: w <- x, dy
            w0 = rng.standard_normal(tuple(w.shape))
            wb = to_layout(w0 if beta else np.full(tuple(w.shape), np.nan), wfmt)
            st = L.fake_cudnn_test_conv(2, xfmt, wfmt, ptr(p), algo_b, alpha, beta, ptr(xa), ptr(wb), ptr(dya), -1, None)
            assert st == SUCCESS, last_error(L)
            close(from_layout(wb, wfmt), alpha * gw.numpy() + beta * w0)


FLOAT_T, DOUBLE_T, BF16_T = 0, 1, 9  # cudnnDataType_t


def _bf16_bits(a):
    return torch.tensor(np.ascontiguousarray(a), dtype=torch.float32).to(torch.bfloat16).view(torch.int16).numpy() \
        .view(np.uint16)


def _bf16_vals(h):
    return (np.asarray(h, np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32).astype(np.float64)


@pytest.mark.parametrize("case", CONV_CASES[:3])
def test_conv_bf16_data_with_float_compute(L, case):
    """PSEUDO_BFLOAT16_CONFIG: x, w, y bf16 with FLOAT compute, the three directions against
    torch in float64 on the bf16 values, alpha·v + beta·old rounded once to bf16."""
    rng = np.random.default_rng(sum(case) + 1)
    N, Cc, H, W, K, R, S, ph, pw, sh, sw, dh, dw, G = case
    p = ints(*case, CROSS_CORRELATION, FMA_MATH)
    xf = _bf16_vals(_bf16_bits(rng.standard_normal((N, Cc, H, W))))
    wf = _bf16_vals(_bf16_bits(rng.standard_normal((K, Cc // G, R, S))))
    x, w = torch.tensor(xf), torch.tensor(wf)
    fn, _ = _conv_ref(x, w, case, CROSS_CORRELATION)
    y = fn(x, w)
    dyf = _bf16_vals(_bf16_bits(rng.standard_normal(tuple(y.shape))))
    gx, gw = torch.autograd.functional.vjp(lambda a, b: fn(a, b), (x, w), torch.tensor(dyf))[1]
    nhwc = lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1))  # noqa: E731
    L.fake_cudnn_test_conv_types(BF16_T, BF16_T, FLOAT_T)
    try:
        for alpha, beta in [(1.0, 0.0), (0.75, -0.5)]:
            for d, ref, shape, args in [
                    (0, y.numpy(), tuple(y.shape), lambda o: (_bf16_bits(nhwc(xf)), _bf16_bits(nhwc(wf)), o)),
                    (1, gx.numpy(), (N, Cc, H, W), lambda o: (o, _bf16_bits(nhwc(wf)), _bf16_bits(nhwc(dyf)))),
                    (2, gw.numpy(), tuple(w.shape), lambda o: (_bf16_bits(nhwc(xf)), o, _bf16_bits(nhwc(dyf))))]:
                old = _bf16_bits(nhwc(rng.standard_normal(shape)))
                out = old.copy() if beta else np.full(old.shape, 0x7FC0, np.uint16)  # NaN: must not be read
                a, b, c = args(out)
                st = L.fake_cudnn_test_conv(d, NHWC, NHWC, ptr(p), 0, alpha, beta, ptr(a), ptr(b), ptr(c), -1, None)
                assert st == SUCCESS, last_error(L)
                exp = alpha * nhwc(ref) + beta * _bf16_vals(old)
                got = _bf16_vals(out)
                # one rounding to bf16: within half a bf16 ulp (at most 2^-8 relative) (+ fp32 slack)
                err = np.abs(got - exp)
                bound = np.abs(exp) * 2.0 ** -8 + 1e-6 * (np.abs(exp).max() + 1e-30)
                assert np.all(err <= bound), f"direction {d}: max err {err.max():.3e}"
                # and it is exactly torch's bf16 rounding of the float result where no tie is near
                assert np.mean(out == _bf16_bits(exp.astype(np.float32))) > 0.98
        # mixed types or another compute type: NOT_SUPPORTED
        xa, wa = _bf16_bits(nhwc(xf)), _bf16_bits(nhwc(wf))
        yo = np.zeros(tuple(y.shape), np.uint16)
        for types in [(BF16_T, BF16_T, DOUBLE_T), (BF16_T, FLOAT_T, FLOAT_T), (FLOAT_T, BF16_T, FLOAT_T)]:
            L.fake_cudnn_test_conv_types(*types)
            st = L.fake_cudnn_test_conv(0, NHWC, NHWC, ptr(p), 0, 1.0, 0.0, ptr(xa), ptr(wa), ptr(yo), -1, None)
            assert st == NOT_SUPPORTED, (types, st)
    finally:
        L.fake_cudnn_test_conv_types(FLOAT_T, FLOAT_T, FLOAT_T)


def test_conv_output_dims_and_bad_shapes(L):
    dims = np.zeros(4, np.int32)
    # floor((H + 2p - ((R-1)d + 1)) / s) + 1
    p = ints(2, 4, 10, 9, 6, 3, 3, 1, 0, 2, 2, 2, 1, 2, CROSS_CORRELATION, DEFAULT_MATH)
    assert L.fake_cudnn_test_conv_dims(NHWC, NHWC, ptr(p), ptr(dims)) == SUCCESS
    assert tuple(dims) == (2, 6, (10 + 2 - 5) // 2 + 1, (9 - 3) // 2 + 1)
    # filter larger than the padded input
    p = ints(1, 3, 4, 4, 2, 7, 3, 1, 1, 1, 1, 1, 1, 1, CROSS_CORRELATION, DEFAULT_MATH)
    assert L.fake_cudnn_test_conv_dims(NHWC, NHWC, ptr(p), ptr(dims)) == BAD_PARAM
    # output channels not divisible by the groups
    p = ints(1, 4, 6, 6, 3, 3, 3, 1, 1, 1, 1, 1, 1, 2, CROSS_CORRELATION, DEFAULT_MATH)
    assert L.fake_cudnn_test_conv_dims(NHWC, NHWC, ptr(p), ptr(dims)) == BAD_PARAM
    a = np.zeros(6 * 6 * 4, np.float32)
    st = L.fake_cudnn_test_conv(0, NHWC, NHWC, ptr(p), 0, 1.0, 0.0, ptr(a), ptr(np.zeros(3 * 9 * 2, np.float32)),
                                ptr(np.zeros(6 * 6 * 3, np.float32)), -1, None)
    assert st == BAD_PARAM
    # negative padding / zero stride / zero groups
    for bad in [(1, 3, 6, 6, 2, 3, 3, -1, 0, 1, 1, 1, 1, 1), (1, 3, 6, 6, 2, 3, 3, 0, 0, 0, 1, 1, 1, 1),
                (1, 3, 6, 6, 2, 3, 3, 0, 0, 1, 1, 1, 1, 0)]:
        p = ints(*bad, CROSS_CORRELATION, DEFAULT_MATH)
        assert L.fake_cudnn_test_conv_dims(NHWC, NHWC, ptr(p), ptr(dims)) == BAD_PARAM


@pytest.mark.parametrize("direction", [0, 1, 2])
@pytest.mark.parametrize("find", [0, 1])
@pytest.mark.parametrize("math", [DEFAULT_MATH, FMA_MATH, TENSOR_OP_MATH])
def test_algorithm_queries(L, direction, find, math):
    case = (2, 4, 6, 5, 6, 3, 3, 1, 1, 1, 1, 1, 1, 2)
    p = ints(*case, CROSS_CORRELATION, math)
    n = 8
    mx, ret = np.zeros(1, np.int32), np.zeros(1, np.int32)
    algo, status, det, mt = (np.full(n, -1, np.int32) for _ in range(4))
    mem = np.zeros(n, np.int64)
    st = L.fake_cudnn_test_conv_algos(direction, find, NHWC, NHWC, ptr(p), n, ptr(mx), ptr(ret), ptr(algo),
                                      ptr(status), ptr(det), ptr(mt), ptr(mem))
    assert st == SUCCESS, last_error(L)
    assert mx[0] == MAX_COUNT[direction]
    assert ret[0] == 3
    expect = FWD_ALGOS if direction == 0 else BWD_ALGOS
    N, Cc, H, W, K, R, S = case[:7]
    out_elems = [N * K * H * W, N * Cc * H * W, K * (Cc // 2) * R * S][direction]
    for i, (a, ws, d) in enumerate(expect):
        assert (algo[i], status[i], det[i], mt[i]) == (a, SUCCESS, DETERMINISTIC if d else NON_DETERMINISTIC, math)
        assert mem[i] == (4 * out_elems if ws else 0)
    assert algo[2] == FFT[direction] and status[2] == NOT_SUPPORTED
    # truncated to the requested count; 0 requested is invalid
    st = L.fake_cudnn_test_conv_algos(direction, find, NHWC, NHWC, ptr(p), 1, ptr(mx), ptr(ret), ptr(algo),
                                      ptr(status), ptr(det), ptr(mt), ptr(mem))
    assert st == SUCCESS and ret[0] == 1
    st = L.fake_cudnn_test_conv_algos(direction, find, NHWC, NHWC, ptr(p), 0, ptr(mx), ptr(ret), ptr(algo),
                                      ptr(status), ptr(det), ptr(mt), ptr(mem))
    assert st == BAD_PARAM


def test_workspace_checks_and_poison(L):
    case = (1, 2, 4, 4, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1)
    p = ints(*case, CROSS_CORRELATION, FMA_MATH)
    x = np.ones(32, np.float32)
    w = np.ones(3 * 9 * 2, np.float32)
    y = np.zeros(48, np.float32)
    need = 48 * 4
    ws = np.zeros(need // 4 + 16, np.float32)
    # too small, NULL with a size, an unsupported algorithm
    assert L.fake_cudnn_test_conv(0, NHWC, NHWC, ptr(p), 1, 1.0, 0.0, ptr(x), ptr(w), ptr(y), need - 4,
                                  ptr(ws)) == BAD_PARAM
    assert L.fake_cudnn_test_conv(0, NHWC, NHWC, ptr(p), 1, 1.0, 0.0, ptr(x), ptr(w), ptr(y), need, None) == BAD_PARAM
    assert L.fake_cudnn_test_conv(0, NHWC, NHWC, ptr(p), FFT[0], 1.0, 0.0, ptr(x), ptr(w), ptr(y), -1,
                                  None) == NOT_SUPPORTED
    assert "algorithm 4" in last_error(L)
    # a larger workspace is fine; all of it (and nothing beyond it) is overwritten
    assert L.fake_cudnn_test_conv(0, NHWC, NHWC, ptr(p), 1, 1.0, 0.0, ptr(x), ptr(w), ptr(y), need + 8,
                                  ptr(ws)) == SUCCESS
    assert np.isnan(ws[:need // 4 + 2]).all() and (ws[need // 4 + 2:] == 0).all()
    assert y.max() == 18.0  # a centre pixel: 2 channels x 9 taps
    # the workspace-free algorithm accepts no workspace
    assert L.fake_cudnn_test_conv(0, NHWC, NHWC, ptr(p), 0, 1.0, 0.0, ptr(x), ptr(w), ptr(y), 0, None) == SUCCESS


def test_conv_speed(L):
    """Resnet-like layer: 8x64x32x32, 3x3 64->64 'same' (0.6 GFLOP per direction)."""
    case = (8, 64, 32, 32, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1)
    p = ints(*case, CROSS_CORRELATION, FMA_MATH)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(8 * 64 * 32 * 32).astype(np.float32)
    w = rng.standard_normal(64 * 64 * 9).astype(np.float32)
    y = np.zeros_like(x)
    flop = 2.0 * 8 * 32 * 32 * 64 * 64 * 9
    rates = []
    for d in range(3):
        t = time.perf_counter()
        assert L.fake_cudnn_test_conv(d, NHWC, NHWC, ptr(p), 0, 1.0, 0.0, ptr(x), ptr(w), ptr(y), -1, None) == SUCCESS
        rates.append(flop / (time.perf_counter() - t) / 1e9)
    print(f"fake cuDNN GFLOP/s (fwd, bwd data, bwd filter): {', '.join(f'{r:.2f}' for r in rates)}")
    assert min(rates) > 0.05


# ---- batch norm -------------------------------------------------------------------------------

def _bn_call(L, kind, fmt, mode, x, *, y=None, dy=None, scale, bias=None, dscale=None, dbias=None, factor=0.0,
             rmean=None, rvar=None, eps=1e-5, smean=None, sinv=None, ab=(1.0, 0.0, 1.0, 0.0)):
    dims = ints(*x.shape) if fmt == NCHW else ints(x.shape[0], x.shape[3], x.shape[1], x.shape[2])
    return L.fake_cudnn_test_bn(kind, fmt, mode, ptr(dims), ptr(np.array(ab, np.float32)), ptr(x), ptr(y), ptr(dy),
                                ptr(scale), ptr(bias), ptr(dscale), ptr(dbias), factor, ptr(rmean), ptr(rvar), eps,
                                ptr(smean), ptr(sinv))


@pytest.mark.parametrize("fmt", [NHWC, NCHW])
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (2, 8, 1, 1), (1, 5, 3, 1)])
def test_bn_training_inference_backward(L, fmt, shape):
    rng = np.random.default_rng(sum(shape) + fmt)
    N, Cc, H, W = shape
    x = torch.tensor(rng.standard_normal(shape) * 2 + 0.5)
    g = torch.tensor(rng.standard_normal(Cc))
    b = torch.tensor(rng.standard_normal(Cc))
    rm0, rv0 = rng.standard_normal(Cc), rng.random(Cc) + 0.5
    f, eps = 0.3, 1e-3
    rm, rv = torch.tensor(rm0.copy()), torch.tensor(rv0.copy())
    xr = x.clone().requires_grad_(True)
    gr, br = g.clone().requires_grad_(True), b.clone().requires_grad_(True)
    y = F.batch_norm(xr, rm, rv, gr, br, training=True, momentum=f, eps=eps)
    mean = x.mean((0, 2, 3)).numpy()
    inv = 1.0 / np.sqrt(x.var((0, 2, 3), unbiased=False).numpy() + eps)
    dy = torch.tensor(rng.standard_normal(shape))
    gx, gg, gb = torch.autograd.grad(y, (xr, gr, br), dy)

    xa = to_layout(x.numpy(), fmt)
    f32 = lambda a: np.ascontiguousarray(a, np.float32)  # noqa: E731
    scale, bias = f32(g.numpy()), f32(b.numpy())
    # training, alpha = 1, beta = 0 (y starts NaN), all outputs
    ya = np.full_like(xa, np.nan)
    rma, rva, sm, si = f32(rm0), f32(rv0), np.zeros(Cc, np.float32), np.zeros(Cc, np.float32)
    assert _bn_call(L, 0, fmt, BN_SPATIAL, xa, y=ya, scale=scale, bias=bias, factor=f, rmean=rma, rvar=rva, eps=eps,
                    smean=sm, sinv=si) == SUCCESS, last_error(L)
    close(from_layout(ya, fmt), y.detach().numpy(), 1e-5)
    close(rma, rm.numpy(), 1e-6)
    close(rva, rv.numpy(), 1e-6)  # torch's running variance is the unbiased one too
    close(sm, mean, 1e-6)
    close(si, inv, 1e-5)
    # alpha / beta, no running or saved pointers
    y0 = rng.standard_normal(xa.shape).astype(np.float32)
    ya = y0.copy()
    assert _bn_call(L, 0, fmt, BN_SPATIAL, xa, y=ya, scale=scale, bias=bias, eps=eps, ab=(0.5, 2.0, 1, 0)) == SUCCESS
    close(ya, 0.5 * to_layout(y.detach().numpy(), fmt).astype(np.float64) + 2.0 * y0, 1e-5)
    # exactly one running / saved pointer: BAD_PARAM
    assert _bn_call(L, 0, fmt, BN_SPATIAL, xa, y=ya, scale=scale, bias=bias, rmean=rma, eps=eps) == BAD_PARAM
    assert _bn_call(L, 0, fmt, BN_SPATIAL, xa, y=ya, scale=scale, bias=bias, sinv=si, eps=eps) == BAD_PARAM
    # other modes: NOT_SUPPORTED
    assert _bn_call(L, 0, fmt, BN_PER_ACTIVATION, xa, y=ya, scale=scale, bias=bias, eps=eps) == NOT_SUPPORTED
    assert _bn_call(L, 0, fmt, 2, xa, y=ya, scale=scale, bias=bias, eps=eps) == NOT_SUPPORTED

    # inference with the running statistics
    ya = np.full_like(xa, np.nan)
    assert _bn_call(L, 1, fmt, BN_SPATIAL, xa, y=ya, scale=scale, bias=bias, rmean=f32(rm0), rvar=f32(rv0),
                    eps=eps) == SUCCESS
    ref = F.batch_norm(x, torch.tensor(rm0), torch.tensor(rv0), g, b, training=False, eps=eps)
    close(from_layout(ya, fmt), ref.numpy(), 1e-5)

    # backward with the saved statistics and recomputing them
    dya = to_layout(dy.numpy(), fmt)
    for saved in (True, False):
        dxa = np.full_like(xa, np.nan)
        ds, db = np.full(Cc, np.nan, np.float32), np.full(Cc, np.nan, np.float32)
        assert _bn_call(L, 2, fmt, BN_SPATIAL, xa, y=dxa, dy=dya, scale=scale, dscale=ds, dbias=db, eps=eps,
                        smean=sm if saved else None, sinv=si if saved else None) == SUCCESS, last_error(L)
        close(from_layout(dxa, fmt), gx.numpy(), 1e-4)
        close(ds, gg.numpy(), 1e-5)
        close(db, gb.numpy(), 1e-5)
    # alpha / beta of data and parameter gradients
    dx0 = rng.standard_normal(xa.shape).astype(np.float32)
    ds0, db0 = rng.standard_normal(Cc).astype(np.float32), rng.standard_normal(Cc).astype(np.float32)
    dxa, ds, db = dx0.copy(), ds0.copy(), db0.copy()
    assert _bn_call(L, 2, fmt, BN_SPATIAL, xa, y=dxa, dy=dya, scale=scale, dscale=ds, dbias=db, eps=eps, smean=sm,
                    sinv=si, ab=(2.0, -1.0, 0.5, 3.0)) == SUCCESS
    close(dxa, 2.0 * to_layout(gx.numpy(), fmt).astype(np.float64) - dx0, 1e-4)
    close(ds, 0.5 * gg.numpy() + 3.0 * ds0, 1e-5)
    close(db, 0.5 * gb.numpy() + 3.0 * db0, 1e-5)


def test_bn_backward_uses_the_saved_statistics(L):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 2, 5))
    dy = rng.standard_normal(x.shape)
    scale = rng.standard_normal(4).astype(np.float32)
    mean = (x.mean((0, 2, 3)) + 0.25).astype(np.float32)  # deliberately not the batch statistics
    inv = (1.0 / np.sqrt(x.var((0, 2, 3)) + 0.5)).astype(np.float32)
    xa, dya = to_layout(x, NHWC), to_layout(dy, NHWC)
    dxa, ds, db = np.zeros_like(xa), np.zeros(4, np.float32), np.zeros(4, np.float32)
    assert _bn_call(L, 2, NHWC, BN_SPATIAL, xa, y=dxa, dy=dya, scale=scale, dscale=ds, dbias=db, eps=1e-5,
                    smean=mean, sinv=inv) == SUCCESS
    m, iv = mean.astype(np.float64)[None, :, None, None], inv.astype(np.float64)[None, :, None, None]
    xh = (x - m) * iv
    sdy, sdyx = dy.sum((0, 2, 3)), (dy * xh).sum((0, 2, 3))
    M = 3 * 2 * 5
    dx = scale.astype(np.float64)[None, :, None, None] * iv * (dy - sdy[None, :, None, None] / M -
                                                               xh * sdyx[None, :, None, None] / M)
    close(from_layout(dxa, NHWC), dx, 1e-5)
    close(ds, sdyx, 1e-5)
    close(db, sdy, 1e-5)


def test_bn_single_value_per_channel_running_variance_is_nan(L):
    """N·H·W = 1: the unbiased variance divides by zero (csrc avoids passing running pointers then)."""
    xa = np.ones((1, 1, 1, 3), np.float32)
    one = np.ones(3, np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    assert _bn_call(L, 0, NHWC, BN_SPATIAL, xa, y=np.zeros_like(xa), scale=one, bias=one, factor=0.1, rmean=rm,
                    rvar=rv) == SUCCESS
    close(rm, np.full(3, 0.1))
    assert np.isnan(rv).all()


# ---- pooling ----------------------------------------------------------------------------------

# N, C, H, W, kh, kw, ph, pw, sh, sw
POOL_CASES = [
    (2, 3, 8, 8, 2, 2, 0, 0, 2, 2),
    (2, 4, 9, 7, 3, 3, 1, 1, 2, 2),
    (1, 2, 10, 11, 3, 2, 1, 0, 3, 1),
    (3, 5, 5, 5, 5, 5, 2, 2, 1, 1),
    (1, 3, 7, 6, 2, 3, 1, 1, 2, 2),
]


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("fmt", [NHWC, NCHW])
@pytest.mark.parametrize("mode", [POOL_MAX, POOL_MAX_DET, POOL_AVG_INCL, POOL_AVG_EXCL])
def test_pool_matches_torch(L, case, fmt, mode):
    rng = np.random.default_rng(sum(case) * 5 + fmt + mode * 13)
    N, Cc, H, W, kh, kw, ph, pw, sh, sw = case
    x = torch.tensor(rng.standard_normal((N, Cc, H, W)), requires_grad=True)
    if mode in (POOL_MAX, POOL_MAX_DET):
        y = F.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw))
    else:
        y = F.avg_pool2d(x, (kh, kw), (sh, sw), (ph, pw), count_include_pad=mode == POOL_AVG_INCL)
    dy = torch.tensor(rng.standard_normal(tuple(y.shape)))
    (gx,) = torch.autograd.grad(y, x, dy)
    p = ints(*case)
    out = np.zeros(4, np.int32)
    xa = to_layout(x.detach().numpy(), fmt)
    ya = np.full(to_layout(y.detach().numpy(), fmt).shape, np.nan, np.float32)
    st = L.fake_cudnn_test_pool(0, fmt, mode, 1, ptr(p), 1.0, 0.0, ptr(xa), ptr(ya), None, None, ptr(out))
    assert st == SUCCESS, last_error(L)
    assert tuple(out) == tuple(y.shape)
    close(from_layout(ya, fmt), y.detach().numpy(), 1e-6)
    dya = to_layout(dy.numpy(), fmt)
    dxa = np.full_like(xa, np.nan)
    st = L.fake_cudnn_test_pool(1, fmt, mode, 1, ptr(p), 1.0, 0.0, ptr(xa), ptr(ya), ptr(dya), ptr(dxa), ptr(out))
    assert st == SUCCESS, last_error(L)
    close(from_layout(dxa, fmt), gx.numpy(), 1e-6)
    # alpha / beta
    y0 = rng.standard_normal(ya.shape).astype(np.float32)
    yb = y0.copy()
    assert L.fake_cudnn_test_pool(0, fmt, mode, 1, ptr(p), -2.0, 0.5, ptr(xa), ptr(yb), None, None, ptr(out)) == SUCCESS
    close(yb, -2.0 * ya.astype(np.float64) + 0.5 * y0, 1e-6)
    dx0 = rng.standard_normal(xa.shape).astype(np.float32)
    dxb = dx0.copy()
    assert L.fake_cudnn_test_pool(1, fmt, mode, 1, ptr(p), 3.0, -1.0, ptr(xa), ptr(ya), ptr(dya), ptr(dxb),
                                  ptr(out)) == SUCCESS
    close(dxb, 3.0 * dxa.astype(np.float64) - dx0, 1e-6)


@pytest.mark.parametrize("mode", [POOL_MAX, POOL_AVG_EXCL])
def test_pool_bf16(L, mode):
    """x, y, dy, dx all BFLOAT16: the float64 result of the bf16 values rounded once to bf16
    (torch's rounding); the max backward routes dy exactly."""
    case = POOL_CASES[0]
    rng = np.random.default_rng(mode + 3)
    N, Cc, H, W, kh, kw, ph, pw, sh, sw = case
    xf = _bf16_vals(_bf16_bits(rng.standard_normal((N, Cc, H, W))))
    x = torch.tensor(xf, requires_grad=True)
    y = (F.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw)) if mode == POOL_MAX
         else F.avg_pool2d(x, (kh, kw), (sh, sw), (ph, pw), count_include_pad=False))
    dyf = _bf16_vals(_bf16_bits(rng.standard_normal(tuple(y.shape))))
    (gx,) = torch.autograd.grad(y, x, torch.tensor(dyf))
    nhwc = lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1))  # noqa: E731
    p, out = ints(*case), np.zeros(4, np.int32)
    xa = _bf16_bits(nhwc(xf))
    ya = np.full(nhwc(y.detach().numpy()).shape, 0x7FC0, np.uint16)
    L.fake_cudnn_test_conv_types(BF16_T, FLOAT_T, FLOAT_T)
    try:
        assert L.fake_cudnn_test_pool(0, NHWC, mode, 1, ptr(p), 1.0, 0.0, ptr(xa), ptr(ya), None, None,
                                      ptr(out)) == SUCCESS, last_error(L)
        np.testing.assert_array_equal(ya, _bf16_bits(nhwc(y.detach().numpy()).astype(np.float32)))
        dya, dxa = _bf16_bits(nhwc(dyf)), np.full(xa.shape, 0x7FC0, np.uint16)
        assert L.fake_cudnn_test_pool(1, NHWC, mode, 1, ptr(p), 1.0, 0.0, ptr(xa), ptr(ya), ptr(dya), ptr(dxa),
                                      ptr(out)) == SUCCESS, last_error(L)
        np.testing.assert_array_equal(dxa, _bf16_bits(nhwc(gx.numpy()).astype(np.float32)))
    finally:
        L.fake_cudnn_test_conv_types(FLOAT_T, FLOAT_T, FLOAT_T)


@pytest.mark.parametrize("mode", [POOL_MAX, POOL_MAX_DET])
def test_max_pool_ties_padding_nan_and_stale_y(L, mode):
    p = ints(1, 1, 4, 4, 3, 3, 1, 1, 2, 2)  # 2x2 output, windows overlap
    out = np.zeros(4, np.int32)
    x = np.full((1, 1, 4, 4), -5.0, np.float32)  # all negative: padding (zero) must not win
    x[0, 0, 1, 1] = x[0, 0, 1, 2] = x[0, 0, 2, 1] = -1.0  # ties inside overlapping windows
    y = np.zeros((1, 1, 2, 2), np.float32)
    assert L.fake_cudnn_test_pool(0, NCHW, mode, 1, ptr(p), 1.0, 0.0, ptr(x), ptr(y), None, None, ptr(out)) == SUCCESS
    assert (y == -1.0).all()
    dy = np.array([[[[1.0, 2.0], [4.0, 8.0]]]], np.float32)
    dx = np.zeros_like(x)
    assert L.fake_cudnn_test_pool(1, NCHW, mode, 1, ptr(p), 1.0, 0.0, ptr(x), ptr(y), ptr(dy), ptr(dx),
                                  ptr(out)) == SUCCESS
    # window (0,0) rows -1..1 cols -1..1 -> first max (1,1); (0,1) rows -1..1 cols 1..3 -> (1,1);
    # (1,0) rows 1..3 cols -1..1 -> (1,1); (1,1) rows 1..3 cols 1..3 -> (1,1)
    ref = np.zeros_like(x)
    ref[0, 0, 1, 1] = 15.0
    np.testing.assert_array_equal(dx, ref)
    # a stale y (no element equals it) routes no gradient
    dx[:] = 0
    ys = y + 0.5
    assert L.fake_cudnn_test_pool(1, NCHW, mode, 1, ptr(p), 1.0, 0.0, ptr(x), ptr(ys), ptr(dy), ptr(dx),
                                  ptr(out)) == SUCCESS
    assert (dx == 0).all()
    # NaN: propagated or ignored per the descriptor
    xn = x.copy()
    xn[0, 0, 0, 0] = np.nan
    for nan_opt, expect_nan in [(1, True), (0, False)]:
        assert L.fake_cudnn_test_pool(0, NCHW, mode, nan_opt, ptr(p), 1.0, 0.0, ptr(xn), ptr(y), None, None,
                                      ptr(out)) == SUCCESS
        assert np.isnan(y[0, 0, 0, 0]) == expect_nan and not np.isnan(y.ravel()[1:]).any()


def test_pool_output_dims_and_rejections(L):
    out = np.zeros(4, np.int32)
    p = ints(2, 3, 11, 10, 3, 2, 1, 0, 2, 3)
    assert L.fake_cudnn_test_pool(0, NHWC, POOL_MAX, 1, ptr(p), 1.0, 0.0, None, None, None, None, ptr(out)) == SUCCESS
    assert tuple(out) == (2, 3, (11 + 2 - 3) // 2 + 1, (10 - 2) // 3 + 1)  # floor
    # window larger than the padded input
    p = ints(1, 1, 2, 2, 5, 5, 1, 1, 1, 1)
    assert L.fake_cudnn_test_pool(0, NHWC, POOL_MAX, 1, ptr(p), 1.0, 0.0, None, None, None, None, ptr(out)) == BAD_PARAM
    # invalid mode / stride
    p = ints(1, 1, 4, 4, 2, 2, 0, 0, 0, 1)
    assert L.fake_cudnn_test_pool(0, NHWC, POOL_MAX, 1, ptr(p), 1.0, 0.0, None, None, None, None, ptr(out)) == BAD_PARAM
    p = ints(1, 1, 4, 4, 2, 2, 0, 0, 1, 1)
    assert L.fake_cudnn_test_pool(0, NHWC, 7, 1, ptr(p), 1.0, 0.0, None, None, None, None, ptr(out)) == BAD_PARAM
    # padding >= window: unsupported by the fake
    p = ints(1, 1, 4, 4, 2, 2, 2, 0, 1, 1)
    x, y = np.zeros(16, np.float32), np.zeros(64, np.float32)
    assert L.fake_cudnn_test_pool(0, NHWC, POOL_MAX, 1, ptr(p), 1.0, 0.0, ptr(x), ptr(y), None, None,
                                  ptr(out)) == NOT_SUPPORTED

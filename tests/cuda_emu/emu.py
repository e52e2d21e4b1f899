"""Build and load csrc/cuda/kernels.cu on the CPU emulation (cuda_emu.h), through ctypes.

    lib = emu.load()          # translate + compile once (cached by content hash), then dlopen
    lib.call("relu_forward", x, y, n)

Arrays passed to `call` are wrapped in guarded buffers: every array is copied into the middle
of a larger one whose margins hold a sentinel bit pattern, and the call fails if a margin
changed (a write out of bounds). Output arrays can be poisoned first (NaN) so that an element
the kernel forgot to write cannot pass for a correct one.

Environment:
  HALCDL_EMU_KERNELS_CU   compile this file instead of csrc/cuda/kernels.cu (mutation tests)
  HALCDL_EMU_BUILD_DIR    where to build (default: <tmp>/halcdl_cuda_emu_<uid>)
  HALCDL_EMU_UCONTEXT     1: switch fibers with ucontext (the portable path) on x86-64 too
  CXX                     the compiler (default: g++)
"""
from __future__ import annotations

import ctypes as C
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))  # tests/cuda_emu -> tests -> repo root
CSRC = os.path.join(ROOT, "csrc")
KERNELS_CU = os.path.join(CSRC, "cuda", "kernels.cu")

def _load_translate():
    spec = importlib.util.spec_from_file_location("halcdl_cuda_emu_translate", os.path.join(HERE, "translate.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


translate = _load_translate()

CXXFLAGS = ["-std=c++17", "-O1", "-g0", "-fPIC", "-shared", "-pthread", "-ffp-contract=off", "-fno-fast-math",
            "-Wall", "-Wno-unknown-pragmas"]

GUARD = 64  # elements of margin on each side of every buffer

# sentinel bit patterns of the margins, per dtype (floats: NaNs with a payload), written and
# compared through unsigned views so that no conversion can quiet or change them
_SENTINEL = {
    np.dtype(np.float32): (np.uint32, 0x7FA5A5A5),
    np.dtype(np.float64): (np.uint64, 0x7FF5A5A5A5A5A5A5),
    np.dtype(np.int32): (np.uint32, 0xA5A5A5A5),
    np.dtype(np.uint16): (np.uint16, 0xA5A5),
}


class EmuError(RuntimeError):
    """A launcher threw (the emulator's diagnostic is in the message)."""


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def available() -> tuple[bool, str]:
    src = os.environ.get("HALCDL_EMU_KERNELS_CU", KERNELS_CU)
    if not os.path.isfile(src):
        return False, f"{src} not found (an installed package without sources)"
    if not os.path.isfile(os.path.join(CSRC, "cuda", "kernels.cuh")):
        return False, "csrc/cuda/kernels.cuh not found"
    if compiler() is None:
        return False, "no C++ compiler (g++) on PATH"
    if not sys.platform.startswith("linux"):
        return False, "the emulation uses ucontext fibers (Linux only)"
    return True, ""


def _emu_files() -> list[str]:
    files = [os.path.join(HERE, f) for f in ("cuda_emu.h", "emu_runtime.cpp", "translate.py")]
    return files + sorted(os.path.join(HERE, "include", f) for f in os.listdir(os.path.join(HERE, "include")))


def _csrc_headers() -> list[str]:
    files = []
    for sub in ("core", "engine", "cuda"):
        d = os.path.join(CSRC, sub)
        files += sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith((".h", ".cuh")))
    return files


def build_library(cu_sources: list[str], cpp_sources: list[str], deps: list[str], tag: str) -> str:
    """Translates the .cu sources, compiles them with the .cpp ones into one shared library
    and returns its path. The result is cached under a hash of every input."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++) on PATH")
    h = hashlib.sha256()
    for f in [*cu_sources, *cpp_sources, *deps, *_emu_files()]:
        h.update(os.path.basename(f).encode())  # not the directory: a copy elsewhere is the same build
        with open(f, "rb") as fh:
            h.update(fh.read())
    flags = CXXFLAGS + (["-DCUDA_EMU_UCONTEXT"] if os.environ.get("HALCDL_EMU_UCONTEXT") == "1" else [])
    h.update(" ".join([cxx] + flags).encode())
    key = h.hexdigest()[:16]
    out_dir = os.environ.get("HALCDL_EMU_BUILD_DIR") or os.path.join(
        tempfile.gettempdir(), f"halcdl_cuda_emu_{os.getuid() if hasattr(os, 'getuid') else 0}")
    os.makedirs(out_dir, exist_ok=True)
    lib = os.path.join(out_dir, f"lib{tag}_{key}.so")
    if os.path.isfile(lib):
        return lib
    work = tempfile.mkdtemp(prefix="build_", dir=out_dir)
    try:
        srcs = []
        for i, cu in enumerate(cu_sources):
            with open(cu, encoding="utf-8") as f:
                text = f.read()
            cpp = os.path.join(work, f"tu{i}_{os.path.splitext(os.path.basename(cu))[0]}.cpp")
            with open(cpp, "w", encoding="utf-8") as f:
                f.write(translate.translate(text, cu))
            srcs.append(cpp)
        tmp_lib = os.path.join(work, "lib.so")
        cmd = [cxx, *flags, "-I", os.path.join(HERE, "include"), "-I", HERE, "-I", CSRC,
               *srcs, *cpp_sources, os.path.join(HERE, "emu_runtime.cpp"), "-o", tmp_lib]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("compiling the emulated kernels failed:\n" + " ".join(cmd) + "\n" + r.stderr[-20000:])
        os.replace(tmp_lib, lib)  # atomic: concurrent builders never see a partial file
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return lib


def build(kernels_cu: str | None = None, tag: str = "kernels_emu") -> str:
    """The emulated kernels.cu (or `kernels_cu`, e.g. a mutant) with the C API (capi.cpp)."""
    ok, why = available()
    if not ok:
        raise RuntimeError(why)
    src = os.path.abspath(kernels_cu or os.environ.get("HALCDL_EMU_KERNELS_CU", KERNELS_CU))
    return build_library([src], [os.path.join(HERE, "capi.cpp")], _csrc_headers(), tag)


def build_selftest() -> str:
    """selftest.cu: small kernels that check the emulator itself (sync, shuffles, misuse)."""
    return build_library([os.path.join(HERE, "selftest.cu")], [], [], "emu_selftest")


# ---- ctypes signatures -----------------------------------------------------------------
_P, _I64, _SZ, _F, _I, _U64 = C.c_void_p, C.c_int64, C.c_size_t, C.c_float, C.c_int, C.c_uint64
SIGNATURES = {
    "nchw_to_nhwc": [_P, _P, _I64, _I64, _I64],
    "nhwc_to_nchw": [_P, _P, _I64, _I64, _I64],
    "f32_to_bf16": [_P, _P, _SZ],
    "bf16_to_f32": [_P, _P, _SZ],
    "relu_forward": [_P, _P, _SZ],
    "relu_backward": [_P, _P, _P, _SZ],
    "relu6_forward": [_P, _P, _SZ],
    "relu6_backward": [_P, _P, _P, _SZ],
    "add": [_P, _P, _P, _SZ],
    "accumulate": [_P, _P, _SZ],
    "mul": [_P, _P, _P, _SZ],
    "scale": [_P, _F, _SZ],
    "dropout_forward": [_P, _P, _P, _SZ, _U64, _U64, _F],
    "bias_add": [_P, _P, _I64, _I64],
    "bias_grad": [_P, _P, _I64, _I64, _P],
    "gap_forward": [_P, _P, _I64, _I64, _I64],
    "gap_backward": [_P, _P, _I64, _I64, _I64],
    "concat_forward": [_P, _P, _I64, _I64, _I64, _I64],
    "concat_backward": [_P, _P, _I64, _I64, _I64, _I64],
    "upsample_nearest_forward": [_P, _P, _I64, _I64, _I64, _I64, _I],
    "upsample_nearest_backward": [_P, _P, _I64, _I64, _I64, _I64, _I],
    "upsample_bilinear_forward": [_P, _P, _I64, _I64, _I64, _I64, _I],
    "upsample_bilinear_backward": [_P, _P, _I64, _I64, _I64, _I64, _I],
    "softmax_rows": [_P, _P, _I64, _I64],
    "softmax_rows_backward": [_P, _P, _P, _I64, _I64],
    "softmax_xent": [_P, _P, _P, _I64, _I64, _F, _P, _P, _P],
    "softmax_xent_pixels": [_P, _P, _P, _P, _I64, _I64, _F, _P, _P, _P],
    "softmax_argmax_rows": [_P, _I64, _I64, _P, _P],
    "sum_squares": [_P, _SZ, _P, _P],
    "check_finite": [_P, _SZ, _P],
    "sgd_update": [_P, _P, _P, _SZ, _SZ, _F, _F, _F],
    "adam_update": [_P, _P, _P, _P, _SZ, _SZ, _F, _F, _F, _F, _F, _I64],
    "sgd_update_finite": [_P, _P, _P, _SZ, _SZ, _F, _F, _F, _P],
    "adam_update_finite": [_P, _P, _P, _P, _SZ, _SZ, _F, _F, _F, _F, _F, _I64, _P],
    "relu_forward_bf16": [_P, _P, _SZ],
    "relu_backward_bf16": [_P, _P, _P, _SZ],
    "relu6_forward_bf16": [_P, _P, _SZ],
    "relu6_backward_bf16": [_P, _P, _P, _SZ],
    "add_bf16": [_P, _P, _P, _SZ],
    "accumulate_bf16": [_P, _P, _SZ],
    "mul_mask_bf16": [_P, _P, _P, _SZ],
    "dropout_forward_bf16": [_P, _P, _P, _SZ, _U64, _U64, _F],
    "bias_add_bf16": [_P, _P, _I64, _I64],
    "bias_grad_bf16": [_P, _P, _I64, _I64, _P],
    "bn_forward_training_bf16": [_P, _P, _P, _P, _I64, _I64, _F, _F, _P, _P, _P, _P, _P],
    "bn_forward_inference_bf16": [_P, _P, _P, _P, _P, _P, _I64, _I64, _F],
    "bn_backward_bf16": [_P, _P, _P, _P, _P, _I64, _I64, _P, _P, _P, _P],
    "gap_forward_bf16": [_P, _P, _I64, _I64, _I64],
    "gap_backward_bf16": [_P, _P, _I64, _I64, _I64],
    "concat_forward_bf16": [_P, _P, _I64, _I64, _I64, _I64],
    "concat_backward_bf16": [_P, _P, _I64, _I64, _I64, _I64],
    "nchw_f32_to_nhwc_bf16": [_P, _P, _I64, _I64, _I64],
    "sigmoid_forward": [_P, _P, _SZ],
    "sigmoid_backward": [_P, _P, _P, _SZ],
    "tanh_forward": [_P, _P, _SZ],
    "tanh_backward": [_P, _P, _P, _SZ],
    "resize_forward": [_P, _P, _I64, _I64, _I64, _I64, _I64, _I64, _I],
    "resize_backward": [_P, _P, _I64, _I64, _I64, _I64, _I64, _I64, _I],
    "depth_to_space_forward": [_P, _P, _I64, _I64, _I64, _I64, _I, _I],
    "depth_to_space_backward": [_P, _P, _I64, _I64, _I64, _I64, _I, _I],
    "reshape_nhwc": [_P, _P, _I64, _I64, _I64, _I64, _I64, _I64, _I64],
    "permute_nhwc": [_P, _P, _I64, _I64, _I64, _I64, _I, _I, _I],
    "depth_max_forward": [_P, _P, _I64, _I64, _I],
    "depth_max_backward": [_P, _P, _P, _I64, _I64, _I],
    "lrn_forward": [_P, _P, _SZ, _I64, _I, _F, _F, _F],
    "lrn_backward": [_P, _P, _P, _SZ, _I64, _I, _F, _F, _F],
    "reduce_forward": [_P, _P, _I64, _I64, _I64, _I64, _I, _I, _I, _I],
    "reduce_backward": [_P, _P, _P, _P, _I64, _I64, _I64, _I64, _I, _I, _I, _I],
    "matmul_nhwc": [_P, _I, _I64, _I64, _P, _I, _I64, _I64, _P, _I64, _I64],
}
SCHEDULES = {"in_order": 0, "reverse": 1, "random": 2}


class Guarded:
    """A copy of `a` inside a buffer with GUARD sentinel elements on each side."""

    def __init__(self, a: np.ndarray):
        a = np.ascontiguousarray(a)
        self.dtype = a.dtype
        self.shape = a.shape
        self.utype, self.pattern = _SENTINEL[a.dtype]
        self.buf = np.empty(a.size + 2 * GUARD, dtype=a.dtype)
        self.buf.view(self.utype)[:] = self.pattern
        self.buf[GUARD:GUARD + a.size] = a.reshape(-1)

    @property
    def ptr(self) -> int:
        return self.buf.ctypes.data + GUARD * self.buf.itemsize

    def value(self) -> np.ndarray:
        return self.buf[GUARD:-GUARD].reshape(self.shape).copy()

    def check(self, what: str) -> None:
        raw = self.buf.view(self.utype)
        lo, hi = raw[:GUARD], raw[-GUARD:]
        if not (np.all(lo == self.pattern) and np.all(hi == self.pattern)):
            bad_lo = int(np.sum(lo != self.pattern))
            bad_hi = int(np.sum(hi != self.pattern))
            raise AssertionError(f"{what}: out-of-bounds write ({bad_lo} elements before the buffer, "
                                 f"{bad_hi} after it)")


class Kernels:
    def __init__(self, path: str):
        self.path = path
        self.lib = C.CDLL(path)
        L = self.lib
        L.emu_error_message.restype = C.c_char_p
        L.emu_set_schedule.argtypes = [C.c_int, C.c_uint64]
        L.emu_stats.argtypes = [C.POINTER(C.c_uint64)]
        L.emu_log_size.restype = C.c_int
        L.emu_log_entry.argtypes = [C.c_int, C.POINTER(C.c_uint64)]
        L.emu_log_entry.restype = C.c_char_p
        L.emu_bias_grad_scratch_floats.argtypes = [_I64, _I64]
        L.emu_bias_grad_scratch_floats.restype = C.c_size_t
        L.emu_loss_scratch_doubles.argtypes = [_I64]
        L.emu_loss_scratch_doubles.restype = C.c_size_t
        L.emu_bf16_colsum_scratch_doubles.argtypes = [_I64, _I64]
        L.emu_bf16_colsum_scratch_doubles.restype = C.c_size_t
        for name, sig in SIGNATURES.items():
            fn = getattr(L, "emu_" + name)
            fn.argtypes = sig
            fn.restype = C.c_int
        self.schedule("random", 1)

    # -- emulator control ---------------------------------------------------------------
    def schedule(self, mode: str, seed: int = 0) -> None:
        self.lib.emu_set_schedule(SCHEDULES[mode], seed)

    def reset(self) -> None:
        self.lib.emu_reset()

    def stats(self) -> dict:
        out = (C.c_uint64 * 6)()
        self.lib.emu_stats(out)
        return dict(zip(("launches", "blocks", "threads", "barriers", "warp_ops", "switches"), list(out)))

    def log(self) -> list[tuple[str, tuple, tuple]]:
        res = []
        dims = (C.c_uint64 * 7)()
        for i in range(self.lib.emu_log_size()):
            name = self.lib.emu_log_entry(i, dims).decode()
            res.append((name, tuple(dims[0:3]), tuple(dims[3:6])))
        return res

    def bias_grad_scratch_floats(self, rows: int, c: int) -> int:
        return int(self.lib.emu_bias_grad_scratch_floats(rows, c))

    def loss_scratch_doubles(self, rows: int) -> int:
        return int(self.lib.emu_loss_scratch_doubles(rows))

    def bf16_colsum_scratch_doubles(self, rows: int, c: int) -> int:
        return int(self.lib.emu_bf16_colsum_scratch_doubles(rows, c))

    # -- calls ----------------------------------------------------------------------------
    def call(self, name: str, *args):
        """Calls emu_<name>. numpy arrays are passed through guarded copies and returned
        (in order) after the call, margins checked; a Guarded buffer is passed as is (twice
        for aliasing; returned once, at its first position); None is a null pointer; other
        values are scalars. Raises EmuError when the launcher threw."""
        guarded = []
        cargs = []
        for a in args:
            if isinstance(a, Guarded):  # the same buffer passed twice (aliasing)
                if a not in guarded:
                    guarded.append(a)
                cargs.append(a.ptr)
            elif isinstance(a, np.ndarray):
                g = Guarded(a)
                guarded.append(g)
                cargs.append(g.ptr)
            else:
                cargs.append(a)
        rc = getattr(self.lib, "emu_" + name)(*cargs)
        for i, g in enumerate(guarded):
            g.check(f"{name} (array argument {i})")
        if rc != 0:
            raise EmuError(self.lib.emu_error_message().decode())
        outs = [g.value() for g in guarded]
        return outs


_loaded: Kernels | None = None


def load(kernels_cu: str | None = None) -> Kernels:
    """The emulated kernels (built once per process; `kernels_cu`: a different source,
    loaded as a separate library and not cached here)."""
    global _loaded
    if kernels_cu is not None:
        return Kernels(build(kernels_cu))
    if _loaded is None:
        _loaded = Kernels(build())
    return _loaded

"""Build the EMULATED CUDA backend: libhalcdl_cuda_emu.so, a drop-in for libhalcdl_cuda.so that
runs on the CPU.

The real host code of the backend — csrc/cuda/{common,engine,plan,ops_cudnn,ops_misc,
layout,detection}.cpp and csrc/engine/graph.cpp — is compiled UNCHANGED against the real CUDA runtime,
cuDNN and cuBLAS headers, and linked with

  fake_cudart.cpp   the CUDA runtime on host memory (one device, a memory limit, checks)
  fake_cublas.cpp   cuBLAS handles and cublasGemmEx
  fake_cudnn.cpp    the cuDNN legacy API csrc/cuda uses (reference math)
  kernels.cu, det_kernels.cu  translated and compiled by the kernel emulator (tests/cuda_emu: blocks and
                    threads as fibers), with bridge_emu.cpp / bridge_real.cpp joining its
                    error path to the real host code's

into one shared library that exports halcdl_cuda_api (and the fakes' fake_* test hooks).
_core loads it as its CUDA backend when HALCDL_CUDA_LIBRARY names it (python/halcdl/_native.py),
so tests/test_gpu.py runs against "GPU 0 = the emulation":

    HALCDL_CUDA_LIBRARY=$(python tests/gpu_emu/build.py) python -m pytest tests/test_gpu.py

The result is cached under a hash of every input (sources, headers, flags) in
<tmp>/halcdl_gpu_emu_<uid> (HALCDL_EMU_BUILD_DIR overrides), like tests/cuda_emu/emu.py.

Headers are found like CMakeLists.txt finds them: cuDNN and cuBLAS from NVIDIA's wheels
(nvidia-cudnn-cu13 → <site-packages>/nvidia/cudnn/include, nvidia-cublas →
<site-packages>/nvidia/cu13/include, located through sysconfig and the wheels' metadata) or
CUDNN_ROOT / CUBLAS_ROOT, and the runtime's cuda_runtime_api.h from CUDA_HOME, CUDA_PATH or
/usr/local/cuda. Nothing is linked from them: the headers are all that is needed.

Environment:
  HALCDL_EMU_BUILD_DIR    where to build and cache
  HALCDL_EMU_FAKE_CUDNN   compile this file instead of tests/gpu_emu/fake_cudnn.cpp
  CXX                     the compiler (default: g++)
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
ROOT = os.path.dirname(TESTS)
CSRC = os.path.join(ROOT, "csrc")
EMU_DIR = os.path.join(TESTS, "cuda_emu")

HOST_SOURCES = [os.path.join(CSRC, "cuda", f + ".cpp") for f in
                ("common", "engine", "plan", "ops_cudnn", "ops_misc", "ops_extra", "layout",
                 "detection")] + \
               [os.path.join(CSRC, "engine", "graph.cpp")]
KERNELS_CU = os.path.join(CSRC, "cuda", "kernels.cu")
# every .cu of the backend, each translated into its own unit (kernels.cu first)
KERNEL_SOURCES = [KERNELS_CU, os.path.join(CSRC, "cuda", "det_kernels.cu")]
# CMakeLists.txt's halcdl_cuda target (plus -O2: a test build)
HOST_FLAGS = ["-std=c++17", "-O2", "-fPIC", "-Wno-deprecated-declarations", "-fvisibility=hidden",
              "-fvisibility-inlines-hidden", "-pthread"]
EXPORTS = ["halcdl_cuda_api", "fake_*"]


def _load_emu():
    spec = importlib.util.spec_from_file_location("halcdl_gpu_emu_cuda_emu", os.path.join(EMU_DIR, "emu.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def _site_dirs() -> list[str]:
    dirs = []
    for key in ("purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            dirs.append(p)
    try:
        dirs += site.getsitepackages()
    except AttributeError:  # pragma: no cover - old virtualenv
        pass
    for dist in ("nvidia-cudnn-cu13", "nvidia-cublas"):
        try:
            dirs.append(str(importlib.metadata.distribution(dist).locate_file("")))
        except importlib.metadata.PackageNotFoundError:
            pass
    dirs += sys.path
    seen, out = set(), []
    for d in dirs:
        if d and os.path.isdir(d) and d not in seen:
            seen.add(d)
            out.append(d)
    return out


def _cudnn_major(inc: str) -> int | None:
    for name in ("cudnn_version.h", "cudnn.h"):
        f = os.path.join(inc, name)
        if os.path.isfile(f):
            with open(f, encoding="utf-8", errors="replace") as fh:
                m = re.search(r"^#define CUDNN_MAJOR\s+(\d+)", fh.read(), re.M)
            if m:
                return int(m.group(1))
    return None


def _find(header: str, root_env: str, subdirs: list[str], accept=lambda inc: True) -> str | None:
    roots = [os.environ[root_env]] if os.environ.get(root_env) else []
    for sp in _site_dirs():
        roots += [os.path.join(sp, s) for s in subdirs]
    for d in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if d:
            roots += [d, os.path.join(d, "targets", "x86_64-linux")]
    roots.append("/usr")
    for r in roots:
        inc = os.path.join(r, "include")
        if os.path.isfile(os.path.join(inc, header)) and accept(inc):
            return inc
    return None


def find_headers() -> tuple[dict[str, str] | None, str]:
    """{'cudnn': dir, 'cublas': dir, 'cuda': dir} of the real headers, or (None, what is missing)."""
    found = {
        "cudnn": _find("cudnn.h", "CUDNN_ROOT", ["nvidia/cudnn"], accept=lambda inc: _cudnn_major(inc) == 9),
        "cublas": _find("cublas_v2.h", "CUBLAS_ROOT", ["nvidia/cu13", "nvidia/cublas"]),
        "cuda": _find("cuda_runtime_api.h", "CUDA_HOME", []),
    }
    missing = [k for k, v in found.items() if v is None]
    if missing:
        what = {"cudnn": "cuDNN 9's cudnn.h (pip install nvidia-cudnn-cu13)", "cublas": "cublas_v2.h (pip install nvidia-cublas)",
                "cuda": "cuda_runtime_api.h (the CUDA toolkit, /usr/local/cuda)"}
        return None, "missing headers: " + ", ".join(what[k] for k in missing)
    return found, ""


def fake_cudnn_source() -> str:
    return os.path.abspath(os.environ.get("HALCDL_EMU_FAKE_CUDNN") or os.path.join(HERE, "fake_cudnn.cpp"))


def available() -> tuple[bool, str]:
    """Whether the emulated backend can be built here (else why not)."""
    if not sys.platform.startswith("linux"):
        return False, "the kernel emulation is Linux only"
    if compiler() is None:
        return False, "no C++ compiler (g++) on PATH"
    for f in HOST_SOURCES + KERNEL_SOURCES:
        if not os.path.isfile(f):
            return False, f"{f} not found (an installed package without sources)"
    if not os.path.isfile(fake_cudnn_source()):
        return False, f"{fake_cudnn_source()} not found"
    headers, why = find_headers()
    if headers is None:
        return False, why
    return True, ""


def _inputs() -> list[str]:
    files = list(HOST_SOURCES) + KERNEL_SOURCES + [fake_cudnn_source()]
    for sub in ("core", "engine", "cuda"):
        d = os.path.join(CSRC, sub)
        files += sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith((".h", ".cuh")))
    files += sorted(os.path.join(HERE, f) for f in os.listdir(HERE)
                    if f.endswith((".cpp", ".h")) and f != "fake_cudnn.cpp") + [os.path.abspath(__file__)]
    files += [os.path.join(EMU_DIR, f) for f in ("cuda_emu.h", "emu_runtime.cpp", "translate.py")]
    files += sorted(os.path.join(EMU_DIR, "include", f) for f in os.listdir(os.path.join(EMU_DIR, "include")))
    return files


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("building the emulated GPU backend failed:\n" + " ".join(cmd) + "\n" + r.stderr[-20000:])


def build(jobs: int | None = None, verbose: bool = False) -> str:
    """Builds (or finds in the cache) libhalcdl_cuda_emu.so and returns its path."""
    ok, why = available()
    if not ok:
        raise RuntimeError(why)
    headers, _ = find_headers()
    cxx = compiler()
    emu = _load_emu()
    real_inc = ["-I", CSRC, "-I", headers["cudnn"], "-I", headers["cublas"], "-I", headers["cuda"]]
    emu_inc = ["-I", os.path.join(EMU_DIR, "include"), "-I", EMU_DIR, "-I", CSRC]
    emu_flags = [f for f in emu.CXXFLAGS if f != "-shared"] + ["-fvisibility=hidden", "-fvisibility-inlines-hidden"]
    if os.environ.get("HALCDL_EMU_UCONTEXT") == "1":
        emu_flags.append("-DCUDA_EMU_UCONTEXT")

    h = hashlib.sha256()
    for f in _inputs():
        h.update(os.path.relpath(f, ROOT).encode() if f.startswith(ROOT) else os.path.basename(f).encode())
        with open(f, "rb") as fh:
            h.update(fh.read())
    for inc in headers.values():  # the header versions (their main files) and where they are
        h.update(inc.encode())
    for f in (os.path.join(headers["cudnn"], "cudnn_version.h"), os.path.join(headers["cublas"], "cublas_api.h"),
              os.path.join(headers["cuda"], "cuda_runtime_api.h")):
        if os.path.isfile(f):
            with open(f, "rb") as fh:
                h.update(fh.read())
    h.update(" ".join([cxx, *HOST_FLAGS, "|", *emu_flags]).encode())
    key = h.hexdigest()[:16]
    out_dir = os.environ.get("HALCDL_EMU_BUILD_DIR") or os.path.join(
        tempfile.gettempdir(), f"halcdl_gpu_emu_{os.getuid() if hasattr(os, 'getuid') else 0}")
    os.makedirs(out_dir, exist_ok=True)
    lib = os.path.join(out_dir, f"libhalcdl_cuda_emu_{key}.so")
    if os.path.isfile(lib):
        return lib

    work = tempfile.mkdtemp(prefix="build_", dir=out_dir)
    try:
        translated = []
        for cu in KERNEL_SOURCES:
            out_cpp = os.path.join(work, os.path.splitext(os.path.basename(cu))[0] + "_emu.cpp")
            with open(cu, encoding="utf-8") as f:
                text = f.read()
            with open(out_cpp, "w", encoding="utf-8") as f:
                f.write(emu.translate.translate(text, cu))
            translated.append(out_cpp)
        kernels_cpp = translated[0]
        units = []  # (source, flags, includes)
        for src in HOST_SOURCES + [os.path.join(HERE, "fake_cudart.cpp"), os.path.join(HERE, "fake_cublas.cpp"),
                                   fake_cudnn_source(), os.path.join(HERE, "bridge_real.cpp")]:
            units.append((src, HOST_FLAGS, real_inc))
        for src in (*translated, os.path.join(HERE, "bridge_emu.cpp"), os.path.join(EMU_DIR, "emu_runtime.cpp")):
            units.append((src, emu_flags, emu_inc))
        # the slowest first (the translated kernels), so that two jobs finish together
        units.sort(key=lambda u: u[0] != kernels_cpp)
        objs = []
        cmds = []
        for i, (src, flags, inc) in enumerate(units):
            obj = os.path.join(work, f"{i:02d}_{os.path.splitext(os.path.basename(src))[0]}.o")
            objs.append(obj)
            cmds.append([cxx, *flags, *inc, "-c", src, "-o", obj])
        n = jobs or max(1, os.cpu_count() or 1)
        with concurrent.futures.ThreadPoolExecutor(max_workers=n) as ex:
            for cmd, fut in [(c, ex.submit(_run, c)) for c in cmds]:
                fut.result()
                if verbose:
                    print(" ".join(cmd), file=sys.stderr)
        vmap = os.path.join(work, "exports.map")
        with open(vmap, "w") as f:
            f.write("{ global: " + " ".join(e + ";" for e in EXPORTS) + " local: *; };\n")
        tmp_lib = os.path.join(work, "lib.so")
        _run([cxx, "-shared", "-pthread", "-o", tmp_lib, *objs, f"-Wl,--version-script={vmap}", "-Wl,--no-undefined",
              "-ldl"])
        os.replace(tmp_lib, lib)  # atomic: concurrent builders never see a partial file
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return lib


def main(argv: list[str]) -> int:
    ok, why = available()
    if not ok:
        print(f"cannot build the emulated GPU backend: {why}", file=sys.stderr)
        return 1
    print(build(verbose="-v" in argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

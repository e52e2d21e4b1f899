#!/usr/bin/env bash
# Build, test and benchmark halcdl's CUDA backend on the lent GPU machine, in one command of
# at most 10 minutes (docs/gpu.md: "Running the device checks"). Through the device tool:
#   run(command="bash benchmarks/gpu_check.sh all", carry=[".whl"], timeout_s=600)
# after `bash benchmarks/gpu_wheels.sh` here (the machine has no network; .whl/ holds oneDNN,
# pybind11 and scikit-build-core).
#
#   bash benchmarks/gpu_check.sh [all|build|test|bench|debug|bf16] [--quick] [-- BENCH_ARGS...]
#     build  install the carried wheels, build and install halcdl with HALCDL_CUDA=ON
#     test   build, then tests/test_gpu.py (GPU vs CPU twin) and tests/test_ops.py -x (CPU)
#     bench  build, then benchmarks/bench_gpu.py
#     all    build, test, bench (the default); the bench turns --quick when little time is left
#     debug  build, then tests/test_gpu.py -x with HALCDL_CUDA_DEBUG=2 (a sync and a finiteness
#            check after every op: the failing op is named), then compute-sanitizer memcheck on
#            the op tests (their logs replace gpu_tests.txt / cpu_tests.txt)
#     bf16   build, then tests/test_gpu.py -k bf16 (precision 'bfloat16' vs the CPU in fp32) and
#            bench_gpu.py --sections bf16 (training and inference vs torch autocast bf16; with
#            -- BENCH_ARGS, those replace --sections bf16). `all` runs both too: the bf16
#            tests are part of test_gpu.py and bf16 is the bench's last section.
# Every stage except `build` builds first: incremental while the machine is warm (the build
# folder build/gpu is ignored by git, so it stays on a warm machine between calls), a full
# build (ninja -j$(nproc); under a minute on 2 cores here) on a cold one.
#
# Files under $OUT (at most 8 come back; these are 8): env.txt, build.log, gpu_tests.txt,
# cpu_tests.txt, bench.log, gpu_bench.json, gpu_bench.md, summary.txt.
#
# Environment: PYTHON (default python3: the image's, which holds torch and CuPy),
# GPU_CHECK_BUDGET (seconds for the whole script, default 570), GPU_CHECK_CUDA (HALCDL_CUDA
# for the build, default ON), OUT (default out/gpu_check).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1     # the repository root
ROOT=$PWD

STAGE=all
QUICK=0
BENCH_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        all|build|test|bench|debug|bf16) STAGE=$1 ;;
        --quick) QUICK=1 ;;
        --) shift; BENCH_ARGS=("$@"); break ;;
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1' (all|build|test|bench|debug|bf16, --quick, -- ARGS)" >&2
           exit 64 ;;
    esac
    shift
done

OUT=${OUT:-$ROOT/out/gpu_check}
mkdir -p "$OUT"
for f in env.txt build.log gpu_tests.txt cpu_tests.txt bench.log gpu_bench.json gpu_bench.md \
         summary.txt; do
    rm -f "${OUT:?}/$f"                            # nothing stale from an earlier call
done
BUDGET=${GPU_CHECK_BUDGET:-570}
CUDA_OPT=${GPU_CHECK_CUDA:-ON}
PY=${PYTHON:-python3}
WHL=$ROOT/.whl
BUILD_DIR=build/gpu

export PYTHONUNBUFFERED=1 PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export HALCDL_TEST_INSTALLED=1                    # test the installed package, never python/
NPROC=$(nproc 2>/dev/null || echo 4)
export CMAKE_BUILD_PARALLEL_LEVEL=$NPROC

SUMMARY=()
FAILED=0
note() { printf '\n=== %s  [%s, %d s]\n' "$*" "$(date -u +%H:%M:%S)" "$SECONDS"; }
left() { echo $((BUDGET - SECONDS)); }
record() {  # record NAME RC|skip|WORD SECONDS [TEXT]; any rc but 0 and skip marks a failure
    local status
    case "$2" in
        0) status=ok ;;
        124|137) status="TIMED OUT (rc $2)" ;;
        skip) status=skipped ;;
        [0-9]*) status="FAILED (rc $2)" ;;
        *) status=$2 ;;
    esac
    [ "$2" = 0 ] || [ "$2" = skip ] || FAILED=1
    SUMMARY+=("$(printf '%-10s %-20s %4s s  %s' "$1" "$status" "$3" "${4:-}")")
}

# boxed CAP LOG CMD...: run CMD under min(CAP, time left - 15 s), output to the screen and
# appended to LOG; sets RC and DT. A stage with under 20 s left is not started (RC=124).
boxed() {
    local cap=$1 log=$2 t
    shift 2
    t=$(( $(left) - 15 ))
    [ "$t" -gt "$cap" ] && t=$cap
    DT=0
    if [ "$t" -lt 20 ]; then
        echo "not started: ${t}s left of the ${BUDGET}s budget" | tee -a "$log"
        RC=124
        return
    fi
    local t0=$SECONDS
    timeout -k 10 "$t" "$@" 2>&1 | tee -a "$log"
    RC=${PIPESTATUS[0]}
    DT=$((SECONDS - t0))
    if [ "$RC" = 124 ] || [ "$RC" = 137 ]; then
        echo "(killed after ${t}s)" | tee -a "$log"
    fi
}

# ---- environment --------------------------------------------------------------------------
env_report() {
    note "environment"
    {
        echo "date: $(date -u)   host: $(uname -srm)   cores: $NPROC"
        free -g 2>/dev/null | head -2
        echo
        if command -v nvidia-smi >/dev/null; then
            timeout 30 nvidia-smi --format=csv \
                --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.mem,temperature.gpu,power.draw,utilization.gpu \
                2>&1
            echo
            timeout 30 nvidia-smi 2>&1
        else
            echo "nvidia-smi: not found"
        fi
        echo
        echo "python: $(command -v "$PY") ($("$PY" --version 2>&1))"
        timeout 90 "$PY" - <<'EOF' 2>&1
import importlib.metadata as m, sys, sysconfig
print("sys.prefix", sys.prefix, "| base", sys.base_prefix, "| purelib", sysconfig.get_paths()["purelib"])
for d in ("torch", "cupy-cuda13x", "nvidia-cudnn-cu13", "nvidia-cublas", "numpy", "pybind11",
          "scikit-build-core", "cmake", "ninja", "pytest", "onednn-cpu-gomp", "onednn-devel-cpu-gomp",
          "halcdl"):
    try:
        print(f"  {d} {m.version(d)}")
    except m.PackageNotFoundError:
        print(f"  {d}: not installed")
try:
    import torch
    print("torch cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
          "available", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as e:
    print("torch:", e)
EOF
        echo "nvcc: $(command -v nvcc || echo 'not on PATH')"
        nvcc --version 2>&1 | tail -2
        echo "cmake: $(cmake --version 2>&1 | head -1)   ninja: $(ninja --version 2>&1)"
        echo "g++: $(g++ --version 2>&1 | head -1)"
        echo "carried wheels:"
        ls -l "$WHL" 2>&1
    } >"$OUT/env.txt" 2>&1
    head -5 "$OUT/env.txt"
    grep -E 'NVIDIA|Driver' "$OUT/env.txt" | head -3
}

# ---- build ------------------------------------------------------------------------------
# Installs into $PY's own environment (the image's /opt/torch/.venv: it holds torch, CuPy and
# the nvidia-* wheels; the machine is discarded after the lease). Not a `python -m venv
# --system-site-packages`: made from a venv's interpreter, such a venv sees the *base*
# Python's site-packages, not torch's. Only where that environment is read-only does this
# fall back to a venv whose .pth adds the image environment's site-packages.
choose_python() {
    local site prefix
    site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 1
    prefix=$("$PY" -c 'import sys; print(sys.prefix)') || return 1
    if [ -w "$site" ] && [ -w "$prefix" ]; then
        return 0
    fi
    echo "$prefix is read-only: building into the venv /tmp/halcdl-venv (sees $site)"
    if [ ! -x /tmp/halcdl-venv/bin/python ]; then
        "$PY" -m venv --without-pip --system-site-packages /tmp/halcdl-venv || return 1
        local vsite
        vsite=$(/tmp/halcdl-venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        echo "import site; site.addsitedir('$site')" >"$vsite/zz_image_site.pth"
    fi
    PY=/tmp/halcdl-venv/bin/python
}

find_nvcc() {
    command -v nvcc >/dev/null && return 0
    local d
    for d in /usr/local/cuda/bin /usr/local/cuda-13*/bin /opt/cuda/bin; do
        if [ -x "$d/nvcc" ]; then
            export PATH="$d:$PATH"
            return 0
        fi
    done
    return 1
}

# Runs in a child bash (timeout(1) runs programs, not shell functions): exported below.
# shellcheck disable=SC2317
build_steps() {
    set -o pipefail
    local wheels=("$WHL"/*.whl)
    if [ ! -e "${wheels[0]}" ]; then
        if "$PY" -c 'import importlib.metadata as m; m.version("onednn-devel-cpu-gomp")' 2>/dev/null; then
            echo "no .whl/ carried; oneDNN is already installed (a warm machine)"
        else
            echo "no .whl/ carried and oneDNN is not installed: run benchmarks/gpu_wheels.sh" \
                 "here and call run with carry ['.whl']"
            return 1
        fi
    else
        echo "--- carried wheels into $("$PY" -c 'import sys; print(sys.prefix)')"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "${wheels[@]}" || return 1
    fi
    echo "--- pip install . (no build isolation, HALCDL_CUDA=$CUDA_OPT, build dir $BUILD_DIR, -j$NPROC)"
    # --no-build-isolation: the build requirements (scikit-build-core, pybind11, oneDNN,
    # cmake, ninja) are already in $PY's environment, and an isolated build would need every
    # one of them (and their needs) as wheels in a local index. --no-deps: numpy and
    # onednn-cpu-gomp are there; nothing may be fetched.
    "$PY" -m pip install -v --no-index --no-deps --no-build-isolation --force-reinstall \
        --no-cache-dir \
        -C build-dir="$BUILD_DIR" \
        -C cmake.define.HALCDL_CUDA="$CUDA_OPT" \
        . || return 1
    echo "--- installed"
    "$PY" - <<'EOF' || return 1
import os, subprocess
os.chdir("/")                         # import the installed package, not the checkout
import halcdl as ha
import halcdl._native as n
print("halcdl:", ha.__file__)
print("_core:", n.core.__file__)
print("libdnnl:", n.dnnl_path)
print("libhalcdl_cuda.so:", n.cuda_library_path or "NOT INSTALLED")
if n.cuda_library_path:
    out = subprocess.run(["ldd", n.cuda_library_path], capture_output=True, text=True).stdout
    print("ldd:", *[l.strip() for l in out.splitlines() if "cud" in l or "cublas" in l or "not found" in l],
          sep="\n  ")
try:
    n.ensure_cuda()
    print("preloaded:", *n.cuda_dependency_paths, sep="\n  ")
    print("GPUs (core):", n.core.gpu_device_count())
except ha.HOperatorError as e:
    print("ensure_cuda:", e)
devs = ha.query_available_dl_devices(["runtime"], ["gpu"])
print("GPU devices:", devs)
for d in devs:
    print("  ", {k: ha.get_dl_device_param(d, k) for k in ("name", "compute_capability", "memory", "precisions")})
EOF
}

stage_build() {
    note "build (log: $OUT/build.log)"
    if ! choose_python >>"$OUT/build.log" 2>&1; then     # (sets PY on the fallback)
        tail -5 "$OUT/build.log"
        record build 1 0 "no usable Python environment"
        return 1
    fi
    echo "python: $PY"
    if ! find_nvcc; then
        echo "warning: nvcc not found on PATH or under /usr/local/cuda/bin" | tee -a "$OUT/build.log"
    fi
    export PY PATH
    boxed 400 "$OUT/build.log" bash -c build_steps
    record build "$RC" "$DT" "$(grep -m1 -oE 'building libhalcdl_cuda.so with CUDA [^ ]+' "$OUT/build.log")"
    echo "--- build log tail"
    grep -E 'HALCDL_CUDA|oneDNN|error|Error|warning: |Successfully installed|GPU devices|libhalcdl_cuda|GPUs' \
        "$OUT/build.log" | tail -25
    return "$RC"
}

export -f build_steps
export WHL BUILD_DIR CUDA_OPT NPROC

# ---- tests ------------------------------------------------------------------------------
pytest_tail() {  # the last summary line of a pytest log
    grep -E '(passed|failed|skipped|error|no tests ran)' "$1" | tail -1
}

stage_test() {
    note "tests/test_gpu.py (GPU vs CPU twin; log: $OUT/gpu_tests.txt)"
    boxed 200 "$OUT/gpu_tests.txt" "$PY" -m pytest tests/test_gpu.py -q -rs -p no:cacheprovider \
        -o faulthandler_timeout=150
    local tail
    tail=$(pytest_tail "$OUT/gpu_tests.txt")
    if [ "$RC" = 0 ] && echo "$tail" | grep -q skipped && ! echo "$tail" | grep -q passed; then
        record gpu_tests "ALL-SKIPPED" "$DT" "halcdl sees no GPU ($tail)"
    else
        record gpu_tests "$RC" "$DT" "$tail"
    fi

    note "tests/test_ops.py -x (CPU sanity; log: $OUT/cpu_tests.txt)"
    boxed 150 "$OUT/cpu_tests.txt" "$PY" -m pytest tests/test_ops.py -q -x -p no:cacheprovider
    record cpu_tests "$RC" "$DT" "$(pytest_tail "$OUT/cpu_tests.txt")"
}

stage_bf16() {
    note "tests/test_gpu.py -k bf16 (log: $OUT/gpu_tests.txt)"
    boxed 150 "$OUT/gpu_tests.txt" "$PY" -m pytest tests/test_gpu.py -q -rs -k bf16 -p no:cacheprovider \
        -o faulthandler_timeout=120
    record gpu_tests_bf16 "$RC" "$DT" "$(pytest_tail "$OUT/gpu_tests.txt")"
    [ ${#BENCH_ARGS[@]} -gt 0 ] || BENCH_ARGS=(--sections bf16)
    stage_bench
}

stage_debug() {
    note "tests/test_gpu.py -x with HALCDL_CUDA_DEBUG=2 (log: $OUT/gpu_tests.txt)"
    export HALCDL_CUDA_DEBUG=2
    boxed 220 "$OUT/gpu_tests.txt" "$PY" -m pytest tests/test_gpu.py -q -rs -x -p no:cacheprovider \
        -o faulthandler_timeout=180
    unset HALCDL_CUDA_DEBUG
    record gpu_tests_debug "$RC" "$DT" "$(pytest_tail "$OUT/gpu_tests.txt")"
    local san
    san=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
    if [ -z "$san" ]; then
        record sanitizer skip 0 "compute-sanitizer not found"
        return
    fi
    note "compute-sanitizer memcheck, op tests (log: $OUT/cpu_tests.txt)"
    boxed 250 "$OUT/cpu_tests.txt" "$san" --tool memcheck --error-exitcode 99 \
        "$PY" -m pytest tests/test_gpu.py -q -x -k "op_matches or dropout" -p no:cacheprovider
    record sanitizer "$RC" "$DT" "$(grep -m1 -E 'ERROR SUMMARY' "$OUT/cpu_tests.txt")"
}

# ---- benchmark --------------------------------------------------------------------------
stage_bench() {
    local args=() t
    t=$(( $(left) - 20 ))
    if [ "$QUICK" = 1 ] || { [ "$STAGE" = all ] && [ "$t" -lt 300 ]; }; then
        args+=(--quick)
    fi
    # rows that would start in the last 75 s are skipped, so the report is written in time
    [ "$t" -gt 120 ] && args+=(--deadline $((t - 75)))
    note "benchmarks/bench_gpu.py ${args[*]} ${BENCH_ARGS[*]} (log: $OUT/bench.log)"
    boxed 560 "$OUT/bench.log" "$PY" benchmarks/bench_gpu.py "${args[@]}" \
        --json "$OUT/gpu_bench.json" --md "$OUT/gpu_bench.md" "${BENCH_ARGS[@]}"
    local msg
    msg=$(grep -m1 -E 'row\(s\) measured|^no GPU' "$OUT/bench.log")
    record bench "$RC" "$DT" "$msg"
}

# ---- main -------------------------------------------------------------------------------
echo "gpu_check.sh $STAGE (budget ${BUDGET}s, python $PY, OUT $OUT)"
env_report
if stage_build; then
    case "$STAGE" in
        test) stage_test ;;
        bench) stage_bench ;;
        all) stage_test; stage_bench ;;
        debug) stage_debug ;;
        bf16) stage_bf16 ;;
    esac
else
    [ "$STAGE" = build ] || record "$STAGE" skip 0 "not run: the build failed (see build.log)"
fi

note "summary"
{
    echo "gpu_check.sh $STAGE: $( [ "$FAILED" = 0 ] && echo OK || echo 'SOMETHING FAILED') after ${SECONDS}s"
    printf '%s\n' "${SUMMARY[@]}"
    echo "files: $(cd "$OUT" && printf '%s ' *)"
} | tee "$OUT/summary.txt"
exit "$FAILED"

#!/usr/bin/env bash
# Run HERE (a machine with PyPI access), before a device call: downloads into .whl/ the wheels
# the lent GPU machine lacks for building and testing halcdl (it has no network; its image has
# torch, CuPy, cuDNN/cuBLAS wheels, nvcc, cmake, ninja, pytest, scikit-learn, scikit-image,
# onnx, onnxruntime, safetensors: /work/.library/device/KINDS.md). .whl/ is ignored through
# .git/info/exclude and travels with the call's carry: ['.whl'] (docs/gpu.md).
#
#   bash benchmarks/gpu_wheels.sh             # download (replaces .whl/), print the sizes
#   bash benchmarks/gpu_wheels.sh --clean     # remove .whl/ again
#   GPU_PYTHON_VERSION=3.12 PYTHON=python3 bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."      # the repository root

PY=${PYTHON:-python3}
PYVER=${GPU_PYTHON_VERSION:-3.12}           # the device image's python3 (KINDS.md: 3.12.3)
DEST=.whl
LIMIT=$((64 * 1024 * 1024))                 # working tree + carried paths, per call

# oneDNN: the versions pyproject.toml's build requirements pin (the image has no oneDNN).
# pybind11 / scikit-build-core: the versions this project is built with here, so the device
# build does not depend on whichever the image carries.
PINS=(
    onednn-cpu-gomp==2023.2.0
    onednn-devel-cpu-gomp==2023.2.0
    pybind11==3.1.0
    scikit-build-core==1.1.2
)

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

if [ "${1:-}" = "--clean" ]; then
    rm -rf "$DEST"
    echo "removed $DEST/"
    exit 0
fi

# ignore .whl/ (a worktree's exclude file lives under the common git dir)
exclude=$(git rev-parse --git-path info/exclude 2>/dev/null || echo .git/info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"

rm -rf "$DEST"                               # one version of each, nothing stale
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 \
    -d "$DEST" "${PINS[@]}"

echo "wheels in $DEST/ (for Python $PYVER, x86_64):"
for w in "$DEST"/*.whl; do
    size=$(stat -c %s "$w")
    needs=$(unzip -p "$w" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' \
            | sed 's/^Requires-Dist: //' | paste -sd ';' - || true)
    printf '  %-66s %5s MiB  needs: %s\n' "$(basename "$w")" "$(mib "$size")" "${needs:-nothing}"
done

if ! git check-ignore -q "$DEST/x.whl" 2>/dev/null; then
    echo "FAIL: $DEST/ is not ignored by git (add '/.whl/' to $exclude)" >&2
    exit 1
fi

whl=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | sort -zu \
        | xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
total=$((whl + tree))
echo "wheels $(mib "$whl") MiB + working tree $(mib "$tree") MiB = $(mib "$total") MiB" \
     "(limit 64 MiB per call)"
if [ "$total" -ge "$LIMIT" ]; then
    echo "FAIL: over the device tool's 64 MiB limit" >&2
    exit 1
fi
echo "next: the device tool's run with carry ['.whl'] and command 'bash benchmarks/gpu_check.sh all'"

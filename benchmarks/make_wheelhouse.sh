#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels benchmarks/gpu_check.sh installs on an NVIDIA
# machine that has no network. torch, ONNX Runtime (CPU) and CuPy are already there, so
# they are not downloaded; everything else the pipeline and the tests import is.
#
#   benchmarks/make_wheelhouse.sh            # for this machine's Python (cpXY) on x86_64 Linux
#   PYVER=3.12 benchmarks/make_wheelhouse.sh # for another target Python
#   WITH_TENSORRT=1 ...                      # also TensorRT's own wheels (about 1 GB)
#
# pip resolves the dependencies for the *target* (--python-version/--platform), so this
# works from any host; --only-binary is required by pip for a foreign target anyway.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
PYVER=${PYVER:-$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
ABI="cp${PYVER/./}"
DEST=${WHEELHOUSE:-.whl}
mkdir -p "$DEST"

# The pins match pyproject.toml: mediapipe 0.10.21 is the last wheel with the face-mesh
# solution and needs numpy < 2.
PKGS=(
  "mediapipe==0.10.21" "numpy>=1.24,<2" onnxruntime "av>=12" "pyvirtualcam>=0.11" "scipy>=1.10"
  "scikit-image>=0.22" "tqdm>=4.60" "pytest>=8" "pytest-timeout>=2.2" "setuptools>=68" wheel
)
if [ "${WITH_TENSORRT:-0}" = 1 ]; then
  PKGS+=("tensorrt-cu12>=10,<11")
fi

"$PY" -m pip download --dest "$DEST" --only-binary=:all: \
  --python-version "$PYVER" --implementation cp --abi "$ABI" --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any \
  "${PKGS[@]}"

echo "wheelhouse $DEST for Python $PYVER ($ABI):"
ls -1 "$DEST" | wc -l
du -sh "$DEST"

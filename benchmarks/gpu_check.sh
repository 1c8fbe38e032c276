#!/usr/bin/env bash
# GPU acceptance check, one command, for an NVIDIA machine without network:
#
#   benchmarks/gpu_check.sh OUT_DIR
#
# Expects torch (CUDA build), ONNX Runtime and CuPy preinstalled, and every other wheel
# in the repository's git-ignored .whl/ (fill it with benchmarks/make_wheelhouse.sh on a
# machine with network). Installs the project into a venv that sees the preinstalled
# packages, prints nvidia-smi, runs the CUDA/TensorRT tests and `livedeid bench` on the
# GPU engines, and writes the log, the JUnit reports and the bench tables into OUT_DIR.
# Everything runs under `timeout` so the whole check ends within 8 minutes
# (GPU_CHECK_BUDGET_S, default 450 s, plus a margin); each step's exit status is
# recorded in OUT_DIR/summary.txt and the script exits non-zero if any step failed.
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-450}
left() { echo $(( START + BUDGET - $(date +%s) )); }
FAILED=0
: > "$OUT/summary.txt"
step() {  # step NAME MAX_SECONDS CMD...: run under timeout, never past the budget
  local name=$1 max=$2; shift 2
  local t=$(left)
  (( t > max )) && t=$max
  if (( t < 5 )); then
    echo "== $name: skipped, out of time" | tee -a "$OUT/summary.txt"; FAILED=1; return
  fi
  echo "== $name (limit ${t}s): $*"
  local s=$(date +%s)
  timeout --kill-after=5 "$t" "$@"
  local rc=$?
  echo "== $name: rc=$rc in $(( $(date +%s) - s ))s" | tee -a "$OUT/summary.txt"
  (( rc != 0 )) && [ -z "${INFO_ONLY:-}" ] && FAILED=1
  return 0
}

PY=${PYTHON:-python3}
echo "livedeid GPU check, $(date -u '+%F %T') UTC, $(git rev-parse --short HEAD 2>/dev/null || echo 'no git')"
step nvidia-smi 20 nvidia-smi
step python-env 60 "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA DEVICE')"

# A venv on top of the preinstalled torch/ORT/CuPy: nothing from the network, nothing
# written into the system site-packages.
VENV=${GPU_CHECK_VENV:-"${TMPDIR:-/tmp}/livedeid-gpu-venv"}
if [ ! -x "$VENV/bin/python" ]; then
  step venv 60 "$PY" -m venv --system-site-packages "$VENV"
fi
VPY="$VENV/bin/python"
# If $PY is itself a venv/conda env, --system-site-packages would not see *its* packages
# (torch, CuPy): list its site-packages in a .pth so they come after the venv's own.
if [ -x "$VPY" ]; then
  "$PY" -c "import site; print('\n'.join(site.getsitepackages()))" > \
    "$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz_outer_env.pth"
fi
WHEELS=(mediapipe==0.10.21 "numpy<2" scipy scikit-image av pyvirtualcam tqdm pytest pytest-timeout "setuptools>=68")
if ls .whl/tensorrt_cu12* >/dev/null 2>&1; then WHEELS+=(tensorrt-cu12); fi
# ONNX Runtime only when none is importable: installing the CPU wheel beside a
# preinstalled onnxruntime-gpu would overwrite the same package directory.
"$VPY" -c "import onnxruntime" 2>/dev/null || WHEELS+=(onnxruntime)
step install-wheels 150 "$VPY" -m pip install -q --no-index --find-links .whl "${WHEELS[@]}"
step install-livedeid 60 "$VPY" -m pip install -q --no-deps --no-build-isolation -e .
if ! "$VPY" -c "import livedeid.gpu, mediapipe" 2>/dev/null; then
  echo "== install failed: livedeid or mediapipe not importable from $VENV; stopping" | tee -a "$OUT/summary.txt"
  exit 1
fi
INFO_ONLY=1 step doctor 30 "$VENV/bin/livedeid" doctor --no-cameras  # informational (no camera there)

# The CUDA/TensorRT tests of every file that has them, then the GPU path's CPU tests.
mapfile -t CUDA_FILES < <(grep -l -E "mark\.(cuda|tensorrt)" tests/test_*.py)
step pytest-cuda 180 "$VPY" -m pytest -q -rs -m "cuda or tensorrt" -p no:cacheprovider \
  --junitxml "$OUT/pytest-cuda.xml" "${CUDA_FILES[@]}"
step pytest-gpu-path-cpu 60 "$VPY" -m pytest -q -rs -p no:cacheprovider -m "not cuda and not tensorrt" \
  --junitxml "$OUT/pytest-gpu-path-cpu.xml" tests/test_gpu_path.py

# Bench: the GPU engines (the torch eager FP32 CUDA baseline always runs) and the
# patient's ONNX Runtime CPU path for reference; whatever is missing is listed in the
# tables with the reason.
step bench 300 "$VENV/bin/livedeid" bench --out "$OUT/bench" --frames "${GPU_CHECK_FRAMES:-30}" \
  --engines onnxruntime-cpu,torch-cuda-fp16,torch-cuda-fp16-graphs,tensorrt-fp16,onnxruntime-cuda

echo "== total $(( $(date +%s) - START ))s; summary:"
cat "$OUT/summary.txt"
exit $FAILED

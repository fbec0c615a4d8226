#!/usr/bin/env bash
# GPU checks of the CUDA / TensorRT paths, for a machine with an NVIDIA GPU (never CI).
#
# Expects the default model files in $COBOT_HYBRID_MODEL_DIR (default: .models/) and, when the
# machine cannot reach a registry, the Ultralytics wheels in .whl/. Writes its results to
# $OUT (default: gpu_check_out/).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 COBOT_HYBRID_MODEL_DIR=${COBOT_HYBRID_MODEL_DIR:-$PWD/.models}
if compgen -G '.whl/*.whl' >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
{
  nvidia-smi -L
  python3 - <<'PY'
import onnxruntime, torch
from cobot_hybrid_perception.backends.tensorrt_backend import cuda_status, tensorrt_status
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')
print('onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())
print('cuda-python:', cuda_status() or 'ok', '| tensorrt:', tensorrt_status() or 'ok')
PY
} 2>&1 | tee "$OUT/probe.txt"
python3 -m pytest -q -p no:cacheprovider -rs test/test_backends.py test/test_yolo_decode.py \
  2>&1 | tee "$OUT/pytest.txt"
for size in 640 320; do
  python3 -m cobot_hybrid_cli bench --imgsz $size --runs 200 \
    --backends ort-cpu ultralytics tensorrt ort-tensorrt ort-cuda 2>&1 | tee "$OUT/bench$size.txt"
done

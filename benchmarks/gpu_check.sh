#!/usr/bin/env bash
# The GPU check: prepare the environment, print the machine, then run benchmarks/gpu_check.py.
#   benchmarks/gpu_check.sh                                  # uv sync --locked, --device cuda
#   benchmarks/gpu_check.sh --use_current_env --out "$OUT"   # offline image: this python3 (or $PYTHON)
#   benchmarks/gpu_check.sh --device cpu --tiny --use_current_env --out /tmp/check
set -uo pipefail
cd "$(dirname "$0")/.."
use_current=0; rest=()
for arg in "$@"; do
  if [ "$arg" = "--use_current_env" ]; then use_current=1; else rest+=("$arg"); fi
done
if [ "$use_current" = 1 ]; then
  py="${PYTHON:-python3}"
else
  uv sync --locked || { echo "error: uv sync --locked failed; on an offline machine use --use_current_env" >&2; exit 2; }
  py=.venv/bin/python
fi
"$py" - <<'PY' || exit 2
import importlib.util, os, sys
modules = {"torch": "torch", "torchvision": "torchvision", "torch_lr_finder": "torch-lr-finder",
           "albumentations": "albumentations", "torchsummary": "torchsummary", "cv2": "opencv-python-headless",
           "numpy": "numpy", "PIL": "pillow", "matplotlib": "matplotlib", "tqdm": "tqdm", "sklearn": "scikit-learn",
           "safetensors": "safetensors", "huggingface_hub": "huggingface-hub", "pytest": "pytest"}
missing = [pkg for mod, pkg in modules.items() if importlib.util.find_spec(mod) is None]
if missing:
    sys.exit(f"error: {sys.executable} lacks {', '.join(missing)}; install them (offline: carry their wheels, "
             "then pip install --no-index --find-links WHEELS ...) or drop --use_current_env to use uv")
import torch
cuda = torch.cuda.is_available()
driver = os.popen("nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null").read().strip()
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"driver {driver or 'none'}, GPU {torch.cuda.get_device_name(0) if cuda else 'none'}, {os.cpu_count()} CPUs")
PY
exec "$py" benchmarks/gpu_check.py "${rest[@]}"

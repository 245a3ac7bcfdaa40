#!/usr/bin/env bash
# The GPU check: prepare the environment, print the machine, then run benchmarks/gpu_check.py.
#   benchmarks/gpu_check.sh                                  # uv sync --locked, --device cuda
#   benchmarks/gpu_check.sh --use_current_env --out "$OUT"   # offline image: this python3 (or $PYTHON)
#   benchmarks/gpu_check.sh --use_current_env --wheels .whl --out "$OUT"   # + wheels from gpu_wheels.sh
#   benchmarks/gpu_check.sh --device cpu --tiny --use_current_env --out /tmp/check
set -uo pipefail
cd "$(dirname "$0")/.."
use_current=0; wheels=""; rest=()
while [ $# -gt 0 ]; do
  case "$1" in
    --use_current_env) use_current=1 ;;
    --wheels) [ $# -ge 2 ] || { echo "error: --wheels needs a folder of .whl files" >&2; exit 2; }
              wheels="$2"; shift ;;
    *) rest+=("$1") ;;
  esac
  shift
done
if [ "$use_current" = 1 ]; then
  py="${PYTHON:-python3}"
  if [ -n "$wheels" ]; then  # offline: the packages the image lacks, installed beside it, not into it
    ls "$wheels"/*.whl >/dev/null 2>&1 || { echo "error: --wheels $wheels: no .whl files there; make them with benchmarks/gpu_wheels.sh" >&2; exit 2; }
    site="${TMPDIR:-/tmp}/lr_finder_site"
    "$py" -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl \
      || { echo "error: --wheels $wheels: pip could not install them into $site" >&2; exit 2; }
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  fi
elif [ -n "$wheels" ]; then
  echo "error: --wheels goes with --use_current_env (uv sync installs everything itself)" >&2; exit 2
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
    sys.exit(f"error: {sys.executable} lacks {', '.join(missing)}; install them (offline: benchmarks/gpu_wheels.sh here, then --wheels DIR there) "
             "or drop --use_current_env to use uv")
import torch
cuda = torch.cuda.is_available()
driver = os.popen("nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null").read().strip()
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"driver {driver or 'none'}, GPU {torch.cuda.get_device_name(0) if cuda else 'none'}, {os.cpu_count()} CPUs")
PY
exec "$py" benchmarks/gpu_check.py "${rest[@]}"

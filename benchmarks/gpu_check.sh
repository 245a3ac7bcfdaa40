#!/usr/bin/env bash
# The GPU check: check the device, prepare the environment, then run benchmarks/gpu_check.py
# (its steps, their time limits and what they record: docs/gpu.md).
#   benchmarks/gpu_check.sh                                  # uv sync --locked, --device cuda
#   benchmarks/gpu_check.sh --use_current_env --wheels .whl --out "$OUT"   # offline image + gpu_wheels.sh's wheels
#   benchmarks/gpu_check.sh --device cpu --tiny --use_current_env --out /tmp/check   # the same steps, small
# Options of its own: --use_current_env (this python3, or $PYTHON, instead of uv), --wheels DIR
# (installed into --work, not into the environment); the rest go to gpu_check.py (--device, --tiny,
# --out, --work, --budget, --steps). With --device cuda (the default) and no usable GPU it exits 2
# with one line, in seconds, before installing or building anything.
set -uo pipefail
cd "$(dirname "$0")/.."
use_current=0; wheels=""; work="${TMPDIR:-/tmp}/gpu_check_work"; rest=()
while [ $# -gt 0 ]; do
  case "$1" in
    --use_current_env) use_current=1 ;;
    --wheels) [ $# -ge 2 ] || { echo "error: --wheels needs a folder of .whl files" >&2; exit 2; }
              wheels="$2"; shift ;;
    --work) [ $# -ge 2 ] || { echo "error: --work needs a folder" >&2; exit 2; }
            work="$2"; shift ;;
    *) rest+=("$1") ;;
  esac
  shift
done
rest+=(--work "$work")
if [ -n "$wheels" ] && [ "$use_current" = 0 ]; then
  echo "error: --wheels goes with --use_current_env (uv sync installs everything itself)" >&2; exit 2
fi
if [ -n "$wheels" ] && ! ls "$wheels"/*.whl >/dev/null 2>&1; then
  echo "error: --wheels $wheels: no .whl files there; make them with benchmarks/gpu_wheels.sh" >&2; exit 2
fi

if [ "$use_current" = 1 ]; then
  py="${PYTHON:-python3}"
  command -v "$py" >/dev/null || { echo "error: no $py here; set PYTHON to the environment's python" >&2; exit 2; }
  # the arguments, and with --device cuda the GPU: seconds, before anything is installed or built
  "$py" benchmarks/gpu_check.py --preflight "${rest[@]}" || exit 2
  if [ -n "$wheels" ]; then  # offline: the packages the image lacks, installed beside it, not into it
    site="$work/site"
    rm -rf "$site" && mkdir -p "$site" || { echo "error: --work $work: cannot make $site" >&2; exit 2; }
    if "$py" -m pip --version >/dev/null 2>&1; then
      "$py" -m pip install -q --root-user-action=ignore --disable-pip-version-check --no-index --no-deps \
        --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl \
        || { echo "error: --wheels $wheels: $py -m pip could not install them into $site" >&2; exit 2; }
    else  # no pip: a wheel is a zip archive to unpack (none of gpu_wheels.sh's has a .data folder)
      for wheel in "$wheels"/*.whl; do
        "$py" -m zipfile -e "$wheel" "$site" || { echo "error: --wheels: cannot unpack $wheel" >&2; exit 2; }
      done
    fi
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"  # ahead of site-packages: a newer typing-extensions wins
  fi
else
  if [ -x .venv/bin/python ]; then  # fail fast with the environment there is, before syncing it
    .venv/bin/python benchmarks/gpu_check.py --preflight "${rest[@]}" || exit 2
  fi
  uv sync --locked || { echo "error: uv sync --locked failed; on an offline machine use --use_current_env" >&2; exit 2; }
  py=.venv/bin/python
  "$py" benchmarks/gpu_check.py --preflight "${rest[@]}" || exit 2
fi
export NO_ALBUMENTATIONS_UPDATE=1  # albumentations would look for a newer version online

# Everything the suite imports, imported for real (a too-old dependency fails here, not in a step).
"$py" - <<'PY' || exit 2
import importlib, sys
modules = {  # the image's packages
    "torch": "torch", "torchvision": "torchvision", "cv2": "opencv-python-headless", "numpy": "numpy",
    "PIL": "pillow", "matplotlib": "matplotlib", "tqdm": "tqdm", "sklearn": "scikit-learn", "scipy": "scipy",
    "yaml": "pyyaml", "packaging": "packaging", "safetensors": "safetensors", "huggingface_hub": "huggingface-hub",
    "pytest": "pytest",
    # benchmarks/gpu_wheels.sh's wheels
    "typing_extensions": "typing-extensions", "annotated_types": "annotated-types",
    "typing_inspection": "typing-inspection", "pydantic_core": "pydantic-core", "pydantic": "pydantic",
    "simsimd": "simsimd", "stringzilla": "stringzilla", "albucore": "albucore", "albumentations": "albumentations",
    "torch_lr_finder": "torch-lr-finder", "torchsummary": "torchsummary", "braceexpand": "braceexpand",
    "webdataset": "webdataset",
}
missing, broken = [], []
for module, package in modules.items():
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        (missing if exc.name == module else broken).append(f"{package} ({exc})" if exc.name != module else package)
    except Exception as exc:
        broken.append(f"{package} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
if missing or broken:
    parts = ([f"lacks {', '.join(missing)}"] if missing else []) + ([f"cannot import {'; '.join(broken)}"] if broken else [])
    sys.exit(f"error: {sys.executable} {' and '.join(parts)}; offline, make the wheels with benchmarks/gpu_wheels.sh "
             "and pass --wheels DIR; with network, drop --use_current_env to use uv")
PY
exec "$py" benchmarks/gpu_check.py "${rest[@]}"

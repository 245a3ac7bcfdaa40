#!/usr/bin/env bash
# A rehearsal of the offline GPU check on a machine without a GPU, with network access and root:
#  1. a clean virtual environment holding only what the offline GPU image holds: torch 2.11.0 and
#     torchvision 0.26.0 from PyPI (else, where that cannot be had, torch 2.14.1 and torchvision
#     0.29.1 from what pip finds: it says which), OpenCV, matplotlib, scikit-learn, scikit-image,
#     tqdm, safetensors, huggingface-hub, pytest, timm and numpy, with typing-extensions held at
#     4.12.2 (older than pydantic needs: the wheels' newer one must win);
#  2. the wheels of benchmarks/gpu_wheels.sh, for this machine's Python;
#  3. with the network cut (unshare -n: needs root), benchmarks/gpu_check.sh as on the GPU machine
#     but with --device cpu --tiny; first, without --device cpu, it must refuse in one line (no GPU);
#  4. --out must then hold only small files: listed with their sizes; any folder or any file over
#     1 MB there fails the rehearsal.
#   benchmarks/gpu_rehearsal.sh [WORK]      # default $TMPDIR/gpu_rehearsal (~6 GB; the environment is reused)
# Exit 0 when the rehearsal passed.
set -uo pipefail
cd "$(dirname "$0")/.."
work="$(mkdir -p "${1:-${TMPDIR:-/tmp}/gpu_rehearsal}" && cd "${1:-${TMPDIR:-/tmp}/gpu_rehearsal}" && pwd)" \
  || { echo "error: cannot make the work folder" >&2; exit 2; }
venv="$work/venv"; wheels="$work/wheels"; out="$work/out"; check_work="$work/check_work"
image="opencv-python-headless matplotlib scikit-learn scikit-image tqdm safetensors huggingface-hub pytest timm numpy
       typing-extensions==4.12.2"
fail() { echo "rehearsal FAILED: $*" >&2; exit 1; }

unshare -n true 2>/dev/null || fail "unshare -n does not work here (it needs root): the network cannot be cut"

# 1. the image's environment (kept between rehearsals; delete $venv to make it anew)
if [ ! -f "$venv/image.txt" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv" || fail "python3 -m venv $venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1
  if "$venv/bin/python" -m pip install -qq torch==2.11.0 torchvision==0.26.0 $image; then
    echo "torch==2.11.0 torchvision==0.26.0 (as on the GPU image)" > "$venv/image.txt"
  else
    echo "torch 2.11.0 / torchvision 0.26.0 could not be installed; falling back to what pip finds here" >&2
    "$venv/bin/python" -m pip install -qq torch==2.14.1 torchvision==0.29.1 $image \
      || fail "could not install the image's packages into $venv"
    echo "torch==2.14.1 torchvision==0.29.1 (fallback: torch 2.11.0 could not be installed)" > "$venv/image.txt"
  fi
fi
pyver=$("$venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
echo "image environment: $venv, Python $pyver, $(cat "$venv/image.txt")"
"$venv/bin/python" - <<'PY' || fail "the image environment is not as meant"
import importlib.util, sys
import torch, typing_extensions  # noqa: F401
absent = ["albumentations", "albucore", "pydantic", "torch_lr_finder", "torchsummary", "webdataset", "braceexpand"]
present = [name for name in absent if importlib.util.find_spec(name)]
if present:
    sys.exit(f"the image environment must not hold {', '.join(present)}")
from importlib.metadata import version
print(f"torch {torch.__version__}, typing-extensions {version('typing-extensions')}; none of {', '.join(absent)}")
PY

# 2. the wheels, as made for the GPU machine (there: Python 3.12)
rm -rf "$wheels"
benchmarks/gpu_wheels.sh "$wheels" "$pyver" | tail -1 || fail "benchmarks/gpu_wheels.sh"

# 3. the check, offline
offline() { unshare -n -- sh -c 'ip link set lo up 2>/dev/null; exec "$@"' sh env -u PYTHONPATH PYTHONNOUSERSITE=1 \
            PYTHON="$venv/bin/python" "$@"; }
offline "$venv/bin/python" -c "import socket; socket.create_connection(('pypi.org', 443), timeout=5)" 2>/dev/null \
  && fail "the network is still reachable under unshare -n"
echo "network: cut (unshare -n)"
rm -rf "$out" "$check_work"
refusal=$(offline benchmarks/gpu_check.sh --use_current_env --wheels "$wheels" --out "$out" --work "$check_work" 2>&1)
code=$?
echo "without a GPU, --device cuda: exit $code: $refusal"
[ "$code" = 2 ] && [ "$(printf '%s\n' "$refusal" | wc -l)" = 1 ] && [ ! -e "$out" ] && [ ! -e "$check_work" ] \
  || fail "--device cuda without a GPU must exit 2 with one line, before making anything"
echo "\$ benchmarks/gpu_check.sh --use_current_env --wheels $wheels --device cpu --tiny --out $out --work $check_work"
offline benchmarks/gpu_check.sh --use_current_env --wheels "$wheels" --device cpu --tiny --out "$out" \
  --work "$check_work"
code=$?

# 4. what --out holds
echo "--out holds:"
find "$out" -mindepth 1 -printf '  %y %8s bytes  %P\n' | sort -k4
[ "$code" = 0 ] || fail "gpu_check.sh exited $code"
[ -z "$(find "$out" -mindepth 1 -type d)" ] || fail "--out holds a folder"
[ -z "$(find "$out" -type f -size +1048576c)" ] || fail "--out holds a file over 1 MB"
echo "rehearsal passed: $(cat "$venv/image.txt"), Python $pyver, offline, --device cpu --tiny"

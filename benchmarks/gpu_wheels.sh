#!/usr/bin/env bash
# Wheels for an offline GPU image that has torch, torchvision, OpenCV, matplotlib, scikit-learn and
# tqdm but not the rest of what the project imports (albumentations and its dependencies,
# torch-lr-finder, torchsummary). Versions come from uv.lock; run this where PyPI is reachable:
#   benchmarks/gpu_wheels.sh [DIR] [PYTHON_VERSION]      # default .whl and 3.12
# then, on the GPU machine (no network):
#   benchmarks/gpu_check.sh --use_current_env --wheels .whl --out "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-.whl}"; pyver="${2:-3.12}"
wanted="albumentations albucore pydantic pydantic-core annotated-types typing-inspection simsimd stringzilla torch-lr-finder torchsummary"
pins=$(uv export --locked --no-hashes --no-dev --no-emit-project 2>/dev/null | sed 's/ *;.*//') || {
  echo "error: uv export --locked failed: run this in the repository with uv installed" >&2; exit 2; }
mkdir -p "$dest"
for name in $wanted; do
  pin=$(printf '%s\n' "$pins" | grep -i "^${name}==" | head -1)
  [ -n "$pin" ] || { echo "error: $name is not in uv.lock" >&2; exit 2; }
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" "$pin"
done
ls -1 "$dest"
du -sh "$dest"

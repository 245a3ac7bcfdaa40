#!/usr/bin/env bash
# Wheels for an offline GPU image that has Python 3.12, torch, torchvision, timm, OpenCV,
# matplotlib, scikit-learn, scikit-image, tqdm, safetensors, huggingface-hub and pytest (and so
# numpy, scipy, pillow, pyyaml, packaging) but not the rest of what the suite imports:
# albumentations and what it needs that such an image lacks (albucore, pydantic, pydantic-core,
# annotated-types, typing-inspection, simsimd, stringzilla, and typing-extensions, which pydantic
# needs newer than torch does), torch-lr-finder, torchsummary, webdataset and braceexpand.
# Versions come from uv.lock; run this where PyPI is reachable:
#   benchmarks/gpu_wheels.sh [DIR] [PYTHON_VERSION]      # default .whl and 3.12 (the image's Python)
# then, on the GPU machine (no network):
#   benchmarks/gpu_check.sh --use_current_env --wheels .whl --out "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-.whl}"; pyver="${2:-3.12}"
wanted="albumentations albucore pydantic pydantic-core annotated-types typing-inspection typing-extensions
        simsimd stringzilla torch-lr-finder torchsummary webdataset braceexpand"
pins=$(uv export --locked --no-hashes --no-dev --no-emit-project 2>/dev/null | sed 's/ *;.*//') || {
  echo "error: uv export --locked failed: run this in the repository with uv installed" >&2; exit 2; }
mkdir -p "$dest"
for name in $wanted; do
  pin=$(printf '%s\n' "$pins" | grep -i "^${name}==" | head -1)
  [ -n "$pin" ] || { echo "error: $name is not in uv.lock" >&2; exit 2; }
  # binary wheels only, for that Python on x86-64 Linux: nothing is built on the GPU machine
  python3 -m pip download -qq --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" "$pin" \
    || { echo "error: no wheel of $pin for Python $pyver on manylinux x86-64" >&2; exit 2; }
  norm=$(printf '%s' "${pin%%==*}" | tr 'A-Z-' 'a-z_'); version="${pin#*==}"
  ls "$dest" | tr 'A-Z' 'a-z' | grep -q "^${norm}-${version}-" \
    || { echo "error: $pin: no ${norm}-${version}-*.whl in $dest after the download" >&2; exit 2; }
done
ls -1 "$dest"
echo "$(ls "$dest"/*.whl | wc -l) wheels, $(du -sh "$dest" | cut -f1), for Python $pyver, in $dest"

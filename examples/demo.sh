#!/usr/bin/env bash
# The README's main example: detect objects in the COCO val2017 photo of two cats on a sofa
# with the default model facebook/detr-resnet-50 (downloaded into the Hugging Face cache on
# first use). Offline, it ends with one line saying what is missing and how to supply it.
set -euo pipefail
cd "$(dirname "$0")/.."
VT="${VISIONTOOL:-.venv/bin/visiontool}"
exec "$VT" detect "${IMAGE:-http://images.cocodataset.org/val2017/000000039769.jpg}" \
    --threshold "${THRESHOLD:-0.9}" --format table "$@"

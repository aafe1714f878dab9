#!/usr/bin/env bash
# Detect objects in one photo and print a table; also write an annotated copy into ./viz.
#   MODEL=facebook/detr-resnet-50 examples/single_image.sh path/to/photo.jpg
set -euo pipefail
VT="${VISIONTOOL:-visiontool}"
IMAGE="${1:-../shared/data/images/dog.jpg}"
"$VT" detect "$IMAGE" --model "${MODEL:-facebook/detr-resnet-50}" --threshold "${THRESHOLD:-0.7}" \
    --format table --save-viz "${VIZ_DIR:-viz}"

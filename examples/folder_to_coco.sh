#!/usr/bin/env bash
# Detect on every image of a folder and write COCO results whose image and category ids
# come from a COCO ground truth (matched by file name and by category name), ready for
# `visiontool evaluate` or pycocotools' COCO.loadRes.
#   examples/folder_to_coco.sh photos/ annotations.json preds.json
set -euo pipefail
VT="${VISIONTOOL:-visiontool}"
DIR="${1:?usage: folder_to_coco.sh DIR GT.json [OUT.json]}"
GT="${2:?usage: folder_to_coco.sh DIR GT.json [OUT.json]}"
OUT="${3:-preds.json}"
"$VT" detect "$DIR" --recursive --model "${MODEL:-facebook/detr-resnet-50}" --threshold "${THRESHOLD:-0.0}" \
    --format coco --gt "$GT" --output "$OUT"
echo "wrote $OUT" >&2

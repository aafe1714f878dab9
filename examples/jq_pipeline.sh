#!/usr/bin/env bash
# Stream detections as JSON lines and count objects per label with jq.
#   examples/jq_pipeline.sh photos/*.jpg
set -euo pipefail
VT="${VISIONTOOL:-visiontool}"
"$VT" detect "$@" --model "${MODEL:-facebook/detr-resnet-50}" --threshold "${THRESHOLD:-0.7}" \
    --format jsonl -q \
  | jq -r '.detections[].label' | sort | uniq -c | sort -rn

#!/usr/bin/env bash
# Delete a TPU slice: its queued resource together with the node (or only a node).
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NODE_ONLY="${NODE_ONLY:-0}"
ASYNC="${ASYNC:-0}"

usage() {
  cat <<EOF2
Usage: $(basename "$0") --project ID --zone ZONE --name NAME [--qr-id ID] [--node-only] [--async]

Deletes the queued resource and, with --force, its node:
  gcloud compute tpus queued-resources delete QR_ID --force --quiet
With --node-only (a TPU made by 'gcloud compute tpus tpu-vm create', without a queued resource):
  gcloud compute tpus tpu-vm delete NAME --quiet
Checkpoints and logs in gs:// buckets are kept; files on the workers are lost.

$COMMON_HELP
  --node-only       NODE_ONLY=1   delete only the node NAME
  --async           ASYNC=1       return without waiting for the deletion to finish
EOF2
}

script_flag() {  # FLAG VALUE HAS_EQ NARGS
  case "$1" in
    --node-only) NODE_ONLY=1; SHIFT_BY=1 ;;
    --async) ASYNC=1; SHIFT_BY=1 ;;
    *) return 1 ;;
  esac
}

parse_args "$@"
require --project:PROJECT_ID --zone:ZONE --name:TPU_NAME
finish_defaults

if [[ "$NODE_ONLY" == 1 ]]; then
  cmd=(gcloud compute tpus tpu-vm delete "$TPU_NAME" --project="$PROJECT_ID" --zone="$ZONE" --quiet)
else
  cmd=(gcloud compute tpus queued-resources delete "$QUEUED_RESOURCE_ID" --project="$PROJECT_ID" --zone="$ZONE"
    --force --quiet)
fi
if [[ "$ASYNC" == 1 ]]; then cmd+=(--async); fi
run "${cmd[@]}"

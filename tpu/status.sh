#!/usr/bin/env bash
# Show the state of a slice: its queued resource and its node.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF2
Usage: $(basename "$0") --project ID --zone ZONE --name NAME [--qr-id ID]

  gcloud compute tpus queued-resources describe QR_ID   (WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE, ...)
  gcloud compute tpus tpu-vm describe NAME              (state, health, worker addresses)

$COMMON_HELP
EOF2
}

parse_args "$@"
require --project:PROJECT_ID --zone:ZONE --name:TPU_NAME
finish_defaults

run gcloud compute tpus queued-resources describe "$QUEUED_RESOURCE_ID" --project="$PROJECT_ID" --zone="$ZONE" \
  --format='value(state.state)'
run gcloud compute tpus tpu-vm describe "$TPU_NAME" --project="$PROJECT_ID" --zone="$ZONE" \
  --format='yaml(state,health,acceleratorType,runtimeVersion,networkEndpoints)'

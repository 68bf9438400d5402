#!/usr/bin/env bash
# Request a TPU slice through a queued resource; optionally wait until it is ACTIVE.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

WAIT="${WAIT:-0}"
WAIT_INTERVAL="${WAIT_INTERVAL:-30}"
WAIT_TIMEOUT="${WAIT_TIMEOUT:-0}"

usage() {
  cat <<EOF
Usage: $(basename "$0") --project ID --zone ZONE --name NAME --accelerator-type TYPE [options]

Creates a queued resource whose node is NAME:
  gcloud compute tpus queued-resources create QR_ID --node-id=NAME --project --zone
    --accelerator-type --runtime-version [--spot]

$COMMON_HELP
  --accelerator-type TYPE   ACCELERATOR_TYPE  e.g. v4-32, v5litepod-64, v5p-64, v6e-32
  --runtime-version V       RUNTIME_VERSION   default from the type: tpu-ubuntu2204-base (v2-v4),
                                              v2-alpha-tpuv5-lite (v5e), v2-alpha-tpuv5 (v5p),
                                              v2-alpha-tpuv6e (v6e)
  --spot                    SPOT=1            Spot capacity (cheaper, can be preempted)
  --bucket gs://B           BUCKET            also create this Cloud Storage bucket in the zone's
                                              region when it does not exist yet
  --wait                    WAIT=1            poll until the queued resource is ACTIVE
  --wait-interval S         WAIT_INTERVAL     seconds between polls (default 30)
  --wait-timeout S          WAIT_TIMEOUT      give up after S seconds (default 0: never)

Example:
  $(basename "$0") --project my-proj --zone us-central2-b --name rho-v4 --accelerator-type v4-32 --spot --wait
EOF
}

script_flag() {  # FLAG VALUE HAS_EQ NARGS
  case "$1" in
    --wait) WAIT=1; SHIFT_BY=1 ;;
    --wait-interval) need_value "$@"; WAIT_INTERVAL="$2" ;;
    --wait-timeout) need_value "$@"; WAIT_TIMEOUT="$2" ;;
    *) return 1 ;;
  esac
}

parse_args "$@"
require --project:PROJECT_ID --zone:ZONE --name:TPU_NAME --accelerator-type:ACCELERATOR_TYPE
if [[ -z "$RUNTIME_VERSION" ]]; then
  RUNTIME_VERSION="$(default_runtime_version "$ACCELERATOR_TYPE")" \
    || usage_error "no default runtime version for --accelerator-type=$ACCELERATOR_TYPE; pass --runtime-version"
fi
[[ "$WAIT_INTERVAL" =~ ^[1-9][0-9]*$ ]] || usage_error "--wait-interval=$WAIT_INTERVAL is not a positive number of seconds"
[[ "$WAIT_TIMEOUT" =~ ^[0-9]+$ ]] || usage_error "--wait-timeout=$WAIT_TIMEOUT is not a number of seconds"
finish_defaults

if [[ -n "$BUCKET" ]]; then
  region="${ZONE%-*}"
  if [[ "$DRY_RUN" == 1 ]] || ! gcloud storage buckets describe "$BUCKET" --project="$PROJECT_ID" >/dev/null 2>&1; then
    run gcloud storage buckets create "$BUCKET" --project="$PROJECT_ID" --location="$region" \
      --uniform-bucket-level-access
  fi
fi

create=(gcloud compute tpus queued-resources create "$QUEUED_RESOURCE_ID" --node-id="$TPU_NAME"
  --project="$PROJECT_ID" --zone="$ZONE" --accelerator-type="$ACCELERATOR_TYPE"
  --runtime-version="$RUNTIME_VERSION")
if [[ "$SPOT" == 1 ]]; then create+=(--spot); fi
run "${create[@]}"

describe=(gcloud compute tpus queued-resources describe "$QUEUED_RESOURCE_ID" --project="$PROJECT_ID"
  --zone="$ZONE" --format='value(state.state)')
if [[ "$WAIT" != 1 ]]; then
  echo "Requested. Check the state with: $(quote_all "${describe[@]}")" >&2
  exit 0
fi
if [[ "$DRY_RUN" == 1 ]]; then
  run "${describe[@]}"  # polled until ACTIVE
  exit 0
fi
start=$SECONDS
while true; do
  state="$("${describe[@]}")"
  echo "$(date +%T) $QUEUED_RESOURCE_ID: $state" >&2
  case "$state" in
    ACTIVE) exit 0 ;;
    FAILED|SUSPENDED) die "queued resource $QUEUED_RESOURCE_ID is $state; see: gcloud compute tpus queued-resources describe $QUEUED_RESOURCE_ID --zone=$ZONE --project=$PROJECT_ID" ;;
  esac
  if ((WAIT_TIMEOUT > 0 && SECONDS - start >= WAIT_TIMEOUT)); then
    die "still $state after ${WAIT_TIMEOUT}s; the request stays queued (delete it with tpu/delete.sh)"
  fi
  sleep "$WAIT_INTERVAL"
done

#!/usr/bin/env bash
# Shared flag parsing and helpers for tpu/*.sh. Sourced, never run.
#
# Every parameter comes from a flag or, failing that, an environment variable (names follow
# Google's TPU docs: PROJECT_ID, ZONE, TPU_NAME, ACCELERATOR_TYPE, RUNTIME_VERSION). With
# --dry-run, gcloud commands are printed to stdout, one per line, shell-quoted, instead of run.
# shellcheck disable=SC2034  # the variables set here are read by the scripts that source this
set -euo pipefail

TPU_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(dirname "$TPU_DIR")"

PROJECT_ID="${PROJECT_ID:-}"
ZONE="${ZONE:-}"
TPU_NAME="${TPU_NAME:-}"
QUEUED_RESOURCE_ID="${QUEUED_RESOURCE_ID:-}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-}"
RUNTIME_VERSION="${RUNTIME_VERSION:-}"
BUCKET="${BUCKET:-}"
SPOT="${SPOT:-0}"
NUM_WORKERS="${NUM_WORKERS:-}"
DRY_RUN="${DRY_RUN:-0}"
ARGS=()  # what follows `--`

# Remote layout on every worker (relative to $HOME).
REMOTE_SRC="rho-jax"       # checkout / configs
REMOTE_VENV="rho-venv"     # Python venv with jax[tpu] and rho-jax
REMOTE_LOGS="logs"         # per-worker logs and pid files

COMMON_HELP="Common options (flag, or environment variable):
  --project ID            PROJECT_ID        Google Cloud project
  --zone ZONE             ZONE              e.g. us-central2-b (v4), us-west4-a (v5e)
  --name NAME             TPU_NAME          TPU node name
  --qr-id ID              QUEUED_RESOURCE_ID  queued resource id (default: the node name)
  --dry-run               DRY_RUN=1         print the gcloud commands instead of running them
  -h, --help                                this text"

die() { echo "error: $*" >&2; exit 1; }

usage_error() {
  echo "error: $*" >&2
  echo "Run '$(basename "$0") --help' for usage." >&2
  exit 2
}

# shlex.quote: bare when safe, else single-quoted with ' written as '"'"'.
q() {
  local s="$1"
  if [[ -n "$s" && "$s" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/\'\"\'\"\'}"
  fi
}

# Quoted words joined by spaces; --flag=VALUE keeps the flag bare: --command='...'.
quote_all() {
  local out="" a
  for a in "$@"; do
    if [[ "$a" =~ ^(--[A-Za-z0-9-]+=)(.*)$ ]]; then
      out+="${out:+ }${BASH_REMATCH[1]}$(q "${BASH_REMATCH[2]}")"
    else
      out+="${out:+ }$(q "$a")"
    fi
  done
  printf '%s' "$out"
}

# Runs a command, or prints it under --dry-run.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    quote_all "$@"; echo
  else
    "$@"
  fi
}

# Runs a command in the background with stdout+stderr to a file; prints it under --dry-run.
run_bg_logged() {
  local log="$1"; shift
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "$(quote_all "$@") > $(q "$log") 2>&1 &"
  else
    "$@" >"$log" 2>&1 &
  fi
}

# Parses the common flags; a script handles its own through `script_flag NAME VALUE`, which must
# set SHIFT_BY to 1 (flag alone) or 2 (flag and value) and return 0, or return 1 if unknown.
parse_args() {
  local flag value
  while (($#)); do
    flag="$1"
    value="${2-}"
    local has_eq=0
    if [[ "$flag" == --*=* ]]; then
      value="${flag#*=}"; flag="${flag%%=*}"; has_eq=1
    fi
    SHIFT_BY=2
    case "$flag" in
      -h|--help) usage; exit 0 ;;
      --) shift; ARGS+=("$@"); return 0 ;;
      --dry-run) DRY_RUN=1; SHIFT_BY=1 ;;
      --spot) SPOT=1; SHIFT_BY=1 ;;
      --project|--zone|--name|--qr-id|--accelerator-type|--runtime-version|--bucket|--workers)
        if ((has_eq == 0)) && { (($# < 2)) || [[ "$value" == --* ]]; }; then
          usage_error "$flag needs a value"
        fi
        case "$flag" in
          --project) PROJECT_ID="$value" ;;
          --zone) ZONE="$value" ;;
          --name) TPU_NAME="$value" ;;
          --qr-id) QUEUED_RESOURCE_ID="$value" ;;
          --accelerator-type) ACCELERATOR_TYPE="$value" ;;
          --runtime-version) RUNTIME_VERSION="$value" ;;
          --bucket) BUCKET="$value" ;;
          --workers) NUM_WORKERS="$value" ;;
        esac ;;
      *)
        if declare -F script_flag >/dev/null && script_flag "$flag" "$value" "$has_eq" "$#"; then
          :
        else
          usage_error "unknown argument: $1"
        fi ;;
    esac
    if ((has_eq == 1)); then shift; else shift "$SHIFT_BY"; fi
  done
}

# Helper for script_flag: fails unless a value was given.
need_value() {  # FLAG VALUE HAS_EQ NARGS
  if (($3 == 0)) && { (($4 < 2)) || [[ "$2" == --* ]]; }; then
    usage_error "$1 needs a value"
  fi
}

# Usage error naming each missing parameter: require "--flag:ENV_VAR" ...
require() {
  local spec flag var
  for spec in "$@"; do
    flag="${spec%%:*}"; var="${spec#*:}"
    [[ -n "${!var}" ]] || usage_error "missing $flag (or environment variable $var)"
  done
}

# Defaults that depend on other parameters; call after parse_args.
finish_defaults() {
  QUEUED_RESOURCE_ID="${QUEUED_RESOURCE_ID:-$TPU_NAME}"
  if [[ -n "$BUCKET" && "$BUCKET" != gs://* ]]; then BUCKET="gs://$BUCKET"; fi
  BUCKET="${BUCKET%/}"
  if [[ "$DRY_RUN" != 1 ]] && ! command -v gcloud >/dev/null; then
    die "gcloud not found; install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) or use --dry-run"
  fi
}

# TPU software version for an accelerator type (Google's "TPU software versions" table).
default_runtime_version() {
  case "$1" in
    v2-*|v3-*|v4-*) echo "tpu-ubuntu2204-base" ;;
    v5litepod-*|v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) return 1 ;;
  esac
}

# Hosts (TPU VMs, workers) in a slice. v2-v5p count TensorCores (2 per chip, 4 chips per host);
# v5e/v6e count chips (one 8-chip host up to 8, then 4 chips per host).
hosts_for_accelerator() {
  local n="${1##*-}"
  [[ "$n" =~ ^[0-9]+$ ]] || return 1
  case "$1" in
    v2-*|v3-*|v4-*|v5p-*) echo $(( n <= 8 ? 1 : n / 8 )) ;;
    v5litepod-*|v5e-*|v6e-*) echo $(( n <= 8 ? 1 : n / 4 )) ;;
    *) return 1 ;;
  esac
}

# Number of workers: --workers, else from --accelerator-type, else asked of gcloud.
worker_count() {
  if [[ -n "$NUM_WORKERS" ]]; then
    [[ "$NUM_WORKERS" =~ ^[1-9][0-9]*$ ]] || usage_error "--workers=$NUM_WORKERS is not a positive integer"
    echo "$NUM_WORKERS"
  elif [[ -n "$ACCELERATOR_TYPE" ]]; then
    hosts_for_accelerator "$ACCELERATOR_TYPE" \
      || usage_error "cannot tell the host count of --accelerator-type=$ACCELERATOR_TYPE; pass --workers N"
  elif [[ "$DRY_RUN" == 1 ]]; then
    usage_error "missing --workers (or NUM_WORKERS, or --accelerator-type) for a per-worker dry run"
  else
    gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" --project="$PROJECT_ID" \
      --flatten=networkEndpoints --format='value(networkEndpoints.ipAddress)' | grep -c .
  fi
}

# gcloud compute tpus tpu-vm ssh NAME on WORKER (a number or "all") running a remote command.
tpu_ssh() {  # WORKER COMMAND
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --project="$PROJECT_ID" \
    --worker="$1" --command="$2"
}

# The same on one worker, in the background, its output kept in a local file.
tpu_ssh_logged() {  # LOCAL_LOG WORKER COMMAND
  run_bg_logged "$1" gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --project="$PROJECT_ID" \
    --worker="$2" --command="$3"
}

# gcloud compute tpus tpu-vm scp on WORKER; the rest are scp's arguments (SRC... DEST, --recurse).
tpu_scp() {  # WORKER ARGS...
  local worker="$1"; shift
  run gcloud compute tpus tpu-vm scp "$@" --worker="$worker" --zone="$ZONE" --project="$PROJECT_ID"
}

#!/usr/bin/env bash
# Show, follow or fetch the per-worker logs written by tpu/run.sh.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

RUN_NAME="${RUN_NAME:-run}"
MODE="tail"
WORKER="${WORKER:-}"
TAIL_LINES="${TAIL_LINES:-50}"
LOG_DIR="${LOG_DIR:-}"

usage() {
  cat <<EOF2
Usage: $(basename "$0") --project ID --zone ZONE --name NAME [--run-name NAME] [--follow | --fetch] [options]

Logs live on each worker in ~/$REMOTE_LOGS/RUN_NAME-\$(hostname).log.
  (default)   last TAIL_LINES lines of every worker's log (--worker=all)
  --follow    tail -F one worker's log (default worker 0)
  --fetch     copy each worker's log to LOG_DIR/worker-i/ (gcloud compute tpus tpu-vm scp --worker=i)

$COMMON_HELP
  --run-name NAME        RUN_NAME     as given to tpu/run.sh (default: run)
  --worker I             WORKER       only worker I
  --lines N              TAIL_LINES   lines to show (default 50)
  --log-dir DIR          LOG_DIR      for --fetch (default: logs/NAME)
  --workers N            NUM_WORKERS  for --fetch (default: from --accelerator-type, or gcloud)
  --accelerator-type T   ACCELERATOR_TYPE  e.g. v4-32; gives the worker count
EOF2
}

script_flag() {  # FLAG VALUE HAS_EQ NARGS
  case "$1" in
    --run-name) need_value "$@"; RUN_NAME="$2" ;;
    --follow) MODE="follow"; SHIFT_BY=1 ;;
    --fetch) MODE="fetch"; SHIFT_BY=1 ;;
    --worker) need_value "$@"; WORKER="$2" ;;
    --lines) need_value "$@"; TAIL_LINES="$2" ;;
    --log-dir) need_value "$@"; LOG_DIR="$2" ;;
    *) return 1 ;;
  esac
}

parse_args "$@"
require --project:PROJECT_ID --zone:ZONE --name:TPU_NAME
[[ "$RUN_NAME" =~ ^[A-Za-z0-9_.-]+$ ]] || usage_error "--run-name=$RUN_NAME: use letters, digits, _ . -"
[[ "$TAIL_LINES" =~ ^[0-9]+$ ]] || usage_error "--lines=$TAIL_LINES is not a number"
[[ -z "$WORKER" || "$WORKER" =~ ^[0-9]+$ ]] || usage_error "--worker=$WORKER is not a worker number"
finish_defaults
LOG_DIR="${LOG_DIR:-logs/$TPU_NAME}"
logs="\$HOME/$REMOTE_LOGS/$RUN_NAME-*.log"  # expanded on the workers

case "$MODE" in
  tail) tpu_ssh "${WORKER:-all}" "tail -n $TAIL_LINES $logs" ;;
  follow) tpu_ssh "${WORKER:-0}" "tail -n $TAIL_LINES -F $logs" ;;
  fetch)
    if [[ -n "$WORKER" ]]; then workers=("$WORKER"); else mapfile -t workers < <(seq 0 $(( $(worker_count) - 1 ))); fi
    for i in "${workers[@]}"; do
      [[ "$DRY_RUN" == 1 ]] || mkdir -p "$LOG_DIR/worker-$i"
      tpu_scp "$i" "$TPU_NAME:$REMOTE_LOGS/$RUN_NAME-*.log" "$LOG_DIR/worker-$i/"
    done ;;
esac

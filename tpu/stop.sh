#!/usr/bin/env bash
# Stop a run on every worker: signal the process recorded by tpu/run.sh. The slice stays up.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

RUN_NAME="${RUN_NAME:-run}"
SIGNAL="${SIGNAL:-TERM}"

usage() {
  cat <<EOF2
Usage: $(basename "$0") --project ID --zone ZONE --name NAME [--run-name NAME] [--signal SIG]

Sends SIG (default TERM: the trainer saves a checkpoint and exits) to the process whose id
tpu/run.sh wrote to ~/$REMOTE_LOGS/RUN_NAME.pid, on all workers (--worker=all).
The slice keeps running (and billing): release it with tpu/delete.sh. Queued resources and
multi-host slices cannot be stopped, only deleted.

$COMMON_HELP
  --run-name NAME   RUN_NAME   as given to tpu/run.sh (default: run)
  --signal SIG      SIGNAL     TERM (default), INT or KILL
EOF2
}

script_flag() {  # FLAG VALUE HAS_EQ NARGS
  case "$1" in
    --run-name) need_value "$@"; RUN_NAME="$2" ;;
    --signal) need_value "$@"; SIGNAL="$2" ;;
    *) return 1 ;;
  esac
}

parse_args "$@"
require --project:PROJECT_ID --zone:ZONE --name:TPU_NAME
[[ "$RUN_NAME" =~ ^[A-Za-z0-9_.-]+$ ]] || usage_error "--run-name=$RUN_NAME: use letters, digits, _ . -"
[[ "$SIGNAL" =~ ^(TERM|INT|KILL)$ ]] || usage_error "--signal=$SIGNAL: use TERM, INT or KILL"
finish_defaults

# Remote script; $pid and $(hostname) are expanded on the workers.
# shellcheck disable=SC2016
printf -v stop '%s' \
  "f=\$HOME/$REMOTE_LOGS/$RUN_NAME.pid; " \
  'if [ -f "$f" ] && pid=$(cat "$f") && kill -0 "$pid" 2>/dev/null; ' \
  "then kill -$SIGNAL \"\$pid\" && echo \"\$(hostname): sent SIG$SIGNAL to \$pid\"; " \
  "else echo \"\$(hostname): no running $RUN_NAME\"; fi"
tpu_ssh all "$stop"

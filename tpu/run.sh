#!/usr/bin/env bash
# Run the same command (rho-jax …) on every worker of a TPU slice, each worker's log kept.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

RUN_NAME="${RUN_NAME:-run}"
DETACH="${DETACH:-0}"
LOCAL_LOGS="${LOCAL_LOGS:-0}"
LOG_DIR="${LOG_DIR:-}"
ENV_VARS=()

usage() {
  cat <<EOF
Usage: $(basename "$0") --project ID --zone ZONE --name NAME [options] -- COMMAND [ARGS...]

Runs COMMAND in ~/$REMOTE_SRC with ~/$REMOTE_VENV active on all workers at once
(gcloud compute tpus tpu-vm ssh --worker=all), with RHO_JAX_MULTIHOST=1 so that every process
joins the slice (rho_jax.distributed). Each worker tees its output to
~/$REMOTE_LOGS/RUN_NAME-\$(hostname).log and records the process id in ~/$REMOTE_LOGS/RUN_NAME.pid
(tpu/stop.sh signals it).

$COMMON_HELP
  --run-name NAME       RUN_NAME      names the logs and pid file (default: run)
  --env KEY=VALUE                     export on every worker (repeatable), e.g. LIBTPU_INIT_ARGS=...
  --detach              DETACH=1      start in the background and return (follow with tpu/logs.sh)
  --local-logs          LOCAL_LOGS=1  one ssh per worker (--worker=i), output to LOG_DIR/worker-i.log
  --log-dir DIR         LOG_DIR       for --local-logs (default: logs/NAME)
  --workers N           NUM_WORKERS   for --local-logs (default: from --accelerator-type, or gcloud)
  --accelerator-type T  ACCELERATOR_TYPE  e.g. v4-32; gives the worker count
  --bucket gs://B       BUCKET        when the command ends, copy each worker's log to gs://B/logs/RUN_NAME/

Example:
  $(basename "$0") --project my-proj --zone us-central2-b --name rho-v4 --run-name ref -- \\
    rho-jax train --config=configs/tinyllama_owm_reference.py --config.workdir=gs://my-bucket/ref
EOF
}

script_flag() {  # FLAG VALUE HAS_EQ NARGS
  case "$1" in
    --run-name) need_value "$@"; RUN_NAME="$2" ;;
    --env) need_value "$@"; ENV_VARS+=("$2") ;;
    --detach) DETACH=1; SHIFT_BY=1 ;;
    --local-logs) LOCAL_LOGS=1; SHIFT_BY=1 ;;
    --log-dir) need_value "$@"; LOG_DIR="$2" ;;
    *) return 1 ;;
  esac
}

parse_args "$@"
require --project:PROJECT_ID --zone:ZONE --name:TPU_NAME
((${#ARGS[@]} > 0)) || usage_error "missing the command to run, after --: e.g. -- rho-jax train --config=..."
[[ "$RUN_NAME" =~ ^[A-Za-z0-9_.-]+$ ]] || usage_error "--run-name=$RUN_NAME: use letters, digits, _ . -"
finish_defaults
LOG_DIR="${LOG_DIR:-logs/$TPU_NAME}"

exports="export RHO_JAX_MULTIHOST=1"
for kv in ${ENV_VARS[@]+"${ENV_VARS[@]}"}; do
  [[ "$kv" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || usage_error "--env $kv: expected KEY=VALUE"
  exports+=" $(q "$kv")"
done

# The pid file holds the command's own pid: bash writes its pid, then execs the command.
# shellcheck disable=SC2016  # expanded on the workers
launch="bash -c $(q 'echo $$ > ~/'"$REMOTE_LOGS/$RUN_NAME"'.pid && exec "$@"') rho-jax-run $(quote_all "${ARGS[@]}")"
remote="set -o pipefail; mkdir -p ~/$REMOTE_LOGS && cd ~/$REMOTE_SRC && . ~/$REMOTE_VENV/bin/activate"
remote+=" && $exports && log=~/$REMOTE_LOGS/$RUN_NAME-\$(hostname).log && $launch 2>&1 | tee \"\$log\"; status=\$?; rm -f ~/$REMOTE_LOGS/$RUN_NAME.pid"
if [[ -n "$BUCKET" ]]; then
  remote+="; gcloud storage cp \"\$log\" $(q "$BUCKET/logs/$RUN_NAME/")"
fi
remote+="; exit \$status"
if [[ "$DETACH" == 1 ]]; then
  remote="setsid nohup bash -c $(q "$remote") > /dev/null 2>&1 < /dev/null &"
  remote+=" echo \"started on \$(hostname): ~/$REMOTE_LOGS/$RUN_NAME-\$(hostname).log\""
fi

if [[ "$LOCAL_LOGS" != 1 ]]; then
  tpu_ssh all "$remote"
  exit 0
fi

n="$(worker_count)"
[[ "$DRY_RUN" == 1 ]] || mkdir -p "$LOG_DIR"
pids=()
for ((i = 0; i < n; i++)); do
  tpu_ssh_logged "$LOG_DIR/worker-$i.log" "$i" "$remote"
  [[ "$DRY_RUN" == 1 ]] || pids+=($!)
done
[[ "$DRY_RUN" != 1 ]] || exit 0
echo "running on $n workers; logs in $LOG_DIR/worker-*.log" >&2
failed=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "worker $i failed; see $LOG_DIR/worker-$i.log" >&2
    failed=1
  fi
done
exit "$failed"

#!/usr/bin/env bash
# Install jax[tpu] and rho-jax on every worker of a TPU slice.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

GIT_URL="${GIT_URL:-}"
GIT_REF="${GIT_REF:-}"
WHEEL="${WHEEL:-}"
CONFIGS_DIR="${CONFIGS_DIR:-$REPO_ROOT/configs}"
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
JAX_SPEC="${JAX_SPEC:-jax[tpu]}"
LIBTPU_FIND_LINKS="${LIBTPU_FIND_LINKS:-https://storage.googleapis.com/jax-releases/libtpu_releases.html}"
VERIFY="${VERIFY:-1}"

usage() {
  cat <<EOF
Usage: $(basename "$0") --project ID --zone ZONE --name NAME (--git-url URL | --wheel FILE) [options]

On all workers (gcloud compute tpus tpu-vm ssh --worker=all): a Python $PYTHON_VERSION venv in
~/$REMOTE_VENV (made with uv, as the TPU images ship Python 3.10), then
pip install "$JAX_SPEC" and rho-jax, with the code and configs in ~/$REMOTE_SRC.

$COMMON_HELP
  --git-url URL        GIT_URL          clone this repository into ~/$REMOTE_SRC and install it
  --git-ref REF        GIT_REF          branch, tag or commit to check out (default: the remote HEAD)
  --wheel FILE         WHEEL            or copy this wheel (pip wheel --no-deps . -w dist) with
                                        gcloud compute tpus tpu-vm scp --worker=all, and install it
  --configs DIR        CONFIGS_DIR      with --wheel: configs to copy along (default: $REPO_ROOT/configs)
  --python VERSION     PYTHON_VERSION   Python for the venv (default 3.12)
  --jax SPEC           JAX_SPEC         JAX requirement (default "jax[tpu]")
  --no-verify          VERIFY=0         skip the final check that every worker sees the whole slice

Example:
  $(basename "$0") --project my-proj --zone us-central2-b --name rho-v4 --git-url https://github.com/ORG/rho-jax
EOF
}

script_flag() {  # FLAG VALUE HAS_EQ NARGS
  case "$1" in
    --git-url) need_value "$@"; GIT_URL="$2" ;;
    --git-ref) need_value "$@"; GIT_REF="$2" ;;
    --wheel) need_value "$@"; WHEEL="$2" ;;
    --configs) need_value "$@"; CONFIGS_DIR="$2" ;;
    --python) need_value "$@"; PYTHON_VERSION="$2" ;;
    --jax) need_value "$@"; JAX_SPEC="$2" ;;
    --no-verify) VERIFY=0; SHIFT_BY=1 ;;
    *) return 1 ;;
  esac
}

parse_args "$@"
require --project:PROJECT_ID --zone:ZONE --name:TPU_NAME
if [[ -z "$GIT_URL" && -z "$WHEEL" ]]; then
  usage_error "missing --git-url (or GIT_URL) or --wheel (or WHEEL): what to install"
fi
if [[ -n "$GIT_URL" && -n "$WHEEL" ]]; then
  usage_error "give --git-url or --wheel, not both"
fi
if [[ -n "$WHEEL" && "$DRY_RUN" != 1 && ! -f "$WHEEL" ]]; then
  usage_error "--wheel=$WHEEL: no such file (build it with: pip wheel --no-deps . -w dist)"
fi
finish_defaults

# uv brings its own Python build; jax and rho-jax need Python >= 3.11.
# shellcheck disable=SC2016  # expanded on the workers
venv='export PATH="$HOME/.local/bin:$PATH" && { python3 -m pip install --user --quiet --upgrade uv'
venv+=' || python3 -m pip install --user --quiet --upgrade --break-system-packages uv; }'  # PEP 668 images
venv+=" && { [ -x ~/$REMOTE_VENV/bin/python ] || uv venv --python $(q "$PYTHON_VERSION") ~/$REMOTE_VENV; }"
install="uv pip install --python ~/$REMOTE_VENV/bin/python --upgrade $(q "$JAX_SPEC") -f $(q "$LIBTPU_FIND_LINKS")"

if [[ -n "$GIT_URL" ]]; then
  checkout="if [ -d ~/$REMOTE_SRC/.git ]; then git -C ~/$REMOTE_SRC fetch --tags origin;"
  checkout+=" else git clone $(q "$GIT_URL") ~/$REMOTE_SRC; fi"
  checkout+=" && git -C ~/$REMOTE_SRC checkout --detach $(q "${GIT_REF:-origin/HEAD}")"
  tpu_ssh all "set -euo pipefail; mkdir -p ~/$REMOTE_LOGS && $venv && $checkout && $install ~/$REMOTE_SRC"
else
  wheel_name="$(basename "$WHEEL")"
  tpu_ssh all "mkdir -p ~/$REMOTE_SRC ~/$REMOTE_LOGS"
  tpu_scp all "$WHEEL" "$TPU_NAME:$REMOTE_SRC/"
  tpu_scp all --recurse "$CONFIGS_DIR" "$TPU_NAME:$REMOTE_SRC/"
  tpu_ssh all "set -euo pipefail; $venv && $install ~/$REMOTE_SRC/$(q "$wheel_name")"
fi

if [[ "$VERIFY" == 1 ]]; then
  # All workers at once: each joins the runtime and must see every chip of the slice.
  check='from rho_jax import distributed; distributed.maybe_initialize(); import jax; '
  check+='print(f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local, {jax.device_count()} global devices")'
  tpu_ssh all "RHO_JAX_MULTIHOST=1 ~/$REMOTE_VENV/bin/python -c $(q "$check")"
fi

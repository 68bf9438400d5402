#!/usr/bin/env bash
# The lent accelerator's whole benchmark in one call (< 8 minutes on an H100/H200): rho-jax's CLM, cached
# and online SLM and scoring at the TinyLlama-1.1B shape, alternating with the PyTorch peer (HF Llama,
# torch.compile, bf16), rows with MFU appended to BENCHMARKS.md. Extra flags go to the module, e.g.
#   scripts/accelerator_bench.sh --dry-run --out=/tmp/rows.md    # the CI check on CPU
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TF_CPP_MIN_LOG_LEVEL=2
# The peer runs first in a child process and exits before JAX takes its (default) share of device memory.
# 8 minutes on the accelerator; a loaded CPU running --dry-run may need longer (the CI test raises it).
exec timeout "${RHO_JAX_BENCH_TIMEOUT_S:-480}" "${PYTHON:-python3}" -m rho_jax.accelerator_bench "$@"

"""The PyTorch peer is benchmark-only: importing the training path (train, loop, bench, cli) never imports
torch, transformers or rho_jax.peer, so the GPU/TPU training hosts do not need them."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_training_path_does_not_import_the_peer():
    code = ("import sys, rho_jax.train, rho_jax.loop, rho_jax.bench, rho_jax.cli, rho_jax.sidebyside; "
            "bad = [m for m in ('torch', 'transformers', 'rho_jax.peer') if m in sys.modules]; print(bad); "
            "sys.exit(1 if bad else 0)")
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]

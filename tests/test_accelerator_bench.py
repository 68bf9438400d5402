"""The one-command accelerator bench passes a dry run on CPU: every mode, every runner and the target
table land in the output file, and nothing on its path imports seqio or tensorflow."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_dry_run_writes_all_rows(tmp_path):
    out = tmp_path / "rows.md"
    # The 8-minute limit is the accelerator's; a shared CI CPU gets more room for the same tiny run.
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHON=sys.executable,
               RHO_JAX_BENCH_TIMEOUT_S="1500", RHO_JAX_PEER_TIMEOUT_S="900")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "accelerator_bench.sh"), "--dry-run", f"--out={out}"],
                          env=env, capture_output=True, text=True, timeout=1600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "DRY RUN" in text
    for mode in ("clm", "slm_cached", "slm_online", "score"):
        assert f"| {mode} | rho-jax |" in text, text
    for mode in ("clm", "slm_online", "score"):  # the peer modes the targets compare against
        assert f"| {mode} | torch eager |" in text, text
    for target in ("CLM MFU", "cached SLM ÷ CLM step", "online SLM ÷ CLM step", "online SLM ÷ peer SLM tokens/s",
                   "scoring tokens/s"):
        assert f"| {target} |" in text, text
    # Every rho-jax row of a peer mode carries a ratio against the peer.
    ours = [line for line in text.splitlines() if "| rho-jax |" in line and "slm_cached" not in line]
    assert len(ours) == 3 and all(line.rstrip().endswith("** |") for line in ours), ours
    assert "Peer:" not in text, text  # the peer ran (a failure or timeout would be noted here)

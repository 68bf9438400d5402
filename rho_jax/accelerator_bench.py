"""One command for a lent GPU/TPU: rho-jax's four modes and the PyTorch peer, side by side, with MFU.

  python -m rho_jax.accelerator_bench [--out=BENCHMARKS.md]      # scripts/accelerator_bench.sh
  python -m rho_jax.accelerator_bench --dry-run --out=/tmp/x.md  # tiny shape on CPU (CI)

Accelerator run: configs/bench_tinyllama.py (TinyLlama-1.1B shape, seq 2048, bf16 compute, f32 master
weights, vocabulary-chunked CE); on GPU cuDNN attention, on TPU the XLA attention. The peer is HF Llama
under torch.compile with bf16 autocast (eager on CPU), run first in a child process so that its device memory
is released before rho-jax starts (on TPU it runs on the host CPU: skip it with --no-peer).
The rows go to `--out` with the targets checked (CLM MFU, cached/online SLM vs CLM step, SLM vs the
peer, scoring tokens/s). Imports neither seqio nor tensorflow (the GPU image has neither).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("clm", "slm_cached", "slm_online", "score")
# Targets at the TinyLlama shape on an H100/H200 (issue 14).
TARGETS = {"clm_mfu": 0.50, "cached_vs_clm": 1.03, "online_vs_clm": 1.20, "online_vs_peer": 1.5, "score_tok_s": 300e3}


def _config(dry_run: bool, platform: str):
    spec = importlib.util.spec_from_file_location("bench_cfg", os.path.join(REPO, "configs", "bench_tinyllama.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    with c.unlocked():
        if platform != "gpu":
            c.model.attention = "xla"
        if dry_run:  # same code path at a shape that runs in seconds on CPU
            c.model.update(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
                           max_positions=64, dtype="float32")
            c.train.batch_size = 2
            c.data.seq_len = 64
            c.objective.ce_chunk = 128
    return c


PEER_MODES = ("clm", "slm_online", "score")  # what the targets compare against
# The peer's share of the 8 minutes (torch.compile of three models included); a loaded CI CPU may raise it.
PEER_TIMEOUT_S = int(os.environ.get("RHO_JAX_PEER_TIMEOUT_S", "240"))


def _peer_rows(dry_run: bool, warmup: int, iters: int) -> tuple[list[dict], str]:
    """The peer in a child process (so its device memory is gone before rho-jax starts), one mode at a time."""
    import json
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, "-m", "rho_jax.accelerator_bench", "--peer-only", f"--json={f.name}",
               f"--warmup={warmup}", f"--iters={iters}"] + (["--dry-run"] if dry_run else [])
        env = dict(os.environ, JAX_PLATFORMS="cpu")  # the child never needs an accelerator for JAX
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PEER_TIMEOUT_S, env=env)
        except subprocess.TimeoutExpired:
            return [], f"the peer did not finish within {PEER_TIMEOUT_S} s"
        if proc.returncode != 0:
            return [], "the peer failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
        return json.load(open(f.name)), ""


def peer_only(dry_run: bool, warmup: int, iters: int, json_path: str) -> None:
    """Times the peer's modes one after another (a dedicated device needs no alternation), freeing each."""
    import json
    import statistics

    import torch

    from rho_jax import bench, config as config_lib, peer

    platform = "gpu" if torch.cuda.is_available() else "cpu"
    c = _config(dry_run, platform)
    m_cfg = config_lib.model_config(c)
    host = bench.random_batch(__import__("numpy").random.default_rng(0), c.train.batch_size, c.data.seq_len,
                              m_cfg.vocab_size, docs_per_row=1)
    device = "cuda" if platform == "gpu" else "cpu"
    rows = []
    for mode in PEER_MODES:
        p = peer.Peer(m_cfg, mode, host, ratio=c.objective.ratio, lr=c.train.lr, compile=platform == "gpu",
                      dtype=m_cfg.dtype, device=device)
        for _ in range(warmup):
            p.step()
        ts = []
        for _ in range(iters):
            t0 = time.perf_counter()
            p.step()
            ts.append(time.perf_counter() - t0)
        t = statistics.median(ts)
        rows.append({"mode": mode, "runner": "torch.compile" if platform == "gpu" else "torch eager", "step_s": t,
                     "tokens_per_s": c.train.batch_size * c.data.seq_len / t, "spread": (min(ts), max(ts)),
                     "mfu": None, "vs_best_peer": None})
        del p
        if device == "cuda":
            torch.cuda.empty_cache()
    with open(json_path, "w") as f:
        json.dump(rows, f)


def run(dry_run: bool, out: str, warmup: int, iters: int, peer: bool) -> str:
    t0 = time.time()
    if peer and not dry_run and not os.path.exists("/dev/nvidia0"):
        peer, peer_note = False, "skipped: no CUDA device (a 1.1B peer on the host CPU would not finish)"
    else:
        peer_note = "" if peer else "skipped (--no-peer)"
    peer_rows = []
    if peer:
        peer_rows, peer_note = _peer_rows(dry_run, warmup, iters)
    import jax

    from rho_jax import sidebyside

    platform = jax.devices()[0].platform
    c = _config(dry_run, platform)
    rows = sidebyside.run(c, MODES, warmup, iters, peer_compile=False, peer_eager=False)
    rows += [dict(r, spread=tuple(r["spread"])) for r in peer_rows]
    for r in rows:
        peers = [q["tokens_per_s"] for q in peer_rows if q["mode"] == r["mode"]]
        if r["runner"] == "rho-jax":
            r["vs_best_peer"] = r["tokens_per_s"] / max(peers) if peers else None
    name = "accelerator bench" + (" (DRY RUN: tiny shape on CPU, not a measurement)" if dry_run else "")
    text = sidebyside.table(c, rows, name, iters).replace(
        "all runners alternating step by step in one process",
        "rho-jax's modes alternating step by step; the peer first, in a child process, one mode at a time")
    if peer_note:
        text += f"\nPeer: {peer_note}.\n"
    text += _targets(rows) + f"\nWall time of the run: {time.time() - t0:.0f} s.\n"
    with open(out, "a") as f:
        f.write("\n" + text)
    return text


def _targets(rows) -> str:
    ours = {r["mode"]: r for r in rows if r.get("runner") == "rho-jax"}
    peers = {}
    for r in rows:
        if r.get("runner", "rho-jax") != "rho-jax":
            peers[r["mode"]] = max(peers.get(r["mode"], 0.0), r["tokens_per_s"])
    clm = ours["clm"]
    checks = [("CLM MFU", clm["mfu"], TARGETS["clm_mfu"], ">=", "{:.1%}"),
              ("cached SLM ÷ CLM step", ours["slm_cached"]["step_s"] / clm["step_s"], TARGETS["cached_vs_clm"], "<=",
               "{:.3f}"),
              ("online SLM ÷ CLM step", ours["slm_online"]["step_s"] / clm["step_s"], TARGETS["online_vs_clm"], "<=",
               "{:.3f}"),
              ("online SLM ÷ peer SLM tokens/s",
               ours["slm_online"]["tokens_per_s"] / peers["slm_online"] if "slm_online" in peers else None,
               TARGETS["online_vs_peer"], ">=", "{:.2f}"),
              ("scoring tokens/s", ours["score"]["tokens_per_s"], TARGETS["score_tok_s"], ">=", "{:,.0f}")]
    lines = ["", "| target | measured | goal | met |", "|---|---|---|---|"]
    for label, got, goal, op, fmt in checks:
        if got is None:
            lines.append(f"| {label} | n/a | {op} {fmt.format(goal)} | — |")
            continue
        ok = got >= goal if op == ">=" else got <= goal
        lines.append(f"| {label} | {fmt.format(got)} | {op} {fmt.format(goal)} | {'yes' if ok else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="rho-jax + PyTorch peer on the lent accelerator, one command")
    p.add_argument("--dry-run", action="store_true", help="tiny shape on CPU: checks the whole path in seconds")
    p.add_argument("--out", default=os.path.join(REPO, "BENCHMARKS.md"), help="markdown file the rows go to")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--no-peer", dest="peer", action="store_false", help="skip the PyTorch peer")
    p.add_argument("--peer-only", action="store_true", help=argparse.SUPPRESS)  # the child process of run()
    p.add_argument("--json", default="", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.dry_run:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if a.peer_only:
        peer_only(a.dry_run, a.warmup if not a.dry_run else 1, a.iters if not a.dry_run else 2, a.json)
        return 0
    for mod in ("seqio", "tensorflow"):  # the GPU image has neither: fail here, not there
        if mod in sys.modules:
            print(f"error: {mod} was imported by the bench path; it must import without it", file=sys.stderr)
            return 2
    text = run(a.dry_run, a.out, a.warmup if not a.dry_run else 1, a.iters if not a.dry_run else 2, a.peer)
    for mod in ("seqio", "tensorflow"):
        if mod in sys.modules:
            print(f"error: {mod} was imported by the bench path; it must import without it", file=sys.stderr)
            return 2
    print(text)
    print(f"appended to {a.out} ({datetime.date.today().isoformat()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

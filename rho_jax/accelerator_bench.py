"""One command for a lent GPU/TPU: rho-jax's four modes and the PyTorch peer, side by side, with MFU.

  python -m rho_jax.accelerator_bench [--out=BENCHMARKS.md]      # scripts/accelerator_bench.sh
  python -m rho_jax.accelerator_bench --dry-run --out=/tmp/x.md  # tiny shape on CPU (CI)

Accelerator run: configs/bench_tinyllama.py (TinyLlama-1.1B shape, seq 2048, bf16 compute, f32 master
weights, vocabulary-chunked CE); on GPU cuDNN attention, on TPU the XLA attention. The peer is HF Llama
under torch.compile with bf16 autocast (GPU only; on TPU it is skipped). Modes alternate step by step.
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


def run(dry_run: bool, out: str, warmup: int, iters: int, peer: bool) -> str:
    import jax

    from rho_jax import sidebyside

    platform = jax.devices()[0].platform
    c = _config(dry_run, platform)
    use_peer = peer and platform in ("gpu", "cpu")
    t0 = time.time()
    rows = sidebyside.run(c, MODES, warmup, iters, peer_compile=use_peer and platform == "gpu",
                          device="cuda" if platform == "gpu" else "cpu", peer_eager=use_peer and platform != "gpu")
    name = "accelerator bench" + (" (DRY RUN: tiny shape on CPU, not a measurement)" if dry_run else "")
    text = sidebyside.table(c, rows, name, iters)
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
    a = p.parse_args(argv)
    if a.dry_run:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
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

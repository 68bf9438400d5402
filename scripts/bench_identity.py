"""Start-up cost of identifying the cached-mode reference, at TinyLlama-1.1B's shape (f32 params, 4.4 GB):

  before: load the whole Orbax checkpoint and sha256 every weight (`params_identity(load_weights(...))`, what
          every cached-mode start and every `rho-jax score` did; still the fallback for a model without
          model_meta.json);
  after:  read the identity `save_model` stored in model_meta.json (`checkpoint.model_identity`).

    python scripts/bench_identity.py [--dir=/tmp/rho_identity_bench] [--repeats=2] [--keep]

The params are random f32 arrays written piecewise into .npy memmaps (never a second copy in memory), saved
once with `checkpoint.save_model` (which computes the digest: its one-time cost is timed too), then deleted.
Each measurement runs in a fresh process (its peak RSS is its own); "cold" evicts the checkpoint's files from
the page cache first (posix_fadvise DONTNEED, per file: no root needed, nothing else is dropped), "warm" reads
them right after another read. Prints one JSON line per measurement and a summary; removes everything unless
--keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINYLLAMA = dict(vocab_size=32000, d_model=2048, n_layers=22, n_heads=32, n_kv_heads=4, d_ff=5632,
                 rope_theta=10000.0, rms_eps=1e-5, max_positions=2048, tie_embeddings=False, arch="llama")


def make_model(directory: Path, shape: dict) -> dict:
    """Saves a random model of `shape` (ModelConfig fields) to `directory`; returns the one-time costs."""
    import jax
    import numpy as np

    from rho_jax import checkpoint, model

    cfg = model.ModelConfig(**shape)
    scratch = directory.parent / (directory.name + ".npy")
    scratch.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shapes, treedef = jax.tree_util.tree_flatten(model.param_shapes(cfg))
    arrays = []
    for i, s in enumerate(shapes):
        a = np.lib.format.open_memmap(scratch / f"{i}.npy", mode="w+", dtype=s.dtype, shape=s.shape)
        flat = a.reshape(-1)
        for start in range(0, flat.size, 1 << 24):  # 64 MB at a time
            n = min(1 << 24, flat.size - start)
            flat[start:start + n] = rng.standard_normal(n, dtype=np.float32) * 0.02
        a.flush()
        arrays.append(a)
    params = jax.tree_util.tree_unflatten(treedef, arrays)
    n_params = sum(a.size for a in arrays)
    t0 = time.perf_counter()
    digest = checkpoint.params_identity(params)
    t_digest = time.perf_counter() - t0
    t0 = time.perf_counter()
    checkpoint.save_model(cfg, params, str(directory), step=0)
    t_save = time.perf_counter() - t0
    del params, arrays
    shutil.rmtree(scratch)
    size = sum(p.stat().st_size for p in (directory / "params").rglob("*") if p.is_file())
    return {"params": n_params, "bytes_on_disk": size, "digest_s": round(t_digest, 3),
            "save_model_s (params write + digest + meta)": round(t_save, 2), "identity": digest}


def evict(directory: Path) -> None:
    """Drops the checkpoint's files (only them) from the page cache."""
    for p in directory.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def measure(directory: str, how: str) -> None:
    """(In a fresh process) times one identification of the model at `directory`; prints JSON."""
    from rho_jax import checkpoint

    t0 = time.perf_counter()
    if how == "hash":
        identity = checkpoint.params_identity(checkpoint.load_weights(directory, "reference")[1])
    else:
        identity = checkpoint.model_identity(directory, "reference")
    seconds = time.perf_counter() - t0
    # VmHWM: this process's own peak (ru_maxrss would carry the parent's peak over fork + exec)
    hwm_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    rss_gb = hwm_kib / 2**20
    print(json.dumps({"how": how, "seconds": round(seconds, 4), "peak_rss_gib": round(rss_gb, 2),
                      "identity": identity}))


def run_child(directory: Path, how: str, cold: bool) -> dict:
    if cold:
        evict(directory)
    out = subprocess.run([sys.executable, __file__, "--measure", how, "--dir", str(directory)], check=True,
                         capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["cache"] = "cold" if cold else "warm"
    print(json.dumps(row), flush=True)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/rho_identity_bench/model")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--small", action="store_true", help="a 2-layer, d=256 model: a smoke test of this script")
    ap.add_argument("--measure", choices=("hash", "meta"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    if args.measure:
        return measure(args.dir, args.measure)
    directory = Path(args.dir)
    if directory.exists():
        shutil.rmtree(directory)
    shape = {**TINYLLAMA, "n_layers": 2, "d_model": 256, "d_ff": 512, "n_heads": 4, "vocab_size": 1000} \
        if args.small else TINYLLAMA
    made = make_model(directory, shape)
    print(json.dumps(made), flush=True)
    rows = []
    try:
        for _ in range(args.repeats):
            for how in ("hash", "meta"):
                rows += [run_child(directory, how, cold=True), run_child(directory, how, cold=False)]
    finally:
        if not args.keep:
            shutil.rmtree(directory.parent)
    assert {r["identity"] for r in rows} == {made["identity"]}, "the stored identity must equal the hash"
    summary = {f"{how}/{cache}": sorted(r["seconds"] for r in rows if (r["how"], r["cache"]) == (how, cache))
               for how in ("hash", "meta") for cache in ("cold", "warm")}
    print(json.dumps({"summary_seconds": summary}), flush=True)


if __name__ == "__main__":
    main()

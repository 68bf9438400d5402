"""Benchmarks of the training reader and of `rho-jax score` on the prepared benchmark corpora
(called by scripts/bench_data.py: `python scripts/bench_data.py read|score --tokens=20M [...]`).

read:  one full epoch of the Grain reader over $RHO_JAX_CACHE/bench/prepared-<tokens>-<seq_len>, one
       process reading every row (process_count 1), global batch --batch; tokens/s counts row slots
       (batch x seq_len, what a step consumes), and the multiple of what one host of
       configs/tinyllama_owm_slm.py's slice consumes at its estimate (rho_jax/estimate.py).
score: `score_job.run` with a tiny random reference (d=--ref_d_model, 1 layer, vocab_size = the tokenizer's)
       over the same rows into $RHO_JAX_CACHE/bench/scores-<tokens>-<seq_len>[-spN] (fresh each time);
       --max_rows=N scores only the shards holding the first N rows (data.max_rows), --seconds=S stops after
       S seconds: time-bounded runs.
Peak RSS: bench_data.track_rss (this process and its children, sampled every 0.1 s).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
V4_CHIPS_PER_HOST = 4  # a v4 TPU VM host drives 4 chips


def _options(rest):
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64, help="global batch (rows)")
    ap.add_argument("--threads", type=int, default=4, help="Grain read threads")
    ap.add_argument("--prefetch", type=int, default=8, help="Grain prefetch buffer (batches)")
    ap.add_argument("--max_batches", type=int, default=0, help="> 0: read: stop after this many batches")
    ap.add_argument("--max_rows", type=int, default=0, help="> 0: score: only the shard(s) holding the first N rows")
    ap.add_argument("--ref_d_model", type=int, default=16, help="score: the tiny reference's width")
    ap.add_argument("--seconds", type=float, default=0, help="> 0: score: stop after this wall time (a partial run)")
    return ap.parse_args(rest)


def host_consumption() -> float:
    """Tokens/s one host of configs/tinyllama_owm_slm.py's slice consumes at its estimate."""
    from rho_jax import estimate

    spec = importlib.util.spec_from_file_location("cfg", REPO / "configs" / "tinyllama_owm_slm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    e = estimate.estimate(mod.get_config(), mod.SLICE)
    slice_tokens_per_s = e.chips * e.peak_flops * e.mfu / (e.train_flops_per_token + e.selection_flops_per_token)
    return slice_tokens_per_s / (e.chips / V4_CHIPS_PER_HOST)


def read(args, rest) -> dict:
    import bench_data

    from rho_jax.data import reader, vocab

    opt = _options(rest)
    prepared = bench_data.prepared_path(args.tokens, args.seq_len, bench_data.suffix(args))
    vocab_id = vocab.vocabulary_identity(bench_data.vocab_file(args))
    with bench_data.track_rss() as rss:
        t_start = time.perf_counter()
        comps = reader.open_components(prepared, seq_len=args.seq_len, vocab_identity=vocab_id)
        pipe = reader.Reader(comps, opt.batch, seed=0, read_threads=opt.threads, prefetch=opt.prefetch)
        startup = time.perf_counter() - t_start
        n_batches = pipe.epoch_rows // opt.batch
        if opt.max_batches:
            n_batches = min(n_batches, opt.max_batches)
        next(pipe)
        t0 = time.perf_counter()
        for _ in range(n_batches - 1):
            next(pipe)
        seconds = time.perf_counter() - t0
    tokens = (n_batches - 1) * opt.batch * args.seq_len
    per_host = host_consumption()
    return {"stage": "read", "tokens": tokens, "rows": (n_batches - 1) * opt.batch, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "peak_rss_mb": rss["peak_rss_mb"], "startup_s": startup,
            "workers": f"{opt.threads} threads", "v4_host_tokens_per_s": per_host,
            "x_v4_host": tokens / seconds / per_host, "batch": opt.batch}


def score(args, rest) -> dict:
    import bench_data
    import jax
    import numpy as np

    from rho_jax import checkpoint, config as config_lib, model, score_job
    from rho_jax import score as score_lib
    from rho_jax.data import rows, vocab

    opt = _options(rest)
    tag, v = bench_data.suffix(args), bench_data.vocab_file(args)
    prepared = bench_data.prepared_path(args.tokens, args.seq_len, tag)
    root, d, n_vocab = bench_data.bench_dir(), opt.ref_d_model, vocab.tokenizer_vocab_size(v)
    ref_dir = root / f"reference-d{d}-v{n_vocab}-{args.seq_len}"
    out = root / f"scores-{args.tokens}-{args.seq_len}{tag}"
    c = config_lib.base_config()
    c.model.update(vocab_size=n_vocab, d_model=d, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=2 * d,
                   max_positions=args.seq_len)
    if not (ref_dir / checkpoint.MODEL_CONFIG_FILE).exists():
        cfg = config_lib.model_config(c)
        checkpoint.save_model(cfg, jax.tree.map(np.asarray, model.init_params(cfg, jax.random.PRNGKey(0))),
                              str(ref_dir))
    shutil.rmtree(out, ignore_errors=True)
    c.data.update(vocab=v, seq_len=args.seq_len, prepared=str(prepared), score_cache=str(out), max_rows=opt.max_rows)
    c.init.reference = str(ref_dir)
    c.train.batch_size = opt.batch
    c.objective.ce_chunk = 1024  # never hold f32 [B, L, V] logits
    calls = [0]
    make_scorer = score_lib.reference_scorer

    def counting(*a, **kw):  # counts the scored micro-batches (a partial run has no manifest)
        fn = make_scorer(*a, **kw)

        def call(*x):
            out = fn(*x)
            calls[0] += 1
            return out
        call.__dict__.update(fn.__dict__)  # jitted, param_shardings, batch_sharding
        return call

    score_lib.reference_scorer = counting
    t0 = time.perf_counter()
    with bench_data.track_rss() as rss:
        job = threading.Thread(target=score_job.run, args=(c,), kwargs={"progress": False}, daemon=True)
        job.start()
        job.join(opt.seconds or None)
    seconds = time.perf_counter() - t0
    tokens = calls[0] * opt.batch * args.seq_len
    complete = not job.is_alive()
    if complete:
        tokens = rows.read_manifest(out, "rho_jax.scores/1")["rows"] * args.seq_len
    return {"stage": "score" if complete else f"score (first {seconds:.0f} s)", "tokens": tokens,
            "seconds": seconds, "tokens_per_s": tokens / seconds, "peak_rss_mb": rss["peak_rss_mb"],
            "workers": "1 CPU device", "batch": opt.batch, "complete": complete,
            "corpus_rows": sum(s["rows"] for s in rows.read_manifest(prepared)["shards"])}

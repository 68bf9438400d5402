"""`rho-jax bench`: step time, tokens/s, MFU and peak memory for CLM, SLM (cached / online) and
score-only, on random tokens. Imports neither seqio nor tensorflow, so it runs on a bare GPU box.
"""

from __future__ import annotations

import datetime
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from rho_jax import config as config_lib
from rho_jax import flops, model, score, sharding, train
from rho_jax.batch import INPUT_KEYS
from rho_jax.data import inputs

MODES = ("clm", "slm_cached", "slm_online", "score")


def random_batch(rng: np.random.Generator, batch: int, seq_len: int, vocab: int, docs_per_row: int = 1) -> dict:
    """Random tokens packed `docs_per_row` to a row, plus random cached scores."""
    tokens = rng.integers(0, vocab, (batch, seq_len), dtype=np.int32)
    bounds = np.linspace(0, seq_len, docs_per_row + 1).astype(int)
    seg = np.zeros((batch, seq_len), np.int32)
    pos = np.zeros((batch, seq_len), np.int32)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        seg[:, a:b], pos[:, a:b] = i + 1, np.arange(b - a)
    return {"tokens": tokens, "segment_ids": seg, "positions": pos,
            "ref_ce": rng.exponential(2.0, (batch, seq_len)).astype(np.float32),
            "ref_entropy": rng.exponential(2.0, (batch, seq_len)).astype(np.float32)}


def _peak_memory() -> tuple[float, str]:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**30, "device peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "host max RSS"


def build_mode(config, mode: str, host: dict | None = None):
    """A zero-argument callable running one step of `mode` (blocking on its output), its FLOPs/token
    and its compiled memory. `host` is the numpy batch (default: random, two documents per row)."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.objective.mode = "clm" if mode == "clm" else "slm"
        c.objective.reference = "online" if mode in ("slm_online", "score") else "cached"
    mesh = sharding.mesh_from_config(c.mesh)
    rules = config_lib.mesh_rules(c)
    m_cfg = config_lib.model_config(c)
    b, seq = c.train.batch_size, c.data.seq_len
    if host is None:
        host = random_batch(np.random.default_rng(0), b, seq, m_cfg.vocab_size, docs_per_row=2)
    bsh = sharding.batch_sharding(mesh)
    batch = {k: jax.device_put(v, bsh) for k, v in host.items()}
    spec = train.StepSpec.from_config(c, m_cfg, m_cfg)
    tx = train.make_optimizer(c.train)
    if mode == "score":
        scorer = score.reference_scorer(m_cfg, mesh, rules, c.objective.ce_chunk)  # what `rho-jax score` runs
        params = jax.jit(lambda r: model.init_params(m_cfg, r), out_shardings=scorer.param_shardings)(
            jax.random.PRNGKey(1))
        sub = {k: batch[k] for k in INPUT_KEYS}
        with sharding.mesh_context(mesh):
            mem = _compiled_memory(scorer.jitted, params, sub)
        return (lambda: jax.block_until_ready(scorer(params, sub))), flops.reference_flops_per_token(m_cfg, seq), mem
    step = train.compile_train_step(spec, tx, mesh, rules)
    holder = {"state": train.init_state(spec, tx, mesh, jax.random.PRNGKey(0), rules=rules)}
    ref = None
    if spec.online:
        ref = jax.jit(lambda r: model.init_params(m_cfg, r), out_shardings=step.ref_shardings)(jax.random.PRNGKey(2))

    def one():
        holder["state"], metrics = step(holder["state"], batch, ref)
        return jax.block_until_ready(metrics["loss"])

    flops_tok = flops.train_flops_per_token(m_cfg, seq)
    if spec.online:  # MFU counts the reference forward as work done
        flops_tok += flops.reference_flops_per_token(m_cfg, seq)
    mem = _compiled_memory(step.jitted, holder["state"], {k: batch[k] for k in step.batch_shardings})
    return one, flops_tok, mem


def _compiled_memory(jitted, *args) -> float | None:
    """GiB the compiled program needs per device (arguments + outputs + temporaries - donated aliases)."""
    try:
        m = jitted.lower(*args).compile().memory_analysis()
        total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
        return total / 2**30
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None


def run(config, modes=MODES, warmup: int = 2, iters: int = 5) -> list[dict]:
    """Times the modes round-robin (one step of each in turn), so background load hits all alike."""
    runners = {m: build_mode(config, m) for m in modes}
    for fn, _, _ in runners.values():
        for _ in range(warmup):
            fn()
    times = {m: [] for m in modes}
    for _ in range(iters):
        for m, (fn, _, _) in runners.items():
            t0 = time.perf_counter()
            fn()
            times[m].append(time.perf_counter() - t0)
    b, seq = config.train.batch_size, config.data.seq_len
    peak = flops.device_peak_flops(override=config.train.peak_flops)
    mem, mem_kind = _peak_memory()
    rows = []
    for m in modes:
        t = statistics.median(times[m])
        tok_s = b * seq / t
        rows.append({"mode": m, "step_s": t, "tokens_per_s": tok_s, "peak_mem_gib": mem, "mem_kind": mem_kind,
                     "compiled_mem_gib": runners[m][2], "mfu": flops.mfu(tok_s * runners[m][1], jax.device_count(), peak)})
    clm = next((r for r in rows if r["mode"] == "clm"), None)
    for r in rows:
        r["vs_clm"] = r["step_s"] / clm["step_s"] if clm and r["mode"] != "score" else None
    return rows


def table(config, rows: list[dict], name: str, iters: int) -> str:
    dev = jax.devices()[0]
    m = config.model
    peak = rows[0]
    head = (f"### {name} — {jax.device_count()}× {dev.device_kind} ({dev.platform}), jax {jax.__version__}, "
            f"{datetime.date.today().isoformat()}\n\n"
            f"model d={m.d_model} L={m.n_layers} H={m.n_heads}/{m.n_kv_heads} ff={m.d_ff} V={m.vocab_size}, "
            f"dtype {m.dtype}, remat {m.remat}, attention {m.attention}, ce_chunk {config.objective.ce_chunk}; "
            f"batch {config.train.batch_size} × seq {config.data.seq_len}. Median of {iters} steps per mode, "
            f"timed round-robin. Process peak memory over all modes: {peak['peak_mem_gib']:.2f} GiB "
            f"({peak['mem_kind']}).\n\n"
            "| mode | step (ms) | tokens/s | MFU | × CLM step | compiled memory / device |\n|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (peak unknown)"
        ratio = f"{r['vs_clm']:.3f}" if r["vs_clm"] is not None else "—"
        mem = f"{r['compiled_mem_gib']:.2f} GiB" if r["compiled_mem_gib"] is not None else "n/a"
        lines.append(f"| {r['mode']} | {1e3 * r['step_s']:.1f} | {r['tokens_per_s']:,.0f} | {mfu} | {ratio} | {mem} |")
    return head + "\n".join(lines) + "\n"


def input_table(config, rows: list[dict], batches: int = 200) -> str:
    """The training reader (Grain over config.data.prepared) against the CLM step's appetite."""
    pipe = inputs.input_for_training(config)
    next(pipe)  # start-up (checks, threads) is not throughput
    t0 = time.perf_counter()
    for _ in range(batches):
        next(pipe)
    tokens_per_s = batches * config.train.batch_size * config.data.seq_len / (time.perf_counter() - t0)
    clm = next(r for r in rows if r["mode"] == "clm")
    return (f"\nTraining reader (Grain over {config.data.prepared}, {batches} batches of {config.train.batch_size} x "
            f"{config.data.seq_len}): {tokens_per_s:,.0f} tokens/s = {tokens_per_s / clm['tokens_per_s']:.1f}x the "
            f"CLM step's consumption ({clm['tokens_per_s']:,.0f} tokens/s).\n")

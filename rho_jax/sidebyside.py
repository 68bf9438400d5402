"""`rho-jax bench --peer`: rho-jax against the PyTorch peer (rho_jax.peer), same shape, same batch,
same process, alternating step by step so background load hits both alike; prints the ratios.

Each round runs one step of every (mode, runner) in turn: rho-jax, the eager peer, and the
`torch.compile` peer where it compiles. Batches hold one document per row (the peer's plain causal
attention); rho-jax still receives segment ids and positions, as in training.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time

import jax
import numpy as np

from rho_jax import bench, config as config_lib, flops

PEER_MODES = ("clm", "slm_online", "score")


def _with_model(config, overrides: dict):
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.model.update(overrides)
    return c


def build(config, modes, peer_compile: bool = True, device: str = "cpu", peer_eager: bool = True,
          variants: dict | None = None) -> dict:
    """{(mode, runner): (step_fn, flops_per_token)} for runner in the rho-jax variants (name -> model field
    overrides; default: the config as is), torch eager, torch compile."""
    from rho_jax import peer

    c = config
    m_cfg = config_lib.model_config(c)
    host = bench.random_batch(np.random.default_rng(0), c.train.batch_size, c.data.seq_len, m_cfg.vocab_size,
                              docs_per_row=1)
    runners = {}
    for mode in modes:
        for name, overrides in (variants or {"rho-jax": {}}).items():
            fn, flops_tok, _ = bench.build_mode(_with_model(c, overrides), mode, host)
            runners[(mode, name)] = (fn, flops_tok)
        kinds = (("torch eager",) if peer_eager else ()) + (("torch.compile",) if peer_compile else ())
        for kind in kinds:
            p = peer.Peer(m_cfg, mode, host, ratio=c.objective.ratio, lr=c.train.lr, compile=kind == "torch.compile",
                          dtype=m_cfg.dtype, device=device)
            runners[(mode, kind)] = (p.step, flops_tok)
    return runners


def parse_variants(text: str) -> dict | None:
    """'name:field=v,field=v;name2:...' -> {'rho-jax name': {field: value}}; '' -> None (the config as is)."""
    if not text:
        return None
    out = {}
    for item in text.split(";"):
        name, _, fields = item.partition(":")
        kv = {}
        for f in filter(None, fields.split(",")):
            k, v = f.split("=", 1)
            kv[k] = {"true": True, "false": False}.get(v.lower(), int(v) if v.lstrip("-").isdigit() else v)
        out[f"rho-jax {name}"] = kv
    return out


def _is_peer(runner: str) -> bool:
    return runner.startswith("torch")


def run(config, modes=PEER_MODES, warmup: int = 2, iters: int = 5, peer_compile: bool = True,
        device: str = "cpu", peer_eager: bool = True, variants: dict | None = None) -> list[dict]:
    runners = build(config, modes, peer_compile, device, peer_eager, variants)
    compile_failed = []
    for key, (fn, _) in list(runners.items()):
        try:
            for _ in range(warmup):
                fn()
        except Exception as e:  # noqa: BLE001 - torch.compile needs a working toolchain; report, go on
            if key[1] != "torch.compile":
                raise
            compile_failed.append(f"{key[0]}: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            del runners[key]
    times = {k: [] for k in runners}
    for _ in range(iters):
        for k, (fn, _) in runners.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    tokens = config.train.batch_size * config.data.seq_len
    peak = flops.device_peak_flops(override=config.train.peak_flops)
    rows = []
    for (mode, runner), ts in times.items():
        t = statistics.median(ts)
        rows.append({"mode": mode, "runner": runner, "step_s": t, "tokens_per_s": tokens / t,
                     "spread": (min(ts), max(ts)),
                     "mfu": flops.mfu(tokens / t * runners[(mode, runner)][1], jax.device_count(), peak)})
    for r in rows:
        peers = [q["tokens_per_s"] for q in rows if q["mode"] == r["mode"] and _is_peer(q["runner"])]
        r["vs_best_peer"] = r["tokens_per_s"] / max(peers) if not _is_peer(r["runner"]) and peers else None
    if compile_failed:
        rows.append({"compile_failed": compile_failed})
    return rows


def _host_cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        model = ""
    return f"{model or platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores"


def table(config, rows: list[dict], name: str, iters: int) -> str:
    import torch
    import transformers

    dev = jax.devices()[0]
    m = config.model
    failed = [r for r in rows if "compile_failed" in r]
    rows = [r for r in rows if "mode" in r]
    head = (f"### {name} — {jax.device_count()}× {dev.device_kind} ({dev.platform}, {_host_cpu()}), "
            f"{datetime.date.today().isoformat()}; jax {jax.__version__}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}\n\n"
            f"model d={m.d_model} L={m.n_layers} H={m.n_heads}/{m.n_kv_heads} ff={m.d_ff} V={m.vocab_size}, "
            f"dtype {m.dtype}, remat {m.remat}, attention {m.attention}, scan_layers "
            f"{config_lib.layers_scanned(m.get('scan_layers'))}, ce_chunk {config.objective.ce_chunk}; batch {config.train.batch_size} × "
            f"seq {config.data.seq_len}, one document per row. Median of {iters} steps, all runners alternating "
            f"step by step in one process.\n\n"
            "| mode | runner | step (ms) | tokens/s | min–max step (ms) | MFU | rho-jax ÷ best peer |\n"
            "|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        ratio = f"**{r['vs_best_peer']:.2f}**" if r["vs_best_peer"] is not None else ""
        lo, hi = r["spread"]
        lines.append(f"| {r['mode']} | {r['runner']} | {1e3 * r['step_s']:.1f} | {r['tokens_per_s']:,.0f} | "
                     f"{1e3 * lo:.0f}–{1e3 * hi:.0f} | {mfu} | {ratio} |")
    text = head + "\n".join(lines) + "\n"
    for f in failed:
        text += "\ntorch.compile failed: " + "; ".join(f["compile_failed"]) + "\n"
    return text

"""Op-level profile of one step, rho-jax and the PyTorch peer, grouped alike, from one command:

  python scripts/profile_step.py configs/bench_demo.py [--mode clm|score] [--steps 3] [--rounds 2]

rho-jax: the compiled step runs under `jax.profiler.trace`; each executed HLO thunk (fusion, dot, copy, ...) is
mapped to a group by its instruction's source metadata in the compiled HLO (the model.py / objective.py /
optax line it came from, forward and backward alike). The peer (rho_jax.peer, HF Llama eager) runs under
`torch.profiler`; forward ops are grouped by the HF module they run in, backward ops by the forward op that
created their autograd node (sequence number), the optimizer by torch's own `Optimizer.step` range.
Standalone copies/transposes form their own group on both sides (a fused one counts where it is fused).
Groups: QKV/O, MLP, attention core, CE/LM head, optimizer, copies/transposes, other (norms, RoPE, embedding,
residuals, the layer loop, masks). Sums are op time per step (threads' op time added up), beside the wall step.
Both sides alternate round by round in one process.

The jax profiler itself slows XLA:CPU's step 1.5-2x (with its host and Python tracers off too), torch's hardly,
so profiled milliseconds do not compare across the sides. Each side also runs its steps without a profiler; the
"est." columns are a group's share of its side's op time times that side's unprofiled step.
"""
import argparse
import collections
import glob
import importlib.util
import os
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rho_jax import bench, config as config_lib, model, peer, score, sharding, train  # noqa: E402

GROUPS = ("QKV/O", "MLP", "attention core", "CE/LM head", "optimizer", "copies/transposes", "other")
CONTAINERS = {"while", "conditional", "call"}  # their bodies' thunks are traced one by one


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _scope(scope: str, op_name: str) -> bool:
    """Whether op_name runs inside `scope` (a module or named scope; `jvp(scope)` in a traced function)."""
    return re.search(rf"[/(]{scope}[/)]", op_name) is not None


def op_group(opcode: str, name: str, op_name: str) -> str:
    """The group of one compiled HLO instruction, from its opcode and its op_name metadata (module path,
    einsum spec, the named scopes of model.py / objective.py / train.py; the backward keeps the forward's)."""
    if opcode in ("copy", "transpose") or re.match(r"(copy|transpose)[_.\d]*fusion", name):
        return "copies/transposes"
    if _scope("optimizer", op_name):
        return "optimizer"
    if _scope("mlp", op_name):
        return "MLP"
    if _scope("rope", op_name):
        return "other"
    if _scope("attention_core", op_name) or _scope("attention_mask", op_name):
        return "attention core"
    if _scope("attn", op_name):  # the rest of model.Attention: its four projections (forward and backward)
        return "QKV/O"
    if _scope("lm_head", op_name) or _scope("cross_entropy", op_name) or _scope("token_entropy", op_name):
        return "CE/LM head"
    return "other"


def hlo_groups(hlo_text: str) -> dict:
    """{instruction name: group, or None for loops and calls} for every instruction of the compiled HLO."""
    out = {}
    pat = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([\w\-]+)\(")
    for text in hlo_text.splitlines():
        m = pat.match(text.split(", metadata=")[0])
        if not m:
            continue
        name, opcode = m.groups()
        op_name = re.search(r'op_name="([^"]*)"', text)
        out[name] = None if opcode in CONTAINERS else op_group(opcode, name, op_name.group(1) if op_name else "")
    return out


def jax_runner(config, mode: str, host: dict):
    """(one step, compiled HLO text) for rho-jax's `mode` at `config`."""
    fn, _, _ = bench.build_mode(config, mode, host)
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.objective.mode = "clm"
    mesh, rules, m_cfg = sharding.mesh_from_config(c.mesh), config_lib.mesh_rules(c), config_lib.model_config(c)
    b_sh = sharding.batch_sharding(mesh)
    batch = {k: jax.device_put(v, b_sh) for k, v in host.items()}
    if mode == "score":
        scorer = score.reference_scorer(m_cfg, mesh, rules, c.objective.ce_chunk)
        params = jax.jit(lambda r: model.init_params(m_cfg, r), out_shardings=scorer.param_shardings)(
            jax.random.PRNGKey(1))
        args, jitted = (params, {k: batch[k] for k in ("tokens", "segment_ids", "positions")}), scorer.jitted
    else:
        spec, tx = train.StepSpec.from_config(c, m_cfg, None), train.make_optimizer(c.train)
        step = train.compile_train_step(spec, tx, mesh, rules)
        state = jax.eval_shape(lambda r: train.init_state(spec, tx, mesh, r, rules=rules), jax.random.PRNGKey(0))
        args, jitted = (state, {k: batch[k] for k in step.batch_shardings}), step.jitted
    with sharding.mesh_context(mesh):
        text = jitted.lower(*args).compile().as_text()
    return fn, text


def profile_jax(fn, hlo_text: str, steps: int) -> dict:
    groups = hlo_groups(hlo_text)
    d = tempfile.mkdtemp(prefix="jax_trace_")
    t0 = time.perf_counter()
    with jax.profiler.trace(d):
        for _ in range(steps):
            fn()
    wall = (time.perf_counter() - t0) / steps
    data = jax.profiler.ProfileData.from_file(sorted(glob.glob(d + "/**/*.xplane.pb", recursive=True))[-1])
    ms = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            for e in line.events:
                g = groups.get(e.name, "") if not e.name.startswith("end: ") else ""
                if g:
                    ms[g] += e.duration_ns / 1e6 / steps
    return {"groups": ms, "wall": wall * 1e3}


class TorchGroups:
    """Forward hooks that open a record_function range per HF module group."""

    NAMES = (("q_proj", "QKV/O"), ("k_proj", "QKV/O"), ("v_proj", "QKV/O"), ("o_proj", "QKV/O"), ("mlp", "MLP"),
             ("self_attn", "attention core"), ("lm_head", "CE/LM head"))

    def __init__(self, modules):
        import torch

        self.open = {}
        for m in modules:
            for name, sub in m.named_modules():
                group = next((g for n, g in self.NAMES if name.split(".")[-1] == n), None)
                if group:
                    sub.register_forward_pre_hook(self._enter(group, id(sub)))
                    sub.register_forward_hook(self._exit(id(sub)))
        self.torch = torch

    def _enter(self, group, key):
        def hook(*_):
            rf = self.torch.autograd.profiler.record_function(f"grp:{group}")
            rf.__enter__()
            self.open[key] = rf
        return hook

    def _exit(self, key):
        def hook(*_):
            self.open.pop(key).__exit__(None, None, None)
        return hook


def _torch_op_group(name: str):
    if name in ("aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy", "aten::transpose",
                "aten::t", "aten::permute"):
        return "copies/transposes"
    if any(k in name for k in ("log_softmax", "nll_loss", "cross_entropy", "logsumexp")):
        return "CE/LM head"
    return None


def profile_torch(p, steps: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            p.step()
    wall = (time.perf_counter() - t0) / steps
    events = prof.events()
    fwd_group = {}  # sequence_nr -> group of the forward op that recorded the autograd node
    for e in events:
        g = _range_group(e)
        if g and getattr(e, "sequence_nr", -1) >= 0 and not e.name.startswith("autograd::"):
            fwd_group.setdefault(e.sequence_nr, g)
    ms = collections.Counter()
    for e in events:
        if e.name.startswith("grp:") or e.name.startswith("Optimizer.") or e.name.startswith("ProfilerStep"):
            continue
        g = _event_group(e, fwd_group)
        ms[g] += e.self_cpu_time_total / 1e3 / steps
    del torch
    return {"groups": ms, "wall": wall * 1e3}


def _ancestors(e):
    while e is not None:
        yield e
        e = e.cpu_parent


def _range_group(e):
    for a in _ancestors(e):
        if a.name.startswith("Optimizer.") or a.name == "peer:clip":
            return "optimizer"
        if a.name.startswith("grp:"):
            return a.name[4:]
    return None


def _event_group(e, fwd_group):
    g = _torch_op_group(e.name)
    if g == "copies/transposes":
        return g
    r = _range_group(e)
    if r:
        return r
    for a in _ancestors(e):  # a backward op: the group of the forward op that made its node
        if getattr(a, "sequence_nr", -1) >= 0 and "Backward" in a.name and a.sequence_nr in fwd_group:
            return fwd_group[a.sequence_nr]
    return g or "other"


def plain_wall(fn, steps: int) -> float:
    """ms per step of `fn` without a profiler (the jax profiler slows XLA:CPU's step 1.5-2x, unevenly)."""
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps * 1e3


def table(config, mode, jr, tr, threads, load) -> str:
    """Per group: op time under each profiler, its share of that side's op time, and the share times the side's
    step without a profiler (the estimate that compares the sides; it assumes the profiler's slow-down is even)."""
    import torch

    m = config.model
    head = (f"#### Op-level profile, {mode}, d={m.d_model} L={m.n_layers} H={m.n_heads}/{m.n_kv_heads} ff={m.d_ff} "
            f"V={m.vocab_size}, batch {config.train.batch_size} × seq {config.data.seq_len}; jax {jax.__version__}, "
            f"torch {torch.__version__}; torch threads {threads}; load average {load}\n\n"
            "| group | rho-jax profiled (ms/step) | peer profiled (ms/step) | rho-jax share | peer share "
            "| rho-jax est. (ms/step) | peer est. (ms/step) | rho-jax ÷ peer time (est.) |\n"
            "|---|---|---|---|---|---|---|---|\n")
    sa, sb = sum(jr["groups"].values()), sum(tr["groups"].values())
    rows = []
    for g in GROUPS:
        a, b = jr["groups"].get(g, 0.0), tr["groups"].get(g, 0.0)
        ea, eb = a / sa * jr["plain"], b / sb * tr["plain"]
        ratio = f"{ea / eb:.2f}" if eb > 0 else "—"
        rows.append(f"| {g} | {a:.1f} | {b:.1f} | {a / sa:.1%} | {b / sb:.1%} | {ea:.1f} | {eb:.1f} | {ratio} |")
    rows.append(f"| sum of ops | {sa:.1f} | {sb:.1f} | 100% | 100% | | | |")
    rows.append(f"| wall step, under the profiler | {jr['wall']:.1f} | {tr['wall']:.1f} | | | | | |")
    rows.append(f"| wall step, no profiler | | | | | {jr['plain']:.1f} | {tr['plain']:.1f} "
                f"| {jr['plain'] / tr['plain']:.2f} |")
    return head + "\n".join(rows) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--mode", default="clm", choices=("clm", "score"))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    import torch

    config = load_config(a.config)
    m_cfg = config_lib.model_config(config)
    host = bench.random_batch(np.random.default_rng(0), config.train.batch_size, config.data.seq_len,
                              m_cfg.vocab_size, docs_per_row=1)
    fn, text = jax_runner(config, a.mode, host)
    p = peer.Peer(m_cfg, a.mode, host, ratio=config.objective.ratio, lr=config.train.lr)
    TorchGroups([x for x in (p.model, p.ref) if x is not None])
    for _ in range(2):
        fn()
        p.step()
    runs = {"jax": [], "torch": []}
    for _ in range(a.rounds):
        runs["jax"].append(dict(profile_jax(fn, text, a.steps), plain=plain_wall(fn, a.steps)))
        runs["torch"].append(dict(profile_torch(p, a.steps), plain=plain_wall(p.step, a.steps)))

    def median(rs):
        return {"groups": {g: statistics.median(r["groups"].get(g, 0.0) for r in rs) for g in GROUPS},
                "wall": statistics.median(r["wall"] for r in rs), "plain": statistics.median(r["plain"] for r in rs)}

    print(table(config, a.mode, median(runs["jax"]), median(runs["torch"]), torch.get_num_threads(),
                f"{os.getloadavg()[0]:.1f}"))


if __name__ == "__main__":
    main()

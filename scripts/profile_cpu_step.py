"""Where a CPU train step's time goes: each piece of the CLM step jitted alone and timed round-robin, plus the
compiled step's XLA cost analysis (FLOPs, bytes) and op counts for scanned vs unrolled layers.

  python scripts/profile_cpu_step.py configs/bench_tiny.py [iters]
"""
import sys, time, statistics, json
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__))))
import jax, jax.numpy as jnp, numpy as np
from rho_jax import bench, model, objective, train, config as config_lib
import importlib.util
cfgpath = sys.argv[1]
spec_ = importlib.util.spec_from_file_location("c", cfgpath); m = importlib.util.module_from_spec(spec_); spec_.loader.exec_module(m)
c = m.get_config()
mc = config_lib.model_config(c)
B, L = c.train.batch_size, c.data.seq_len
host = bench.random_batch(np.random.default_rng(0), B, L, mc.vocab_size, docs_per_row=1)
batch = {k: jnp.asarray(host[k]) for k in ("tokens", "segment_ids", "positions")}
params = model.init_params(mc, jax.random.PRNGKey(0))
tgt, valid = objective.shift_targets(batch["tokens"], batch["segment_ids"])
def loss(p):
    lg = model.forward(mc, p, batch["tokens"], batch["positions"], batch["segment_ids"])
    return objective.masked_mean(objective.cross_entropy(lg, tgt), valid.astype(jnp.float32))
def hid_loss(p):
    h = model.forward_hidden(mc, p, batch["tokens"], batch["positions"], batch["segment_ids"])
    return jnp.sum(h.astype(jnp.float32)**2)
logits = jax.random.normal(jax.random.PRNGKey(1), (B, L, mc.vocab_size))
def ce_only(lg):
    return objective.masked_mean(objective.cross_entropy(lg, tgt), valid.astype(jnp.float32))
def ce_onehot(lg):
    lse = jax.nn.logsumexp(lg, -1); t = jnp.sum(lg * jax.nn.one_hot(tgt, lg.shape[-1]), -1)
    return objective.masked_mean(lse - t, valid.astype(jnp.float32))
h = jax.random.normal(jax.random.PRNGKey(2), (B, L, mc.d_model))
def head(hh, w):
    return jnp.sum(jnp.einsum("bld,dv->blv", hh, w))
tx = train.make_optimizer(c.train); opt = tx.init(params)
fns = {
  "fwd_loss": jax.jit(loss),
  "fwd_bwd": jax.jit(jax.grad(loss)),
  "layers_fwd_bwd": jax.jit(jax.grad(hid_loss)),
  "ce_fwd_bwd(take)": jax.jit(jax.grad(ce_only)),
  "ce_fwd_bwd(onehot)": jax.jit(jax.grad(ce_onehot)),
  "head_fwd_bwd": jax.jit(jax.grad(head, argnums=(0, 1))),
  "adamw": jax.jit(lambda g, o, p: tx.update(g, o, p)),
}
args = {"fwd_loss": (params,), "fwd_bwd": (params,), "layers_fwd_bwd": (params,), "ce_fwd_bwd(take)": (logits,),
        "ce_fwd_bwd(onehot)": (logits,), "head_fwd_bwd": (h, params["lm_head"]), "adamw": (params, opt, params)}
for k, f in fns.items(): jax.block_until_ready(f(*args[k])); jax.block_until_ready(f(*args[k]))
ts = {k: [] for k in fns}
for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 5):
    for k, f in fns.items():
        t0 = time.perf_counter(); jax.block_until_ready(f(*args[k])); ts[k].append(time.perf_counter() - t0)
for k, v in ts.items(): print(f"{k:22s} {1e3*statistics.median(v):8.1f} ms")

import re  # noqa: E402
from rho_jax import sharding  # noqa: E402

for scan in (True, False):
    c2 = m.get_config()
    with c2.unlocked():
        c2.objective.mode = "clm"
        c2.model.scan_layers = scan
    mc2 = config_lib.model_config(c2)
    mesh = sharding.mesh_from_config(c2.mesh)
    rules = config_lib.mesh_rules(c2)
    sspec = train.StepSpec.from_config(c2, mc2, None)
    tx2 = train.make_optimizer(c2.train)
    step = train.compile_train_step(sspec, tx2, mesh, rules)
    state = train.init_state(sspec, tx2, mesh, jax.random.PRNGKey(0), rules=rules)
    with sharding.mesh_context(mesh):
        comp = step.jitted.lower(state, {k: host[k] for k in step.batch_shardings}).compile()
    ca = comp.cost_analysis()
    ca = ca[0] if isinstance(ca, list) else ca
    txt = comp.as_text()
    ops = {k: len(re.findall(rf"\b{k}\(", txt)) for k in ("dot", "copy", "transpose", "gather", "scatter",
                                                            "dynamic-update-slice")}
    print(json.dumps({"scan_layers": scan, "gflop_per_step": ca.get("flops", 0) / 1e9,
                      "gb_accessed": ca.get("bytes accessed", 0) / 1e9, "ops_incl_fused": ops}))

"""Per-device memory of the compiled SLM train step at a real config's shape, for each way of doing the
exact global selection (issue 14, item 3). Nothing is allocated: state and batch are abstract arrays with
their NamedShardings on simulated CPU devices; XLA compiles the whole step and reports its buffers.

  python scripts/selection_memory.py --config=configs/tinyllama_owm_slm.py \
      --variant=a:8:dots_with_no_batch_dims_saveable --variant=b:1:full [--json=out.json]

Each variant is `name:grad_accum:remat[:section.key=value ...]`, e.g. `b:1:full:model.attention_chunk=256`. It re-executes itself with
XLA_FLAGS=--xla_force_host_platform_device_count=<slice chips> when jax would see fewer devices.
The numbers are the CPU backend's buffer assignment (arguments + outputs + temporaries - donated
aliases): the TPU compiler fuses and lays out differently, so treat them as an estimate to within
tens of percent, and the differences between variants (same backend) as the meaningful part.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time


def _load(path):
    spec = importlib.util.spec_from_file_location("cfg", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def measure(config_path: str, grad_accum: int, remat: str, overrides: dict | None = None) -> dict:
    import jax
    import jax.numpy as jnp

    from rho_jax import config as config_lib, estimate, model, train

    mod = _load(config_path)
    c = mod.get_config()
    with c.unlocked():
        c.train.grad_accum = grad_accum
        c.model.remat = remat
        for key, value in (overrides or {}).items():
            section, field = key.split(".")
            c[section][field] = type(c[section][field])(value) if not isinstance(c[section][field], bool) \
                else value in ("1", "true", "True")
    config_lib.validate(c, jax.device_count())
    from rho_jax import sharding

    mesh = sharding.mesh_from_config(c.mesh)
    cfg = config_lib.model_config(c)
    rules = config_lib.mesh_rules(c)
    spec = train.StepSpec.from_config(c, cfg, None)
    tx = train.make_optimizer(c.train)
    step = train.compile_train_step(spec, tx, mesh, rules)
    p_shape = model.param_shapes(cfg)
    abstract = train.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=p_shape,
                                opt_state=jax.eval_shape(tx.init, p_shape),
                                rng=jax.eval_shape(lambda: jax.random.PRNGKey(0)), ema_params=None)
    state = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), abstract,
                         step.state_shardings)
    B, L = c.train.batch_size, c.data.seq_len
    batch = {k: jax.ShapeDtypeStruct((B, L), jnp.float32 if k.startswith("ref") else jnp.int32, sharding=sh)
             for k, sh in step.batch_shardings.items()}
    t0 = time.time()
    with sharding.mesh_context(mesh):
        compiled = step.jitted.lower(state, batch).compile()
    m = compiled.memory_analysis()
    e = estimate.estimate(c, mod.SLICE)
    gib = 2**30
    return {
        "config": os.path.basename(config_path), "slice": mod.SLICE, "devices": jax.device_count(),
        "grad_accum": grad_accum, "remat": remat, "scope": c.objective.scope,
        "attention_chunk": c.model.attention_chunk, "overrides": overrides or {},
        "rows_per_device_per_pass": B // grad_accum // sharding.data_parallel_size(mesh),
        "argument_gib": m.argument_size_in_bytes / gib, "output_gib": m.output_size_in_bytes / gib,
        "temp_gib": m.temp_size_in_bytes / gib, "alias_gib": m.alias_size_in_bytes / gib,
        "total_gib": (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                      - m.alias_size_in_bytes) / gib,
        "hbm_gib": estimate.SLICES[mod.SLICE].hbm_bytes / gib,
        "model_gflop_per_token": e.step_flops_per_token / 1e9,
        "hardware_gflop_per_token": e.hardware_flops_per_token / 1e9,
        "compile_s": time.time() - t0,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/tinyllama_owm_slm.py")
    p.add_argument("--variant", action="append", required=True, help="name:grad_accum:remat[:section.key=value ...]")
    p.add_argument("--json", default="", help="also write the rows here")
    a = p.parse_args(argv)
    chips = _chips(a.config)
    if f"device_count={chips}" not in os.environ.get("XLA_FLAGS", ""):
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={chips}")
        return subprocess.call([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])], env=env)
    rows = []
    for v in a.variant:
        name, accum, remat, *kv = v.split(":")
        row = {"variant": name, **measure(a.config, int(accum), remat, dict(x.split("=", 1) for x in kv))}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def _chips(config_path: str) -> int:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from rho_jax import estimate

    return estimate.SLICES[_load(config_path).SLICE].chips


if __name__ == "__main__":
    sys.exit(main())

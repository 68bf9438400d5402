"""Shared test helpers (plain functions): a tiny model config, packed batches with varying validity, meshes
over the 8 simulated devices, a few train steps, cached reference scores as `rho-jax score` writes them."""

import jax
import numpy as np

from rho_jax import config as config_lib
from rho_jax import score, sharding, train


def tiny_config(**objective):
    c = config_lib.base_config()
    c.model.update(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_positions=64)
    c.train.update(batch_size=8, lr=3e-3, warmup_steps=1, steps=10)
    c.data.seq_len = 24
    c.objective.update(**objective)
    return c


def packed_batch(seed=0, b=8, seq=24, vocab=97):
    """Rows with 1-3 packed documents and right padding, so validity varies across rows."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab, (b, seq)).astype(np.int32)
    seg = np.zeros((b, seq), np.int32)
    pos = np.zeros((b, seq), np.int32)
    for r in range(b):
        cuts = sorted(rng.choice(np.arange(3, seq - 2), size=r % 3, replace=False).tolist())
        end = seq - (r % 4)
        bounds = [0] + cuts + [end]
        for d, (a, e) in enumerate(zip(bounds[:-1], bounds[1:])):
            seg[r, a:e], pos[r, a:e] = d + 1, np.arange(e - a)
    return {"tokens": tokens, "segment_ids": seg, "positions": pos}


def mesh_of(shape):
    return sharding.make_mesh(*shape, devices=jax.devices()[: int(np.prod(shape))])


def run_steps(c, mesh, batches, ref_params=None, init_params=None):
    m_cfg = config_lib.model_config(c)
    spec = train.StepSpec.from_config(c, m_cfg, m_cfg if ref_params is not None else None)
    tx = train.make_optimizer(c.train)
    step = train.compile_train_step(spec, tx, mesh)
    state = train.init_state(spec, tx, mesh, jax.random.PRNGKey(0), params=init_params)
    ref = sharding.place(ref_params, step.ref_shardings) if ref_params is not None else None
    history = []
    for b in batches:
        state, metrics = step(state, b, ref)
        history.append(jax.device_get(metrics))
    return jax.tree.map(np.asarray, state.params), history


def with_cached_scores(batch, ref_cfg, ref_params, mesh=None):
    """The batch plus ref_ce / ref_entropy as `rho-jax score` writes them: THE scorer on this mesh."""
    scorer = score.reference_scorer(ref_cfg, mesh or mesh_of((1, 1, 1)))
    ref_ce, ref_ent = scorer(sharding.place(ref_params, scorer.param_shardings), batch)
    return {**batch, "ref_ce": np.asarray(ref_ce), "ref_entropy": np.asarray(ref_ent)}


def max_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

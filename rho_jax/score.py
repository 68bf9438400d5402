"""Per-token scores of a model over packed batches: the reference forward and THE reference scorer.

`reference_scorer` builds the one compiled computation that produces reference scores, for a given
reference model, mesh, rules and micro-batch shape. The offline scorer (`rho-jax score`, writing the
score cache) and online SLM (which calls it on each micro-batch right before the gradient step) both
use it, so online and cached training see bit-for-bit the same ref_ce / ref_entropy. That matters:
a rank-based selection breaks near-ties by the last bit, so "equal up to float noise" is not enough.
The scorer always computes the entropy too (the cache stores both), so the program never changes with
the score function.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from rho_jax import model, objective, sharding
from rho_jax.batch import INPUT_KEYS



def token_ce(cfg: model.ModelConfig, params, batch: dict, targets_BxL, *, ce_chunk: int = 0,
             with_entropy: bool = False):
    """Per-token CE (and entropy) of `params` on a packed batch: f32 [B, L] each (entropy or None).

    ce_chunk > 0 uses the vocabulary-chunked CE, which never holds f32 [B, L, V] logits.
    """
    args = (batch["tokens"], batch.get("positions"), batch.get("segment_ids"))
    if ce_chunk:
        h_BxLxD = model.forward_hidden(cfg, params, *args)
        w_DxV = model.head_kernel(cfg, params).astype(cfg.compute_dtype)
        out = objective.chunked_cross_entropy(h_BxLxD, w_DxV, targets_BxL, ce_chunk, with_entropy=with_entropy)
        return out if with_entropy else (out, None)
    logits_BxLxV = model.forward(cfg, params, *args)
    ce_BxL = objective.cross_entropy(logits_BxLxV, targets_BxL)
    return ce_BxL, (objective.token_entropy(logits_BxLxV) if with_entropy else None)


def reference_forward(ref_cfg: model.ModelConfig, ref_params, batch: dict, *, ce_chunk: int = 0,
                      with_entropy: bool = True):
    """ref_ce_BxL and ref_entropy_BxL (f32, zero at invalid positions), under stop_gradient."""
    targets_BxL, valid_BxL = objective.shift_targets(batch["tokens"], batch["segment_ids"])
    ref_params = jax.lax.stop_gradient(ref_params)
    ref_ce_BxL, ref_ent_BxL = token_ce(ref_cfg, ref_params, batch, targets_BxL, ce_chunk=ce_chunk,
                                       with_entropy=with_entropy)
    ref_ce_BxL = jnp.where(valid_BxL, ref_ce_BxL, 0.0)
    if ref_ent_BxL is not None:
        ref_ent_BxL = jnp.where(valid_BxL, ref_ent_BxL, 0.0)
    return ref_ce_BxL, ref_ent_BxL


def reference_scorer(ref_cfg: model.ModelConfig, mesh, rules=sharding.DEFAULT_RULES, ce_chunk: int = 0):
    """THE reference scorer: `score(ref_params, batch) -> (ref_ce_BxL, ref_entropy_BxL)`, f32 [b, L] each.

    ref_params: laid out with `score.param_shardings` (e.g. `sharding.place(params, score.param_shardings)`).
    batch: {tokens, segment_ids, positions} int32 [b, L], one micro-batch: b = `micro_batch_size(...)`,
      the same b offline and online, since the compiled program (and so the last bit) depends on shape.
    Jitted with explicit NamedShardings (params by `rules`, rows over the data axes), under the mesh and
    the logical-axis rules, exactly as every caller uses it; attributes `param_shardings`,
    `batch_sharding` and `jitted` expose the layout.
    """
    p_sh = sharding.tree_shardings(model.param_logical_axes(ref_cfg), model.param_shapes(ref_cfg), mesh, rules)
    b_sh = sharding.batch_sharding(mesh)
    fwd = functools.partial(reference_forward, ref_cfg, ce_chunk=ce_chunk, with_entropy=True)

    def scored(ref_params, batch):
        with nn.logical_axis_rules(rules):
            return fwd(ref_params, batch)

    jitted = jax.jit(scored, in_shardings=(p_sh, {k: b_sh for k in INPUT_KEYS}), out_shardings=(b_sh, b_sh))

    def score(ref_params, batch):
        with sharding.mesh_context(mesh):
            return jitted(ref_params, {k: batch[k] for k in INPUT_KEYS})

    score.jitted, score.param_shardings, score.batch_sharding = jitted, p_sh, b_sh
    return score


def micro_batch_size(global_batch: int, grad_accum: int) -> int:
    """Rows per scorer call: one training micro-batch (the offline scorer uses the same)."""
    return global_batch // grad_accum


def score_global_batch(scorer, ref_params, batch: dict, grad_accum: int = 1) -> dict:
    """{ref_ce, ref_entropy} f32 [B, L] of a global batch: the scorer on each of its `grad_accum`
    contiguous micro-batches of B / grad_accum rows (the grouping the offline scorer sees), concatenated."""
    if grad_accum == 1:
        ce, ent = scorer(ref_params, batch)
        return {"ref_ce": ce, "ref_entropy": ent}
    split, join = _split_join(scorer.batch_sharding, grad_accum)
    outs = [scorer(ref_params, mb) for mb in split({k: batch[k] for k in INPUT_KEYS})]
    return {"ref_ce": join([o[0] for o in outs]), "ref_entropy": join([o[1] for o in outs])}


@functools.lru_cache(maxsize=None)
def _split_join(b_sh, grad_accum: int):
    """Jitted (compiled once) split of [B, L] rows into contiguous micro-batches, and its inverse."""
    def split(b):
        m = micro_batch_size(b["tokens"].shape[0], grad_accum)
        return [{k: b[k][i * m:(i + 1) * m] for k in INPUT_KEYS} for i in range(grad_accum)]

    return (jax.jit(split, out_shardings=b_sh),
            jax.jit(lambda xs: jnp.concatenate(xs, axis=0), out_shardings=b_sh))

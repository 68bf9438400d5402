"""Gradient accumulation for `train.loss_and_grads` (config.train.grad_accum = A > 1).

A global batch [B, L] is split into A micro-batches [A, B/A, L]; micro-batch i holds rows i, i+A, ...
so each stays spread over the mesh's data axes. Two ways to select under accumulation:

  global_selection   EXACT: a no-grad pass scores every micro-batch, the top-k runs once over the whole
                     global batch, then the gradient pass reuses those weights with one global normaliser
                     (the selection pass costs one extra forward per token)
  per_micro_batch    APPROXIMATE (objective.scope='micro_batch'): the top-k runs within each micro-batch
                     on the CE of the gradient pass itself; no extra forward
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from rho_jax import objective
from rho_jax.score import token_ce


def micro(x, a: int):
    """[B, ...] -> [A, B/A, ...] (micro-batch i holds rows i, i+A, ...)."""
    return x.reshape(x.shape[0] // a, a, *x.shape[1:]).swapaxes(0, 1)


def unmicro(x):
    """[A, B/A, ...] -> [B, ...], the inverse of `micro`."""
    return x.swapaxes(0, 1).reshape(-1, *x.shape[2:])


def _accumulate(params, grad_fn, xs):
    """Sums (loss, grads) of grad_fn(params, *x) over the leading axis of xs; returns the per-micro aux."""
    def body(acc, x):
        (loss, aux), g = grad_fn(params, *x)
        return (acc[0] + loss, jax.tree.map(jnp.add, acc[1], g)), aux

    zeros = jax.tree.map(jnp.zeros_like, params)
    return jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros), xs)


def global_selection(spec, params, mbs: dict, targets_m, select: Callable):
    """Exact selection over the global batch. `select(ce_BxL or None) -> (weight_BxL, stats)` is the step's
    selection (None for CLM, which needs no scores). Returns (loss, grads, ce_BxL, weight_BxL, stats)."""
    a = spec.grad_accum
    if spec.slm:  # scores of every micro-batch first: the top-k must see the whole global batch
        sg_params = jax.lax.stop_gradient(params)
        ce_m = jax.lax.map(lambda x: token_ce(spec.model, sg_params, x[0], x[1], ce_chunk=spec.ce_chunk)[0],
                           (mbs, targets_m))
        weight_BxL, stats = select(unmicro(ce_m))
    else:
        weight_BxL, stats = select(None)
    denom = jnp.maximum(jnp.sum(weight_BxL), 1e-9)  # once, over the global batch

    def micro_loss(p, mb, targets, weight):
        ce, _ = token_ce(spec.model, p, mb, targets, ce_chunk=spec.ce_chunk)
        return jnp.sum(ce * weight) / denom, ce

    (loss, grads), ce_m = _accumulate(params, jax.value_and_grad(micro_loss, has_aux=True),
                                      (mbs, targets_m, micro(weight_BxL, a)))
    return loss, grads, unmicro(ce_m), weight_BxL, stats


def per_micro_batch(spec, params, step, rng, mbs: dict, targets_m, valid_BxL, ref_ce_BxL, ref_ent_BxL):
    """scope='micro_batch': k_i = ceil(ratio * n_valid_i) within micro-batch i; the loss is normalised once
    by sum_i k_i (soft weighting: by n_valid; prob: by sum_i k_i, its weights have mean 1). Stats are
    pooled over micro-batches. Returns (loss, grads, ce_BxL, weight_BxL, stats)."""
    a = spec.grad_accum
    valid_m = micro(valid_BxL, a)
    ratio = objective.ratio_at(step, spec.ratio, spec.ratio_end, spec.total_steps)
    if spec.weighting in ("hard", "prob"):
        denom = jnp.sum(objective.compute_k(jnp.sum(valid_m, axis=(1, 2), dtype=jnp.int32), ratio)).astype(jnp.float32)
    else:
        denom = jnp.sum(valid_BxL, dtype=jnp.float32)
    denom = jnp.maximum(denom, 1e-9)
    none_m = jnp.zeros((a,), jnp.float32)  # placeholder xs for absent reference arrays
    ref_m = micro(ref_ce_BxL, a) if ref_ce_BxL is not None else none_m
    ent_m = micro(ref_ent_BxL, a) if ref_ent_BxL is not None else none_m

    def loss_fn(p, mb, targets, valid, ref, ent, key):
        ce, _ = token_ce(spec.model, p, mb, targets, ce_chunk=spec.ce_chunk)
        weight, stats = objective.slm_objective(
            jax.lax.stop_gradient(ce), valid, ref if ref.ndim == 2 else None, ent if ent.ndim == 2 else None,
            ratio=ratio, score=spec.score, scope="batch", weighting=spec.weighting, temperature=spec.temperature,
            rng=key, random_ties=spec.random_ties)
        return jnp.sum(ce * weight) / denom, (ce, weight, stats)

    xs = (mbs, targets_m, valid_m, ref_m, ent_m, jax.random.split(rng, a))
    (loss, grads), (ce_m, weight_m, stats_m) = _accumulate(params, jax.value_and_grad(loss_fn, has_aux=True), xs)
    n_valid, n_selected = jnp.sum(stats_m["n_valid"]), jnp.sum(stats_m["n_selected"])
    stats = {k: jnp.mean(v) for k, v in stats_m.items()}  # per-micro-batch means (equal-size micro-batches)
    stats.update(n_valid=n_valid, n_selected=n_selected, threshold=jnp.min(stats_m["threshold"]),
                 selected_fraction=n_selected / jnp.maximum(n_valid, 1).astype(jnp.float32))
    return loss, grads, unmicro(ce_m), unmicro(weight_m), stats

"""The step's loss and gradients over one global batch, accumulated over config.train.grad_accum = n
micro-batches with `microbatch.microbatched` (micro-batch i holds rows i, i+n, ...).

Two orders, one mechanism:

  weights first     EXACT under accumulation (n > 1): a no-grad pass computes every micro-batch's CE, the
                    selection runs once over the whole global batch, then the microbatched gradient reuses those
                    weights with one global normaliser (one extra forward per token). CLM needs no pass.
  select in loss    n = 1 (the exact step itself: one forward), or objective.scope='micro_batch' (APPROXIMATE):
                    the selection runs within each micro-batch on the CE of the gradient pass; no extra forward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rho_jax import ce as ce_lib
from rho_jax import microbatch, objective
from rho_jax.objective import ScoreInputs, Selection, Selector


def _select(selector: Selector | None, inputs: ScoreInputs, rng) -> Selection:
    """The step's selection; selector None is CLM: weight 1 on every valid token."""
    if selector is None:
        return Selection(objective.clm_weights(inputs.valid_BxL), jnp.float32(jnp.nan))
    return objective.slm_objective(selector, inputs, rng)


def loss_and_grads(spec, params, rows: dict, inputs: ScoreInputs, selector: Selector | None, rng):
    """(loss, grads, ce_BxL, selection) of one global batch.

    spec: the train.StepSpec (model, ce_chunk, grad_accum, scope). rows: {tokens, segment_ids, positions,
    targets} [B, L]. inputs: the step's ScoreInputs without the target CE (valid, reference scores, segments).
    selector: the step's Selector (its ratio already scheduled), None for CLM. ce_BxL is under stop_gradient.
    """
    n = spec.grad_accum
    if n == 1 or (selector is not None and spec.scope == "micro_batch"):
        return _select_in_loss(spec, params, rows, inputs, selector, rng)
    if selector is None:
        selection = _select(None, inputs, rng)
        loss, grads, ce_BxL = _weighted_grads(spec, params, rows, selection.weight_BxL)
        return loss, grads, ce_BxL, selection
    # scores of every micro-batch first: the top-k must see the whole global batch
    ce_BxL = microbatch.map_rows(lambda mb: _ce(spec, jax.lax.stop_gradient(params), mb), n)(rows)
    selection = _select(selector, inputs.replace(ce_BxL=ce_BxL), rng)
    loss, grads, _ = _weighted_grads(spec, params, rows, selection.weight_BxL)
    return loss, grads, ce_BxL, selection  # the statistics read the CE the selection saw


def _ce(spec, params, rows: dict) -> jax.Array:
    return ce_lib.token_ce(spec.model, params, rows, rows["targets"], ce_chunk=spec.ce_chunk)[0]


def _weighted_grads(spec, params, rows: dict, weight_BxL):
    """Gradient of sum(ce * weight) / sum(weight) with known weights, microbatched: (loss, grads, ce_BxL)."""
    denom = jnp.maximum(jnp.sum(weight_BxL), 1e-9)  # once, over the global batch

    def micro_loss(p, mb, weight):
        ce_BxL = _ce(spec, p, mb)
        return jnp.sum(ce_BxL * weight) / denom, ce_BxL

    def micro(mb, weight):
        (loss, ce_BxL), grads = jax.value_and_grad(micro_loss, has_aux=True)(params, mb, weight)
        return (loss, grads), ce_BxL

    (loss, grads), ce_n = microbatch.microbatched(micro, spec.grad_accum)(rows, weight_BxL)
    return loss, grads, jax.lax.stop_gradient(microbatch.join(ce_n))


def _denominator(selector: Selector, valid_n):
    """scope='micro_batch': the loss is normalised once by sum_i k_i (soft weighting: by n_valid; prob: by
    sum_i k_i, its weights have mean 1)."""
    if selector.weighting in ("hard", "prob"):
        k_n = objective.compute_k(jnp.sum(valid_n, axis=(1, 2), dtype=jnp.int32), selector.ratio)
        denom = jnp.sum(k_n).astype(jnp.float32)
    else:
        denom = jnp.sum(valid_n, dtype=jnp.float32)
    return jnp.maximum(denom, 1e-9)


def _select_in_loss(spec, params, rows: dict, inputs: ScoreInputs, selector: Selector | None, rng):
    """Select within each of n micro-batches on the gradient pass's own CE (n = 1: the whole batch, normalised
    by its weight sum). The threshold is the lowest over micro-batches; weights and CE are joined back."""
    n = spec.grad_accum if selector is not None and spec.scope == "micro_batch" else 1
    denom = None if n == 1 else _denominator(selector, microbatch.split(inputs.valid_BxL, n))
    keys_n = rng[None] if n == 1 else jax.random.split(rng, n)

    def micro_loss(p, mb, micro_inputs, key):
        ce_BxL = _ce(spec, p, mb)
        selection = _select(selector, micro_inputs.replace(ce_BxL=jax.lax.stop_gradient(ce_BxL)), key)
        w_BxL = selection.weight_BxL
        loss = objective.masked_mean(ce_BxL, w_BxL) if denom is None else jnp.sum(ce_BxL * w_BxL) / denom
        return loss, (ce_BxL, selection)

    def micro(mb, micro_inputs, key_1):
        (loss, aux), grads = jax.value_and_grad(micro_loss, has_aux=True)(params, mb, micro_inputs, key_1[0])
        return (loss, grads), aux

    (loss, grads), (ce_n, sel_n) = microbatch.microbatched(micro, n)(rows, inputs, keys_n)
    selection = Selection(microbatch.join(sel_n.weight_BxL), jnp.min(sel_n.threshold))
    return loss, grads, jax.lax.stop_gradient(microbatch.join(ce_n)), selection

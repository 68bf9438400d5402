"""Per-token scores of a model over packed batches: the reference forward.

One function serves the online reference (inside the jitted train step) and the offline scorer
(writing the score cache), so both modes see bit-for-bit the same computation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rho_jax import model, objective


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


def jitted_reference_forward(ref_cfg: model.ModelConfig, ce_chunk: int = 0, with_entropy: bool = True,
                             in_shardings=None, out_shardings=None):
    """A jitted `reference_forward(params, batch)` (optionally with explicit shardings) for offline scoring."""
    fn = functools.partial(reference_forward, ref_cfg, ce_chunk=ce_chunk, with_entropy=with_entropy)
    if in_shardings is None:
        return jax.jit(fn)
    return jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings)

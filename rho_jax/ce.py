"""Per-token cross-entropy, all of it: the shift to next-token targets, the plain and the vocabulary-chunked
CE, the predictive entropy, and a model's CE on a packed batch (`token_ce`, `target_ce`).

    targets_BxL, valid_BxL = shift_targets(tokens_BxL, segment_ids_BxL)   # logits[t] predicts tokens[t+1]
    ce_BxL, ent_BxL        = token_ce(cfg, params, batch, targets_BxL)    # f32 nats (entropy on request)

Everything is f32 whatever the model's compute dtype; the training step, the reference scorer and the
held-out evaluation all call `token_ce`, so they agree to the last bit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rho_jax import model
from rho_jax.projection import project


def shift_targets(tokens_BxL: jax.Array, segment_ids_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Pair each position with its next token.

    Returns targets_BxL int32 (targets[t] = tokens[t+1], last column 0) and valid_BxL bool
    (seg[t] != 0 and seg[t+1] == seg[t]; the last column is False), so padding and the step from
    one packed document into the next are never trained on.
    """
    tokens_BxL = jnp.asarray(tokens_BxL, jnp.int32)
    seg_BxL = jnp.asarray(segment_ids_BxL, jnp.int32)
    targets_BxL = jnp.pad(tokens_BxL[:, 1:], ((0, 0), (0, 1)))
    valid_BxL = (seg_BxL[:, :-1] != 0) & (seg_BxL[:, 1:] == seg_BxL[:, :-1])
    valid_BxL = jnp.pad(valid_BxL, ((0, 0), (0, 1)), constant_values=False)
    return targets_BxL, valid_BxL


@jax.named_scope("cross_entropy")  # names its ops in profiles (scripts/profile_step.py)
def cross_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> jax.Array:
    """Per-token CE in nats, f32 [B, L]: logsumexp(logits) - logits[target], computed in f32."""
    logits = logits_BxLxV.astype(jnp.float32)
    lse_BxL = jax.nn.logsumexp(logits, axis=-1)
    tgt_BxL = jnp.take_along_axis(logits, targets_BxL[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return lse_BxL - tgt_BxL


@jax.named_scope("token_entropy")  # names its ops in profiles (scripts/profile_step.py)
def token_entropy(logits_BxLxV: jax.Array) -> jax.Array:
    """Entropy of the predictive distribution in nats, f32 [B, L]."""
    logp = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
    p = jnp.exp(logp)
    return -jnp.sum(p * jnp.where(p > 0, logp, 0.0), axis=-1)


@jax.named_scope("cross_entropy")  # names its ops in profiles (scripts/profile_step.py)
def chunked_cross_entropy(h_BxLxD: jax.Array, w_DxV: jax.Array, targets_BxL: jax.Array,
                          chunk_size: int, with_entropy: bool = False):
    """CE (and entropy) of logits = h @ w without materialising f32 [B, L, V] logits.

    Scans over vocabulary chunks of `chunk_size` columns with an online logsumexp; the chunk body is
    rematerialised (jax.checkpoint), so the backward pass also holds one [B, L, chunk] block at a
    time; peak extra memory is about B*L*(chunk_size + 4*V/chunk_size) f32 values. V is padded to a
    multiple of chunk_size with -inf logits. The matmul runs in h's dtype with f32 accumulation,
    like `model.logits_from_hidden`.
    Returns ce_BxL f32, or (ce_BxL, ent_BxL) when with_entropy.
    """
    d, v = w_DxV.shape
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}; expected a positive number of vocabulary columns")
    n_chunks = -(-v // chunk_size)
    w_pad = jnp.pad(w_DxV.astype(h_BxLxD.dtype), ((0, 0), (0, n_chunks * chunk_size - v)))
    w_NxDxC = w_pad.reshape(d, n_chunks, chunk_size).transpose(1, 0, 2)  # chunks as scan xs: per-chunk grads
    targets_BxL = targets_BxL.astype(jnp.int32)
    bl = targets_BxL.shape

    @jax.checkpoint
    def body(carry, xs):
        m, s, a, tgt = carry  # running max, sum exp(l - m), sum exp(l - m) * l, target logit
        w_DxC, c = xs
        start = c * chunk_size
        col_C = start + jnp.arange(chunk_size, dtype=jnp.int32)
        real_C = col_C < v
        raw = project("bld,dc->blc", h_BxLxD, w_DxC, preferred_element_type=jnp.float32)
        logits = jnp.where(real_C, raw, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(logits, axis=-1))  # finite: every chunk has a real column
        e = jnp.exp(logits - m_new[..., None])
        scale = jnp.exp(m - m_new)
        s = s * scale + jnp.sum(e, axis=-1)
        a = a * scale + jnp.sum(jnp.where(real_C, e * raw, 0.0), axis=-1)
        local = targets_BxL - start
        inside = (local >= 0) & (local < chunk_size)
        picked = jnp.take_along_axis(raw, jnp.clip(local, 0, chunk_size - 1)[..., None], axis=-1)[..., 0]
        tgt = tgt + jnp.where(inside, picked, 0.0)
        return (m_new, s, a, tgt), None

    init = (jnp.full(bl, -jnp.inf, jnp.float32), jnp.zeros(bl, jnp.float32),
            jnp.zeros(bl, jnp.float32), jnp.zeros(bl, jnp.float32))
    (m, s, a, tgt), _ = jax.lax.scan(body, init, (w_NxDxC, jnp.arange(n_chunks, dtype=jnp.int32)))
    lse_BxL = m + jnp.log(s)
    ce_BxL = lse_BxL - tgt
    if not with_entropy:
        return ce_BxL
    return ce_BxL, lse_BxL - a / s  # H = lse - E_p[logit]


def token_ce(cfg: model.ModelConfig, params, batch: dict, targets_BxL, *, ce_chunk: int = 0,
             with_entropy: bool = False):
    """Per-token CE (and entropy) of `params` on a packed batch: f32 [B, L] each (entropy or None).

    ce_chunk > 0 uses the vocabulary-chunked CE, which never holds f32 [B, L, V] logits.
    """
    args = (batch["tokens"], batch.get("positions"), batch.get("segment_ids"))
    if ce_chunk:
        h_BxLxD = model.forward_hidden(cfg, params, *args)
        w_DxV = model.head_kernel(cfg, params).astype(cfg.compute_dtype)
        out = chunked_cross_entropy(h_BxLxD, w_DxV, targets_BxL, ce_chunk, with_entropy=with_entropy)
        return out if with_entropy else (out, None)
    logits_BxLxV = model.forward(cfg, params, *args)
    ce_BxL = cross_entropy(logits_BxLxV, targets_BxL)
    return ce_BxL, (token_entropy(logits_BxLxV) if with_entropy else None)


def target_ce(cfg: model.ModelConfig, params, batch: dict, *, ce_chunk: int = 0,
              with_entropy: bool = False) -> tuple[jax.Array, jax.Array | None, jax.Array]:
    """(ce_BxL, entropy_BxL or None, valid_BxL) at each prediction position t, whose target is tokens[t+1]."""
    targets_BxL, valid_BxL = shift_targets(batch["tokens"], batch["segment_ids"])
    ce_BxL, ent_BxL = token_ce(cfg, params, batch, targets_BxL, ce_chunk=ce_chunk, with_entropy=with_entropy)
    return ce_BxL, ent_BxL, valid_BxL

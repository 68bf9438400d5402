"""Plug-ins from the token-selection family around Rho-1: pure functions, exact on any mesh.

  keep_BxL   = goldfish_keep(tokens_BxL, segment_ids_BxL, k, h)    # Goldfish loss: drop 1/k by hash
  mean_BxL, is_doc_BxL, first_BxL = segment_means(score_BxL, valid_BxL, segment_ids_BxL)  # document scope
                                                                   # (objective.select_documents ranks them)
  weight_BxL = prob_weights(ce_BxL, mask_BxL)                      # DFT: sg(p(token)), mean 1

`objective.slm_objective` composes them with its scores (the `target_loss` score, ESLM, needs no
reference; `reverse_excess` against an EMA of the target is ssToken's retrospective excess, see
`rho_jax.train`). Everything here is integer arithmetic or a stable sort over the whole [B, L]
array, so shardings never change a result.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

sg = jax.lax.stop_gradient

# ----------------------------------------------------------------------------- Goldfish loss

_FNV_OFFSET, _FNV_PRIME = 2166136261, 16777619  # 32-bit FNV-1a over the context token ids


def _fmix32(x):
    """MurmurHash3's 32-bit finaliser: spreads FNV's low bits before the modulo."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def goldfish_hash(tokens_BxL: jax.Array, h: int) -> jax.Array:
    """uint32 [B, L]: hash of the h token ids tokens[t-h+1 .. t] (the context of target tokens[t+1]).

    Each id is folded in as 4 little-endian bytes, oldest first, by FNV-1a, then fmix32. Columns
    t < h-1 wrap around the row; `goldfish_keep` never drops those positions.
    """
    tok_BxL = jnp.asarray(tokens_BxL, jnp.int32).astype(jnp.uint32)
    acc = jnp.full(tok_BxL.shape, _FNV_OFFSET, jnp.uint32)
    for back in range(h - 1, -1, -1):  # oldest context token first
        t_BxL = jnp.roll(tok_BxL, back, axis=1)
        for byte in range(4):
            acc = (acc ^ ((t_BxL >> (8 * byte)) & 0xFF)) * jnp.uint32(_FNV_PRIME)
    return _fmix32(acc)


def goldfish_keep(tokens_BxL, segment_ids_BxL, k: int, h: int) -> jax.Array:
    """bool [B, L] over prediction positions (position t predicts tokens[t+1]): False = dropped.

    Position t is dropped iff its h context tokens tokens[t-h+1 .. t] all lie in the target's own
    segment (same row, same segment id) and goldfish_hash % k == 0, i.e. about 1/k of the tokens.
    A target with fewer than h preceding tokens of its segment in the row (the first h tokens of a
    segment) is never dropped. A pure function of the token ids: the same text gives the same mask
    at any batch position and on any mesh. k = 0 keeps everything.
    """
    seg_BxL = jnp.asarray(segment_ids_BxL, jnp.int32)
    if not k:
        return jnp.ones(seg_BxL.shape, bool)
    if k < 2 or h < 1:
        raise ValueError(f"goldfish k={k}, h={h}; expected k >= 2 (drop 1/k of tokens) and h >= 1 context tokens")
    b, n = seg_BxL.shape
    col_BxL = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
    target_seg_BxL = jnp.pad(seg_BxL[:, 1:], ((0, 0), (0, 1)))
    # the segment starts at or before t-h+1 and the target is in it: h same-segment context tokens
    start_BxL = jnp.where((col_BxL == 0) | (seg_BxL != jnp.roll(seg_BxL, 1, axis=1)), col_BxL, 0)
    seg_start_BxL = jax.lax.cummax(start_BxL, axis=1)
    full_ctx_BxL = (target_seg_BxL == seg_BxL) & (seg_BxL != 0) & (col_BxL - seg_start_BxL >= h - 1)
    drop_BxL = full_ctx_BxL & (goldfish_hash(tokens_BxL, h) % jnp.uint32(k) == 0)
    return ~drop_BxL


# ----------------------------------------------------------------------------- document scope

def segment_groups(segment_ids_BxL) -> tuple[jax.Array, jax.Array]:
    """Per position: the row-major flat index of its segment's first token (int32 [B, L]), and
    is_first (bool [B, L]). A segment is a (row, segment id) pair, contiguous or not."""
    seg_BxL = jnp.asarray(segment_ids_BxL, jnp.int32)
    b, n = seg_BxL.shape
    col_BxL = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
    seg_s, perm_s = jax.lax.sort((seg_BxL, col_BxL), dimension=1, num_keys=2)  # by (id, column) per row
    j_BxL = col_BxL  # position in the sorted row
    new_s = (j_BxL == 0) | (seg_s != jnp.roll(seg_s, 1, axis=1))
    first_j = jax.lax.cummax(jnp.where(new_s, j_BxL, 0), axis=1)
    first_col_s = jnp.take_along_axis(perm_s, first_j, axis=1)  # stable sort: the group's lowest column
    rows = jnp.arange(b, dtype=jnp.int32)[:, None]
    first_col_BxL = jnp.zeros_like(col_BxL).at[rows, perm_s].set(first_col_s, unique_indices=True)
    return rows * n + first_col_BxL, first_col_BxL == col_BxL


def segment_means(score_BxL, valid_BxL, segment_ids_BxL) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The document scope's per-segment scores (objective.select_documents ranks them).

    Returns mean_BxL (f32: at a segment's first token, the mean score of its valid tokens; 0
    elsewhere), is_doc_BxL (bool: a segment's first token, the segment having >= 1 valid token) and
    first_BxL (int32: each position's segment's first-token flat index, to spread a choice back)."""
    valid_BxL = jnp.asarray(valid_BxL, bool)
    shape = valid_BxL.shape
    first_BxL, is_first_BxL = segment_groups(segment_ids_BxL)
    first_N = first_BxL.reshape(-1)
    score_N = jnp.where(valid_BxL, jnp.asarray(score_BxL, jnp.float32), 0.0).reshape(-1)
    # per-segment sums land on the segment's first token; scatter-adds of int counts are exact and
    # the f32 sums add each segment's own tokens only
    total_N = jnp.zeros_like(score_N).at[first_N].add(score_N)
    count_N = jnp.zeros_like(first_N).at[first_N].add(valid_BxL.reshape(-1).astype(jnp.int32))
    is_doc_N = is_first_BxL.reshape(-1) & (count_N > 0)
    mean_N = total_N / jnp.maximum(count_N, 1).astype(jnp.float32)
    return mean_N.reshape(shape), is_doc_N.reshape(shape), first_BxL


# ----------------------------------------------------------------------------- DFT weighting

def prob_weights(ce_BxL, mask_BxL) -> jax.Array:
    """f32 [B, L] = m * p / mean(p over m), p = exp(-sg(ce)) the model's probability of the target.

    Mean 1 over the masked tokens, 0 elsewhere (all zeros if the mask is empty), stop_gradient
    applied, so sum(ce * w) / sum(w) = sum(p * ce * m) / sum(p * m): DFT's loss, rescaled by the
    mean p of the kept tokens.
    """
    m = jnp.asarray(mask_BxL, jnp.float32)
    p = jnp.exp(-sg(jnp.asarray(ce_BxL, jnp.float32))) * m
    z = jnp.sum(p)
    return sg(jnp.where(z > 0, p * (jnp.sum(m) / jnp.where(z > 0, z, 1.0)), 0.0))

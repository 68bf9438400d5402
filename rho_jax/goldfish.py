"""Goldfish loss (Hans et al., 2024): drop about 1/k of the training targets, chosen by a hash of the h
tokens before each, so a memorised passage is never trained on in full.

    keep_BxL = goldfish_keep(tokens_BxL, segment_ids_BxL, k, h)    # False = dropped; folded into valid_BxL

A pure function of the token ids (integer arithmetic only): the same text gives the same mask at any batch
position and on any mesh.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

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

"""Batched greedy decoding with the KV cache: one jitted prefill plus a `while_loop` of 1-token steps.

Prompts are left-padded to a common length (padding has segment id 0, so real tokens never attend
to it, and positions count real tokens only), which puts every row's next token in the same cache
slot and lets one decode step serve the whole batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rho_jax.model import ModelConfig, Params, forward_with_cache, init_cache

_PAD_MULTIPLE = 16  # round prompt length up, so that nearby prompt lengths share one compilation


def left_pad(prompts: list[list[int]], multiple: int = _PAD_MULTIPLE, pad_id: int = 0):
    """-> tokens_BxP, segment_ids_BxP (0 = pad, 1 = prompt), positions_BxP (restart at the first real token)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (prepend BOS to an empty prompt)")
    length = -(-max(len(p) for p in prompts) // multiple) * multiple
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    segments = np.zeros((len(prompts), length), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, length - len(p):] = p
        segments[i, length - len(p):] = 1
    positions = np.maximum(np.cumsum(segments, axis=1) - 1, 0).astype(np.int32)
    return tokens, segments, positions


@functools.partial(jax.jit, static_argnums=(0, 5))
def _generate(cfg: ModelConfig, params: Params, tokens_BxP, segment_ids_BxP, positions_BxP, max_new_tokens: int,
              eos_id):
    """-> new tokens int32 [B, max_new_tokens]; after a row emits `eos_id` (< 0: never) it repeats it."""
    b, p = tokens_BxP.shape
    cache = init_cache(cfg, b, p + max_new_tokens)
    logits_BxPxV, cache = forward_with_cache(cfg, params, tokens_BxP, cache, positions_BxP, segment_ids_BxP)
    token_B = jnp.argmax(logits_BxPxV[:, -1], axis=-1).astype(jnp.int32)
    out_BxN = jnp.zeros((b, max_new_tokens), jnp.int32).at[:, 0].set(token_B)
    state = (jnp.int32(1), token_B, positions_BxP[:, -1] + 1, token_B == eos_id, out_BxN, cache)

    def cond(state):
        step, _, _, done_B, _, _ = state
        return (step < max_new_tokens) & ~jnp.all(done_B)

    def body(state):
        step, token_B, position_B, done_B, out_BxN, cache = state
        logits_Bx1xV, cache = forward_with_cache(cfg, params, token_B[:, None], cache, position_B[:, None],
                                                 jnp.ones((b, 1), jnp.int32))
        next_B = jnp.argmax(logits_Bx1xV[:, 0], axis=-1).astype(jnp.int32)
        next_B = jnp.where(done_B, eos_id, next_B)
        out_BxN = jax.lax.dynamic_update_slice_in_dim(out_BxN, next_B[:, None], step, axis=1)
        return step + 1, next_B, position_B + 1, done_B | (next_B == eos_id), out_BxN, cache

    _, _, _, _, out_BxN, _ = jax.lax.while_loop(cond, body, state)
    return out_BxN


def greedy_generate(cfg: ModelConfig, params: Params, prompts: list[list[int]], max_new_tokens: int,
                    eos_id: int | None = None) -> list[list[int]]:
    """Greedy continuations of each prompt: new tokens only, up to and including the first `eos_id`."""
    if max_new_tokens < 1:
        return [[] for _ in prompts]
    tokens, segments, positions = left_pad(prompts)
    eos = -1 if eos_id is None else int(eos_id)
    out = np.asarray(_generate(cfg, params, tokens, segments, positions, max_new_tokens, eos))
    rows = []
    for row in out.tolist():
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows

"""Evaluation: held-out loss over packed examples (more to come: few-shot generation)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rho_jax import objective
from rho_jax.score import token_ce


@functools.lru_cache(maxsize=None)
def _sum_ce_fn(cfg, ce_chunk: int):
    def fn(params, batch):
        targets_BxL, valid_BxL = objective.shift_targets(batch["tokens"], batch["segment_ids"])
        ce_BxL, _ = token_ce(cfg, params, batch, targets_BxL, ce_chunk=ce_chunk)
        return jnp.sum(jnp.where(valid_BxL, ce_BxL, 0.0)), jnp.sum(valid_BxL)

    return jax.jit(fn)


def heldout_loss(cfg, params, examples: dict, batch_size: int = 8, ce_chunk: int = 0) -> float:
    """Mean CE (nats) over every valid target token of `examples` ({tokens, segment_ids, positions}: [N, L]).

    Exact over the whole set: sums CE and counts across batches (the last batch is padded with
    empty rows, which have no valid targets)."""
    n = len(examples["tokens"])
    fn = _sum_ce_fn(cfg, ce_chunk)
    total, count = 0.0, 0
    for start in range(0, n, batch_size):
        batch = {}
        for k in ("tokens", "segment_ids", "positions"):
            x = np.asarray(examples[k][start:start + batch_size], np.int32)
            batch[k] = np.pad(x, ((0, batch_size - len(x)), (0, 0)))
        s, c = jax.device_get(fn(params, batch))
        total, count = total + float(s), count + int(c)
    if count == 0:
        raise ValueError("held-out examples have no valid target tokens")
    return total / count

"""Per-token cross-entropy over packed examples ({tokens, segment_ids, positions}: int [N, L]), run in
fixed-shape batches so one compiled program serves every batch (the last one is padded with empty rows).

    iter_padded_batches   THE batching loop: every scoring loop over examples goes through it
    heldout_loss          exact mean CE over a held-out set (the training loop's and the demo's eval)
    token_losses          CE of each prediction position (NaN where there is no valid target): [K, N, L]
    summed_ce             (sum of CE, count) over the valid (optionally masked) targets: exact means
"""

from __future__ import annotations

import functools
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from rho_jax import ce as ce_lib
from rho_jax.batch import INPUT_KEYS


def pad_rows(rows: dict, batch_size: int) -> dict:
    """{key: [n, ...]} with n <= batch_size -> {key: [batch_size, ...]}, zero rows appended.

    A zero row has segment_ids 0 everywhere, so no valid target: it adds nothing to any loss."""
    return {k: np.pad(x, [(0, batch_size - len(x))] + [(0, 0)] * (x.ndim - 1)) for k, x in rows.items()}


def iter_padded_batches(examples: dict, batch_size: int, keys=None) -> Iterator[tuple[dict, int]]:
    """Yields (batch, n): the next `batch_size` rows of examples ({key: [N, ...]}, only `keys` when given) as
    {key: [batch_size, ...]} numpy arrays, and n, how many of them are real (< batch_size only in a padded
    last batch; the caller drops rows n: of per-row outputs)."""
    keys = tuple(examples) if keys is None else tuple(keys)
    total = len(examples[keys[0]])
    for start in range(0, total, batch_size):
        rows = {k: np.asarray(examples[k][start:start + batch_size]) for k in keys}
        yield pad_rows(rows, batch_size), len(rows[keys[0]])


@functools.lru_cache(maxsize=None)
def _token_ce_fn(cfg, ce_chunk: int):
    def fn(params, batch):
        ce_BxL, _, valid_BxL = ce_lib.target_ce(cfg, params, batch, ce_chunk=ce_chunk)
        return jnp.where(valid_BxL, ce_BxL, jnp.nan)

    return jax.jit(fn)


@functools.lru_cache(maxsize=None)
def summed_ce_fn(cfg, ce_chunk: int):
    """The held-out evaluation's program: jitted `(params, batch) -> (sum of CE in nats, count)` over the valid
    (and, with batch["loss_mask"], masked) targets of one batch."""
    def fn(params, batch):
        ce_BxL, _, valid_BxL = ce_lib.target_ce(cfg, params, batch, ce_chunk=ce_chunk)
        weight_BxL = valid_BxL & batch["loss_mask"] if "loss_mask" in batch else valid_BxL
        return jnp.sum(jnp.where(weight_BxL, ce_BxL, 0.0)), jnp.sum(weight_BxL)

    return jax.jit(fn)


def token_losses(cfg, params_list, examples: dict, batch_size: int = 8, ce_chunk: int = 0) -> np.ndarray:
    """Per-token CE (nats) of each of K param trees on packed examples ([N, L] int arrays).

    Returns f32 [K, N, L], aligned to the prediction position t (target tokens[t+1]); NaN where invalid.
    """
    ints = {k: np.asarray(examples[k], np.int32) for k in INPUT_KEYS}
    n, fn = len(ints["tokens"]), _token_ce_fn(cfg, ce_chunk)
    out_KxNxL = np.empty((len(params_list), n) + ints["tokens"].shape[1:], np.float32)
    for k, params in enumerate(params_list):
        params = jax.device_put(params)  # once per tree, not per batch
        start = 0
        for batch, m in iter_padded_batches(ints, batch_size):
            out_KxNxL[k, start:start + m] = np.asarray(fn(params, batch))[:m]
            start += m
    return out_KxNxL


def summed_ce(cfg, params, examples: dict, batch_size: int, ce_chunk: int = 0, keys=INPUT_KEYS) -> tuple[float, int]:
    """(sum of CE in nats, number of targets) over every valid target of examples, restricted to
    examples["loss_mask"] (bool [N, L], at prediction positions) when `keys` includes it."""
    fn = summed_ce_fn(cfg, ce_chunk)
    total, count = 0.0, 0
    for batch, _ in iter_padded_batches(examples, batch_size, keys):  # padding rows have no targets
        s, c = jax.device_get(fn(params, batch))
        total, count = total + float(s), count + int(c)
    return total, count


def heldout_loss(cfg, params, examples: dict, batch_size: int = 8, ce_chunk: int = 0) -> float:
    """Mean CE (nats) over every valid target token of `examples` ({tokens, segment_ids, positions}: [N, L]).

    Exact over the whole set: sums CE and counts across batches (the last batch is padded with
    empty rows, which have no valid targets)."""
    ints = {k: np.asarray(examples[k], np.int32) for k in INPUT_KEYS}
    total, count = summed_ce(cfg, params, ints, batch_size, ce_chunk)
    if count == 0:
        raise ValueError("held-out examples have no valid target tokens")
    return total / count

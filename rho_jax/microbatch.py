"""THE micro-batching mechanism: one row layout, one `microbatched(fn, n)` (levanter's shape).

A global batch [B, ...] splits into n micro-batches [n, B/n, ...]; micro-batch i holds rows i, i+n, i+2n, ...
(strided), so a batch sharded over the mesh's data axes in contiguous blocks keeps every micro-batch spread
over every device: splitting moves no data. `join` puts per-row results back in the original row order, so
a row's result never depends on the layout's bookkeeping.

    microbatched(fn, n)(*rows)     inside a jitted step: lax.scan over micro-batches; sums fn's `total`
                                   (loss, gradients), stacks its per-micro `aux`
    map_rows(fn, n)(*rows)         row-wise fn (a forward pass) micro-batch by micro-batch, rows joined back
    host_map_rows(fn, n, sharding) the same around an already compiled program (the reference scorer, whose
                                   program must equal the offline one to the last bit): a host loop

Users: gradient accumulation (rho_jax.gradients), the EMA reference (rho_jax.train), the online scorer
(rho_jax.score).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp


def split(tree, n: int):
    """Every leaf [B, ...] -> [n, B/n, ...]; micro-batch i holds rows i, i+n, ... B must be a multiple of n."""
    def one(x):
        if x.shape[0] % n:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {n} micro-batches; "
                             f"make the batch size a multiple of train.grad_accum")
        return x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(one, tree)


def join(tree):
    """Every leaf [n, B/n, ...] -> [B, ...]: the inverse of `split` (rows back in their original order)."""
    return jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(-1, *x.shape[2:]), tree)


def microbatched(fn: Callable, n: int) -> Callable:
    """`g(*rows) -> (total, aux_n)`: fn(*micro_rows) -> (total, aux) run on each of the n micro-batches.

    rows: pytrees of [B, ...] arrays (what is shared, e.g. params, fn closes over). total: fn's totals summed
    over micro-batches in order from zero (f32 losses, gradients). aux_n: fn's aux stacked on a leading
    micro-batch axis [n, ...] (`join` turns per-row aux back into [B, ...]). n = 1 calls fn once on the
    whole batch, with no loop, so it is the unbatched computation itself.
    """
    def run(*rows):
        if n == 1:
            total, aux = fn(*rows)
            return total, jax.tree.map(lambda x: x[None], aux)
        xs = split(rows, n)
        total_shape, _ = jax.eval_shape(fn, *jax.tree.map(lambda x: x[0], xs))
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), total_shape)

        def body(acc, micro_rows):
            total, aux = fn(*micro_rows)
            return jax.tree.map(jnp.add, acc, total), aux

        return jax.lax.scan(body, zeros, xs)

    return run


def map_rows(fn: Callable, n: int) -> Callable:
    """`g(*rows) -> out`: row-wise fn(*micro_rows) -> per-row outputs, run micro-batch by micro-batch (peak
    memory of one micro-batch) and joined back into [B, ...] in the original row order."""
    batched = microbatched(lambda *rows: ((), fn(*rows)), n)
    return lambda *rows: join(batched(*rows)[1])


def host_map_rows(fn: Callable, n: int, sharding) -> Callable:
    """`map_rows` around a compiled callable (fn(*micro_rows) -> per-row arrays): the split and the join are
    each one jitted program with `sharding` on every micro-batch, fn runs n times from the host."""
    if n == 1:
        return fn
    split_fn, join_fn = _host_split_join(sharding, n)

    def run(*rows):
        outs = [fn(*micro_rows) for micro_rows in split_fn(rows)]
        return join_fn(outs)

    return run


@functools.lru_cache(maxsize=None)
def _host_split_join(sharding, n: int):
    """Jitted (compiled once per layout) split into a list of n micro-batches, and its inverse."""
    def split_list(rows):
        xs = split(rows, n)
        return [jax.tree.map(lambda x: x[i], xs) for i in range(n)]

    def join_list(outs):
        return join(jax.tree.map(lambda *xs: jnp.stack(xs), *outs))

    return jax.jit(split_list, out_shardings=sharding), jax.jit(join_list, out_shardings=sharding)

"""Per-token scores of a model over packed batches: the reference forward and THE reference scorer.

`reference_scorer` builds the one compiled computation that produces reference scores, for a given
reference model, mesh, rules and micro-batch shape. The offline scorer (`rho-jax score`, writing the
score cache) and online SLM (which calls it on each micro-batch right before the gradient step) both
use it, so online and cached training see bit-for-bit the same ref_ce / ref_entropy. That matters:
a rank-based selection breaks near-ties by the last bit, so "equal up to float noise" is not enough.
The scorer always computes the entropy too (the cache stores both), so the program never changes with
the score function.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from rho_jax import ce as ce_lib
from rho_jax import microbatch, model, sharding
from rho_jax.batch import INPUT_KEYS


def reference_forward(ref_cfg: model.ModelConfig, ref_params, batch: dict, *, ce_chunk: int = 0,
                      with_entropy: bool = True):
    """ref_ce_BxL and ref_entropy_BxL (f32, zero at invalid positions), under stop_gradient."""
    ref_params = jax.lax.stop_gradient(ref_params)
    ref_ce_BxL, ref_ent_BxL, valid_BxL = ce_lib.target_ce(ref_cfg, ref_params, batch, ce_chunk=ce_chunk,
                                                          with_entropy=with_entropy)
    ref_ce_BxL = jnp.where(valid_BxL, ref_ce_BxL, 0.0)
    if ref_ent_BxL is not None:
        ref_ent_BxL = jnp.where(valid_BxL, ref_ent_BxL, 0.0)
    return ref_ce_BxL, ref_ent_BxL


@dataclasses.dataclass(frozen=True)
class CompiledScorer:
    """THE reference scorer, compiled: `scorer(ref_params, batch) -> (ref_ce_BxL, ref_entropy_BxL)`.

    jitted: the jax.jit program (for ahead-of-time lowering and memory analysis); param_shardings: the
    reference params' NamedShardings; batch_sharding: the rows' NamedSharding (over the data axes).
    """

    jitted: Any
    param_shardings: Any
    batch_sharding: Any
    mesh: Any

    def __call__(self, ref_params, batch: dict):
        with sharding.mesh_context(self.mesh):
            return self.jitted(ref_params, {k: batch[k] for k in INPUT_KEYS})


def reference_scorer(ref_cfg: model.ModelConfig, mesh, rules=sharding.DEFAULT_RULES, ce_chunk: int = 0
                     ) -> CompiledScorer:
    """THE reference scorer: `score(ref_params, batch) -> (ref_ce_BxL, ref_entropy_BxL)`, f32 [b, L] each.

    ref_params: laid out with `scorer.param_shardings` (e.g. `sharding.place(params, scorer.param_shardings)`).
    batch: {tokens, segment_ids, positions} int32 [b, L], one micro-batch: b = `micro_batch_size(...)`,
      the same b offline and online, since the compiled program (and so the last bit) depends on shape.
    Jitted with explicit NamedShardings (params by `rules`, rows over the data axes), under the mesh and
    the logical-axis rules, exactly as every caller uses it.
    """
    p_sh = sharding.tree_shardings(model.param_logical_axes(ref_cfg), model.param_shapes(ref_cfg), mesh, rules)
    b_sh = sharding.batch_sharding(mesh)
    fwd = functools.partial(reference_forward, ref_cfg, ce_chunk=ce_chunk, with_entropy=True)

    def scored(ref_params, batch):
        with nn.logical_axis_rules(rules):
            return fwd(ref_params, batch)

    jitted = jax.jit(scored, in_shardings=(p_sh, {k: b_sh for k in INPUT_KEYS}), out_shardings=(b_sh, b_sh))
    return CompiledScorer(jitted=jitted, param_shardings=p_sh, batch_sharding=b_sh, mesh=mesh)


def micro_batch_size(global_batch: int, grad_accum: int) -> int:
    """Rows per scorer call: one training micro-batch (the offline scorer uses the same)."""
    return global_batch // grad_accum


def score_global_batch(scorer: CompiledScorer, ref_params, batch: dict, grad_accum: int = 1) -> dict:
    """{ref_ce, ref_entropy} f32 [B, L] of a global batch: the scorer on each of its `grad_accum` micro-batches
    of B / grad_accum rows (microbatch's layout, the training step's), joined back in row order. A row's
    scores do not depend on which rows share its call: the offline scorer groups rows differently."""
    per_micro: Callable = lambda rows: scorer(ref_params, rows)  # noqa: E731
    ce, ent = microbatch.host_map_rows(per_micro, grad_accum, scorer.batch_sharding)(
        {k: batch[k] for k in INPUT_KEYS})
    return {"ref_ce": ce, "ref_entropy": ent}

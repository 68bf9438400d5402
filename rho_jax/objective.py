"""Selective Language Modeling (Rho-1): scores, selection and token weights on one screen.

    targets_BxL, valid_BxL = ce.shift_targets(tokens_BxL, segment_ids_BxL)  # logits[t] predicts tokens[t+1]
    ce_BxL    = ce.cross_entropy(logits_BxLxV, targets_BxL)                  # f32 nats (rho_jax.ce)
    score_BxL = score_tokens("excess", ScoreInputs(ce_BxL, valid_BxL, ref_ce_BxL))  # sg(ce) - ref_ce, signed
    mask_BxL  = select_topk(score_BxL, valid_BxL, ratio)                     # exactly ceil(ratio * n_valid)
    loss      = masked_mean(ce_BxL, mask_BxL)                                # sum(ce * mask) / sum(mask)

`slm_objective(Selector(...), inputs, rng)` bundles the score and the selection into a `Selection` (token
weights, threshold); `selection_stats` computes the scalar statistics apart. ratio = 1.0 selects every valid
token, so its weights equal `clm_weights`. Unselected tokens stay in the input and attention: the selection
only weights the loss.

Scores are the table `SCORES`: name -> a small function of `ScoreInputs` and what it reads (reference CE,
target CE, reference entropy, an rng). A score function sees only what it declares (the rest is None), so
`needs_ref` / `needs_target_ce` / `needs_ref_entropy`, derived from the table, cannot drift from the code.
A new score is one entry here.

Selection is a global, stable sort over the whole [B, L] array (keys: invalid, NaN, -score, flat
index), so the result is the same under any sharding, and k is computed in exact integer arithmetic.

Lineage: the excess loss is RHO-LOSS's reducible holdout loss (Mindermann et al., ICML 2022,
"Prioritized Training on Points that are Learnable, Worth Learning, and Not Yet Learnt"), which
selects whole examples (scope="document" here: `select_documents`); Rho-1 applies it per token.
`target_loss` is ESLM's reference-free score; `weighting="prob"` is DFT's probability weighting
(`prob_weights`); `reverse_excess` against an EMA of the target is ssToken's retrospective excess
(rho_jax.train). Goldfish masking (rho_jax.goldfish) folds into `valid_BxL` before any of this.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp

sg = jax.lax.stop_gradient

SCOPES = ("batch", "sequence", "document")  # document: select_documents
# objective.scope may also be micro_batch: train.py runs "batch" within each micro-batch (approximate
# under grad accumulation), so the config accepts one more scope than slm_objective does.
CONFIG_SCOPES = SCOPES + ("micro_batch",)
WEIGHTINGS = ("hard", "soft", "prob")  # prob: prob_weights on top of the hard mask
_RATIO_SCALE = 1_000_000  # ratios are exact to 6 decimal places


# ----------------------------------------------------------------------------- exact top-k

def compute_k(n_valid, ratio) -> jax.Array:
    """k = ceil(ratio * n_valid) as int32, exact in integer arithmetic (x64 stays off).

    ratio is rounded to 6 decimals (num / 10^6, at least 1e-6); n_valid may be any int32 count up to
    2^31 - 1, scalar or array. Works for Python floats and traced scalars (a traced ratio is rounded
    in f32, which is exact for 6-decimal ratios). k >= 1 whenever n_valid >= 1.
    """
    if isinstance(ratio, (int, float)):
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"selection ratio={ratio}; expected 0 < ratio <= 1 (e.g. 0.6 keeps 60% of tokens)")
        num = jnp.int32(max(1, round(ratio * _RATIO_SCALE)))
    else:
        num = jnp.clip(jnp.round(jnp.asarray(ratio, jnp.float32) * _RATIO_SCALE), 1, _RATIO_SCALE).astype(jnp.int32)
    n = jnp.asarray(n_valid, jnp.int32)
    # n * num / 10^6 with n = q*10^6 + r1*10^3 + r0 and num = a*10^3 + b: every product fits in int32.
    q, r = n // _RATIO_SCALE, n % _RATIO_SCALE
    r1, r0 = r // 1000, r % 1000
    a, b = num // 1000, num % 1000
    rest = (r1 * b + r0 * a) * 1000 + r0 * b  # <= 1997999001 < 2^31
    return q * num + r1 * a + (rest + _RATIO_SCALE - 1) // _RATIO_SCALE


def _sort_keys(score, valid, index, tiebreak=None):
    """Ascending sort keys that put valid, high, non-NaN scores first, ties by lower `tiebreak` (when
    given) then lower index; the index comes last (it is also the sort's payload)."""
    score = jnp.asarray(score)
    nan = jnp.isnan(score) if jnp.issubdtype(score.dtype, jnp.floating) else jnp.zeros(score.shape, bool)
    neg = -jnp.where(nan, 0, score)
    ties = () if tiebreak is None else (jnp.broadcast_to(jnp.asarray(tiebreak, jnp.int32), score.shape),)
    return ((~valid).astype(jnp.int32), nan.astype(jnp.int32), neg, *ties, index)


def random_tiebreak(rng, shape) -> jax.Array:
    """int32 [shape]: a random permutation of the flat positions, to break score ties at random (select_topk's
    `tiebreak`) where the flat index would favour the first rows (an EMA reference equal to the target: every
    score 0)."""
    n = math.prod(shape)
    return jax.random.permutation(rng, n).astype(jnp.int32).reshape(shape)


def rank_scores(score_BxL: jax.Array, valid_BxL: jax.Array, scope: str = "batch", tiebreak_BxL=None) -> jax.Array:
    """int32 rank of every position (0 = best) in the order used by `select_topk`.

    Order: valid before invalid, then non-NaN before NaN, then higher score, then lower `tiebreak_BxL`
    (int32, when given), then lower row-major flat index. scope="sequence" ranks within each row instead
    of over the whole array.
    """
    if scope not in ("batch", "sequence"):
        raise ValueError(f"scope={scope!r}; token ranking takes 'batch' or 'sequence' "
                         f"(scope='document' needs segment ids: select_documents)")
    shape = score_BxL.shape
    valid_BxL = jnp.asarray(valid_BxL, bool)
    n_keys = 4 if tiebreak_BxL is None else 5
    if scope == "batch":
        score_N, valid_N = score_BxL.reshape(-1), valid_BxL.reshape(-1)
        idx_N = jnp.arange(score_N.size, dtype=jnp.int32)
        tie_N = None if tiebreak_BxL is None else jnp.reshape(tiebreak_BxL, -1)
        *_, perm_N = jax.lax.sort(_sort_keys(score_N, valid_N, idx_N, tie_N), num_keys=n_keys)
        return jnp.zeros_like(idx_N).at[perm_N].set(idx_N, unique_indices=True).reshape(shape)
    idx_BxL = jnp.broadcast_to(jnp.arange(shape[1], dtype=jnp.int32), shape)
    *_, perm_BxL = jax.lax.sort(_sort_keys(score_BxL, valid_BxL, idx_BxL, tiebreak_BxL), dimension=1,
                                num_keys=n_keys)
    rows = jnp.arange(shape[0], dtype=jnp.int32)[:, None]
    return jnp.zeros_like(idx_BxL).at[rows, perm_BxL].set(idx_BxL, unique_indices=True)


def select_topk(scores, valid, ratio, scope: str = "batch", tiebreak=None) -> jax.Array:
    """bool mask [B, L] of exactly k = compute_k(#valid, ratio) valid positions with the highest scores.

    Ties go to the lower `tiebreak` (int32 [B, L], e.g. `random_tiebreak`; when given), then to the lower
    row-major flat index; invalid positions are never selected; a NaN score at
    a valid position ranks below every number, -inf included. One global stable sort, no per-device
    logic: inside jit on sharded arrays the mask is identical under any mesh. scope="sequence"
    selects k_row = compute_k(#valid in row, ratio) per row with the same tie rule.
    """
    valid = jnp.asarray(valid, bool)
    rank = rank_scores(scores, valid, scope, tiebreak)
    if scope == "batch":
        k = compute_k(jnp.sum(valid, dtype=jnp.int32), ratio)
    else:
        k = compute_k(jnp.sum(valid, axis=1, dtype=jnp.int32), ratio)[:, None]
    return (rank < k) & valid  # `& valid` is already implied (k <= n_valid); it documents the rule


def select_documents(score_BxL, valid_BxL, segment_ids_BxL, ratio, tiebreak=None) -> jax.Array:
    """bool [B, L]: every valid token of the top ceil(ratio * n_segments) segments of the batch (RHO-LOSS
    selects whole examples). Segments with >= 1 valid token rank by the mean score of their valid tokens
    (select_topk's order: a NaN mean last, ties to the lower `tiebreak` at the segment's first token, when
    given, then to the lower flat index of the segment's first token)."""
    valid = jnp.asarray(valid_BxL, bool)
    mean_BxL, is_doc_BxL, first_BxL = segment_means(score_BxL, valid, segment_ids_BxL)
    chosen_N = select_topk(mean_BxL, is_doc_BxL, ratio, tiebreak=tiebreak).reshape(-1)
    return chosen_N[first_BxL.reshape(-1)].reshape(valid.shape) & valid


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


# ----------------------------------------------------------------------------- scores

@flax.struct.dataclass
class ScoreInputs:
    """The per-token arrays a score may read, f32 / bool [B, L]; what a caller lacks is None."""

    ce_BxL: Any  # the target's own CE (stop_gradient applied by the scores)
    valid_BxL: Any  # bool: trainable prediction positions (Goldfish already folded in)
    ref_ce_BxL: Any = None
    ref_entropy_BxL: Any = None
    segment_ids_BxL: Any = None  # scope="document" only


@dataclasses.dataclass(frozen=True)
class Score:
    """One score function: `fn(inputs, rng) -> score_BxL` (higher = more likely selected) and what it reads."""

    fn: Callable[[ScoreInputs, Any], jax.Array]
    target_ce: bool = False
    ref_ce: bool = False
    ref_entropy: bool = False
    rng: bool = False


def _rank_combination(x: ScoreInputs, combine) -> jax.Array:
    """int32 -combine(r1, r2): r1 / r2 = rank by low ref_ce / low ref_entropy over the valid tokens (0 = best)."""
    r1 = rank_scores(-jnp.asarray(x.ref_ce_BxL, jnp.float32), x.valid_BxL)
    r2 = rank_scores(-jnp.asarray(x.ref_entropy_BxL, jnp.float32), x.valid_BxL)
    return -combine(r1, r2)


# excess          sg(ce) - ref_ce, SIGNED: tokens the model already beats the reference on rank lowest.
# reverse_excess  -(sg(ce) - ref_ce).
# ref_loss        -ref_ce (keep tokens the reference finds easy).
# ref_entropy     -ref_entropy (keep tokens the reference is confident on).
# random          uniform [0, 1) from `rng` (control).
# ref_loss_and_entropy / ref_loss_or_entropy (int32): -max(r1, r2) / -min(r1, r2) (`_rank_combination`).
#     A token is in both top-j sets iff max(r1, r2) < j, so the top k of -max(r1, r2) is the intersection
#     of the two top-j sets grown until it holds k tokens (union: -min); exactly k tokens are kept.
# target_loss     sg(ce): the tokens the model itself finds hardest, no reference (ESLM, arXiv 2505.19893).
SCORES: dict[str, Score] = {
    "excess": Score(lambda x, _: sg(x.ce_BxL).astype(jnp.float32) - x.ref_ce_BxL, target_ce=True, ref_ce=True),
    "reverse_excess": Score(lambda x, _: x.ref_ce_BxL - sg(x.ce_BxL).astype(jnp.float32), target_ce=True,
                            ref_ce=True),
    "ref_loss": Score(lambda x, _: -jnp.asarray(x.ref_ce_BxL, jnp.float32), ref_ce=True),
    "ref_entropy": Score(lambda x, _: -jnp.asarray(x.ref_entropy_BxL, jnp.float32), ref_entropy=True),
    "random": Score(lambda x, rng: jax.random.uniform(rng, jnp.shape(x.valid_BxL), jnp.float32), rng=True),
    "ref_loss_and_entropy": Score(lambda x, _: _rank_combination(x, jnp.maximum), ref_ce=True, ref_entropy=True),
    "ref_loss_or_entropy": Score(lambda x, _: _rank_combination(x, jnp.minimum), ref_ce=True, ref_entropy=True),
    "target_loss": Score(lambda x, _: sg(x.ce_BxL).astype(jnp.float32), target_ce=True),
}
SCORE_FUNCTIONS = tuple(SCORES)  # the names config.validate accepts


def _score(name: str) -> Score:
    if name not in SCORES:
        raise ValueError(f"score function {name!r} is unknown; expected one of {SCORE_FUNCTIONS}")
    return SCORES[name]


def needs_target_ce(name: str) -> bool:
    """Whether score `name` reads the training model's own CE (excess losses do)."""
    return _score(name).target_ce


def needs_ref(name: str) -> bool:
    """Whether score `name` needs the reference model's per-token CE / entropy."""
    s = _score(name)
    return s.ref_ce or s.ref_entropy


def needs_ref_entropy(name: str) -> bool:
    """Whether score `name` reads the reference's per-token entropy (the cache must hold it)."""
    return _score(name).ref_entropy


def score_tokens(name: str, inputs: ScoreInputs, rng=None) -> jax.Array:
    """Per-token selection score [B, L] of table entry `name` (f32, int32 for the rank combinations).

    The function sees only the inputs it declares (the others are None), so a score reading something it
    does not declare fails at once. A declared input that is None is an error naming it.
    """
    s = _score(name)
    if s.ref_ce and inputs.ref_ce_BxL is None:
        raise ValueError(f"score {name!r} needs reference CE; got None")
    if s.ref_entropy and inputs.ref_entropy_BxL is None:
        raise ValueError(f"score {name!r} needs reference entropy; got None (score the cache with entropy)")
    if s.rng and rng is None:
        raise ValueError(f"score {name!r} needs an rng key; pass rng=jax.random.key(...)")
    seen = ScoreInputs(ce_BxL=inputs.ce_BxL if s.target_ce else None, valid_BxL=inputs.valid_BxL,
                       ref_ce_BxL=inputs.ref_ce_BxL if s.ref_ce else None,
                       ref_entropy_BxL=inputs.ref_entropy_BxL if s.ref_entropy else None)
    return s.fn(seen, rng if s.rng else None)


# ----------------------------------------------------------------------------- weights and loss

def soft_weights(score_BxL, valid_BxL, temperature: float) -> jax.Array:
    """f32 [B, L] = n_valid * softmax(score / T) over the valid tokens of the whole array.

    Mean 1 over valid tokens, 0 on invalid ones, increasing in score; stop_gradient applied.
    """
    valid = jnp.asarray(valid_BxL, bool)
    s = sg(jnp.asarray(score_BxL, jnp.float32)) / temperature
    m = jnp.max(jnp.where(valid, s, -jnp.inf))
    e = jnp.where(valid, jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0)), 0.0)
    z = jnp.sum(e)
    n = jnp.sum(valid, dtype=jnp.float32)
    return sg(jnp.where(z > 0, e * (n / jnp.where(z > 0, z, 1.0)), 0.0))


def clm_weights(valid_BxL) -> jax.Array:
    """Plain causal-LM weights: 1.0 on every valid token."""
    return jnp.asarray(valid_BxL, jnp.float32)


def ratio_at(step, r0: float, r1: float | None = None, steps: int | None = None):
    """Selection ratio at `step`: constant r0, or linear from r0 to r1 over `steps` then held at r1."""
    if r1 is None:
        return r0
    if not steps or steps <= 0:
        raise ValueError(f"ratio schedule {r0}->{r1} needs steps > 0; got steps={steps}")
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / steps, 0.0, 1.0)
    return r0 + (r1 - r0) * frac


def masked_mean(ce_BxL, weight_BxL, denom=None) -> jax.Array:
    """sum(ce * w) / sum(w), or / denom (e.g. the global weight sum over all micro-batches). 0 if empty."""
    num = jnp.sum(ce_BxL * weight_BxL)
    den = jnp.sum(weight_BxL) if denom is None else jnp.asarray(denom, jnp.float32)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)



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


@dataclasses.dataclass(frozen=True)
class Selector:
    """How a step selects. `ratio` may be a traced scalar (the `ratio_at` schedule); the rest is static."""

    ratio: Any = 0.6
    score: str = "excess"
    scope: str = "batch"  # batch / sequence / document
    weighting: str = "hard"  # hard / soft / prob
    temperature: float = 1.0  # soft weighting only
    random_ties: bool = False  # break score ties at random (`random_tiebreak` from rng folded with 1)


@flax.struct.dataclass
class Selection:
    """What `slm_objective` chose: token weights f32 [B, L] (stop_gradient) and the score threshold (f32 scalar)."""

    weight_BxL: jax.Array
    threshold: jax.Array


def _soft_threshold(score_BxL, valid_BxL, temperature: float) -> jax.Array:
    """The score whose soft weight is exactly 1 (n * exp(s/T) / Z == 1): above it tokens are up-weighted."""
    s = score_BxL / temperature
    m = jnp.max(jnp.where(valid_BxL, s, -jnp.inf))
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    mean_exp = jnp.sum(jnp.where(valid_BxL, jnp.exp(s - m), 0.0)) / jnp.maximum(jnp.sum(valid_BxL), 1)
    return temperature * (m + jnp.log(mean_exp))


def slm_objective(sel: Selector, inputs: ScoreInputs, rng=None) -> Selection:
    """Token weights for SLM; the loss is `masked_mean(ce_BxL, selection.weight_BxL)`.

    hard: the select_topk mask as f32 (sel.ratio and sel.scope apply; scope="document" selects whole segments of
    inputs.segment_ids_BxL, select_documents). prob: the hard mask times p(target) = exp(-ce), renormalised to
    mean 1 over the selected tokens (prob_weights). soft: soft_weights(score, valid, temperature) (ratio and
    scope ignored). Threshold: hard / prob, the lowest selected score (NaN if nothing is selected); soft, the
    score whose weight is exactly 1. sel.random_ties: ties broken by `random_tiebreak` (rng folded with 1)
    instead of by flat index: an EMA reference starts equal to the target, so every excess is 0 and the index
    would pick the first rows.
    """
    if sel.weighting not in WEIGHTINGS:
        raise ValueError(f"weighting={sel.weighting!r}; expected one of {WEIGHTINGS}")
    valid = jnp.asarray(inputs.valid_BxL, bool)
    ce = sg(jnp.asarray(inputs.ce_BxL, jnp.float32))
    raw_score_BxL = score_tokens(sel.score, inputs.replace(ce_BxL=ce, valid_BxL=valid), rng)  # int32: rank scores
    score_BxL = raw_score_BxL.astype(jnp.float32)
    if sel.random_ties and rng is None:
        raise ValueError("random_ties needs an rng key; pass rng=jax.random.key(...)")
    ties = random_tiebreak(jax.random.fold_in(rng, 1), valid.shape) if sel.random_ties else None
    if sel.weighting == "soft":
        weight = soft_weights(score_BxL, valid, sel.temperature)
        return Selection(sg(weight), sg(_soft_threshold(score_BxL, valid, sel.temperature)))
    if sel.scope == "document":
        if inputs.segment_ids_BxL is None:
            raise ValueError("scope='document' needs segment_ids_BxL (the packed segments to rank)")
        mask = select_documents(score_BxL, valid, inputs.segment_ids_BxL, sel.ratio, ties)
    else:
        mask = select_topk(raw_score_BxL, valid, sel.ratio, sel.scope, ties)
    weight = mask.astype(jnp.float32) if sel.weighting == "hard" else prob_weights(ce, mask)
    threshold = jnp.min(jnp.where(mask, score_BxL, jnp.inf))
    return Selection(sg(weight), sg(jnp.where(jnp.any(mask), threshold, jnp.nan)))


def selection_stats(selection: Selection, inputs: ScoreInputs) -> dict:
    """Scalar statistics of a selection (f32 / int32, no gradient).

      threshold          from the Selection,
      n_valid, n_selected (tokens with weight > 0), selected_fraction = n_selected / n_valid,
      loss_all           mean ce over valid tokens,
      loss_unselected    mean ce over valid tokens with weight 0 (0 if none),
      ref_loss, excess_mean  mean ref_ce and mean (ce - ref_ce) over valid tokens (only if ref_ce is given).
    """
    valid = jnp.asarray(inputs.valid_BxL, bool)
    ce = sg(jnp.asarray(inputs.ce_BxL, jnp.float32))
    selected = selection.weight_BxL > 0
    n_valid = jnp.sum(valid, dtype=jnp.int32)
    n_selected = jnp.sum(selected, dtype=jnp.int32)
    validf = valid.astype(jnp.float32)
    stats = {
        "threshold": selection.threshold,
        "n_valid": n_valid,
        "n_selected": n_selected,
        "selected_fraction": n_selected / jnp.maximum(n_valid, 1).astype(jnp.float32),
        "loss_all": masked_mean(ce, validf),
        "loss_unselected": masked_mean(ce, (valid & ~selected).astype(jnp.float32)),
    }
    if inputs.ref_ce_BxL is not None:
        ref_ce = jnp.asarray(inputs.ref_ce_BxL, jnp.float32)
        stats["ref_loss"] = masked_mean(ref_ce, validf)
        stats["excess_mean"] = masked_mean(ce - ref_ce, validf)
    return jax.tree.map(sg, stats)

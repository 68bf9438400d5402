"""Selective Language Modeling (Rho-1): the objective on one screen.

    targets_BxL, valid_BxL = shift_targets(tokens_BxL, segment_ids_BxL)    # logits[t] predicts tokens[t+1]
    ce_BxL    = cross_entropy(logits_BxLxV, targets_BxL)                     # f32 nats
    score_BxL = score_tokens("excess", ce_BxL, ref_ce_BxL, ...)            # sg(ce) - ref_ce, signed
    mask_BxL  = select_topk(score_BxL, valid_BxL, ratio)                     # exactly ceil(ratio * n_valid)
    loss      = masked_mean(ce_BxL, mask_BxL)                                # sum(ce * mask) / sum(mask)

`slm_objective` bundles the middle three lines (plus soft weighting and scalar stats); ratio = 1.0
selects every valid token, so its weights equal `clm_weights`. Unselected tokens stay in the input
and attention: the selection only weights the loss.

Selection is a global, stable sort over the whole [B, L] array (keys: invalid, NaN, -score, flat
index), so the result is the same under any sharding, and k is computed in exact integer arithmetic.

Lineage: the excess loss is RHO-LOSS's reducible holdout loss (Mindermann et al., ICML 2022,
"Prioritized Training on Points that are Learnable, Worth Learning, and Not Yet Learnt"), which
selects whole examples (scope="document" here); Rho-1 applies it per token. The plug-ins from the
follow-up literature (document scope, Goldfish masking, DFT's prob weighting) live in
`rho_jax.selection`; `target_loss` is ESLM's reference-free score.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rho_jax import selection

sg = jax.lax.stop_gradient

SCORE_FUNCTIONS = ("excess", "reverse_excess", "ref_loss", "ref_entropy", "random",
                   "ref_loss_and_entropy", "ref_loss_or_entropy", "target_loss")
SCOPES = ("batch", "sequence", "document")  # document: select_documents
# objective.scope may also be micro_batch: train.py runs "batch" within each micro-batch (approximate
# under grad accumulation), so the config accepts one more scope than slm_objective does.
CONFIG_SCOPES = SCOPES + ("micro_batch",)
WEIGHTINGS = ("hard", "soft", "prob")  # prob: selection.prob_weights on top of the hard mask
_RATIO_SCALE = 1_000_000  # ratios are exact to 6 decimal places


# ----------------------------------------------------------------------------- per-token CE

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
        raw = jnp.einsum("bld,dc->blc", h_BxLxD, w_DxC, preferred_element_type=jnp.float32)
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
    mean_BxL, is_doc_BxL, first_BxL = selection.segment_means(score_BxL, valid, segment_ids_BxL)
    chosen_N = select_topk(mean_BxL, is_doc_BxL, ratio, tiebreak=tiebreak).reshape(-1)
    return chosen_N[first_BxL.reshape(-1)].reshape(valid.shape) & valid


# ----------------------------------------------------------------------------- scores

def needs_target_ce(name: str) -> bool:
    """Whether score `name` reads the training model's own CE (excess losses do)."""
    _check_score(name)
    return name in ("excess", "reverse_excess", "target_loss")


def needs_ref(name: str) -> bool:
    """Whether score `name` needs the reference model's per-token CE / entropy."""
    _check_score(name)
    return name not in ("random", "target_loss")


def _check_score(name):
    if name not in SCORE_FUNCTIONS:
        raise ValueError(f"score function {name!r} is unknown; expected one of {SCORE_FUNCTIONS}")


def score_tokens(name: str, ce_BxL, ref_ce_BxL, ref_entropy_BxL, valid_BxL, rng=None) -> jax.Array:
    """Per-token selection score [B, L]: higher = more likely selected. Applies stop_gradient itself.

    excess          sg(ce) - ref_ce, SIGNED: tokens the model already beats the reference on rank lowest.
    reverse_excess  -(sg(ce) - ref_ce).
    ref_loss        -ref_ce (keep tokens the reference finds easy).
    ref_entropy     -ref_entropy (keep tokens the reference is confident on).
    target_loss     sg(ce): the tokens the model itself finds hardest, no reference (ESLM, arXiv 2505.19893).
    random          uniform [0, 1) from `rng` (control).
    ref_loss_and_entropy / ref_loss_or_entropy (int32): with r1 = rank by low ref_ce and r2 = rank by
        low ref_entropy over the valid tokens of the whole array (0 = best, ties by flat index),
        score = -max(r1, r2) / -min(r1, r2). A token is in both top-j sets iff max(r1, r2) < j, so the
        top k of -max(r1, r2) is the intersection of the two top-j sets grown until it holds k tokens
        (union: -min, the top-j sets' union); selecting by this score keeps exactly k tokens.
    Inputs a score does not need may be None (e.g. ref_* in CLM, ce for ref_loss).
    """
    _check_score(name)
    if needs_ref(name) and (ref_ce_BxL is None if name != "ref_entropy" else ref_entropy_BxL is None):
        raise ValueError(f"score {name!r} needs reference {'entropy' if name == 'ref_entropy' else 'CE'}; got None")
    if name == "excess":
        return sg(ce_BxL).astype(jnp.float32) - ref_ce_BxL
    if name == "reverse_excess":
        return ref_ce_BxL - sg(ce_BxL).astype(jnp.float32)
    if name == "target_loss":
        return sg(ce_BxL).astype(jnp.float32)
    if name == "ref_loss":
        return -jnp.asarray(ref_ce_BxL, jnp.float32)
    if name == "ref_entropy":
        return -jnp.asarray(ref_entropy_BxL, jnp.float32)
    if name == "random":
        if rng is None:
            raise ValueError("score 'random' needs an rng key; pass rng=jax.random.key(...)")
        return jax.random.uniform(rng, jnp.shape(valid_BxL), jnp.float32)
    if ref_entropy_BxL is None:
        raise ValueError(f"score {name!r} needs reference entropy; got None (score the cache with entropy)")
    r1 = rank_scores(-jnp.asarray(ref_ce_BxL, jnp.float32), valid_BxL)
    r2 = rank_scores(-jnp.asarray(ref_entropy_BxL, jnp.float32), valid_BxL)
    return -(jnp.maximum(r1, r2) if name == "ref_loss_and_entropy" else jnp.minimum(r1, r2))


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


def slm_objective(ce_BxL, valid_BxL, ref_ce_BxL=None, ref_entropy_BxL=None, *, ratio, score: str = "excess",
                  scope: str = "batch", weighting: str = "hard", temperature: float = 1.0, rng=None,
                  segment_ids_BxL=None, random_ties: bool = False):
    """Token weights for SLM and scalar stats; the loss is `masked_mean(ce_BxL, weight_BxL)`.

    Returns (weight_BxL f32, stats). hard: the select_topk mask as f32 (ratio, scope apply;
    scope="document" selects whole segments of `segment_ids_BxL`, select_documents).
    prob: the hard mask times p(target) = exp(-ce), renormalised to mean 1 over the selected tokens
    (selection.prob_weights). soft: soft_weights(score, valid, temperature) (ratio, scope ignored).
    Goldfish masking, if any, is already folded into `valid_BxL`.
    random_ties: break score ties at random (`random_tiebreak`, from `rng` folded with 1) instead of by flat
    index: an EMA reference starts equal to the target, so every excess is 0 and the index would pick the
    first rows.
    stats (f32 / int32 scalars, no gradient):
      threshold          hard / prob: lowest selected score (NaN if nothing is selected);
                         soft: the score whose weight is exactly 1 (above it tokens are up-weighted).
      n_valid, n_selected (tokens with weight > 0), selected_fraction = n_selected / n_valid,
      loss_all           mean ce over valid tokens,
      loss_unselected    mean ce over valid tokens with weight 0 (0 if none),
      ref_loss, excess_mean  mean ref_ce and mean (ce - ref_ce) over valid tokens (only if ref_ce given).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting={weighting!r}; expected one of {WEIGHTINGS}")
    valid = jnp.asarray(valid_BxL, bool)
    ce = sg(jnp.asarray(ce_BxL, jnp.float32))
    raw_score_BxL = score_tokens(score, ce, ref_ce_BxL, ref_entropy_BxL, valid, rng)  # int32 for rank scores
    score_BxL = raw_score_BxL.astype(jnp.float32)
    if random_ties and rng is None:
        raise ValueError("random_ties needs an rng key; pass rng=jax.random.key(...)")
    ties = random_tiebreak(jax.random.fold_in(rng, 1), valid.shape) if random_ties else None
    if weighting in ("hard", "prob"):
        if scope == "document":
            if segment_ids_BxL is None:
                raise ValueError("scope='document' needs segment_ids_BxL (the packed segments to rank)")
            mask = select_documents(score_BxL, valid, segment_ids_BxL, ratio, ties)
        else:
            mask = select_topk(raw_score_BxL, valid, ratio, scope, ties)
        weight = mask.astype(jnp.float32) if weighting == "hard" else selection.prob_weights(ce, mask)
        threshold = jnp.min(jnp.where(mask, score_BxL, jnp.inf))
        threshold = jnp.where(jnp.any(mask), threshold, jnp.nan)
    else:
        weight = soft_weights(score_BxL, valid, temperature)
        s = score_BxL / temperature
        m = jnp.max(jnp.where(valid, s, -jnp.inf))
        m = jnp.where(jnp.isfinite(m), m, 0.0)
        mean_exp = jnp.sum(jnp.where(valid, jnp.exp(s - m), 0.0)) / jnp.maximum(jnp.sum(valid), 1)
        threshold = temperature * (m + jnp.log(mean_exp))  # n * exp(s/T) / Z == 1
    n_valid = jnp.sum(valid, dtype=jnp.int32)
    selected = weight > 0
    n_selected = jnp.sum(selected, dtype=jnp.int32)
    validf = valid.astype(jnp.float32)
    stats = {
        "threshold": threshold,
        "n_valid": n_valid,
        "n_selected": n_selected,
        "selected_fraction": n_selected / jnp.maximum(n_valid, 1).astype(jnp.float32),
        "loss_all": masked_mean(ce, validf),
        "loss_unselected": masked_mean(ce, (valid & ~selected).astype(jnp.float32)),
    }
    if ref_ce_BxL is not None:
        ref_ce = jnp.asarray(ref_ce_BxL, jnp.float32)
        stats["ref_loss"] = masked_mean(ref_ce, validf)
        stats["excess_mean"] = masked_mean(ce - ref_ce, validf)
    return sg(weight), jax.tree.map(sg, stats)

"""The SLM objective against a float64 numpy reference, plus exact-k, tie, sharding and score rules."""

import math
import random
import re
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import numpy_objective as ref
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rho_jax import ce as C
from rho_jax import objective as O

B, L, V = 4, 16, 11
SEG = np.array([[1] * 5 + [2] * 7 + [3] * 4,          # three packed documents
                [1] * 10 + [0] * 6,                   # trailing padding
                [1] * 16,                             # one long document
                [0] * 2 + [1] * 3 + [2] * 3 + [0] * 8], np.int32)  # leading + trailing padding



def objective(ce, valid, ref_ce=None, ref_ent=None, *, rng=None, segment_ids_BxL=None, **selector):
    """(weight_BxL, stats) of slm_objective with a Selector of `selector` (ratio, score, scope, ...)."""
    inputs = O.ScoreInputs(ce_BxL=ce, valid_BxL=valid, ref_ce_BxL=ref_ce, ref_entropy_BxL=ref_ent,
                           segment_ids_BxL=segment_ids_BxL)
    selection = O.slm_objective(O.Selector(**selector), inputs, rng)
    return selection.weight_BxL, O.selection_stats(selection, inputs)

def _inputs(seed=0):
    rs = np.random.RandomState(seed)
    tokens = rs.randint(0, V, (B, L)).astype(np.int32)
    logits = (1.5 * rs.randn(B, L, V)).astype(np.float32)
    ref_ce = rs.uniform(0.0, 4.0, (B, L)).astype(np.float32)
    ref_ent = rs.uniform(0.0, 2.0, (B, L)).astype(np.float32)
    return tokens, logits, ref_ce, ref_ent


def test_shift_targets_marks_document_boundaries_and_padding():
    tokens = np.array([[10, 11, 12, 13, 14, 15]], np.int32)
    seg = np.array([[1, 1, 2, 2, 2, 0]], np.int32)
    targets, valid = C.shift_targets(tokens, seg)
    np.testing.assert_array_equal(targets, [[11, 12, 13, 14, 15, 0]])
    # 11 after doc 1 ok; 11->12 crosses into doc 2; 12->13, 13->14 ok; 14->pad and the last column invalid
    np.testing.assert_array_equal(valid, [[True, False, True, True, False, False]])
    t_ref, v_ref = ref.shift_targets(np.asarray(_inputs()[0]), SEG)
    t_jax, v_jax = C.shift_targets(_inputs()[0], SEG)
    np.testing.assert_array_equal(t_jax, t_ref)
    np.testing.assert_array_equal(v_jax, v_ref)


def test_cross_entropy_and_entropy_match_numpy():
    tokens, logits, _, _ = _inputs(1)
    targets, _ = ref.shift_targets(tokens, SEG)
    np.testing.assert_allclose(C.cross_entropy(logits, targets),
                               ref.cross_entropy(logits.astype(np.float64), targets), atol=1e-6)
    np.testing.assert_allclose(C.token_entropy(logits), ref.entropy(logits.astype(np.float64)), atol=1e-6)


@pytest.mark.parametrize("score", O.SCORE_FUNCTIONS)
@pytest.mark.parametrize("scope,weighting", [("batch", "hard"), ("sequence", "hard"), ("batch", "soft"),
                                             ("document", "hard"), ("batch", "prob"), ("document", "prob")])
def test_objective_matches_numpy_reference(score, scope, weighting):
    tokens, logits, ref_ce, ref_ent = _inputs(2)
    targets, valid = C.shift_targets(tokens, SEG)
    rng = jax.random.key(3)
    kw = dict(ratio=0.6, score=score, scope=scope, weighting=weighting, temperature=2.0)

    def loss_fn(logits_BxLxV):
        ce_BxL = C.cross_entropy(logits_BxLxV, targets)
        weight_BxL, stats = objective(ce_BxL, valid, ref_ce, ref_ent, rng=rng, segment_ids_BxL=SEG, **kw)
        return O.masked_mean(ce_BxL, weight_BxL), (weight_BxL, stats)

    (loss, (weight, stats)), grad = jax.value_and_grad(loss_fn, has_aux=True)(jnp.asarray(logits))
    random_scores = np.asarray(O.score_tokens("random", O.ScoreInputs(ce_BxL=None, valid_BxL=valid), rng), np.float64)
    w_np, loss_np, grad_np, stats_np = ref.objective(
        logits.astype(np.float64), np.asarray(targets), np.asarray(valid), ref_ce.astype(np.float64),
        ref_ent.astype(np.float64), random_scores=random_scores, seg=SEG, **kw)

    if weighting == "hard":
        np.testing.assert_array_equal(weight, w_np)
        if scope != "document":
            assert stats["n_selected"] == (ref.compute_k(int(valid.sum()), 0.6) if scope == "batch" else
                                           sum(ref.compute_k(int(r.sum()), 0.6) for r in np.asarray(valid)))
    else:
        np.testing.assert_allclose(weight, w_np, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss, loss_np, atol=1e-6)
    np.testing.assert_allclose(grad, grad_np, atol=1e-6)
    for name, value in stats_np.items():
        np.testing.assert_allclose(stats[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_compute_k_is_exact_against_fractions():
    rs = random.Random(0)
    ns = [0, 1, 2, 3, 10, 100, 999_999, 1_000_000, 1_000_001, 2**24 + 1, 2**31 - 2, 2**31 - 1]
    ns += [rs.randrange(0, 2**31) for _ in range(200)] + [rs.randrange(0, 5000) for _ in range(100)]
    ratios = [0.6, 0.7, 1 / 3, 1.0, 0.000001, 0.999999, 0.123457, 0.5] + \
        [rs.randrange(1, 10**6 + 1) / 10**6 for _ in range(40)]
    n_arr = jnp.asarray(ns, jnp.int32)
    traced = jax.jit(O.compute_k)
    for r in ratios:
        want = [math.ceil(Fraction(round(r * 10**6), 10**6) * n) for n in ns]
        np.testing.assert_array_equal(O.compute_k(n_arr, r), want, err_msg=f"python ratio {r}")
        np.testing.assert_array_equal(traced(n_arr, jnp.float32(r)), want, err_msg=f"traced ratio {r}")
    assert [int(O.compute_k(n, r)) for n, r in [(10, 0.6), (100, 0.6), (10, 0.7), (30000, 1 / 3)]] == \
        [6, 60, 7, 10000]
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="ratio"):
            O.compute_k(10, bad)


@pytest.mark.parametrize("ratio", [0.6, 0.7])
def test_select_topk_exact_k_and_ties_on_small_counts(ratio):
    rs = np.random.RandomState(4)
    for n in range(1, 51):
        valid = np.zeros(64, bool)
        valid[rs.choice(64, n, replace=False)] = True
        valid = valid.reshape(4, 16)
        k = math.ceil(Fraction(round(ratio * 10**6), 10**6) * n)
        # all equal scores (invalid ones huge): the first k valid positions in row-major order
        scores = np.where(valid, 1.0, 1e9).astype(np.float32)
        mask = np.asarray(O.select_topk(scores, valid, ratio))
        assert mask.sum() == k and not (mask & ~valid).any()
        np.testing.assert_array_equal(np.flatnonzero(mask), np.flatnonzero(valid)[:k])
        # blocks of equal scores: matches the numpy lexsort reference
        blocks = rs.randint(0, 3, (4, 16)).astype(np.float32)
        mask = np.asarray(O.select_topk(blocks, valid, ratio))
        assert mask.sum() == k and not (mask & ~valid).any()
        np.testing.assert_array_equal(mask, ref.select_topk(blocks, valid, ratio))


def test_select_topk_nan_and_inf_rank_lowest_and_invalid_never_selected():
    scores = np.array([[np.nan, -np.inf, 0.5, np.inf], [2.0, np.nan, 7.0, -1.0]], np.float32)
    valid = np.array([[1, 1, 1, 0], [1, 1, 0, 1]], bool)
    ranked = [(1, 0), (0, 2), (1, 3), (0, 1), (0, 0), (1, 1)]  # 2.0, 0.5, -1, -inf, NaN (idx 0), NaN (idx 5)
    for k in range(1, 7):
        mask = np.asarray(O.select_topk(scores, valid, math.floor(k / 6 * 10**6) / 10**6))  # k of 6
        want = np.zeros_like(valid)
        for i, j in ranked[:k]:
            want[i, j] = True
        np.testing.assert_array_equal(mask, want, err_msg=f"k={k}")


def test_select_topk_sequence_scope_keeps_k_per_row():
    rs = np.random.RandomState(5)
    scores = rs.randint(0, 4, (B, L)).astype(np.float32)
    valid = SEG != 0
    mask = np.asarray(O.select_topk(scores, valid, 0.6, scope="sequence"))
    for row_mask, row_valid in zip(mask, valid):
        assert row_mask.sum() == ref.compute_k(int(row_valid.sum()), 0.6)
        assert not (row_mask & ~row_valid).any()
    np.testing.assert_array_equal(mask, ref.select_topk(scores, valid, 0.6, "sequence"))


def test_selection_is_identical_under_any_sharding():
    devices = np.array(jax.devices())
    assert devices.size == 8, "conftest must give 8 simulated CPU devices"
    rs = np.random.RandomState(6)
    shape = (8, 32)
    scores = rs.randint(0, 5, shape).astype(np.float32)  # many ties
    ref_ce = rs.randint(0, 4, shape).astype(np.float32)
    ref_ent = rs.randint(0, 4, shape).astype(np.float32)
    valid = rs.rand(*shape) < 0.7

    def select(s, c, e, v):
        return (O.select_topk(s, v, 0.6), O.select_topk(s, v, 0.7, scope="sequence"),
                objective(s, v, c, e, ratio=0.6, score="ref_loss_and_entropy")[0])

    layouts = [NamedSharding(Mesh(devices, ("b",)), P("b", None)),
               NamedSharding(Mesh(devices.reshape(2, 4), ("b", "l")), P("b", "l")),
               NamedSharding(Mesh(devices, ("b",)), P())]
    want = [np.asarray(x) for x in select(scores, ref_ce, ref_ent, valid)]
    np.testing.assert_array_equal(want[0], ref.select_topk(scores, valid, 0.6))
    for sharding in layouts:
        args = [jax.device_put(x, sharding) for x in (scores, ref_ce, ref_ent, valid)]
        got = jax.jit(select)(*args)
        assert got[0].sharding.mesh.devices.size == 8 or got[0].sharding.is_fully_replicated
        for g, w in zip(got, want):
            np.testing.assert_array_equal(np.asarray(g), w, err_msg=str(sharding.spec))


def _select(score, ce, ref_ce, ref_ent, ratio):
    valid = np.ones(np.shape(ref_ce if ref_ce is not None else ce), bool)
    w, _ = objective(jnp.asarray(ce, jnp.float32), valid, ref_ce, ref_ent, ratio=ratio, score=score)
    return set(np.flatnonzero(np.asarray(w)))


def test_excess_is_signed_and_reverse_is_its_opposite():
    ce = np.array([[0.0, 2.0]], np.float32)
    ref_ce = np.array([[5.0, 1.0]], np.float32)  # excess = [-5, +1]: |-5| is larger but ranks lower
    assert _select("excess", ce, ref_ce, None, 0.5) == {1}
    assert _select("reverse_excess", ce, ref_ce, None, 0.5) == {0}


def test_reference_loss_and_entropy_select_low_values():
    ref_ce = np.array([[3.0, 1.0], [2.0, 0.5]], np.float32)
    ref_ent = np.array([[0.1, 0.9], [0.3, 0.2]], np.float32)
    assert _select("ref_loss", np.zeros((2, 2)), ref_ce, None, 0.5) == {1, 3}
    assert _select("ref_entropy", np.zeros((2, 2)), None, ref_ent, 0.5) == {0, 3}


def _top(values, j):
    return set(np.argsort(values.reshape(-1), kind="stable")[:j])


def test_intersection_and_union_hand_made():
    # ranks by ref_ce: 0..5; by ref_entropy: token5, token1, token0, token3, token2, token4
    ref_ce = np.arange(6, dtype=np.float32).reshape(2, 3)
    ref_ent = np.array([2, 1, 4, 3, 5, 0], np.float32).reshape(2, 3)
    zero = np.zeros((2, 3))
    # k = 2: top-3 sets {0,1,2} & {5,1,0} = {0,1}; top-1 sets {0} | {5} = {0,5}
    assert _top(ref_ce, 3) & _top(ref_ent, 3) == {0, 1} and _top(ref_ce, 1) | _top(ref_ent, 1) == {0, 5}
    assert _select("ref_loss_and_entropy", zero, ref_ce, ref_ent, 2 / 6) == {0, 1}
    assert _select("ref_loss_or_entropy", zero, ref_ce, ref_ent, 2 / 6) == {0, 5}


@pytest.mark.parametrize("name,combine", [("ref_loss_and_entropy", set.__and__), ("ref_loss_or_entropy", set.__or__)])
def test_intersection_and_union_are_exact_k_between_set_bounds(name, combine):
    rs = np.random.RandomState(7)
    select = jax.jit(lambda c, e, r: objective(c, jnp.ones((3, 10), bool), c, e, ratio=r, score=name)[0])
    for trial in range(12):
        ref_ce = rs.randint(0, 6, (3, 10)).astype(np.float32)  # ties: broken by flat index
        ref_ent = rs.randn(3, 10).astype(np.float32)
        ratio = rs.choice([0.1, 0.3, 0.5, 0.6, 0.9])
        k = ref.compute_k(30, ratio)
        got = set(np.flatnonzero(np.asarray(select(ref_ce, ref_ent, jnp.float32(ratio)))))
        sets = [combine(_top(ref_ce, j), _top(ref_ent, j)) for j in range(31)]
        below = max((s for s in sets if len(s) <= k), key=len)
        above = min((s for s in sets if len(s) >= k), key=len)
        assert len(got) == k and below <= got <= above, (trial, got, below, above)


def test_soft_weights_mean_one_zero_on_invalid_and_monotone():
    rs = np.random.RandomState(8)
    score = rs.randn(B, L).astype(np.float32)
    valid = SEG != 0
    for t in (0.3, 1.0, 5.0):
        w = np.asarray(O.soft_weights(score, valid, t))
        np.testing.assert_allclose(w[valid].mean(), 1.0, rtol=1e-6)
        assert (w[~valid] == 0).all()
        order = np.argsort(score[valid])
        assert (np.diff(w[valid][order]) > 0).all()
    assert np.asarray(O.soft_weights(score, np.zeros_like(valid), 1.0)).sum() == 0  # no valid: zeros, no NaN


@pytest.mark.parametrize("score", O.SCORE_FUNCTIONS)
@pytest.mark.parametrize("scope", O.SCOPES)
def test_ratio_one_reproduces_clm(score, scope):
    tokens, logits, ref_ce, ref_ent = _inputs(9)
    targets, valid = C.shift_targets(tokens, SEG)
    ce = C.cross_entropy(logits, targets)
    w, stats = objective(ce, valid, ref_ce, ref_ent, ratio=1.0, score=score, scope=scope,
                               rng=jax.random.key(0), segment_ids_BxL=SEG)
    np.testing.assert_array_equal(w, O.clm_weights(valid))
    assert O.masked_mean(ce, w) == O.masked_mean(ce, O.clm_weights(valid))
    assert stats["selected_fraction"] == 1.0 and stats["loss_unselected"] == 0.0


@pytest.mark.parametrize("v,chunk", [(37, 8), (37, 37), (37, 64), (40, 8), (37, 1)])
def test_chunked_cross_entropy_matches_plain(v, chunk):
    rs = np.random.RandomState(10)
    h = jnp.asarray(rs.randn(2, 5, 8), jnp.float32)
    w = jnp.asarray(0.5 * rs.randn(8, v), jnp.float32)
    targets = jnp.asarray(rs.randint(0, v, (2, 5)), jnp.int32)
    r1, r2 = jnp.asarray(rs.rand(2, 2, 5), jnp.float32)

    def plain(h, w):
        logits = jnp.einsum("bld,dv->blv", h, w)
        return jnp.sum(C.cross_entropy(logits, targets) * r1) + jnp.sum(C.token_entropy(logits) * r2)

    def chunked(h, w):
        ce, ent = C.chunked_cross_entropy(h, w, targets, chunk, with_entropy=True)
        return jnp.sum(ce * r1) + jnp.sum(ent * r2)

    logits = h @ w
    np.testing.assert_allclose(C.chunked_cross_entropy(h, w, targets, chunk),
                               C.cross_entropy(logits, targets), atol=1e-5)
    (val_p, grads_p), (val_c, grads_c) = [jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(h, w)
                                          for f in (plain, chunked)]
    np.testing.assert_allclose(val_c, val_p, rtol=1e-5)
    for gc, gp in zip(grads_c, grads_p):
        np.testing.assert_allclose(gc, gp, atol=1e-5)
    if 1 < chunk < v:  # neither pass holds B*L*V f32 values at once (no logits, no stacked chunk residuals)
        def largest_f32(f):
            text = str(jax.make_jaxpr(jax.value_and_grad(f, argnums=(0, 1)))(h, w))
            return max(math.prod(int(d) for d in m.split(",") if d) for m in re.findall(r"f32\[([\d,]*)\]", text))
        assert largest_f32(chunked) < 2 * 5 * v <= largest_f32(plain)


def test_masked_mean_global_denominator_for_accumulation():
    rs = np.random.RandomState(11)
    ce = jnp.asarray(rs.rand(4, 6), jnp.float32)
    w = jnp.asarray(rs.rand(4, 6) < 0.5, jnp.float32)
    total = sum(O.masked_mean(ce[i:i + 2], w[i:i + 2], denom=jnp.sum(w)) for i in (0, 2))
    np.testing.assert_allclose(total, O.masked_mean(ce, w), rtol=1e-6)
    empty, g = jax.value_and_grad(lambda c: O.masked_mean(c, jnp.zeros_like(c)))(ce)
    assert empty == 0.0 and np.isfinite(np.asarray(g)).all()


def test_ratio_schedule():
    assert O.ratio_at(5, 0.6) == 0.6
    np.testing.assert_allclose([O.ratio_at(s, 1.0, 0.6, 100) for s in (0, 50, 100, 500)],
                               [1.0, 0.8, 0.6, 0.6], rtol=1e-6)
    assert int(O.compute_k(100, O.ratio_at(50, 1.0, 0.6, 100))) == 80  # traced ratio stays exact


def test_clm_mode_without_reference():
    tokens, logits, _, _ = _inputs(12)
    targets, valid = C.shift_targets(tokens, SEG)
    ce = C.cross_entropy(logits, targets)
    w, stats = objective(ce, valid, None, None, ratio=0.5, score="random", rng=jax.random.key(1))
    assert int(w.sum()) == ref.compute_k(int(valid.sum()), 0.5) and "ref_loss" not in stats
    assert not O.needs_ref("random") and O.needs_ref("ref_loss") and O.needs_target_ce("excess")
    assert not O.needs_target_ce("ref_entropy")
    with pytest.raises(ValueError, match="excess"):
        objective(ce, valid, None, None, ratio=0.5, score="excess")
    with pytest.raises(ValueError, match="unknown"):
        objective(ce, valid, None, None, ratio=0.5, score="abs_excess")


_FIELDS = {"target_ce": "ce_BxL", "ref_ce": "ref_ce_BxL", "ref_entropy": "ref_entropy_BxL"}


@pytest.mark.parametrize("name", O.SCORE_FUNCTIONS)
def test_score_table_needs_match_what_each_score_reads(name):
    """Each entry computes from exactly what it declares (the rest None), and a declared input that is missing
    fails; needs_ref / needs_target_ce / needs_ref_entropy follow the table."""
    tokens, logits, ref_ce, ref_ent = _inputs(13)
    targets, valid = C.shift_targets(tokens, SEG)
    entry = O.SCORES[name]
    full = {"ce_BxL": C.cross_entropy(logits, targets), "ref_ce_BxL": ref_ce, "ref_entropy_BxL": ref_ent}
    declared = {field: full[field] if getattr(entry, need) else None for need, field in _FIELDS.items()}
    rng = jax.random.key(0) if entry.rng else None
    # the entry itself, with undeclared inputs None: reading one would raise here
    score = entry.fn(O.ScoreInputs(valid_BxL=valid, **declared), rng)
    assert score.shape == (B, L)
    np.testing.assert_array_equal(score, O.score_tokens(name, O.ScoreInputs(valid_BxL=valid, **full), rng))
    for need, field in _FIELDS.items():
        if getattr(entry, need):
            with pytest.raises((ValueError, TypeError, AttributeError)):
                entry.fn(O.ScoreInputs(valid_BxL=valid, **{**declared, field: None}), rng)
    if entry.rng:
        with pytest.raises((ValueError, TypeError)):
            entry.fn(O.ScoreInputs(valid_BxL=valid, **declared), None)
    assert O.needs_ref(name) == (entry.ref_ce or entry.ref_entropy)
    assert O.needs_target_ce(name) == entry.target_ce and O.needs_ref_entropy(name) == entry.ref_entropy

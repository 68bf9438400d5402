"""One test per bug known in public Rho-1 reimplementations. Each checks a property of rho_jax and
shows that the same check fails on a deliberately buggy variant, so the test can catch the bug."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import mesh_of, packed_batch, tiny_config, with_cached_scores

from rho_jax.batch import INPUT_KEYS
from rho_jax import config as config_lib
from rho_jax import ce as ce_lib, loop, model, objective, train


@pytest.fixture(scope="module")
def setup():
    c = tiny_config(mode="slm", reference="cached", ratio=0.5)
    m_cfg = config_lib.model_config(c)
    params = model.init_params(m_cfg, jax.random.PRNGKey(0))
    ref = model.init_params(m_cfg, jax.random.PRNGKey(3))
    return c, m_cfg, params, ref


# ----------------------------------------------------------------------------- abs() on the excess

def _keeps_signed_excess(score_fn) -> bool:
    """Tokens the target already beats the reference on (negative excess, large |excess|) rank last."""
    ce = jnp.array([[0.0, 2.0, 1.0, 3.0]])
    ref_ce = jnp.array([[6.0, 1.0, 5.0, 2.5]])  # excess = [-6, 1, -4, 0.5]
    valid = jnp.ones((1, 4), bool)
    mask = objective.select_topk(score_fn("excess", ce, ref_ce, None, valid), valid, 0.5)
    return set(np.flatnonzero(np.asarray(mask))) == {1, 3}


def _score(name, ce, r, e, v):
    return objective.score_tokens(name, objective.ScoreInputs(ce_BxL=ce, valid_BxL=v, ref_ce_BxL=r, ref_entropy_BxL=e))


def test_excess_is_signed_not_abs():
    abs_excess = lambda name, ce, r, e, v: jnp.abs(_score(name, ce, r, e, v))  # noqa: E731
    assert _keeps_signed_excess(_score)
    assert not _keeps_signed_excess(abs_excess)


# ----------------------------------------------------------------------------- a second label shift

def _ce_predicts_the_next_token(c, m_cfg, params, batch) -> bool:
    """The step's per-token CE at t is -log p(tokens[t+1] | tokens[..t]) from an independent forward."""
    spec = train.StepSpec.from_config(c.copy_and_resolve_references(), m_cfg, None)
    ce = np.asarray(train.loss_and_grads(spec, params, batch, 0, jax.random.PRNGKey(0))[2])
    logits = np.asarray(model.forward(m_cfg, params, batch["tokens"], batch["positions"], batch["segment_ids"]))
    logp = jax.nn.log_softmax(logits, axis=-1)
    _, valid = ce_lib.shift_targets(batch["tokens"], batch["segment_ids"])
    want = -np.take_along_axis(np.asarray(logp)[:, :-1], batch["tokens"][:, 1:, None], -1)[..., 0]
    valid = np.asarray(valid)[:, :-1]
    return np.allclose(ce[:, :-1][valid], want[valid], atol=1e-5)


def test_labels_are_shifted_exactly_once(setup, monkeypatch):
    c, m_cfg, params, _ = setup
    c = tiny_config(mode="clm")
    batch = packed_batch(0)
    assert _ce_predicts_the_next_token(c, m_cfg, params, batch)
    shift = ce_lib.shift_targets

    def shifted_twice(tokens, seg):  # the labels shifted again after the model's own shift
        targets, valid = shift(tokens, seg)
        return shift(targets, seg)[0], valid

    monkeypatch.setattr(train.ce_lib, "shift_targets", shifted_twice)
    assert not _ce_predicts_the_next_token(c, m_cfg, params, batch)


# ----------------------------------------------------------------------------- selection as attention mask

def _unselected_tokens_are_context(step_ce) -> bool:
    """Changing unselected input tokens changes the CE at selected positions after them."""
    batch = packed_batch(1)
    ce, weight = step_ce(batch)
    sel = np.asarray(weight) > 0
    tokens = batch["tokens"].copy()
    # unselected positions (neither their own target nor the previous one selected) followed by a
    # selected position in the same segment
    cand = ~sel & ~np.roll(sel, 1, axis=1)
    cand[:, 0] = False
    tokens[cand] = (tokens[cand] + 1) % 97
    ce2, _ = step_ce({**batch, "tokens": tokens})
    later = sel & (np.cumsum(cand, axis=1) > 0) & ~cand  # selected, after a changed token
    assert later.any()
    return bool(np.any(np.abs(np.asarray(ce) - np.asarray(ce2))[later] > 1e-4))


def test_unselected_tokens_stay_in_attention(setup):
    c, m_cfg, params, ref = setup
    spec = train.StepSpec.from_config(c, m_cfg, None)

    def real(batch):
        b = with_cached_scores(batch, m_cfg, ref)
        _, _, ce, w, _ = train.loss_and_grads(spec, params, b, 0, jax.random.PRNGKey(0))
        return ce, w

    first = {}

    def selection_as_attention_mask(batch):  # the first batch's unselected positions hidden from every query
        w = first.setdefault("w", real(batch)[1])
        seg = np.where(np.asarray(w) > 0, batch["segment_ids"], -1 - np.arange(batch["tokens"].shape[1]))
        targets, _ = ce_lib.shift_targets(batch["tokens"], batch["segment_ids"])
        masked_ce, _ = ce_lib.token_ce(m_cfg, params, {**batch, "segment_ids": seg}, targets)
        return masked_ce, w

    assert _unselected_tokens_are_context(real)
    assert not _unselected_tokens_are_context(selection_as_attention_mask)


# ----------------------------------------------------------------------------- per-micro-batch normalisation

def test_accumulation_normalises_once_with_uneven_selection(setup):
    c, m_cfg, params, ref = setup
    b = with_cached_scores(packed_batch(2), m_cfg, ref)
    # micro-batch i holds rows i, i+4 (microbatch.split): make rows 0 and 4 far more "excess" than the rest
    b["ref_ce"] = b["ref_ce"] - np.where(np.isin(np.arange(8), [0, 4])[:, None], 5.0, 0.0).astype(np.float32)
    grads = {}
    for a in (1, 4):
        ca = tiny_config(mode="slm", reference="cached", ratio=0.3)
        ca.train.grad_accum = a
        spec = train.StepSpec.from_config(ca, m_cfg, None)
        step = jax.jit(lambda p, bb: train.loss_and_grads(spec, p, bb, 0, jax.random.PRNGKey(0)))
        loss, g, ce, w, _ = step(params, b)
        grads[a] = (loss, g, ce, w)
    per_micro = [float(np.asarray(grads[4][3])[[i, i + 4]].sum()) for i in range(4)]
    assert len(set(per_micro)) > 1 and max(per_micro) > 3 * max(min(per_micro), 1), per_micro  # uneven
    flat = lambda g: np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)])  # noqa: E731
    np.testing.assert_allclose(flat(grads[4][1]), flat(grads[1][1]), atol=2e-6)
    np.testing.assert_allclose(grads[4][0], grads[1][0], rtol=1e-5)

    # the buggy variant: each micro-batch normalised by its own weight sum, then averaged
    _, _, ce1, w1 = grads[1]
    targets, _ = ce_lib.shift_targets(b["tokens"], b["segment_ids"])

    def micro_mean(p):
        out = 0.0
        for i in range(4):
            rows = np.array([i, i + 4])
            mb = {k: b[k][rows] for k in INPUT_KEYS}
            ce_mb, _ = ce_lib.token_ce(m_cfg, p, mb, targets[rows])
            out += objective.masked_mean(ce_mb, w1[rows]) / 4
        return out

    g_bug = jax.grad(micro_mean)(params)
    assert np.max(np.abs(flat(g_bug) - flat(grads[1][1]))) > 1e-3


# ----------------------------------------------------------------------------- reference == target

def test_warns_when_the_online_reference_is_the_target(setup, capsys):
    c, m_cfg, params, ref = setup
    host = jax.tree.map(np.asarray, params)
    c_on = tiny_config(mode="slm", reference="online")
    loop.Trainer(c_on, mesh_of((8, 1, 1)), models=(m_cfg, host, m_cfg, jax.tree.map(np.copy, host)))
    assert "WARNING: the reference params look identical" in capsys.readouterr().out
    loop.Trainer(c_on, mesh_of((8, 1, 1)), models=(m_cfg, host, m_cfg, jax.tree.map(np.asarray, ref)))
    assert "WARNING" not in capsys.readouterr().out
    # one changed weight is enough to tell them apart (it lies on the sampled grid: index 0)
    other = jax.tree.map(np.copy, host)
    other["final_norm"]["scale"][0] += 1.0
    assert not loop.warn_if_same_params(host, other)
    assert loop.warn_if_same_params(host, jax.tree.map(np.copy, host))
    assert not loop.warn_if_same_params(None, host)  # random-init target


# ----------------------------------------------------------------------------- the float k trap

def test_k_is_exact_not_float_rounded():
    # 0.55 * 100 = 55.00000000000001 in float64: ceil gives 56, the exact k is 55
    assert math.ceil(0.55 * 100) == 56  # the buggy float computation
    assert int(objective.compute_k(100, 0.55)) == 55
    assert int(jax.jit(objective.compute_k)(jnp.int32(100), jnp.float32(0.55))) == 55
    # in float32 (x64 off) 0.6 * 25 rounds to 15.000001: ceil gives 16, the exact k is 15
    ns = np.arange(1, 20_000, dtype=np.int64)
    f32 = np.ceil(np.float32(0.6) * ns.astype(np.float32)).astype(np.int64)
    exact = -(-ns * 6 // 10)
    assert f32[24] == 16 and exact[24] == 15 and (f32 != exact).sum() > 100
    np.testing.assert_array_equal(objective.compute_k(jnp.asarray(ns, jnp.int32), 0.6), exact)

"""The sharded train step: same result on every mesh, SLM(1.0) == CLM, online == cached,
gradient accumulation == one big batch."""

import math
from fractions import Fraction

import jax
import numpy as np
import pytest
from helpers import max_diff, mesh_of, packed_batch, run_steps, tiny_config, with_cached_scores

from rho_jax import config as config_lib
from rho_jax import model, score, sharding, train

SHAPES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 1)]


@pytest.fixture(scope="module")
def ref_params():
    return jax.tree.map(np.asarray, model.init_params(config_lib.model_config(tiny_config()), jax.random.PRNGKey(7)))


def test_same_masks_and_params_on_every_mesh(ref_params):
    c = tiny_config(mode="slm", ratio=0.6, reference="online")
    m_cfg = config_lib.model_config(c)
    spec = train.StepSpec.from_config(c, m_cfg, m_cfg)
    batch = packed_batch()
    params0 = jax.tree.map(np.asarray, model.init_params(m_cfg, jax.random.PRNGKey(0)))
    masks, finals = {}, {}
    for shape in SHAPES:
        mesh = mesh_of(shape)
        p_sh = sharding.param_shardings(m_cfg, mesh)
        b_sh = sharding.batch_sharding(mesh)
        scored = with_cached_scores(batch, m_cfg, ref_params, mesh)
        fn = jax.jit(lambda p, b: train.loss_and_grads(spec, p, b, 0, jax.random.PRNGKey(1))[3],
                     in_shardings=(p_sh, {k: b_sh for k in scored}))
        masks[shape] = np.asarray(fn(sharding.place(params0, p_sh), scored))
        finals[shape], _ = run_steps(c, mesh, [batch, packed_batch(1)], ref_params)
    base = masks[(1, 1, 1)]
    n_valid = int(train.ce_lib.shift_targets(batch["tokens"], batch["segment_ids"])[1].sum())
    assert base.sum() == math.ceil(Fraction(3, 5) * n_valid)  # exact k
    for shape in SHAPES:
        np.testing.assert_array_equal(masks[shape], base, err_msg=f"selection differs on mesh {shape}")
        assert max_diff(finals[shape], finals[(1, 1, 1)]) <= 1e-5, f"params differ on mesh {shape}"


def test_slm_ratio_one_equals_clm():
    batches = [packed_batch(s) for s in range(4)]
    mesh = mesh_of((2, 2, 2))
    c_clm = tiny_config(mode="clm")
    c_slm = tiny_config(mode="slm", ratio=1.0, reference="cached")
    m_cfg = config_lib.model_config(c_clm)
    ref = model.init_params(m_cfg, jax.random.PRNGKey(3))
    cached = [with_cached_scores(b, m_cfg, ref) for b in batches]
    p_clm, h_clm = run_steps(c_clm, mesh, batches)
    p_slm, h_slm = run_steps(c_slm, mesh, cached)
    assert max_diff(p_clm, p_slm) <= 1e-6
    assert all(h["selected_fraction"] == 1.0 for h in h_slm)
    # and a real selection changes the update: the test can fail
    p_sel, _ = run_steps(tiny_config(mode="slm", ratio=0.5, reference="cached"), mesh, cached)
    assert max_diff(p_clm, p_sel) > 1e-4


def _separated_reference(cfg):
    """A reference whose per-token scores are far apart: large random weights give peaked, varied logits."""
    params = model.init_params(cfg.replace(init_std=0.5), jax.random.PRNGKey(11))
    return jax.tree.map(np.asarray, params)


@pytest.mark.parametrize("reference,score_fn,grad_accum", [
    ("near_ties", "ref_loss_and_entropy", 1), ("near_ties", "excess", 2),
    ("separated", "ref_loss_and_entropy", 2), ("separated", "excess", 1)])
def test_online_equals_cached(ref_params, reference, score_fn, grad_accum):
    """Online SLM and training on the offline cache give the same update, bit for bit, by construction:
    both take their reference scores from `score.reference_scorer` on the same micro-batches and mesh.

    near_ties: a random-init reference, whose entropies all lie within float noise of log(V), so the
    rank-based selection depends on the last bit of every score; separated: well-spread scores."""
    m_cfg = config_lib.model_config(tiny_config())
    ref = ref_params if reference == "near_ties" else _separated_reference(m_cfg)
    if reference == "near_ties":
        ent = with_cached_scores(packed_batch(0), m_cfg, ref)["ref_entropy"]
        valid = ent > 0
        assert np.ptp(ent[valid]) < 1e-2 * math.log(97)  # the ties the test is about
    batches = [packed_batch(s) for s in range(3)]
    mesh = mesh_of((2, 2, 2))
    c_on = tiny_config(mode="slm", reference="online", score=score_fn, ratio=0.5)
    c_ca = tiny_config(mode="slm", reference="cached", score=score_fn, ratio=0.5)
    for c in (c_on, c_ca):
        c.train.grad_accum = grad_accum
    p_on, h_on = run_steps(c_on, mesh, batches, ref)
    micro = score.micro_batch_size(8, grad_accum)  # what `rho-jax score` uses (scores do not depend on which rows share a call)
    cached = []
    for b in batches:
        parts = [with_cached_scores({k: v[i:i + micro] for k, v in b.items()}, m_cfg, ref, mesh)
                 for i in range(0, 8, micro)]
        cached.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    p_ca, h_ca = run_steps(c_ca, mesh, cached)
    assert max_diff(p_on, p_ca) == 0.0
    assert [h["n_selected"] for h in h_on] == [h["n_selected"] for h in h_ca]
    assert all(h["n_selected"] < h["n_valid"] for h in h_on)  # a real selection, which the scores decide


@pytest.mark.parametrize("mode", ["clm", "slm"])
def test_grad_accumulation_normalises_over_the_global_batch(mode):
    """grad_accum=4 gives the update of one big batch: one global selection, one normaliser."""
    m_cfg = config_lib.model_config(tiny_config())
    ref = model.init_params(m_cfg, jax.random.PRNGKey(3))
    batches = [with_cached_scores(packed_batch(s), m_cfg, ref) for s in range(2)]
    mesh = mesh_of((2, 1, 1))
    c1 = tiny_config(mode=mode, reference="cached", ratio=0.6)
    c4 = tiny_config(mode=mode, reference="cached", ratio=0.6)
    c4.train.grad_accum = 4
    p1, h1 = run_steps(c1, mesh, batches)
    p4, h4 = run_steps(c4, mesh, batches)
    assert max_diff(p1, p4) <= 2e-6
    assert [h["n_selected"] for h in h1] == [h["n_selected"] for h in h4]
    np.testing.assert_allclose([h["loss"] for h in h1], [h["loss"] for h in h4], rtol=1e-5)


def test_non_finite_loss_leaves_state_untouched():
    c = tiny_config(mode="clm")
    mesh = mesh_of((1, 1, 1))
    m_cfg = config_lib.model_config(c)
    params = jax.tree.map(np.asarray, model.init_params(m_cfg, jax.random.PRNGKey(0)))
    bad = jax.tree.map(lambda x: x.copy(), params)
    bad["final_norm"]["scale"][0] = np.nan
    p_after, hist = run_steps(c, mesh, [packed_batch()], init_params=bad)
    assert hist[0]["finite"] == 0
    np.testing.assert_array_equal(p_after["layers"]["attn"]["wq"], bad["layers"]["attn"]["wq"])

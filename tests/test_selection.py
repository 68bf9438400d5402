"""The selection plug-ins (document scope, target_loss, prob weighting, Goldfish, EMA's reverse
excess) against the float64 numpy reference, on 1 device and sharded over 8 simulated devices."""

import jax
import jax.numpy as jnp
import numpy as np
import numpy_objective as ref
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rho_jax import objective as O
from rho_jax import ce as C
from rho_jax import goldfish as G

B, L, V = 8, 32, 13



def objective(ce, valid, ref_ce=None, ref_ent=None, *, rng=None, segment_ids_BxL=None, **selector):
    """(weight_BxL, stats) of slm_objective with a Selector of `selector` (ratio, score, scope, ...)."""
    inputs = O.ScoreInputs(ce_BxL=ce, valid_BxL=valid, ref_ce_BxL=ref_ce, ref_entropy_BxL=ref_ent,
                           segment_ids_BxL=segment_ids_BxL)
    selection = O.slm_objective(O.Selector(**selector), inputs, rng)
    return selection.weight_BxL, O.selection_stats(selection, inputs)

def packed(seed):
    """Rows of 1-4 packed documents with padding, including a one-token document and a pad-only row."""
    rs = np.random.RandomState(seed)
    seg = np.zeros((B, L), np.int32)
    for r in range(B - 1):
        end = L - rs.randint(0, 6)
        cuts = sorted(rs.choice(np.arange(1, end), rs.randint(0, 4), replace=False).tolist())
        for d, (a, e) in enumerate(zip([0] + cuts, cuts + [end])):
            seg[r, a:e] = d + 1
    seg[2, :3] = 7  # a one-token document (no valid target) and a two-token one
    seg[2, 2] = 8
    tokens = rs.randint(0, V, (B, L)).astype(np.int32)
    logits = (1.5 * rs.randn(B, L, V)).astype(np.float32)
    ref_ce = rs.uniform(0.0, 4.0, (B, L)).astype(np.float32)
    ref_ent = rs.uniform(0.0, 2.0, (B, L)).astype(np.float32)
    return tokens, seg, logits, ref_ce, ref_ent


def layouts():
    d = np.array(jax.devices())
    assert d.size == 8, "conftest must give 8 simulated CPU devices"
    return {"1 device": NamedSharding(Mesh(d[:1], ("b",)), P()),
            "8 devices rows": NamedSharding(Mesh(d, ("b",)), P("b")),
            "8 devices 2x4": NamedSharding(Mesh(d.reshape(2, 4), ("b", "l")), P("b", "l"))}


def jax_objective(sh, tokens, seg, logits, ref_ce, ref_ent, goldfish=(0, 0), **kw):
    """(weight, loss, dloss/dlogits, valid) from rho_jax, jitted on inputs laid out by `sh`."""
    def f(tokens, seg, logits, ref_ce, ref_ent):
        targets, valid = C.shift_targets(tokens, seg)
        valid &= G.goldfish_keep(tokens, seg, *goldfish)

        def loss_fn(lg):
            ce = C.cross_entropy(lg, targets)
            w, _ = objective(ce, valid, ref_ce, ref_ent, segment_ids_BxL=seg, **kw)
            return O.masked_mean(ce, w), w

        (loss, w), g = jax.value_and_grad(loss_fn, has_aux=True)(logits)
        return w, loss, g, valid

    put = lambda x: jax.device_put(x, sh if x.ndim == 2 or sh.spec == P() else  # noqa: E731
                                   NamedSharding(sh.mesh, P(*sh.spec, None)))
    return [np.asarray(x) for x in jax.jit(f)(*map(put, (tokens, seg, logits, ref_ce, ref_ent)))]


def numpy_objective(tokens, seg, logits, ref_ce, ref_ent, goldfish=(0, 0), **kw):
    targets, valid = ref.shift_targets(tokens, seg)
    valid = valid & ref.goldfish_keep(tokens, seg, *goldfish)
    w, loss, g, _ = ref.objective(logits.astype(np.float64), targets, valid, ref_ce.astype(np.float64),
                                  ref_ent.astype(np.float64), seg=seg, **kw)
    return w, loss, g, valid


PLUGINS = {
    "document": dict(score="excess", scope="document", weighting="hard"),
    "document_sequence_ties": dict(score="ref_loss", scope="document", weighting="hard"),
    "target_loss": dict(score="target_loss", scope="batch", weighting="hard"),
    "prob": dict(score="excess", scope="batch", weighting="prob"),
    "prob_document": dict(score="target_loss", scope="document", weighting="prob"),
    "ema_reverse_excess": dict(score="reverse_excess", scope="batch", weighting="hard"),
    "goldfish": dict(score="excess", scope="batch", weighting="hard", goldfish=(3, 2)),
    "goldfish_clm": dict(score="target_loss", scope="batch", weighting="hard", ratio=1.0, goldfish=(2, 4)),
}


@pytest.mark.parametrize("name", PLUGINS)
@pytest.mark.parametrize("layout", ["1 device", "8 devices rows", "8 devices 2x4"])
def test_plugin_matches_numpy_reference(name, layout):
    kw = {"ratio": 0.6, **PLUGINS[name]}
    tokens, seg, logits, ref_ce, ref_ent = packed(1)
    if name == "document_sequence_ties":  # integer scores: equal segment means, broken by first token
        ref_ce = np.random.RandomState(2).randint(0, 2, (B, L)).astype(np.float32)
    w, loss, g, valid = jax_objective(layouts()[layout], tokens, seg, logits, ref_ce, ref_ent, **kw)
    w_np, loss_np, g_np, valid_np = numpy_objective(tokens, seg, logits, ref_ce, ref_ent, **kw)
    np.testing.assert_array_equal(valid, valid_np)
    if kw["weighting"] == "hard":
        np.testing.assert_array_equal(w, w_np)
    else:
        np.testing.assert_array_equal(w > 0, w_np > 0)
        np.testing.assert_allclose(w, w_np, rtol=1e-5)
    np.testing.assert_allclose(loss, loss_np, rtol=1e-5)
    np.testing.assert_allclose(g, g_np, atol=1e-6)


def test_document_scope_selects_exact_k_whole_segments_with_ties_to_first_token():
    # row 0: docs 1 (valid targets at 0, 1) and 2 (3, 4); row 1: doc 3 split around doc 1
    seg = np.array([[1, 1, 1, 2, 2, 2, 0, 0], [3, 3, 1, 1, 1, 3, 3, 0]], np.int32)
    _, valid = C.shift_targets(np.zeros_like(seg), seg)
    score = np.array([[0, 1, 9, 3, 4, 9, 9, 9], [8, 9, 10, 11, 9, 13, 9, 9]], np.float32)
    # means over valid tokens: (0,1)=.5, (0,2)=3.5, (1,3)=(8+13)/2=10.5, (1,1)=(10+11)/2=10.5 -> tie,
    # broken toward (1,3) whose first token (flat 8) precedes (1,1)'s (flat 10)
    for ratio, want in [(0.25, {(1, 3)}), (0.5, {(1, 3), (1, 1)}), (0.75, {(1, 3), (1, 1), (0, 2)})]:
        mask = np.asarray(O.select_documents(score, valid, seg, ratio))
        chosen = {(r, int(seg[r, c])) for r, c in zip(*np.nonzero(mask))}
        assert chosen == want, ratio
        for r, s in want:  # every valid token of a chosen segment, nothing else
            np.testing.assert_array_equal(mask[r][seg[r] == s], valid[r][seg[r] == s])
    np.testing.assert_array_equal(O.select_documents(score, valid, seg, 0.5), ref.select_documents(score, valid, seg, 0.5))


def test_goldfish_mask_is_a_pure_function_of_the_text():
    rs = np.random.RandomState(3)
    doc = rs.randint(0, 50_000, 40).astype(np.int32)
    k, h = 4, 5
    # the same document at different offsets, rows and neighbours
    a_tok, a_seg = np.zeros((2, 64), np.int32), np.zeros((2, 64), np.int32)
    a_tok[0, :40], a_seg[0, :40] = doc, 1
    a_tok[1, :10], a_seg[1, :10] = rs.randint(0, 50_000, 10), 1
    a_tok[1, 10:50], a_seg[1, 10:50] = doc, 2
    keep = np.asarray(G.goldfish_keep(a_tok, a_seg, k, h))
    np.testing.assert_array_equal(keep[0, :39], keep[1, 10:49])
    np.testing.assert_array_equal(keep, ref.goldfish_keep(a_tok, a_seg, k, h))
    assert keep[0, :h - 1].all()  # the first h targets of a document (fewer than h context tokens) are kept
    dropped = (~keep[0, :39]).sum()
    assert 0 < dropped < 39
    # over many tokens about 1/k are dropped
    big = rs.randint(0, 32_000, (16, 512)).astype(np.int32)
    frac = 1 - np.asarray(G.goldfish_keep(big, np.ones_like(big), k, h))[:, h - 1:-1].mean()
    assert abs(frac - 1 / k) < 0.02, frac
    assert np.asarray(G.goldfish_keep(big, np.ones_like(big), 0, h)).all()  # k = 0: off


def test_prob_weights_mean_one_over_selected_and_dft_loss():
    rs = np.random.RandomState(4)
    ce = rs.uniform(0, 5, (B, L)).astype(np.float32)
    mask = rs.rand(B, L) < 0.5
    w = np.asarray(O.prob_weights(ce, mask))
    np.testing.assert_allclose(w[mask].mean(), 1.0, rtol=1e-6)
    assert (w[~mask] == 0).all()
    p = np.exp(-ce.astype(np.float64))
    np.testing.assert_allclose(O.masked_mean(ce, w), (p * ce * mask).sum() / (p * mask).sum(), rtol=1e-5)
    assert np.asarray(O.prob_weights(ce, np.zeros_like(mask))).sum() == 0


def test_target_loss_needs_no_reference():
    tokens, seg, logits, _, _ = packed(5)
    targets, valid = C.shift_targets(tokens, seg)
    ce = C.cross_entropy(logits, targets)
    w, stats = objective(ce, valid, None, None, ratio=0.5, score="target_loss")
    assert not O.needs_ref("target_loss") and O.needs_target_ce("target_loss") and "ref_loss" not in stats
    # the hardest half of the valid tokens
    ce_v = np.where(valid, np.asarray(ce), -np.inf)
    assert np.asarray(ce_v)[np.asarray(w) > 0].min() >= np.sort(ce_v[valid])[::-1][int(w.sum()) - 1]

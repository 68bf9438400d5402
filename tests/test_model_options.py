"""Performance options of the model change nothing but speed and memory: query-chunked attention, unrolled
layers and the causal query blocks give the scanned, unchunked, one-block model's logits and gradients on packed
rows (same parameters)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import packed_batch

from rho_jax import ce as ce_lib, config as config_lib, model, objective

BASE = model.ModelConfig(vocab_size=97, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=64, max_positions=64)


def _loss_and_grads(cfg, params, batch):
    targets, valid = ce_lib.shift_targets(batch["tokens"], batch["segment_ids"])

    def loss(p):
        logits = model.forward(cfg, p, batch["tokens"], batch["positions"], batch["segment_ids"])
        return objective.masked_mean(ce_lib.cross_entropy(logits, targets), valid.astype(jnp.float32)), logits

    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return value, logits, grads


@pytest.mark.parametrize("options", [dict(attention_chunk=8), dict(scan_layers=False),
                                     dict(attention_chunk=12, scan_layers=False, remat="full")])
def test_options_match_the_default_model(options):
    batch = packed_batch(seq=24)
    params = model.init_params(BASE, jax.random.PRNGKey(0))
    v0, l0, g0 = _loss_and_grads(BASE, params, batch)
    v1, l1, g1 = _loss_and_grads(BASE.replace(**options), params, batch)
    np.testing.assert_allclose(np.asarray(l1), np.asarray(l0), atol=2e-5)
    np.testing.assert_allclose(float(v1), float(v0), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)


def test_chunk_must_divide_the_sequence():
    params = model.init_params(BASE, jax.random.PRNGKey(0))
    batch = packed_batch(seq=24)
    with pytest.raises(ValueError, match="attention_chunk=10 does not divide the sequence length 24"):
        model.forward(BASE.replace(attention_chunk=10), params, batch["tokens"], batch["positions"],
                      batch["segment_ids"])
    with pytest.raises(ValueError, match="attention_chunk=-1"):
        BASE.replace(attention_chunk=-1)


def test_causal_query_blocks_match_one_block(monkeypatch):
    """200 positions run as 3 causal query blocks that skip the keys after each block: logits and gradients equal
    the one-block attention's over the whole square."""
    assert model.causal_query_blocks(200) == ((0, 67), (67, 133), (133, 200))
    assert model.causal_query_blocks(100) == ((0, 100),)
    assert len(model.causal_query_blocks(4096)) == model.CAUSAL_BLOCKS_MAX
    cfg = BASE.replace(max_positions=256)
    batch = packed_batch(seq=200)
    params = model.init_params(cfg, jax.random.PRNGKey(0))
    v1, l1, g1 = _loss_and_grads(cfg, params, batch)
    monkeypatch.setattr(model, "CAUSAL_BLOCKS_MAX", 1)
    assert model.causal_query_blocks(200) == ((0, 200),)
    v0, l0, g0 = _loss_and_grads(cfg, params, batch)
    np.testing.assert_allclose(np.asarray(l1), np.asarray(l0), atol=2e-5)
    np.testing.assert_allclose(float(v1), float(v0), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)


def test_layers_unroll_on_cpu_and_scan_on_accelerators_unless_the_config_says():
    c = config_lib.base_config()
    assert c.model.scan_layers is None
    assert config_lib.model_config(c, platform="cpu").scan_layers is False
    assert config_lib.model_config(c, platform="tpu").scan_layers is True
    assert config_lib.model_config(c).scan_layers is (jax.default_backend() != "cpu")
    c.model.scan_layers = True
    assert config_lib.model_config(c, platform="cpu").scan_layers is True
    assert config_lib.runtime_overrides(c)["scan_layers"] is True
    c.model.scan_layers = False
    assert config_lib.model_config(c, platform="gpu").scan_layers is False

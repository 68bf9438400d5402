"""rho_jax.losses: the one batching loop over packed examples (a padded last batch) and the exact summed CE."""

import jax
import numpy as np
import pytest

from rho_jax.batch import INPUT_KEYS
from rho_jax import losses
from rho_jax.model import ModelConfig, param_shapes


def _examples(n, length=4):
    """n rows, each a document of `length` tokens (segment 1), plus a bool mask at the first position."""
    tokens = np.arange(1, n * length + 1, dtype=np.int32).reshape(n, length)
    mask = np.zeros((n, length), bool)
    mask[:, 0] = True
    return {"tokens": tokens, "segment_ids": np.ones((n, length), np.int32),
            "positions": np.tile(np.arange(length, dtype=np.int32), (n, 1)), "loss_mask": mask}


def test_iter_padded_batches_pads_the_last_batch_with_empty_rows():
    ex = _examples(5)
    got = list(losses.iter_padded_batches(ex, 2, keys=("tokens", "segment_ids", "loss_mask")))
    assert [n for _, n in got] == [2, 2, 1]  # the real rows of each batch
    for batch, _ in got:
        assert set(batch) == {"tokens", "segment_ids", "loss_mask"}  # only the keys asked for
        assert {k: (v.shape, v.dtype) for k, v in batch.items()} == \
            {k: ((2, 4), ex[k].dtype) for k in batch}  # one shape: one compiled program
    last, n = got[-1]
    assert not last["tokens"][n:].any() and not last["segment_ids"][n:].any() and not last["loss_mask"][n:].any()
    for k in ("tokens", "segment_ids", "loss_mask"):  # the real rows, in order, once each
        np.testing.assert_array_equal(np.concatenate([b[k][:n] for b, n in got]), ex[k])
    # A padding row has no document, so nothing counts it.
    assert sum(int((b["segment_ids"] > 0).any(axis=1).sum()) for b, _ in got) == 5


def test_iter_padded_batches_exact_multiple_and_empty():
    assert [n for _, n in losses.iter_padded_batches(_examples(4), 2)] == [2, 2]
    assert list(losses.iter_padded_batches(_examples(0), 2)) == []


@pytest.fixture(scope="module")
def tiny():
    cfg = ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32, max_positions=16)
    rng = np.random.default_rng(0)
    return cfg, jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(np.float32), param_shapes(cfg))


def test_summed_ce_counts_no_padding_and_matches_token_losses(tiny):
    cfg, params = tiny
    ex = _examples(5)
    ex["tokens"] %= cfg.vocab_size
    ce_NxL = losses.token_losses(cfg, [params], ex, batch_size=2)[0]  # 2 + 2 + a padded 1
    assert np.isfinite(ce_NxL[:, :-1]).all() and np.isnan(ce_NxL[:, -1]).all()  # the last token predicts nothing
    np.testing.assert_allclose(ce_NxL, losses.token_losses(cfg, [params], ex, batch_size=5)[0], rtol=1e-6)
    total, count = losses.summed_ce(cfg, params, ex, batch_size=2)
    assert count == 5 * 3  # 3 targets a row; the 3 padding rows of the last batch add none
    assert total == pytest.approx(float(np.nansum(ce_NxL)), rel=1e-5)
    total, count = losses.summed_ce(cfg, params, ex, batch_size=2, keys=INPUT_KEYS + ("loss_mask",))
    assert count == 5 and total == pytest.approx(float(ce_NxL[:, 0].sum()), rel=1e-5)

"""Packing and the valid mask on packed rows (numpy only, no TensorFlow)."""

import numpy as np
import pytest

from rho_jax.batch import INPUT_KEYS
from rho_jax import ce as ce_lib
from rho_jax.data import pipeline

EOS = 1


def _pack_all(docs, seq_len, eos, mode="pack"):
    stats = pipeline.PackStats()
    rows = list(pipeline.pack(docs, seq_len, eos, mode, stats))
    return {k: np.stack([r[k] for r in rows]) for k in INPUT_KEYS}, stats


def _docs(n=40, max_len=30, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(2, 200, size=int(k)).astype(np.int32) for k in rng.integers(0, max_len, size=n)]


@pytest.mark.parametrize("mode", ["pack", "pad"])
def test_pack_round_trip_including_split_long_documents(mode):
    seq_len = 8
    docs = _docs()
    examples, stats = _pack_all(docs, seq_len, EOS, mode)
    assert examples["tokens"].shape[1] == seq_len and examples["tokens"].dtype == np.int32
    back = pipeline.split_documents(pipeline.unpack(examples), EOS)
    assert len(back) == len(docs)
    for a, b in zip(docs, back):
        np.testing.assert_array_equal(a, b)
    n_long = sum(len(d) + 1 > seq_len for d in docs)
    assert n_long > 0 and stats.split_documents == n_long  # long docs split, not dropped
    assert stats.tokens == sum(len(d) + 1 for d in docs)
    assert (examples["segment_ids"] > 0).sum() == stats.tokens
    if mode == "pad":  # one document (piece) per row
        assert examples["segment_ids"].max() == 1


def test_pack_layout_segments_positions_and_padding():
    examples, _ = _pack_all([np.array([5, 6]), np.array([7, 8, 9]), np.array([10] * 9)], 6, EOS)
    np.testing.assert_array_equal(examples["tokens"][0], [5, 6, EOS, 0, 0, 0])  # [7,8,9,EOS] does not fit
    np.testing.assert_array_equal(examples["segment_ids"][0], [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(examples["tokens"][1], [7, 8, 9, EOS, 10, 10])  # the long doc fills the rest
    np.testing.assert_array_equal(examples["segment_ids"][1], [1, 1, 1, 1, 2, 2])
    np.testing.assert_array_equal(examples["positions"][1], [0, 1, 2, 3, 0, 1])
    np.testing.assert_array_equal(examples["positions"][2], np.arange(6))  # restart in each piece
    np.testing.assert_array_equal(examples["tokens"][3], [10, EOS, 0, 0, 0, 0])


def test_valid_mask_excludes_padding_and_cross_document_targets():
    docs = _docs(n=30, max_len=12, seed=1)
    examples, _ = _pack_all(docs, 10, EOS)
    targets, valid = map(np.asarray, ce_lib.shift_targets(examples["tokens"], examples["segment_ids"]))
    seg, tok = examples["segment_ids"], examples["tokens"]
    assert not valid[seg == 0].any()
    for b, t in zip(*np.nonzero(valid)):
        assert seg[b, t + 1] == seg[b, t] and targets[b, t] == tok[b, t + 1]
    # each segment of n tokens has exactly n - 1 valid positions: no target crosses into the next one
    expected = sum(len(s) - 1 for s in pipeline.unpack(examples))
    assert valid.sum() == expected


def test_pack_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        list(pipeline.pack([np.array([3])], 8, EOS, mode="zip"))
    with pytest.raises(ValueError, match="seq_len"):
        list(pipeline.pack([np.array([3])], 1, EOS))

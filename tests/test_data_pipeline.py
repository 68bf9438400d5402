"""Packing, the valid mask on packed rows, resumable position and per-host sharding (no TensorFlow)."""

import sys

import jax
import numpy as np
import pytest

from rho_jax import objective
from rho_jax.data import pipeline

EOS = 1


def _docs(n=40, max_len=30, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(2, 200, size=int(k)).astype(np.int32) for k in rng.integers(0, max_len, size=n)]


@pytest.mark.parametrize("mode", ["pack", "pad"])
def test_pack_round_trip_including_split_long_documents(mode):
    seq_len = 8
    docs = _docs()
    examples, stats = pipeline.pack_all(docs, seq_len, EOS, mode)
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
    examples, _ = pipeline.pack_all([np.array([5, 6]), np.array([7, 8, 9]), np.array([10] * 9)], 6, EOS)
    np.testing.assert_array_equal(examples["tokens"][0], [5, 6, EOS, 0, 0, 0])  # [7,8,9,EOS] does not fit
    np.testing.assert_array_equal(examples["segment_ids"][0], [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(examples["tokens"][1], [7, 8, 9, EOS, 10, 10])  # the long doc fills the rest
    np.testing.assert_array_equal(examples["segment_ids"][1], [1, 1, 1, 1, 2, 2])
    np.testing.assert_array_equal(examples["positions"][1], [0, 1, 2, 3, 0, 1])
    np.testing.assert_array_equal(examples["positions"][2], np.arange(6))  # restart in each piece
    np.testing.assert_array_equal(examples["tokens"][3], [10, EOS, 0, 0, 0, 0])


def test_valid_mask_excludes_padding_and_cross_document_targets():
    docs = _docs(n=30, max_len=12, seed=1)
    examples, _ = pipeline.pack_all(docs, 10, EOS)
    targets, valid = map(np.asarray, objective.shift_targets(examples["tokens"], examples["segment_ids"]))
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
    with pytest.raises(ValueError, match="empty"):
        pipeline.pack_all([], 8, EOS)


def _examples(n=24, seq_len=4):
    tokens = np.arange(n * seq_len, dtype=np.int32).reshape(n, seq_len)
    return {"tokens": tokens, "segment_ids": np.ones_like(tokens), "positions": np.tile(np.arange(seq_len), (n, 1))}


def test_resume_at_step_n_gives_the_same_batches():
    ex = _examples()
    full = pipeline.InputPipeline(ex, 8, shuffle=True, seed=3)
    reference = [next(full)["tokens"] for _ in range(10)]  # crosses several epochs
    first = pipeline.InputPipeline(ex, 8, shuffle=True, seed=3)
    for _ in range(4):
        next(first)
    state = first.get_state()
    resumed = pipeline.InputPipeline(ex, 8, shuffle=True, seed=3)
    resumed.set_state(state)
    for step in range(4, 10):
        np.testing.assert_array_equal(next(resumed)["tokens"], reference[step])
    # epochs are distinct permutations, each a full pass
    epoch0 = np.concatenate(reference[:3])[:, 0] // 4
    epoch1 = np.concatenate(reference[3:6])[:, 0] // 4
    assert sorted(epoch0) == sorted(epoch1) == list(range(24)) and not np.array_equal(epoch0, epoch1)
    with pytest.raises(ValueError, match="seed"):
        pipeline.InputPipeline(ex, 8, seed=4).set_state(state)


def test_two_processes_cover_every_example_exactly_once():
    ex = _examples(n=32)
    single = pipeline.InputPipeline(ex, 8, seed=1)
    procs = [pipeline.InputPipeline(ex, 8, process_index=p, process_count=2, seed=1) for p in range(2)]
    seen = []
    for step in range(4):  # one epoch
        parts = [p.batch_at(step)["tokens"] for p in procs]
        assert all(len(x) == 4 for x in parts)
        np.testing.assert_array_equal(np.concatenate(parts), single.batch_at(step)["tokens"])
        seen += [row[0] // 4 for part in parts for row in part]
    assert sorted(seen) == list(range(32))


def test_streaming_batches_resume_and_match_the_materialised_pipeline():
    docs = _docs(n=60, seed=2)
    examples, _ = pipeline.pack_all(docs, 8, EOS)
    n_steps = len(examples["tokens"]) // 4
    reference = pipeline.InputPipeline(examples, 4, shuffle=False)
    stream = pipeline.stream_batches(lambda epoch: iter(docs), 8, EOS, 4)
    for step in range(n_steps):
        np.testing.assert_array_equal(next(stream)["tokens"], reference.batch_at(step)["tokens"])
    resumed = pipeline.stream_batches(lambda epoch: iter(docs), 8, EOS, 4, start_step=3, process_index=1,
                                      process_count=2)
    np.testing.assert_array_equal(next(resumed)["tokens"], reference.batch_at(3)["tokens"][2:])


def test_make_global_batch_shards_rows_over_the_mesh():
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(-1), ("data",))
    local = pipeline.InputPipeline(_examples(n=16), 8, shuffle=False).batch_at(0)
    batch = pipeline.make_global_batch(local, mesh)
    assert batch["tokens"].shape == (8, 4)
    np.testing.assert_array_equal(np.asarray(batch["tokens"]), local["tokens"])
    assert len(batch["tokens"].sharding.device_set) == len(jax.devices())


def test_pipeline_module_does_not_import_tensorflow():
    import subprocess
    code = "import sys, rho_jax.data.pipeline, rho_jax.data; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)

"""The reference-score cache: correctness, fingerprint refusal, corruption, resume, read-back order."""

import json

import jax
import numpy as np
import pytest

from rho_jax import model, objective  # noqa: E402
from rho_jax.data import pipeline, scored  # noqa: E402

EOS, SEQ_LEN, VOCAB = 1, 16, 97
CFG = model.ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                        max_positions=64)


def _examples(seq_len=SEQ_LEN, n_docs=40, seed=0):
    rng = np.random.default_rng(seed)
    docs = [rng.integers(2, VOCAB, size=int(k)) for k in rng.integers(1, 30, size=n_docs)]
    return pipeline.pack_all(docs, seq_len, EOS)[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    params = jax.jit(model.init_params, static_argnums=0)(CFG, jax.random.PRNGKey(0))
    examples = _examples()
    ref_id = scored.params_identity(params)
    cache = tmp_path_factory.mktemp("cache")
    scored.score_examples(CFG, params, examples, cache, ref_identity=ref_id, vocab_identity="vocab-a",
                          batch_size=4, examples_per_shard=7, progress=False)
    return params, examples, ref_id, cache


def test_cached_scores_equal_a_fresh_reference_forward(setup):
    params, examples, ref_id, cache = setup
    loaded = scored.load_cache(cache, scored.fingerprint(examples, ref_id, "vocab-a"))
    for k in pipeline.INT_KEYS:
        np.testing.assert_array_equal(loaded[k], examples[k])
    logits = model.jitted_forward(CFG)(params, examples["tokens"], examples["positions"], examples["segment_ids"])
    targets, valid = objective.shift_targets(examples["tokens"], examples["segment_ids"])
    ce = np.where(valid, objective.cross_entropy(logits, targets), 0.0)
    ent = np.where(valid, objective.token_entropy(logits), 0.0)
    np.testing.assert_allclose(loaded["ref_ce"], ce, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loaded["ref_entropy"], ent, rtol=1e-5, atol=1e-5)
    assert (loaded["ref_ce"][~np.asarray(valid)] == 0).all() and (loaded["ref_ce"][np.asarray(valid)] > 0).all()
    # read back through the training pipeline: same batches, same order, plus the reference fields
    plain = pipeline.InputPipeline(examples, 4, seed=2)
    cached = pipeline.InputPipeline(loaded, 4, seed=2)
    for _ in range(5):
        a, b = next(plain), next(cached)
        for k in pipeline.INT_KEYS:
            np.testing.assert_array_equal(a[k], b[k])
        assert b["ref_ce"].shape == b["tokens"].shape and b["ref_ce"].dtype == np.float32


def test_cache_reads_as_a_seqio_task_in_the_same_order(setup):
    seqio = pytest.importorskip("seqio")
    params, examples, ref_id, cache = setup
    fp = scored.fingerprint(examples, ref_id, "vocab-a")
    name = scored.register_cache_task(cache, "rho_jax.test_cache", VOCAB, fp)
    assert scored.register_cache_task(cache, name, VOCAB, fp) == name  # idempotent
    ds = seqio.get_mixture_or_task(name).get_dataset(sequence_length=None, split="train", shuffle=False)
    rows = list(ds.as_numpy_iterator())
    loaded = scored.load_cache(cache, fp)
    assert len(rows) == len(loaded["tokens"])
    for k in loaded:
        np.testing.assert_array_equal(np.stack([r[k] for r in rows]), loaded[k])


@pytest.mark.parametrize("change", ["vocab", "seq_len", "reference"])
def test_cache_refuses_another_vocab_seq_len_or_reference(setup, change):
    params, examples, ref_id, cache = setup
    if change == "vocab":
        expected = scored.fingerprint(examples, ref_id, "vocab-b")
    elif change == "seq_len":
        expected = scored.fingerprint(_examples(seq_len=SEQ_LEN * 2), ref_id, "vocab-a")
    else:
        other = scored.params_identity(jax.tree.map(lambda w: w.at[(0,) * w.ndim].add(1e-3), params))
        assert other != ref_id
        expected = scored.fingerprint(examples, other, "vocab-a")
    actual = json.loads((cache / "manifest.json").read_text())["fingerprint"]
    with pytest.raises(scored.FingerprintMismatch) as err:
        scored.verify_cache(cache, expected)
    assert expected in str(err.value) and actual in str(err.value)


def test_scoring_and_loading_need_no_tensorflow(setup):
    import subprocess
    import sys
    code = ("import sys, rho_jax.data.scored as s; assert 'tensorflow' not in sys.modules; "
            f"s.load_cache({str(setup[3])!r}, None); assert 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_corrupt_shard_is_named(setup, tmp_path):
    params, examples, ref_id, _ = setup
    cache = tmp_path / "c"
    scored.score_examples(CFG, params, examples, cache, ref_identity=ref_id, vocab_identity="v", batch_size=4,
                          examples_per_shard=7, progress=False)
    shard = cache / "scores-00001.npz"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(scored.CacheError, match="scores-00001.npz"):
        scored.load_cache(cache, scored.fingerprint(examples, ref_id, "v"))


def test_interrupted_scoring_resumes_to_the_same_cache(setup, tmp_path):
    params, examples, ref_id, cache = setup
    part = tmp_path / "p"
    scored.score_examples(CFG, params, examples, part, ref_identity=ref_id, vocab_identity="vocab-a",
                          batch_size=4, examples_per_shard=7, progress=False)
    manifest = json.loads((part / "manifest.json").read_text())
    # simulate a crash mid-way: the last two shards never finished (a .tmp left behind)
    for s in ("2", "3"):
        (part / manifest["shards"].pop(s)["file"]).unlink()
    manifest["complete"] = False
    (part / "manifest.json").write_text(json.dumps(manifest))
    (part / "scores-00002.npz.tmp").write_bytes(b"partial")
    fp = scored.fingerprint(examples, ref_id, "vocab-a")
    with pytest.raises(scored.CacheError, match="incomplete"):
        scored.verify_cache(part, fp)
    scored.score_examples(CFG, params, examples, part, ref_identity=ref_id, vocab_identity="vocab-a",
                          batch_size=4, examples_per_shard=7, progress=False)
    a, b = scored.load_cache(part, fp), scored.load_cache(cache, fp)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    with pytest.raises(scored.FingerprintMismatch):  # a different job refuses to write into this cache
        scored.score_examples(CFG, params, examples, part, ref_identity=ref_id, vocab_identity="vocab-b",
                              batch_size=4, progress=False)


def test_sharded_scoring_gives_the_same_cache(setup, tmp_path):
    from rho_jax import score, sharding, train

    params, examples, ref_id, cache = setup
    scorer = score.reference_scorer(CFG, sharding.make_mesh(-1, 1, 1))  # rows over all 8 devices
    scored.score_examples(CFG, train.place(params, scorer.param_shardings), examples, tmp_path, ref_identity=ref_id,
                          vocab_identity="vocab-a", batch_size=len(jax.devices()), examples_per_shard=7,
                          progress=False, scorer=scorer)
    fp = scored.fingerprint(examples, ref_id, "vocab-a")
    a, b = scored.load_cache(tmp_path, fp), scored.load_cache(cache, fp)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-6)

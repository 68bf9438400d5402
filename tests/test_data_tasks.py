"""SentencePiece training, SeqIO task registration and the task -> packed-batch path."""

import itertools

import numpy as np
import pytest

seqio = pytest.importorskip("seqio")

from rho_jax.batch import INPUT_KEYS  # noqa: E402
from rho_jax import ce as ce_lib  # noqa: E402
from rho_jax.data import corpora, pipeline, tasks, vocab  # noqa: E402

TEXTS = ["Problem: 12 + 30 = ?\nSolution: 42.", "The quick brown fox\n\njumps over the lazy dog.",
         "Let x_n be the number of strings; then x_(n+1) = 2x_n."] * 30


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
    docs = [d for _, d in itertools.islice(corpora.champ_clean("train"), 120)] + TEXTS
    return vocab.train_sentencepiece(docs, 600, tmp_path_factory.mktemp("spm") / "tiny.model")


def test_sentencepiece_is_deterministic_with_fixed_special_ids(spm_path, tmp_path):
    docs = [d for _, d in itertools.islice(corpora.champ_clean("train"), 120)] + TEXTS
    again = vocab.train_sentencepiece(docs, 600, tmp_path / "again.model")
    assert again.read_bytes() == spm_path.read_bytes()
    v = vocab.seqio_vocabulary(spm_path)
    assert (v.pad_id, v.eos_id, v.vocab_size) == (vocab.PAD_ID, vocab.EOS_ID, 600)
    text = "Line one\n\n  indented\tand tabbed: 3.14159 é 漢字"  # byte fallback, layout kept
    assert v.decode(v.encode(text)) == text


def test_registering_twice_is_fine_and_accepts_any_vocabulary(spm_path):
    names = tasks.register_tasks(vocab.seqio_vocabulary(spm_path))
    assert tasks.register_tasks(seqio.ByteVocabulary()) == names  # again, another vocabulary
    assert {"rho_jax.math_noisy", "rho_jax.general_631", "rho_jax.champ_clean"} <= set(names)
    assert isinstance(seqio.get_mixture_or_task("rho_jax.general_631"), seqio.Mixture)
    task = seqio.get_mixture_or_task("rho_jax.champ_clean")
    assert isinstance(task.output_features["targets"].vocabulary, seqio.ByteVocabulary)


def test_task_tokens_pack_into_valid_batches(spm_path, tmp_path):
    v = vocab.seqio_vocabulary(spm_path)
    path = tmp_path / "t.jsonl"
    assert corpora.write_jsonl(TEXTS[:3], path) == 3
    tasks.register_file_task("rho_jax.test_file", {"train": str(path)}, v)
    tasks.register_file_task("rho_jax.test_file", {"train": str(path)}, v)  # idempotent
    streams = list(tasks.token_stream("rho_jax.test_file", "train"))
    assert [v.decode(s.tolist()) for s in streams] == TEXTS[:3]
    stats = pipeline.PackStats()
    rows = list(pipeline.pack(streams, 12, v.eos_id, stats=stats))
    examples = {k: np.stack([r[k] for r in rows]) for k in INPUT_KEYS}
    assert stats.split_documents > 0
    docs = pipeline.split_documents(pipeline.unpack(examples), v.eos_id)
    assert [v.decode(d) for d in docs] == TEXTS[:3]
    _, valid = ce_lib.shift_targets(examples["tokens"], examples["segment_ids"])
    # a segment of n tokens has n - 1 targets: EOS is predicted, nothing across a segment boundary
    assert np.asarray(valid).sum() == stats.tokens - stats.chunks


def test_real_task_reads_the_corpus(spm_path, tmp_path):
    v = vocab.seqio_vocabulary(spm_path)
    tasks.register_tasks(v, data_dir=str(tmp_path))
    first = next(tasks.token_stream("rho_jax.champ_clean", "validation"))
    held = [d for _, d in corpora.champ_clean("heldout")]
    assert v.decode(first.tolist()) == held[0]

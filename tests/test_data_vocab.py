"""data/vocab.py: the one vocabulary check (its three messages) and the vocabulary's identity from its file."""

import pytest

from rho_jax.config import ConfigError
from rho_jax.data import vocab


@pytest.mark.parametrize("sizes, message", [
    (dict(target=4096, reference=512), "vocabulary mismatch: the reference model has vocab_size=512 but the target has "
                                       "4096; score with a reference that shares the tokenizer"),
    (dict(tokenizer=4096, target=512), "vocabulary mismatch: the tokenizer has 4096 ids but the target model's "
                                       "vocab_size is 512; set config.model.vocab_size"),
    (dict(tokenizer=4096, reference=512), "vocabulary mismatch: the tokenizer has more ids than the reference's "
                                          "vocab_size=512; score with a reference of this tokenizer"),
])
def test_check_vocabularies_names_the_mismatch_and_the_fix(sizes, message):
    with pytest.raises(ConfigError) as e:
        vocab.check_vocabularies(**sizes)
    assert str(e.value) == message


@pytest.mark.parametrize("sizes", [dict(), dict(tokenizer=None, target=512), dict(tokenizer=500, target=512),
                                   dict(tokenizer=512, target=512, reference=512), dict(tokenizer=7, reference=8)])
def test_check_vocabularies_accepts_agreeing_sizes(sizes):
    vocab.check_vocabularies(**sizes)  # a tokenizer may have fewer ids than the (padded) model vocabulary


def test_vocabulary_identity_is_the_file_hash(tmp_path):
    (tmp_path / "a.model").write_bytes(b"spm bytes")
    (tmp_path / "tokenizer.json").write_bytes(b"{}")
    a = vocab.vocabulary_identity(str(tmp_path / "a.model"))
    assert a.startswith("spm-sha256:") and a == vocab.vocabulary_identity(str(tmp_path / "a.model"))
    assert vocab.vocabulary_identity(str(tmp_path / "tokenizer.json")).startswith("file-sha256:")
    (tmp_path / "a.model").write_bytes(b"other bytes")
    assert vocab.vocabulary_identity(str(tmp_path / "a.model")) != a

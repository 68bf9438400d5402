"""Our tokenizer interface encodes exactly like the reference libraries, and so does the seqio adapter."""

import json

import pytest
import sentencepiece as spm

from rho_jax import assets
from rho_jax.interop import as_seqio_vocabulary, load_tokenizer
from rho_jax.interop.tokenizer import BPETokenizer, SentencePieceTokenizer

TEXTS = [
    "The capital of France is Paris.",
    "Größe, naïve café, 東京は日本の首都です。 Привет, мир! مرحبا 🙂",
    "Digits 0123456789 and 3.14159, 1,000,000 and 2024-06-01.",
    r"Let $f(x) = \frac{1}{\sqrt{2\pi}} e^{-x^2/2}$, so $\int_{-\infty}^{\infty} f(x)\,dx = 1$.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # tabs\tand  double  spaces\n",
]


@pytest.fixture(scope="module")
def mistral():
    return load_tokenizer(assets.mistral_tokenizer_model())


@pytest.fixture(scope="module")
def smollm2():
    return load_tokenizer(assets.smollm2_gguf())


def test_sentencepiece_matches_sentencepiece_directly(mistral):
    direct = spm.SentencePieceProcessor(model_file=str(assets.mistral_tokenizer_model()))
    assert isinstance(mistral, SentencePieceTokenizer)
    assert (mistral.vocab_size, mistral.bos_id, mistral.eos_id) == (32000, direct.bos_id(), direct.eos_id())
    text = "\n".join(TEXTS)
    ids = mistral.encode(text)
    assert ids == direct.encode(text)
    assert mistral.decode(ids) == direct.decode(ids) == text
    for t in TEXTS:
        assert mistral.encode(t) == direct.encode(t)


@pytest.mark.slow
def test_gguf_bpe_matches_transformers_gguf_tokenizer(smollm2):
    """transformers converts the GGUF vocabulary to a `tokenizers.Tokenizer` by its own code path."""
    from transformers import AutoTokenizer

    path = assets.smollm2_gguf()
    reference = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    assert isinstance(smollm2, BPETokenizer)
    assert smollm2.vocab_size == len(reference) == 49152
    assert (smollm2.bos_id, smollm2.eos_id) == (reference.bos_token_id, reference.eos_token_id)
    for text in TEXTS + ["<|im_start|>user\nHi<|im_end|>"]:
        ids = smollm2.encode(text)
        assert ids == reference.encode(text, add_special_tokens=False), text
        assert smollm2.decode(ids) == text.replace("<|im_start|>", "").replace("<|im_end|>", "")
    assert smollm2.encode("<|im_start|>") == [reference.convert_tokens_to_ids("<|im_start|>")]


def test_hf_tokenizer_json_loads_with_its_special_tokens(smollm2, tmp_path):
    smollm2.tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}, "pad_token": None}))
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == smollm2.vocab_size
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (tok.tok.token_to_id("<|im_start|>"),
                                                    tok.tok.token_to_id("<|im_end|>"), None)
    for text in TEXTS:
        assert tok.encode(text) == smollm2.encode(text)


def test_seqio_vocabulary_encodes_the_same(mistral, smollm2):
    import tensorflow as tf

    for tok in (mistral, smollm2):
        vocab = as_seqio_vocabulary(tok)
        assert vocab.vocab_size == tok.vocab_size
        for text in TEXTS:
            ids = tok.encode(text)
            assert list(vocab.encode(text)) == ids
            assert vocab.encode_tf(tf.constant(text)).numpy().tolist() == ids
            assert vocab.decode(ids) == text
            assert vocab.decode_tf(tf.constant(ids, tf.int32)).numpy().decode("utf-8") == text

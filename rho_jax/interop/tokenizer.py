"""One tokenizer interface over SentencePiece models and byte-level BPE (HF tokenizer.json or GGUF).

    tok = load_tokenizer(path)   # *.model (SentencePiece), tokenizer.json, *.gguf, or a directory
    ids = tok.encode("text")     # list[int], no BOS/EOS added
    tok.decode(ids)              # str; control tokens (BOS/EOS/...) are dropped, as SentencePiece does

`as_seqio_vocabulary(tok)` adapts one for seqio pipelines; seqio is imported only inside it, so
this module imports without tensorflow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

# llama.cpp `tokenizer.ggml.pre` names whose pre-tokenizer is GPT-2's regex after splitting digits
# one by one (llama-vocab.cpp groups them); plain GPT-2 names use the regex alone.
_DIGIT_SPLIT_PRE = ("smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva")
_GPT2_PRE = ("default", "gpt2", "gpt-2")
_GGUF_CONTROL, _GGUF_USER_DEFINED = 3, 4  # llama.cpp token types


class Tokenizer:
    """encode(str) -> list[int]; decode(ids) -> str; vocab_size, bos_id, eos_id, pad_id (None when absent)."""

    path: Path
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    unk_id: int | None

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece `.model` file (Llama-2, Mistral)."""

    def __init__(self, path: str | os.PathLike):
        import sentencepiece as spm

        self.path = Path(path)
        self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        self.vocab_size = self.sp.get_piece_size()
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = (
            i if i >= 0 else None for i in (self.sp.bos_id(), self.sp.eos_id(), self.sp.pad_id(), self.sp.unk_id()))

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids])


class BPETokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` (byte-level BPE) with its special token ids."""

    def __init__(self, tok, path: Path, bos_id=None, eos_id=None, pad_id=None, unk_id=None):
        self.tok, self.path = tok, Path(path)
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = bos_id, eos_id, pad_id, unk_id

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)


def _hf_json(path: Path) -> BPETokenizer:
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(path))
    ids = {}
    config = path.parent / "tokenizer_config.json"  # HF keeps the special-token roles here
    if config.exists():
        conf = json.loads(config.read_text())
        for role in ("bos", "eos", "pad", "unk"):
            token = conf.get(f"{role}_token")
            token = token.get("content") if isinstance(token, dict) else token
            ids[f"{role}_id"] = tok.token_to_id(token) if token else None
    return BPETokenizer(tok, path, **ids)


def _gguf_pre_tokenizer(pre: str):
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _GPT2_PRE:
        return byte_level
    if pre in _DIGIT_SPLIT_PRE:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    raise ValueError(f"GGUF pre-tokenizer tokenizer.ggml.pre={pre!r} is not supported; supported: "
                     f"{', '.join(_GPT2_PRE + _DIGIT_SPLIT_PRE)}")


def bpe_from_gguf(source) -> BPETokenizer:
    """The byte-level BPE tokenizer (tokenizer.ggml.model == 'gpt2') of a GGUF path or `gguf.GGUFReader`."""
    import tokenizers
    from tokenizers import decoders, models

    from rho_jax.interop.gguf import field, open_gguf

    reader = open_gguf(source)
    path = Path(getattr(reader.data, "filename", source))
    kind = field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"{path}: GGUF tokenizer.ggml.model={kind!r} is not supported here (only byte-level BPE "
                         f"'gpt2'); load the original tokenizer.model / tokenizer.json instead")
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges")]
    tok = tokenizers.Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = _gguf_pre_tokenizer(field(reader, "tokenizer.ggml.pre", "default"))
    tok.decoder = decoders.ByteLevel()
    # Control and user-defined tokens match as whole strings, never through BPE merges.
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == _GGUF_CONTROL])
    tok.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types) if ty == _GGUF_USER_DEFINED])
    ids = {f"{role}_id": field(reader, f"tokenizer.ggml.{key}_token_id")
           for role, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown"))}
    return BPETokenizer(tok, path, **ids)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Dispatches on the file: `.model` SentencePiece, `.json` HF tokenizer, `.gguf`, or a directory."""
    path = Path(path)
    if path.is_dir():
        for name in ("tokenizer.json", "tokenizer.model"):
            if (path / name).exists():
                return load_tokenizer(path / name)
        raise FileNotFoundError(f"{path} holds neither tokenizer.json nor tokenizer.model")
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer file at {path}")
    if path.suffix == ".gguf":
        return bpe_from_gguf(path)
    if path.suffix == ".json":
        return _hf_json(path)
    if path.suffix == ".model" or path.name.startswith("tokenizer.model"):  # e.g. mistral's tokenizer.model.v1
        return SentencePieceTokenizer(path)
    raise ValueError(f"cannot tell the tokenizer type of {path}; expected *.model, tokenizer.json or *.gguf")


def as_seqio_vocabulary(tok: Tokenizer):
    """A `seqio.Vocabulary` that encodes exactly like `tok` (imports seqio/tensorflow on call)."""
    import seqio

    if isinstance(tok, SentencePieceTokenizer):
        return seqio.SentencePieceVocabulary(str(tok.path))
    return _vocabulary_class(seqio)(tok)


def _vocabulary_class(seqio):
    import numpy as np
    import tensorflow as tf

    class TokenizerVocabulary(seqio.Vocabulary):
        """seqio adapter over a `Tokenizer`; the tf ops run the Python tokenizer via tf.py_function."""

        def __init__(self, tok: Tokenizer):
            self.tok = tok
            super().__init__(extra_ids=0)

        @property
        def bos_id(self):
            return self.tok.bos_id

        @property
        def eos_id(self):
            return self.tok.eos_id

        @property
        def pad_id(self):
            return 0 if self.tok.pad_id is None else self.tok.pad_id

        @property
        def unk_id(self):
            return self.tok.unk_id

        @property
        def _base_vocab_size(self):
            return self.tok.vocab_size

        def _encode(self, s):
            return self.tok.encode(s)

        def _decode(self, ids):
            return self.tok.decode(ids)

        def _encode_tf(self, s):
            """Scalar tf.string -> int32 [n]."""
            ids = tf.py_function(lambda x: tf.constant(self.tok.encode(x.numpy().decode("utf-8")), tf.int32),
                                 [s], tf.int32)
            ids.set_shape([None])
            return ids

        def _decode_tf(self, ids):
            """int32 [..., n] -> tf.string [...]."""
            def decode(x):
                x = x.numpy()
                flat = [self.tok.decode(row).encode("utf-8") for row in x.reshape(-1, x.shape[-1])]
                return tf.constant(np.array(flat, dtype=object).reshape(x.shape[:-1]), tf.string)

            out = tf.py_function(decode, [ids], tf.string)
            out.set_shape(ids.shape[:-1])
            return out

        def __eq__(self, other):
            return isinstance(other, TokenizerVocabulary) and other.tok.path == self.tok.path

        def __hash__(self):
            return hash(self.tok.path)

    return TokenizerVocabulary

"""Checkpoint and tokenizer interop: HF safetensors directories, GGUF files, SentencePiece and BPE.

Each format's own library (safetensors, gguf, sentencepiece, tokenizers; seqio/TF for SeqIO vocabularies)
is imported where that format is read or written, so loading one never requires the others."""

from __future__ import annotations

import os
from pathlib import Path

from rho_jax.interop.gguf import load_gguf
from rho_jax.interop.hf import CheckpointError, load_hf_dir, save_hf
from rho_jax.interop.tokenizer import Tokenizer, as_seqio_vocabulary, load_tokenizer
from rho_jax.model import ModelConfig, Params

__all__ = ["CheckpointError", "Tokenizer", "as_seqio_vocabulary", "load_pretrained", "load_tokenizer", "save_hf"]


def load_pretrained(path: str | os.PathLike) -> tuple[ModelConfig, Params]:
    """An HF `save_pretrained` directory (Llama/Mistral safetensors) or a `.gguf` file -> (cfg, f32 params).

    The param tree is exactly that of `rho_jax.model.init_params(cfg, ...)`, as numpy arrays.
    Raises CheckpointError (a ValueError) naming the offending tensor, field or architecture.
    """
    path = Path(path)
    if path.suffix == ".gguf":
        return load_gguf(path)
    if path.is_dir():
        return load_hf_dir(path)
    raise CheckpointError(f"{path} is neither an HF checkpoint directory nor a .gguf file")

"""Training input from a config: vocabulary -> SeqIO task -> packed examples -> resumable batches.

The scorer (`rho-jax score`) and training call the same `training_examples`, so the score cache
holds exactly the packed rows training reads, and cached mode can check that by fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from rho_jax import assets
from rho_jax.config import ConfigError
from rho_jax.data import pipeline, scored, tasks, vocab as vocab_lib


class InputError(ConfigError):
    pass


def load_vocabulary(path: str):
    """A seqio.Vocabulary: the demo SentencePiece model when `path` is '', else any tokenizer file
    (SentencePiece .model, tokenizer.json, or a .gguf with an embedded vocabulary)."""
    if not path:
        return vocab_lib.seqio_vocabulary(vocab_lib.demo_vocab_path())
    from rho_jax.interop import as_seqio_vocabulary, load_tokenizer

    return as_seqio_vocabulary(load_tokenizer(path))


def tokenizer_path(path: str) -> Path:
    return Path(path) if path else vocab_lib.demo_vocab_path()


def vocabulary_identity(path: str) -> str:
    """The vocabulary's identity from its file alone (no TensorFlow): the score-cache fingerprint and the
    packed-rows cache key both use it."""
    p = tokenizer_path(path)
    kind = "spm" if p.suffix == ".model" or p.name.startswith("tokenizer.model") else "file"
    return f"{kind}-sha256:{vocab_lib.file_sha256(p)}"


def tokenizer_vocab_size(path: str) -> int:
    from rho_jax.interop import load_tokenizer

    return load_tokenizer(str(tokenizer_path(path))).vocab_size


def _task(source: str) -> str:
    return source if "." in source else tasks.task_name(source)


def training_examples(config, split: str = "train", source: str | None = None,
                      max_rows: int | None = None) -> tuple[dict, str]:
    """Packed examples {tokens, segment_ids, positions: int32 [N, L]} and the vocabulary identity.

    Deterministic in (source, split, vocabulary, seq_len, packing, seed, rates, max_rows); cached on
    disk under $RHO_JAX_CACHE/packed so repeated runs skip tokenisation.
    """
    d = config.data
    source = source or d.source
    max_rows = d.max_rows if max_rows is None else max_rows
    vocab_id = vocabulary_identity(d.vocab)
    rates = (1.0 - d.general_rate, d.general_rate)
    key = json.dumps({"source": source, "split": split, "vocab": vocab_id, "seq_len": d.seq_len,
                      "packing": d.packing, "seed": d.shuffle_seed, "rates": rates, "max_rows": max_rows},
                     sort_keys=True)
    path = assets.cache_dir() / "packed" / (hashlib.sha256(key.encode()).hexdigest()[:20] + ".npz")
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in pipeline.INT_KEYS}, vocab_id
    vocab = load_vocabulary(d.vocab)  # TensorFlow/seqio load only when rows must be (re)packed
    tasks.register_tasks(vocab, math_noisy_rates=rates)
    name = _task(source)
    import seqio

    if name not in seqio.TaskRegistry.names() and name not in seqio.MixtureRegistry.names():
        raise InputError(f"data source {source!r} is not a registered SeqIO task or mixture; known: "
                         f"{sorted(n for n in seqio.TaskRegistry.names() if n.startswith('rho_jax.'))}. "
                         f"Register your own with rho_jax.data.tasks.register_file_task.")
    examples, stats = pipeline.pack_task(name, split, d.seq_len, vocab.eos_id, "pack" if d.packing else "pad",
                                         seed=d.shuffle_seed, max_rows=max_rows or None)
    if split == "train" and len(examples["tokens"]) < config.train.batch_size:
        raise InputError(f"{name} ({split}) packs into {len(examples['tokens'])} rows of {d.seq_len}, fewer than "
                         f"one global batch of {config.train.batch_size}")
    print(f"packed {name}/{split}: {len(examples['tokens'])} rows of {d.seq_len} tokens, fill {stats.fill:.3f}, "
          f"{stats.split_documents} long documents split", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **examples)
    tmp.replace(path)
    return examples, vocab_id


def reference_identity(config) -> str:
    """The identity of config.init.reference that the score cache's fingerprint includes."""
    if not config.init.reference:
        raise InputError("config.objective.reference='cached' needs config.init.reference: the reference the "
                         "cache was scored with, so its fingerprint can be checked")
    from rho_jax.loop import load_model

    _, params = load_model(config.init.reference, "reference")
    return scored.params_identity(params)


def input_for_training(config, input_state: dict | None = None) -> pipeline.InputPipeline:
    """This process's resumable batch iterator; in cached mode it carries ref_ce / ref_entropy from a
    score cache whose fingerprint must match these examples, this vocabulary and this reference."""
    import jax

    examples, vocab_id = training_examples(config)
    o = config.objective
    if o.mode == "slm" and o.reference == "cached":
        if not config.data.score_cache:
            raise InputError("config.objective.reference='cached' needs config.data.score_cache (run `rho-jax score`)")
        expected = scored.fingerprint(examples, reference_identity(config), vocab_id)
        examples = scored.load_cache(config.data.score_cache, expected)
    pipe = pipeline.InputPipeline(examples, config.train.batch_size, process_index=jax.process_index(),
                                  process_count=jax.process_count(), shuffle=True, seed=config.data.shuffle_seed)
    if input_state:
        pipe.set_state(input_state)
    pipe.vocab_size = tokenizer_vocab_size(config.data.vocab)
    return pipe


def heldout_sets(config) -> dict[str, dict]:
    """{source: packed validation examples} for each of config.eval.sources."""
    names = [s.strip() for s in config.eval.sources.split(",") if s.strip()]
    return {n: training_examples(config, "validation", n, config.eval.max_rows)[0] for n in names}

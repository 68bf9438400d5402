"""Training and held-out input from a config: the prepared rows (`rho-jax prepare`) read by Grain.

  config.data.prepared     rows of the training source (a mixture: one directory per component)
  config.data.score_cache  their reference scores (`rho-jax score`), read with them in cached SLM mode
  config.eval.prepared     held-out sets, one prepared directory per config.eval.sources entry

Nothing here tokenises or packs: that happened once in `prepare`. The checks at startup cost O(shards), and
the reference's identity is read from the metadata saved with it (`checkpoint.model_identity`).
"""

from __future__ import annotations

import jax

from rho_jax import checkpoint
from rho_jax import config as config_lib
from rho_jax.config import ConfigError
from rho_jax.data import reader
from rho_jax.data.vocab import tokenizer_vocab_size, vocabulary_identity
from rho_jax.reference import ReferenceKind


class InputError(ConfigError):
    pass


def _prepared(config) -> str:
    if not config.data.prepared:
        raise InputError("config.data.prepared is empty: training reads prepared rows; run `rho-jax prepare "
                         "--config=...` and point config.data.prepared at its output")
    return config.data.prepared


def reference_identity(config) -> str:
    """The identity of config.init.reference (config.validate(purpose='train') made sure it is set), which
    cached scores must have been made with: read from the metadata saved with it, not from its weights."""
    return checkpoint.model_identity(config.init.reference, "reference")


def input_for_training(config, input_state: dict | None = None) -> reader.Reader:
    """This process's resumable batch iterator; in cached SLM mode it carries ref_ce (and ref_entropy when
    the objective's score needs it) from score shards checked against these rows and this reference."""
    d, ref = config.data, config_lib.run_spec_of(config).reference
    cached = ref.kind is ReferenceKind.CACHED  # config.validate(purpose='train'): score_cache and reference set
    with_entropy = cached and ref.with_entropy
    comps = reader.open_components(_prepared(config), seq_len=d.seq_len, vocab_identity=vocabulary_identity(d.vocab),
                                   max_rows=d.max_rows)
    if cached:
        reader.join_scores(comps, d.prepared, d.score_cache, ref_identity=reference_identity(config),
                           with_entropy=with_entropy)
    pipe = reader.Reader(comps, config.train.batch_size, seed=d.shuffle_seed, process_index=jax.process_index(),
                         process_count=jax.process_count(), with_entropy=with_entropy,
                         vocab_size=tokenizer_vocab_size(d.vocab))
    if input_state:
        pipe.set_state(input_state)
    return pipe


def heldout_dirs(config) -> dict[str, str]:
    """{eval source name: prepared dir} from config.eval.sources and config.eval.prepared (same order)."""
    names = [s.strip() for s in config.eval.sources.split(",") if s.strip()]
    dirs = [s.strip() for s in config.eval.prepared.split(",") if s.strip()]
    if len(names) != len(dirs):
        raise InputError(f"config.eval.sources names {len(names)} held-out sets ({', '.join(names)}) but "
                         f"config.eval.prepared lists {len(dirs)} prepared directories; give one per source, in order")
    return dict(zip(names, dirs))


def heldout_rows(config, prepared: str, max_rows: int = 0) -> dict:
    """The first `max_rows` rows (0 = all) of a prepared held-out set: {tokens, segment_ids, positions: [N, L]}."""
    return reader.read_rows(prepared, max_rows, seq_len=config.data.seq_len,
                            vocab_identity=vocabulary_identity(config.data.vocab))


def heldout_sets(config) -> dict[str, dict]:
    """{source: held-out rows} for each of config.eval.sources (read from config.eval.prepared)."""
    return {n: heldout_rows(config, p, config.eval.max_rows) for n, p in heldout_dirs(config).items()}

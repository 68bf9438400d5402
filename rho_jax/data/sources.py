"""`data.source` -> components (name, rate) of input shards, and the documents of one input shard.

Source specs:
    jsonl:GLOB      JSON lines, one document per line in field `data.text_field` (.jsonl or .jsonl.gz)
    parquet:GLOB    parquet files, text column `data.text_field`
    mix:SPEC=RATE,SPEC=RATE,...   several of the above with sampling rates (e.g. general 6:3:1)
    NAME            a registered SeqIO task or mixture (`rho_jax.data.tasks`; "champ_noisy" means
                    "rho_jax.champ_noisy"): SeqIO stays the definition of the files, the text field (its
                    `rekey` preprocessor) and the rates; its tf.data reader is not used.
GLOB is local or gs:// (etils.epath; gs:// needs gcsfs or TensorFlow's gfile on the machine).

Input shards are fixed by the input alone: an uncompressed JSONL file is cut into byte ranges of
`shard_bytes` (a line belongs to the range holding its first byte), a parquet file into runs of row
groups of about `shard_bytes`, and a .gz file is one shard. Every shard yields its documents in
file order, so the packed output never depends on scheduling.
"""

from __future__ import annotations

import dataclasses
import functools
import glob as globlib
import gzip
import json
import os
from typing import Iterator, Optional

from etils import epath

from rho_jax.data import tasks
from rho_jax.data.documents import SkipReport
from rho_jax.data.rows import DataError

FORMATS = ("jsonl", "parquet")
DEFAULT_SHARD_BYTES = 256 << 20


@dataclasses.dataclass(frozen=True)
class InputShard:
    """One unit of work: documents of `path` in [start, end) (bytes for JSONL, row groups for parquet).

    end = -1 means the whole file (.gz JSONL).
    """

    path: str
    fmt: str
    start: int
    end: int
    text_field: str
    file_bytes: int = -1  # the input file's size when planned: a changed file invalidates finished shards

    @property
    def label(self) -> str:
        return self.path if self.end < 0 else f"{self.path}#{self.start}-{self.end}"


@dataclasses.dataclass(frozen=True)
class Component:
    name: str  # sub-directory of a mixture; "" for a single source
    rate: float
    fmt: str
    pattern: str
    text_field: str
    files: tuple[str, ...] = ()  # the files themselves (a SeqIO task's, from its source); () = glob `pattern`


# ---------------------------------------------------------------------------------------------- specs


def resolve(source: str, text_field: str = "text", split: str = "train", vocab=None,
            general_rate: float = 0.3) -> list[Component]:
    """The components of `source` (see the module doc); one component unless it is a mixture.

    vocab / general_rate are needed only for registered SeqIO names (registration takes a vocabulary;
    `rho_jax.math_noisy` mixes (1 - general_rate) noisy math with general_rate general text).
    """
    source = source.strip()
    if source.startswith("mix:"):
        parts = [p for p in source[4:].split(",") if p.strip()]
        comps = []
        for i, part in enumerate(parts):
            spec, sep, rate = part.rpartition("=")
            if not sep:
                raise DataError(f"data.source mixture part {part!r} has no '=RATE'; write mix:jsonl:/a/*.jsonl=6,...")
            try:
                r = float(rate)
            except ValueError:
                raise DataError(f"data.source mixture part {part!r}: rate {rate!r} is not a number") from None
            if r <= 0:
                raise DataError(f"data.source mixture part {part!r}: rate must be > 0")
            fmt, pattern = _file_spec(spec)
            comps.append(Component(f"{i:02d}_{fmt}", r, fmt, pattern, text_field))
        if not comps:
            raise DataError(f"data.source={source!r} names no components; write mix:jsonl:/a/*.jsonl=6,...")
        return comps
    if source.split(":", 1)[0] in FORMATS:
        fmt, pattern = _file_spec(source)
        return [Component("", 1.0, fmt, pattern, text_field)]
    return _registered(source, split, vocab, general_rate)


def _file_spec(spec: str) -> tuple[str, str]:
    fmt, sep, pattern = spec.partition(":")
    if not sep or fmt not in FORMATS or not pattern:
        raise DataError(f"data source {spec!r}: expected jsonl:GLOB or parquet:GLOB")
    return fmt, pattern


def _registered(name: str, split: str, vocab, general_rate: float) -> list[Component]:
    """A registered SeqIO task/mixture -> its JSONL files, text field and rates (read from the registry)."""
    import seqio  # lazily: SeqIO imports TensorFlow, which only SeqIO-defined sources need

    if vocab is None:
        raise DataError(f"data.source={name!r} is a SeqIO name: resolving it needs the vocabulary")
    tasks.register_tasks(vocab, math_noisy_rates=(1.0 - general_rate, general_rate))
    full = name if "." in name else tasks.task_name(name)
    if full in seqio.MixtureRegistry.names():
        mixture = seqio.get_mixture_or_task(full)
        return [_task_component(t, split, mixture.get_rate(t), _short(t.name)) for t in mixture.tasks]
    if full in seqio.TaskRegistry.names():
        return [_task_component(seqio.get_mixture_or_task(full), split, 1.0, "")]
    known = sorted(n for n in list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
                   if n.startswith(tasks.PREFIX))
    raise DataError(f"data.source={name!r} is neither jsonl:GLOB / parquet:GLOB / mix:... nor a registered SeqIO "
                    f"task or mixture; registered: {known}")


def _short(task_name: str) -> str:
    return task_name.split(".", 1)[-1]


def _task_component(task, split: str, rate: float, name: str) -> Component:
    """Reads what a task does through SeqIO's public API: its source's files for `split`
    (`DataSource.list_shards`), and rekey(targets <- field) + tokenize as its preprocessors."""
    import seqio  # lazily, as above

    text_field = None
    for p in task.preprocessors:
        fn = p.func if isinstance(p, functools.partial) else p
        if fn is seqio.preprocessors.rekey:
            text_field = p.keywords["key_map"]["targets"]
        elif fn not in (seqio.preprocessors.tokenize,):
            raise DataError(f"SeqIO task {task.name} has preprocessor {getattr(fn, '__name__', fn)}, which prepare "
                            f"cannot run outside tf.data; export the task's text to JSONL and use jsonl:GLOB")
    files = _task_files(task, split)
    return Component(name, float(rate), "jsonl", files[0] if len(files) == 1 else ",".join(files),
                     text_field or "text", tuple(files))


def _task_files(task, split: str) -> list[str]:
    """The JSONL files of a task's split: a source that lists files (rho_jax's JsonlSource, a FileDataSource);
    any other source (TFDS, a function) has no files prepare can read."""
    import seqio  # lazily, as above

    src = task.source
    files = []
    if isinstance(src, (tasks.jsonl_source_type(), seqio.FileDataSource)):
        if split not in src.splits:
            raise DataError(f"SeqIO task {task.name} has no split {split!r}; it has {list(src.splits)}")
        files = sorted(os.fspath(f) for f in src.list_shards(split))  # demo corpora: exported on first use
    if not files or not all(f.endswith((".jsonl", ".jsonl.gz")) for f in files):
        hint = ""
        corpus = tasks.corpora.CORPORA.get(_short(task.name))
        if corpus is not None and corpus.hf_name:
            hint = (f" (download {corpus.hf_name}'s parquet files and set data.source=parquet:GLOB, "
                    f"data.text_field={corpus.text_field})")
        raise DataError(f"SeqIO task {task.name} reads {type(src).__name__}; prepare reads files: point data.source "
                        f"at them as jsonl:GLOB or parquet:GLOB{hint}")
    return files


# ---------------------------------------------------------------------------------------------- planning


def expand(pattern: str) -> list[str]:
    """Files matching `pattern`, sorted; DataError naming the glob when nothing matches."""
    if "://" in pattern:
        parts = pattern.split("/")
        first = next((i for i, p in enumerate(parts) if globlib.has_magic(p)), len(parts))
        root = epath.Path("/".join(parts[:first]))
        files = ([os.fspath(p) for p in root.glob("/".join(parts[first:]))] if first < len(parts)
                 else ([pattern] if root.exists() else []))
    else:
        files = [f for f in globlib.glob(pattern, recursive=True) if os.path.isfile(f)]
    if not files:
        raise DataError(f"no input files match {pattern!r}; check the path in data.source")
    return sorted(files)


def plan(component: Component, shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[InputShard]:
    """The input shards of a component, in input order (a pure function of the files and shard_bytes)."""
    shards = []
    for path in component.files or expand(component.pattern):
        size = epath.Path(path).stat().length
        if component.fmt == "jsonl" and path.endswith(".gz"):
            shards.append(InputShard(path, "jsonl", 0, -1, component.text_field, size))
        elif component.fmt == "jsonl":
            shards += [InputShard(path, "jsonl", s, min(size, s + shard_bytes), component.text_field, size)
                       for s in range(0, size, shard_bytes)]
        else:
            shards += _parquet_shards(path, component.text_field, shard_bytes, size)
    return shards


def _parquet_shards(path: str, text_field: str, shard_bytes: int, size: int) -> list[InputShard]:
    import pyarrow.parquet as pq  # lazily: only Parquet sources need pyarrow

    with epath.Path(path).open("rb") as f:
        try:
            meta = pq.ParquetFile(f).metadata
        except Exception as e:  # pyarrow raises ArrowInvalid on a file that is not parquet
            raise DataError(f"{path} is not a readable parquet file ({e}); fix or remove it") from None
        names = meta.schema.to_arrow_schema().names
    if text_field not in names:
        raise DataError(f"{path} has no column {text_field!r} (columns: {names}); set data.text_field")
    shards, start, acc = [], 0, 0
    for g in range(meta.num_row_groups):
        acc += meta.row_group(g).total_byte_size
        if acc >= shard_bytes or g == meta.num_row_groups - 1:
            shards.append(InputShard(path, "parquet", start, g + 1, text_field, size))
            start, acc = g + 1, 0
    return shards


# ---------------------------------------------------------------------------------------------- reading


def documents(shard: InputShard, report: SkipReport) -> Iterator[str]:
    """The documents of one shard in file order; bad ones are counted in `report` by reason, not yielded.

    Reasons: empty (empty or whitespace only), invalid_utf8, missing_field (absent, null or not a
    string), malformed_json (a JSONL line that is not a JSON object).
    """
    raw = _parquet_values(shard) if shard.fmt == "parquet" else _jsonl_values(shard, report)
    for value in raw:
        text = _check_text(value, report, shard.label)
        if text is not None:
            yield text


def _check_text(value, report: SkipReport, where: str) -> Optional[str]:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            report.skip("invalid_utf8", where)
            return None
    if not isinstance(value, str):
        report.skip("missing_field", where)
        return None
    try:
        value.encode("utf-8")  # lone surrogates from JSON escapes ("\ud800") are not UTF-8 text
    except UnicodeEncodeError:
        report.skip("invalid_utf8", where)
        return None
    if not value.strip():
        report.skip("empty", where)
        return None
    return value


_MISSING = object()


def _jsonl_lines(shard: InputShard) -> Iterator[bytes]:
    """Raw lines whose first byte lies in [start, end) (the whole file for end=-1)."""
    p = epath.Path(shard.path)
    if shard.end < 0:
        with p.open("rb") as f:
            stream = gzip.open(f) if shard.path.endswith(".gz") else f
            yield from stream
        return
    with p.open("rb") as f:
        if shard.start > 0:
            f.seek(shard.start - 1)
            f.readline()  # the rest of the line that began before this range belongs to the previous shard
        pos = f.tell()
        while pos < shard.end:
            line = f.readline()
            if not line:
                break
            pos += len(line)
            yield line


def _jsonl_values(shard: InputShard, report: SkipReport) -> Iterator:
    field = shard.text_field
    for line in _jsonl_lines(shard):
        if not line.strip():
            continue  # a blank line is not a record
        try:
            record = json.loads(line)
        except UnicodeDecodeError:
            report.skip("invalid_utf8", shard.label)
            continue
        except json.JSONDecodeError:
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                report.skip("invalid_utf8", shard.label)
                continue
            report.skip("malformed_json", shard.label)
            continue
        if not isinstance(record, dict):
            report.skip("malformed_json", shard.label)
            continue
        yield record.get(field, _MISSING)


def _parquet_values(shard: InputShard) -> Iterator:
    import pyarrow.parquet as pq

    with epath.Path(shard.path).open("rb") as f:
        pf = pq.ParquetFile(f)
        for batch in pf.iter_batches(batch_size=1024, row_groups=list(range(shard.start, shard.end)),
                                     columns=[shard.text_field]):
            yield from batch.column(0).to_pylist()

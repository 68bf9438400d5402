"""`rho-jax prepare`: source -> tokenise -> pack -> ArrayRecord row shards + manifest, on Apache Beam.

    beam.Create(input shards still to do) | Reshuffle (spread them over workers) | ParDo(PrepareShard)

Each input shard (`sources.plan`) becomes one output shard with the same index, written streaming
(rows go to the ArrayRecord file as they are packed; memory is one document plus one row), atomically
(temporary file, then rename, then the sidecar). So the output bytes and the global row order depend
only on the input and the settings, never on the number of workers or the runner, and a rerun skips
every shard whose sidecar is present and consistent. The driver writes `manifest.json` (and, for a
mixture, `mixture.json`) from the sidecars once every shard is done; nothing else reads the corpus.

Runner: locally the DirectRunner with `prepare.workers` processes; `prepare.beam_args` passes any
Beam pipeline options, e.g. "--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp
--setup_file=./setup.py" with data.prepared and the inputs on gs://.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shlex
from typing import Optional

from etils import epath

from rho_jax import config as config_lib
from rho_jax import storage
from rho_jax.data import pipeline, rows, sources, vocab
from rho_jax.data.documents import SkipReport
from rho_jax.data.rows import DataError
from rho_jax.interop.tokenizer import load_tokenizer

STATS = ("documents", "tokens", "pad_tokens", "split_documents", "rows")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything an output shard's bytes depend on besides its input."""

    tokenizer: str  # tokenizer file (local or gs://)
    vocab_identity: str
    seq_len: int
    packing: str  # "pack" | "pad"
    eos_id: int

    @property
    def key(self) -> str:
        text = json.dumps({k: v for k, v in dataclasses.asdict(self).items() if k != "tokenizer"}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class ShardJob:
    shard: sources.InputShard
    out: str  # the .array_record path


_TOKENIZERS: dict = {}


def _tokenizer(path: str):
    """One tokenizer per worker process; a remote file is copied to local disk first."""
    if path not in _TOKENIZERS:
        _TOKENIZERS[path] = load_tokenizer(storage.local_copy(path))
    return _TOKENIZERS[path]


def write_shard(job: ShardJob, settings: Settings) -> dict:
    """Packs one input shard into its ArrayRecord file and writes the sidecar; returns the sidecar.

    Input errors (unreadable or corrupt files) come back as {"error": message} with nothing written, so
    the driver reports them as one line whatever the runner does with exceptions.
    """
    tok = _tokenizer(settings.tokenizer)
    report, stats = SkipReport(), pipeline.PackStats()
    docs = (tok.encode(text) for text in sources.documents(job.shard, report))
    try:
        with rows.ShardWriter(job.out) as writer:
            for row in pipeline.pack(docs, settings.seq_len, settings.eos_id, settings.packing, stats):
                writer.write(rows.encode_row(row))
            info = writer.commit()
    except (OSError, EOFError, ValueError) as e:  # gzip/parquet/IO errors of this input
        return {"error": f"cannot read {job.shard.label}: {type(e).__name__}: {e}; fix or remove the file"}
    info.update({k: getattr(stats, k) for k in STATS if k != "rows"}, skipped=report.counts_of(rows.SKIP_REASONS),
                input=job.shard.label, input_file_bytes=job.shard.file_bytes, prepare_key=settings.key)
    rows.write_json(rows.sidecar_path(job.out), info)
    return info


def _done(job: ShardJob, settings: Settings) -> Optional[dict]:
    info = rows.finished_shard(job.out)
    if (info and info.get("input") == job.shard.label and info.get("input_file_bytes") == job.shard.file_bytes
            and info.get("prepare_key") == settings.key):
        return info
    return None


def _beam_options(workers: int, beam_args: str):
    # Beam is imported only when a pipeline runs: it takes seconds to import and is not needed by training
    # (nor installed on every accelerator image).
    from apache_beam.options.pipeline_options import PipelineOptions

    args = shlex.split(beam_args or "")
    if not any(a.startswith("--runner") for a in args):
        # FnApiRunner is the Python DirectRunner's engine; "DirectRunner" itself first tries to download the
        # Go Prism runner from GitHub, which an offline machine cannot do.
        mode = "multi_processing" if workers > 1 else "in_memory"
        args += ["--runner=FnApiRunner", f"--direct_num_workers={workers}", f"--direct_running_mode={mode}"]
    return PipelineOptions(args)


def run_beam(jobs: list[ShardJob], settings: Settings, workers: int = 1, beam_args: str = "") -> None:
    """Runs the Beam pipeline over `jobs`; each writes its shard and sidecar. Raises DataError on an input error."""
    import apache_beam as beam  # lazily, as in _beam_options

    class PrepareShard(beam.DoFn):
        def process(self, job):
            info = write_shard(job, settings)
            if "error" in info:
                # Written to a side file too: a remote runner's exceptions do not reach this driver's type system.
                rows.write_json(epath.Path(job.out).parent / (epath.Path(job.out).name + ".error.json"), info)
            yield info.get("error", "")

    errors_dir = {os.fspath(epath.Path(j.out).parent) for j in jobs}
    for d in errors_dir:  # reports left by an earlier, interrupted run
        for f in epath.Path(d).glob("*.error.json"):
            f.unlink()
    # The local runner forwards every worker's start-up chatter at INFO/WARNING; failures still raise.
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    with beam.Pipeline(options=_beam_options(workers, beam_args)) as p:
        _ = (p | "shards" >> beam.Create(jobs) | "spread" >> beam.Reshuffle()
             | "pack" >> beam.ParDo(PrepareShard()))
    errors = []
    for d in sorted(errors_dir):
        for f in sorted(epath.Path(d).glob("*.error.json")):
            errors.append(rows.read_json(f)["error"])
            f.unlink()
    if errors:
        raise DataError(errors[0] + (f" (and {len(errors) - 1} more input errors)" if len(errors) > 1 else ""))


def _component_manifest(comp: sources.Component, jobs: list[ShardJob], settings: Settings, source: str,
                        vocab_size: int) -> dict:
    shards = []
    for job in jobs:
        info = _done(job, settings)
        if info is None:
            raise DataError(f"shard {job.out} was not written; re-run `rho-jax prepare` (it resumes)")
        shards.append(info)
    totals = {k: sum(s[k] for s in shards) for k in STATS}
    totals["skipped"] = {r: sum(s["skipped"].get(r, 0) for s in shards) for r in
                         sorted({r for s in shards for r in s["skipped"]})}
    return {"format": rows.FORMAT, "seq_len": settings.seq_len, "packing": settings.packing,
            "vocab_identity": settings.vocab_identity, "eos_id": settings.eos_id, "vocab_size": vocab_size,
            "source": source, "component": comp.name, "input": f"{comp.fmt}:{comp.pattern}",
            "text_field": comp.text_field, "prepare_key": settings.key, "shards": shards, "totals": totals}


def _ship_tokenizer(tokenizer, root: epath.Path) -> str:
    """Copies the tokenizer file (and an HF tokenizer_config.json beside it) to <root>/tokenizer/; returns its path."""
    src = epath.Path(tokenizer)
    if src.is_dir():
        src = next((src / n for n in ("tokenizer.json", "tokenizer.model") if (src / n).exists()), src)
    dst_dir = root / "tokenizer"
    dst_dir.mkdir(parents=True, exist_ok=True)
    for f in (src, src.parent / "tokenizer_config.json"):
        dst = dst_dir / f.name
        if f.exists() and not (dst.exists() and dst.read_bytes() == f.read_bytes()):
            rows.copy_file(f, dst)
    return os.fspath(dst_dir / src.name)


def prepare(source: str, out_dir: str, *, tokenizer: str, vocab_identity: str, seq_len: int, packing: str = "pack",
            text_field: str = "text", workers: int = 1, beam_args: str = "", shard_bytes: int = sources.DEFAULT_SHARD_BYTES,
            split: str = "train", seqio_vocab=None, general_rate: float = 0.3, max_shards: int = 0) -> dict:
    """Prepares `source` into `out_dir`; returns {"components": [(name, manifest)], "done_before": n, "written": n}.

    max_shards > 0 prepares only the first max_shards input shards of each component (small runs); shard
    names keep the full count, so a later run with a larger max_shards (or 0 = all) adds the rest.

    A rerun into the same directory with the same settings redoes only unfinished shards; a directory
    holding another preparation (other vocabulary, seq_len, packing or source) is refused.
    """
    tok = load_tokenizer(storage.local_copy(tokenizer))
    if tok.eos_id is None:
        raise DataError(f"tokenizer {tokenizer} has no EOS token; packing needs one to end every document")
    settings = Settings(os.fspath(tokenizer), vocab_identity, int(seq_len), packing, int(tok.eos_id))
    comps = sources.resolve(source, text_field, split, seqio_vocab, general_rate)
    root = epath.Path(out_dir)
    mixture = len(comps) > 1 or comps[0].name != ""
    if mixture and (root / rows.MANIFEST).exists():
        raise DataError(f"{root} holds a single prepared source but data.source={source!r} is a mixture; "
                        f"choose another data.prepared or delete {root}")
    planned = []
    for comp in comps:
        d = root / comp.name if comp.name else root
        shards = sources.plan(comp, shard_bytes)
        jobs = [ShardJob(s, os.fspath(d / rows.shard_name(i, len(shards)))) for i, s in enumerate(shards)]
        jobs = jobs[:max_shards] if max_shards > 0 else jobs
        if (d / rows.MANIFEST).exists():  # a finished preparation may only be extended (more of the same shards)
            old = rows.read_manifest(d)
            old_inputs = [(s["input"], s.get("input_file_bytes")) for s in old["shards"]]
            new_inputs = [(j.shard.label, j.shard.file_bytes) for j in jobs]
            if (old.get("prepare_key") != settings.key or old.get("planned_shards", len(old_inputs)) != len(shards)
                    or old_inputs != new_inputs[:len(old_inputs)]):
                raise DataError(f"{d} already holds data prepared from {old.get('input')} (other files or settings) "
                                f"with seq_len={old.get('seq_len')}, packing={old.get('packing')}, vocabulary "
                                f"{old.get('vocab_identity')}; choose another data.prepared or delete {d}")
        planned.append((comp, d, jobs, len(shards)))
    for _, d, _, _ in planned:  # only once every component's inputs were found
        d.mkdir(parents=True, exist_ok=True)
    # Workers (possibly remote) read the tokenizer from the output directory; it also records what made the rows.
    settings = dataclasses.replace(settings, tokenizer=_ship_tokenizer(tokenizer, root))
    all_jobs = [j for _, _, jobs, _ in planned for j in jobs]
    todo = [j for j in all_jobs if _done(j, settings) is None]
    if todo:
        run_beam(todo, settings, workers, beam_args)
    out = []
    for comp, d, jobs, n_planned in planned:
        manifest = _component_manifest(comp, jobs, settings, source, tok.vocab_size)
        manifest["planned_shards"] = n_planned  # < len(shards) when max_shards cut the input short
        rows.write_manifest(d, manifest)
        out.append((comp.name, manifest))
    if mixture:
        rows.write_mixture(root, [{"name": c.name, "dir": c.name, "rate": c.rate} for c, _, _, _ in planned])
    return {"components": out, "done_before": len(all_jobs) - len(todo), "written": len(todo)}


def run(config, source: Optional[str] = None, split: Optional[str] = None, out: Optional[str] = None) -> dict:
    """`rho-jax prepare --config=C`: prepares config.data.source (split config.prepare.split) into config.data.prepared.

    source/split/out override those fields (e.g. a held-out set: source="champ_clean", split="validation").
    """
    config_lib.validate(config, purpose="prepare")
    d, p = config.data, config.prepare
    source, split, out = source or d.source, split or p.split, out or d.prepared
    if not out:
        raise config_lib.ConfigError("config.data.prepared is empty: which directory should the prepared rows go to?")
    seqio_vocab = None
    if source.split(":", 1)[0] not in sources.FORMATS + ("mix",):
        seqio_vocab = vocab.load_vocabulary(d.vocab)  # a SeqIO name: registration needs the vocabulary
    return prepare(source, out, tokenizer=os.fspath(vocab.tokenizer_path(d.vocab)),
                   vocab_identity=vocab.vocabulary_identity(d.vocab), seq_len=d.seq_len,
                   packing="pack" if d.packing else "pad", text_field=d.text_field, workers=p.workers,
                   beam_args=p.beam_args, shard_bytes=int(p.shard_mb * (1 << 20)), split=split,
                   seqio_vocab=seqio_vocab, general_rate=d.general_rate, max_shards=p.max_shards)

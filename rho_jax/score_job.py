"""`rho-jax score --config=...`: the reference's per-token scores of every prepared row, as score shards
aligned 1:1 with the rows shards (format: rho_jax/data/scores.py).

It runs on training's slice with training's config: the global mesh `config.mesh` over every process's
devices, the micro-batch of config.train.batch_size // grad_accum rows, and the one compiled reference
scorer online SLM calls (rho_jax.score.reference_scorer), so cached scores are the online ones, bit for bit.

Work split (SPMD): rows shard i of every component is read by process i % process_count. Every scorer call
is one global micro-batch to which each process contributes the rows its own devices hold (B / processes
of them, `sharding.process_rows`), taken in order from its own unfinished shards, and takes back the same
rows' scores (`sharding.local_rows`). Every process makes the same number of calls: the most any process
needs (one all-gather of the counts at the start, since a resumed job may have left unequal work), padding
with empty rows (they score 0 and are dropped) once its own rows run out.

Each shard streams: its scores go to a temporary ArrayRecord file that is renamed into place when complete;
its sidecar (with the fingerprint) is written after it. A restarted job skips every shard with a sidecar,
so it resumes per shard. After a barrier, process 0 writes each manifest last.
"""

from __future__ import annotations

import itertools
import os
from typing import Iterator, NamedTuple

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from tqdm import tqdm

from rho_jax import checkpoint, flops, losses, score, sharding
from rho_jax import config as config_lib
from rho_jax.batch import INPUT_KEYS
from rho_jax.data import reader, rows as rows_lib, scores as scores_lib
from rho_jax.data.vocab import check_vocabularies, tokenizer_vocab_size, vocabulary_identity


class _Job(NamedTuple):
    """One rows shard this process scores: its rows file, its score shard and the rows manifest entry."""
    rows_path: str
    out: epath.Path
    shard: dict


def _records(job: _Job) -> Iterator[bytes]:
    """The shard's records, checked against the row count its manifest gives."""
    n, want = 0, job.shard["rows"]
    for rec in rows_lib.read_records(job.rows_path):
        n += 1
        if n > want:
            break
        yield rec
    if n != want:
        raise rows_lib.DataError(f"{job.rows_path} holds {'more' if n > want else n} rows but its manifest says "
                                 f"{want}; re-run `rho-jax prepare`")


def _scored(fn, ref_params, records: Iterator, *, calls: int, micro: int, seq_len: int) -> Iterator:
    """(ref_ce_L, ref_entropy_L) f32 of each of `records` in order, from exactly `calls` calls of the global
    scorer `fn` on [micro, seq_len] micro-batches: this process feeds its next rows (those its devices hold),
    padded with empty rows once its records run out, so that every process runs every call."""
    sh = fn.batch_sharding
    local = len(sharding.process_rows(sh, (micro, seq_len)))
    for _ in range(calls):
        block = list(itertools.islice(records, local))
        rows = losses.pad_rows(rows_lib.decode_rows(block, seq_len), local)
        batch = {k: jax.make_array_from_process_local_data(sh, rows[k], (micro, seq_len)) for k in INPUT_KEYS}
        ref_ce, ref_ent = (sharding.local_rows(x) for x in fn(ref_params, batch))
        for i in range(len(block)):  # the real rows only
            yield ref_ce[i], ref_ent[i]
    if next(records, None) is not None:
        raise RuntimeError("internal: rows left after the agreed number of scorer calls")


def _score_jobs(fn, ref_params, jobs: list[_Job], *, micro: int, seq_len: int, ref_identity: str,
                with_entropy: bool, bar) -> None:
    """Scores `jobs` (this process's unfinished shards) in order, each into its score shard (atomically, then
    its sidecar), with as many scorer calls as the process with the most rows needs."""
    local = len(sharding.process_rows(fn.batch_sharding, (micro, seq_len)))
    calls = -(-sum(j.shard["rows"] for j in jobs) // local)
    if jax.process_count() > 1:  # a resumed job may have left more shards to some processes than to others
        calls = int(np.max(multihost_utils.process_allgather(np.int64(calls))))
    scored = _scored(fn, ref_params, itertools.chain.from_iterable(map(_records, jobs)), calls=calls,
                     micro=micro, seq_len=seq_len)
    for job in jobs:
        with rows_lib.ShardWriter(job.out) as writer:
            for ref_ce_L, ref_ent_L in itertools.islice(scored, job.shard["rows"]):
                writer.write(scores_lib.encode_scores(ref_ce_L, ref_ent_L if with_entropy else None))
            if writer.rows != job.shard["rows"]:
                raise RuntimeError(f"internal: {writer.rows} scores for {job.shard['rows']} rows of {job.rows_path}")
            info = writer.commit()
        rows_lib.write_json(rows_lib.sidecar_path(job.out),
                            scores_lib.shard_sidecar(info, job.shard, ref_identity, seq_len))
        bar.update(job.shard["rows"] * seq_len)
    # The calls left after this process's last row: empty rows here, the other processes' rows need them.
    if next(scored, None) is not None:
        raise RuntimeError("internal: more scores than rows")


def _finished(job: _Job, ref_identity: str, seq_len: int) -> bool:
    """Whether the job's score shard is done (resume); a finished shard of another job is refused."""
    done = rows_lib.finished_shard(job.out)
    if done is not None:
        scores_lib.check_shard(done, job.shard, ref_identity, seq_len, job.out)
    return done is not None


def _check_cache_dir(sdir, ref_identity: str, seq_len: int, with_entropy: bool) -> None:
    """Refuses a score directory whose manifest is another job's."""
    if (sdir / rows_lib.MANIFEST).exists():
        old = rows_lib.read_manifest(sdir, scores_lib.FORMAT)
        if old["ref_identity"] != ref_identity or old["seq_len"] != seq_len or old["with_entropy"] != with_entropy:
            raise rows_lib.DataError(f"score cache {sdir} holds scores of another reference, seq_len or entropy "
                                     f"setting; choose an empty config.data.score_cache or delete {sdir}")


def _write_manifest(c, sdir, ref_cfg, ref_identity: str, with_entropy: bool, vocab_id: str, seq_len: int) -> dict:
    """The component's score manifest, from every finished score shard (written by process 0; all return it)."""
    shards = []  # every finished score shard from the first on (a larger max_rows earlier may have done more)
    for s in c.manifest["shards"]:
        side = rows_lib.finished_shard(sdir / scores_lib.score_file(s["file"]))
        if side is None:
            break
        scores_lib.check_shard(side, s, ref_identity, seq_len, sdir / side["file"])
        shards.append(side)
    if len(shards) < len(c.shards):
        raise rows_lib.DataError(f"score shard {sdir / scores_lib.score_file(c.shards[len(shards)]['file'])} is "
                                 f"missing after scoring; re-run `rho-jax score`")
    sm = {"format": scores_lib.FORMAT, "ref_identity": ref_identity, "with_entropy": with_entropy,
          "seq_len": seq_len, "vocab_identity": vocab_id, "prepared": os.fspath(c.dir),
          "prepared_manifest_sha256": rows_lib.manifest_sha256(c.dir), "shards": shards,
          "rows": sum(s["rows"] for s in shards)}
    sm["scoring_flops"] = flops.scoring_flops(ref_cfg, seq_len, sm["rows"] * seq_len)  # every row scored
    if jax.process_index() == 0:
        rows_lib.write_manifest(sdir, sm)
    return sm


def run(config, progress: bool = True) -> list[dict]:
    """Scores every prepared row not yet scored (with data.max_rows > 0: the shards holding the rows training
    reads); returns the score manifests (one per component)."""
    spec = config_lib.validate(config, jax.device_count(), purpose="score")
    d = config.data
    vocab_id = vocabulary_identity(d.vocab)
    comps = reader.open_components(d.prepared, seq_len=d.seq_len, vocab_identity=vocab_id, max_rows=d.max_rows)
    work = [(c, sdir) for c, (_, _, sdir, _) in zip(comps, scores_lib.component_dirs(d.prepared, d.score_cache))]
    ref_cfg, ref_params = checkpoint.load_weights(config.init.reference, "reference",
                                                  config_lib.runtime_overrides(config))
    check_vocabularies(tokenizer=tokenizer_vocab_size(d.vocab), reference=ref_cfg.vocab_size)
    identity = checkpoint.model_identity(config.init.reference, "reference", ref_params)  # saved with it
    with_entropy = spec.objective.reads_ref_entropy
    for _, sdir in work:  # refuse a directory holding another job's scores before any compute
        _check_cache_dir(sdir, identity, d.seq_len, with_entropy)

    # The compiled scorer online SLM runs, on training's global mesh and micro-batch: bit-identical scores.
    fn = score.reference_scorer(ref_cfg, sharding.mesh_from_config(config.mesh), config_lib.mesh_rules(config),
                                config.objective.ce_chunk)
    micro = score.micro_batch_size(config.train.batch_size, config.train.grad_accum)
    placed = sharding.place(ref_params, fn.param_shardings)
    p, n_proc = jax.process_index(), jax.process_count()
    mine = [_Job(os.fspath(c.dir / s["file"]), sdir / scores_lib.score_file(s["file"]), s)
            for c, sdir in work for i, s in enumerate(c.shards) if i % n_proc == p]
    todo = [job for job in mine if not _finished(job, identity, d.seq_len)]
    bar = tqdm(total=sum(j.shard["rows"] for j in mine) * d.seq_len, unit="tok", unit_scale=True,
               desc=f"scoring (process {p}/{n_proc})", disable=not progress)
    bar.update((sum(j.shard["rows"] for j in mine) - sum(j.shard["rows"] for j in todo)) * d.seq_len)
    _score_jobs(fn, placed, todo, micro=micro, seq_len=d.seq_len, ref_identity=identity,
                with_entropy=with_entropy, bar=bar)
    bar.close()
    print(f"process {p}/{n_proc}: scored {len(todo)} shards, {len(mine) - len(todo)} already done", flush=True)
    if n_proc > 1:
        multihost_utils.sync_global_devices("rho_jax_score_shards_done")
    return [_write_manifest(c, sdir, ref_cfg, identity, with_entropy, vocab_id, d.seq_len) for c, sdir in work]

"""`rho-jax score --config=...`: the reference's per-token scores of every prepared row, as score shards
aligned 1:1 with the rows shards (format: rho_jax/data/scores.py).

Work split: rows shard i of every component goes to process i % process_count, which scores it on its
own (local) devices, so any number of hosts share the work with no coordination but a final barrier.
Each shard streams: rows are read a micro-batch at a time (config.train.batch_size // grad_accum rows,
the last one padded with empty rows so one compiled shape serves all), scored by the same reference
forward the online mode runs in the step, and written to a temporary ArrayRecord file that is renamed
into place when complete; its sidecar (with the fingerprint) is written after it. A restarted job skips
every shard with a sidecar, so it resumes per shard. Process 0 writes each manifest last.
"""

from __future__ import annotations

import os

import jax
from jax.experimental import multihost_utils
from tqdm import tqdm

from rho_jax import checkpoint, flops, losses, score, sharding
from rho_jax import config as config_lib
from rho_jax.data import inputs, reader, rows as rows_lib, scores as scores_lib


def _local_mesh(config):
    try:
        return sharding.mesh_from_config(config.mesh, jax.local_devices())
    except ValueError as e:
        raise config_lib.ConfigError(f"config.mesh does not fit this host's {jax.local_device_count()} devices "
                                     f"(scoring runs on each host's own devices): {e}") from None


def _score_shard(fn, ref_params, rows_path, out_path, rows_shard: dict, *, seq_len: int, micro: int,
                 ref_identity: str, with_entropy: bool) -> dict:
    """Scores one rows shard into `out_path` (atomically, then its sidecar); returns the sidecar."""
    def flush(writer, block):
        batch = losses.pad_rows(rows_lib.decode_rows(block, seq_len), micro)  # one compiled shape
        ref_ce_BxL, ref_ent_BxL = jax.device_get(fn(ref_params, batch))
        for i in range(len(block)):  # the real rows only
            writer.write(scores_lib.encode_scores(ref_ce_BxL[i], ref_ent_BxL[i] if with_entropy else None))

    with rows_lib.ShardWriter(out_path) as writer:
        block = []
        for rec in rows_lib.read_records(rows_path):
            block.append(rec)
            if len(block) == micro:
                flush(writer, block)
                block = []
        if block:
            flush(writer, block)
        if writer.rows != rows_shard["rows"]:
            raise rows_lib.DataError(f"{rows_path} yielded {writer.rows} rows but its manifest says "
                                     f"{rows_shard['rows']}; re-run `rho-jax prepare`")
        info = writer.commit()
    sidecar = scores_lib.shard_sidecar(info, rows_shard, ref_identity, seq_len)
    rows_lib.write_json(rows_lib.sidecar_path(out_path), sidecar)
    return sidecar


def run(config, progress: bool = True) -> list[dict]:
    """Scores every prepared row not yet scored (with data.max_rows > 0: the shards holding the rows training
    reads); returns the score manifests (one per component)."""
    config_lib.validate(config, jax.device_count(), purpose="score")
    d = config.data
    vocab_id = inputs.vocabulary_identity(d.vocab)
    comps = reader.open_components(d.prepared, seq_len=d.seq_len, vocab_identity=vocab_id, max_rows=d.max_rows)
    work = [(c, sdir) for c, (_, _, sdir, _) in zip(comps, scores_lib.component_dirs(d.prepared, d.score_cache))]
    ref_cfg, ref_params = checkpoint.load_weights(config.init.reference, "reference",
                                                  config_lib.runtime_overrides(config))
    if ref_cfg.vocab_size < inputs.tokenizer_vocab_size(d.vocab):
        raise config_lib.ConfigError(f"vocabulary mismatch: the tokenizer has more ids than the reference's "
                                     f"vocab_size={ref_cfg.vocab_size}; score with a reference of this tokenizer")
    identity = scores_lib.params_identity(ref_params)
    with_entropy = "entropy" in config.objective.score
    for _, sdir in work:  # refuse a directory holding another job's scores before any compute
        if (sdir / rows_lib.MANIFEST).exists():
            old = rows_lib.read_manifest(sdir, scores_lib.FORMAT)
            if old["ref_identity"] != identity or old["seq_len"] != d.seq_len or old["with_entropy"] != with_entropy:
                raise rows_lib.DataError(f"score cache {sdir} holds scores of another reference, seq_len or entropy "
                                         f"setting; choose an empty config.data.score_cache or delete {sdir}")

    mesh = _local_mesh(config)
    rules = config_lib.mesh_rules(config)
    # The compiled scorer online SLM runs, on the micro-batch shape training uses: bit-identical scores.
    fn = score.reference_scorer(ref_cfg, mesh, rules, config.objective.ce_chunk)
    micro = score.micro_batch_size(config.train.batch_size, config.train.grad_accum)
    placed = sharding.place(ref_params, fn.param_shardings)
    p, n_proc = jax.process_index(), jax.process_count()
    mine = [(c.dir, sdir, s) for c, sdir in work for i, s in enumerate(c.shards) if i % n_proc == p]
    bar = tqdm(total=sum(s["rows"] for *_, s in mine) * d.seq_len, unit="tok", unit_scale=True,
               desc=f"scoring (process {p}/{n_proc})", disable=not progress)
    scored = kept = 0
    for pdir, sdir, shard in mine:
        out = sdir / scores_lib.score_file(shard["file"])
        done = rows_lib.finished_shard(out)
        if done is not None:  # resume: a finished shard is kept if it is this job's
            scores_lib.check_shard(done, shard, identity, d.seq_len, out)
            kept += 1
        else:
            _score_shard(fn, placed, os.fspath(pdir / shard["file"]), out, shard, seq_len=d.seq_len, micro=micro,
                         ref_identity=identity, with_entropy=with_entropy)
            scored += 1
        bar.update(shard["rows"] * d.seq_len)
    bar.close()
    print(f"process {p}/{n_proc}: scored {scored} shards, {kept} already done", flush=True)
    if n_proc > 1:
        multihost_utils.sync_global_devices("rho_jax_score_shards_done")
    manifests = []
    for c, sdir in work:
        shards = []  # every finished score shard from the first on (a larger max_rows earlier may have done more)
        for s in c.manifest["shards"]:
            side = rows_lib.finished_shard(sdir / scores_lib.score_file(s["file"]))
            if side is None:
                break
            scores_lib.check_shard(side, s, identity, d.seq_len, sdir / side["file"])
            shards.append(side)
        if len(shards) < len(c.shards):
            raise rows_lib.DataError(f"score shard {sdir / scores_lib.score_file(c.shards[len(shards)]['file'])} is "
                                     f"missing after scoring; re-run `rho-jax score`")
        pdir = c.dir
        sm = {"format": scores_lib.FORMAT, "ref_identity": identity, "with_entropy": with_entropy,
              "seq_len": d.seq_len, "vocab_identity": vocab_id, "prepared": os.fspath(pdir),
              "prepared_manifest_sha256": rows_lib.manifest_sha256(pdir), "shards": shards,
              "rows": sum(s["rows"] for s in shards)}
        sm["scoring_flops"] = flops.scoring_flops(ref_cfg, d.seq_len, sm["rows"] * d.seq_len)  # every row scored
        if p == 0:
            rows_lib.write_manifest(sdir, sm)
        manifests.append(sm)
    return manifests

"""Training input: a Grain pipeline over the prepared ArrayRecord rows (and, in cached mode, their scores).

    rows shards ──ArrayRecordDataSource──► MapDataset ─┐ (cached: zipped index-aligned with the score shards)
                                                       ├─ per component: shuffle(seed + c), then mix(rates)
    mixture ──► shuffle(seed) ──► repeat() ──► this process's rows of each global batch ──► batch(b)
            ──► to_iter_dataset(read threads, prefetch buffer) ──► {tokens, segment_ids, positions: int32 [b, L],
                                                                    ref_ce[, ref_entropy]: f32 [b, L]}

Global order: row g of the stream is element g of a MapDataset whose every epoch is a new seeded
permutation (Grain's `shuffle` + `repeat`: epoch e uses seed + e). Global batch s is rows
[s*B, (s+1)*B); process p of P reads only rows [s*B + p*b, s*B + (p+1)*b) with b = B / P. So the P
processes together read every row of an epoch exactly once, and no process reads another's rows.

Position: Grain's iterator state ({"next_index": k}, JSON) is saved in the checkpoint's meta item by the
loop; restoring it makes the iterator yield exactly the batches an uninterrupted run sees (the MapDataset
is a pure function of the index; prefetch threads read ahead but the state counts delivered batches).
The state also records what it assumes (global batch, processes, seed, the rows' identity) and is
refused when those differ.

Startup costs O(shards): manifests, vocabulary, seq_len, per-shard sizes and record counts, and in cached
mode the score shards' fingerprints against the rows shards' hashes; tokens are never hashed.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from typing import Mapping, Optional

import numpy as np
from etils import epath

from rho_jax import storage
from rho_jax.data import rows as rows_lib
from rho_jax.data import scores as scores_lib
from rho_jax.data.rows import DataError

STATE_FORMAT = "rho_jax.grain_reader/1"


def _open_records(paths: list[str], counts: list[int]):
    """Grain's ArrayRecordDataSource over `paths`, after checking each file's record count (a truncated
    shard has fewer records or cannot be opened)."""
    # Grain and ArrayRecord load only when rows are read: the model, step and bench import without them
    import grain
    from array_record.python import array_record_module

    for path, n in zip(paths, counts):
        try:
            reader = array_record_module.ArrayRecordReader(path)
            got = reader.num_records()
            reader.close()
        except Exception as e:  # noqa: BLE001 - the C++ reader's errors name no file
            raise DataError(f"{path} is not a readable ArrayRecord file ({type(e).__name__}: {e}); delete it and "
                            f"its .json sidecar and re-run the job that wrote it") from None
        if got != n:
            raise DataError(f"{path} holds {got} records but its manifest says {n} (truncated or replaced); delete "
                            f"it and its .json sidecar and re-run the job that wrote it")
    return grain.sources.ArrayRecordDataSource(paths)


def _prefix(shards: list[dict], n: int) -> list[dict]:
    """The shards holding the first `n` rows."""
    out, total = [], 0
    for s in shards:
        if total >= n:
            break
        out.append(s)
        total += s["rows"]
    return out


class Component:
    """One prepared directory (and its score directory in cached mode), checked in O(shards).

    num_rows: the rows read (all, or the first `limit`); shards: the rows shards holding them.
    """

    def __init__(self, name: str, prepared, rate: float, *, seq_len: int, vocab_identity: str, limit: int = 0):
        self.name, self.dir, self.rate = name, epath.Path(prepared), rate
        self.manifest = rows_lib.read_manifest(self.dir)
        rows_lib.check_compatible(self.dir, self.manifest, vocab_identity=vocab_identity, seq_len=seq_len)
        rows_lib.verify(self.dir, self.manifest)
        self.seq_len = seq_len
        total = sum(s["rows"] for s in self.manifest["shards"])
        if total == 0:
            raise DataError(f"{self.dir} holds no rows (every document was empty or skipped); check data.source")
        self.num_rows = min(total, limit) if limit else total
        self.shards = _prefix(self.manifest["shards"], self.num_rows)
        self.score_dir = self.score_manifest = None

    def join_scores(self, score_dir, *, ref_identity: str, with_entropy: bool) -> None:
        """Checks the score directory of this component's shards (O(shards)); the dataset then carries them."""
        self.score_dir = epath.Path(score_dir)
        self.score_manifest = scores_lib.check_score_dir(self.score_dir, self.dir, self.manifest, self.shards,
                                                         ref_identity=ref_identity, with_entropy=with_entropy)

    def identity(self) -> str:
        """The rows (and scores) this component reads, from the recorded per-shard hashes."""
        parts = [s["sha256"] for s in self.shards]
        if self.score_manifest is not None:
            parts += [s["fingerprint"] for s in self.score_manifest["shards"][:len(self.shards)]]
        return hashlib.sha256("|".join([self.name, str(self.rate), str(self.num_rows)] + parts).encode()).hexdigest()[:16]

    def dataset(self, with_entropy: bool = False):
        """MapDataset of decoded rows: {tokens, segment_ids, positions: int32 [L] (+ ref_ce[, ref_entropy] f32 [L])}."""
        import grain

        counts = [s["rows"] for s in self.shards]
        paths = [os.fspath(self.dir / s["file"]) for s in self.shards]
        ds = grain.MapDataset.source(_open_records(paths, counts))
        L = self.seq_len
        if self.score_dir is None:
            return ds.map(lambda rec: _row_dict(rows_lib.decode_row(rec, L)))[:self.num_rows]
        spaths = [os.fspath(self.score_dir / s["file"]) for s in self.score_manifest["shards"][:len(self.shards)]]
        sds = grain.MapDataset.source(_open_records(spaths, counts))
        zipped = grain.experimental.ZipMapDataset([ds, sds])
        return zipped.map(lambda pair: _row_dict(rows_lib.decode_row(pair[0], L),
                                                 scores_lib.decode_scores(pair[1], L), with_entropy))[:self.num_rows]


def _row_dict(row_3xL: np.ndarray, scores_KxL: Optional[np.ndarray] = None, with_entropy: bool = False) -> dict:
    out = {k: row_3xL[i] for i, k in enumerate(rows_lib.ROW_KEYS)}
    if scores_KxL is not None:
        out["ref_ce"] = scores_KxL[0]
        if with_entropy:
            out["ref_entropy"] = scores_KxL[1]
    return out


def open_components(prepared, *, seq_len: int, vocab_identity: str, max_rows: int = 0) -> list[Component]:
    """The checked components of a prepared directory (one, or a mixture's).

    max_rows > 0 keeps the first rows of each component, max_rows in all, shared by the rates (so a small
    run reads, and `rho-jax score` scores, only the first shards of each component).
    """
    storage.check_array_record_reads(prepared, "config.data.prepared")
    if not epath.Path(prepared).exists():
        raise DataError(f"config.data.prepared={os.fspath(prepared)!r} does not exist; run `rho-jax prepare "
                        f"--config=...` first")
    parts = rows_lib.components(prepared)
    total = sum(r for _, _, r in parts)
    return [Component(n, d, r, seq_len=seq_len, vocab_identity=vocab_identity,
                      limit=math.ceil(max_rows * r / total) if max_rows else 0) for n, d, r in parts]


def join_scores(components: list[Component], prepared, score_cache, *, ref_identity: str,
                with_entropy: bool = False) -> list[Component]:
    """Attaches each component's score directory (mirroring the prepared layout), checked in O(shards)."""
    storage.check_array_record_reads(score_cache, "config.data.score_cache")
    for c, (_, _, sdir, _) in zip(components, scores_lib.component_dirs(prepared, score_cache)):
        c.join_scores(sdir, ref_identity=ref_identity, with_entropy=with_entropy)
    return components


def _process_rows(parent, global_batch: int, process_index: int, process_count: int):
    """The MapDataset of this process's rows: element i is row (i // b) * B + p * b + i % b of `parent`."""
    import grain

    b = global_batch // process_count
    pick = lambda i: (i // b) * global_batch + process_index * b + i % b  # noqa: E731
    return grain.MapDataset.range(sys.maxsize).map(lambda i: parent[pick(i)])


class Reader:
    """This process's resumable iterator of training batches (the loop's `make_input` contract).

    components: from `open_components` (and `join_scores` in cached mode). Yields
    {key: [B / process_count, L]} numpy batches; `get_state()` is a small JSON dict, `set_state()` restores it exactly. `vocab_size` (optional) lets the loop check
    the tokenizer against the model.
    """

    def __init__(self, components: list[Component], global_batch: int, *, seed: int = 0, process_index: int = 0,
                 process_count: int = 1, with_entropy: bool = False, read_threads: int = 4, prefetch: int = 8,
                 vocab_size: Optional[int] = None):
        import grain

        if global_batch % process_count:
            raise DataError(f"config.train.batch_size={global_batch} is not divisible by the {process_count} processes")
        self.components = components
        self.global_batch, self.seed = global_batch, seed
        self.process_index, self.process_count = process_index, process_count
        self.local_batch = global_batch // process_count
        self.vocab_size = vocab_size
        parts = [c.dataset(with_entropy) for c in components]
        if len(parts) == 1:
            mixed = parts[0]
        else:  # each component in its own per-epoch order, mixed by rate
            mixed = grain.MapDataset.mix([p.shuffle(seed=(seed + 1 + i) % 2**32) for i, p in enumerate(parts)],
                                         [c.rate for c in components])
        self.epoch_rows = len(mixed)
        if self.epoch_rows < global_batch:
            raise DataError(f"{components[0].dir} holds {self.epoch_rows} rows per epoch, fewer than one global "
                            f"batch of {global_batch}; prepare more data or lower config.train.batch_size")
        ordered = mixed.shuffle(seed=seed % 2**32).repeat()  # epoch e: a fresh permutation (seed + e)
        local = _process_rows(ordered, global_batch, process_index, process_count)
        batched = local.batch(self.local_batch, drop_remainder=True)
        self._dataset = batched.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                                                  prefetch_buffer_size=prefetch))
        self._iter = iter(self._dataset)
        data_id = hashlib.sha256("|".join(c.identity() for c in components).encode()).hexdigest()[:16]
        self._assumes = {"format": STATE_FORMAT, "global_batch": global_batch, "process_count": process_count,
                         "seed": seed, "data": data_id}

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return next(self._iter)

    @property
    def step(self) -> int:
        """The number of batches delivered so far (the next step to read)."""
        return int(self._iter.get_state()["next_index"])

    def get_state(self) -> dict:
        return {**self._assumes, "grain": self._iter.get_state()}

    def set_state(self, state: Mapping) -> None:
        for key, mine in self._assumes.items():
            if state.get(key) != mine:
                raise DataError(f"cannot resume the input: the checkpoint's input state has {key}={state.get(key)!r}"
                                f" but this run has {mine!r} (another batch size, process count, seed or prepared "
                                f"data); resume with the same data and settings or start a new config.workdir")
        self._iter.set_state(dict(state["grain"]))


def read_rows(prepared, max_rows: int = 0, *, seq_len: int, vocab_identity: str) -> dict:
    """The first `max_rows` rows (0 = all) of a prepared directory in its global order (no shuffle):
    {tokens, segment_ids, positions: int32 [N, L]}. For held-out sets and analysis, which are small."""
    out = []
    for c in open_components(prepared, seq_len=seq_len, vocab_identity=vocab_identity, max_rows=max_rows):
        for shard in c.shards:
            for rec in rows_lib.read_records(c.dir / shard["file"]):
                out.append(rows_lib.decode_row(rec, seq_len))
                if len(out) == max_rows:
                    return _stack(out)
    return _stack(out)


def _stack(rows_3xL: list) -> dict:
    arr_Nx3xL = np.stack(rows_3xL)
    return {k: np.ascontiguousarray(arr_Nx3xL[:, i]) for i, k in enumerate(rows_lib.ROW_KEYS)}

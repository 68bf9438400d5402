"""Packing, batching, per-host sharding and a resumable position: numpy in, numpy batches out.

  token streams (seqio tasks) ──► pack (+EOS, split long docs) ──► examples {key: [N, L]}
      ──► InputPipeline: global step s -> this process's rows of global batch s ──► make_global_batch

Batch dicts hold int32 [B, L] 'tokens', 'segment_ids' (1..n per row, 0 = padding) and 'positions'
(restarting at 0 in every document), plus f32 'ref_ce' / 'ref_entropy' when the examples come from
the score cache (`scored.load_cache`).

The packed corpus is materialised once (tokens are 4 bytes each; the demo corpora are a few million
tokens), which makes the position trivial and exact: the example at global index g = step * B + j is
`perm(epoch)[g % N]` with epoch = g // N and a seeded permutation per epoch, so resuming at step s
needs only `{"step": s}` and yields the very batches an uninterrupted run sees. Every process computes
the same global order and keeps its own contiguous slice of each global batch. At real scale, pack
per corpus shard into the score cache (which is itself a packed corpus) and read it the same way.

This module imports no TensorFlow at import time (seqio is imported only inside `pack_task`).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Callable, Iterable, Iterator, Mapping, Optional

import numpy as np

INT_KEYS = ("tokens", "segment_ids", "positions")


@dataclasses.dataclass
class PackStats:
    documents: int = 0  # documents read
    tokens: int = 0  # real tokens written, EOS included
    split_documents: int = 0  # documents longer than one row, split into chunks (never dropped)
    chunks: int = 0  # segments written
    rows: int = 0
    pad_tokens: int = 0

    @property
    def fill(self) -> float:
        return self.tokens / max(1, self.tokens + self.pad_tokens)


def _row(seq_len: int) -> dict:
    return {k: np.zeros(seq_len, np.int32) for k in INT_KEYS}


def pack(docs: Iterable[np.ndarray], seq_len: int, eos_id: int, mode: str = "pack",
         stats: Optional[PackStats] = None) -> Iterator[dict]:
    """Yields rows {tokens, segment_ids, positions}: int32 [seq_len] each.

    EOS is appended to every document. mode="pack" fills rows greedily in document order: a document
    that does not fit in the rest of the current row starts a new row, unless it is longer than a
    row, in which case it fills the rest of the current row and continues over the next rows (each
    piece its own segment, positions restarting at 0). mode="pad" puts one document (or one piece of
    a long document) per row. Rows are padded with token 0, segment 0, position 0.
    """
    if mode not in ("pack", "pad"):
        raise ValueError(f"mode={mode!r}; expected 'pack' or 'pad'")
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len}; need at least 2 tokens per row")
    stats = stats if stats is not None else PackStats()
    row, used, seg = _row(seq_len), 0, 0

    def flush():
        nonlocal row, used, seg
        stats.rows += 1
        stats.pad_tokens += seq_len - used
        out, row, used, seg = row, _row(seq_len), 0, 0
        return out

    for doc in docs:
        doc = np.concatenate([np.asarray(doc, np.int32).reshape(-1), np.array([eos_id], np.int32)])
        stats.documents += 1
        stats.tokens += doc.size
        if doc.size > seq_len:
            stats.split_documents += 1
        elif used and (mode == "pad" or used + doc.size > seq_len):
            yield flush()
        while doc.size:
            if used == seq_len or (mode == "pad" and used):
                yield flush()
            n = min(doc.size, seq_len - used)
            seg += 1
            row["tokens"][used:used + n] = doc[:n]
            row["segment_ids"][used:used + n] = seg
            row["positions"][used:used + n] = np.arange(n, dtype=np.int32)
            stats.chunks += 1
            used, doc = used + n, doc[n:]
    if used:
        yield flush()


def pack_all(docs: Iterable[np.ndarray], seq_len: int, eos_id: int, mode: str = "pack",
             max_rows: Optional[int] = None) -> tuple[dict, PackStats]:
    """All packed rows stacked: ({key: int32 [N, seq_len]}, stats). Stops after `max_rows` rows."""
    stats = PackStats()
    rows = []
    for row in pack(docs, seq_len, eos_id, mode, stats):
        rows.append(row)
        if max_rows and len(rows) >= max_rows:
            break
    if not rows:
        raise ValueError("no documents to pack: the token stream was empty")
    return {k: np.stack([r[k] for r in rows]) for k in INT_KEYS}, stats


def unpack(batch: Mapping[str, np.ndarray]) -> list[list[int]]:
    """The segments of a packed batch as token lists, in row-major order (padding dropped)."""
    out = []
    for tokens, seg in zip(np.asarray(batch["tokens"]), np.asarray(batch["segment_ids"])):
        for s in np.unique(seg[seg > 0]):
            out.append(tokens[seg == s].tolist())
    return out


def split_documents(segments: Iterable[list[int]], eos_id: int) -> list[list[int]]:
    """Re-joins unpacked segments into documents (each ended by EOS), EOS removed."""
    docs, cur = [], []
    for seg in segments:
        for t in seg:
            if t == eos_id:
                docs.append(cur)
                cur = []
            else:
                cur.append(t)
    if cur:
        raise ValueError(f"the last document ({len(cur)} tokens) has no EOS: rows were cut mid-document")
    return docs


def pack_task(name: str, split: str, seq_len: int, eos_id: int, mode: str = "pack", seed: int = 0,
              max_rows: Optional[int] = None) -> tuple[dict, PackStats]:
    """Packs one pass over a registered seqio task/mixture (see `tasks.register_tasks`)."""
    from rho_jax.data import tasks
    return pack_all(tasks.token_stream(name, split, seed), seq_len, eos_id, mode, max_rows)


class InputPipeline:
    """Deterministic, resumable iterator of this process's part of each global batch.

    examples: {key: [N, L]} (int32 tokens/segment_ids/positions, optional f32 ref_ce/ref_entropy).
    Step s covers global example indices [s*B, (s+1)*B), wrapping into new epochs (each a fresh
    seeded permutation when shuffle=True); process p gets rows [p*b, (p+1)*b) with b = B / P.
    """

    def __init__(self, examples: Mapping[str, np.ndarray], global_batch_size: int, *, process_index: int = 0,
                 process_count: int = 1, shuffle: bool = True, seed: int = 0, start_step: int = 0):
        n = {k: len(v) for k, v in examples.items()}
        if len(set(n.values())) != 1:
            raise ValueError(f"examples have different lengths per key: {n}")
        if global_batch_size % process_count:
            raise ValueError(f"global_batch_size={global_batch_size} is not divisible by "
                             f"process_count={process_count}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} outside [0, {process_count})")
        self.examples = dict(examples)
        self.num_examples = next(iter(n.values()))
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.process_index, self.process_count = process_index, process_count
        self.shuffle, self.seed = shuffle, seed
        self.step = start_step
        self._orders: dict = {}

    def _order(self, epoch: int) -> np.ndarray:
        """The example order of `epoch`: a permutation seeded by (seed, epoch), cached per instance."""
        if epoch not in self._orders:
            self._orders = {epoch: (np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
                                    if self.shuffle else np.arange(self.num_examples))}
        return self._orders[epoch]

    def indices(self, step: int) -> np.ndarray:
        """Example indices (into `examples`) of this process's rows at `step`."""
        start = step * self.global_batch_size + self.process_index * self.local_batch_size
        epochs, pos = np.divmod(np.arange(start, start + self.local_batch_size), self.num_examples)
        return np.concatenate([self._order(int(e))[pos[epochs == e]] for e in np.unique(epochs)])

    def batch_at(self, step: int) -> dict:
        """This process's batch at `step`: {key: [local_B, L]}; a pure function of `step`."""
        idx = self.indices(step)
        return {k: np.asarray(v[idx]) for k, v in self.examples.items()}

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = self.batch_at(self.step)
        self.step += 1
        return batch

    def get_state(self) -> dict:
        """A small JSON-able position for the checkpoint: the next step to read, plus what it assumes."""
        return {"step": int(self.step), "num_examples": int(self.num_examples), "seed": int(self.seed),
                "global_batch_size": int(self.global_batch_size), "shuffle": bool(self.shuffle)}

    def set_state(self, state: Mapping) -> None:
        mine = self.get_state()
        for key in ("num_examples", "seed", "global_batch_size", "shuffle"):
            if key in state and state[key] != mine[key]:
                raise ValueError(f"cannot resume: checkpointed input state has {key}={state[key]!r} but this "
                                 f"pipeline has {mine[key]!r}; rebuild the pipeline with the same data and settings")
        self.step = int(state["step"])


def stream_batches(docs_fn: Callable[[int], Iterable[np.ndarray]], seq_len: int, eos_id: int,
                   global_batch_size: int, *, process_index: int = 0, process_count: int = 1,
                   start_step: int = 0, mode: str = "pack") -> Iterator[dict]:
    """Packs on the fly (for corpora too large to materialise): this process's rows of each global batch.

    docs_fn(epoch) returns a fresh, deterministic iterator of token arrays for that epoch (e.g.
    `lambda e: tasks.token_stream(name, split, seed=e)`); epochs follow each other. The position is
    the step: `start_step=s` replays packing (not the model) up to step s, so it yields exactly the
    batches an uninterrupted run sees from step s. Without shuffling it equals
    `InputPipeline(pack_all(...), shuffle=False)` over the first epoch.
    """
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size={global_batch_size} is not divisible by process_count={process_count}")
    b = global_batch_size // process_count
    rows = (row for epoch in itertools.count() for row in pack(docs_fn(epoch), seq_len, eos_id, mode))
    rows = itertools.islice(rows, start_step * global_batch_size, None)
    while True:
        block = list(itertools.islice(rows, global_batch_size))
        if len(block) < global_batch_size:
            raise ValueError(f"docs_fn produced too few rows for one global batch of {global_batch_size}")
        mine = block[process_index * b:(process_index + 1) * b]
        yield {k: np.stack([r[k] for r in mine]) for k in INT_KEYS}


def make_global_batch(local_batch: Mapping[str, np.ndarray], mesh, batch_sharding=None) -> dict:
    """Assembles per-process batches into global jax.Arrays [B_global, L] sharded by `batch_sharding`.

    batch_sharding: a `jax.sharding.Sharding` (default: rows over every mesh axis, i.e.
    NamedSharding(mesh, P(mesh.axis_names))). Each process passes its own rows, in process order.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    sharding = batch_sharding or NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))
    out = {}
    for k, v in local_batch.items():
        v = np.asarray(v)
        global_shape = (v.shape[0] * jax.process_count(),) + v.shape[1:]
        out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
    return out


def measure_input_throughput(name: str, split: str, seq_len: int, eos_id: int, global_batch_size: int,
                             max_rows: int = 2048, mode: str = "pack") -> dict:
    """Input-pipeline speed from a registered seqio task: tokenise + pack + batch, in tokens/s.

    Returns {"tokens_per_s", "rows", "seconds", "fill"}; tokens counts row slots (B * L per batch), the
    unit a training step consumes.
    """
    t0 = time.perf_counter()
    examples, stats = pack_task(name, split, seq_len, eos_id, mode, max_rows=max_rows)
    pipe = InputPipeline(examples, global_batch_size, shuffle=True)
    n_batches = max(1, len(examples["tokens"]) // global_batch_size)
    for _ in range(n_batches):
        next(pipe)
    seconds = time.perf_counter() - t0
    rows = n_batches * global_batch_size
    return {"tokens_per_s": rows * seq_len / seconds, "rows": rows, "seconds": seconds, "fill": stats.fill}

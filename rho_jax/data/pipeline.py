"""Packing: token streams -> fixed-length rows with segment ids and restarting positions (numpy only).

  documents (token ids) ──► pack (+EOS, split long docs) ──► rows {tokens, segment_ids, positions: int32 [L]}

`rho-jax prepare` (rho_jax/data/prepare.py) packs every input shard with `pack` into ArrayRecord rows;
training reads those rows with Grain (rho_jax/data/reader.py). Segment ids are 1..n per row (0 = padding)
and positions restart at 0 in every document. `unpack` / `split_documents` invert packing (tests, checks).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Mapping, Optional

import numpy as np

from rho_jax.batch import INPUT_KEYS



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
    return {k: np.zeros(seq_len, np.int32) for k in INPUT_KEYS}


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

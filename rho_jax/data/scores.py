"""Score shards: the reference's per-token scores, aligned 1:1 with the prepared rows' shards.

A score directory (`data.score_cache`) mirrors a prepared directory (per component for a mixture):

    scores-00000-of-0000n.array_record        one record per row of rows-00000-of-0000n: f32 [k, seq_len]
    scores-00000-of-0000n.array_record.json   its sidecar (written after the shard): rows, bytes, sha256,
                                              rows_file, rows_sha256, ref_identity, fingerprint
    manifest.json                             written last: format, ref_identity, with_entropy, seq_len,
                                              vocab_identity, prepared_manifest_sha256, shards

A record holds ref_ce (k = 1) or ref_ce and ref_entropy (k = 2), f32 nats, zero at invalid positions.
fingerprint = sha256(rows_sha256, ref_identity, seq_len): computed when the shard is written from the
rows shard's recorded hash, so checking a score directory against its rows costs O(shards), never a
pass over the tokens. numpy + rows.py only (no TensorFlow, no JAX at import).
"""

from __future__ import annotations

import hashlib
import json
from typing import Mapping, Optional

import numpy as np
from etils import epath

from rho_jax.data import rows as rows_lib
from rho_jax.data.rows import DataError

FORMAT = "rho_jax.scores/1"
REF_KEYS = ("ref_ce", "ref_entropy")
RESCORE = "run `rho-jax score` with this config into an empty config.data.score_cache"


def score_file(rows_file: str) -> str:
    """rows-00003-of-00010.array_record -> scores-00003-of-00010.array_record."""
    if not rows_file.startswith("rows-"):
        raise ValueError(f"{rows_file!r} is not a rows shard name")
    return "scores-" + rows_file[len("rows-"):]


def fingerprint(rows_sha256: str, ref_identity: str, seq_len: int) -> str:
    """The identity of one score shard: which rows, scored by which reference, at which seq_len."""
    key = json.dumps({"format": FORMAT, "rows_sha256": rows_sha256, "ref_identity": ref_identity,
                      "seq_len": int(seq_len)}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


def encode_scores(ref_ce_L: np.ndarray, ref_entropy_L: Optional[np.ndarray] = None) -> bytes:
    arr = np.stack([ref_ce_L] if ref_entropy_L is None else [ref_ce_L, ref_entropy_L])
    return np.ascontiguousarray(arr, dtype="<f4").tobytes()


def decode_scores(record: bytes, seq_len: int) -> np.ndarray:
    """Record bytes -> f32 [k, seq_len] (k = 1: ref_ce; k = 2: ref_ce, ref_entropy)."""
    k, rem = divmod(len(record), 4 * seq_len)
    if rem or k not in (1, 2):
        raise DataError(f"a score record has {len(record)} bytes, not 4 x seq_len={seq_len} x (1 or 2); the score "
                        f"cache was made with another seq_len: {RESCORE}")
    return np.frombuffer(record, dtype="<f4").reshape(k, seq_len)


def component_dirs(prepared, score_cache) -> list[tuple[str, epath.Path, epath.Path, float]]:
    """[(component name, prepared dir, score dir, rate)]: a mixture's score cache mirrors its components."""
    out = []
    for name, pdir, rate in rows_lib.components(prepared):
        sdir = epath.Path(score_cache) / name if name else epath.Path(score_cache)
        out.append((name, pdir, sdir, rate))
    return out


def shard_sidecar(info: Mapping, rows_shard: Mapping, ref_identity: str, seq_len: int) -> dict:
    """The sidecar of a finished score shard (info from `rows.ShardWriter.commit`)."""
    return {**info, "rows_file": rows_shard["file"], "rows_sha256": rows_shard["sha256"],
            "ref_identity": ref_identity, "fingerprint": fingerprint(rows_shard["sha256"], ref_identity, seq_len)}


def check_shard(sidecar: Mapping, rows_shard: Mapping, ref_identity: str, seq_len: int, where) -> None:
    """A score shard must come from these rows and this reference; DataError naming it otherwise."""
    if sidecar["rows_sha256"] != rows_shard["sha256"] or sidecar["rows"] != rows_shard["rows"]:
        raise DataError(f"score shard {where} was made from other rows (rows sha256 {sidecar['rows_sha256'][:12]}, "
                        f"{sidecar['rows']} rows; the prepared shard {rows_shard['file']} has "
                        f"{rows_shard['sha256'][:12]}, {rows_shard['rows']} rows): it belongs to another prepare; "
                        f"{RESCORE}")
    if sidecar["ref_identity"] != ref_identity:
        raise DataError(f"score shard {where} was scored by another reference ({sidecar['ref_identity'][:28]}, "
                        f"config.init.reference is {ref_identity[:28]}); {RESCORE}")
    if sidecar["fingerprint"] != fingerprint(rows_shard["sha256"], ref_identity, seq_len):
        raise DataError(f"score shard {where} has fingerprint {sidecar['fingerprint'][:12]}, not the one of these "
                        f"rows, reference and seq_len={seq_len}; {RESCORE}")


def check_score_dir(score_dir, prepared_dir, rows_manifest: Mapping, rows_shards: list, *, ref_identity: str,
                    with_entropy: bool) -> dict:
    """Checks a score directory against the rows shards read from its prepared directory, in O(shards);
    returns the score manifest.

    Manifests, seq_len, vocabulary and reference identity, one score shard per rows shard read (a first
    run with data.max_rows scores only the first shards), no shard that matches no rows shard, each
    shard's fingerprint, row count and file size.
    """
    score_dir = epath.Path(score_dir)
    if not (score_dir / rows_lib.MANIFEST).exists():
        raise DataError(f"score cache {score_dir} has no {rows_lib.MANIFEST} (scoring never finished there); "
                        f"run `rho-jax score` with this config (it resumes from the finished shards)")
    sm = rows_lib.read_manifest(score_dir, FORMAT)
    seq_len = rows_manifest["seq_len"]
    if sm["seq_len"] != seq_len or sm["vocab_identity"] != rows_manifest["vocab_identity"]:
        raise DataError(f"score cache {score_dir} was made for seq_len={sm['seq_len']} / vocabulary "
                        f"{sm['vocab_identity']}, but {prepared_dir} has seq_len={seq_len} / "
                        f"{rows_manifest['vocab_identity']}; {RESCORE}")
    if sm["ref_identity"] != ref_identity:
        raise DataError(f"score cache {score_dir} was scored by another reference ({sm['ref_identity'][:28]}, "
                        f"config.init.reference is {ref_identity[:28]}); {RESCORE}")
    if with_entropy and not sm["with_entropy"]:
        raise DataError(f"score cache {score_dir} holds no ref_entropy but config.objective.score needs it; {RESCORE}")
    every = [score_file(s["file"]) for s in rows_manifest["shards"]]
    expected = every[:len(rows_shards)]
    listed = [s["file"] for s in sm["shards"]]
    on_disk = sorted(p.name for p in score_dir.glob("scores-*.array_record"))
    extra = sorted(set(on_disk) - set(every)) or sorted(set(listed) - set(every))
    if extra:
        raise DataError(f"score cache {score_dir} holds score shard {score_dir / extra[0]} that matches no shard of "
                        f"{prepared_dir} ({len(extra)} extra): it belongs to another prepare; {RESCORE}")
    if listed[:len(expected)] != expected:
        missing = [f for f in expected if f not in listed]
        raise DataError(f"score cache {score_dir} lacks score shard {score_dir / missing[0]} for "
                        f"{prepared_dir / missing[0].replace('scores-', 'rows-', 1)} ({len(missing)} missing); "
                        f"run `rho-jax score` with this config to finish it")
    read = sm["shards"][:len(expected)]
    for shard, rows_shard in zip(read, rows_shards):
        check_shard(shard, rows_shard, ref_identity, seq_len, score_dir / shard["file"])
    rows_lib.verify(score_dir, {**sm, "shards": read})  # every file read is present with its recorded size
    return sm

"""The prepared-rows format: ArrayRecord shards of packed rows, per-shard sidecars, and the manifest.

A prepared directory (`data.prepared`) holds, for n input shards,

    rows-00000-of-0000n.array_record        one record per packed row (`encode_row`)
    rows-00000-of-0000n.array_record.json   its sidecar, written after the shard: its presence = shard done
    ...
    manifest.json                           written last, only when every shard is done

A record is one row: int32 [3, seq_len] = (tokens, segment_ids, positions), raw little-endian bytes.
The global row index is the concatenation of the shards in manifest order. A mixture is one prepared
directory per component plus `mixture.json` ({"components": [{"name", "dir", "rate"}]}).

Every check here costs O(shards): it reads json files and file sizes, and hashes shard bytes only on
demand (`verify(..., sha256=True)`). Paths may be local or gs:// (etils.epath). ArrayRecord writes to a
local file; for a remote destination the finished file is copied up (a GCS object appears atomically).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from typing import Iterator, Mapping, Optional

import numpy as np
from etils import epath

from rho_jax.batch import INPUT_KEYS
from rho_jax.config import ConfigError

FORMAT = "rho_jax.prepared/1"
MIXTURE_FORMAT = "rho_jax.mixture/1"
MANIFEST = "manifest.json"
MIXTURE = "mixture.json"
# group_size:1 makes every record independently readable (Grain's ArrayRecordDataSource insists on
# it for random access). zstd:1 shrinks a packed row ~6x, as much as the default zstd:3, at 2.5x the speed.
WRITER_OPTIONS = "group_size:1,zstd:1"
ROW_KEYS = INPUT_KEYS  # a row is [3, L] in this order
SKIP_REASONS = ("empty", "invalid_utf8", "missing_field", "malformed_json")
STAT_KEYS = ("rows", "documents", "tokens", "pad_tokens", "split_documents")


class DataError(ConfigError):
    """A prepared/score directory or an input that cannot be used as is; the message names the file and the fix."""


# ---------------------------------------------------------------------------------------------- records


def encode_row(row) -> bytes:
    """A row {tokens, segment_ids, positions: int32 [L]} (or an int32 [3, L] array) -> record bytes."""
    arr = np.stack([row[k] for k in ROW_KEYS]) if isinstance(row, Mapping) else np.asarray(row)
    if arr.ndim != 2 or arr.shape[0] != 3:
        raise ValueError(f"a row is int32 [3, seq_len]; got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype="<i4").tobytes()


def decode_row(record: bytes, seq_len: int) -> np.ndarray:
    """Record bytes -> int32 [3, seq_len] (tokens, segment_ids, positions); read-only view of the bytes."""
    if len(record) != 12 * seq_len:
        raise DataError(f"a prepared row has {len(record)} bytes, expected 3 x 4 x seq_len={seq_len} = "
                        f"{12 * seq_len}: the data was prepared with another seq_len; re-run `rho-jax prepare`")
    return np.frombuffer(record, dtype="<i4").reshape(3, seq_len)


def decode_rows(records, seq_len: int) -> dict:
    """Records -> {tokens, segment_ids, positions: int32 [N, seq_len]}."""
    arr = np.stack([decode_row(r, seq_len) for r in records]) if len(records) else np.zeros((0, 3, seq_len), np.int32)
    return {k: arr[:, i] for i, k in enumerate(ROW_KEYS)}


# ---------------------------------------------------------------------------------------------- names


def shard_name(index: int, count: int, prefix: str = "rows") -> str:
    return f"{prefix}-{index:05d}-of-{count:05d}.array_record"


def sidecar_path(shard_path) -> epath.Path:
    p = epath.Path(shard_path)
    return p.parent / (p.name + ".json")


def _is_local(path: epath.Path) -> bool:
    return "://" not in os.fspath(path)


# ---------------------------------------------------------------------------------------------- json


def write_json(path, obj) -> None:
    """Writes `obj` as JSON atomically: a reader sees the old file or the whole new one, never half."""
    path = epath.Path(path)
    text = json.dumps(obj, indent=1, sort_keys=True) + "\n"
    if _is_local(path):
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.write_text(text)
        os.replace(tmp, path)
    else:  # a GCS object is written whole or not at all
        path.write_text(text)


def read_json(path, what: str = "file") -> dict:
    path = epath.Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{what} {path} is not valid JSON ({e}); delete it and re-run the job that wrote it") from None


def copy_file(src, dst) -> None:
    """Streams `src` to `dst` (either local or gs://); for a local `dst` the copy appears atomically."""

    src, dst = epath.Path(src), epath.Path(dst)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}" if _is_local(dst) else dst
    with src.open("rb") as fin, tmp.open("wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 22)
    if tmp != dst:
        os.replace(tmp, dst)


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with epath.Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- writing


class ShardWriter:
    """Writes one ArrayRecord shard atomically: records go to a temporary file, `commit()` moves it into place.

        with ShardWriter(path) as w:
            for row in rows: w.write(encode_row(row))
            info = w.commit()          # {"file", "rows", "bytes", "sha256"}

    Leaving the block without `commit()` (an exception) deletes the temporary file: no partial shard.
    """

    def __init__(self, path, options: str = WRITER_OPTIONS):
        # ArrayRecord is imported where files are read or written: the model, step and bench import
        # without it (an accelerator image may not have it)
        from array_record.python import array_record_module

        self.path = epath.Path(path)
        local_dir = os.fspath(self.path.parent) if _is_local(self.path) else None
        if local_dir:
            os.makedirs(local_dir, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=local_dir)
        os.close(fd)
        self._writer = array_record_module.ArrayRecordWriter(self._tmp, options)
        self.rows = 0
        self._done = False

    def write(self, record: bytes) -> None:
        self._writer.write(record)
        self.rows += 1

    def commit(self) -> dict:
        self._writer.close()
        size = os.path.getsize(self._tmp)
        digest = file_sha256(self._tmp)
        if _is_local(self.path):
            os.replace(self._tmp, self.path)
        else:
            copy_file(self._tmp, self.path)
            os.remove(self._tmp)
        self._done = True
        return {"file": self.path.name, "rows": self.rows, "bytes": size, "sha256": digest}

    def abort(self) -> None:
        if not self._done:
            self._done = True
            try:
                self._writer.close()
            finally:
                if os.path.exists(self._tmp):
                    os.remove(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.abort()


def read_records(path) -> Iterator[bytes]:
    """Every record of an ArrayRecord file, in order, reading a bounded block at a time."""
    from array_record.python import array_record_module

    path = epath.Path(path)
    try:
        reader = array_record_module.ArrayRecordReader(os.fspath(path))
    except Exception as e:  # the C++ reader raises RuntimeError/ValueError on a truncated or foreign file
        raise DataError(f"{path} is not a readable ArrayRecord file ({e}); delete it and its .json sidecar "
                        f"and re-run the job that wrote it") from None
    try:
        n = reader.num_records()
        for start in range(0, n, 256):
            yield from reader.read(list(range(start, min(n, start + 256))))
    finally:
        reader.close()


# ---------------------------------------------------------------------------------------------- checks


def finished_shard(shard_path) -> Optional[dict]:
    """The sidecar of a finished shard, or None when the shard must be (re)made.

    Finished = the sidecar exists, parses, and the shard file exists with the recorded size. O(1): no hashing.
    """
    shard_path = epath.Path(shard_path)
    side = sidecar_path(shard_path)
    if not side.exists():
        return None
    try:
        info = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not shard_path.exists() or shard_path.stat().length != info.get("bytes"):
        return None
    return info


def write_manifest(directory, manifest: Mapping) -> None:
    write_json(epath.Path(directory) / MANIFEST, dict(manifest))


def read_manifest(directory, fmt: str = FORMAT) -> dict:
    """The manifest of a prepared (or score) directory; DataError naming the directory and the fix."""
    directory = epath.Path(directory)
    path = directory / MANIFEST
    if not path.exists():
        raise DataError(f"{directory} has no {MANIFEST}: it is not a finished prepared directory; run "
                        f"`rho-jax prepare --config=...` (it resumes from the finished shards)")
    manifest = read_json(path, "manifest")
    if manifest.get("format") != fmt:
        raise DataError(f"{path} has format {manifest.get('format')!r}, expected {fmt!r}; re-run the job that wrote it")
    return manifest


def verify(directory, manifest: Optional[Mapping] = None, sha256: bool = False) -> dict:
    """Checks every shard listed in the manifest: present, the recorded size, and (sha256=True) the recorded hash.

    Costs O(shards) stat calls; sha256=True reads every byte (use it on demand, not at every start).
    Returns the manifest. Raises DataError naming the first bad shard.
    """
    directory = epath.Path(directory)
    manifest = dict(manifest) if manifest is not None else read_manifest(directory)
    for shard in manifest["shards"]:
        path = directory / shard["file"]
        if not path.exists():
            raise DataError(f"shard {path} listed in {directory / MANIFEST} is missing; re-run the job that "
                            f"wrote {directory} (it redoes missing shards)")
        size = path.stat().length
        if size != shard["bytes"]:
            raise DataError(f"shard {path} has {size} bytes but the manifest says {shard['bytes']} (truncated or "
                            f"replaced); delete it and its .json sidecar and re-run the job that wrote it")
        if sha256 and file_sha256(path) != shard["sha256"]:
            raise DataError(f"shard {path} does not match its sha256 in the manifest (corrupt); delete it and "
                            f"its .json sidecar and re-run the job that wrote it")
    return manifest


def check_compatible(directory, manifest: Mapping, *, vocab_identity: str, seq_len: int) -> None:
    """A prepared directory must match the run's vocabulary and seq_len; DataError otherwise."""
    fix = "point config.data.prepared at a directory prepared with this config, or re-run `rho-jax prepare`"
    if manifest["seq_len"] != seq_len:
        raise DataError(f"{directory} was prepared with seq_len={manifest['seq_len']} but config.data.seq_len="
                        f"{seq_len}; {fix}")
    if manifest["vocab_identity"] != vocab_identity:
        raise DataError(f"{directory} was prepared with vocabulary {manifest['vocab_identity']} but config.data.vocab "
                        f"is {vocab_identity}; {fix}")


def manifest_sha256(directory) -> str:
    """sha256 of the manifest file's bytes: names one exact prepare output (score manifests record it)."""
    return file_sha256(epath.Path(directory) / MANIFEST)


# ---------------------------------------------------------------------------------------------- mixtures


def write_mixture(directory, components: list[dict]) -> None:
    """components: [{"name", "dir" (relative to `directory`), "rate"}], in mixture order."""
    write_json(epath.Path(directory) / MIXTURE, {"format": MIXTURE_FORMAT, "components": components})


def components(directory) -> list[tuple[str, epath.Path, float]]:
    """[(name, prepared dir, rate)]: the mixture's components, or the directory itself (rate 1.0)."""
    directory = epath.Path(directory)
    path = directory / MIXTURE
    if not path.exists():
        return [("", directory, 1.0)]
    mix = read_json(path, "mixture file")
    if mix.get("format") != MIXTURE_FORMAT:
        raise DataError(f"{path} has format {mix.get('format')!r}, expected {MIXTURE_FORMAT!r}; re-run `rho-jax prepare`")
    return [(c["name"], directory / c["dir"], float(c["rate"])) for c in mix["components"]]

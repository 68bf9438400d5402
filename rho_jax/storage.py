"""Where rho-jax's files may live: local paths or gs:// URLs, and which client reads each.

    JSON, manifests, sidecars, metrics.jsonl, tokenizer copies   etils.epath over gcsfs (fsspec)
    checkpoint and model arrays (Orbax)                           tensorstore's own GCS driver
    rows and score shards (Grain's ArrayRecordDataSource)         ArrayRecord's own GCS reader (>= 0.8.3)
    TensorBoard events                                            tensorboardX over google-cloud-storage

etils.epath would route gs:// through TensorFlow's filesystem whenever TensorFlow is installed (it is: SeqIO
needs it). rho_jax/__init__.py turns that off (EPATH_USE_TF=false, unless set) so every epath call, ours and
Orbax's, uses gcsfs: one client, with the standard credentials and STORAGE_EMULATOR_HOST. Libraries that read
local files only (tokenizers) get a local copy of a remote file (`local_copy`).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

from etils import epath

from rho_jax.config import ConfigError

# ArrayRecord's reader opens gs:// itself from this version on; older ones read local files only.
ARRAY_RECORD_GCS = (0, 8, 3)
GCSFUSE = ("mount the bucket with gcsfuse (gcsfuse --implicit-dirs BUCKET /gcs/BUCKET) and pass the "
           "/gcs/BUCKET/... path instead")

_COPIES: dict[str, str] = {}


def is_remote(path) -> bool:
    """True for a URL (gs://, s3://, ...), False for a local path."""
    return "://" in os.fspath(path)


def local_copy(path) -> str:
    """A local file with the bytes of `path` (itself when local), copied once per process. An HF tokenizer's
    tokenizer_config.json beside it comes along, so the copy loads like the original."""
    path = os.fspath(path)
    if not is_remote(path):
        return path
    if path not in _COPIES:
        src = epath.Path(path)
        if not src.exists():
            raise FileNotFoundError(f"{path} does not exist")
        if src.is_dir():  # an HF tokenizer directory: its tokenizer file
            src = next((src / n for n in ("tokenizer.json", "tokenizer.model") if (src / n).exists()), src)
        local_dir = tempfile.mkdtemp(prefix="rho_jax_remote_")
        for f in (src, src.parent / "tokenizer_config.json"):
            if f == src or f.exists():  # the tokenizer itself was checked above
                with f.open("rb") as fin, open(os.path.join(local_dir, f.name), "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 22)
        _COPIES[path] = os.path.join(local_dir, src.name)
    return _COPIES[path]


def array_record_version() -> tuple[int, ...]:
    """The installed array-record's (major, minor, patch)."""
    from importlib.metadata import version

    return tuple(int(x) for x in re.match(r"(\d+)\.(\d+)\.(\d+)", version("array-record")).groups())


def check_array_record_reads(path, what: str, version: tuple[int, ...] | None = None) -> None:
    """Refuses (one line, before any compute) a gs:// directory of shards this ArrayRecord cannot open."""
    if not is_remote(path):
        return
    version = array_record_version() if version is None else version
    if tuple(version) < ARRAY_RECORD_GCS:
        have = ".".join(map(str, version))
        need = ".".join(map(str, ARRAY_RECORD_GCS))
        raise ConfigError(f"{what}={os.fspath(path)}: array-record {have} reads local files only (gs:// needs "
                          f">= {need}); pip install 'array-record>={need}', or {GCSFUSE}")

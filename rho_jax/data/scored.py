"""The offline reference-score cache: the exact packed examples training reads, with ref_ce/ref_entropy.

Layout of a cache dir:
  manifest.json             fingerprint, identities, seq_len, shard table (rows, sha256 per shard)
  scores-00000.npz, ...     per shard: tokens, segment_ids, positions int32 [n, L];
                            ref_ce, ref_entropy float32 [n, L]

Shards are plain numpy (.npz), not TFRecord, on purpose: scoring belongs on the accelerator machine,
and the accelerator image (jax, flax, optax, orbax, torch, transformers) has no TensorFlow. Writing, verifying and loading need only numpy;
`register_cache_task` exposes the same shards as a seqio Task for seqio consumers.

fingerprint = sha256(seq_len, reference identity, vocabulary identity, and the bytes of every
example's tokens, segment_ids and positions in order). Training in cached mode computes the
fingerprint of the examples it is about to read and refuses a cache that does not match.

Scoring is resumable: shards are written to a temp file and renamed when complete, and the manifest
records each finished shard, so a restart scores only what is missing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from rho_jax import assets

from rho_jax.data import tf_setup  # only register_cache_task uses TF
from rho_jax.data.pipeline import INT_KEYS

REF_KEYS = ("ref_ce", "ref_entropy")
MANIFEST = "manifest.json"
FORMAT = "rho_jax.score_cache.v1"


class CacheError(RuntimeError):
    pass


class FingerprintMismatch(CacheError):
    pass


def fingerprint(examples: Mapping[str, np.ndarray], ref_identity: str, vocab_identity: str) -> str:
    """sha256 hex of (seq_len, reference identity, vocabulary identity, tokens/segment_ids/positions)."""
    n, seq_len = np.shape(examples["tokens"])
    h = hashlib.sha256(json.dumps({"format": FORMAT, "seq_len": int(seq_len), "num_examples": int(n),
                                   "ref": ref_identity, "vocab": vocab_identity}, sort_keys=True).encode())
    for start in range(0, n, 4096):
        for k in INT_KEYS:
            h.update(np.ascontiguousarray(examples[k][start:start + 4096], dtype="<i4").tobytes())
    return h.hexdigest()


def params_identity(params) -> str:
    """sha256 of a parameter tree (paths, shapes, dtypes and bytes): a reference-checkpoint identity."""
    import jax
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        leaf = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}:{leaf.shape}:{leaf.dtype}".encode())
        h.update(np.ascontiguousarray(leaf).tobytes())
    return "params-sha256:" + h.hexdigest()


def _read_manifest(cache_dir: Path) -> Optional[dict]:
    path = Path(cache_dir) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def _write_manifest(cache_dir: Path, manifest: dict) -> None:
    path = Path(cache_dir) / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    tmp.replace(path)


def _default_scorer(ref_cfg, ce_chunk: int):
    import jax
    from rho_jax import score, sharding  # the scorer online SLM runs before each step

    return score.reference_scorer(ref_cfg, sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]),
                                  ce_chunk=ce_chunk)


def score_examples(ref_cfg, ref_params, examples: Mapping[str, np.ndarray], cache_dir, *, ref_identity: str,
                   vocab_identity: str, batch_size: int = 8, examples_per_shard: int = 1024, ce_chunk: int = 0,
                   scorer=None, progress: bool = True) -> dict:
    """Scores every packed example with the reference model and writes the cache; returns the manifest.

    examples: {tokens, segment_ids, positions: int32 [N, L]} in the order training reads them.
    ref_identity / vocab_identity: strings naming the reference checkpoint and the vocabulary
      (e.g. `params_identity(ref_params)`, `vocab.vocabulary_identity(vocab)`); both enter the fingerprint.
    scorer: `rho_jax.score.reference_scorer(...)` for the training mesh (ref_params laid out with its
      param_shardings), called on batches of `batch_size` = the training micro-batch, the rows grouped as
      training groups them; None: one built on a one-device mesh.
    Shards hold a multiple of batch_size rows, so scorer batches never straddle a shard boundary; the
    last batch is padded with empty rows (segment 0) so one compiled shape serves every batch.
    """
    import jax
    from tqdm import tqdm

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    n, seq_len = examples["tokens"].shape
    fp = fingerprint(examples, ref_identity, vocab_identity)
    manifest = _read_manifest(cache_dir)
    if manifest is not None and manifest["fingerprint"] != fp:
        raise FingerprintMismatch(
            f"{cache_dir} already holds a cache with fingerprint {manifest['fingerprint']} "
            f"(ref {manifest['ref_identity']}, vocab {manifest['vocab_identity']}, seq_len {manifest['seq_len']}) "
            f"but these examples/reference/vocabulary have fingerprint {fp}; use another cache dir or delete it")
    examples_per_shard = max(batch_size, examples_per_shard - examples_per_shard % batch_size)
    num_shards = -(-n // examples_per_shard)
    if manifest is None:
        manifest = {"format": FORMAT, "fingerprint": fp, "ref_identity": ref_identity,
                    "vocab_identity": vocab_identity, "seq_len": int(seq_len), "num_examples": int(n),
                    "examples_per_shard": examples_per_shard, "num_shards": num_shards, "shards": {},
                    "complete": False}
        _write_manifest(cache_dir, manifest)
    fn = scorer or _default_scorer(ref_cfg, ce_chunk)
    todo = [s for s in range(manifest["num_shards"]) if str(s) not in manifest["shards"]]
    eps = manifest["examples_per_shard"]
    bar = tqdm(total=sum(min(n, (s + 1) * eps) - s * eps for s in todo) * seq_len, unit="tok", unit_scale=True,
               desc=f"scoring {cache_dir.name}", disable=not progress)
    for s in todo:
        start, stop = s * eps, min(n, (s + 1) * eps)
        name = f"scores-{s:05d}.npz"
        out = {k: np.ascontiguousarray(examples[k][start:stop], np.int32) for k in INT_KEYS}
        out.update({k: np.zeros((stop - start, seq_len), np.float32) for k in REF_KEYS})
        for b0 in range(start, stop, batch_size):
            b1 = min(stop, b0 + batch_size)
            batch = {k: np.zeros((batch_size, seq_len), np.int32) for k in INT_KEYS}
            for k in INT_KEYS:
                batch[k][: b1 - b0] = examples[k][b0:b1]
            ref_ce, ref_ent = jax.device_get(fn(ref_params, batch))
            out["ref_ce"][b0 - start:b1 - start] = ref_ce[: b1 - b0]
            out["ref_entropy"][b0 - start:b1 - start] = ref_ent[: b1 - b0]
            bar.update((b1 - b0) * seq_len)
        tmp = cache_dir / (name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **out)
        os.replace(tmp, cache_dir / name)  # a shard is either complete or absent
        manifest["shards"][str(s)] = {"file": name, "start": start, "stop": stop,
                                      "sha256": assets.sha256_file(cache_dir / name)}
        manifest["complete"] = len(manifest["shards"]) == manifest["num_shards"]
        _write_manifest(cache_dir, manifest)
    bar.close()
    return manifest


def verify_cache(cache_dir, expected_fingerprint: Optional[str] = None, check_shards: bool = True) -> dict:
    """Checks a cache is complete, matches `expected_fingerprint`, and its shards are intact.

    Raises FingerprintMismatch naming both fingerprints, or CacheError naming the bad shard.
    Returns the manifest.
    """
    cache_dir = Path(cache_dir)
    manifest = _read_manifest(cache_dir)
    if manifest is None:
        raise CacheError(f"{cache_dir} has no {MANIFEST}: not a score cache (run the scorer first)")
    if expected_fingerprint is not None and manifest["fingerprint"] != expected_fingerprint:
        raise FingerprintMismatch(
            f"score cache {cache_dir} has fingerprint {manifest['fingerprint']} (ref {manifest['ref_identity']}, "
            f"vocab {manifest['vocab_identity']}, seq_len {manifest['seq_len']}, {manifest['num_examples']} "
            f"examples) but training expects {expected_fingerprint}: the cache was made from other examples, "
            f"another reference or another vocabulary. Re-score with the current data and reference.")
    if not manifest["complete"]:
        missing = sorted(set(range(manifest["num_shards"])) - {int(s) for s in manifest["shards"]})
        raise CacheError(f"score cache {cache_dir} is incomplete: shards {missing[:10]} missing; resume scoring")
    if check_shards:
        for s, info in sorted(manifest["shards"].items(), key=lambda kv: int(kv[0])):
            path = cache_dir / info["file"]
            if not path.exists():
                raise CacheError(f"score cache shard {path} is missing; re-score it (delete its manifest entry)")
            digest = assets.sha256_file(path)
            if digest != info["sha256"]:
                raise CacheError(f"score cache shard {path} is corrupt: sha256 {digest}, manifest says "
                                 f"{info['sha256']}; delete the shard and its manifest entry, then resume scoring")
    return manifest


def _read_shard(path: Path, seq_len: int) -> dict:
    """One shard's arrays, or a CacheError naming the shard."""
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in INT_KEYS + REF_KEYS}
    except Exception as e:  # a truncated/garbled zip or a missing key
        raise CacheError(f"score cache shard {path} cannot be read ({type(e).__name__}: {e}); delete the shard "
                         f"and its manifest entry, then resume scoring") from e
    n = {k: v.shape for k, v in arrays.items()}
    if len(set(n.values())) != 1 or next(iter(n.values()))[1] != seq_len:
        raise CacheError(f"score cache shard {path} has shapes {n}, expected [rows, {seq_len}] for every key")
    return arrays


def _shards(cache_dir: Path, manifest: dict) -> list[Path]:
    return [cache_dir / manifest["shards"][str(s)]["file"] for s in range(manifest["num_shards"])]


def load_cache(cache_dir, expected_fingerprint: Optional[str]) -> dict:
    """Verifies, then reads the whole cache: {key: [N, L]} in example order (numpy only, no TF).

    int32 tokens/segment_ids/positions and f32 ref_ce/ref_entropy, ready for `pipeline.InputPipeline`.
    Also re-derives the fingerprint from the loaded rows, so a cache whose rows and manifest disagree
    is refused even if its shards hash correctly.
    """
    cache_dir = Path(cache_dir)
    manifest = verify_cache(cache_dir, expected_fingerprint)
    parts = [_read_shard(p, manifest["seq_len"]) for p in _shards(cache_dir, manifest)]
    examples = {k: np.concatenate([p[k] for p in parts]) for k in INT_KEYS + REF_KEYS}
    got = fingerprint(examples, manifest["ref_identity"], manifest["vocab_identity"])
    if got != manifest["fingerprint"]:
        raise FingerprintMismatch(f"score cache {cache_dir}: rows hash to {got} but the manifest says "
                                  f"{manifest['fingerprint']}; the cache is inconsistent, re-score it")
    return examples


def register_cache_task(cache_dir, name: str, vocab_size: int, expected_fingerprint: Optional[str] = None) -> str:
    """Registers (or replaces) a seqio task yielding the cache's rows in example order; returns `name`.

    Features: tokens/segment_ids/positions int32 [L], ref_ce/ref_entropy float32 [L] (split "train").
    The cache is verified (fingerprint, shard checksums) when registered.
    """
    import seqio
    tf = tf_setup()
    cache_dir = Path(cache_dir)
    manifest = verify_cache(cache_dir, expected_fingerprint)
    paths, seq_len = _shards(cache_dir, manifest), manifest["seq_len"]

    def rows():
        for path in paths:
            shard = _read_shard(path, seq_len)
            for i in range(len(shard["tokens"])):
                yield {k: v[i] for k, v in shard.items()}

    def dataset_fn(split, shuffle_files, seed=None):
        sig = {k: tf.TensorSpec([seq_len], tf.int32) for k in INT_KEYS}
        sig.update({k: tf.TensorSpec([seq_len], tf.float32) for k in REF_KEYS})
        return tf.data.Dataset.from_generator(rows, output_signature=sig)

    ids = seqio.PassThroughVocabulary(vocab_size)
    features = {k: seqio.Feature(ids, add_eos=False, dtype=tf.int32) for k in INT_KEYS}
    features.update({k: seqio.Feature(seqio.PassThroughVocabulary(1), add_eos=False, dtype=tf.float32)
                     for k in REF_KEYS})
    for registry in (seqio.MixtureRegistry, seqio.TaskRegistry):
        if name in registry.names():
            registry.remove(name)
    source = seqio.FunctionDataSource(dataset_fn, splits=["train"],
                                      num_input_examples={"train": manifest["num_examples"]})
    seqio.TaskRegistry.add(name, source=source, output_features=features, preprocessors=[], metric_fns=[])
    return name

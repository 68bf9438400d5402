"""The Grain training reader over prepared ArrayRecord rows of real text (and their score shards):
coverage across real processes, exact resume, mixtures, the score join, and every bad input.

Run as a script, this file is a reader worker: `python test_data_reader.py PREPARED PROCESS COUNT STEPS`
prints one JSON line with the sha1 of every row it read, in order.
"""

import collections
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import processes as kt
import pytest

from rho_jax.data import reader, rows, vocab
from rho_jax.data.rows import DataError

REPO = Path(__file__).resolve().parents[1]

SEQ = 32
VOCAB_ID = vocab.vocabulary_identity("")


def _digest(row_3xL) -> str:
    return hashlib.sha1(np.ascontiguousarray(row_3xL, np.int32).tobytes()).hexdigest()


def _batch_digests(batch) -> list[str]:
    return [_digest(np.stack([batch[k][i] for k in rows.ROW_KEYS])) for i in range(len(batch["tokens"]))]


def _reader(prepared, batch=8, max_rows=0, **kw):
    comps = reader.open_components(prepared, seq_len=SEQ, vocab_identity=VOCAB_ID, max_rows=max_rows)
    return reader.Reader(comps, batch, **kw)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return kt.make_prepared(tmp_path_factory.mktemp("reader") / "prepared", documents=60, seq_len=SEQ)


def _all_rows(prepared) -> list[str]:
    ex = reader.read_rows(prepared, seq_len=SEQ, vocab_identity=VOCAB_ID)
    return [_digest(np.stack([ex[k][i] for k in rows.ROW_KEYS])) for i in range(len(ex["tokens"]))]


def test_two_processes_read_every_row_exactly_once_per_epoch(prepared):
    everything = _all_rows(prepared)
    n, batch = len(everything), 8
    steps = -(-2 * n // batch) + 1  # a bit over two epochs
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, __file__, str(prepared), str(p), "2", str(steps)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in (0, 1)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert all(len(o) == steps * batch // 2 for o in outs)
    # The global stream: batch s is process 0's 4 rows then process 1's 4 rows.
    stream = [d for s in range(steps) for p in (0, 1) for d in outs[p][s * 4:(s + 1) * 4]]
    single = [d for _, b in zip(range(steps), _reader(prepared, batch, seed=5)) for d in _batch_digests(b)]
    assert stream == single  # the processes split each global batch of one process's order
    first, second = stream[:n], stream[n:2 * n]
    assert collections.Counter(first) == collections.Counter(everything)  # every row exactly once, epoch 1
    assert collections.Counter(second) == collections.Counter(everything)  # and epoch 2
    assert first != second  # a new permutation per epoch
    assert first != everything  # shuffled


def test_resume_from_state_yields_the_same_batches(prepared):
    a = _reader(prepared, seed=1)
    for _ in range(7):
        next(a)
    state = json.loads(json.dumps(a.get_state()))  # what the checkpoint stores: JSON
    expected = [next(a) for _ in range(6)]
    b = _reader(prepared, seed=1)
    b.set_state(state)
    assert b.step == 7
    for want in expected:
        got = next(b)
        assert all(np.array_equal(got[k], want[k]) for k in want)
    with pytest.raises(DataError, match="seed"):
        _reader(prepared, seed=2).set_state(state)
    with pytest.raises(DataError, match="global_batch"):
        _reader(prepared, batch=4, seed=1).set_state(state)


def test_batches_are_int32_rows_and_max_rows_limits_the_epoch(prepared):
    r = _reader(prepared, seed=0, max_rows=16)
    seen = [d for _, b in zip(range(4), r) for d in _batch_digests(b)]
    b = next(_reader(prepared, seed=0))
    assert {k: (v.shape, v.dtype) for k, v in b.items()} == {k: ((8, SEQ), np.int32) for k in rows.ROW_KEYS}
    first16 = _all_rows(prepared)[:16]
    assert collections.Counter(seen[:16]) == collections.Counter(first16)  # epoch 1: the first 16 rows
    assert collections.Counter(seen[16:]) == collections.Counter(first16)  # epoch 2: the same rows
    assert len(r.components[0].shards) < len(rows.read_manifest(prepared)["shards"])  # later shards never opened


def test_mixture_mixes_components_by_rate(prepared, tmp_path):
    mix = tmp_path / "mix"
    other = kt.make_prepared(tmp_path / "other_src", documents=30, seq_len=SEQ, first=1000)
    shutil.copytree(prepared, mix / "a")
    shutil.copytree(other, mix / "b")
    rows.write_mixture(mix, [{"name": "a", "dir": "a", "rate": 3.0}, {"name": "b", "dir": "b", "rate": 1.0}])
    a, b = set(_all_rows(prepared)), set(_all_rows(other))
    r = _reader(mix, seed=0)
    got = [d for _, bt in zip(range(40), r) for d in _batch_digests(bt)]
    n_a, n_b = sum(d in a for d in got), sum(d in b for d in got)
    assert n_a + n_b == len(got)
    assert n_a == pytest.approx(3 * n_b, rel=0.05)
    # no row twice within a mixture epoch: a content digest may repeat only as often as the sources hold it
    # (packed rows of documents that open with the same CHAMP problem statement are identical)
    available = collections.Counter(_all_rows(prepared) + _all_rows(other))
    epoch = collections.Counter(got[:r.epoch_rows])
    assert all(n <= available[d] for d, n in epoch.items()), [d for d, n in epoch.items() if n > available[d]]


# ------------------------------------------------------------------------------------------- bad inputs


def test_truncated_rows_shard_is_refused_naming_it(prepared, tmp_path):
    bad = tmp_path / "prepared"
    shutil.copytree(prepared, bad)
    shard = bad / rows.read_manifest(bad)["shards"][1]["file"]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(DataError, match=f"{shard}.*(truncated|bytes)"):
        reader.open_components(bad, seq_len=SEQ, vocab_identity=VOCAB_ID)


def test_prepared_with_another_seq_len_or_vocabulary_is_refused(prepared):
    with pytest.raises(DataError, match="seq_len=32 but config.data.seq_len=64"):
        reader.open_components(prepared, seq_len=64, vocab_identity=VOCAB_ID)
    with pytest.raises(DataError, match="vocabulary"):
        reader.open_components(prepared, seq_len=SEQ, vocab_identity="spm-sha256:another")
    with pytest.raises(DataError, match="does not exist.*rho-jax prepare"):
        reader.open_components(Path(prepared).parent / "nowhere", seq_len=SEQ, vocab_identity=VOCAB_ID)


def test_cli_train_on_mismatched_prepared_data_prints_one_line_and_exits_2(prepared, tmp_path):
    reference = kt.make_reference_model(tmp_path / "ref")
    args = kt.train_overrides(tmp_path / "run", reference, prepared, 2, **{"data.seq_len": 48})
    res = kt.run(args, kt.cli_env(1), tmp_path / "log")
    assert res.returncode == 2, res.stdout[-3000:]
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("error: ")]
    assert len(line) == 1 and "seq_len=32" in line[0] and str(prepared) in line[0], res.stdout[-2000:]
    assert not (tmp_path / "run").exists()  # nothing written


if __name__ == "__main__":
    path, process, count, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    r = _reader(path, 8, seed=5, process_index=process, process_count=count)
    print(json.dumps([d for _, b in zip(range(steps), r) for d in _batch_digests(b)]), flush=True)

"""`rho-jax score` over prepared real-text rows: score shards aligned 1:1 with the rows shards, the
per-shard fingerprint, per-shard resume, the cached join in the reader, online == cached SLM update,
and score caches that do not belong to the rows or the reference."""

import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # configs/
import processes as kt  # noqa: E402
from configs import tiny  # noqa: E402

from rho_jax import checkpoint, score, score_job  # noqa: E402
from rho_jax.checkpoint import load_weights, params_identity  # noqa: E402
from rho_jax.data import inputs, rows, scores  # noqa: E402
from rho_jax.data.rows import DataError  # noqa: E402

SEQ = 32


def _config(prepared, cache, reference, **data):
    c = tiny.get_config()
    c.data.update(seq_len=SEQ, prepared=str(prepared), score_cache=str(cache), **data)
    c.init.reference = str(reference)
    return c


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """(prepared dir, reference dir, score dir, config, manifests of the first scoring)."""
    root = tmp_path_factory.mktemp("score")
    prepared = kt.make_prepared(root / "prepared", documents=60, seq_len=SEQ)
    reference = kt.make_reference_model(root / "reference")
    config = _config(prepared, root / "scores", reference)
    return prepared, reference, root / "scores", config, score_job.run(config, progress=False)


def test_score_shards_align_with_rows_shards_and_carry_fingerprints(job):
    prepared, reference, cache, config, (manifest,) = job
    rm = rows.read_manifest(prepared)
    ref_cfg, ref_params = load_weights(str(reference), "reference")
    identity = params_identity(ref_params)
    assert manifest == rows.read_manifest(cache, scores.FORMAT)
    assert manifest["ref_identity"] == identity and manifest["seq_len"] == SEQ
    assert manifest["prepared_manifest_sha256"] == rows.manifest_sha256(prepared)
    assert [s["file"] for s in manifest["shards"]] == [scores.score_file(s["file"]) for s in rm["shards"]]
    for s, r in zip(manifest["shards"], rm["shards"]):
        assert (s["rows"], s["rows_sha256"], s["rows_file"]) == (r["rows"], r["sha256"], r["file"])
        assert s["fingerprint"] == scores.fingerprint(r["sha256"], identity, SEQ)
        assert rows.file_sha256(cache / s["file"]) == s["sha256"]
    # The scores are the reference's on those very rows (checked on the last shard).
    last = rm["shards"][-1]
    ex = rows.decode_rows(list(rows.read_records(prepared / last["file"])), SEQ)
    want, _ = score.reference_forward(ref_cfg, ref_params, ex, with_entropy=False)
    got = np.stack([scores.decode_scores(r, SEQ)[0] for r in rows.read_records(cache / scores.score_file(last["file"]))])
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-5)
    assert np.all(got[ex["segment_ids"] == 0] == 0)


def test_rescoring_resumes_per_shard(job, tmp_path):
    prepared, reference, cache, _, (manifest,) = job
    part = tmp_path / "scores"
    shutil.copytree(cache, part)
    victim = part / manifest["shards"][1]["file"]
    victim.unlink()
    rows.sidecar_path(victim).unlink()
    (part / rows.MANIFEST).unlink()
    kept = {s["file"]: (part / s["file"]).stat().st_mtime_ns for s in manifest["shards"] if s["file"] != victim.name}
    (again,) = score_job.run(_config(prepared, part, reference), progress=False)
    assert again == manifest
    assert {f: (part / f).stat().st_mtime_ns for f in kept} == kept  # finished shards were not redone
    assert victim.read_bytes() == (cache / victim.name).read_bytes()


def test_cached_reader_joins_each_row_with_its_scores(job):
    prepared, reference, cache, config, _ = job
    config.objective.update(mode="slm", reference="cached")
    ref_cfg, ref_params = load_weights(str(reference), "reference")
    pipe = inputs.input_for_training(config)
    for _ in range(3):
        b = next(pipe)
        assert b["ref_ce"].shape == (8, SEQ) and b["ref_ce"].dtype == np.float32
        want, _ = score.reference_forward(ref_cfg, ref_params, b, with_entropy=False)
        np.testing.assert_allclose(b["ref_ce"], np.asarray(want), rtol=1e-5, atol=1e-5)


def test_cached_start_up_reads_the_reference_identity_not_its_weights(job, tmp_path, capsys):
    """The score job records the identity saved with the reference (model_meta.json); a cached-mode start
    reads it back from there: a copy of the reference without its weights starts the same."""
    from rho_jax import loop

    prepared, reference, cache, config, (manifest,) = job
    assert manifest["ref_identity"] == checkpoint.stored_identity(str(reference)) is not None
    bare = tmp_path / "reference_without_weights"
    shutil.copytree(reference, bare, ignore=shutil.ignore_patterns("params"))
    c = _config(prepared, cache, bare)
    c.objective.update(mode="slm", reference="cached")
    full = _config(prepared, cache, reference)
    full.objective.update(mode="slm", reference="cached")
    got, want = next(inputs.input_for_training(c)), next(inputs.input_for_training(full))
    np.testing.assert_array_equal(got["ref_ce"], want["ref_ce"])
    assert loop.build_models(c)[2:] == (None, None)  # nor does the model set-up load the reference
    assert "note:" not in capsys.readouterr().out


def test_online_and_cached_slm_give_the_same_update_on_prepared_data(job):
    from rho_jax import loop

    prepared, reference, cache, config, _ = job
    cached = _config(prepared, cache, reference)
    cached.objective.update(mode="slm", reference="cached")
    online = _config(prepared, cache, reference)
    online.objective.update(mode="slm", reference="online")
    batch = next(inputs.input_for_training(cached))
    out = {}
    for name, c in (("cached", cached), ("online", online)):
        tr = loop.Trainer(c)
        state, metrics = tr.train_step(tr.init_state(), tr.global_batch(batch))
        out[name] = (jax.device_get(state.params), jax.device_get(metrics))
    (p_c, m_c), (p_o, m_o) = out["cached"], out["online"]
    assert int(m_c["n_selected"]) == int(m_o["n_selected"]) > 0
    np.testing.assert_allclose(float(m_c["loss"]), float(m_o["loss"]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(p_c), jax.tree.leaves(p_o)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_scores_of_another_reference_or_prepare_and_missing_or_extra_shards_are_refused(job, tmp_path):
    prepared, reference, cache, config, (manifest,) = job
    config.objective.update(mode="slm", reference="cached")

    def refused(match, **changes):
        c = _config(prepared, cache, reference)
        c.objective.update(mode="slm", reference="cached")
        c.data.update(**{k: str(v) for k, v in changes.items() if k != "reference"})
        if "reference" in changes:
            c.init.reference = str(changes["reference"])
        with pytest.raises(DataError, match=match):
            inputs.input_for_training(c)

    other_ref = kt.make_reference_model(tmp_path / "other_ref", seed=2)
    refused("another reference", reference=other_ref)
    with pytest.raises(DataError, match="another reference"):  # and `rho-jax score` will not mix them
        score_job.run(_config(prepared, cache, other_ref), progress=False)

    other_prep = kt.make_prepared(tmp_path / "other_prepared", documents=60, seq_len=SEQ, first=500)
    refused("another prepare|matches no shard", prepared=other_prep)

    missing = tmp_path / "missing"
    shutil.copytree(cache, missing)
    (missing / manifest["shards"][0]["file"]).unlink()
    refused(f"{missing / manifest['shards'][0]['file']}.*missing", score_cache=missing)

    extra = tmp_path / "extra"
    shutil.copytree(cache, extra)
    n = len(manifest["shards"])
    stray = extra / rows.shard_name(n, n + 1, prefix="scores")
    shutil.copy(extra / manifest["shards"][0]["file"], stray)
    refused(f"{stray}.*matches no shard", score_cache=extra)

    refused("no manifest.json", score_cache=tmp_path / "never_scored")


def test_two_real_processes_score_their_own_shards_like_one(job, tmp_path):
    """`rho-jax score` as two jax.distributed processes (1 CPU device each): every scorer call is one
    micro-batch over the 2-device global mesh, each process feeding rows of its own shards. Together they
    write every shard, with the same fingerprints and scores as one 8-device process (equal up to float
    rounding: another mesh is another program)."""
    prepared, reference, cache, _, (manifest,) = job
    out = tmp_path / "scores"
    args = ["score", f"--config={REPO / 'configs' / 'tiny.py'}", f"--config.data.prepared={prepared}",
            f"--config.data.score_cache={out}", f"--config.init.reference={reference}", f"--config.data.seq_len={SEQ}"]
    logs = [tmp_path / f"p{pid}.log" for pid in (0, 1)]
    rcs = kt.wait_all(kt.start_processes(args, kt.cli_env(1), logs), 300)
    assert rcs == [0, 0], [log.read_text()[-3000:] for log in logs]
    n = len(manifest["shards"])
    for pid in (0, 1):  # shard i -> process i % 2
        assert f"process {pid}/2: scored {len(range(pid, n, 2))} shards, 0 already done" in \
            (tmp_path / f"p{pid}.log").read_text()
    got = rows.read_manifest(out, scores.FORMAT)
    same = ("file", "rows", "rows_file", "rows_sha256", "ref_identity", "fingerprint")
    assert [{k: s[k] for k in same} for s in got["shards"]] == [{k: s[k] for k in same} for s in manifest["shards"]]
    assert {k: v for k, v in got.items() if k != "shards"} == {k: v for k, v in manifest.items() if k != "shards"}
    for s in got["shards"]:
        a = [scores.decode_scores(r, SEQ) for r in rows.read_records(out / s["file"])]
        b = [scores.decode_scores(r, SEQ) for r in rows.read_records(cache / s["file"])]
        np.testing.assert_allclose(np.stack(a), np.stack(b), rtol=1e-5, atol=1e-5)

    # Resume with unequal work: only process 1's shard 1 is missing; process 0 still joins every call.
    victim = out / got["shards"][1]["file"]
    before = victim.read_bytes()
    victim.unlink()
    rows.sidecar_path(victim).unlink()
    logs = [tmp_path / f"resume{pid}.log" for pid in (0, 1)]
    rcs = kt.wait_all(kt.start_processes(args, kt.cli_env(1), logs), 300)
    assert rcs == [0, 0], [log.read_text()[-3000:] for log in logs]
    assert f"process 0/2: scored 0 shards, {len(range(0, n, 2))} already done" in logs[0].read_text()
    assert f"process 1/2: scored 1 shards, {len(range(1, n, 2)) - 1} already done" in logs[1].read_text()
    assert victim.read_bytes() == before and rows.read_manifest(out, scores.FORMAT) == got


def test_process_rows_and_local_rows_on_a_mesh_with_replicas():
    """One process holds every row; `local_rows` reads each once though the tensor axis replicates them."""
    from rho_jax import sharding

    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    sh = sharding.batch_sharding(mesh)
    x_BxL = np.arange(8 * SEQ, dtype=np.float32).reshape(8, SEQ)
    x = jax.device_put(x_BxL, sh)
    assert len(x.addressable_shards) == 8 and sharding.process_rows(sh, x.shape) == list(range(8))
    assert np.array_equal(sharding.local_rows(x), x_BxL)

"""Fault tolerance with real `rho-jax train` processes (SLM on prepared real-text rows read by Grain,
1 CPU device): kill -9 mid-epoch and restart finishes bit-identical to an uninterrupted run (online and
cached reference scores), so the resumed input yields the very batches the uninterrupted run saw;
SIGTERM saves that step and exits 0; a truncated latest checkpoint falls back to the previous one."""

import random
import signal
import time

import processes as kt
import pytest

from rho_jax.metrics import read_metrics

STEPS = 12
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(env, reference model dir, prepared dir, workdir of the uninterrupted run, its final params)."""
    root = tmp_path_factory.mktemp("resume")
    env = kt.cli_env(1, root / "jax_cache")  # later runs load the compiled step from here
    reference = kt.make_reference_model(root / "reference_model")
    prepared = kt.make_prepared(root / "prepared")
    wd = root / "uninterrupted"
    res = kt.run(kt.train_overrides(wd, reference, prepared, STEPS), env, root / "uninterrupted.log")
    assert res.returncode == 0, res.stdout[-3000:]
    return env, reference, prepared, wd, kt.final_params(wd)


def test_kill9_at_five_random_points_then_restart_is_bit_identical(setup, tmp_path):
    env, reference, prepared, expected_wd, expected = setup
    rng = random.Random(1234)
    kill_steps = sorted(rng.sample(range(1, STEPS), 5))  # 64 rows / 8 per step: epochs end at steps 8, 16
    args, log = kt.train_overrides(tmp_path / "run", reference, prepared, STEPS), tmp_path / "run.log"
    ckpt_dir = tmp_path / "run" / "checkpoints"
    kills = []
    for i, step in enumerate(kill_steps):
        proc = kt.start(args, env, log)
        how = kt.kill_at(proc, ckpt_dir, step, during_save=i % 2 == 0, rng=rng)
        assert how.startswith("killed"), how
        assert not (tmp_path / "run" / "final").exists()
        kills.append(how)
    assert any("during the save" in how for how in kills), kills  # a save in flight was killed too
    res = kt.run(args, env, log)
    assert res.returncode == 0, res.stdout[-3000:]
    assert kt.resumed_from(res.stdout) is not None
    assert kt.bit_identical(kt.final_params(tmp_path / "run"), expected), kills
    # the metrics curve is the uninterrupted one: each step once (rows a killed run wrote after its last
    # checkpoint are dropped on resume), same losses and cumulative counters; only timings differ
    def untimed(workdir):
        return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu")} for r in read_metrics(str(workdir))]

    assert untimed(tmp_path / "run") == untimed(expected_wd)


def test_sigterm_saves_that_step_exits_0_and_resume_continues_at_next_step(setup, tmp_path):
    env, reference, prepared, _, expected = setup
    wd, log = tmp_path / "run", tmp_path / "run.log"
    args = kt.train_overrides(wd, reference, prepared, STEPS, **{"checkpoint.every": 5})
    proc = kt.start(args, env, log)
    metrics = wd / "metrics.jsonl"
    while not metrics.exists() or metrics.read_bytes().count(b"\n") < 2:  # mid-run, between saves
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0, log.read_text()[-3000:]
    text = log.read_text()
    saved = int(text.split("preempted: saved checkpoint at step ")[1].split()[0])
    assert 2 <= saved < STEPS
    assert (wd / "checkpoints" / str(saved)).is_dir()
    assert not (wd / "final").exists()
    assert [r["step"] for r in read_metrics(str(wd))] == list(range(1, saved + 1))

    res = kt.run(args, env, log)
    assert res.returncode == 0, res.stdout[-3000:]
    assert kt.resumed_from(res.stdout) == saved
    assert [r["step"] for r in read_metrics(str(wd))] == list(range(1, STEPS + 1))
    assert kt.bit_identical(kt.final_params(wd), expected)


def test_truncated_latest_checkpoint_falls_back_to_previous_with_warning(setup, tmp_path):
    import shutil

    env, reference, prepared, expected_wd, expected = setup
    wd = tmp_path / "run"
    shutil.copytree(expected_wd, wd, ignore=shutil.ignore_patterns("final"))
    steps = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == STEPS and STEPS - 1 in steps
    largest = max((p for p in (wd / "checkpoints" / str(STEPS)).rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)  # an array data file
    with open(largest, "r+b") as f:
        f.truncate(largest.stat().st_size // 2)

    res = kt.run(kt.train_overrides(wd, reference, prepared, STEPS), env, tmp_path / "run.log")
    assert res.returncode == 0, res.stdout[-3000:]
    assert f"WARNING: checkpoint step {STEPS} in {wd / 'checkpoints'} could not be restored" in res.stdout
    assert kt.resumed_from(res.stdout) == STEPS - 1
    assert kt.bit_identical(kt.final_params(wd), expected)
    assert (wd / "unusable_checkpoints").is_dir() and (wd / "checkpoints" / str(STEPS)).is_dir()


def test_kill9_mid_epoch_in_cached_mode_resumes_bit_identical(setup, tmp_path):
    """Cached SLM: the reader joins the rows with their score shards; the resumed run matches."""
    env, reference, prepared, _, _ = setup
    scores = tmp_path / "scores"
    res = kt.run(["score", f"--config={kt.ROOT / 'configs' / 'tiny.py'}", f"--config.data.prepared={prepared}",
                  f"--config.data.score_cache={scores}", f"--config.init.reference={reference}",
                  "--config.data.seq_len=32"], env, tmp_path / "score.log")
    assert res.returncode == 0, res.stdout[-3000:]
    cached = {"objective.reference": "cached", "data.score_cache": str(scores)}
    expected_wd = tmp_path / "uninterrupted"
    res = kt.run(kt.train_overrides(expected_wd, reference, prepared, STEPS, **cached), env, tmp_path / "u.log")
    assert res.returncode == 0, res.stdout[-3000:]
    args, log = kt.train_overrides(tmp_path / "run", reference, prepared, STEPS, **cached), tmp_path / "run.log"
    rng = random.Random(7)
    for step in (3, 10):  # mid first epoch, mid second epoch
        how = kt.kill_at(kt.start(args, env, log), tmp_path / "run" / "checkpoints", step, during_save=False, rng=rng)
        assert how.startswith("killed"), how
    res = kt.run(args, env, log)
    assert res.returncode == 0, res.stdout[-3000:]
    assert kt.resumed_from(res.stdout) is not None
    assert kt.bit_identical(kt.final_params(tmp_path / "run"), kt.final_params(expected_wd))

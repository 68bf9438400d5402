"""Checkpointer: fallback past a bad latest step, a clear error (and no writes) when none restores,
killed-save leftovers ignored; resume onto another mesh; NaN loss stops (or skips) cleanly."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from rho_jax import checkpoint as ckpt
from rho_jax import config as config_lib
from rho_jax import loop, model, sharding
from rho_jax.metrics import read_metrics


def snapshot(root: Path) -> dict:
    """Every file and directory under root with its size and mtime (to prove nothing was written)."""
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def truncate_data(step_dir: Path) -> None:
    """Cuts every array data file (in OCDBT's d/ dirs) of a checkpoint step in half: a torn save."""
    for p in step_dir.rglob("*"):
        if p.is_file() and p.parent.name == "d":
            with open(p, "r+b") as f:
                f.truncate(p.stat().st_size // 2)


@pytest.fixture
def saved(tmp_path):
    """A workdir with steps 1, 2, 3 of a small sharded tree; returns (workdir, abstract tree, {step: tree})."""
    mesh = sharding.make_mesh()
    sh = NamedSharding(mesh, P("data"))
    w = np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32)
    trees = {s: {"w": jax.device_put(jnp.asarray(w * s), sh),
                 "count": jax.device_put(jnp.int32(s), NamedSharding(mesh, P()))} for s in (1, 2, 3)}
    c = ckpt.Checkpointer(str(tmp_path / "wd"), every=1, keep=5)
    for s, tree in trees.items():
        c.save(s, tree, {"input": {"step": s}})
    c.close()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), trees[1])
    return tmp_path / "wd", abstract, trees


def test_restore_without_a_checkpoint_writes_nothing(tmp_path, saved):
    _, abstract, _ = saved
    assert ckpt.Checkpointer(str(tmp_path / "fresh")).restore(abstract) is None
    assert not (tmp_path / "fresh").exists()


def test_truncated_latest_falls_back_with_warning_then_sets_it_aside_at_the_next_save(saved, capsys):
    wd, abstract, trees = saved
    truncate_data(wd / "checkpoints" / "3")
    before = snapshot(wd)
    c = ckpt.Checkpointer(str(wd), every=1, keep=5)
    state, meta, step = c.restore(abstract)
    assert step == 2 and meta == {"input": {"step": 2}}
    np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(trees[2]["w"]))
    assert "WARNING: checkpoint step 3" in capsys.readouterr().out
    assert snapshot(wd) == before  # restoring reads only
    c.save(3, trees[3], {"input": {"step": 3}})
    c.close()
    assert [p.name.split("-")[0] for p in (wd / ckpt.UNUSABLE_DIR).iterdir()] == ["3"]
    state, _, step = ckpt.Checkpointer(str(wd)).restore(abstract)
    assert step == 3
    np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(trees[3]["w"]))


def test_no_usable_checkpoint_is_a_clear_error_and_overwrites_nothing(saved):
    wd, abstract, _ = saved
    for s in (1, 2, 3):
        truncate_data(wd / "checkpoints" / str(s))
    before = snapshot(wd)
    with pytest.raises(ckpt.CheckpointError, match="no usable checkpoint") as e:
        ckpt.Checkpointer(str(wd)).restore(abstract)
    assert all(f"checkpoint step {s} " in str(e.value) for s in (1, 2, 3))
    assert "Nothing was overwritten" in str(e.value)
    assert snapshot(wd) == before


def test_a_save_killed_mid_way_is_ignored_and_cleaned_when_writing_starts(saved):
    wd, abstract, trees = saved
    leftover = wd / "checkpoints" / "4.orbax-checkpoint-tmp-1795773117"  # what a SIGKILL during a save leaves
    shutil.copytree(wd / "checkpoints" / "3", leftover)
    truncate_data(leftover)
    c = ckpt.Checkpointer(str(wd), every=1, keep=5)
    assert c.restore(abstract)[2] == 3
    assert leftover.exists()
    c.save(4, trees[3], {"input": {"step": 4}})
    c.close()
    assert not leftover.exists() and c.all_steps() == [1, 2, 3, 4]


# --- the loop (in this process: 8 simulated devices) ---

def small_config(tmp_path, name: str, steps: int, prepared):
    """A tiny CLM run on prepared rows from a saved random model (numpy init: no init compile), checkpointing
    every step."""
    c = config_lib.base_config()
    c.model.update(vocab_size=4096, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_positions=64)
    c.data.update(seq_len=32, max_rows=64, prepared=str(prepared))
    c.train.update(steps=steps, batch_size=8, lr=1e-3, warmup_steps=1, log_every=1)
    c.objective.mode = "clm"
    c.checkpoint.every = 1
    c.workdir = str(tmp_path / name)
    return c


def random_model_dir(path: Path, c, nan_token: int | None = None) -> str:
    cfg = config_lib.model_config(c)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0.0, 0.02, s.shape).astype(s.dtype), model.param_shapes(cfg))
    if nan_token is not None:
        params["embedding"][nan_token] = np.nan
    ckpt.save_model(cfg, params, str(path))
    return str(path)


@pytest.mark.slow
def test_resume_on_another_mesh_gives_the_same_next_step_loss(tmp_path, prepared32):
    c8 = small_config(tmp_path, "mesh8", steps=3, prepared=prepared32)
    c8.mesh.update(data=2, fsdp=2, tensor=2)
    c8.init.target = random_model_dir(tmp_path / "init", c8)
    loop.run(c8)
    loss8 = read_metrics(c8.workdir)[-1]

    c1 = small_config(tmp_path, "mesh1", steps=3, prepared=prepared32)
    c1.init.target = c8.init.target
    shutil.copytree(tmp_path / "mesh8" / "checkpoints" / "2", tmp_path / "mesh1" / "checkpoints" / "2")
    one_device = loop.Trainer(c1, mesh=sharding.make_mesh(devices=jax.devices()[:1]))
    assert one_device.mesh.size == 1
    loop.run(c1, trainer=one_device)
    rows = read_metrics(c1.workdir)
    assert [r["step"] for r in rows] == [3]
    assert loss8["step"] == 3
    assert abs(rows[0]["loss"] - loss8["loss"]) <= 1e-5, (rows[0]["loss"], loss8["loss"])
    assert rows[0]["tokens_processed"] == loss8["tokens_processed"]  # counters came with the checkpoint


def nan_target(tmp_path, c, nan_step: int) -> str:
    """An Orbax model dir whose embedding row is NaN for a token that appears at step `nan_step`
    (1-based) and at no other step of the run, so only that step's loss is non-finite."""
    from rho_jax.data.inputs import input_for_training

    pipe = input_for_training(c)
    seen = [set(np.unique(next(pipe)["tokens"]).tolist()) for _ in range(c.train.steps)]
    token = min(seen[nan_step - 1] - set().union(*(t for i, t in enumerate(seen) if i != nan_step - 1)) - {0})
    return random_model_dir(tmp_path / "nan_target", c, nan_token=token)


@pytest.mark.slow
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint_or_skips(tmp_path, prepared32):
    stop = small_config(tmp_path, "stop", steps=5, prepared=prepared32)
    stop.init.target = nan_target(tmp_path, stop, nan_step=3)
    trainer = loop.Trainer(stop)  # one compiled step for both policies
    with pytest.raises(loop.NonFiniteLossError, match=r"at step 3 .*last good checkpoint \(step 2 in "):
        loop.run(stop, trainer=trainer)
    assert ckpt.Checkpointer(stop.workdir).all_steps() == [1, 2]
    assert not (tmp_path / "stop" / "final").exists()
    assert [r["finite"] for r in read_metrics(stop.workdir)] == [1, 1, 0]

    skip = small_config(tmp_path, "skip", steps=5, prepared=prepared32)
    skip.init.target, skip.train.nan_policy = stop.init.target, "skip"
    logged = []
    out = loop.run(skip, trainer=trainer, on_log=logged.append)
    assert out["step"] == 5
    rows = read_metrics(skip.workdir)
    assert [(r["step"], r["finite"]) for r in rows] == [(1, 1), (2, 1), (3, 0), (4, 1), (5, 1)]
    assert logged == rows  # on_log gets each row as metrics.jsonl has it
    assert (tmp_path / "skip" / "final" / ckpt.MODEL_CONFIG_FILE).exists()
    assert json.loads((tmp_path / "skip" / "config.json").read_text())["train"]["nan_policy"] == "skip"


class RecordingTrainer(loop.Trainer):
    """The real Trainer, noting the order in which the loop dispatches steps, copies batches and reads metrics."""

    def __init__(self, config):
        super().__init__(config)
        self.events = []

    def global_batch(self, local_batch):
        self.events.append("batch")
        return super().global_batch(local_batch)

    def train_step(self, state, batch):
        self.events.append("dispatch")
        return super().train_step(state, batch)

    def read_metrics(self, metrics):
        self.events.append("read")
        return super().read_metrics(metrics)


def in_flight_when_read(events) -> list[tuple[int, int]]:
    """(step read, steps dispatched by then) for each metrics read, steps counted from 1."""
    dispatched, read, out = 0, 0, []
    for e in events:
        dispatched += e == "dispatch"
        if e == "read":
            read += 1
            out.append((read, dispatched))
    return out


@pytest.mark.slow
def test_loop_runs_one_step_ahead_of_its_metrics_and_a_nan_still_stops_at_the_last_good_checkpoint(
        tmp_path, prepared32):
    # checkpoints at 3 and 6 only: step 4 (NaN) is read after step 5 was dispatched
    stop = small_config(tmp_path, "stop", steps=6, prepared=prepared32)
    stop.checkpoint.every = 3
    stop.init.target = nan_target(tmp_path, stop, nan_step=4)
    trainer = RecordingTrainer(stop)
    with pytest.raises(loop.NonFiniteLossError, match=r"at step 4 .*last good checkpoint \(step 3 in "):
        loop.run(stop, trainer=trainer)
    assert ckpt.Checkpointer(stop.workdir).all_steps() == [3]
    assert [(r["step"], r["finite"]) for r in read_metrics(stop.workdir)] == [(1, 1), (2, 1), (3, 1), (4, 0)]
    reads = in_flight_when_read(trainer.events)
    assert reads == [(1, 2), (2, 3), (3, 3), (4, 5)]  # steps 3 (a save) and 6 are read before going on
    assert all(dispatched <= step + 1 for step, dispatched in reads)  # at most one step beyond the one read
    assert trainer.events[:5] == ["batch", "dispatch", "batch", "dispatch", "batch"]  # batch n+1 copied while n runs

    skip = small_config(tmp_path, "skip", steps=6, prepared=prepared32)
    skip.checkpoint.every = 3
    skip.init.target, skip.train.nan_policy = stop.init.target, "skip"
    trainer.events.clear()
    out = loop.run(skip, trainer=trainer)
    assert out["step"] == 6 and out["tokens_processed"] == 6 * 8 * 32  # exact counters, every step counted once
    assert [r["finite"] for r in read_metrics(skip.workdir)] == [1, 1, 1, 0, 1, 1]
    assert in_flight_when_read(trainer.events) == [(1, 2), (2, 3), (3, 3), (4, 5), (5, 6), (6, 6)]
    assert ckpt.Checkpointer(skip.workdir).all_steps() == [3, 6]


# --- model dirs: the identity saved with the weights (model_meta.json) ---

def tiny_model(seed: int = 0):
    cfg = model.ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32, max_positions=16)
    rng = np.random.default_rng(seed)
    return cfg, jax.tree.map(lambda s: rng.normal(0.0, 0.02, s.shape).astype(s.dtype), model.param_shapes(cfg))


def test_model_identity_is_saved_with_the_weights_and_read_back_without_them(tmp_path, capsys):
    cfg, params = tiny_model()
    ckpt.save_model(cfg, params, str(tmp_path / "m"), step=7)
    meta = json.loads((tmp_path / "m" / ckpt.MODEL_META_FILE).read_text())
    assert (meta["step"], meta["config"]) == (7, json.loads((tmp_path / "m" / ckpt.MODEL_CONFIG_FILE).read_text()))
    identity = meta["identity"]
    # What is stored is what hashing the loaded weights gives (so old score caches, and the fallback, agree).
    assert identity == ckpt.params_identity(ckpt.load_weights(str(tmp_path / "m"), "reference")[1])
    assert identity == ckpt.params_identity(params) == ckpt.params_identity(jax.device_put(params))
    # Read back from the metadata alone: the weights are not needed (here: gone), and nothing is printed.
    shutil.rmtree(tmp_path / "m" / "params")
    assert ckpt.model_identity(str(tmp_path / "m"), "reference") == identity
    assert capsys.readouterr().out == ""
    # A training workdir names its final/ model.
    ckpt.save_model(cfg, params, str(tmp_path / "run" / "final"), step=3)
    (tmp_path / "run" / ckpt.MODEL_CONFIG_FILE).write_text("{}")
    assert ckpt.stored_identity(str(tmp_path / "run")) == identity
    # Other weights, another identity: one changed value is enough.
    params["final_norm"]["scale"][0] += 1e-3
    ckpt.save_model(cfg, params, str(tmp_path / "other"))
    assert ckpt.stored_identity(str(tmp_path / "other")) not in (identity, None)


def test_a_model_without_metadata_is_hashed_with_a_note_and_convert_adds_it(tmp_path, capsys):
    from rho_jax.convert import convert

    cfg, params = tiny_model(seed=1)
    ckpt.save_model(cfg, params, str(tmp_path / "old"))
    identity = ckpt.stored_identity(str(tmp_path / "old"))
    (tmp_path / "old" / ckpt.MODEL_META_FILE).unlink()  # an Orbax dir saved before model_meta.json existed
    assert ckpt.stored_identity(str(tmp_path / "old")) is None
    assert ckpt.model_identity(str(tmp_path / "old"), "reference") == identity
    note = capsys.readouterr().out
    assert note.count("\n") == 1 and note.startswith(f"note: config.init.reference={tmp_path / 'old'} has no "
                                                     f"{ckpt.MODEL_META_FILE}")
    assert "sha256 of every weight" in note and "`rho-jax convert" in note
    convert(str(tmp_path / "old"), str(tmp_path / "new"))  # Orbax -> Orbax: the metadata is written
    assert ckpt.stored_identity(str(tmp_path / "new")) == identity
    with pytest.raises(FileExistsError, match="not empty"):
        convert(str(tmp_path / "old"), str(tmp_path / "new"))

"""Bad configs fail in `loop.run` with their own clear error, before any compile, writing nothing."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.monitoring
import numpy as np
import pytest

from rho_jax import checkpoint as ckpt
from rho_jax import config as config_lib
from rho_jax import loop, model

ROOT = Path(__file__).resolve().parent.parent


def tiny(tmp_path, prepared, **model_overrides):
    c = config_lib.base_config()
    c.model.update(vocab_size=4096, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64, max_positions=64)
    c.model.update(**model_overrides)
    c.data.update(seq_len=32, max_rows=64, prepared=str(prepared))
    c.train.update(steps=2, batch_size=8)
    c.objective.update(mode="clm")
    c.workdir = str(tmp_path / "run")
    return c


def model_dir(path: Path, c, **overrides) -> str:
    cfg = config_lib.model_config(c).replace(**overrides)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0.0, 0.02, s.shape).astype(s.dtype), model.param_shapes(cfg))
    ckpt.save_model(cfg, params, str(path))
    return str(path)


def unknown_key(c, tmp_path):
    c.train.foo = 1


def ratio_zero(c, tmp_path):
    c.objective.update(mode="slm", ratio=0.0)


def ratio_above_one(c, tmp_path):
    c.objective.update(mode="slm", ratio=1.5)


def unknown_score(c, tmp_path):
    c.objective.update(mode="slm", score="perplexity")


def reference_vocab_mismatch(c, tmp_path):
    c.objective.update(mode="slm", reference="online")
    c.init.target = model_dir(tmp_path / "target", c)
    c.init.reference = model_dir(tmp_path / "reference", c, vocab_size=512)


def tokenizer_vocab_mismatch(c, tmp_path):
    c.model.vocab_size = 1000  # the demo SentencePiece vocabulary is larger


def mesh_not_dividing_devices(c, tmp_path):
    c.mesh.update(data=3, fsdp=-1)


def batch_not_divisible(c, tmp_path):
    c.train.batch_size = 4  # 8 data-parallel devices


def seq_len_over_max_positions(c, tmp_path):
    c.data.seq_len = 128


def seq_len_over_checkpoint_max_positions(c, tmp_path):
    c.init.target = model_dir(tmp_path / "target", c, max_positions=16)


def keep_zero_checkpoints(c, tmp_path):
    c.checkpoint.keep = 0


def keep_best_without_eval(c, tmp_path):
    c.checkpoint.keep_best = True


CASES = {
    unknown_key: r"unknown config key config\.train\.foo",
    ratio_zero: r"config\.objective\.ratio=0\.0 is outside \(0, 1\]",
    ratio_above_one: r"config\.objective\.ratio=1\.5 is outside \(0, 1\]",
    unknown_score: r"config\.objective\.score='perplexity' is not a score function",
    reference_vocab_mismatch: r"vocabulary mismatch: the reference model has vocab_size=512 but the target has 4096",
    tokenizer_vocab_mismatch: r"vocabulary mismatch: the tokenizer has \d+ ids but the target model's vocab_size "
                              r"is 1000",
    mesh_not_dividing_devices: r"config\.mesh: .* does not divide the 8 devices",
    batch_not_divisible: r"config\.train\.batch_size=4 .* not divisible by the data parallelism data x fsdp = 8",
    seq_len_over_max_positions: r"config\.data\.seq_len=128 exceeds the model's maximum positions",
    seq_len_over_checkpoint_max_positions: r"config\.data\.seq_len=32 exceeds the target model's maximum "
                                           r"positions \(16\)",
    keep_zero_checkpoints: r"config\.checkpoint\.keep=0 must be >= 1",
    keep_best_without_eval: r"config\.checkpoint\.keep_best=True needs config\.eval\.every > 0",
}


@pytest.fixture
def compiles():
    events = []

    def listener(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield events
    jax.monitoring.unregister_event_duration_listener(listener)


@pytest.mark.parametrize("break_config", list(CASES), ids=lambda f: f.__name__)
def test_bad_config_fails_before_compile_and_writes_nothing(break_config, tmp_path, compiles, prepared32):
    assert jax.device_count() == 8
    c = tiny(tmp_path, prepared32)
    break_config(c, tmp_path)
    model.param_shapes(config_lib.model_config(c))  # warms the one eager op it runs (jnp.zeros in model.py)
    compiles.clear()  # making model dirs above may compile; loop.run must not
    with pytest.raises(config_lib.ConfigError, match=CASES[break_config]):
        loop.run(c)
    assert not (tmp_path / "run").exists()
    assert compiles == []


def test_cli_bad_config_exits_nonzero_with_the_error_and_writes_nothing(tmp_path):
    wd = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "rho_jax.cli", "train", f"--config={ROOT / 'configs' / 'tiny.py'}",
                          "--config.objective.ratio=1.5", f"--config.workdir={wd}"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode != 0
    assert "config.objective.ratio=1.5 is outside (0, 1]" in res.stderr
    assert not wd.exists()

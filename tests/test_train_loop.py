"""The training loop on real text: SLM with the online reference learns, and every metric is logged."""

import glob
import math
import os

import jax
import numpy as np
import pytest

from rho_jax import checkpoint as ckpt
from rho_jax import config as config_lib
from rho_jax import flops, loop, model
from rho_jax.metrics import read_metrics

REQUIRED = ("step", "loss", "loss_all", "loss_unselected", "ref_loss", "excess_mean", "threshold",
            "selected_fraction", "tokens_processed", "tokens_selected", "train_flops", "reference_flops",
            "tokens_per_s", "mfu")


@pytest.mark.slow
def test_slm_online_learns_on_real_text_and_logs_every_metric(tmp_path, prepared64):
    c = config_lib.base_config()
    c.model.update(vocab_size=4096, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_positions=64)
    c.data.update(seq_len=64, prepared=str(prepared64), max_rows=256)
    c.train.update(steps=50, batch_size=8, lr=3e-3, warmup_steps=5, log_every=5, peak_flops=1e12)
    c.objective.update(mode="slm", ratio=0.6, reference="online")
    c.checkpoint.every = 0
    ref_dir = tmp_path / "reference"
    m_cfg = config_lib.model_config(c)
    ckpt.save_model(m_cfg, jax.tree.map(np.asarray, model.init_params(m_cfg, jax.random.PRNGKey(11))), str(ref_dir))
    c.init.reference = str(ref_dir)
    c.workdir = str(tmp_path / "run")

    loop.run(c)

    rows = read_metrics(c.workdir)
    assert [r["step"] for r in rows] == list(range(5, 51, 5))
    for key in REQUIRED:
        assert all(key in r for r in rows), f"metric {key} missing"
    first, last = rows[0], rows[-1]
    assert last["loss_all"] < first["loss_all"] - 1.0, (first["loss_all"], last["loss_all"])
    # cumulative counters are exact sums, not estimates
    assert last["tokens_processed"] == 50 * 8 * 64
    per_token = flops.train_flops_per_token(m_cfg, 64)
    assert math.isclose(last["train_flops"], per_token * last["tokens_processed"], rel_tol=1e-9)
    assert math.isclose(last["reference_flops"], flops.reference_flops_per_token(m_cfg, 64) * 50 * 8 * 64,
                        rel_tol=1e-9)
    for r in rows:
        assert abs(r["selected_fraction"] - 0.6) < 0.01
        # the reference is near-uniform, so high excess means high target loss: selected > unselected
        assert r["loss"] > r["loss_unselected"]
    assert sum(r["n_selected"] for r in rows) <= last["tokens_selected"]
    assert glob.glob(os.path.join(c.workdir, "tb", "events.out.tfevents.*"))
    assert (tmp_path / "run" / "final" / ckpt.MODEL_CONFIG_FILE).exists()

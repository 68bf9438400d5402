"""A tiny Llama for tests and CPU smoke runs on the demo vocabulary (SLM, cached reference scores)."""

from rho_jax.config import base_config


def get_config():
    c = base_config()
    c.model.update(vocab_size=4096, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_positions=128)
    c.train.update(steps=20, batch_size=8, lr=1e-3, warmup_steps=2, log_every=5)
    c.data.seq_len = 64
    c.objective.reference = "cached"
    return c

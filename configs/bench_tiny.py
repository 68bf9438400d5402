"""CPU benchmark: a 4-layer d=256 Llama on the demo vocabulary (cached SLM vs CLM on CPU)."""

from rho_jax.config import base_config


def get_config():
    c = base_config()
    c.model.update(vocab_size=4096, d_model=256, n_layers=4, n_heads=8, n_kv_heads=4, d_ff=704, max_positions=256)
    c.train.update(batch_size=16, lr=1e-3)  # the demo-sized step
    c.data.seq_len = 256
    c.mesh.update(data=1, fsdp=1, tensor=1)
    return c

"""CPU benchmark at the demo model's shape (configs/demo.py): d=128, 4 layers, 4/2 heads, ff 384, V 4096,
batch 16 x seq 128. `rho-jax bench --peer --config=configs/bench_demo.py` compares it with the PyTorch peer."""

from rho_jax.config import base_config


def get_config():
    c = base_config()
    c.model.update(vocab_size=4096, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=384, max_positions=128)
    c.train.update(batch_size=16, lr=1e-3)
    c.data.seq_len = 128
    c.mesh.update(data=1, fsdp=1, tensor=1)
    return c

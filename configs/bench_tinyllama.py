"""GPU/TPU benchmark at the TinyLlama-1.1B shape, seq 2048, bf16 compute, f32 master weights.

FLOPs (rho_jax.flops): 6·N + 6·L·s·d ≈ 6.76 GFLOP per trained token; a reference forward ≈ 2.25 GFLOP/token.
"""

from rho_jax.config import base_config


def get_config():
    c = base_config()
    c.model.update(vocab_size=32000, d_model=2048, n_layers=22, n_heads=32, n_kv_heads=4, d_ff=5632,
                   max_positions=2048, rope_theta=10000.0, dtype="bfloat16", remat="dots_saveable",
                   attention="cudnn")
    c.train.update(batch_size=8, lr=8e-5)
    c.data.seq_len = 2048
    c.objective.ce_chunk = 8000  # never hold f32 [B, L, 32000] logits
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    return c

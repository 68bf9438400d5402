"""FLOPs per token and MFU.

Per processed token (model FLOPs: 2 per multiply-add, backward = 2x forward):
  training   ≈ 6·N_matmul + 6·L·s·d   (forward + backward; causal attention halves s²)
  reference  ≈ 2·N_matmul + 2·L·s·d   (one forward)
where N_matmul counts matmul parameters (layers + LM head, not the embedding lookup), L the
layers, s the sequence length and d the attention width (heads × head_dim).
"""

from __future__ import annotations

import jax

# Dense bf16 peak FLOP/s per chip, from vendor spec sheets.
PEAK_FLOPS = {
    "h100": 989e12,
    "h200": 989e12,
    "a100": 312e12,
    "l4": 121e12,
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v5": 459e12,
    "tpu v6 lite": 918e12,
    "tpu v6e": 918e12,
}


def matmul_params(cfg) -> int:
    d, f, hd = cfg.d_model, cfg.d_ff, cfg.hd
    per_layer = d * hd * (2 * cfg.n_heads + 2 * cfg.n_kv_heads) + 3 * d * f
    return cfg.n_layers * per_layer + d * cfg.vocab_size


def attention_flops_per_token(cfg, seq_len: int, passes: int) -> float:
    # QK^T and AV: 2·s·d multiply-adds each per token and layer -> 4·s·d FLOPs, halved when causal.
    return passes * cfg.n_layers * seq_len * cfg.n_heads * cfg.hd * 2.0


def train_flops_per_token(cfg, seq_len: int) -> float:
    return 6.0 * matmul_params(cfg) + attention_flops_per_token(cfg, seq_len, 3)


def reference_flops_per_token(cfg, seq_len: int) -> float:
    return 2.0 * matmul_params(cfg) + attention_flops_per_token(cfg, seq_len, 1)


def device_peak_flops(device: jax.Device | None = None, override: float = 0.0) -> float:
    """Peak FLOP/s of one device: `override` when > 0, else from PEAK_FLOPS, else 0 (unknown)."""
    if override > 0:
        return float(override)
    kind = (device or jax.devices()[0]).device_kind.lower()
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key in kind:
            return PEAK_FLOPS[key]
    return 0.0


def mfu(flops_per_s: float, n_devices: int, peak_per_device: float) -> float | None:
    if peak_per_device <= 0:
        return None
    return flops_per_s / (n_devices * peak_per_device)

"""Rho-1 math, 7B reference model: Mistral-7B-v0.1 trained with plain CLM on clean math (the Rho-1 paper's 7B reference).

Paper settings: seq 4096, LR 1e-5; the clean corpus and its 3 epochs of 0.5B tokens as the 1B reference
(configs/tinyllama_owm_reference.py explains how to register the corpus as `rho_jax.clean_math`).
Weights: the same Mistral-7B Orbax dir as configs/mistral7b_owm_slm.py (see there how to make it).

Estimate (rho_jax.estimate.summary(get_config(), SLICE); tests keep it in sync):
  v5p-128 (64 chips x 459 TFLOP/s bf16 peak) at an assumed 40% of peak on executed FLOPs: 1.50B tokens x 47.22
  GFLOP/token executed (model 45.88: train 45.88; remat recompute (dots_with_no_batch_dims_saveable) 1.34) =
  7.08e+19 FLOPs -> 1.7 h.
"""

from rho_jax.config import base_config

SLICE = "v5p-128"  # 64 v5p chips (128 TensorCores) on 16 hosts; JAX sees 64 devices
BUCKET = "gs://YOUR_BUCKET"
TOKENS = 3 * 500_000_000  # paper: 0.5B clean math tokens x 3 epochs


def get_config():
    c = base_config()
    c.workdir = f"{BUCKET}/mistral7b-owm/reference"  # its `final` model is the SLM run's init.reference
    c.init.target = f"{BUCKET}/models/Mistral-7B"  # the reference starts from the same base model
    # Mistral-7B-v0.1 shape, so the config validates and estimates without the weights.
    c.model.update(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336,
                   rope_theta=10000.0, rms_eps=1e-5, max_positions=32768, tie_embeddings=False,
                   sliding_window=4096, arch="mistral")
    c.model.dtype = "bfloat16"  # bf16 compute; master weights and Adam state stay f32
    c.model.remat = "dots_with_no_batch_dims_saveable"  # weight matmuls only: no [B, H, L, L] scores kept
    c.model.attention = "xla"  # cudnn is GPU-only
    c.objective.mode = "clm"  # the reference learns every token of the clean corpus
    c.objective.ce_chunk = 8000  # vocabulary-chunked CE: never hold f32 [B, L, 32000] logits
    c.data.source = "clean_math"  # your registered high-quality math task
    c.data.prepared = f"{BUCKET}/mistral7b-owm/prepared-reference"  # `rho-jax prepare` output of data.source
    c.data.seq_len = 4096  # paper
    c.data.vocab = f"{BUCKET}/models/Mistral-7B.tokenizer.model"  # must match the SLM run's tokenizer
    c.train.batch_size = 256  # x 4096 = 1M tokens per step (not stated for the reference)
    c.train.steps = TOKENS // (c.train.batch_size * c.data.seq_len)  # 1430 steps = 3 epochs of 0.5B tokens
    c.train.grad_accum = 2  # micro-batch 128 = 2 sequences per chip
    c.train.lr = 1e-5  # paper
    c.train.warmup_steps = 30  # not stated in the paper: ~2% of the run, then cosine
    c.train.peak_flops = 459e12  # v5p bf16 peak per chip, for MFU
    c.checkpoint.every = 200  # ~15 min at the estimate below
    c.mesh.update(data=-1, fsdp=16, tensor=1)  # FSDP in groups of 16 chips, 4-way data parallel across them
    return c

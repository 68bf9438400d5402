"""Rho-1 math, 1B reference model: TinyLlama-1.1B (3T) trained with plain CLM on clean math (the Rho-1 paper's 1B reference).

Paper settings: 0.5B high-quality math tokens, 3 epochs (1.5B processed tokens), max LR 5e-5 with a
cosine schedule, seq 2048. The paper's curated corpus is not public: register your own as the SeqIO
task `rho_jax.clean_math` (JSONL of {"text": ...}: `rho_jax.data.tasks.register_file_task`) or point
config.data.source at another registered task. The exported `<workdir>/final` becomes
config.init.reference of configs/tinyllama_owm_slm.py, which scores OpenWebMath with it.

Weights: the same TinyLlama Orbax dir as configs/tinyllama_owm_slm.py (see there how to make it).

Estimate (rho_jax.estimate.summary(get_config(), SLICE); tests keep it in sync):
  v4-32 (16 chips x 275 TFLOP/s bf16 peak) at an assumed 40% of peak on executed FLOPs: 1.50B tokens x 7.08
  GFLOP/token executed (model 6.76: train 6.76; remat recompute (dots_with_no_batch_dims_saveable) 0.32) =
  1.06e+19 FLOPs -> 1.7 h.
"""

from rho_jax.config import base_config

SLICE = "v4-32"  # 16 v4 chips on 4 hosts; JAX sees 16 devices
BUCKET = "gs://YOUR_BUCKET"
TOKENS = 3 * 500_000_000  # paper: 0.5B clean math tokens x 3 epochs


def get_config():
    c = base_config()
    c.workdir = f"{BUCKET}/tinyllama-owm/reference"  # its `final` model is the SLM run's init.reference
    c.init.target = f"{BUCKET}/models/TinyLlama-1.1B"  # the reference starts from the same base model
    # TinyLlama-1.1B shape, so the config validates and estimates without the weights.
    c.model.update(vocab_size=32000, d_model=2048, n_layers=22, n_heads=32, n_kv_heads=4, d_ff=5632,
                   rope_theta=10000.0, rms_eps=1e-5, max_positions=2048, tie_embeddings=False, arch="llama")
    c.model.dtype = "bfloat16"  # bf16 compute; master weights and Adam state stay f32
    c.model.remat = "dots_with_no_batch_dims_saveable"  # weight matmuls only (see tinyllama_owm_slm.py)
    c.model.attention = "xla"  # cudnn is GPU-only
    c.objective.mode = "clm"  # the reference learns every token of the clean corpus
    c.objective.ce_chunk = 8000  # vocabulary-chunked CE: never hold f32 [B, L, 32000] logits
    c.data.source = "clean_math"  # your registered high-quality math task (see above)
    c.data.prepared = f"{BUCKET}/tinyllama-owm/prepared-reference"  # `rho-jax prepare` output of data.source
    c.data.seq_len = 2048  # paper
    c.data.vocab = f"{BUCKET}/models/TinyLlama-1.1B.tokenizer.model"  # must match the SLM run's tokenizer
    c.train.batch_size = 512  # x 2048 = 1M tokens per step, as the SLM run (not stated for the reference)
    c.train.steps = TOKENS // (c.train.batch_size * c.data.seq_len)  # 1430 steps = 3 epochs of 0.5B tokens
    c.train.grad_accum = 8  # micro-batch 64 = 4 sequences per chip
    c.train.lr = 5e-5  # paper: max LR
    c.train.warmup_steps = 30  # not stated in the paper: ~2% of the run, then cosine
    c.train.min_lr_ratio = 0.1  # cosine decays to 5e-6
    c.train.peak_flops = 275e12  # v4 bf16 peak per chip, for MFU
    c.checkpoint.every = 200  # ~15 min at the estimate below
    c.mesh.update(data=-1, fsdp=16, tensor=1)  # FSDP over the whole slice (data resolves to 1)
    return c

"""Rho-1 math, 7B: Mistral-7B-v0.1 continued on OpenWebMath with SLM, ratio 70% (the Rho-1 paper's 7B math run).

Paper settings: LR 2e-5, ratio 0.7; the same 15B OpenWebMath tokens as the 1B run (10.5B selected),
batch 1M tokens. Sequences are 4096 tokens, the length the reference (configs/mistral7b_owm_reference.py)
was trained and scores at; Mistral's 4096-token sliding window then covers the whole sequence.

Weights (not in the repo; needs the internet once):
  huggingface-cli download mistralai/Mistral-7B-v0.1 --local-dir Mistral-7B
  rho-jax convert Mistral-7B gs://YOUR_BUCKET/models/Mistral-7B --to=orbax
  gsutil cp Mistral-7B/tokenizer.model gs://YOUR_BUCKET/models/Mistral-7B.tokenizer.model

Full sequence: as in configs/tinyllama_owm_slm.py (prepare on Dataflow, score on the slice, train), with
--config=configs/mistral7b_owm_slm.py.

Estimate (rho_jax.estimate.summary(get_config(), SLICE); tests keep it in sync):
  v5p-128 (64 chips x 459 TFLOP/s bf16 peak) at an assumed 40% of peak on executed FLOPs: 15.00B tokens x 57.96
  GFLOP/token executed (model 45.88: train 45.88; remat recompute (full) 12.07) = 8.69e+20 FLOPs -> 20.6 h.
  Offline scoring (reference forward): 15.29 GFLOP/token = 2.29e+20 FLOPs -> 5.4 h. Whole pipeline: reference
  training 7.08e+19 (v5p-128) + scoring 2.29e+20 + SLM 8.69e+20 = 1.17e+21 FLOPs -> 27.6 h.

Exact global selection, per chip (compiled step's memory analysis on 64 simulated devices, CPU compiler's
buffer assignment; `python scripts/selection_memory.py --config=configs/mistral7b_owm_slm.py`, 2026-11-30):
  (a) grad_accum=2 + no-grad selection pass, remat dots_with_no_batch_dims: 66.7 GiB, 62.51 GFLOP/token executed
  (b) grad_accum=1, one pass, remat full, attention_chunk=512 (this config): 24.6 GiB, 62.25 GFLOP/token executed
"""

from rho_jax.config import base_config

SLICE = "v5p-128"  # 64 v5p chips (128 TensorCores) on 16 hosts; JAX sees 64 devices
REFERENCE = "mistral7b_owm_reference"  # the config that trains this run's reference (whole-pipeline estimate)
BUCKET = "gs://YOUR_BUCKET"
TOKENS = 15_000_000_000  # paper: 15B processed OpenWebMath tokens


def get_config():
    c = base_config()
    c.workdir = f"{BUCKET}/mistral7b-owm/slm"  # checkpoints, metrics and the final model
    c.init.target = f"{BUCKET}/models/Mistral-7B"  # Orbax dir converted from the HF checkpoint (see above)
    c.init.reference = f"{BUCKET}/mistral7b-owm/reference/final"  # the reference run's exported model
    # Mistral-7B-v0.1 shape, so the config validates and estimates without the weights.
    c.model.update(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336,
                   rope_theta=10000.0, rms_eps=1e-5, max_positions=32768, tie_embeddings=False,
                   sliding_window=4096, arch="mistral")
    c.model.dtype = "bfloat16"  # bf16 compute; master weights and Adam state stay f32
    # One pass over the whole per-chip batch (4 rows) feeds both the exact top-k and the gradient: no selection
    # forward. Full remat recomputes the layers instead; chunked attention keeps [4, H, L, L] scores from existing.
    c.model.remat = "full"
    c.model.attention_chunk = 512  # query blocks of 512 rows (see the docstring for the measured memory)
    c.model.attention = "xla"  # cudnn is GPU-only
    c.objective.mode = "slm"  # selective language modeling
    c.objective.ratio = 0.7  # paper: 70% of tokens for the 7B model
    c.objective.reference = "cached"  # score once offline (rho-jax score)
    c.objective.ce_chunk = 8000  # vocabulary-chunked CE: never hold f32 [B, L, 32000] logits
    c.data.source = "openwebmath"  # rho_jax.data real-scale corpus (TFDS HuggingFace builder)
    c.data.prepared = f"{BUCKET}/mistral7b-owm/prepared"  # `rho-jax prepare` output: ArrayRecord rows + manifest
    c.data.seq_len = 4096  # the reference's training and scoring length
    c.data.vocab = f"{BUCKET}/models/Mistral-7B.tokenizer.model"  # Mistral SentencePiece, 32000 pieces
    c.data.score_cache = f"{BUCKET}/mistral7b-owm/scores"  # written by `rho-jax score`
    c.train.batch_size = 256  # x 4096 = 1M tokens per step
    c.train.steps = TOKENS // (c.train.batch_size * c.data.seq_len)  # 14305 steps = 15.0B tokens
    c.train.grad_accum = 1  # 4 sequences per chip in one pass: 24.6 GiB of 95 (grad_accum=2 + selection: 66.7)
    c.train.lr = 2e-5  # paper
    c.train.warmup_steps = 100  # not stated in the paper: ~0.7% of the run
    c.train.peak_flops = 459e12  # v5p bf16 peak per chip, for MFU
    c.checkpoint.every = 500  # ~45 min at the estimate below
    c.mesh.update(data=-1, fsdp=16, tensor=1)  # FSDP in groups of 16 chips, 4-way data parallel across them
    return c

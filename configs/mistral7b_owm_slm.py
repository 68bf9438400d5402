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
  v5p-128 (64 chips x 459 TFLOP/s bf16 peak) at an assumed 40% of peak on executed FLOPs: 15.00B tokens x 47.76
  GFLOP/token executed (model 45.88: train 45.88; remat recompute (dots_with_no_batch_dims_saveable) 1.87) =
  7.16e+20 FLOPs -> 16.9 h. Offline scoring (reference forward): 15.29 GFLOP/token = 2.29e+20 FLOPs -> 5.4 h.
  Whole pipeline: reference training 7.08e+19 (v5p-128) + scoring 2.29e+20 + SLM 7.16e+20 = 1.02e+21 FLOPs ->
  24.0 h.

Per chip, from XLA's TPU compiler (`rho-jax compile --config=configs/mistral7b_owm_slm.py`, libtpu 0.0.42.1,
2026-12-06; BENCHMARKS.md has every program and the collectives), grad_accum=1 (one pass), attention_chunk=512:
  remat dots_with_no_batch_dims_saveable (this config): 58.57 GiB of 95 on v5p-128, 52.59 GFLOP/token executed
  remat full: 20.75 GiB (20.31 of 32 on v6e-64), 62.79 GFLOP/token: 19% more work; use it on 32 GiB chips
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
    # forward. Only the attention dots are recomputed (XLA:TPU: 58.6 GiB per chip); chunked attention keeps
    # [4, H, L, L] scores from existing.
    c.model.remat = "dots_with_no_batch_dims_saveable"  # 58.6 GiB of 95 on v5p; "full" on 32 GiB chips (docstring)
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
    c.train.grad_accum = 1  # 4 sequences per chip in one pass: 58.57 GiB of 95 (XLA:TPU, see the docstring)
    c.train.lr = 2e-5  # paper
    c.train.warmup_steps = 100  # not stated in the paper: ~0.7% of the run
    c.train.peak_flops = 459e12  # v5p bf16 peak per chip, for MFU
    c.checkpoint.every = 500  # ~45 min at the estimate below
    c.mesh.update(data=-1, fsdp=16, tensor=1)  # FSDP in groups of 16 chips, 4-way data parallel across them
    return c

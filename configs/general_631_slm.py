"""Rho-1 general, 1B: TinyLlama-1.1B (3T) continued on SlimPajama : StarCoderData : OpenWebMath = 6 : 3 : 1
with SLM (the Rho-1 paper's general-domain 1B run).

Paper settings: 80B processed tokens, LR 1e-4, batch 1M tokens (512 x 2048). The paper gives no
ratio for this run; 0.6 is its 1B math setting. The reference (a TinyLlama trained on high-quality general
data, which you provide) scores the mixture once: `rho-jax score`, then training reads the cache.
Weights and tokenizer: as configs/tinyllama_owm_slm.py. StarCoderData is gated: accept its terms on the
Hugging Face hub before TFDS can read it.

Full sequence (gs:// paths throughout; README "Data at scale" has the Dataflow options):
  1. prepare once on Dataflow, no accelerator: tokenise + pack into ArrayRecord rows at data.prepared
     (one sub-directory per mixture component + mixture.json with the 6 : 3 : 1 rates; Grain mixes them)
       rho-jax prepare --config=configs/general_631_slm.py \
         --config.prepare.beam_args="--runner=DataflowRunner --project=P --region=R --temp_location=gs://YOUR_BUCKET/tmp"
  2. score on the slice, with this (the training) config: one job on training's mesh and micro-batch, every
     host reading its own row shards (shard i -> host i % hosts), into data.score_cache, resumable per shard
       tpu/run.sh --run-name score -- rho-jax score --config=configs/general_631_slm.py
  3. train on the slice: Grain reads each host's rows of every global batch (joined with their scores);
     the reader's position is in every checkpoint, so a preempted run resumes on the very next batch
       tpu/run.sh --run-name slm --detach -- rho-jax train --config=configs/general_631_slm.py

Estimate (rho_jax.estimate.summary(get_config(), SLICE); tests keep it in sync):
  v5litepod-64 (64 chips x 197 TFLOP/s bf16 peak) at an assumed 40% of peak on executed FLOPs: 80.00B tokens x
  8.60 GFLOP/token executed (model 6.76: train 6.76; remat recompute (full) 1.84) = 6.88e+20 FLOPs -> 37.9 h.
  Offline scoring (reference forward): 2.25 GFLOP/token = 1.8e+20 FLOPs -> 9.9 h.

Per chip, from XLA's TPU compiler (`rho-jax compile --config=configs/general_631_slm.py`, libtpu 0.0.42.1,
2026-12-06): this config (grad_accum=1, one pass, remat full, attention_chunk=256): train step 5.13 GiB of
16 on v5litepod-64 (5.71 of 32 on v4-128), 9.43 GFLOP/token executed. remat dots_with_no_batch_dims_saveable
would execute 8.00 GFLOP/token but needs 15.73 GiB of the 16: too close to the limit to ship.
The reference (your general-data model) trains outside these configs: add its training FLOPs for the
whole-pipeline cost, as configs/tinyllama_owm_slm.py's estimate does with its REFERENCE.
"""

from rho_jax.config import base_config

SLICE = "v5litepod-64"  # 64 v5e chips on 16 hosts; JAX sees 64 devices
BUCKET = "gs://YOUR_BUCKET"
TOKENS = 80_000_000_000  # paper: 80B processed tokens


def get_config():
    c = base_config()
    c.workdir = f"{BUCKET}/tinyllama-general/slm"  # checkpoints, metrics and the final model
    c.init.target = f"{BUCKET}/models/TinyLlama-1.1B"  # Orbax dir (see configs/tinyllama_owm_slm.py)
    c.init.reference = f"{BUCKET}/tinyllama-general/reference/final"  # your general reference model (scoring)
    # TinyLlama-1.1B shape, so the config validates and estimates without the weights.
    c.model.update(vocab_size=32000, d_model=2048, n_layers=22, n_heads=32, n_kv_heads=4, d_ff=5632,
                   rope_theta=10000.0, rms_eps=1e-5, max_positions=2048, tie_embeddings=False, arch="llama")
    c.model.dtype = "bfloat16"  # bf16 compute; master weights and Adam state stay f32
    # One pass over the whole per-chip batch (8 rows) feeds both the exact top-k and the gradient: no selection
    # forward. Full remat recomputes the layers instead; chunked attention keeps [8, H, L, L] scores from existing.
    c.model.remat = "full"
    c.model.attention_chunk = 256  # query blocks of 256 rows (see the docstring for the measured memory)
    c.model.attention = "xla"  # cudnn is GPU-only
    c.objective.mode = "slm"  # selective language modeling
    c.objective.ratio = 0.6  # the paper's 1B setting
    c.objective.reference = "cached"  # score once offline (rho-jax score)
    c.objective.ce_chunk = 8000  # vocabulary-chunked CE: never hold f32 [B, L, 32000] logits
    c.data.source = "general_631"  # rho_jax.data mixture SlimPajama : StarCoderData : OpenWebMath = 6 : 3 : 1
    c.data.prepared = f"{BUCKET}/tinyllama-general/prepared"  # `rho-jax prepare` output: ArrayRecord rows + manifest
    c.data.seq_len = 2048  # TinyLlama's context
    c.data.vocab = f"{BUCKET}/models/TinyLlama-1.1B.tokenizer.model"  # Llama-2 SentencePiece, 32000 pieces
    c.data.score_cache = f"{BUCKET}/tinyllama-general/scores"  # written by `rho-jax score`
    c.train.batch_size = 512  # x 2048 = 1M tokens per step
    c.train.steps = TOKENS // (c.train.batch_size * c.data.seq_len)  # 76293 steps = 80.0B tokens
    c.train.grad_accum = 1  # 8 sequences per chip in one pass: 7.5 GiB of 16 (grad_accum=4 + selection: 11.5)
    c.train.lr = 1e-4  # paper
    c.train.warmup_steps = 500  # not stated in the paper: ~0.7% of the run
    c.train.peak_flops = 197e12  # v5e bf16 peak per chip, for MFU
    c.checkpoint.every = 1000  # ~30 min at the estimate below
    c.mesh.update(data=-1, fsdp=16, tensor=1)  # FSDP in groups of 16 chips, 4-way data parallel across them
    return c

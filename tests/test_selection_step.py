"""The selection plug-ins inside the sharded train step: each changes the update when switched on,
target_loss runs without a reference, and the EMA reference lives (and is checkpointed) in the state."""

import dataclasses

import jax
import numpy as np
import pytest
from helpers import max_diff, mesh_of, packed_batch, run_steps, tiny_config, with_cached_scores

from rho_jax.batch import INPUT_KEYS
from rho_jax import checkpoint as ckpt
from rho_jax import config as config_lib
from rho_jax import ce as ce_lib, loop, model, objective, sharding, train

MESH = (2, 2, 2)


@pytest.fixture(scope="module")
def cached_batches():
    m_cfg = config_lib.model_config(tiny_config())
    ref = model.init_params(m_cfg, jax.random.PRNGKey(3))
    return [with_cached_scores(packed_batch(s), m_cfg, ref) for s in range(2)]


@pytest.fixture(scope="module")
def slm_baseline(cached_batches):
    return run_steps(tiny_config(mode="slm", reference="cached", ratio=0.5), mesh_of(MESH), cached_batches)


@pytest.mark.parametrize("option", [dict(scope="document"), dict(weighting="prob"), dict(score="target_loss"),
                                    dict(goldfish_k=3, goldfish_h=2)])
def test_option_changes_the_update(option, cached_batches, slm_baseline):
    c = tiny_config(mode="slm", reference="cached", ratio=0.5, **option)
    config_lib.validate(c, 8)
    params, history = run_steps(c, mesh_of(MESH), cached_batches)
    assert max_diff(params, slm_baseline[0]) > 1e-4, option
    if "goldfish_k" in option:  # dropped targets are not valid: fewer to count and to select
        assert all(h["n_valid"] < b["n_valid"] for h, b in zip(history, slm_baseline[1]))
    if option.get("scope") == "document":  # whole segments: not the token count of the batch scope
        assert [h["n_selected"] for h in history] != [b["n_selected"] for b in slm_baseline[1]]


def test_target_loss_needs_no_reference_model():
    c = tiny_config(mode="slm", score="target_loss", reference="online", ratio=0.5)
    assert c.init.reference == ""
    config_lib.validate(c, 8)
    models = loop.build_models(c)  # no init.reference needed
    assert models[2] is None
    spec = train.StepSpec.from_config(c, models[0], None)
    assert not spec.online and spec.ref_model is None and train.batch_keys(spec) == INPUT_KEYS
    params, history = run_steps(c, mesh_of((8, 1, 1)), [packed_batch(0)])
    assert history[0]["finite"] == 1 and 0.49 < history[0]["selected_fraction"] < 0.52
    c.objective.score = "excess"  # a reference score: training needs the reference model
    config_lib.validate(c, 8)  # the schema and values are fine ...
    with pytest.raises(config_lib.ConfigError, match="init.reference"):
        config_lib.validate(c, 8, purpose="train")  # ... but a training run cannot start without it


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 2, 2)])
def test_ema_reference_is_the_ema_before_each_update(shape):
    """reference='ema' == an online reference holding the numpy EMA: ema_t+1 = d ema_t + (1-d) params_t+1."""
    d = 0.5
    c = tiny_config(mode="slm", reference="ema", score="reverse_excess", ratio=0.5, ema_decay=d)
    config_lib.validate(c, 8)
    mesh = mesh_of(shape)
    m_cfg = config_lib.model_config(c)
    spec = train.StepSpec.from_config(c, m_cfg, None)
    assert spec.ema and spec.ref_model == m_cfg
    tx = train.make_optimizer(c.train)
    step = train.compile_train_step(spec, tx, mesh)
    state = train.init_state(spec, tx, mesh, jax.random.PRNGKey(0))
    buf = lambda t: jax.tree.leaves(t)[0].addressable_shards[0].data.unsafe_buffer_pointer()  # noqa: E731
    assert buf(state.ema_params) != buf(state.params)  # separate buffers: the state is donated
    host = lambda t: jax.tree.map(lambda x: np.asarray(x, np.float64), t)  # noqa: E731
    emas, params = [host(state.ema_params)], [host(state.params)]
    batches = [packed_batch(s) for s in range(3)]
    for b in batches:
        state, _ = step(state, b)
        params.append(host(state.params))
        emas.append(host(state.ema_params))
    assert max_diff(emas[0], params[0]) == 0
    for t in range(1, 4):
        want = jax.tree.map(lambda e, p: d * e + (1 - d) * p, emas[t - 1], params[t])
        assert max_diff(emas[t], want) <= 1e-6
    # the same updates from an online reference that holds the EMA of the step before (and breaks ties as it)
    c_on = tiny_config(mode="slm", reference="online", score="reverse_excess", ratio=0.5)
    spec_on = dataclasses.replace(train.StepSpec.from_config(c_on, m_cfg, m_cfg), random_ties=True)
    step_on = train.compile_train_step(spec_on, tx, mesh)
    s_on = train.init_state(spec_on, tx, mesh, jax.random.PRNGKey(0))
    for t, b in enumerate(batches):
        ref = sharding.place(jax.tree.map(np.float32, emas[t]), step_on.ref_shardings)
        s_on, _ = step_on(s_on, b, ref)
        assert max_diff(host(s_on.params), params[t + 1]) <= 1e-5, t
    # and it changes the update: CLM on the same batches ends elsewhere
    p_clm, _ = run_steps(tiny_config(mode="clm"), mesh, batches)
    assert max_diff(p_clm, params[-1]) > 1e-4


def test_accumulated_statistics_read_the_ce_the_selection_saw():
    """Exact accumulation selects on a no-grad CE pass; its logged statistics read that same pass. The EMA starts
    equal to the target, so every excess of the first step is exactly 0 (the gradient pass's CE may differ in
    the last bits)."""
    c = tiny_config(mode="slm", reference="ema", score="reverse_excess", ratio=0.5)
    c.train.grad_accum = 2
    _, history = run_steps(c, mesh_of((1, 1, 1)), [packed_batch(0)])
    assert history[0]["excess_mean"] == 0.0 and history[0]["n_selected"] > 0


def test_ema_params_are_checkpointed_with_the_state(tmp_path):
    c = tiny_config(mode="slm", reference="ema", score="reverse_excess", ema_decay=0.9)
    mesh = mesh_of((2, 2, 2))
    m_cfg = config_lib.model_config(c)
    spec = train.StepSpec.from_config(c, m_cfg, None)
    tx = train.make_optimizer(c.train)
    step = train.compile_train_step(spec, tx, mesh)
    state = train.init_state(spec, tx, mesh, jax.random.PRNGKey(0))
    for s in range(2):  # the warmup's first learning rate is 0: the second step moves params off the EMA
        state, _ = step(state, packed_batch(s))
    saver = ckpt.Checkpointer(str(tmp_path), every=1, async_save=False)
    saver.save(2, state, {}, force=True)
    saver.wait()
    saver.close()
    shapes = jax.eval_shape(lambda r: train.init_state(spec, tx, mesh, r), jax.eval_shape(jax.random.PRNGKey, 0))
    restored, _, at = ckpt.Checkpointer(str(tmp_path)).restore(ckpt.abstract_like(shapes, step.state_shardings))
    assert at == 2
    assert max_diff(jax.device_get(restored.ema_params), jax.device_get(state.ema_params)) == 0
    assert max_diff(jax.device_get(restored.ema_params), jax.device_get(restored.params)) > 0
    assert restored.ema_params["embedding"].sharding == step.state_shardings.ema_params["embedding"]
    assert sharding.replicated(mesh) != step.state_shardings.ema_params["embedding"]


@pytest.mark.parametrize("fields,match", [
    (dict(goldfish_k=1), "goldfish_k=1"), (dict(goldfish_k=4, goldfish_h=0), "goldfish_h=0"),
    (dict(ema_decay=1.0), "ema_decay"), (dict(reference="ema", score="target_loss"), "reads no reference"),
    (dict(scope="documents"), "scope"), (dict(weighting="dft"), "weighting")])
def test_plugin_config_errors_name_the_field(fields, match):
    c = tiny_config(mode="slm", **fields)
    with pytest.raises(config_lib.ConfigError, match=match):
        config_lib.validate(c)


def test_ema_reference_breaks_the_first_steps_ties_at_random():
    """At step 0 the EMA equals the target, so every score is 0: the flat index would select the first rows
    whole; random ties (the run's rng) spread the selection over the rows, still exactly k tokens."""
    c = tiny_config(mode="slm", reference="ema", score="reverse_excess", ratio=0.5)
    m_cfg = config_lib.model_config(c)
    spec = train.StepSpec.from_config(c, m_cfg, None)
    assert spec.random_ties and not train.StepSpec.from_config(tiny_config(mode="slm"), m_cfg, m_cfg).random_ties
    mesh = mesh_of((1, 1, 1))
    tx = train.make_optimizer(c.train)
    state = train.init_state(spec, tx, mesh, jax.random.PRNGKey(0))
    batch = packed_batch(0)
    picked = {}
    for ties in (False, True):
        s = dataclasses.replace(spec, random_ties=ties)
        *_, weight_BxL, stats = jax.jit(lambda p, e, r, s=s: train.loss_and_grads(s, p, batch, 0, r, e))(
            state.params, state.ema_params, jax.random.PRNGKey(1))
        assert float(stats["threshold"]) == 0.0  # EMA == target: every score is 0
        picked[ties] = np.asarray(weight_BxL).sum(axis=1)
    _, valid_BxL = ce_lib.shift_targets(batch["tokens"], batch["segment_ids"])
    k = int(objective.compute_k(int(np.sum(valid_BxL)), 0.5))
    assert picked[False].sum() == picked[True].sum() == k
    assert picked[False][-3:].sum() == 0  # by index: the first rows only
    assert (picked[True] > 0).all()  # at random: every row has selected tokens

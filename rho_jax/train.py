"""The pure train step: `train_step(state, batch) -> (state, metrics)`, jitted with explicit
NamedShardings and a donated state.

Per step (SLM: one target forward and backward, plus one reference forward when online):
  ref_BxL   = batch['ref_ce']                                # cached: from the score cache; online: the
                                                             # same compiled scorer (rho_jax.score) just
                                                             # before the step, on the same micro-batches;
                                                             # ema: the EMA of the target, inside the step
  ce_BxL    = ce.token_ce(target, tokens, targets)           # f32, every position is attention context
  selection = slm_objective(selector, ScoreInputs(sg(ce), valid, ref))  # exact global top-k over the batch
  loss      = sum(ce * weight) / sum(weight)                 # normalised once over the global batch

Online and cached SLM therefore run the same jitted step on bit-identical inputs: the same update.

With gradient accumulation (rho_jax.gradients, over rho_jax.microbatch's micro-batches) the selection
still runs over the whole global batch: a no-grad pass computes the scores of every micro-batch first,
then the gradient pass reuses those weights with the global normaliser. scope='micro_batch' (approximate)
skips that pass and selects the top k within each micro-batch instead. The statistics
(objective.selection_stats) are computed apart, from the joined weights and CE.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from rho_jax import ce as ce_lib
from rho_jax import goldfish, gradients, microbatch, model, objective, sharding
from rho_jax import config as config_lib
from rho_jax import score as score_lib
from rho_jax.batch import INPUT_KEYS
from rho_jax.reference import ReferenceKind, ReferenceMode
from rho_jax.score import reference_forward


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of updates applied
    params: Any  # f32 master weights
    opt_state: Any  # f32 optimizer state
    rng: jax.Array  # PRNG key for the `random` score and future dropout
    ema_params: Any = None  # reference='ema': f32 EMA of params, sharded like them; else None


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Everything static about a step (hashable): built once from the config."""

    model: model.ModelConfig
    ref_model: model.ModelConfig | None
    mode: str = "slm"
    ratio: float = 0.6
    ratio_end: float | None = None  # None: a constant ratio
    total_steps: int = 1
    score: str = "excess"
    scope: str = "batch"
    weighting: str = "hard"
    temperature: float = 1.0
    ref: ReferenceMode = ReferenceMode(ReferenceKind.NONE)  # the resolved reference (rho_jax.reference)
    ce_chunk: int = 0
    grad_accum: int = 1
    goldfish_k: int = 0
    goldfish_h: int = 13
    random_ties: bool = False  # score ties broken at random (objective.random_tiebreak): ReferenceMode.random_ties

    @classmethod
    def from_config(cls, config, target_cfg: model.ModelConfig, ref_cfg: model.ModelConfig | None):
        """From the config's typed view (config.run_spec_of: the objective and the resolved reference)."""
        run = config_lib.run_spec_of(config)
        o, ref = run.objective, run.reference
        ref_model = ref_cfg if ref.loads_checkpoint else target_cfg if ref.target_shaped else None
        return cls(model=target_cfg, ref_model=ref_model,
                   mode=o.mode, ratio=o.ratio, ratio_end=o.ratio_end,
                   total_steps=run.steps, score=o.score, scope=o.scope, weighting=o.weighting,
                   temperature=o.temperature, ref=ref, ce_chunk=o.ce_chunk, grad_accum=run.grad_accum,
                   goldfish_k=o.goldfish_k, goldfish_h=o.goldfish_h, random_ties=ref.random_ties)

    @property
    def slm(self) -> bool:
        return self.mode == "slm"

    # What the step does for the reference, read from the resolved ReferenceMode (decided in reference.py).
    @property
    def uses_ref(self) -> bool:
        """Whether the score reads a reference at all (`random` and `target_loss` do not)."""
        return self.ref.scored

    @property
    def online(self) -> bool:
        """A separate reference model's forward runs in the step (its params are passed to the step)."""
        return self.ref.loads_checkpoint

    @property
    def ema(self) -> bool:
        """The reference is a copy of the target's params kept in TrainState.ema_params and scored in the step."""
        return self.ref.in_step and self.ref.target_shaped

    @property
    def cached(self) -> bool:  # the data layer supplies ref_ce whatever the score (stats use it)
        return self.ref.kind is ReferenceKind.CACHED

    @property
    def needs_entropy(self) -> bool:
        return self.slm and objective.needs_ref_entropy(self.score)


def learning_rate_schedule(tc) -> optax.Schedule:
    """Linear warmup to train.lr, then cosine decay to lr * min_lr_ratio at train.steps."""
    warmup = min(int(tc.warmup_steps), max(int(tc.steps) - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=tc.lr, warmup_steps=warmup,
        decay_steps=max(int(tc.steps), warmup + 1), end_value=tc.lr * tc.min_lr_ratio)


def _decay_mask(params):
    # No weight decay on norm scales (they live under *_norm); every matrix decays.
    return flax.traverse_util.path_aware_map(lambda path, _: not any("norm" in p for p in path), params)


def make_optimizer(tc) -> optax.GradientTransformation:
    """AdamW with warmup + cosine and global-norm clipping; its state is f32 like the params."""
    return optax.chain(
        optax.clip_by_global_norm(tc.clip_norm),
        optax.adamw(learning_rate_schedule(tc), b1=tc.b1, b2=tc.b2, eps=tc.eps, weight_decay=tc.weight_decay,
                    mask=_decay_mask))


def valid_positions(spec: StepSpec, batch: dict) -> tuple[jax.Array, jax.Array]:
    """targets_BxL and valid_BxL: shift_targets, minus the Goldfish-dropped positions."""
    targets_BxL, valid_BxL = ce_lib.shift_targets(batch["tokens"], batch["segment_ids"])
    if spec.goldfish_k:
        valid_BxL &= goldfish.goldfish_keep(batch["tokens"], batch["segment_ids"], spec.goldfish_k, spec.goldfish_h)
    return targets_BxL, valid_BxL


def selector(spec: StepSpec, step) -> objective.Selector | None:
    """The step's Selector (its ratio scheduled at `step`); None for CLM."""
    if not spec.slm:
        return None
    ratio = objective.ratio_at(step, spec.ratio, spec.ratio_end, spec.total_steps)
    return objective.Selector(ratio=ratio, score=spec.score,
                              scope="batch" if spec.scope == "micro_batch" else spec.scope,  # one micro-batch
                              weighting=spec.weighting, temperature=spec.temperature, random_ties=spec.random_ties)


def reference_scores(spec: StepSpec, batch: dict, ema_params=None) -> tuple[jax.Array | None, jax.Array | None]:
    """(ref_ce_BxL, ref_entropy_BxL), each None where the step does not read it. Online and cached: from the
    batch (online: put there by the scorer just before the step). EMA: the EMA of the target scored here,
    micro-batch by micro-batch, under stop_gradient."""
    if spec.ema:
        fwd = lambda mb: reference_forward(spec.ref_model, ema_params, mb, ce_chunk=spec.ce_chunk,  # noqa: E731
                                           with_entropy=spec.needs_entropy)
        ref_ce_BxL, ref_ent_BxL = microbatch.map_rows(fwd, spec.grad_accum)({k: batch[k] for k in INPUT_KEYS})
        return ref_ce_BxL, ref_ent_BxL
    if spec.online or spec.cached:
        return batch["ref_ce"], batch.get("ref_entropy") if spec.needs_entropy else None
    return None, None


def loss_and_grads(spec: StepSpec, params, batch: dict, step, rng, ema_params=None):
    """Returns (loss, grads, ce_BxL, weight_BxL, stats) for one global batch (rho_jax.gradients).

    `ema_params`: reference='ema' only, the EMA of the target, scored here under stop_gradient."""
    targets_BxL, valid_BxL = valid_positions(spec, batch)
    ref_ce_BxL, ref_ent_BxL = reference_scores(spec, batch, ema_params)
    inputs = objective.ScoreInputs(ce_BxL=None, valid_BxL=valid_BxL, ref_ce_BxL=ref_ce_BxL,
                                   ref_entropy_BxL=ref_ent_BxL, segment_ids_BxL=batch["segment_ids"])
    rows = {**{k: batch[k] for k in INPUT_KEYS}, "targets": targets_BxL}
    sel = selector(spec, step)
    loss, grads, ce_BxL, selection = gradients.loss_and_grads(spec, params, rows, inputs, sel, rng)
    stats = objective.selection_stats(selection, inputs.replace(ce_BxL=ce_BxL)) if spec.slm else {}
    return loss, grads, ce_BxL, selection.weight_BxL, stats


def train_step(spec: StepSpec, tx: optax.GradientTransformation, state: TrainState,
               batch: dict) -> tuple[TrainState, dict]:
    """One optimizer update. Pure; a non-finite loss or gradient leaves params and opt_state untouched
    (metrics['finite'] == 0) so the caller can stop cleanly or skip."""
    rng, sel_rng = jax.random.split(state.rng)
    # reference='ema' scores with the EMA from before this update
    loss, grads, ce_BxL, weight_BxL, stats = loss_and_grads(spec, state.params, batch, state.step, sel_rng,
                                                            state.ema_params)
    with jax.named_scope("optimizer"):  # names its ops in profiles (scripts/profile_step.py)
        grad_norm = optax.tree.norm(grads) if hasattr(optax, "tree") else optax.global_norm(grads)
        updates, new_opt = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        new_ema = state.ema_params
        if spec.ema:
            d = spec.ref.ema_decay
            new_ema = keep(jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema_params, new_params), state.ema_params)
        new_state = TrainState(step=state.step + 1, params=keep(new_params, state.params),
                               opt_state=keep(new_opt, state.opt_state), rng=rng, ema_params=new_ema)

    _, valid_BxL = valid_positions(spec, batch)  # after Goldfish: n_valid counts trainable targets
    n_valid = jnp.sum(valid_BxL)
    metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite.astype(jnp.int32),
               "n_valid": n_valid, "n_selected": jnp.sum((weight_BxL > 0) & valid_BxL),
               "n_tokens": jnp.sum(batch["segment_ids"] != 0)}
    if not spec.slm:
        loss_all = objective.masked_mean(ce_BxL, valid_BxL.astype(jnp.float32))
        stats = {"loss_all": loss_all, "selected_fraction": jnp.float32(1.0)}
    metrics.update(stats)
    return new_state, metrics


def state_shardings(spec: StepSpec, tx, mesh: Mesh, rules) -> tuple[TrainState, Any]:
    """NamedShardings for the TrainState (and the reference params, or None)."""
    p_shape = model.param_shapes(spec.model)
    p_sh = sharding.tree_shardings(model.param_logical_axes(spec.model), p_shape, mesh, rules)
    rep = sharding.replicated(mesh)
    st = TrainState(step=rep, params=p_sh, opt_state=sharding.opt_state_shardings(tx, p_shape, p_sh, mesh), rng=rep,
                    ema_params=p_sh if spec.ema else None)
    ref_sh = None
    if spec.online:
        ref_sh = sharding.tree_shardings(model.param_logical_axes(spec.ref_model), model.param_shapes(spec.ref_model),
                                         mesh, rules)
    return st, ref_sh


def batch_keys(spec: StepSpec) -> tuple[str, ...]:
    """Keys the jitted step reads (online SLM: the scorer adds ref_ce / ref_entropy before the step)."""
    if spec.online or spec.cached:
        return INPUT_KEYS + (("ref_ce", "ref_entropy") if spec.needs_entropy else ("ref_ce",))
    return INPUT_KEYS


def input_keys(spec: StepSpec) -> tuple[str, ...]:
    """Keys the caller supplies: online SLM needs only the rows, the reference scores them."""
    return INPUT_KEYS if spec.online else batch_keys(spec)


@dataclasses.dataclass(frozen=True)
class CompiledStep:
    """The compiled train step: `step(state, batch, ref_params=None) -> (state, metrics)`.

    jitted: the jax.jit program of `train_step` (state donated); state_shardings: the TrainState's
    NamedShardings; ref_shardings: the online reference params' (else None); batch_shardings: {key: sharding}
    of every key the jitted step reads; input_shardings: those the caller supplies (online SLM: the rows only);
    scorer: the online reference scorer (score.CompiledScorer), else None.
    """

    spec: StepSpec
    mesh: Mesh
    jitted: Any
    state_shardings: Any
    ref_shardings: Any
    batch_shardings: dict
    input_shardings: dict
    scorer: score_lib.CompiledScorer | None

    def __call__(self, state, batch: dict, ref_params=None):
        if self.scorer is not None:
            if ref_params is None:
                raise ValueError("online SLM needs ref_params (placed with step.ref_shardings)")
            batch = {**batch, **score_lib.score_global_batch(self.scorer, ref_params, batch, self.spec.grad_accum)}
        with sharding.mesh_context(self.mesh):
            return self.jitted(state, {k: batch[k] for k in self.batch_shardings})


def compile_train_step(spec: StepSpec, tx, mesh: Mesh, rules=sharding.DEFAULT_RULES) -> CompiledStep:
    """The pure `train_step(state, batch)` jitted with explicit in/out NamedShardings, the state donated,
    logical-axis rules active for activation constraints. Online SLM first scores the batch with
    `score.reference_scorer` (the compiled computation `rho-jax score` uses for the cache) on the
    step's micro-batches, so online and cached training get bit-identical reference scores.
    """
    st_sh, ref_sh = state_shardings(spec, tx, mesh, rules)
    b_sh = {k: sharding.batch_sharding(mesh) for k in batch_keys(spec)}
    rep = sharding.replicated(mesh)

    def step(state, batch):
        with nn.logical_axis_rules(rules):
            return train_step(spec, tx, state, {k: batch[k] for k in b_sh})

    jitted = jax.jit(step, in_shardings=(st_sh, b_sh), out_shardings=(st_sh, rep), donate_argnums=(0,))
    scorer = score_lib.reference_scorer(spec.ref_model, mesh, rules, spec.ce_chunk) if spec.online else None
    return CompiledStep(spec=spec, mesh=mesh, jitted=jitted, state_shardings=st_sh, ref_shardings=ref_sh,
                        batch_shardings=b_sh, input_shardings={k: b_sh[k] for k in input_keys(spec)}, scorer=scorer)


def abstract_state(spec: StepSpec, tx, state_shardings: TrainState) -> TrainState:
    """The TrainState as ShapeDtypeStructs carrying `state_shardings` (nothing traced or allocated): the
    restore target of a checkpoint, and the state argument of an ahead-of-time compile."""
    p_shape = model.param_shapes(spec.model)
    shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=p_shape, opt_state=jax.eval_shape(tx.init, p_shape),
                        rng=jax.eval_shape(jax.random.PRNGKey, 0), ema_params=p_shape if spec.ema else None)
    return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), shapes, state_shardings)


def init_state(spec: StepSpec, tx, mesh: Mesh, rng: jax.Array, params=None, rules=sharding.DEFAULT_RULES) -> TrainState:
    """A TrainState laid out on `mesh`: random params from `rng`, or the given (host) params resharded."""
    st_sh, _ = state_shardings(spec, tx, mesh, rules)
    init_rng, state_rng = jax.random.split(rng)
    if params is None:
        params = jax.jit(lambda r: model.init_params(spec.model, r), out_shardings=st_sh.params)(init_rng)
    else:
        params = sharding.place(params, st_sh.params)
    opt_state = jax.jit(tx.init, out_shardings=st_sh.opt_state)(params)
    ema = None
    if spec.ema:  # starts at the initial target: a separate buffer, since the state is donated
        ema = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=st_sh.params)(params)
    return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), st_sh.step), params=params,
                      opt_state=opt_state, rng=jax.device_put(state_rng, st_sh.rng), ema_params=ema)

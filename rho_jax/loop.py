"""The training loop: config -> models -> mesh -> (resume) -> steps -> metrics and checkpoints.

`run` is four parts:
  1. `set_up` (reads only): validate the config (before any compute, before touching the workdir); load or
     initialise the target and reference models (read-only) and check they agree; build the mesh, the
     (lazily compiled) step and the TrainState, restored from the latest good checkpoint onto this mesh
     with the input position and counters; build the input and check its vocabulary against the model;
  2. `open_workdir`: only now write to the workdir (run files, metrics.jsonl cut back to the restored step);
  3. `StepLoop.run` (rho_jax.step_loop): step n+1 is dispatched before step n's metrics are read, so the host
     never syncs per step; the periodic actions at step boundaries: log (and `on_log`), evaluate, save at
     the interval; on SIGTERM or a preemption notice save at the next step boundary, wait for the save, and
     return (exit 0); on a non-finite loss stop with an error naming the step (or skip it);
  4. `finish`: wait for the last save, close the writers, export the final model.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Iterator

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from rho_jax import checkpoint as ckpt
from rho_jax import config as config_lib
from rho_jax import flops, paths, sharding, train
from rho_jax.data import inputs
from rho_jax.data.vocab import check_vocabularies
from rho_jax.distributed import maybe_initialize
from rho_jax.metrics import METRICS_FILE, Counters, MetricsWriter
from rho_jax.step_loop import NonFiniteLossError, StepLoop  # noqa: F401 - loop.NonFiniteLossError


def build_models(config):
    """Target (cfg, params or None for random init) and reference (cfg, params) or (None, None), with
    config.model's runtime fields (dtype, remat, attention, ...) applied to loaded models."""
    overrides = config_lib.runtime_overrides(config)
    if config.init.target:
        t_cfg, t_params = ckpt.load_weights(config.init.target, "target", overrides)
    else:
        t_cfg, t_params = config_lib.model_config(config), None
    r_cfg = r_params = None
    if config_lib.run_spec_of(config).reference.loads_checkpoint:
        r_cfg, r_params = ckpt.load_weights(config.init.reference, "reference", overrides)
    config_lib.check_compatible(config, t_cfg)
    check_vocabularies(target=t_cfg.vocab_size, reference=r_cfg.vocab_size if r_cfg is not None else None)
    return t_cfg, t_params, r_cfg, r_params


def write_run_files(workdir: str, config, t_cfg):
    """The resolved config and the model config next to the checkpoints (process 0 only)."""
    if jax.process_index() != 0:
        return
    wd = epath.Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    (wd / ckpt.RUN_CONFIG_FILE).write_text(config.to_json(indent=1))
    (wd / ckpt.MODEL_CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(t_cfg), indent=1))


def check_workdir_model(workdir: str, t_cfg) -> None:
    """A workdir that already holds a run of another architecture is refused, naming the fields
    (config.RUNTIME_FIELDS may differ between runs of one workdir)."""
    path = epath.Path(workdir) / ckpt.MODEL_CONFIG_FILE
    if not path.exists():
        return
    old, new = json.loads(path.read_text()), dataclasses.asdict(t_cfg)
    diff = {k: (old.get(k), v) for k, v in new.items() if k not in config_lib.RUNTIME_FIELDS and old.get(k, v) != v}
    if diff:
        raise config_lib.ConfigError(
            f"config.workdir={workdir} holds a run of another model ({path.name}): "
            + ", ".join(f"model.{k}={b!r} here but {a!r} there" for k, (a, b) in diff.items())
            + "; use a new config.workdir or the workdir's model settings")


def warn_if_same_params(target_params, ref_params, samples: int = 1024) -> bool:
    """Prints a WARNING (and returns True) when the online reference looks identical to the target:
    same structure and shapes, and equal values at up to `samples` evenly spaced entries of every
    array (cheap at any size). Excess loss is then 0 everywhere and the selection is arbitrary."""
    if target_params is None or ref_params is None:
        return False  # a randomly initialised target
    t_leaves, t_def = jax.tree.flatten(target_params)
    r_leaves, r_def = jax.tree.flatten(ref_params)
    if t_def != r_def or any(np.shape(a) != np.shape(b) for a, b in zip(t_leaves, r_leaves)):
        return False
    for a, b in zip(t_leaves, r_leaves):
        a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
        idx = np.linspace(0, a.size - 1, min(samples, a.size)).astype(np.int64)
        if not np.array_equal(a[idx], b[idx]):
            return False
    print("WARNING: the reference params look identical to the target's (config.init.reference and "
          "config.init.target hold the same weights?): excess loss is 0 for every token and SLM selects "
          "arbitrarily. Train the reference on clean data first.", flush=True)
    return True


class Trainer:
    """Holds the compiled step and everything static; `train_step(state, batch)` is the pure step."""

    def __init__(self, config, mesh=None, models=None):
        """`config` as checked by config.validate (loop.run does it); `mesh` defaults to config.mesh's."""
        self.config = config
        t_cfg, t_params, r_cfg, r_params = models if models is not None else build_models(config)
        self.mesh = mesh or sharding.mesh_from_config(config.mesh)
        self.rules = config_lib.mesh_rules(config)
        if mesh is not None:  # validate checked config.mesh's batch split; a given mesh needs its own check
            sharding.check_batch(config.train.batch_size, self.mesh, config.train.grad_accum)
        self.spec = train.StepSpec.from_config(config, t_cfg, r_cfg)
        self.tx = train.make_optimizer(config.train)
        self.step_fn = train.compile_train_step(self.spec, self.tx, self.mesh, self.rules)
        self._init_params = t_params
        self.ref_params = None
        if self.spec.online:
            self.ref_params = sharding.place(r_params, self.step_fn.ref_shardings)
        self.stage_flops = flops.step_flops_per_token(self.spec, config.data.seq_len)  # per token, by stage
        if self.spec.online:
            warn_if_same_params(t_params, r_params)
        self.peak = flops.device_peak_flops(override=config.train.peak_flops)

    def init_state(self) -> train.TrainState:
        return train.init_state(self.spec, self.tx, self.mesh, jax.random.PRNGKey(self.config.seed),
                                self._init_params, self.rules)

    def abstract_state(self) -> train.TrainState:
        """The TrainState as ShapeDtypeStructs with this mesh's shardings (traced, nothing allocated)."""
        return train.abstract_state(self.spec, self.tx, self.step_fn.state_shardings)

    def global_batch(self, local_batch: dict) -> dict:
        """Host-local numpy rows -> global jax.Arrays on the mesh (multi-host aware)."""
        out = {}
        for k, sh in self.step_fn.input_shardings.items():
            x = np.asarray(local_batch[k])
            global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
            out[k] = jax.make_array_from_process_local_data(sh, x, global_shape)
        return out

    def train_step(self, state, batch):
        """Dispatches one step (asynchronously): (state, metrics) as jax.Arrays still being computed."""
        return self.step_fn(state, batch, self.ref_params)

    def read_metrics(self, metrics) -> dict:
        """The step's metrics on the host: waits for that step (and only it) to finish."""
        return jax.device_get(metrics)


def run(config, make_input: Callable[[Any, dict | None], Iterator[dict]] | None = None,
        trainer: Trainer | None = None, on_log: Callable[[dict], None] | None = None) -> dict:
    """Trains to config.train.steps (resuming if a checkpoint exists). Returns the last metrics row.

    `make_input(config, input_state) -> iterator` yields host-local numpy batches and has
    `get_state()`; None uses `rho_jax.data.inputs.input_for_training`. `on_log(row)` is called with
    each metrics row as it is written (the row of metrics.jsonl: step, losses, counters, eval).
    Every check (config, models, vocabulary, checkpoint) runs before anything is written to
    config.workdir or compiled.
    """
    config = paths.resolve_paths(config)  # relative paths: against the directory the run started in
    maybe_initialize()
    with ckpt.PreemptionWatcher() as preempt:  # a SIGTERM from here on saves at the next step boundary
        setup = set_up(config, make_input, trainer)
        writer = open_workdir(config, setup)
        state, step, row = StepLoop(config, setup.trainer, setup.batches, setup.checkpointer, writer, setup.counters,
                                    setup.heldout, preempt, on_log).run(setup.state, int(setup.state.step))
        return finish(config, setup, writer, state, step, row)


@dataclasses.dataclass
class RunSetUp:
    """What `set_up` built, every check passed and nothing written yet: the state to start from (restored
    or fresh), the counters and input position that came with it, the held-out sets."""
    trainer: Trainer
    checkpointer: ckpt.Checkpointer
    batches: Iterator[dict]
    state: train.TrainState
    counters: Counters
    heldout: dict
    restored_step: int | None  # None: a fresh run


def set_up(config, make_input=None, trainer: Trainer | None = None) -> RunSetUp:
    """Validates the config, loads the models (read-only), restores the latest good checkpoint onto the
    mesh and opens the input at its position. Reads only: config.workdir is not written."""
    config_lib.validate(config, jax.device_count(), purpose="train")  # once per run, before anything else
    trainer = trainer or Trainer(config)  # loads the models read-only and checks them; jit compiles lazily
    make_input = make_input or inputs.input_for_training
    check_workdir_model(config.workdir, trainer.spec.model)  # before Orbax reads a checkpoint of another shape
    c = config.checkpoint
    checkpointer = ckpt.Checkpointer(config.workdir, c.every, c.keep, c.keep_best, c.async_save)
    restored = checkpointer.restore(trainer.abstract_state())  # reads only; falls back past a bad latest step
    input_state, counters, state, restored_step = None, Counters(), None, None
    if restored is not None:
        state, meta, restored_step = restored
        input_state, counters = meta.get("input"), Counters(**meta.get("counters", {}))
        print(f"resumed from checkpoint step {restored_step} in {checkpointer.directory}", flush=True)
    batches = make_input(config, input_state)
    check_vocabularies(tokenizer=getattr(batches, "vocab_size", None), target=trainer.spec.model.vocab_size)
    if state is None:
        state = trainer.init_state()  # the first compute, after every check
    heldout = inputs.heldout_sets(config) if config.eval.every > 0 else {}
    return RunSetUp(trainer, checkpointer, batches, state, counters, heldout, restored_step)


def open_workdir(config, setup: RunSetUp) -> MetricsWriter:
    """Every check has passed: from here on the workdir is written. The run files, metrics.jsonl cut back to
    the restored step (a killed run wrote rows past its last checkpoint), and the writer that appends to it."""
    write_run_files(config.workdir, config, setup.trainer.spec.model)
    _trim_metrics(config.workdir, setup.restored_step or 0)
    return MetricsWriter(config.workdir)


def finish(config, setup: RunSetUp, writer: MetricsWriter, state, step: int, row: dict) -> dict:
    """Waits for the last save, closes the writers and, at config.train.steps, exports the final model
    (not after a preemption). Returns the last metrics row with its step."""
    setup.checkpointer.close()
    writer.close()
    if step >= config.train.steps:
        export_final(config.workdir, setup.trainer.spec.model, state.params, step)
    return {"step": step, **row}


def _trim_metrics(workdir: str, step: int) -> None:
    """Drops metrics.jsonl rows after `step`: a run killed after its last checkpoint wrote them, and
    the resumed run writes them again."""
    path = epath.Path(workdir) / METRICS_FILE
    if jax.process_index() != 0 or not path.exists():
        return
    lines = path.read_text().splitlines()
    keep = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= step]
    if len(keep) != len(lines):
        text = "".join(ln + "\n" for ln in keep)
        if "://" in workdir:  # a GCS object is replaced whole; a rename there is a copy
            path.write_text(text)
            return
        tmp = epath.Path(workdir) / (METRICS_FILE + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def export_final(workdir: str, cfg, params, step: int | None = None) -> None:
    """The final params as an Orbax model dir `<workdir>/final` (usable as init.target / init.reference).

    Every process takes part in the save (Orbax requires it); process 0 alone clears and renames. Locally
    final/ appears by renaming final.tmp/; on gs:// (where a rename copies every object) it is written in
    place, and its model_config.json, written last, marks it complete."""
    final = epath.Path(workdir) / "final"
    if (final / ckpt.MODEL_CONFIG_FILE).exists():
        return
    tmp = final if "://" in workdir else epath.Path(workdir) / "final.tmp"
    if jax.process_index() == 0 and tmp.exists():
        tmp.rmtree()
    multihost_utils.sync_global_devices("rho_jax_export_final_start")
    ckpt.save_model(cfg, params, str(tmp), step)
    multihost_utils.sync_global_devices("rho_jax_export_final_saved")
    if jax.process_index() == 0 and tmp != final:
        tmp.rename(final)

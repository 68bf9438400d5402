"""Orbax checkpoints: asynchronous saves, resume with fallback, preemption, and model loading.

A checkpoint step holds two items:
  state: the TrainState (step, params, opt_state, rng), restored onto any mesh (resharded on load);
  meta:  JSON with the input position (the Grain reader's iterator state: rho_jax/data/reader.py) and the
         cumulative counters.

Writing is deferred: `Checkpointer` opens the directory read-only to restore and creates its
writing manager only at the first save, so a run that fails its checks writes nothing.

Restoring tries the latest step first. A step that Orbax cannot read (a truncated or missing
array file, bad metadata) or that holds non-finite values is reported with a warning and the
previous step is used; the unusable later steps are moved to `<workdir>/unusable_checkpoints/`
just before the first new save (so they are never mistaken for, or block, a new save). If no
step restores, `CheckpointError` is raised and nothing in the workdir is touched.
Orbax finalises a step by renaming its tmp dir (or writing commit_success.txt on GCS), so a save
killed mid-way is never listed as a step; its tmp dir is removed when the writer opens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import threading
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from rho_jax import interop
from rho_jax.model import ModelConfig, param_shapes

UNUSABLE_DIR = "unusable_checkpoints"


class CheckpointError(RuntimeError):
    pass


def _join(workdir: str, name: str) -> str:
    return workdir.rstrip("/") + "/" + name if "://" in workdir else os.path.join(workdir, name)


def _all_processes_ok(ok: bool) -> bool:
    """True only if every process succeeded, so all hosts fall back to the same step."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


class Checkpointer:
    """Wraps `ocp.CheckpointManager` for the train loop (all processes call it, as Orbax requires)."""

    def __init__(self, workdir: str, every: int = 0, keep: int = 3, keep_best: bool = False,
                 async_save: bool = True):
        self.workdir = workdir
        self.directory = _join(workdir, CHECKPOINTS_DIR)
        self.every = int(every)
        self._keep, self._keep_best, self._async = keep, keep_best, async_save
        self._writer: ocp.CheckpointManager | None = None
        self._unusable: list[int] = []  # steps that failed to restore, set aside before the first save

    def _options(self, read_only: bool) -> ocp.CheckpointManagerOptions:
        return ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else self._keep,
            save_interval_steps=0 if read_only else 1,  # the loop decides when to save
            enable_async_checkpointing=self._async,
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,  # a save killed mid-way leaves only a tmp dir: drop it
            best_fn=(lambda m: m["eval_loss"]) if self._keep_best else None,
            best_mode="min",
            keep_checkpoints_without_metrics=True,
        )

    def _manager(self, read_only: bool) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(self.directory, options=self._options(read_only), item_names=("state", "meta"))

    @property
    def manager(self) -> ocp.CheckpointManager:
        """The writing manager, created on first use (after unusable steps are moved aside)."""
        if self._writer is None:
            self._set_aside_unusable()
            self._writer = self._manager(read_only=False)
        return self._writer

    def _exists(self) -> bool:
        return epath.Path(self.directory).exists()

    def all_steps(self) -> list[int]:
        """Complete steps on disk (a save still in flight or killed mid-way is not listed)."""
        if self._writer is not None:
            return sorted(self._writer.all_steps())
        if not self._exists():
            return []
        reader = self._manager(read_only=True)
        try:
            return sorted(reader.all_steps())
        finally:
            reader.close()

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def should_save(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, step: int, state, meta: dict, eval_loss: float | None = None, force: bool = False) -> bool:
        """Starts an (asynchronous) save of `state` and `meta` at `step`; False if that step already exists."""
        if step in self.manager.all_steps():
            return False
        metrics = {"eval_loss": float(eval_loss)} if eval_loss is not None else None
        return self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                               meta=ocp.args.JsonSave(meta)),
                                 metrics=metrics, force=force)

    def reached_preemption(self, step: int) -> bool:
        """JAX's multi-host preemption notice (a sync point all processes agree on)."""
        try:
            return bool(self.manager.reached_preemption(step))
        except Exception:  # noqa: BLE001 - no preemption service on this platform
            return False

    def wait(self):
        """Blocks until the save in flight (if any) is committed."""
        if self._writer is not None:
            self._writer.wait_until_finished()

    def close(self):
        if self._writer is not None:
            self._writer.wait_until_finished()
            self._writer.close()
            self._writer = None

    def restore(self, abstract_state, step: int | None = None) -> tuple[Any, dict, int] | None:
        """Restores (state, meta, step) from `step`, or the latest step that restores cleanly.

        `abstract_state` is a TrainState of `jax.ShapeDtypeStruct`s carrying the target shardings,
        so a checkpoint written on one mesh loads onto another. Returns None when no checkpoint
        exists. Reads only: nothing is written or deleted here.
        """
        if not self._exists():
            if step is not None:
                raise CheckpointError(f"no checkpoint directory {self.directory} (asked for step {step})")
            return None
        reader = self._manager(read_only=True)
        try:
            steps = [step] if step is not None else sorted(reader.all_steps(), reverse=True)
            if not steps:
                return None
            errors = []
            for s in steps:
                try:
                    out = reader.restore(s, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
                    state, meta = out["state"], dict(out["meta"])
                    _check_finite_tree(state, s)
                    err = None
                except Exception as e:  # noqa: BLE001 - any failure means this step is unusable
                    err = f"{type(e).__name__}: {str(e)[:500]}"
                if _all_processes_ok(err is None):
                    if errors:
                        self._unusable = [x for x in steps if x > s]
                    return state, meta, s
                msg = (f"checkpoint step {s} in {self.directory} could not be restored "
                       f"({err or 'failed on another process'})")
                errors.append(msg)
                if step is None:
                    print(f"WARNING: {msg}; falling back to the previous checkpoint", flush=True)
        finally:
            reader.close()
        raise CheckpointError(f"no usable checkpoint in {self.directory}:\n  " + "\n  ".join(errors) +
                              "\nNothing was overwritten. Remove the broken steps or point config.workdir elsewhere.")

    def _set_aside_unusable(self):
        """Moves the steps that failed to restore to <workdir>/unusable_checkpoints/ (process 0)."""
        if not self._unusable:
            return
        if jax.process_index() == 0:
            dest = epath.Path(_join(self.workdir, UNUSABLE_DIR))
            dest.mkdir(parents=True, exist_ok=True)
            for s in self._unusable:
                src = epath.Path(self.directory) / str(s)
                if src.exists():
                    target = dest / f"{s}-{time.strftime('%Y%m%dT%H%M%S')}"
                    src.rename(target)
                    print(f"WARNING: moved unusable checkpoint step {s} to {target}", flush=True)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("rho_jax_set_aside_unusable")
        self._unusable = []


def _check_finite_tree(state, step):
    """Raises if any floating leaf holds NaN or inf (one jitted reduction over the whole tree)."""
    leaves = [(path, x) for path, x in jax.tree_util.tree_leaves_with_path(state)
              if hasattr(x, "dtype") and np.issubdtype(x.dtype, np.floating)]
    if not leaves:
        return
    finite = jax.jit(lambda xs: jax.numpy.stack([jax.numpy.isfinite(x).all() for x in xs]))([x for _, x in leaves])
    bad = [jax.tree_util.keystr(path) for (path, _), ok in zip(leaves, np.asarray(finite)) if not ok]
    if bad:
        raise CheckpointError(f"non-finite values in {', '.join(bad[:5])} at step {step}")


def abstract_like(tree, shardings):
    """ShapeDtypeStructs with shardings: the restore target for `Checkpointer.restore`."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


# --- reading a training workdir's checkpoints (analysis, the demo's evaluation): the layout written above ---

CHECKPOINTS_DIR = "checkpoints"  # <workdir>/checkpoints/<step>/{state,meta}
RUN_CONFIG_FILE = "config.json"  # <workdir>/config.json: the run's resolved config (with MODEL_CONFIG_FILE)


def kept_steps(workdir: str) -> list[int]:
    """The complete checkpoint steps kept in a training workdir, ascending; [] when it has none. Reads only
    (a save in flight or killed mid-way is not listed)."""
    return Checkpointer(workdir).all_steps()


def workdir_model_config(workdir: str) -> ModelConfig:
    """The ModelConfig a training workdir records (written before its first step)."""
    return ModelConfig(**json.loads((epath.Path(workdir) / MODEL_CONFIG_FILE).read_text()))


def restore_params(workdir: str, step: int, cfg: ModelConfig | None = None):
    """The params of a training workdir's checkpoint `step` as host numpy arrays, without the optimizer
    state (a partial restore of the TrainState). `cfg`: the model, by default the workdir's own."""
    target = {"params": param_shapes(cfg or workdir_model_config(workdir))}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    path = _join(_join(_join(workdir, CHECKPOINTS_DIR), str(step)), "state")
    path = epath.Path(path if "://" in path else os.path.abspath(path))
    out = ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))
    return out["params"]


class PreemptionWatcher:
    """Turns SIGTERM into a flag the loop checks at each step boundary (save, wait, exit 0).

    Single-process only: on a multi-host job JAX's preemption service owns SIGTERM and every
    process learns of it at the same step through `Checkpointer.reached_preemption`."""

    def __init__(self, enabled: bool | None = None):
        self._event = threading.Event()
        self._previous = None
        self.enabled = jax.process_count() == 1 if enabled is None else enabled

    def __enter__(self):
        if self.enabled and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, lambda *_: self._event.set())  # no I/O in a handler
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    @property
    def requested(self) -> bool:
        return self._event.is_set()


# --- model weights as Orbax checkpoints (for `rho-jax convert` and init.target / init.reference) ---

MODEL_CONFIG_FILE = "model_config.json"
MODEL_META_FILE = "model_meta.json"  # the model's identity, written at save time (`model_identity` reads it)
MODEL_META_FORMAT = "rho_jax.model_meta/1"


def _host_chunks(x, max_bytes: int = 1 << 28):
    """A leaf's bytes in C order, as host arrays. A multi-host array is gathered (every process must call),
    one slice of its first axis at a time when large (stacked layers), so a host holds at most a slice."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        yield np.ascontiguousarray(np.asarray(x))
    elif x.ndim == 0 or x.nbytes <= max_bytes:
        yield np.ascontiguousarray(multihost_utils.process_allgather(x, tiled=True))
    else:
        for i in range(x.shape[0]):
            yield np.ascontiguousarray(multihost_utils.process_allgather(x[i], tiled=True))


def params_identity(params) -> str:
    """sha256 of a parameter tree (paths, shapes, dtypes and bytes): a model's identity, which score caches
    record. A pass over every weight: computed once when a model is saved (`save_model`), then read back."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        h.update(f"{jax.tree_util.keystr(path)}:{tuple(leaf.shape)}:{np.dtype(leaf.dtype)}".encode())
        for chunk in _host_chunks(leaf):
            h.update(chunk.reshape(-1).view(np.uint8))  # the raw bytes, without a copy
    return "params-sha256:" + h.hexdigest()


def save_model(cfg, params, directory: str, step: int | None = None) -> None:
    """Writes params + the ModelConfig as an Orbax checkpoint directory (atomic: Orbax finalises by rename),
    with model_meta.json: the config, the training step (None for a conversion) and `params_identity`,
    computed here once so that a run using the model as its reference never re-reads the weights for it."""
    path = epath.Path(directory)
    identity = params_identity(params)  # every process takes part (a multi-host array is gathered)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path / "params", params)
    ckptr.wait_until_finished()
    if jax.process_index() == 0:
        meta = {"format": MODEL_META_FORMAT, "identity": identity, "step": step, "config": dataclasses.asdict(cfg)}
        (path / MODEL_META_FILE).write_text(json.dumps(meta, indent=1))
        (path / MODEL_CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(cfg), indent=1))  # last: marks it whole


def is_model_dir(directory: str) -> bool:
    p = epath.Path(directory)
    return (p / MODEL_CONFIG_FILE).exists() or (p / "final" / MODEL_CONFIG_FILE).exists()


def _model_dir(directory: str) -> epath.Path:
    """The model dir of `directory`: itself, or a training workdir's final/ model."""
    p = epath.Path(directory)
    # a training workdir (its top-level model_config.json describes the run): its final model
    return p / "final" if (p / "final" / MODEL_CONFIG_FILE).exists() else p


def restore_model_dir(directory: str, shardings=None):
    """(ModelConfig, params) from `save_model` output, or from a training workdir's final/ model.
    `shardings`: restore straight onto devices; None gives host arrays. Use `load_weights` for any format."""
    p = _model_dir(directory)
    if not (p / MODEL_CONFIG_FILE).exists():
        raise CheckpointError(f"{directory} is not an Orbax model checkpoint (no {MODEL_CONFIG_FILE}, no final/); "
                              f"convert HF/GGUF weights with `rho-jax convert` or point at a finished workdir")
    cfg = ModelConfig(**json.loads((p / MODEL_CONFIG_FILE).read_text()))
    target = param_shapes(cfg)
    if shardings is not None:
        target = abstract_like(target, shardings)
    return cfg, ocp.StandardCheckpointer().restore(p / "params", target)


def load_weights(path: str, what: str, overrides: dict | None = None):
    """THE model loader: (ModelConfig, host numpy params) from an Orbax model dir (or a finished workdir),
    an HF `save_pretrained` dir or a .gguf file. `what` names the config field in errors ("target",
    "reference", ...); `overrides` sets runtime fields (`config.runtime_overrides`) on the loaded config."""
    if is_model_dir(path):
        cfg, params = restore_model_dir(path)
        params = jax.tree.map(np.asarray, params)
    elif "://" in path:
        raise FileNotFoundError(f"config.init.{what}={path!r}: remote paths must be Orbax model dirs (made by "
                                f"`rho-jax convert SRC DST --to=orbax`); HF dirs and .gguf files must be local")
    elif not os.path.exists(path):
        raise FileNotFoundError(f"config.init.{what}={path!r} does not exist")
    else:
        cfg, params = interop.load_pretrained(path)
    return (cfg.replace(**overrides) if overrides else cfg), params


def stored_identity(path: str) -> str | None:
    """The identity `save_model` recorded in an Orbax model dir (or a workdir's final/); None where there is
    none (an HF dir, a .gguf, an Orbax dir saved before model_meta.json existed). Reads one small file."""
    if not is_model_dir(path):
        return None
    meta_path = _model_dir(path) / MODEL_META_FILE
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != MODEL_META_FORMAT:
        raise CheckpointError(f"{meta_path} has format {meta.get('format')!r}, not {MODEL_META_FORMAT!r}; "
                              f"re-create the model dir with `rho-jax convert`")
    return meta["identity"]


def model_identity(path: str, what: str, params=None) -> str:
    """The identity of the model at `path` (what score caches record): the one saved with it, else (with a
    one-line note) `params_identity` of its weights: `params` when the caller holds them, else loaded here."""
    identity = stored_identity(path)
    if identity is not None:
        return identity
    print(f"note: config.init.{what}={path} has no {MODEL_META_FILE} (an HF dir, a .gguf or an older Orbax dir), "
          f"so its identity is a sha256 of every weight, read at each start; `rho-jax convert {path} DST "
          f"--to=orbax` makes a model dir that records it", flush=True)
    if params is None:
        params = load_weights(path, what)[1]
    return params_identity(params)

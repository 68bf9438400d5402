"""Orbax checkpoints: asynchronous saves, resume with fallback, preemption, and model loading.

A checkpoint step holds two items:
  state: the TrainState (step, params, opt_state, rng), restored onto any mesh (resharded on load);
  meta:  JSON with the input position and the cumulative counters.

Restoring tries the latest step first; a corrupt or incomplete one is reported with a warning
and the previous complete step is used. If no step restores, `CheckpointError` is raised and
nothing in the workdir is touched.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    pass


def _join(workdir: str, name: str) -> str:
    return workdir.rstrip("/") + "/" + name if "://" in workdir else os.path.join(workdir, name)


class Checkpointer:
    """Wraps `ocp.CheckpointManager` for the train loop (all processes call it, as Orbax requires)."""

    def __init__(self, workdir: str, every: int = 0, keep: int = 3, keep_best: bool = False,
                 async_save: bool = True):
        self.directory = _join(workdir, "checkpoints")
        self.every = int(every)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=True,  # a save killed mid-way leaves only a tmp dir: drop it
            best_fn=(lambda m: m["eval_loss"]) if keep_best else None,
            best_mode="min",
            keep_checkpoints_without_metrics=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps(read=True))

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def should_save(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, step: int, state, meta: dict, eval_loss: float | None = None, force: bool = False) -> bool:
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
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()

    def restore(self, abstract_state, step: int | None = None) -> tuple[Any, dict, int] | None:
        """Restores (state, meta, step) from `step`, or the latest step that restores cleanly.

        `abstract_state` is a TrainState of `jax.ShapeDtypeStruct`s carrying the target shardings,
        so a checkpoint written on one mesh loads onto another. Returns None when no checkpoint exists.
        """
        steps = [step] if step is not None else self.all_steps()[::-1]
        if not steps:
            return None
        errors = []
        for s in steps:
            try:
                out = self.manager.restore(s, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
                state = out["state"]
                _check_finite_tree(state, s)
                return state, dict(out["meta"]), s
            except Exception as e:  # noqa: BLE001 - any failure means this step is unusable
                msg = f"checkpoint step {s} in {self.directory} could not be restored ({type(e).__name__}: {e})"
                errors.append(msg)
                if len(steps) > 1:
                    log.warning("%s; falling back to the previous checkpoint", msg)
                    print(f"WARNING: {msg}; falling back to the previous checkpoint", flush=True)
        raise CheckpointError("no usable checkpoint in " + self.directory + ":\n  " + "\n  ".join(errors) +
                              "\nNothing was overwritten. Remove the broken steps or point config.workdir elsewhere.")


def _check_finite_tree(state, step):
    import numpy as np

    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        if hasattr(leaf, "dtype") and np.issubdtype(leaf.dtype, np.floating):
            if not bool(jax.numpy.isfinite(leaf).all()):
                raise CheckpointError(f"non-finite values in {jax.tree_util.keystr(path)} at step {step}")


def abstract_like(tree, shardings):
    """ShapeDtypeStructs with shardings: the restore target for `Checkpointer.restore`."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class PreemptionWatcher:
    """Turns SIGTERM into a flag the loop checks at each step boundary (save, wait, exit 0)."""

    def __init__(self):
        self._event = threading.Event()
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, lambda *_: self._event.set())
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    @property
    def requested(self) -> bool:
        return self._event.is_set()


# --- model weights as Orbax checkpoints (for `rho-jax convert` and init.target / init.reference) ---

MODEL_CONFIG_FILE = "model_config.json"


def save_model(cfg, params, directory: str) -> None:
    """Writes params + the ModelConfig as an Orbax checkpoint directory (atomic: Orbax finalises by rename)."""
    import dataclasses
    import json

    from etils import epath

    path = epath.Path(directory)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path / "params", params)
    ckptr.wait_until_finished()
    if jax.process_index() == 0:
        (path / MODEL_CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(cfg), indent=1))


def is_model_dir(directory: str) -> bool:
    from etils import epath

    p = epath.Path(directory)
    return (p / MODEL_CONFIG_FILE).exists() or (p / "final" / MODEL_CONFIG_FILE).exists()


def load_model(directory: str, shardings=None):
    """(ModelConfig, params) from `save_model` output, or the latest train checkpoint's params in a workdir."""
    import json

    from etils import epath

    from rho_jax.model import ModelConfig, param_shapes

    p = epath.Path(directory)
    if not (p / MODEL_CONFIG_FILE).exists() and (p / "final" / MODEL_CONFIG_FILE).exists():
        p = p / "final"  # a training workdir: its exported final model
    if not (p / MODEL_CONFIG_FILE).exists():
        raise CheckpointError(f"{directory} is not an Orbax model checkpoint (no {MODEL_CONFIG_FILE}, no final/); "
                              f"convert HF/GGUF weights with `rho-jax convert` or point at a finished workdir")
    cfg = ModelConfig(**json.loads((p / MODEL_CONFIG_FILE).read_text()))
    target = param_shapes(cfg)
    if shardings is not None:
        target = abstract_like(target, shardings)
    return cfg, ocp.StandardCheckpointer().restore(p / "params", target)

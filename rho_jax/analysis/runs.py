"""Reading training workdirs: the runs under a workdir, their recorded configs and their kept checkpoints."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from rho_jax.model import ModelConfig, param_shapes


def discover_runs(workdir: str) -> dict:
    """{name: run dir} for the workdir itself (if it has metrics.jsonl) or its immediate subdirectories."""
    if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        return {os.path.basename(os.path.normpath(workdir)): workdir}
    subdirs = sorted(d for d in os.listdir(workdir) if os.path.isdir(os.path.join(workdir, d)))
    return {d: os.path.join(workdir, d) for d in subdirs if os.path.exists(os.path.join(workdir, d, "metrics.jsonl"))}


def checkpoint_steps(run_dir: str) -> list[int]:
    """Complete checkpoint steps under <run>/checkpoints (Orbax writes commit_success.txt last)."""
    root = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    return sorted(int(d) for d in os.listdir(root) if d.isdigit() and os.path.exists(os.path.join(root, d, "state")))


def load_checkpoint_params(run_dir: str, step: int, cfg):
    """The params of <run>/checkpoints/<step>/state (a TrainState) as numpy, without its optimizer state."""
    target = {"params": param_shapes(cfg)}
    restore = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    path = os.path.abspath(os.path.join(run_dir, "checkpoints", str(step), "state"))
    out = ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(item=target, restore_args=restore,
                                                                              partial_restore=True))
    return out["params"]


def run_config(run_dir: str) -> tuple:
    """(training ConfigDict, ModelConfig) a run recorded in <run>/config.json and <run>/model_config.json."""
    with open(os.path.join(run_dir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    with open(os.path.join(run_dir, "model_config.json")) as f:
        cfg = ModelConfig(**json.load(f))
    return config, cfg

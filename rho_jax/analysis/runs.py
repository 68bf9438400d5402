"""Reading training workdirs: the runs under a workdir and their recorded configs. Their checkpoints are read
through rho_jax.checkpoint (`kept_steps`, `restore_params`), which owns the layout."""

from __future__ import annotations

import json
import os

import ml_collections

from rho_jax import checkpoint
from rho_jax.metrics import METRICS_FILE


def discover_runs(workdir: str) -> dict:
    """{name: run dir} for the workdir itself (if it has metrics.jsonl) or its immediate subdirectories."""
    if os.path.exists(os.path.join(workdir, METRICS_FILE)):
        return {os.path.basename(os.path.normpath(workdir)): workdir}
    subdirs = sorted(d for d in os.listdir(workdir) if os.path.isdir(os.path.join(workdir, d)))
    return {d: os.path.join(workdir, d) for d in subdirs if os.path.exists(os.path.join(workdir, d, METRICS_FILE))}


def run_config(run_dir: str) -> tuple:
    """(training ConfigDict, ModelConfig) a run recorded next to its checkpoints."""
    with open(os.path.join(run_dir, checkpoint.RUN_CONFIG_FILE)) as f:
        config = ml_collections.ConfigDict(json.load(f))
    return config, checkpoint.workdir_model_config(run_dir)

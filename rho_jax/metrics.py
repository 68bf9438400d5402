"""Metrics: one JSON object per line in <workdir>/metrics.jsonl and TensorBoard event files.

Only process 0 writes. Cumulative counters (tokens, FLOPs) live in `Counters`, which is saved with the
checkpoint so a resumed run continues the same curves. A gs:// object cannot be appended to: there
metrics.jsonl is rewritten whole at each write (as tensorboardX does with its event files on GCS).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import jax
import numpy as np
from etils import epath

METRICS_FILE = "metrics.jsonl"  # in the workdir: one JSON row per logged step


@dataclasses.dataclass
class Counters:
    tokens_processed: int = 0  # token positions run through the target model (B * L per step)
    tokens_selected: int = 0  # target tokens that contributed to the loss
    # cumulative FLOPs per in-step stage (rho_jax.flops.STAGES); older checkpoints lack the last two
    train_flops: float = 0.0
    reference_flops: float = 0.0  # online reference forward
    selection_flops: float = 0.0  # SLM no-grad scoring pass (grad_accum > 1)
    ema_reference_flops: float = 0.0  # forward of the EMA reference

    def add_step(self, flops_per_token: dict, tokens: int) -> None:
        """Adds one step's `tokens` at each stage's FLOPs per token (`flops.step_flops_per_token`)."""
        for stage, per_token in flops_per_token.items():
            setattr(self, stage, getattr(self, stage) + per_token * tokens)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _scalar(v: Any):
    v = np.asarray(v)
    if v.dtype.kind in "iub":
        return int(v)
    f = float(v)
    return f if math.isfinite(f) else str(f)  # JSON has no NaN/inf


class MetricsWriter:
    """Appends metrics rows to metrics.jsonl and TensorBoard (tensorboardX) under `workdir` (local or gs://)."""

    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = epath.Path(workdir) / METRICS_FILE
        self._remote = "://" in workdir
        self._text = ""  # remote: the whole file, rewritten at each write
        self._tb = None
        if self.enabled:
            if not self._remote:
                os.makedirs(workdir, exist_ok=True)
            elif self.path.exists():  # a resumed run continues the rows already there
                self._text = self.path.read_text()
            # tensorboardX imports torch whenever torch is installed: only where events are written
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.fspath(epath.Path(workdir) / "tb"))

    def write(self, step: int, row: dict) -> dict:
        row = {"step": int(step), **{k: _scalar(v) for k, v in row.items() if k != "step"}}
        if not self.enabled:
            return row
        line = json.dumps(row) + "\n"
        if self._remote:
            self._text += line
            self.path.write_text(self._text)
        else:
            with open(self.path, "a") as f:
                f.write(line)
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)):
                self._tb.add_scalar(k, v, step)
        self._tb.flush()
        return row

    def close(self):
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    text = (epath.Path(workdir) / METRICS_FILE).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]

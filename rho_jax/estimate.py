"""Compute and time estimates for a config on a named TPU slice (the numbers in configs' docstrings).

Per processed token, inside one train step (the usual model-FLOPs count, as in `rho_jax.flops`):
  train      6·N + 6·L·s·d             forward + backward of the target
  selection  2·N + 2·L·s·d   SLM with grad_accum > 1 only: the no-grad pass that scores every
                             micro-batch before the gradient pass, so the top-k sees the global batch
  reference  2·N + 2·L·s·d   SLM with reference='online' only (the reference model's forward)
  ema        2·N + 2·L·s·d   SLM with reference='ema' only (the forward of the target's EMA)
With reference='cached' the reference forward runs once, offline, in the scoring job instead
(`score_*` fields). An SLM plan with its reference run adds the reference's training: the whole
pipeline is reference training + scoring + SLM (`Pipeline`). Per-stage rules:
`rho_jax.flops.step_flops_per_token`. The hardware also recomputes under remat
(`rho_jax.flops.recompute_flops_per_token`, checked against the compiled programs by `rho-jax compile`):
  recompute  full remat: the layers' forward but each layer's MLP down-projection (its output is not
             needed by the backward), 2·(N - N_head) - 2·L·d·f + 2·L·s·d;
             dots_with_no_batch_dims_saveable: the attention dots, 2·L·s·d; dots_saveable / none: 0;
             plus the chunked CE's head matmul, 2·d·V, when ce_chunk > 0 (its chunk body is remat),
             plus the attention scores again, L·s·d, when model.attention_chunk > 0 (query blocks are remat)
`hardware_flops_per_token` is what a step really executes. Time = executed FLOPs / (chips · peak · u),
u an assumed utilisation stated with the numbers (so trading a selection pass for remat shows its real cost).
"""

from __future__ import annotations

import dataclasses

from rho_jax import config as config_lib
from rho_jax import flops, train

ASSUMED_MFU = 0.4


@dataclasses.dataclass(frozen=True)
class Slice:
    """A Cloud TPU slice as JAX sees it: one device per chip (v4/v5p megacore counts 2 cores as 1)."""

    chips: int  # jax.device_count() on the slice
    hosts: int  # TPU VM workers = JAX processes
    peak_key: str  # key of rho_jax.flops.PEAK_FLOPS
    hbm_bytes: int  # HBM per chip
    topology: str  # libtpu's topology name (`rho-jax compile` compiles for it): generation:chip grid

    @property
    def peak_flops(self) -> float:
        return flops.PEAK_FLOPS[self.peak_key]

    @property
    def chip_config(self) -> str:
        """libtpu's chip config: v4 and v5p chips are megacore (one JAX device per chip, two cores)."""
        return "megacore" if self.topology.split(":")[0] in ("v4", "v5p") else "default"


GIB = 2**30
# Accelerator-type names as `gcloud compute tpus` spells them (v4/v5p: the suffix counts TensorCores).
# The small single-host slices serve CI's compile checks and ad-hoc runs.
SLICES = {
    "v4-8": Slice(4, 1, "tpu v4", 32 * GIB, "v4:2x2x1"),
    "v4-32": Slice(16, 4, "tpu v4", 32 * GIB, "v4:2x2x4"),
    "v4-128": Slice(64, 16, "tpu v4", 32 * GIB, "v4:4x4x4"),
    "v5litepod-4": Slice(4, 1, "tpu v5 lite", 16 * GIB, "v5e:2x2"),
    "v5litepod-16": Slice(16, 4, "tpu v5 lite", 16 * GIB, "v5e:4x4"),
    "v5litepod-64": Slice(64, 16, "tpu v5 lite", 16 * GIB, "v5e:8x8"),
    "v5p-8": Slice(4, 1, "tpu v5p", 95 * GIB, "v5p:2x2x1"),
    "v5p-32": Slice(16, 4, "tpu v5p", 95 * GIB, "v5p:2x2x4"),
    "v5p-128": Slice(64, 16, "tpu v5p", 95 * GIB, "v5p:4x4x4"),
    "v6e-4": Slice(4, 1, "tpu v6e", 32 * GIB, "v6e:2x2"),
    "v6e-16": Slice(16, 4, "tpu v6e", 32 * GIB, "v6e:4x4"),
    "v6e-64": Slice(64, 16, "tpu v6e", 32 * GIB, "v6e:8x8"),
}


@dataclasses.dataclass(frozen=True)
class RunEstimate:
    slice_name: str
    chips: int
    peak_flops: float  # per chip, FLOP/s
    mfu: float
    tokens: int  # processed (not selected) tokens: steps · batch_size · seq_len
    train_flops_per_token: float
    selection_flops_per_token: float
    reference_flops_per_token: float
    score_flops_per_token: float  # offline scoring job (reference='cached'), 0 otherwise
    ema_flops_per_token: float = 0.0  # reference='ema': the EMA's forward in the step
    recompute_flops_per_token: float = 0.0  # remat recomputation in the gradient pass (not model FLOPs)

    @property
    def step_flops_per_token(self) -> float:
        return (self.train_flops_per_token + self.selection_flops_per_token + self.reference_flops_per_token
                + self.ema_flops_per_token)

    @property
    def hardware_flops_per_token(self) -> float:
        return self.step_flops_per_token + self.recompute_flops_per_token

    @property
    def total_flops(self) -> float:
        """Executed FLOPs of the run (model FLOPs + remat recompute): what the hours are computed from."""
        return self.tokens * self.hardware_flops_per_token

    def hours(self, total_flops: float) -> float:
        return total_flops / (self.chips * self.peak_flops * self.mfu) / 3600.0

    @property
    def train_hours(self) -> float:
        return self.hours(self.total_flops)

    @property
    def score_flops(self) -> float:
        return self.tokens * self.score_flops_per_token

    @property
    def score_hours(self) -> float:
        return self.hours(self.score_flops)


def estimate(config, slice_name: str, mfu: float = ASSUMED_MFU) -> RunEstimate:
    """FLOPs and hours of `config` (its model fields give the shape) on the slice `slice_name`."""
    if slice_name not in SLICES:
        raise KeyError(f"unknown slice {slice_name!r}; known: {sorted(SLICES)} (add it to rho_jax.estimate.SLICES)")
    s = SLICES[slice_name]
    cfg = config_lib.model_config(config)
    seq = config.data.seq_len
    spec = train.StepSpec.from_config(config, cfg, cfg)  # the reference shares the target's shape
    stage = flops.step_flops_per_token(spec, seq)
    return RunEstimate(
        slice_name=slice_name, chips=s.chips, peak_flops=s.peak_flops, mfu=mfu,
        tokens=config.train.steps * config.train.batch_size * seq,
        train_flops_per_token=stage["train_flops"], selection_flops_per_token=stage["selection_flops"],
        reference_flops_per_token=stage["reference_flops"], ema_flops_per_token=stage["ema_reference_flops"],
        score_flops_per_token=flops.reference_flops_per_token(cfg, seq) if spec.cached else 0.0,
        recompute_flops_per_token=flops.recompute_flops_per_token(cfg, seq, int(config.objective.ce_chunk)))


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """The whole Rho-1 run: the reference's training, the offline scoring, the SLM run."""

    reference: RunEstimate  # the reference run's own estimate (its config and slice)
    slm: RunEstimate

    @property
    def total_flops(self) -> float:
        return self.reference.total_flops + self.slm.score_flops + self.slm.total_flops

    @property
    def hours(self) -> float:
        return self.reference.train_hours + self.slm.score_hours + self.slm.train_hours


def summary(config, slice_name: str, mfu: float = ASSUMED_MFU, reference: RunEstimate | None = None) -> str:
    """One paragraph for a config's docstring; tests check that the docstring contains it verbatim.

    `reference`: the estimate of the SLM run's reference training, for the whole-pipeline line."""
    e = estimate(config, slice_name, mfu)
    g = 1e9
    parts = [f"train {e.train_flops_per_token / g:.2f}"]
    if e.selection_flops_per_token:
        parts.append(f"selection pass {e.selection_flops_per_token / g:.2f}")
    if e.reference_flops_per_token:
        parts.append(f"online reference {e.reference_flops_per_token / g:.2f}")
    if e.ema_flops_per_token:
        parts.append(f"EMA reference {e.ema_flops_per_token / g:.2f}")
    remat = config_lib.model_config(config).remat
    text = (f"{slice_name} ({e.chips} chips x {e.peak_flops / 1e12:.0f} TFLOP/s bf16 peak) at an assumed "
            f"{e.mfu:.0%} of peak on executed FLOPs: {e.tokens / g:.2f}B tokens x "
            f"{e.hardware_flops_per_token / g:.2f} GFLOP/token executed (model {e.step_flops_per_token / g:.2f}: "
            f"{' + '.join(parts)}; remat recompute ({remat}) {e.recompute_flops_per_token / g:.2f}) = "
            f"{e.total_flops:.3g} FLOPs -> {e.train_hours:.1f} h.")
    if e.score_flops_per_token:
        text += (f" Offline scoring (reference forward): {e.score_flops_per_token / g:.2f} GFLOP/token = "
                 f"{e.score_flops:.3g} FLOPs -> {e.score_hours:.1f} h.")
    if reference is not None:
        p = Pipeline(reference, e)
        text += (f" Whole pipeline: reference training {reference.total_flops:.3g} ({reference.slice_name}) + "
                 f"scoring {e.score_flops:.3g} + SLM {e.total_flops:.3g} = {p.total_flops:.3g} FLOPs -> "
                 f"{p.hours:.1f} h.")
    return text

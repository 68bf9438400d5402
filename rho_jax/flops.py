"""FLOPs per token and MFU.

Per processed token (model FLOPs: 2 per multiply-add, backward = 2x forward):
  training   ≈ 6·N_matmul + 6·L·s·d   (forward + backward; causal attention halves s²)
  reference  ≈ 2·N_matmul + 2·L·s·d   (one forward)
where N_matmul counts matmul parameters (layers + LM head, not the embedding lookup), L the
layers, s the sequence length and d the attention width (heads × head_dim).

Stages of a Rho-1 pipeline, each counted in metrics rows (`STAGES`, cumulative FLOPs):
  train_flops            the target's forward + backward, every processed token
  selection_flops        SLM with grad_accum > 1: the no-grad pass that scores every micro-batch
  reference_flops        reference='online': the reference forward
  ema_reference_flops    reference='ema': the forward of the target's EMA
Outside the SLM run: the reference's own training (its run's metrics) and the offline scoring
job (`scoring_flops`). `compute_ratio` turns the rows into Y = (SLM to reach CLM's final loss +
reference training + scoring) / CLM.
"""

from __future__ import annotations

import dataclasses
import math

import jax

from rho_jax import model

# Dense bf16 peak FLOP/s per chip, from vendor spec sheets.
PEAK_FLOPS = {
    "h100": 989e12,
    "h200": 989e12,
    "a100": 312e12,
    "l4": 121e12,
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v5": 459e12,
    "tpu v6 lite": 918e12,
    "tpu v6e": 918e12,
}


def matmul_params(cfg) -> int:
    d, f, hd = cfg.d_model, cfg.d_ff, cfg.hd
    per_layer = d * hd * (2 * cfg.n_heads + 2 * cfg.n_kv_heads) + 3 * d * f
    return cfg.n_layers * per_layer + d * cfg.vocab_size


def attention_flops_per_token(cfg, seq_len: int, passes: int, dense: bool = False) -> float:
    # QK^T and AV: 2·s·d multiply-adds each per token and layer -> 4·s·d FLOPs for the whole square. The model
    # count halves it (causal); `dense` counts the share of the square that XLA's einsum attention executes.
    share = executed_attention_share(cfg, seq_len) if dense else 0.5
    return passes * cfg.n_layers * seq_len * cfg.n_heads * cfg.hd * 4.0 * share


def executed_attention_share(cfg, seq_len: int) -> float:
    """The share of the s² query-key pairs that the 'xla' attention computes: the query-chunked kernel
    (attention_chunk < s) every pair, the plain one the causal blocks' sum (b - a)·b (model.causal_query_blocks)."""
    if cfg.attention_chunk and seq_len > cfg.attention_chunk:
        return 1.0
    return sum((b - a) * b for a, b in model.causal_query_blocks(seq_len)) / seq_len**2


def dense_attention(cfg) -> bool:
    """Whether the model's attention computes masked query-key pairs ('xla': the query-chunked kernel all of
    them, the plain one those inside its causal blocks; `executed_attention_share`); cuDNN's fused kernel skips
    them."""
    return cfg.attention == "xla"


def train_flops_per_token(cfg, seq_len: int, dense: bool = False) -> float:
    return 6.0 * matmul_params(cfg) + attention_flops_per_token(cfg, seq_len, 3, dense)


def reference_flops_per_token(cfg, seq_len: int, dense: bool = False) -> float:
    return 2.0 * matmul_params(cfg) + attention_flops_per_token(cfg, seq_len, 1, dense)


def recompute_flops_per_token(cfg, seq_len: int, ce_chunk: int = 0, dense: bool = False) -> float:
    """FLOPs per token that remat re-executes in the backward pass (hardware work beyond model FLOPs).

    A recomputed forward skips every product whose result its backward does not read (JAX prunes it):
      full remat                  the layers' forward but each layer's last matmul (the MLP
                                  down-projection, whose output only feeds the residual sum):
                                  2·(N - N_head) - 2·L·d·f + attention (2·L·s·d)
      dots_with_no_batch_dims_saveable  the attention dots, 2·L·s·d;  dots_saveable / none: 0
      ce_chunk > 0                the chunked CE's head matmul, 2·d·V (its chunk body is remat)
      model.attention_chunk > 0   the scores QK^T of each query block again, L·s·d (the block is remat;
                                  its backward needs the probabilities, not the block's output)
    `rho-jax compile` checks this count against the traced program of every real config."""
    attn = attention_flops_per_token(cfg, seq_len, 1, dense)
    head = 2.0 * cfg.d_model * cfg.vocab_size
    down = 2.0 * cfg.n_layers * cfg.d_model * cfg.d_ff
    layers = {"none": 0.0, "dots_saveable": 0.0, "dots_with_no_batch_dims_saveable": attn,
              "full": 2.0 * matmul_params(cfg) - head - down + attn}
    if cfg.remat not in layers:
        raise KeyError(f"no recompute count for remat={cfg.remat!r}; add it to rho_jax.flops")
    scores = attn / 2 if cfg.attention == "xla" and cfg.attention_chunk and seq_len > cfg.attention_chunk else 0.0
    return layers[cfg.remat] + scores + (head if ce_chunk else 0.0)


STAGES = ("train_flops", "selection_flops", "reference_flops", "ema_reference_flops")


def step_flops_per_token(spec, seq_len: int, dense: bool = False) -> dict[str, float]:
    """FLOPs per processed token of each in-step stage (keys: `STAGES`) for a `train.StepSpec`; `dense`
    counts attention as a dense kernel executes it (see `attention_flops_per_token`)."""
    t = spec.model
    forward = reference_flops_per_token(t, seq_len, dense)
    return {
        "train_flops": train_flops_per_token(t, seq_len, dense),
        "selection_flops": forward if spec.slm and spec.grad_accum > 1 and spec.scope != "micro_batch" else 0.0,
        "reference_flops": reference_flops_per_token(spec.ref_model, seq_len, dense) if spec.online else 0.0,
        "ema_reference_flops": forward if spec.ema else 0.0,
    }


def executed_step_flops_per_token(spec, seq_len: int) -> float:
    """FLOPs per processed token that the jitted train step executes (what `rho-jax compile` checks against
    the compiled program): its stages but the online reference's forward (a program of its own, run
    before the step) plus remat recompute, with attention as the model's kernel runs it (`dense_attention`)."""
    dense = dense_attention(spec.model)
    stage = step_flops_per_token(spec, seq_len, dense)
    return (total_flops(stage) - stage["reference_flops"]
            + recompute_flops_per_token(spec.model, seq_len, spec.ce_chunk, dense))


def scoring_flops(ref_cfg, seq_len: int, n_tokens: int) -> float:
    """FLOPs of the offline scoring job: one reference forward over `n_tokens` packed positions
    (rows x seq_len, padding included, as the job runs them). The entropy is not counted (O(V) per
    token, next to the 2·N_matmul of the forward)."""
    return float(n_tokens) * reference_flops_per_token(ref_cfg, seq_len)


def total_flops(row: dict) -> float:
    """Cumulative in-step FLOPs of a metrics row: the sum of its `STAGES` counters."""
    return float(sum(row.get(k, 0.0) for k in STAGES))


@dataclasses.dataclass(frozen=True)
class ComputeRatio:
    """SLM vs CLM at CLM's final loss; `reached` False when SLM never gets there (X and Y are then None)."""

    clm_final_loss: float
    clm_flops: float  # CLM's whole run, in-step FLOPs
    clm_tokens: int
    slm_step: int | None  # first evaluated SLM step with loss <= clm_final_loss
    slm_flops: float | None  # SLM's in-step FLOPs at the interpolated crossing (online / EMA reference included)
    slm_tokens: float | None  # processed tokens at the interpolated crossing
    reference_training_flops: float
    scoring_flops: float

    @property
    def reached(self) -> bool:
        return self.slm_step is not None

    @property
    def token_ratio(self) -> float | None:
        """X: SLM's processed tokens to reach CLM's final loss / CLM's processed tokens."""
        return self.slm_tokens / self.clm_tokens if self.reached else None

    @property
    def y(self) -> float | None:
        """Y: (SLM FLOPs to reach it + reference training + scoring) / CLM's FLOPs."""
        if not self.reached:
            return None
        return (self.slm_flops + self.reference_training_flops + self.scoring_flops) / self.clm_flops


def crossing(rows, loss_key: str, target: float, start_loss: float | None = None):
    """(step, FLOPs, tokens) where the eval curve of `rows` first reaches `target`: FLOPs and tokens linearly
    interpolated between the evaluation before and the first at or below it; with `start_loss`, the curve
    starts at (0 FLOPs, 0 tokens, start_loss) (the model before training). None when it never does."""
    pts = [(0, 0.0, 0.0, float(start_loss))] if start_loss is not None else []
    pts += [(int(r["step"]), total_flops(r), float(r["tokens_processed"]), float(r[loss_key]))
            for r in rows if _number(r.get(loss_key))]
    for i, (step, f, t, y) in enumerate(pts):
        if y <= target:
            if i == 0:
                return step, f, t
            _, f0, t0, y0 = pts[i - 1]
            w = (y0 - target) / (y0 - y)
            return step, f0 + (f - f0) * w, t0 + (t - t0) * w
    return None


def compute_ratio(slm_rows, clm_rows, reference_rows=(), scoring: float = 0.0,
                  loss_key: str = "eval_loss", start_loss: float | None = None) -> ComputeRatio:
    """X and Y from metrics rows (`metrics.read_metrics`), with exact cumulative counters.

    CLM's final loss is its last row carrying `loss_key`. SLM reaches it where its eval curve crosses it
    (`crossing`: FLOPs and tokens interpolated between evaluations, from `start_loss` at 0 when given), so
    X and Y are read off the same curve in the same way. Reference training = the reference run's own
    in-step FLOPs at its last row; `scoring` = the FLOPs of scoring the rows the SLM run reads (0 for
    online / EMA references, whose cost is already in the SLM rows).
    """
    clm = [r for r in clm_rows if _number(r.get(loss_key))]
    if not clm:
        raise ValueError(f"the CLM metrics have no {loss_key!r} rows; set config.eval.every > 0")
    final = clm[-1]
    hit = crossing(slm_rows, loss_key, float(final[loss_key]), start_loss)
    return ComputeRatio(
        clm_final_loss=float(final[loss_key]), clm_flops=total_flops(final),
        clm_tokens=int(final["tokens_processed"]),
        slm_step=None if hit is None else hit[0],
        slm_flops=None if hit is None else hit[1],
        slm_tokens=None if hit is None else hit[2],
        reference_training_flops=total_flops(reference_rows[-1]) if reference_rows else 0.0,
        scoring_flops=float(scoring))


def _number(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def device_peak_flops(device: jax.Device | None = None, override: float = 0.0) -> float:
    """Peak FLOP/s of one device: `override` when > 0, else from PEAK_FLOPS, else 0 (unknown)."""
    if override > 0:
        return float(override)
    kind = (device or jax.devices()[0]).device_kind.lower()
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key in kind:
            return PEAK_FLOPS[key]
    return 0.0


def mfu(flops_per_s: float, n_devices: int, peak_per_device: float) -> float | None:
    if peak_per_device <= 0:
        return None
    return flops_per_s / (n_devices * peak_per_device)

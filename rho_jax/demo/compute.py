"""The demo's compute accounting: model FLOPs of every stage (base, reference training, scoring, each
continual-pretraining run) from the runs' cumulative metrics counters and the score manifests, and Y:
an arm's FLOPs to reach CLM's final held-out loss, its one-off costs included, over CLM's (rho_jax.flops).

Scoring is charged for the rows the runs read (steps x batch), at the job's own FLOPs per row: the job
scores whole prepared shards, a few rows past them, which is the demo's bookkeeping, not SLM's cost."""

from __future__ import annotations

from rho_jax import config as config_lib
from rho_jax import flops
from rho_jax.data import rows as rows_lib, scores as scores_lib
from rho_jax.demo.stages import stage_config
from rho_jax.metrics import read_metrics


def run_flops(rows: list[dict]) -> float:
    """A run's in-step FLOPs: the cumulative counters of its last metrics row."""
    return flops.total_flops(rows[-1]) if rows else 0.0


def scoring(dc) -> dict:
    """{rows, tokens, flops}: the scoring of the rows the SLM run reads (charged in Y), and {rows_scored,
    flops_job}: every row the job scored (whole prepared shards), from its score manifests."""
    cfg = stage_config(dc, "slm")
    manifests = [rows_lib.read_manifest(sdir, scores_lib.FORMAT)
                 for _, _, sdir, _ in scores_lib.component_dirs(cfg.data.prepared, cfg.data.score_cache)]
    n = sum(m["rows"] for m in manifests)
    job = sum(m["scoring_flops"] for m in manifests)
    read = min(n, cfg.train.steps * cfg.train.batch_size)
    return {"rows": read, "tokens": read * cfg.data.seq_len, "flops": job * read / n if n else 0.0,
            "rows_scored": n, "flops_job": job}


def stage_flops(dc) -> dict:
    """{base, reference, scoring: {flops, tokens}}: the stages every selecting arm shares (base None when
    given as a checkpoint)."""
    out = {}
    for stage in ("base", "reference"):
        if stage == "base" and dc.base.checkpoint:
            out[stage] = None
            continue
        rows = read_metrics(stage_config(dc, stage).workdir)
        out[stage] = {"flops": run_flops(rows), "tokens": rows[-1]["tokens_processed"]}
    out["scoring"] = scoring(dc)
    return out


def proportions(shared: dict, clm_flops: float) -> dict:
    """The one-off costs in units of one CLM run: Y = X + reference_x_clm + scoring_x_clm when SLM's
    step costs CLM's (the cached reference)."""
    return {"reference_x_clm": shared["reference"]["flops"] / clm_flops,
            "scoring_x_clm": shared["scoring"]["flops"] / clm_flops}


def uses_reference(dc, arm: str) -> bool:
    """Whether the arm's selection reads the reference's scores (then it pays reference training and scoring)."""
    return config_lib.run_spec_of(stage_config(dc, arm)).objective.reads_reference


def ratio(dc, arm: str, arm_rows: list[dict], clm_rows: list[dict], shared: dict, key: str,
          reference_rows: list[dict], start_loss: float) -> dict:
    """flops.compute_ratio of one seed's arm run against the same seed's CLM run, with the reference's
    training (its metrics rows) and the scoring when the arm reads reference scores; its X and Y, both
    interpolated on the eval curve that starts at the base's loss (`start_loss`, 0 tokens)."""
    ref = uses_reference(dc, arm)
    r = flops.compute_ratio(arm_rows, clm_rows, reference_rows=reference_rows if ref else (),
                            scoring=shared["scoring"]["flops"] if ref else 0.0, loss_key=key, start_loss=start_loss)
    return {"reached": r.reached, "step": r.slm_step, "tokens": r.slm_tokens, "token_ratio": r.token_ratio,
            "flops": r.slm_flops, "clm_flops": r.clm_flops, "reference_training_flops": r.reference_training_flops,
            "scoring_flops": r.scoring_flops, "y": r.y}

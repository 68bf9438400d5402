"""Compute accounting: per-stage FLOPs of a step, the counters, and Y from metrics rows."""

import math

import pytest
from helpers import tiny_config

from rho_jax import config as config_lib
from rho_jax import estimate, flops, train
from rho_jax.metrics import Counters


def _spec(**objective):
    c = tiny_config(**objective)
    m = config_lib.model_config(c)
    return train.StepSpec.from_config(c, m, m), m, c


def test_step_flops_per_token_counts_each_stage_once():
    seq = 24
    _, m, c = _spec()
    train_ft, fwd = flops.train_flops_per_token(m, seq), flops.reference_flops_per_token(m, seq)
    assert math.isclose(train_ft, 3 * fwd)  # forward + backward = 3 forwards (matmuls and attention)
    cases = {
        (("mode", "clm"),): dict(train_flops=train_ft),
        (("mode", "slm"), ("reference", "online")): dict(train_flops=train_ft, reference_flops=fwd),
        (("mode", "slm"), ("reference", "cached")): dict(train_flops=train_ft),
        (("mode", "slm"), ("reference", "ema"), ("score", "reverse_excess")): dict(train_flops=train_ft,
                                                                                   ema_reference_flops=fwd),
        (("mode", "slm"), ("reference", "online"), ("score", "target_loss")): dict(train_flops=train_ft),
    }
    for objective, want in cases.items():
        spec, _, _ = _spec(**dict(objective))
        got = flops.step_flops_per_token(spec, seq)
        assert set(got) == set(flops.STAGES)
        assert got == {k: want.get(k, 0.0) for k in flops.STAGES}, objective
    spec, _, _ = _spec(mode="slm", reference="cached")
    spec4 = train.StepSpec(**{**spec.__dict__, "grad_accum": 4})
    assert flops.step_flops_per_token(spec4, seq)["selection_flops"] == fwd  # the no-grad scoring pass
    assert flops.scoring_flops(m, seq, 1000) == 1000 * fwd


def test_counters_add_every_stage_and_resume_from_old_checkpoints():
    c = Counters(**{"tokens_processed": 5, "tokens_selected": 3, "train_flops": 1.0, "reference_flops": 2.0})
    c.add_step({"train_flops": 6.0, "selection_flops": 2.0, "reference_flops": 0.0, "ema_reference_flops": 2.0}, 10)
    assert (c.train_flops, c.selection_flops, c.reference_flops, c.ema_reference_flops) == (61.0, 20.0, 2.0, 20.0)
    assert flops.total_flops(c.to_dict()) == 103.0


def rows(losses, flops_per_step, tokens_per_step, key="eval_loss"):
    return [{"step": i + 1, key: loss, "tokens_processed": (i + 1) * tokens_per_step,
             "train_flops": (i + 1) * flops_per_step * 0.75, "reference_flops": (i + 1) * flops_per_step * 0.25}
            for i, loss in enumerate(losses)]


def test_compute_ratio_from_metrics_rows():
    clm = rows([3.0, 2.5, 2.2, 2.0], flops_per_step=100.0, tokens_per_step=10)
    slm = rows([2.8, 2.1, 1.9, 1.7], flops_per_step=120.0, tokens_per_step=10)  # crosses 2.0 halfway to step 3
    ref = rows([3.0, 1.0], flops_per_step=30.0, tokens_per_step=5)
    r = flops.compute_ratio(slm, clm, ref, scoring=50.0)
    assert r.reached and r.slm_step == 3 and r.clm_final_loss == 2.0
    # X and Y off the same curve the same way: interpolated between steps 2 (240 FLOPs) and 3 (360)
    assert r.clm_flops == 400.0 and r.slm_flops == pytest.approx(300.0) and r.reference_training_flops == 60.0
    assert r.token_ratio == pytest.approx(25 / 40)
    assert r.y == pytest.approx((300.0 + 60.0 + 50.0) / 400.0)  # > token ratio: the reference and scoring count
    # Below the target at the first evaluation: from the start point (0 FLOPs, start_loss) when given
    early = flops.compute_ratio(rows([1.9, 1.8], 120.0, 10), clm, start_loss=3.0)
    assert early.slm_flops == pytest.approx(120.0 * 1.0 / 1.1) and early.slm_tokens == pytest.approx(10 / 1.1)
    assert flops.compute_ratio(rows([1.9, 1.8], 120.0, 10), clm).slm_flops == 120.0  # no start: the first point
    # SLM that never gets there: no Y, said so
    never = flops.compute_ratio(rows([2.9, 2.6, 2.3, 2.1], 120.0, 10), clm, ref, scoring=50.0)
    assert not never.reached and never.y is None and never.token_ratio is None
    # rows without the loss (log-only steps, non-finite) are skipped
    assert flops.compute_ratio([{"step": 1, "eval_loss": "nan"}] + slm, clm + [{"step": 5}]).slm_step == 3
    with pytest.raises(ValueError, match="eval.every"):
        flops.compute_ratio(slm, [{"step": 1, "loss": 2.0}])


def test_estimate_counts_the_ema_forward_and_the_whole_pipeline():
    c = tiny_config(mode="slm", reference="ema", score="reverse_excess")
    c.train.steps = 10
    e = estimate.estimate(c, "v4-8")
    m = config_lib.model_config(c)
    assert e.ema_flops_per_token == flops.reference_flops_per_token(m, 24) and e.score_flops == 0
    cached = tiny_config(mode="slm", reference="cached")
    ref = estimate.estimate(tiny_config(mode="clm"), "v4-8")
    p = estimate.Pipeline(ref, estimate.estimate(cached, "v4-8"))
    assert p.total_flops == ref.total_flops + p.slm.score_flops + p.slm.total_flops > p.slm.total_flops
    assert "Whole pipeline" in estimate.summary(cached, "v4-8", reference=ref)

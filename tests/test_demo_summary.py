"""The demo's summary maths on made-up metrics rows: mean ± std over seeds, the paired 95% t-interval
(against numpy and scipy), tokens to reach CLM's final loss (X) and the compute ratio Y (by hand)."""

import json
import os

import numpy as np
import pytest
from ml_collections import config_flags
from scipy import stats as scipy_stats

from rho_jax import demo
from rho_jax.demo import compute, summary as summary_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    return config_flags.config_flags._ConfigFileParser("config").parse(os.path.join(REPO, "configs", name))


def test_mean_std_and_paired_interval_match_numpy_and_scipy():
    a, b = [4.0, 4.2, 4.1], [4.5, 4.4, 4.8]
    st = demo.mean_std(a)
    assert (st["mean"], st["std"], st["n"]) == (pytest.approx(np.mean(a)), pytest.approx(np.std(a, ddof=1)), 3)
    p = demo.paired_interval(a, b)
    d = np.subtract(a, b)
    half = 4.302652729911275 * np.std(d, ddof=1) / np.sqrt(3)  # t_{0.975, 2}, from a t table
    assert p["mean"] == pytest.approx(d.mean()) and p["diffs"] == pytest.approx(d.tolist())
    assert (p["lo"], p["hi"]) == (pytest.approx(d.mean() - half), pytest.approx(d.mean() + half))
    lo, hi = scipy_stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (p["lo"], p["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    one = demo.paired_interval([1.0], [2.0])
    assert one["mean"] == -1.0 and one["lo"] is None and one["std"] == 0.0
    with pytest.raises(ValueError, match="same seeds"):
        demo.paired_interval([1.0, 2.0], [1.0])


def _made_up_runs(dc):
    """Metrics rows (two evaluations, cumulative FLOPs) and eval outputs of 3 seeds x clm, slm, random, with
    the held-out losses of the seeds given here; the base's held-out loss is 7.0."""
    key = "eval_loss/champ_clean"
    losses = {"clm": [(5.5, 5.0), (5.6, 5.1), (5.4, 4.9)], "slm": [(4.8, 4.5), (5.2, 4.7), (4.7, 4.3)],
              "random": [(5.7, 5.2), (5.8, 5.3), (5.5, 5.0)]}
    rows, evals = {}, {"base": {"heldout": {"champ_clean": 7.0}, "checkpoints": [{"solution_loss": 7.1}],
                                "few_shot": {"gsm8k100": {"accuracy": 0.0, "n": 4}}}}
    for arm, per_seed in losses.items():
        for seed, ys in enumerate(per_seed):
            rows[demo.stage_config(dc, arm, seed=seed).workdir] = [
                {"step": step, "tokens_processed": step * 1000, "tokens_selected": step * (990 if arm == "clm" else 600),
                 "train_flops": step * 1e9, key: y} for step, y in zip((3, 6), ys)]
            evals[demo.run_name(arm, seed)] = {"checkpoints": [{"solution_loss": ys[1] + 1}],
                                               "few_shot": {"gsm8k100": {"accuracy": 0.25 * (arm == "slm"), "n": 4}}}
    rows[demo.stage_config(dc, "reference").workdir] = [{"step": 5, "tokens_processed": 500, "train_flops": 2e9,
                                                         key: 3.0}]
    return losses, rows, evals


def test_summary_means_paired_intervals_x_and_y_by_hand(tmp_path, monkeypatch):
    dc = _load("demo.py")
    dc.workdir = str(tmp_path)
    dc.cpt.seeds, dc.cpt.arms = "0,1,2", "clm,slm,random"
    (tmp_path / "leakage.json").write_text(json.dumps({"shared_problems": 0, "problems": {"reference": 54},
                                                       "files": {"reference": ["x.jsonl"]}}))
    losses, rows, evals = _made_up_runs(dc)
    monkeypatch.setattr(summary_lib, "read_metrics", lambda wd: rows[wd])
    monkeypatch.setattr(compute, "read_metrics", lambda wd: rows[wd])
    shared = {"base": {"flops": 1e9, "tokens": 100}, "reference": {"flops": 2e9, "tokens": 500},
              "scoring": {"flops": 1.5e9, "tokens": 300, "rows": 3}}
    monkeypatch.setattr(compute, "stage_flops", lambda _dc: shared)
    s = demo.summarize(dc, evals, {})

    final = {arm: [ys[1] for ys in per_seed] for arm, per_seed in losses.items()}
    for arm in final:
        st = s["per_arm"][arm]["final_heldout_loss"]
        assert st["mean"] == pytest.approx(np.mean(final[arm]))
        assert st["std"] == pytest.approx(np.std(final[arm], ddof=1))
    p = s["paired"]["slm"]["final_heldout_loss"]
    lo, hi = scipy_stats.ttest_rel(final["slm"], final["clm"]).confidence_interval(0.95)
    assert (p["mean"], p["lo"], p["hi"]) == (pytest.approx(-0.5), pytest.approx(lo), pytest.approx(hi))
    assert s["paired"]["slm"]["gsm8k100_accuracy"]["mean"] == pytest.approx(0.25)

    # X: interpolated on the curve that starts at the base (0 tokens, 7.0); CLM processed 6000 tokens.
    x = {"0": 3000 * (7.0 - 5.0) / (7.0 - 4.8), "1": 3000 + 3000 * (5.2 - 5.1) / (5.2 - 4.7),
         "2": 3000 * (7.0 - 4.9) / (7.0 - 4.7)}
    reach = s["reach"]["slm"]
    for seed, tokens in x.items():
        assert reach["per_seed"][seed]["tokens"] == pytest.approx(tokens)
    assert reach["token_fraction"]["mean"] == pytest.approx(np.mean(list(x.values())) / 6000)
    # Y: (SLM FLOPs at the crossing, interpolated as X is (1e6 FLOPs per token here) + reference training 2e9
    # + scoring 1.5e9) / CLM's 6e9.
    y = [(tokens * 1e6 + 3.5e9) / 6e9 for tokens in x.values()]
    assert [v["compute"]["y"] for v in reach["per_seed"].values()] == pytest.approx(y)
    assert reach["y"]["mean"] == pytest.approx(np.mean(y)) and reach["reached"] == 3
    assert s["reach"]["random"]["reached"] == 0 and s["reach"]["random"]["y"]["mean"] is None
    assert not s["reach"]["random"]["uses_reference"]

    assert s["proportions"] == {"reference_x_clm": pytest.approx(2e9 / 6e9), "scoring_x_clm": pytest.approx(0.25)}
    assert s["leakage"] == {"shared_problems": 0, "problems": {"reference": 54}}  # the file lists stay in leakage.json
    assert s["matched"] == {}

    text = demo.table_text(s)
    assert "Y = X + r + s = X + 0.583" in text and "0 CHAMP problems shared" in text
    assert f"Y = {np.mean(y):.2f} ± {np.std(y, ddof=1):.2f}x CLM's FLOPs" in text
    assert "random does not reach CLM's final held-out champ_clean loss in any of 3 seeds" in text
    # SLM wins the held-out loss here, loses in compute (Y > 1), and the report says so.
    assert "compute: Y = " in text.split("Where SLM does not win:")[1]
    assert "final held-out loss (champ_clean): SLM" not in text.split("Where SLM does not win:")[1]

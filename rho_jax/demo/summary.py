"""The demo's summary: every reported number from the runs' metrics.jsonl, the eval outputs and the score
manifests: per run (arm x seed), per arm over seeds (mean ± std), each arm against CLM paired by seed
(difference with a 95% interval), tokens (X) and FLOPs (Y) to reach CLM's final held-out loss."""

from __future__ import annotations

import json
from pathlib import Path

from rho_jax.demo import compute
from rho_jax.demo.stages import MATCHED, arms, run_name, seeds, stage_config
from rho_jax.demo.stats import mean_std, paired_interval
from rho_jax.metrics import read_metrics

# Per-run numbers compared arm against CLM (paired by seed); lower is better unless named in HIGHER_BETTER.
PAIRED_KEYS = ("final_heldout_loss", "final_solution_loss", "gsm8k100_answer_nll", "asdiv_answer_nll")
HIGHER_BETTER = ("gsm8k100_accuracy", "asdiv_accuracy")


def tokens_to_reach(rows: list[dict], key: str, target: float):
    """Processed tokens at which the eval curve first reaches `target` (linear interpolation between the
    eval point before and the first point at/below it); None when it never does."""
    pts = [(r["tokens_processed"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    for i, (x, y) in enumerate(pts):
        if y <= target:
            if i == 0:
                return float(x)
            x0, y0 = pts[i - 1]
            return float(x0 + (x - x0) * (y0 - target) / (y0 - y))
    return None


def run_numbers(rows: list[dict], ev: dict, key: str, wall_s) -> dict:
    """The numbers of one run from its metrics rows and its eval output."""
    last = rows[-1]
    evals_rows = [r for r in rows if key in r]
    fs = ev["few_shot"]
    return {"steps": last["step"], "tokens_processed": last["tokens_processed"],
            "tokens_selected": last["tokens_selected"], "final_heldout_loss": evals_rows[-1][key],
            **{f"final_{k}": v for k, v in evals_rows[-1].items() if k.startswith("eval_loss/") and k != key},
            "final_solution_loss": ev["checkpoints"][-1]["solution_loss"],
            **{f"{t}_answer_nll": v for t, v in ev.get("answer_nll", {}).items()},
            **{f"{t}_accuracy": v["accuracy"] for t, v in fs.items()}, "flops": compute.run_flops(rows),
            "wall_s": wall_s}


def _matched(arm_list: list[str], per_arm: dict, shared: dict) -> dict:
    """{arm: {flops, target, mismatch}} of the FLOPs-matched arms: a run's FLOPs against SLM's total (its
    run, the reference training and the scoring), mismatch = flops / target - 1 (whole steps)."""
    target = per_arm["slm"]["flops"]["mean"] + shared["reference"]["flops"] + shared["scoring"]["flops"]
    return {a: {"flops": per_arm[a]["flops"]["mean"], "target": target,
                "mismatch": per_arm[a]["flops"]["mean"] / target - 1.0} for a in arm_list if a in MATCHED}


def _leakage(dc) -> dict:
    """The stage-2 leakage check (<workdir>/leakage.json), without the file lists."""
    out = json.loads((Path(dc.workdir) / "leakage.json").read_text())
    out.pop("files", None)
    return out


def summarize(dc, evals: dict, timings: dict) -> dict:
    """Every number (losses in nats per token, wall times in seconds, FLOPs as model FLOPs).

    evals: {"base" | run_name(arm, seed): eval output} (rho_jax.demo.evaluation)."""
    head = dc.eval.sources.split(",")[0].strip()
    key = f"eval_loss/{head}"
    seed_list, arm_list = seeds(dc), arms(dc)
    base_point = {"tokens_processed": 0, key: evals["base"]["heldout"][head]}
    shared = compute.stage_flops(dc)
    ref_rows = read_metrics(stage_config(dc, "reference").workdir)  # read once: Y and the reference's loss
    metrics = {(a, s): read_metrics(stage_config(dc, a, seed=s).workdir) for a in arm_list for s in seed_list}
    runs = {a: {} for a in arm_list}
    for (a, s), rows in metrics.items():
        runs[a][str(s)] = run_numbers(rows, evals[run_name(a, s)], key, timings.get(run_name(a, s)))
    numeric = [k for k, v in runs["clm"][str(seed_list[0])].items() if isinstance(v, (int, float))]
    per_arm = {a: {k: mean_std([runs[a][str(s)].get(k) for s in seed_list]) for k in numeric} for a in arm_list}

    paired, reach = {}, {}
    compare = [k for k in numeric if k in PAIRED_KEYS or k.startswith("final_eval_loss/") or k in HIGHER_BETTER]
    for a in arm_list:
        if a == "clm":
            continue
        paired[a] = {k: paired_interval([runs[a][str(s)].get(k) for s in seed_list],
                                        [runs["clm"][str(s)].get(k) for s in seed_list]) for k in compare}
        per_seed = {}
        for s in seed_list:
            clm_rows, clm = metrics[("clm", s)], runs["clm"][str(s)]
            tokens = tokens_to_reach([base_point] + metrics[(a, s)], key, clm["final_heldout_loss"])
            per_seed[str(s)] = {"tokens": tokens,
                                "token_fraction": None if tokens is None else tokens / clm["tokens_processed"],
                                "compute": compute.ratio(dc, a, metrics[(a, s)], clm_rows, shared, key, ref_rows,
                                                         base_point[key])}
        reach[a] = {"per_seed": per_seed, "reached": sum(v["tokens"] is not None for v in per_seed.values()),
                    "token_fraction": mean_std([v["token_fraction"] for v in per_seed.values()]),
                    "y": mean_std([v["compute"]["y"] for v in per_seed.values()]),
                    "uses_reference": compute.uses_reference(dc, a)}

    clm_flops = per_arm["clm"]["flops"]["mean"]
    return {
        "heldout_source": head, "seeds": seed_list, "arms": arm_list, "runs": runs, "per_arm": per_arm,
        "paired": paired, "reach": reach, "stage_flops": shared, "proportions": compute.proportions(shared, clm_flops),
        "matched": _matched(arm_list, per_arm, shared), "leakage": _leakage(dc),
        "few_shot_n": {t: v["n"] for t, v in evals["base"]["few_shot"].items()},
        "answer_n": evals["base"].get("answer_n", {}),
        "base": {"heldout_loss": evals["base"]["heldout"][head], "heldout": evals["base"]["heldout"],
                 "solution_loss": evals["base"]["checkpoints"][0]["solution_loss"],
                 **{f"{t}_answer_nll": v for t, v in evals["base"].get("answer_nll", {}).items()},
                 **{f"{t}_accuracy": v["accuracy"] for t, v in evals["base"]["few_shot"].items()}},
        "reference_heldout_loss": next((r[key] for r in reversed(ref_rows) if key in r), None),
        "timings_s": dict(timings), "config": dc.to_dict(),
    }

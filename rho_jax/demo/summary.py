"""The demo's summary: every reported number from the runs' metrics.jsonl and the eval outputs, and the
CLM vs SLM table (terminal and markdown)."""

from __future__ import annotations

from rho_jax.demo.stages import stage_config
from rho_jax.metrics import read_metrics


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


def summarize(dc, evals: dict, timings: dict) -> dict:
    """Every number from the runs' metrics.jsonl and the eval outputs (losses in nats per token, wall
    times in seconds)."""
    head = dc.eval.sources.split(",")[0].strip()
    key = f"eval_loss/{head}"
    runs = {}
    for run in ("clm", "slm"):
        rows = read_metrics(stage_config(dc, run).workdir)
        last = rows[-1]
        evals_rows = [r for r in rows if key in r]
        fs = evals[run]["few_shot"]
        runs[run] = {"steps": last["step"], "tokens_processed": last["tokens_processed"],
                     "tokens_selected": last["tokens_selected"], "final_heldout_loss": evals_rows[-1][key],
                     **{f"final_{k}": v for k, v in evals_rows[-1].items() if k.startswith("eval_loss/") and k != key},
                     "final_solution_loss": evals[run]["checkpoints"][-1]["solution_loss"],
                     **{f"{t}_accuracy": v["accuracy"] for t, v in fs.items()},
                     **{f"{t}_n": v["n"] for t, v in fs.items()}, "wall_s": timings.get(run)}
    slm_rows = read_metrics(stage_config(dc, "slm").workdir)
    target = runs["clm"]["final_heldout_loss"]
    reached = tokens_to_reach([{"tokens_processed": 0, key: evals["base"]["heldout"][head]}] + slm_rows, key, target)
    ref_rows = read_metrics(stage_config(dc, "reference").workdir)
    return {
        "heldout_source": head, "runs": runs,
        "base": {"heldout_loss": evals["base"]["heldout"][head], "heldout": evals["base"]["heldout"],
                 "solution_loss": evals["base"]["checkpoints"][0]["solution_loss"],
                 **{f"{t}_accuracy": v["accuracy"] for t, v in evals["base"]["few_shot"].items()}},
        "reference_heldout_loss": next((r[key] for r in reversed(ref_rows) if key in r), None),
        "slm_tokens_to_clm_final": reached,
        "slm_token_fraction": None if reached is None else reached / runs["clm"]["tokens_processed"],
        "target_fraction": 0.6, "timings_s": dict(timings), "config": dc.to_dict(),
    }


def fmt(v, spec=".4f") -> str:
    """A table cell: ints with thousands separators, floats by `spec`, None as "not reached"."""
    if v is None:
        return "not reached"
    return f"{v:,}" if isinstance(v, int) else format(v, spec)


def table_rows(summary: dict) -> list[tuple[str, str, str]]:
    c, s = summary["runs"]["clm"], summary["runs"]["slm"]
    rows = [("processed tokens", fmt(c["tokens_processed"]), fmt(s["tokens_processed"])),
            ("selected tokens", fmt(c["tokens_selected"]), fmt(s["tokens_selected"])),
            (f"final held-out loss ({summary['heldout_source']})", fmt(c["final_heldout_loss"]),
             fmt(s["final_heldout_loss"]))]
    rows += [(f"final held-out loss ({k.split('/')[-1]})", fmt(c[k]), fmt(s[k]))
             for k in c if k.startswith("final_eval_loss/")]
    rows.append(("GSM8K-100 solution loss", fmt(c["final_solution_loss"]), fmt(s["final_solution_loss"])))
    for t in ("gsm8k100", "asdiv"):
        if f"{t}_accuracy" in c:
            rows.append((f"{t} few-shot accuracy (n={c[f'{t}_n']})", fmt(c[f"{t}_accuracy"], ".3f"),
                         fmt(s[f"{t}_accuracy"], ".3f")))
    rows.append(("wall time (s)", fmt(c["wall_s"], ".0f"), fmt(s["wall_s"], ".0f")))
    return rows


def table_text(summary: dict) -> str:
    """The terminal / markdown table, and the headline line under it."""
    lines = ["| | CLM | SLM |", "|---|---:|---:|"] + [f"| {a} | {b} | {c} |" for a, b, c in table_rows(summary)]
    reached, frac = summary["slm_tokens_to_clm_final"], summary["slm_token_fraction"]
    lines.append("")
    lines.append(f"SLM processed tokens to reach CLM's final held-out loss: {fmt(reached, ',.0f')}"
                 + (f" ({frac:.2f}x CLM's {summary['runs']['clm']['tokens_processed']:,}; target <= "
                    f"{summary['target_fraction']}x)" if frac is not None else ""))
    return "\n".join(lines)


"""Stage 8 of the demo: <workdir>/report/ (summary.json, report.md, PNG plots, the selected-token page and
the token categories), through the analysis core that `rho-jax analyze` uses too."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rho_jax import analysis, checkpoint
from rho_jax.data.inputs import heldout_rows, heldout_sets, load_text_tokenizer
from rho_jax.demo.evaluation import tokens_at
from rho_jax.demo.stages import base_path, stage_config
from rho_jax.demo.summary import fmt, summarize, table_text
from rho_jax.metrics import read_metrics


def _categories(dc, m_cfg) -> dict:
    """The paper's token categories over the CLM run's kept checkpoints (x = processed tokens), on the
    held-out clean-math tokens and on the first analysis.category_rows noisy-corpus rows. The base is
    left out: its step to the first checkpoint is the domain shift, not continual pretraining."""
    cfg = stage_config(dc, "clm")
    rows = read_metrics(cfg.workdir)
    steps = analysis.checkpoint_steps(cfg.workdir)
    params = [analysis.load_checkpoint_params(cfg.workdir, s, m_cfg) for s in steps]
    xs = [tokens_at(rows, s, cfg) for s in steps]
    sets = {"heldout": next(iter(heldout_sets(cfg).values())),
            "noisy": heldout_rows(cfg, cfg.data.prepared, dc.analysis.category_rows)}
    return {name: {**analysis.checkpoint_categories(m_cfg, params, ex, xs, dc.analysis.threshold, dc.eval.batch_size),
                   "checkpoint_tokens": xs} for name, ex in sets.items()}


def _selected_page(dc, base_params, m_cfg, path: str) -> str:
    """The first noisy rows with the tokens SLM's first step selects (base CE - reference CE, top-k)."""
    cfg = stage_config(dc, "slm")
    ex = heldout_rows(cfg, cfg.data.prepared, dc.analysis.html_rows)
    title = (f"Noisy corpus ({cfg.data.source}): tokens SLM selects at its first step (excess loss of the base "
             f"over the reference, top {cfg.objective.ratio:.0%} over these {len(ex['tokens'])} rows)")
    return analysis.selection_page(load_text_tokenizer(dc.data.vocab), (m_cfg, base_params),
                                   checkpoint.load_weights(cfg.init.reference, "reference"), ex,
                                   float(cfg.objective.ratio), path, title, dc.eval.batch_size)


def write_report(dc, evals: dict, timings: dict) -> dict:
    """<workdir>/report/: summary.json, report.md, PNG plots, the selected-token HTML and the categories;
    returns the summary."""
    out = Path(dc.workdir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(dc, evals, timings)
    head = f"eval_loss/{summary['heldout_source']}"
    start = {"step": 0, "tokens_processed": 0, **{f"eval_loss/{k}": v for k, v in evals["base"]["heldout"].items()}}
    runs = {m.upper(): [start] + read_metrics(stage_config(dc, m).workdir) for m in ("clm", "slm")}
    plots = {"heldout_loss.png": lambda p: analysis.plot_heldout(runs, p, key=head)}
    for k in evals["base"]["heldout"]:
        if f"eval_loss/{k}" != head:
            plots[f"heldout_loss_{k}.png"] = lambda p, k=k: analysis.plot_heldout(runs, p, key=f"eval_loss/{k}")
    plots["solution_loss.png"] = lambda p: analysis.plot_heldout(
        {m.upper(): evals["base"]["checkpoints"] + evals[m]["checkpoints"] for m in ("clm", "slm")}, p,
        key="solution_loss")
    plots["selected_fraction.png"] = lambda p: analysis.plot_selected_fraction(runs["SLM"][1:], p)
    plots["selected_vs_unselected.png"] = lambda p: analysis.plot_selected_vs_unselected(runs["SLM"][1:], p)
    for name, fn in plots.items():
        fn(str(out / name))
    m_cfg, base_params = checkpoint.load_weights(base_path(dc), "base")
    cats = _categories(dc, m_cfg)
    for name, c in cats.items():
        analysis.plot_categories(c["split"], str(out / f"categories_{name}.png"))
    summary["categories"] = cats
    summary["paper_split"] = analysis.PAPER_SPLIT
    _selected_page(dc, base_params, m_cfg, str(out / "selected_tokens.html"))
    (out / "categories.json").write_text(json.dumps({**cats, "paper": analysis.PAPER_SPLIT}, indent=1,
                                                    ensure_ascii=False))
    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    (out / "report.md").write_text(_markdown(dc, summary), encoding="utf-8")
    return summary


def _markdown(dc, s: dict) -> str:
    cpt, cats = dc.cpt, s["categories"]
    extra = sorted(k for k in os.listdir(Path(dc.workdir) / "report") if k.startswith("heldout_loss_"))
    ticks = ", ".join(f"{x:,}" for x in next(iter(cats.values()))["checkpoint_tokens"])
    base = "pretrained here on " + dc.base.source if not dc.base.checkpoint else "given"
    lines = [
        "# Rho-1 demo: selective language modeling on real text", "",
        f"Base: `{base_path(dc)}` ({base}; held-out loss {fmt(s['base']['heldout_loss'])}). Reference: the base "
        f"continued on `{dc.reference.source}` for {dc.reference.epochs} epochs (held-out loss "
        f"{fmt(s['reference_heldout_loss'])}). Continual pretraining on `{cpt.source}` (general_rate "
        f"{dc.data.general_rate}): {cpt.steps} steps of {cpt.batch_size} x {dc.data.seq_len} tokens, lr {cpt.lr}, "
        f"the same rows in the same order for both runs; SLM keeps the top {cpt.ratio:.0%} of each batch's tokens "
        f"by `{cpt.score}` score, with reference scores from the offline cache.", "",
        table_text(s), "",
        "Every number comes from `clm/metrics.jsonl`, `slm/metrics.jsonl` and `eval/*.json`. Held-out losses: "
        "nats per token over every held-out packed row. Few-shot: greedy, "
        f"{dc.eval.shots}-shot, the first n problems (ASDiv: numeric answers only).", "",
        "## Held-out loss along training", "", "![held-out loss](heldout_loss.png)", "",
        *[f"![{k}]({k})\n" for k in extra],
        "![GSM8K solution loss at the kept checkpoints](solution_loss.png)", "",
        "## Token selection", "",
        "![selected fraction](selected_fraction.png) ![selected vs unselected](selected_vs_unselected.png)", "",
        "[Noisy-corpus text with the selected tokens marked and coloured by excess loss](selected_tokens.html)", "",
        f"## Token categories (paper §2.1 rule, |ΔL| > {dc.analysis.threshold})", "",
        f"Per-token losses at the CLM run's kept checkpoints (at {ticks} processed tokens), a least-squares line "
        "per token, ΔL = fitted(last) - fitted(first).", "",
        "| category | " + " | ".join(f"{n} ({c['tokens']:,} tokens)" for n, c in cats.items()) + " | paper |",
        "|---|" + "---:|" * (len(cats) + 1),
        *[f"| {c} | " + " | ".join(f"{v['split'][c]:.1%}" for v in cats.values()) + f" | {s['paper_split'][c]:.0%} |"
          for c in analysis.CATEGORIES], "",
        " ".join(f"![categories {n}](categories_{n}.png)" for n in cats), "",
        f"## Stage wall times ({os.cpu_count()} CPU cores; a reused stage keeps the time of the run that made it)",
        "", "| stage | seconds |", "|---|---:|", *[f"| {k} | {v:.0f} |" for k, v in s["timings_s"].items()], ""]
    return "\n".join(lines)


"""Stage 8 of the demo: <workdir>/report/ (summary.json, report.md, PNG plots, the selected-token page and
the token categories), through the analysis core that `rho-jax analyze` uses too."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rho_jax import analysis, checkpoint
from rho_jax.data.inputs import heldout_rows, heldout_sets
from rho_jax.data.vocab import load_text_tokenizer
from rho_jax.demo.diagnostics import selection_diagnostics
from rho_jax.demo.evaluation import tokens_at
from rho_jax.demo.stages import ARMS, MATCHED, base_path, run_name, seeds, stage_config
from rho_jax.demo.summary import summarize
from rho_jax.demo.table import LABELS, flops_rows, fmt, table_text
from rho_jax.metrics import read_metrics


def _categories(dc, m_cfg) -> dict:
    """The paper's token categories over the (first seed's) CLM run's kept checkpoints (x = processed tokens), on the
    held-out clean-math tokens and on the first analysis.category_rows noisy-corpus rows. The base is
    left out: its step to the first checkpoint is the domain shift, not continual pretraining."""
    cfg = stage_config(dc, "clm")
    rows = read_metrics(cfg.workdir)
    steps = checkpoint.kept_steps(cfg.workdir)
    params = [checkpoint.restore_params(cfg.workdir, s, m_cfg) for s in steps]
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
    groups = {LABELS[a]: [[start] + read_metrics(stage_config(dc, a, seed=s).workdir) for s in seeds(dc)]
              for a in summary["arms"]}
    plots = {"heldout_loss.png": lambda p: analysis.plot_heldout_bands(groups, p, key=head)}
    for k in evals["base"]["heldout"]:
        if f"eval_loss/{k}" != head:
            plots[f"heldout_loss_{k}.png"] = lambda p, k=k: analysis.plot_heldout_bands(groups, p, key=f"eval_loss/{k}")
    plots["solution_loss.png"] = lambda p: analysis.plot_heldout_bands(
        {LABELS[a]: [evals["base"]["checkpoints"] + evals[run_name(a, s)]["checkpoints"] for s in seeds(dc)]
         for a in summary["arms"]}, p, key="solution_loss")
    slm = groups[LABELS["slm"]][0][1:] if "slm" in summary["arms"] else None
    if slm:  # the first seed's SLM run
        plots["selected_fraction.png"] = lambda p: analysis.plot_selected_fraction(slm, p)
        plots["selected_vs_unselected.png"] = lambda p: analysis.plot_selected_vs_unselected(slm, p)
    for name, fn in plots.items():
        fn(str(out / name))
    m_cfg, base_params = checkpoint.load_weights(base_path(dc), "base")
    cats = _categories(dc, m_cfg)
    for name, c in cats.items():
        analysis.plot_categories(c["split"], str(out / f"categories_{name}.png"))
    summary["categories"] = cats
    summary["paper_split"] = analysis.PAPER_SPLIT
    summary["selection"] = selection_diagnostics(dc, m_cfg, base_params, str(out / "excess_histogram.png"))
    _selected_page(dc, base_params, m_cfg, str(out / "selected_tokens.html"))
    (out / "categories.json").write_text(json.dumps({**cats, "paper": analysis.PAPER_SPLIT}, indent=1,
                                                    ensure_ascii=False))
    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    (out / "report.md").write_text(_markdown(dc, summary), encoding="utf-8")
    return summary


def _selection_lines(sel: dict) -> list[str]:
    """The selection diagnostics: kept fraction by component and category per checkpoint, Jaccard overlaps."""
    labels = sel["checkpoints"]
    comps = list(sel["by_component"][labels[0]])
    cats = [c for c in analysis.CATEGORIES if c in sel["by_category"][labels[0]]]
    rows_n = ", ".join(f"{k} {v}" for k, v in sel["rows"].items())
    return [
        f"Selection diagnostics on the first noisy-corpus rows of each component ({rows_n} rows, one batch): the "
        "share of each group's tokens SLM's top-k keeps by excess loss, at the base (the run's start) and at each "
        "kept checkpoint; token categories by the paper's rule on the CLM run's checkpoints.", "",
        "| checkpoint | " + " | ".join([*comps, *cats]) + " |", "|---|" + "---:|" * (len(comps) + len(cats)),
        *[f"| {lb} | " + " | ".join([f"{sel['by_component'][lb][c]:.1%}" for c in comps]
                                    + [f"{sel['by_category'][lb].get(c, float('nan')):.1%}" for c in cats]) + " |"
          for lb in labels], "",
        "Jaccard overlap of the kept tokens: " + "; ".join(f"{k} {v:.3f}" for k, v in sel["jaccard"].items()) + ".",
        "", "![excess-loss histogram at start and end](excess_histogram.png)", ""]


def _markdown(dc, s: dict) -> str:
    cpt, cats = dc.cpt, s["categories"]
    extra = sorted(k for k in os.listdir(Path(dc.workdir) / "report") if k.startswith("heldout_loss_"))
    ticks = ", ".join(f"{x:,}" for x in next(iter(cats.values()))["checkpoint_tokens"])
    base = "pretrained here on " + dc.base.source if not dc.base.checkpoint else "given"
    arms = ", ".join(f"{LABELS[a]} (`{a}`)" for a in s["arms"])
    lines = [
        "# Rho-1 demo: selective language modeling on real text", "",
        f"Base: `{base_path(dc)}` ({base}; held-out loss {fmt(s['base']['heldout_loss'])}). Reference: the base "
        f"continued on `{dc.reference.source}` for {dc.reference.epochs} epochs (held-out loss "
        f"{fmt(s['reference_heldout_loss'])}). Continual pretraining on `{cpt.source}` (general_rate "
        f"{dc.data.general_rate}): {cpt.steps} steps of {cpt.batch_size} x {dc.data.seq_len} tokens, lr {cpt.lr}, "
        f"arms {arms}, each with seeds {', '.join(map(str, s['seeds']))}. A seed sets the data order and the run's "
        f"rng (the random arm's selection); every arm of a seed reads the same rows in the same order, and base, "
        f"reference and scores are shared by all. SLM keeps the top {cpt.ratio:.0%} of each batch's tokens by "
        f"`{cpt.score}` score (reference scores from the offline cache)"
        + ("; `random` keeps as many tokens, uniformly at random" if "random" in s["arms"] else "")
        + (f"; `document` keeps the top {cpt.ratio:.0%} of each batch's documents, whole, by their tokens' mean "
           f"score (so another share of tokens)" if "document" in s["arms"] else "")
        + ("; `reference_only` continues the base with CLM on the reference's clean set alone, and "
           "`clm_matched_flops` with CLM on the noisy mixture, each for SLM's total FLOPs (its run, the reference "
           "training and the scoring; longer runs, the same seeds and evaluation interval)"
           if set(s["arms"]) & set(MATCHED) else "")
        + ". Arms not run: " + (", ".join(f"`{a}`" for a in ARMS if a not in s["arms"]) or "none") + ".", "",
        "The CHAMP problems are split three ways, disjoint by problem: the reference's clean solutions, the problems "
        "whose model-written solutions make the noisy corpus, and the held-out set. The in-domain held-out set "
        f"(`{s['heldout_source']}`) and the off-domain one (GSM8K-100) are co-headlines: an arm that only steers "
        "towards the reference's domain wins the first and loses the second.", "",
        table_text(s), "",
        "X and Y are read off the same curve in the same way: the held-out loss against processed tokens (X) or "
        "FLOPs (Y), from the base (0 tokens) through every evaluation, linearly interpolated at the crossing of "
        "CLM's final loss (`rho_jax.flops.compute_ratio`). Intervals: Student t over the seeds' paired "
        "differences (same seed = same rows and order).", "",
        "## Compute (model FLOPs: 6 per parameter and token trained, 2 per token scored, plus attention)", "",
        "| stage | FLOPs | tokens | x one CLM run |", "|---|---:|---:|---:|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in flops_rows(s)], "",
        "Y charges the scoring of the rows the runs read, at the job's FLOPs per row (the job itself scores whole "
        "prepared shards). Evaluation is not counted.", "",
        "Every number comes from `<arm>/seed<s>/metrics.jsonl`, `reference/metrics.jsonl`, the score manifests and "
        "`eval/*.json`. Held-out losses: nats per token over the held-out packed rows"
        + (f" (the first {dc.eval.max_rows})" if dc.eval.max_rows else "") + ". Answer NLL: -log p(final answer | "
        "\"Question: q\\nAnswer:\"), nats per problem, the first n problems (ASDiv: numeric answers only)"
        + (f". Few-shot: greedy, {dc.eval.shots}-shot, the first n problems" if s["few_shot_n"] else
           "; few-shot accuracy is off at this size (0 for every arm; `configs/demo_smollm2.py` runs it)") + ".", "",
        "## Held-out loss along training (mean over seeds, band ± std)", "", "![held-out loss](heldout_loss.png)", "",
        *[f"![{k}]({k})\n" for k in extra],
        "![GSM8K solution loss at the kept checkpoints](solution_loss.png)", "",
        f"## Token selection (SLM, seed {s['seeds'][0]})", "",
        "![selected fraction](selected_fraction.png) ![selected vs unselected](selected_vs_unselected.png)", "",
        "[Noisy-corpus text with the selected tokens marked and coloured by excess loss](selected_tokens.html)", "",
        *_selection_lines(s["selection"]),
        f"## Token categories (paper §2.1 rule, |ΔL| > {dc.analysis.threshold})", "",
        f"Per-token losses at the CLM run's (seed {s['seeds'][0]}) kept checkpoints (at {ticks} processed tokens), "
        "a least-squares line per token, ΔL = fitted(last) - fitted(first).", "",
        "| category | " + " | ".join(f"{n} ({c['tokens']:,} tokens)" for n, c in cats.items()) + " | paper |",
        "|---|" + "---:|" * (len(cats) + 1),
        *[f"| {c} | " + " | ".join(f"{v['split'][c]:.1%}" for v in cats.values()) + f" | {s['paper_split'][c]:.0%} |"
          for c in analysis.CATEGORIES], "",
        " ".join(f"![categories {n}](categories_{n}.png)" for n in cats), "",
        f"## Stage wall times ({os.cpu_count()} CPU cores; a reused stage keeps the time of the run that made it)",
        "", "| stage | seconds |", "|---|---:|", *[f"| {k} | {v:.0f} |" for k, v in s["timings_s"].items()],
        f"| total of the stages above | {sum(s['timings_s'].values()):.0f} |", ""]
    return "\n".join(lines)

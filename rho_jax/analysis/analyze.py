"""`rho-jax analyze --workdir=DIR [--vocab=PATH] [--reference=MODEL] [--out=DIR]`: plots from each run's
metrics.jsonl, category splits from its kept checkpoints, and the selected-token page of each SLM run."""

from __future__ import annotations

import json
import os
import sys

from rho_jax import checkpoint
from rho_jax.analysis.categories import PAPER_SPLIT, checkpoint_categories
from rho_jax.analysis.page import selection_page
from rho_jax.analysis.plots import plot_categories, plot_heldout, plot_selected_fraction, plot_selected_vs_unselected
from rho_jax.analysis.runs import discover_runs, run_config
from rho_jax.config import ConfigError
from rho_jax.data.inputs import heldout_dirs, heldout_rows
from rho_jax.data.vocab import load_text_tokenizer
from rho_jax.distributed import is_primary
from rho_jax.metrics import read_metrics


def _run_categories(run_dir: str, rows: int, batch_size: int) -> dict:
    config, cfg = run_config(run_dir)
    steps = checkpoint.kept_steps(run_dir)
    if len(steps) < 2:
        raise ValueError(f"{run_dir} has {len(steps)} checkpoint(s); categories need >= 2")
    # The held-out rows the run evaluates on (config.eval.sources' first), else its training rows.
    dirs = heldout_dirs(config) if config.eval.prepared else {config.data.source: config.data.prepared}
    source, prepared = next(iter(dirs.items()))
    examples = heldout_rows(config, prepared, rows)
    cats = checkpoint_categories(cfg, [checkpoint.restore_params(run_dir, s, cfg) for s in steps], examples, steps,
                                 batch_size=batch_size)
    return {"steps": steps, "source": source, "rows": int(len(examples["tokens"])), "tokens": cats["tokens"],
            "split": cats["split"]}


def _run_html(run_dir: str, vocab: str, reference: str, path: str, rows: int, batch_size: int) -> str:
    config, cfg = run_config(run_dir)
    reference = reference or config.init.reference
    if not reference:
        raise ValueError(f"{run_dir} names no reference model (config.init.reference); pass --reference")
    tokenizer = load_text_tokenizer(vocab or config.data.vocab)
    if os.path.isdir(os.path.join(run_dir, "final")):
        cfg, params = checkpoint.load_weights(os.path.join(run_dir, "final"), "target")
    else:
        params = checkpoint.restore_params(run_dir, checkpoint.kept_steps(run_dir)[-1], cfg)
    examples = heldout_rows(config, config.data.prepared, rows)
    title = (f"{os.path.basename(run_dir)}: tokens the final model would select (excess loss vs the reference, "
             f"ratio {config.objective.ratio}, top-k over these {len(examples['tokens'])} rows)")
    return selection_page(tokenizer, (cfg, params), checkpoint.load_weights(reference, "reference"), examples,
                          float(config.objective.ratio), path, title, batch_size)


def command(workdir: str, vocab: str = "", reference: str = "", out: str = "", rows: int = 16, html_rows: int = 4,
            batch_size: int = 8) -> int:
    """`rho-jax analyze` (flags parsed by rho_jax.cli): plots from metrics.jsonl, category splits from
    checkpoints, selected-token HTML. Each part that lacks its inputs is skipped with the reason in analysis.json."""
    runs = discover_runs(workdir)
    if not runs:
        raise ConfigError(f"--workdir={workdir}: no metrics.jsonl in it or its subdirectories; point --workdir "
                          f"at a training workdir or a demo workdir")
    out = out or os.path.join(workdir, "analysis")
    primary = is_primary()
    if primary:
        os.makedirs(out, exist_ok=True)
    metrics = {name: read_metrics(d) for name, d in runs.items()}
    report: dict = {"runs": sorted(runs), "paper_split": PAPER_SPLIT, "files": [], "skipped": {}, "categories": {}}

    def attempt(label, fn):
        try:
            result = fn()
            if isinstance(result, str):
                report["files"].append(os.path.relpath(result, out))
            return result
        except Exception as e:  # noqa: BLE001 - one failed part must not cost the others; the reason is reported
            report["skipped"][label] = f"{type(e).__name__}: {e}"
            print(f"WARNING: analyze: skipped {label}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            return None

    if primary:
        attempt("heldout_loss.png", lambda: plot_heldout(metrics, os.path.join(out, "heldout_loss.png")))
        slm = {n: m for n, m in metrics.items() if any("loss_unselected" in r for r in m)}
        if slm:
            attempt("selected_fraction.png",
                    lambda: plot_selected_fraction(slm, os.path.join(out, "selected_fraction.png")))
        for name, run_rows in slm.items():
            attempt(f"selected_vs_unselected_{name}.png", lambda: plot_selected_vs_unselected(
                run_rows, os.path.join(out, f"selected_vs_unselected_{name}.png")))
    for name, run_dir in runs.items():
        cats = attempt(f"categories/{name}", lambda: _run_categories(run_dir, rows, batch_size))
        if cats:
            report["categories"][name] = cats
            if primary:
                png = os.path.join(out, f"categories_{name}.png")
                attempt(f"categories_{name}.png", lambda: plot_categories(cats["split"], png))
        if primary and any("loss_unselected" in r for r in metrics[name]):  # an SLM run
            html_path = os.path.join(out, f"selected_{name}.html")
            attempt(f"selected_{name}.html", lambda: _run_html(run_dir, vocab, reference, html_path,
                                                                html_rows, batch_size))
    if primary:
        with open(os.path.join(out, "analysis.json"), "w") as f:
            json.dump(report, f, indent=1, ensure_ascii=False)
        print(json.dumps(report, indent=1, ensure_ascii=False))
    return 0



"""`rho-jax demo [--config=configs/demo.py] [--config.x=v]`: the end-to-end Rho-1 demo on real text.

  1 tokenizer   the demo SentencePiece vocabulary (general + math corpora)
  2 prepare     every source a stage reads -> ArrayRecord rows (Beam)  <workdir>/prepared/<source>.<split>
                (general text, clean math, the noisy mixture, the held-out eval sets)
  3 base        a small Llama, CLM on general English text           <workdir>/base
  4 reference   the base continued on clean math (CHAMP train)        <workdir>/reference
  5 score       the noisy mixture scored by the reference             <workdir>/scores
  6 clm, slm    the base continued on the noisy mixture, twice:       <workdir>/clm, <workdir>/slm
                same rows, same order, same processed tokens (read by Grain)
  7 eval        held-out clean-math loss along training (from the loop), GSM8K solution loss at every
                kept checkpoint, few-shot greedy accuracy                 <workdir>/eval/*.json
  8 report      plots, token categories, selected-token HTML, summary table   <workdir>/report/

Rerunning reuses every finished stage whose recorded config matches (a changed config is an error
that names the differing keys) and resumes unfinished training from its checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import ml_collections

from rho_jax import config as config_lib

STAGES = ("base", "reference", "clm", "slm")


class StageMismatch(config_lib.ConfigError):
    pass


# ----------------------------------------------------------------------------- stage configs

def _common(dc, stage: str) -> ml_collections.ConfigDict:
    c = config_lib.base_config()
    c.workdir = os.path.join(dc.workdir, stage)
    c.seed = dc.seed
    c.model.update(dc.model.to_dict())
    c.mesh.update(dc.mesh.to_dict())
    c.data.update(seq_len=dc.data.seq_len, vocab=dc.data.vocab, shuffle_seed=dc.data.shuffle_seed,
                  general_rate=dc.data.general_rate)
    c.objective.mode = "clm"
    c.checkpoint.update(every=100, keep=1)
    return c


def base_path(dc) -> str:
    return dc.base.checkpoint or os.path.join(dc.workdir, "base", "final")


def prepared_path(dc, source: str, split: str = "train") -> str:
    return os.path.join(dc.workdir, "prepared", f"{source}.{split}")


def prepare_jobs(dc) -> list[tuple[str, str, str, int]]:
    """(source, split, prepared dir, rows read or 0 = all) of every source a stage reads: the training
    sources (base and CPT read one pass of steps x batch rows; the reference reads all, for epochs) and
    the held-out sets."""
    needs: dict = {}
    reads = ([] if dc.base.checkpoint else [(dc.base.source, dc.base.steps * dc.base.batch_size)])
    reads += [(dc.reference.source, 0), (dc.cpt.source, dc.cpt.steps * dc.cpt.batch_size)]
    for source, n in reads:
        old = needs.get(source)
        needs[source] = n if old is None else (0 if 0 in (n, old) else max(n, old))
    jobs = [(s, "train", n) for s, n in needs.items()]
    jobs += [(s, "validation", 0) for s in dict.fromkeys(x.strip() for x in dc.eval.sources.split(",") if x.strip())]
    return [(s, sp, prepared_path(dc, s, sp), n) for s, sp, n in jobs]


def prepare_source(pc, source: str, split: str, out: str, rows: int) -> int:
    """Prepares `source` into `out`: every input shard (rows = 0), or the first shards of each component,
    doubling their number until they hold the `rows` rows a run reads (shared by the rates, as the reader
    does). Returns the rows prepared. Finished shards are never redone."""
    from rho_jax.data import prepare, rows as rows_lib

    shards = 2 if rows else 0
    while True:
        pc.data.prepare_max_shards = shards
        res = prepare.run(pc, source=source, split=split, out=out)
        comps = [m for _, m in res["components"]]
        total_rate = sum(r for _, _, r in rows_lib.components(out))
        short = [m for (_, _, r), m in zip(rows_lib.components(out), comps)
                 if sum(s["rows"] for s in m["shards"]) < math.ceil(rows * r / total_rate)
                 and len(m["shards"]) < m.get("planned_shards", len(m["shards"]))]
        if not rows or not short:
            return sum(sum(s["rows"] for s in m["shards"]) for m in comps)
        shards *= 2


def _heldout(dc, names: list[str]) -> dict:
    return dict(sources=",".join(names), prepared=",".join(prepared_path(dc, n, "validation") for n in names),
                batch_size=dc.eval.batch_size, max_rows=dc.eval.max_rows)


def stage_config(dc, stage: str, reference_rows: int | None = None) -> ml_collections.ConfigDict:
    """The `rho_jax.config` ConfigDict of one stage (base | reference | clm | slm; slm also drives scoring).

    reference_rows: packed rows of the clean-math train split (sets the reference's steps from epochs).
    """
    c = _common(dc, stage)
    if stage == "base":
        b = dc.base
        c.train.update(steps=b.steps, batch_size=b.batch_size, lr=b.lr, warmup_steps=b.warmup_steps)
        c.data.update(source=b.source, prepared=prepared_path(dc, b.source),
                      max_rows=b.steps * b.batch_size)  # one pass, no repeats
    elif stage == "reference":
        r = dc.reference
        steps = max(1, math.ceil(r.epochs * (reference_rows or r.batch_size) / r.batch_size))
        c.init.target = base_path(dc)
        c.train.update(steps=steps, batch_size=r.batch_size, lr=r.lr, warmup_steps=r.warmup_steps)
        c.data.update(source=r.source, prepared=prepared_path(dc, r.source))
        c.eval.update(every=steps, **_heldout(dc, dc.eval.sources.split(",")[:1]))  # its held-out loss, at the end
    elif stage in ("clm", "slm"):
        p = dc.cpt
        c.init.update(target=base_path(dc), reference=os.path.join(dc.workdir, "reference", "final"))
        c.train.update(steps=p.steps, batch_size=p.batch_size, lr=p.lr, warmup_steps=p.warmup_steps,
                       log_every=min(10, p.eval_every))
        c.data.update(source=p.source, prepared=prepared_path(dc, p.source), max_rows=p.steps * p.batch_size,
                      score_cache=os.path.join(dc.workdir, "scores"))
        # Identical but for the mode: same rows, order, steps and evaluation.
        c.objective.update(mode=stage, ratio=p.ratio, score=p.score, reference="cached")
        c.eval.update(every=p.eval_every, **_heldout(dc, [x.strip() for x in dc.eval.sources.split(",")
                                                            if x.strip()]))
        c.checkpoint.update(every=p.checkpoint_every, keep=10_000)  # all kept: categories, solution loss
    else:
        raise ValueError(f"stage {stage!r}; expected one of {STAGES}")
    return c


def _diff(a, b, prefix="") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _diff(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}: {x!r} (recorded) vs {y!r} (now)")
    return out


def stage_done(cfg) -> bool:
    """True when the stage's final model exists; raises StageMismatch when its recorded config differs."""
    wd = Path(cfg.workdir)
    recorded = wd / "config.json"
    if recorded.exists():
        diff = _diff(json.loads(recorded.read_text()), json.loads(cfg.to_json()))
        if diff:
            raise StageMismatch(f"{wd} was trained with another config ({'; '.join(diff[:5])}); delete {wd} "
                                f"(and the stages after it) or choose another --config.workdir")
    return (wd / "final").exists()


# ----------------------------------------------------------------------------- training with progress

class _Progress:
    """The loop's input iterator, advancing a tqdm bar (steps) and showing the latest logged losses."""

    def __init__(self, pipe, bar, metrics_path: Path):
        self.pipe, self.bar, self.metrics_path, self._seen = pipe, bar, metrics_path, 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.pipe)
        self.bar.update(1)
        if self.metrics_path.exists() and self.metrics_path.stat().st_size != self._seen:
            self._seen = self.metrics_path.stat().st_size
            row = json.loads(self.metrics_path.read_text().strip().rsplit("\n", 1)[-1])
            self.bar.set_postfix({k.split("/")[-1]: f"{row[k]:.3f}" for k in ("loss", "eval_loss") if k in row})
        return batch

    def __getattr__(self, name):  # get_state, vocab_size, ...
        return getattr(self.pipe, name)


def train_stage(cfg, desc: str) -> None:
    from tqdm import tqdm

    from rho_jax import loop
    from rho_jax.data.inputs import input_for_training

    bars = []

    def make_input(config, input_state):
        pipe = input_for_training(config, input_state)
        bar = tqdm(total=config.train.steps, initial=pipe.step, desc=desc, unit="step", dynamic_ncols=True)
        bars.append(bar)
        return _Progress(pipe, bar, Path(config.workdir) / "metrics.jsonl")

    try:
        loop.run(cfg, make_input=make_input)
    finally:
        for bar in bars:
            bar.close()


# ----------------------------------------------------------------------------- evaluation (stage 6)

def _tokenizer(dc):
    from rho_jax.data.vocab import demo_vocab_path
    from rho_jax.interop import load_tokenizer

    return load_tokenizer(dc.data.vocab or str(demo_vocab_path()))


def _tokens_at(rows: list[dict], step: int, cfg) -> int:
    """Processed tokens at `step`: the loop's counter when logged there, else the same definition (B * L per step)."""
    hit = [r["tokens_processed"] for r in rows if r.get("step") == step and "tokens_processed" in r]
    return int(hit[0]) if hit else step * cfg.train.batch_size * cfg.data.seq_len


def _few_shot(dc, cfg, params, tokenizer) -> dict:
    from rho_jax import evaluate
    from rho_jax.data.corpora import eval_examples

    e, out = dc.eval, {}
    for task, n, prompt in (("gsm8k100", e.gsm8k_n, "gsm8k_fewshot"), ("asdiv", e.asdiv_n, "asdiv_fewshot")):
        if n <= 0:
            continue
        items = eval_examples(task)
        if task == "asdiv":  # numeric golds only: greedy extraction reads numbers
            items = [it for it in items if evaluate.is_numeric_answer(it["answer"])]
        out[task] = evaluate.few_shot_accuracy(cfg, params, tokenizer, items[:n], evaluate.load_prompt(prompt, e.shots),
                                               "gsm8k", max_new_tokens=e.max_new_tokens, batch_size=e.batch_size)
    return out


def _eval_key(dc, run: str) -> dict:
    """What an eval output depends on; a retrained run (another last metrics row) is re-evaluated."""
    from rho_jax.metrics import read_metrics

    trained = stage_config(dc, run).workdir if run != "base" or not dc.base.checkpoint else None
    return {"eval": dc.eval.to_dict(), "cpt": dc.cpt.to_dict(), "base": base_path(dc),
            "trained": read_metrics(trained)[-1] if trained else None}


def evaluated(dc) -> list[bool]:
    """Whether each of base, clm, slm has an up-to-date eval output."""
    paths = [Path(dc.workdir) / "eval" / f"{run}.json" for run in ("base", "clm", "slm")]
    return [p.exists() and json.loads(p.read_text()).get("key") == _eval_key(dc, r)
            for p, r in zip(paths, ("base", "clm", "slm"))]


def evaluate_runs(dc) -> dict:
    """{base, clm, slm: eval outputs} (cached in <workdir>/eval/<run>.json, keyed by the eval config).

    Per run: GSM8K-100 solution loss at every kept checkpoint (the base is the point at 0 tokens) and
    few-shot accuracy of the final model; the base also gets its held-out losses (the curves' start).
    """
    from rho_jax import analysis, evaluate
    from rho_jax.data.corpora import eval_examples
    from rho_jax.data.inputs import heldout_sets
    from rho_jax.loop import load_model
    from rho_jax.metrics import read_metrics

    out_dir = Path(dc.workdir) / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(dc)
    sol_items = eval_examples("gsm8k100")[:dc.eval.solution_loss_n]
    cfg_clm = stage_config(dc, "clm")
    seq = cfg_clm.data.seq_len * 2  # question + solution of a GSM8K problem fit in 256 demo tokens
    results = {}
    for run in ("base", "clm", "slm"):
        path, key = out_dir / f"{run}.json", _eval_key(dc, run)
        if path.exists() and json.loads(path.read_text()).get("key") == key:
            results[run] = json.loads(path.read_text())
            continue
        run_dir = base_path(dc) if run == "base" else os.path.join(stage_config(dc, run).workdir, "final")
        m_cfg, params = load_model(run_dir, run)
        res = {"key": key, "checkpoints": []}
        if run == "base":
            res["heldout"] = {k: evaluate.heldout_loss(m_cfg, params, ex, dc.eval.batch_size)
                              for k, ex in heldout_sets(cfg_clm).items()}
            res["checkpoints"].append({"step": 0, "tokens_processed": 0, "solution_loss": evaluate.solution_loss(
                m_cfg, params, tokenizer, sol_items, dc.eval.batch_size, seq)})
        else:
            run_dir = stage_config(dc, run).workdir
            rows = read_metrics(run_dir)
            for step in analysis.checkpoint_steps(run_dir):
                p = analysis.load_checkpoint_params(run_dir, step, m_cfg)
                res["checkpoints"].append({"step": step, "tokens_processed": _tokens_at(rows, step, cfg_clm),
                                           "solution_loss": evaluate.solution_loss(m_cfg, p, tokenizer, sol_items,
                                                                                   dc.eval.batch_size, seq)})
        res["few_shot"] = _few_shot(dc, m_cfg, params, tokenizer)
        (out_dir / f"{run}_predictions.json").write_text(json.dumps(res["few_shot"], indent=1))
        for v in res["few_shot"].values():
            v.pop("predictions")
        path.write_text(json.dumps(res, indent=1))
        results[run] = res
        _say(f"  {run}: " + ", ".join(f"{t} {v['correct']}/{v['n']}" for t, v in res["few_shot"].items()))
    return results


# ----------------------------------------------------------------------------- report (stage 7)

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


def _categories(dc, m_cfg) -> dict:
    """The paper's token categories over the CLM run's kept checkpoints (x = processed tokens), on the
    held-out clean-math tokens and on the first analysis.category_rows noisy-corpus rows. The base is
    left out: its step to the first checkpoint is the domain shift, not continual pretraining."""
    import numpy as np

    from rho_jax import analysis
    from rho_jax.data.inputs import heldout_rows, heldout_sets
    from rho_jax.metrics import read_metrics

    cfg = stage_config(dc, "clm")
    rows = read_metrics(cfg.workdir)
    steps = analysis.checkpoint_steps(cfg.workdir)
    params = [analysis.load_checkpoint_params(cfg.workdir, s, m_cfg) for s in steps]
    xs = [_tokens_at(rows, s, cfg) for s in steps]
    sets = {"heldout": next(iter(heldout_sets(cfg).values())),
            "noisy": heldout_rows(cfg, cfg.data.prepared, dc.analysis.category_rows)}
    out = {}
    for name, ex in sets.items():
        losses_KxT = analysis.token_losses(m_cfg, params, ex, dc.eval.batch_size).reshape(len(params), -1)
        losses_KxT = losses_KxT[:, np.all(np.isfinite(losses_KxT), axis=0)]
        cats = analysis.categorize(losses_KxT, dc.analysis.threshold, xs=xs)
        out[name] = {"split": analysis.category_split(cats), "tokens": int(losses_KxT.shape[1]),
                     "checkpoint_tokens": xs}
    return out


def _selected_page(dc, base_params, m_cfg, path: str) -> str:
    """The first noisy rows with the tokens SLM's first step selects (base CE - reference CE, top-k)."""
    import jax.numpy as jnp
    import numpy as np

    from rho_jax import analysis, objective
    from rho_jax.data.inputs import heldout_rows
    from rho_jax.loop import load_model

    cfg = stage_config(dc, "slm")
    ex = heldout_rows(cfg, cfg.data.prepared, dc.analysis.html_rows)
    r_cfg, r_params = load_model(cfg.init.reference, "reference")
    ce = analysis.token_losses(m_cfg, [base_params], ex, dc.eval.batch_size)[0]
    ref_ce = analysis.token_losses(r_cfg, [r_params], ex, dc.eval.batch_size)[0]
    valid = np.isfinite(ce) & np.isfinite(ref_ce)
    excess = np.where(valid, ce - ref_ce, 0.0)
    mask = np.asarray(objective.select_topk(jnp.asarray(excess, jnp.float32), jnp.asarray(valid), cfg.objective.ratio))
    title = (f"Noisy corpus ({cfg.data.source}): tokens SLM selects at its first step (excess loss of the base "
             f"over the reference, top {cfg.objective.ratio:.0%} over these {len(excess)} rows)")
    return analysis.selected_html(_tokenizer(dc), ex["tokens"], ex["segment_ids"], mask, excess, path, title,
                                  ce_BxL=np.nan_to_num(ce), ref_ce_BxL=np.nan_to_num(ref_ce))


def summarize(dc, evals: dict, timings: dict) -> dict:
    """Every number from the runs' metrics.jsonl and the eval outputs."""
    from rho_jax.metrics import read_metrics

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


def _fmt(v, spec=".4f") -> str:
    if v is None:
        return "not reached"
    return f"{v:,}" if isinstance(v, int) else format(v, spec)


def table_rows(summary: dict) -> list[tuple[str, str, str]]:
    c, s = summary["runs"]["clm"], summary["runs"]["slm"]
    rows = [("processed tokens", _fmt(c["tokens_processed"]), _fmt(s["tokens_processed"])),
            ("selected tokens", _fmt(c["tokens_selected"]), _fmt(s["tokens_selected"])),
            (f"final held-out loss ({summary['heldout_source']})", _fmt(c["final_heldout_loss"]),
             _fmt(s["final_heldout_loss"]))]
    rows += [(f"final held-out loss ({k.split('/')[-1]})", _fmt(c[k]), _fmt(s[k]))
             for k in c if k.startswith("final_eval_loss/")]
    rows.append(("GSM8K-100 solution loss", _fmt(c["final_solution_loss"]), _fmt(s["final_solution_loss"])))
    for t in ("gsm8k100", "asdiv"):
        if f"{t}_accuracy" in c:
            rows.append((f"{t} few-shot accuracy (n={c[f'{t}_n']})", _fmt(c[f"{t}_accuracy"], ".3f"),
                         _fmt(s[f"{t}_accuracy"], ".3f")))
    rows.append(("wall time (s)", _fmt(c["wall_s"], ".0f"), _fmt(s["wall_s"], ".0f")))
    return rows


def table_text(summary: dict) -> str:
    """The terminal / markdown table, and the headline line under it."""
    lines = ["| | CLM | SLM |", "|---|---:|---:|"] + [f"| {a} | {b} | {c} |" for a, b, c in table_rows(summary)]
    reached, frac = summary["slm_tokens_to_clm_final"], summary["slm_token_fraction"]
    lines.append("")
    lines.append(f"SLM processed tokens to reach CLM's final held-out loss: {_fmt(reached, ',.0f')}"
                 + (f" ({frac:.2f}x CLM's {summary['runs']['clm']['tokens_processed']:,}; target <= "
                    f"{summary['target_fraction']}x)" if frac is not None else ""))
    return "\n".join(lines)


def write_report(dc, evals: dict, timings: dict) -> dict:
    """<workdir>/report/: summary.json, report.md, PNG plots, the selected-token HTML and the categories."""
    from rho_jax import analysis
    from rho_jax.loop import load_model
    from rho_jax.metrics import read_metrics

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
    m_cfg, base_params = load_model(base_path(dc), "base")
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
    from rho_jax.analysis import CATEGORIES

    cpt, cats = dc.cpt, s["categories"]
    extra = sorted(k for k in os.listdir(Path(dc.workdir) / "report") if k.startswith("heldout_loss_"))
    ticks = ", ".join(f"{x:,}" for x in next(iter(cats.values()))["checkpoint_tokens"])
    base = "pretrained here on " + dc.base.source if not dc.base.checkpoint else "given"
    lines = [
        "# Rho-1 demo: selective language modeling on real text", "",
        f"Base: `{base_path(dc)}` ({base}; held-out loss {_fmt(s['base']['heldout_loss'])}). Reference: the base "
        f"continued on `{dc.reference.source}` for {dc.reference.epochs} epochs (held-out loss "
        f"{_fmt(s['reference_heldout_loss'])}). Continual pretraining on `{cpt.source}` (general_rate "
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
          for c in CATEGORIES], "",
        " ".join(f"![categories {n}](categories_{n}.png)" for n in cats), "",
        f"## Stage wall times ({os.cpu_count()} CPU cores; a reused stage keeps the time of the run that made it)",
        "", "| stage | seconds |", "|---|---:|", *[f"| {k} | {v:.0f} |" for k, v in s["timings_s"].items()], ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the pipeline

def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def run(dc) -> dict:
    """Runs (or reuses) every stage into dc.workdir; returns the summary (also <workdir>/report/summary.json)."""
    from rho_jax import score_job
    from rho_jax.data import rows
    from rho_jax.data.vocab import demo_vocab_path

    import jax

    t_start = time.perf_counter()
    dc = config_lib.resolve_paths(dc)  # relative paths: against the directory the demo was started in
    for stage in STAGES[1:] if dc.base.checkpoint else STAGES:  # every stage's config, before any compute
        try:
            config_lib.validate(stage_config(dc, stage, reference_rows=dc.reference.batch_size), jax.device_count())
        except config_lib.ConfigError as e:
            group = {"clm": "cpt", "slm": "cpt"}.get(stage, stage)
            raise config_lib.ConfigError(f"demo stage {stage} (from config.{group}, config.model, config.data): "
                                         f"{e}") from None
    os.makedirs(dc.workdir, exist_ok=True)
    timings_path = Path(dc.workdir) / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}

    def timed(name, fn, keep=False):
        """fn(); its wall time is recorded unless `keep` and a time is already recorded (a reused stage)."""
        t0 = time.perf_counter()
        out = fn()
        if not (keep and name in timings):
            timings[name] = round(time.perf_counter() - t0, 1)
            timings_path.write_text(json.dumps(timings, indent=1))
        return out

    _say("stage 1/8 tokenizer")
    if not dc.data.vocab:
        path = timed("tokenizer", demo_vocab_path, keep=True)  # shared by all workdirs, trained once
        _say(f"  demo SentencePiece vocabulary: {path}")

    jobs = prepare_jobs(dc)
    todo = [j for j in jobs if not (Path(j[2]) / rows.MANIFEST).exists() and not (Path(j[2]) / rows.MIXTURE).exists()]
    _say(f"stage 2/8 prepare: {len(jobs) - len(todo)} of {len(jobs)} sources already prepared")

    def prepare_all():
        pc = _common(dc, "prepare")
        pc.data.update(prepare_shard_mb=dc.data.prepare_shard_mb, prepare_workers=dc.data.prepare_workers)
        for source, split, out, n in jobs:  # a finished one is checked and reused (O(shards))
            got = prepare_source(pc, source, split, out, n)
            _say(f"  {source} ({split}): {got} rows of {dc.data.seq_len} in {out}")

    timed("prepare", prepare_all, keep=not todo)

    if dc.base.checkpoint:
        _say(f"stage 3/8 base: using {dc.base.checkpoint}")
    else:
        cfg = stage_config(dc, "base")
        if stage_done(cfg):
            _say(f"stage 3/8 base: reusing {cfg.workdir}/final")
        else:
            _say(f"stage 3/8 base: CLM on {cfg.data.source}, {cfg.train.steps} steps")
            timed("base", lambda: train_stage(cfg, "base"))

    n_ref = sum(s["rows"] for s in rows.read_manifest(prepared_path(dc, dc.reference.source))["shards"])
    cfg = stage_config(dc, "reference", reference_rows=n_ref)
    if stage_done(cfg):
        _say(f"stage 4/8 reference: reusing {cfg.workdir}/final")
    else:
        _say(f"stage 4/8 reference: {dc.reference.epochs} epochs of {n_ref} rows of {cfg.data.source}, "
             f"{cfg.train.steps} steps")
        timed("reference", lambda: train_stage(cfg, "reference"))

    cfg = stage_config(dc, "slm")
    done = Path(cfg.data.score_cache).exists()
    _say(f"stage 5/8 score: the rows of {cfg.data.source} that CLM/SLM read, with the reference -> "
         f"{cfg.data.score_cache}{' (resuming or reusing: shards checked)' if done else ''}")
    manifests = timed("score", lambda: score_job.run(cfg), keep=done)
    _say("  scores: " + ", ".join(f"{m['rows']} rows in {len(m['shards'])} shards of {m['prepared']}"
                                  for m in manifests))

    for mode in ("clm", "slm"):
        cfg = stage_config(dc, mode)
        if stage_done(cfg):
            _say(f"stage 6/8 {mode}: reusing {cfg.workdir}/final")
            continue
        _say(f"stage 6/8 {mode}: continual pretraining on {cfg.data.source}, {cfg.train.steps} steps"
             + (f", ratio {cfg.objective.ratio}" if mode == "slm" else ""))
        timed(mode, lambda: train_stage(cfg, mode))

    _say("stage 7/8 eval")
    evals = timed("eval", lambda: evaluate_runs(dc), keep=all(evaluated(dc)))
    _say("stage 8/8 report")
    summary = timed("report", lambda: write_report(dc, evals, timings))
    print(table_text(summary), flush=True)
    _say(f"report: {os.path.join(dc.workdir, 'report', 'report.md')}; this run took "
         f"{time.perf_counter() - t_start:.0f} s")
    return summary

"""Stage 7 of the demo: the evaluation of the base and every continual-pretraining run (arm x seed),
cached in <workdir>/eval/<arm>_seed<seed>.json (the base: base.json).

Per run: GSM8K-100 solution loss at every kept checkpoint (the base is the point at 0 tokens), the answer
log-likelihood of the final model on GSM8K-100 and ASDiv (config.eval.answer_n problems each: it moves at
toy size) and its few-shot accuracy (config.eval.gsm8k_n / asdiv_n; 0 skips: at toy size it is 0 for all);
the base also gets its held-out losses (the curves' start).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rho_jax import checkpoint, evaluate, losses
from rho_jax.data.corpora import eval_examples
from rho_jax.data.inputs import heldout_sets
from rho_jax.data.vocab import load_text_tokenizer
from rho_jax.demo.stages import base_path, cpt_runs, run_name, stage_config
from rho_jax.metrics import read_metrics

FEW_SHOT = (("gsm8k100", "gsm8k_n"), ("asdiv", "asdiv_n"))  # (task, the config.eval field of its size)
ANSWER_SETS = ("gsm8k100", "asdiv")  # answer log-likelihood sets


def tokens_at(rows: list[dict], step: int, cfg) -> int:
    """Processed tokens at `step`: the loop's counter when logged there, else the same definition (B * L per step)."""
    hit = [r["tokens_processed"] for r in rows if r.get("step") == step and "tokens_processed" in r]
    return int(hit[0]) if hit else step * cfg.train.batch_size * cfg.data.seq_len


def _few_shot(dc, cfg, params, tokenizer) -> dict:
    """{task: few-shot results} of the tasks whose config.eval size is > 0."""
    e = dc.eval
    return {task: evaluate.few_shot_task(cfg, params, tokenizer, task, e[size], e.shots, e.max_new_tokens, e.batch_size)
            for task, size in FEW_SHOT if e[size] > 0}


def runs(dc) -> list[tuple[str, int | None]]:
    """(stage, seed) of every evaluated run: the base (seed None), then each arm x seed."""
    return [("base", None)] + cpt_runs(dc)


def _name(stage: str, seed: int | None) -> str:
    return stage if seed is None else run_name(stage, seed)


def _eval_key(dc, stage: str, seed: int | None) -> dict:
    """What an eval output depends on; a retrained run (another last metrics row) is re-evaluated."""
    cfg = stage_config(dc, stage, seed=seed)
    trained = cfg.workdir if stage != "base" or not dc.base.checkpoint else None
    return {"eval": dc.eval.to_dict(), "run": json.loads(cfg.to_json()) if seed is not None else None,
            "base": base_path(dc), "trained": read_metrics(trained)[-1] if trained else None}


def _path(dc, stage: str, seed: int | None) -> Path:
    return Path(dc.workdir) / "eval" / f"{_name(stage, seed).replace('/', '_')}.json"


def _cached(path: Path, key: dict) -> dict | None:
    """The eval output at `path` when it was made with `key`, else None."""
    if not path.exists():
        return None
    res = json.loads(path.read_text())
    return res if res.get("key") == key else None


def evaluated(dc) -> list[bool]:
    """Whether each evaluated run (`runs`) has an up-to-date eval output."""
    return [_cached(_path(dc, st, sd), _eval_key(dc, st, sd)) is not None for st, sd in runs(dc)]


def evaluate_runs(dc, say=print) -> dict:
    """{"base" | run_name(arm, seed): eval output} (cached in <workdir>/eval/, keyed by the run's config);
    `say` gets a line per evaluated run. Losses in nats per token."""
    out_dir = Path(dc.workdir) / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_text_tokenizer(dc.data.vocab)
    sol_items = eval_examples("gsm8k100")[:dc.eval.solution_loss_n]
    answer_items = {t: evaluate.task_items(t, dc.eval.answer_n) for t in ANSWER_SETS} if dc.eval.answer_n else {}
    cfg_clm = stage_config(dc, "clm")
    seq = cfg_clm.data.seq_len * 2  # question + solution of a GSM8K problem fit in 256 demo tokens

    def solution_loss(m_cfg, params) -> float:
        return evaluate.solution_loss(m_cfg, params, tokenizer, sol_items, dc.eval.batch_size, seq)

    results = {}
    for stage, seed in runs(dc):
        run = _name(stage, seed)
        path, key = _path(dc, stage, seed), _eval_key(dc, stage, seed)
        cached = _cached(path, key)
        if cached is not None:
            results[run] = cached
            continue
        run_dir = base_path(dc) if seed is None else os.path.join(stage_config(dc, stage, seed=seed).workdir, "final")
        m_cfg, params = checkpoint.load_weights(run_dir, stage)
        res = {"key": key, "checkpoints": []}
        if seed is None:
            res["heldout"] = {k: losses.heldout_loss(m_cfg, params, ex, dc.eval.batch_size)
                              for k, ex in heldout_sets(cfg_clm).items()}
            res["checkpoints"].append({"step": 0, "tokens_processed": 0, "solution_loss": solution_loss(m_cfg, params)})
        else:
            run_dir = stage_config(dc, stage, seed=seed).workdir
            rows = read_metrics(run_dir)
            for step in checkpoint.kept_steps(run_dir):
                p = checkpoint.restore_params(run_dir, step, m_cfg)
                res["checkpoints"].append({"step": step, "tokens_processed": tokens_at(rows, step, cfg_clm),
                                           "solution_loss": solution_loss(m_cfg, p)})
        res["answer_n"] = {t: len(items) for t, items in answer_items.items()}
        res["answer_nll"] = {t: evaluate.answer_nll(m_cfg, params, tokenizer, items, dc.eval.batch_size, seq)
                             for t, items in answer_items.items()}
        res["few_shot"] = _few_shot(dc, m_cfg, params, tokenizer)
        path.with_name(path.stem + "_predictions.json").write_text(json.dumps(res["few_shot"], indent=1))
        for v in res["few_shot"].values():
            v.pop("predictions")
        path.write_text(json.dumps(res, indent=1))
        results[run] = res
        say(f"  {run}: " + ", ".join([f"{t} answer NLL {v:.3f}" for t, v in res["answer_nll"].items()]
                                     + [f"{t} {v['correct']}/{v['n']}" for t, v in res["few_shot"].items()]))
    return results

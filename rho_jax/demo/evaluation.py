"""Stage 7 of the demo: the evaluation of base, CLM and SLM, cached in <workdir>/eval/<run>.json.

Per run: GSM8K-100 solution loss at every kept checkpoint (the base is the point at 0 tokens) and
few-shot accuracy of the final model; the base also gets its held-out losses (the curves' start).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rho_jax import checkpoint, evaluate, losses
from rho_jax.analysis import checkpoint_steps, load_checkpoint_params
from rho_jax.data.corpora import eval_examples
from rho_jax.data.inputs import heldout_sets, load_text_tokenizer
from rho_jax.demo.stages import base_path, stage_config
from rho_jax.metrics import read_metrics

RUNS = ("base", "clm", "slm")
FEW_SHOT = (("gsm8k100", "gsm8k_n"), ("asdiv", "asdiv_n"))  # (task, the config.eval field of its size)


def tokens_at(rows: list[dict], step: int, cfg) -> int:
    """Processed tokens at `step`: the loop's counter when logged there, else the same definition (B * L per step)."""
    hit = [r["tokens_processed"] for r in rows if r.get("step") == step and "tokens_processed" in r]
    return int(hit[0]) if hit else step * cfg.train.batch_size * cfg.data.seq_len


def _few_shot(dc, cfg, params, tokenizer) -> dict:
    """{task: few-shot results} of the tasks whose config.eval size is > 0."""
    e = dc.eval
    return {task: evaluate.few_shot_task(cfg, params, tokenizer, task, e[size], e.shots, e.max_new_tokens, e.batch_size)
            for task, size in FEW_SHOT if e[size] > 0}


def _eval_key(dc, run: str) -> dict:
    """What an eval output depends on; a retrained run (another last metrics row) is re-evaluated."""
    trained = stage_config(dc, run).workdir if run != "base" or not dc.base.checkpoint else None
    return {"eval": dc.eval.to_dict(), "cpt": dc.cpt.to_dict(), "base": base_path(dc),
            "trained": read_metrics(trained)[-1] if trained else None}


def _cached(path: Path, key: dict) -> dict | None:
    """The eval output at `path` when it was made with `key`, else None."""
    if not path.exists():
        return None
    res = json.loads(path.read_text())
    return res if res.get("key") == key else None


def evaluated(dc) -> list[bool]:
    """Whether each of base, clm, slm has an up-to-date eval output."""
    return [_cached(Path(dc.workdir) / "eval" / f"{run}.json", _eval_key(dc, run)) is not None for run in RUNS]


def evaluate_runs(dc, say=print) -> dict:
    """{base, clm, slm: eval outputs} (cached in <workdir>/eval/<run>.json, keyed by the eval config);
    `say` gets a line per evaluated run. Losses in nats per token."""
    out_dir = Path(dc.workdir) / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_text_tokenizer(dc.data.vocab)
    sol_items = eval_examples("gsm8k100")[:dc.eval.solution_loss_n]
    cfg_clm = stage_config(dc, "clm")
    seq = cfg_clm.data.seq_len * 2  # question + solution of a GSM8K problem fit in 256 demo tokens

    def solution_loss(m_cfg, params) -> float:
        return evaluate.solution_loss(m_cfg, params, tokenizer, sol_items, dc.eval.batch_size, seq)

    results = {}
    for run in RUNS:
        path, key = out_dir / f"{run}.json", _eval_key(dc, run)
        cached = _cached(path, key)
        if cached is not None:
            results[run] = cached
            continue
        run_dir = base_path(dc) if run == "base" else os.path.join(stage_config(dc, run).workdir, "final")
        m_cfg, params = checkpoint.load_weights(run_dir, run)
        res = {"key": key, "checkpoints": []}
        if run == "base":
            res["heldout"] = {k: losses.heldout_loss(m_cfg, params, ex, dc.eval.batch_size)
                              for k, ex in heldout_sets(cfg_clm).items()}
            res["checkpoints"].append({"step": 0, "tokens_processed": 0, "solution_loss": solution_loss(m_cfg, params)})
        else:
            run_dir = stage_config(dc, run).workdir
            rows = read_metrics(run_dir)
            for step in checkpoint_steps(run_dir):
                p = load_checkpoint_params(run_dir, step, m_cfg)
                res["checkpoints"].append({"step": step, "tokens_processed": tokens_at(rows, step, cfg_clm),
                                           "solution_loss": solution_loss(m_cfg, p)})
        res["few_shot"] = _few_shot(dc, m_cfg, params, tokenizer)
        (out_dir / f"{run}_predictions.json").write_text(json.dumps(res["few_shot"], indent=1))
        for v in res["few_shot"].values():
            v.pop("predictions")
        path.write_text(json.dumps(res, indent=1))
        results[run] = res
        say(f"  {run}: " + ", ".join(f"{t} {v['correct']}/{v['n']}" for t, v in res["few_shot"].items()))
    return results

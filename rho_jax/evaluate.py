"""Evaluation: held-out loss, few-shot accuracy (batched greedy decoding with the KV cache; answers are
read by rho_jax.answers), and the GSM8K solution loss.

    rho-jax eval --checkpoint=DIR [--tasks=gsm8k100,asdiv,heldout:champ_clean] [--limit=N] [--shots=K]

Few-shot prompts are GSM8K style ("Question: ...\\nAnswer: ... #### N", blank line between examples)
and live in rho_jax/prompts/*.txt. Their examples are written for this project, not taken from the
eval sets.
"""

from __future__ import annotations

import importlib.resources
import json
import os

import jax
import ml_collections
import numpy as np
from etils import epath

from rho_jax import losses, storage
from rho_jax.answers import is_numeric_answer, score_completions
from rho_jax.batch import INPUT_KEYS
from rho_jax.checkpoint import RUN_CONFIG_FILE, load_weights  # `checkpoint` names command()'s argument
from rho_jax.config import ConfigError, base_config
from rho_jax.data.corpora import eval_examples
from rho_jax.data.inputs import heldout_dirs, heldout_rows
from rho_jax.data.vocab import load_text_tokenizer, tokenizer_path
from rho_jax.distributed import is_primary
from rho_jax.generate import greedy_generate

TASK_PROMPTS = {"gsm8k100": "gsm8k_fewshot", "asdiv": "asdiv_fewshot"}


# ---- prompts ----

def load_prompt(name: str, shots: int | None = None) -> str:
    """The few-shot block rho_jax/prompts/<name>.txt (e.g. 'gsm8k_fewshot'), optionally its first `shots`
    examples only (0: empty, zero-shot)."""
    files = importlib.resources.files("rho_jax") / "prompts"
    path = files / (name if name.endswith(".txt") else name + ".txt")
    if not path.is_file():
        known = sorted(p.name for p in files.iterdir() if p.name.endswith(".txt"))
        raise FileNotFoundError(f"no prompt {name!r} in rho_jax/prompts; known: {known}")
    examples = [e.strip() for e in path.read_text("utf-8").strip().split("\n\n") if e.strip()]
    return "\n\n".join(examples if shots is None else examples[:shots])


def question_prompt(prompt: str, question: str) -> str:
    """Few-shot block + the question; the model continues after 'Answer:'."""
    head = prompt.strip() + "\n\n" if prompt.strip() else ""
    return f"{head}Question: {question.strip()}\nAnswer:"


# ---- generation ----

def few_shot_accuracy(cfg, params, tokenizer, items: list[dict], prompt: str, fmt: str = "gsm8k",
                      max_new_tokens: int = 128, batch_size: int = 8, max_prompt_tokens: int | None = None,
                      add_bos: bool = False) -> dict:
    """Greedy few-shot accuracy: `score_completions` of the model's completions of each question.

    Prompts longer than cfg.max_positions - max_new_tokens (or max_prompt_tokens) lose tokens from the
    left. Decoding stops at EOS or after max_new_tokens; the text is cut at the next '\\nQuestion:'.
    Prompts run in length order (less padding), in fixed-size batches (one compilation per length bucket).
    """
    limit = cfg.max_positions - max_new_tokens
    limit = min(limit, max_prompt_tokens) if max_prompt_tokens else limit
    if limit < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt within the model's "
                         f"max_positions={cfg.max_positions}; lower max_new_tokens")
    bos = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
    prompts = [(bos + tokenizer.encode(question_prompt(prompt, it["question"])))[-limit:] for it in items]
    params = jax.device_put(params)  # once, not per batch
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    completions = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = [prompts[i] for i in idx]
        batch += [batch[-1]] * (batch_size - len(batch))  # a full batch: the same compiled shape
        new = greedy_generate(cfg, params, batch, max_new_tokens, eos_id=tokenizer.eos_id)
        for i, ids in zip(idx, new):
            completions[i] = tokenizer.decode(ids)
    return score_completions(items, completions, fmt)


# ---- losses ----

def split_encode(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of context + continuation encoded as ONE text (as training sees it), split where the
    encoding stops agreeing with the context's own encoding (a merge across the boundary goes right)."""
    full = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    n = 0
    while n < min(len(full), len(ctx)) and full[n] == ctx[n]:
        n += 1
    return full[:n], full[n:]


def solution_examples(tokenizer, items: list[dict], seq_len: int) -> dict:
    """Rows for the solution loss: tokens/segment_ids/positions int32 [N, seq_len] and loss_mask bool
    [N, seq_len], True at the prediction positions t whose target tokens[t+1] is a solution token.

    The context is "Question: {q}\\nAnswer:"; the solution's leading space is part of its first token.
    A sequence longer than seq_len loses context from the left (then solution tokens from the right)."""
    rows = [it for it in items if it.get("solution")]
    out = {k: np.zeros((len(rows), seq_len), np.int32) for k in ("tokens", "segment_ids", "positions")}
    out["loss_mask"] = np.zeros((len(rows), seq_len), bool)
    for r, it in enumerate(rows):
        ctx, sol = split_encode(tokenizer, f"Question: {it['question'].strip()}\nAnswer:", " " + it["solution"].strip())
        sol = sol[:seq_len - 1]
        ctx = ctx[len(ctx) - min(len(ctx), seq_len - len(sol)):]
        seq = ctx + sol
        out["tokens"][r, :len(seq)] = seq
        out["segment_ids"][r, :len(seq)] = 1
        out["positions"][r, :len(seq)] = np.arange(len(seq))
        out["loss_mask"][r, len(ctx) - 1:len(seq) - 1] = True
    return out


def solution_loss(cfg, params, tokenizer, items: list[dict], batch_size: int = 8, seq_len: int = 256,
                  ce_chunk: int = 0) -> float:
    """Mean CE (nats) over the solution tokens of items ({question, solution}) given "Question: q\\nAnswer:",
    token-weighted over the whole set (the GSM8K-100 solution loss)."""
    examples = solution_examples(tokenizer, items, min(seq_len, cfg.max_positions))
    if not len(examples["tokens"]):
        raise ValueError("no item has a solution; the solution loss needs items with a 'solution' text")
    total, count = losses.summed_ce(cfg, params, examples, batch_size, ce_chunk, INPUT_KEYS + ("loss_mask",))
    return total / count


def answer_nll(cfg, params, tokenizer, items: list[dict], batch_size: int = 8, seq_len: int = 256,
               ce_chunk: int = 0) -> float:
    """-log p(answer | "Question: q\nAnswer:") in nats per problem, the mean over items ({question, answer}):
    the final answer alone scored as the solution (a number for GSM8K and ASDiv). It moves with small
    models, where few-shot accuracy is 0 for all."""
    answers = [{"question": it["question"], "solution": it["answer"]} for it in items if it.get("answer")]
    examples = solution_examples(tokenizer, answers, min(seq_len, cfg.max_positions))
    if not len(examples["tokens"]):
        raise ValueError("no item has an answer; the answer log-likelihood needs items with an 'answer'")
    total, _ = losses.summed_ce(cfg, params, examples, batch_size, ce_chunk, INPUT_KEYS + ("loss_mask",))
    return total / len(answers)


# ---- few-shot tasks and `rho-jax eval` ----

def task_items(task: str, limit: int | None = None) -> list[dict]:
    """The first `limit` (None: all) problems of gsm8k100 or asdiv (numeric golds only: greedy
    extraction reads numbers)."""
    items = eval_examples(task)
    if task == "asdiv":
        items = [it for it in items if is_numeric_answer(it["answer"])]
    return items[:limit] if limit else items


def few_shot_task(cfg, params, tokenizer, task: str, limit: int | None = None, shots: int | None = None,
                  max_new_tokens: int = 128, batch_size: int = 8) -> dict:
    """`few_shot_accuracy` on `task_items(task, limit)` with the task's prompt (its first `shots` examples)."""
    return few_shot_accuracy(cfg, params, tokenizer, task_items(task, limit), load_prompt(TASK_PROMPTS[task], shots),
                             "gsm8k", max_new_tokens=max_new_tokens, batch_size=batch_size)


def _heldout_config(checkpoint: str, vocab: str, seq_len: int):
    """The data config for heldout:<source>: the run's own config.json when `checkpoint` is a workdir."""
    path = epath.Path(checkpoint) / RUN_CONFIG_FILE
    if path.exists():
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    c = base_config()
    c.data.vocab, c.data.seq_len = vocab, seq_len
    return c


def run_tasks(cfg, params, tokenizer, tasks: list[str], limit: int | None = None, shots: int | None = None,
              max_new_tokens: int = 128, batch_size: int = 8, heldout_config=None) -> dict:
    """{task: results} for gsm8k100 (accuracy + solution loss), asdiv (numeric answers) and heldout:<source>."""
    results = {}
    for task in tasks:
        if task.startswith("heldout:"):
            if heldout_config is None:
                raise ValueError(f"task {task} needs a data config (a training workdir's config.json)")
            source = task.split(":", 1)[1]  # an eval source of the run's config, or a prepared directory
            prepared = heldout_dirs(heldout_config).get(source, source) if heldout_config.eval.prepared else source
            examples = heldout_rows(heldout_config, prepared, limit or 0)
            results[task] = {"loss": losses.heldout_loss(cfg, params, examples, batch_size), "rows": len(examples["tokens"])}
            continue
        if task not in TASK_PROMPTS:
            raise ValueError(f"unknown eval task {task!r}; expected gsm8k100, asdiv or heldout:<source>")
        res = few_shot_task(cfg, params, tokenizer, task, limit, shots, max_new_tokens, batch_size)
        if task == "gsm8k100":
            res["solution_loss"] = solution_loss(cfg, params, tokenizer, task_items(task, limit), batch_size)
        results[task] = res
    return results


def command(checkpoint: str, vocab: str = "", tasks: str = "gsm8k100", limit: int = 0, shots: int | None = None,
            max_new_tokens: int = 128, batch_size: int = 8, seq_len: int = 256, out: str = "") -> int:
    """`rho-jax eval` (flags parsed by rho_jax.cli): prints the summary JSON, writes the full results to `out`."""
    task_list = [t.strip() for t in tasks.split(",") if t.strip()]
    bad = [t for t in task_list if t not in TASK_PROMPTS and not t.startswith("heldout:")]
    if bad or not task_list:
        raise ConfigError(f"--tasks={tasks!r}: unknown task(s) {bad}; expected a comma list of "
                          f"{', '.join(TASK_PROMPTS)} or heldout:<source>")
    # A training workdir also holds a model_config.json at its top: its model is final/.
    final = epath.Path(checkpoint) / "final"
    cfg, params = load_weights(os.fspath(final) if final.is_dir() else checkpoint, "checkpoint")
    vocab_path = vocab if storage.is_remote(vocab) else str(tokenizer_path(vocab))  # as given, not a local copy
    tokenizer = load_text_tokenizer(vocab)
    needs_data = any(t.startswith("heldout:") for t in task_list)
    hc = _heldout_config(checkpoint, vocab, seq_len) if needs_data else None
    results = run_tasks(cfg, params, tokenizer, task_list, limit or None, shots, max_new_tokens, batch_size, hc)
    full = {"checkpoint": checkpoint, "vocab": vocab_path, "shots": shots, "tasks": results}
    summary = {**full, "tasks": {t: {k: v for k, v in r.items() if k != "predictions"} for t, r in results.items()}}
    if is_primary():
        print(json.dumps(summary, indent=1))
        if out:
            epath.Path(out).write_text(json.dumps(full, indent=1))
    return 0



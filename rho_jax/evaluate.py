"""Evaluation: held-out loss, few-shot accuracy (batched greedy decoding with the KV cache), answer
extraction, and the GSM8K solution loss.

    rho-jax eval --checkpoint=DIR [--tasks=gsm8k100,asdiv,heldout:champ_clean] [--limit=N] [--shots=K]

Few-shot prompts are GSM8K style ("Question: ...\\nAnswer: ... #### N", blank line between examples)
and live in rho_jax/prompts/*.txt. Their examples are written for this project, not taken from the
eval sets.
"""

from __future__ import annotations

import fractions
import functools
import importlib.resources
import json
import os
import re
from decimal import Decimal, InvalidOperation

import jax
import jax.numpy as jnp
import numpy as np

from rho_jax import objective
from rho_jax.score import token_ce

STOP = "\nQuestion:"  # a completion ends where the model starts the next few-shot question
FORMATS = ("gsm8k", "number")
# A number: optional sign (not after a word character, so "3-5" gives 3 and 5), optional $, thousands
# groups of exactly three digits, decimals, or a fraction a/b.
_NUMBER = re.compile(r"(?:(?<![\w)])-)?\$?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+)?")
_MARKER = re.compile(r"answer is|answer:", re.IGNORECASE)
# A gold answer that is a number, optionally followed by a unit phrase: "9 apples", "$5", "12 inches of snow."
_NUMERIC_GOLD = re.compile(r"\s*(" + _NUMBER.pattern + r")(?:\s+[A-Za-z][A-Za-z .'-]*)?\.?\s*")


# ---- answers ----

def normalize_number(text: str) -> str | None:
    """Canonical string of one number: "1,000" -> "1000", "$3.50" -> "3.5", "-0" -> "0"; "1/2" stays "1/2"."""
    s = text.strip().rstrip(".").replace(",", "").replace("$", "")
    if re.fullmatch(r"-?\d+/\d+", s):
        return s
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def _numbers(text: str) -> list[str]:
    return [n for n in (normalize_number(m.group()) for m in _NUMBER.finditer(text)) if n is not None]


def extract_answer(text: str, fmt: str = "gsm8k") -> str | None:
    """The final answer in a model's completion, as a normalised number string (None when there is none).

    gsm8k:  the first number after the first '####', else the last number in the text.
    number: the first number after the first 'answer is' / 'Answer:', else the last number in the text.
    """
    if fmt not in FORMATS:
        raise ValueError(f"answer format {fmt!r}; expected one of {FORMATS}")
    marker = text.find("####") if fmt == "gsm8k" else (m.start() if (m := _MARKER.search(text)) else -1)
    if marker >= 0:
        after = _numbers(text[marker:].lstrip("#"))
        if after:
            return after[0]
    numbers = _numbers(text)
    return numbers[-1] if numbers else None


def is_numeric_answer(gold: str) -> bool:
    """True for golds like "9", "1,000", "$5", "12 inches of snow"; False for "3:30 p.m.", "Mrs. Hilt", "5:6"."""
    return _NUMERIC_GOLD.fullmatch(gold) is not None


def _canonical(answer: str):
    """A comparable key: a Fraction for numeric answers, else the lower-cased text without a final period."""
    m = _NUMERIC_GOLD.fullmatch(answer)
    number = normalize_number(m.group(1)) if m else None
    if number is not None:
        try:
            return fractions.Fraction(number)
        except ZeroDivisionError:
            return number
    return answer.strip().rstrip(".").strip().lower()


def answers_match(pred: str | None, gold: str) -> bool:
    """Numeric equality when both are numbers ("3.50" == "3.5", "1,000" == "1000", "9 apples" == "9"),
    else case-insensitive text equality. A missing prediction never matches."""
    if pred is None:
        return False
    return _canonical(str(pred)) == _canonical(str(gold))


def cut_completion(text: str) -> str:
    """The completion up to the model's next few-shot question."""
    i = text.find(STOP)
    return text if i < 0 else text[:i]


def score_completions(items: list[dict], completions: list[str], fmt: str = "gsm8k") -> dict:
    """Scores completions against items ({id, question, answer}); the pure half of `few_shot_accuracy`.

    Returns {accuracy, n, correct, predictions: [{id, question, gold, completion, pred, correct}]}.
    """
    if len(items) != len(completions):
        raise ValueError(f"{len(items)} items but {len(completions)} completions")
    predictions = []
    for item, completion in zip(items, completions):
        completion = cut_completion(completion)
        pred = extract_answer(completion, fmt)
        predictions.append({"id": item.get("id"), "question": item.get("question"), "gold": item["answer"],
                            "completion": completion, "pred": pred, "correct": answers_match(pred, item["answer"])})
    correct = sum(p["correct"] for p in predictions)
    return {"accuracy": correct / len(items) if items else float("nan"), "n": len(items), "correct": correct,
            "predictions": predictions}


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
    from rho_jax.generate import greedy_generate

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

@functools.lru_cache(maxsize=None)
def _sum_ce_fn(cfg, ce_chunk: int):
    def fn(params, batch):
        targets_BxL, valid_BxL = objective.shift_targets(batch["tokens"], batch["segment_ids"])
        ce_BxL, _ = token_ce(cfg, params, batch, targets_BxL, ce_chunk=ce_chunk)
        weight_BxL = valid_BxL & batch["loss_mask"] if "loss_mask" in batch else valid_BxL
        return jnp.sum(jnp.where(weight_BxL, ce_BxL, 0.0)), jnp.sum(weight_BxL)

    return jax.jit(fn)


def _sum_ce(cfg, params, examples: dict, batch_size: int, ce_chunk: int, keys) -> tuple[float, int]:
    n = len(examples["tokens"])
    fn = _sum_ce_fn(cfg, ce_chunk)
    total, count = 0.0, 0
    for start in range(0, n, batch_size):
        batch = {}
        for k in keys:
            x = np.asarray(examples[k][start:start + batch_size])
            batch[k] = np.pad(x, ((0, batch_size - len(x)), (0, 0)))  # empty rows: no valid targets
        s, c = jax.device_get(fn(params, batch))
        total, count = total + float(s), count + int(c)
    return total, count


def heldout_loss(cfg, params, examples: dict, batch_size: int = 8, ce_chunk: int = 0) -> float:
    """Mean CE (nats) over every valid target token of `examples` ({tokens, segment_ids, positions}: [N, L]).

    Exact over the whole set: sums CE and counts across batches (the last batch is padded with
    empty rows, which have no valid targets)."""
    ints = {k: np.asarray(examples[k], np.int32) for k in ("tokens", "segment_ids", "positions")}
    total, count = _sum_ce(cfg, params, ints, batch_size, ce_chunk, ("tokens", "segment_ids", "positions"))
    if count == 0:
        raise ValueError("held-out examples have no valid target tokens")
    return total / count


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
    total, count = _sum_ce(cfg, params, examples, batch_size, ce_chunk,
                           ("tokens", "segment_ids", "positions", "loss_mask"))
    return total / count


# ---- `rho-jax eval` ----

TASK_PROMPTS = {"gsm8k100": "gsm8k_fewshot", "asdiv": "asdiv_fewshot"}


def _heldout_config(checkpoint: str, vocab: str, seq_len: int):
    """The data config for heldout:<source>: the run's own config.json when `checkpoint` is a workdir."""
    import ml_collections

    from rho_jax.config import base_config

    path = os.path.join(checkpoint, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))
    c = base_config()
    c.data.vocab, c.data.seq_len = vocab, seq_len
    return c


def run_tasks(cfg, params, tokenizer, tasks: list[str], limit: int | None = None, shots: int | None = None,
              max_new_tokens: int = 128, batch_size: int = 8, heldout_config=None) -> dict:
    """{task: results} for gsm8k100 (accuracy + solution loss), asdiv (numeric answers) and heldout:<source>."""
    from rho_jax.data.corpora import eval_examples

    results = {}
    for task in tasks:
        if task.startswith("heldout:"):
            from rho_jax.data.inputs import heldout_dirs, heldout_rows

            if heldout_config is None:
                raise ValueError(f"task {task} needs a data config (a training workdir's config.json)")
            source = task.split(":", 1)[1]  # an eval source of the run's config, or a prepared directory
            prepared = heldout_dirs(heldout_config).get(source, source) if heldout_config.eval.prepared else source
            examples = heldout_rows(heldout_config, prepared, limit or 0)
            results[task] = {"loss": heldout_loss(cfg, params, examples, batch_size), "rows": len(examples["tokens"])}
            continue
        if task not in TASK_PROMPTS:
            raise ValueError(f"unknown eval task {task!r}; expected gsm8k100, asdiv or heldout:<source>")
        items = eval_examples(task)
        if task == "asdiv":
            items = [it for it in items if is_numeric_answer(it["answer"])]
        items = items[:limit] if limit else items
        fmt = "gsm8k"
        res = few_shot_accuracy(cfg, params, tokenizer, items, load_prompt(TASK_PROMPTS[task], shots), fmt,
                                max_new_tokens=max_new_tokens, batch_size=batch_size)
        if task == "gsm8k100":
            res["solution_loss"] = solution_loss(cfg, params, tokenizer, items, batch_size)
        results[task] = res
    return results


def command(checkpoint: str, vocab: str = "", tasks: str = "gsm8k100", limit: int = 0, shots: int | None = None,
            max_new_tokens: int = 128, batch_size: int = 8, seq_len: int = 256, out: str = "") -> int:
    """`rho-jax eval` (flags parsed by rho_jax.cli): prints the summary JSON, writes the full results to `out`."""
    from rho_jax.config import ConfigError
    from rho_jax.distributed import is_primary

    task_list = [t.strip() for t in tasks.split(",") if t.strip()]
    bad = [t for t in task_list if t not in TASK_PROMPTS and not t.startswith("heldout:")]
    if bad or not task_list:
        raise ConfigError(f"--tasks={tasks!r}: unknown task(s) {bad}; expected a comma list of "
                          f"{', '.join(TASK_PROMPTS)} or heldout:<source>")
    from rho_jax.interop import load_tokenizer
    from rho_jax.loop import load_model

    # A training workdir also holds a model_config.json at its top: its model is final/.
    final = os.path.join(checkpoint, "final")
    cfg, params = load_model(final if os.path.isdir(final) else checkpoint, "checkpoint")
    if not vocab:
        from rho_jax.data.vocab import demo_vocab_path

        vocab_path = str(demo_vocab_path())
    else:
        vocab_path = vocab
    tokenizer = load_tokenizer(vocab_path)
    needs_data = any(t.startswith("heldout:") for t in task_list)
    hc = _heldout_config(checkpoint, vocab, seq_len) if needs_data else None
    results = run_tasks(cfg, params, tokenizer, task_list, limit or None, shots, max_new_tokens, batch_size, hc)
    full = {"checkpoint": checkpoint, "vocab": vocab_path, "shots": shots, "tasks": results}
    summary = {**full, "tasks": {t: {k: v for k, v in r.items() if k != "predictions"} for t, r in results.items()}}
    if is_primary():
        print(json.dumps(summary, indent=1))
        if out:
            with open(out, "w") as f:
                json.dump(full, f, indent=1)
    return 0



"""Answers of few-shot completions: extraction, normalisation and matching against the gold, and the
scoring of a set of completions (the pure half of `rho_jax.evaluate.few_shot_accuracy`)."""

from __future__ import annotations

import fractions
import re
from decimal import Decimal, InvalidOperation

STOP = "\nQuestion:"  # a completion ends where the model starts the next few-shot question
FORMATS = ("gsm8k", "number")
# A number: optional sign (not after a word character, so "3-5" gives 3 and 5), optional $, thousands
# groups of exactly three digits, decimals, or a fraction a/b.
_NUMBER = re.compile(r"(?:(?<![\w)])-)?\$?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+)?")
_MARKER = re.compile(r"answer is|answer:", re.IGNORECASE)
# A gold answer that is a number, optionally followed by a unit phrase: "9 apples", "$5", "12 inches of snow."
_NUMERIC_GOLD = re.compile(r"\s*(" + _NUMBER.pattern + r")(?:\s+[A-Za-z][A-Za-z .'-]*)?\.?\s*")


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


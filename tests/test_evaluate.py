"""Answer extraction and matching, few-shot scoring, greedy few-shot accuracy and the solution loss."""

import json
import re

import jax
import numpy as np
import pytest

from rho_jax import answers, cli, evaluate
from rho_jax.checkpoint import save_model
from rho_jax.data.vocab import train_sentencepiece
from rho_jax.generate import greedy_generate
from rho_jax.interop import load_tokenizer
from rho_jax.model import ModelConfig, forward, param_shapes

ITEMS = [
    {"id": "a", "question": "Ann has 3 apples and buys 4 more. How many apples does she have?",
     "solution": "She has 3 + 4 = 7 apples.\n#### 7", "answer": "7"},
    {"id": "b", "question": "A pen costs $2. How much do 5 pens cost?",
     "solution": "5 pens cost 5 * 2 = 10 dollars.\n#### 10", "answer": "10"},
    {"id": "c", "question": "Tom reads 6 pages a day for 3 days. How many pages does he read?",
     "solution": "He reads 6 * 3 = 18 pages in all, which is a lot of reading for one week.\n#### 18", "answer": "18"},
]


@pytest.mark.parametrize("text, fmt, want", [
    ("She has 3 + 4 = 7 apples.\n#### 7", "gsm8k", "7"),
    ("#### 1,000", "gsm8k", "1000"),
    ("#### $1,234.50.", "gsm8k", "1234.5"),
    ("The total is 3.50", "gsm8k", "3.5"),
    ("#### -12", "gsm8k", "-12"),
    ("so 8 - 3 = 5\n#### 5\n#### 9", "gsm8k", "5"),  # the first ####
    ("no marker: 2 then 5 then 41", "gsm8k", "41"),  # fallback: the last number
    ("#### none here, but 3 before", "gsm8k", "3"),  # a marker without a number falls back too
    ("It takes 10% more", "gsm8k", "10"),
    ("The answer is 42.", "number", "42"),
    ("So the answer is $1,000, not 7.", "number", "1000"),
    ("Answer: 1/2 of the cake", "number", "1/2"),
    ("Answer: -3 degrees", "number", "-3"),
    ("we get 6 and then 2.0", "number", "2"),
    ("1,2345 items", "gsm8k", "2345"),  # not a thousands group: 1 and 2345
    ("nothing numeric", "gsm8k", None),
])
def test_extract_answer(text, fmt, want):
    assert answers.extract_answer(text, fmt) == want


def test_extract_answer_rejects_unknown_format():
    with pytest.raises(ValueError, match="format"):
        answers.extract_answer("1", "latex")


@pytest.mark.parametrize("pred, gold, want", [
    ("3.5", "3.50", True), ("1000", "1,000", True), ("9", "9 apples", True), ("12", "12 inches of snow", True),
    ("5", "$5", True), ("0.5", "1/2", True), ("-0", "0", True), ("8", "9", False), (None, "9", False),
    ("3", "3:30 p.m.", False), ("yes", "Yes", True), ("5", "5:6", False),
])
def test_answers_match(pred, gold, want):
    assert answers.answers_match(pred, gold) is want


def test_numeric_gold_answers():
    assert all(answers.is_numeric_answer(g) for g in ("9", "1,000", "$5", "12 inches of snow", "3.5"))
    assert not any(answers.is_numeric_answer(g) for g in ("Mrs. Hilt", "3:30 p.m.", "5:6", "6th"))


def test_score_completions_cuts_at_next_question():
    completions = [
        " 3 + 4 = 7\n#### 7\nQuestion: next\nAnswer: #### 99",  # correct; the tail is cut
        " I do not know\nQuestion: x?\nAnswer: #### 10",  # the right number only after the cut: wrong
        " 6 * 3 = 18 pages\n#### 18.",
    ]
    res = answers.score_completions(ITEMS, completions, "gsm8k")
    assert [p["correct"] for p in res["predictions"]] == [True, False, True]
    assert [p["pred"] for p in res["predictions"]] == ["7", None, "18"]
    assert res["predictions"][0]["completion"] == " 3 + 4 = 7\n#### 7"
    assert res["n"] == 3 and res["correct"] == 2 and res["accuracy"] == pytest.approx(2 / 3)
    assert res["predictions"][1]["gold"] == "10" and res["predictions"][1]["id"] == "b"


@pytest.mark.parametrize("name", ["gsm8k_fewshot", "asdiv_fewshot"])
def test_prompts_are_consistent_worked_examples(name):
    """Each example is Question/Answer/#### and its last equation's result is the #### answer."""
    examples = evaluate.load_prompt(name).split("\n\n")
    assert len(examples) >= 4
    assert evaluate.load_prompt(name, 2) == "\n\n".join(examples[:2]) and evaluate.load_prompt(name, 0) == ""
    for ex in examples:
        assert re.fullmatch(r"Question: [^\n]+\nAnswer: [^\n]+\n#### [\d.]+", ex), ex
        last_result = re.findall(r"= ([\d.]+)", ex)[-1]
        assert answers.answers_match(answers.extract_answer(ex), last_result), ex


def test_prompts_do_not_use_eval_questions():
    from rho_jax.data.corpora import eval_examples

    shots = evaluate.load_prompt("gsm8k_fewshot") + evaluate.load_prompt("asdiv_fewshot")
    for item in eval_examples("gsm8k100"):
        assert item["question"][:60] not in shots


# ---- with a tiny model ----

@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = [evaluate.load_prompt("gsm8k_fewshot"), evaluate.load_prompt("asdiv_fewshot")]
    texts += [f"Question: {it['question']}\nAnswer: {it['solution']}" for it in ITEMS]
    return load_tokenizer(train_sentencepiece(texts, 400, tmp_path_factory.mktemp("spm") / "tiny.model"))


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig(vocab_size=400, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_positions=128)
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(
        lambda path, s: (1.0 + 0.1 * rng.standard_normal(s.shape) if "norm" in jax.tree_util.keystr(path)
                         else 0.3 * rng.standard_normal(s.shape)).astype(np.float32), param_shapes(cfg))
    return cfg, params


def test_split_encode_agrees_with_whole_text_encoding(tokenizer):
    for it in ITEMS:
        ctx, sol = evaluate.split_encode(tokenizer, f"Question: {it['question']}\nAnswer:", " " + it["solution"])
        assert ctx + sol == tokenizer.encode(f"Question: {it['question']}\nAnswer: {it['solution']}")
        assert tokenizer.decode(sol).strip() == it["solution"]


def test_few_shot_accuracy_equals_direct_generation(model, tokenizer):
    """Batched, length-sorted, left-truncated generation gives each item its own greedy completion."""
    cfg, params = model
    prompt, new = evaluate.load_prompt("asdiv_fewshot", 1), 6
    lengths = [len(tokenizer.encode(evaluate.question_prompt(prompt, it["question"]))) for it in ITEMS]
    assert lengths != sorted(lengths) and min(lengths) < 110 < max(lengths)  # reordered and partly truncated
    res = evaluate.few_shot_accuracy(cfg, params, tokenizer, ITEMS, prompt, "gsm8k", max_new_tokens=new,
                                     batch_size=2, max_prompt_tokens=110)
    assert res["n"] == 3 and res["accuracy"] == pytest.approx(np.mean([p["correct"] for p in res["predictions"]]))
    for item, p in zip(ITEMS, res["predictions"]):
        ids = tokenizer.encode(evaluate.question_prompt(prompt, item["question"]))[-110:]
        want = tokenizer.decode(greedy_generate(cfg, params, [ids], new, eos_id=tokenizer.eos_id)[0])
        assert p["completion"] == answers.cut_completion(want)
        assert p["pred"] == answers.extract_answer(p["completion"])
        assert p["correct"] == answers.answers_match(p["pred"], item["answer"])


def test_few_shot_accuracy_rejects_no_room_for_prompt(model, tokenizer):
    cfg, params = model
    with pytest.raises(ValueError, match="max_new_tokens"):
        evaluate.few_shot_accuracy(cfg, params, tokenizer, ITEMS, "", "gsm8k", max_new_tokens=cfg.max_positions)


def test_solution_loss_equals_manual_ce_on_solution_tokens(model, tokenizer):
    cfg, params = model
    fwd = jax.jit(forward, static_argnums=0)
    total, count = 0.0, 0
    for it in ITEMS:
        ctx, sol = evaluate.split_encode(tokenizer, f"Question: {it['question']}\nAnswer:", " " + it["solution"])
        seq = np.array([ctx + sol], np.int32)
        logp = jax.nn.log_softmax(np.asarray(fwd(cfg, params, seq), np.float64), axis=-1)[0]
        for j in range(len(ctx), len(ctx) + len(sol)):  # solution token j is predicted at position j - 1
            total -= float(logp[j - 1, seq[0, j]])
            count += 1
    got = evaluate.solution_loss(cfg, params, tokenizer, ITEMS, batch_size=2, seq_len=128)
    assert got == pytest.approx(total / count, rel=1e-5)


def test_solution_examples_mask_marks_solution_targets(tokenizer):
    ex = evaluate.solution_examples(tokenizer, ITEMS, seq_len=30)  # short: the context is cut from the left
    for r, it in enumerate(ITEMS):
        _, sol = evaluate.split_encode(tokenizer, f"Question: {it['question']}\nAnswer:", " " + it["solution"])
        t = np.nonzero(ex["loss_mask"][r])[0]
        assert ex["tokens"][r, t + 1].tolist() == sol[:29]
        assert ex["positions"][r, 0] == 0 and ex["segment_ids"][r, t[-1] + 1] == 1


def test_eval_main_writes_results(model, tokenizer, tmp_path, capsys):
    cfg, params = model
    save_model(cfg, params, str(tmp_path / "model"))
    out = tmp_path / "eval.json"
    assert cli.main(["rho-jax", "eval", f"--checkpoint={tmp_path / 'model'}", f"--vocab={tokenizer.path}",
                   "--tasks=gsm8k100", "--limit=2", "--shots=1", "--max_new_tokens=4", "--batch_size=2",
                     f"--out={out}"]) == 0
    printed = json.loads(capsys.readouterr().out)
    full = json.loads(out.read_text())["tasks"]["gsm8k100"]
    assert printed["tasks"]["gsm8k100"]["n"] == 2 and "predictions" not in printed["tasks"]["gsm8k100"]
    assert len(full["predictions"]) == 2 and np.isfinite(full["solution_loss"])
    assert full["accuracy"] == sum(p["correct"] for p in full["predictions"]) / 2

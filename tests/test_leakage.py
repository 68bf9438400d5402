"""The leakage check: the CHAMP problems behind the reference's clean set, the noisy corpus and the held-out
set are disjoint in the exported files (the three-way split), and a planted shared problem stops the check."""

import json

import pytest

from rho_jax.data import corpora, leakage, rows


def _prepared(tmp_path, name, files):
    """A prepared directory whose manifest names `files` as its inputs (as `prepare` records them)."""
    d = tmp_path / name
    d.mkdir()
    rows.write_manifest(d, {"format": rows.FORMAT, "shards": [{"input": f"{f}#0-{i + 1}"} for i, f in enumerate(files)]})
    return str(d)


def test_exported_corpora_share_no_problem(tmp_path):
    files = {"reference": [corpora.export("champ_clean", "train", tmp_path)],
             "noisy": [corpora.export("champ_noisy", "train", tmp_path)],
             "heldout": [corpora.export("champ_clean", "heldout", tmp_path)]}
    out = leakage.check_prepared({role: [_prepared(tmp_path, role, fs)] for role, fs in files.items()})
    assert out["shared_problems"] == 0 and set(out["pairs"].values()) == {0}
    n = out["problems"]
    assert n["reference"] > 40 and n["noisy"] > 150 and n["heldout"] > 20
    assert n["reference"] + n["noisy"] + n["heldout"] <= 270  # CHAMP has 270 problems (a few without model replies)
    assert out["files"]["noisy"] == [str(files["noisy"][0])]


def test_a_planted_shared_problem_is_an_error(tmp_path):
    clean = corpora.export("champ_clean", "train", tmp_path)
    noisy = tmp_path / "noisy.jsonl"
    docs = [json.loads(line)["text"] for line in open(corpora.export("champ_noisy", "train", tmp_path))][:50]
    planted = json.loads(open(clean).readline())["text"]  # a reference problem, now in the noisy corpus too
    noisy.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs + [planted]))
    roles = {"reference": [_prepared(tmp_path, "ref", [clean])], "noisy": [_prepared(tmp_path, "noisy", [noisy])]}
    with pytest.raises(leakage.LeakageError, match=r"1 CHAMP problem\(s\) shared by reference & noisy"):
        leakage.check_prepared(roles)


def test_statement_is_the_problem_a_document_opens_with():
    assert leakage.statement("Problem: Find x.\n\nSolution: 2") == "Find x."
    assert leakage.statement("Question: q\nAnswer: 3") is None  # GSM8K and general prose: no problem
    assert leakage.check({"a": {"p"}, "b": {"q"}})["pairs"] == {"a & b": 0}

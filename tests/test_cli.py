"""Every console subcommand through the real `rho-jax` executable, in a subprocess: the happy path once
(started in another directory, with relative paths), and the one-line error of each (exit 2, no
traceback, nothing written). The demo's happy path is tests/test_demo.py::test_demo_end_to_end_tiny."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RHO_JAX = Path(sys.executable).parent / "rho-jax"
TINY = ["--config.train.steps=2", "--config.train.log_every=1", "--config.checkpoint.every=1",
        "--config.data.max_rows=32", "--config.data.seq_len=32", "--config.model.max_positions=64"]
PREPARED = ["--config.data.prepared=runs/prepared"]


def rho_jax(*args, cwd, timeout=600, env=None):
    return subprocess.run([str(RHO_JAX), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc


def test_the_executable_is_next_to_python():
    assert RHO_JAX.exists(), f"{RHO_JAX} missing: install the package (make install)"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A directory outside the repository holding a copy of configs/tiny.py and 200 real noisy-math documents
    as JSONL: every path below is relative to it."""
    from rho_jax.data import corpora

    d = tmp_path_factory.mktemp("user")
    shutil.copy(REPO / "configs" / "tiny.py", d / "tiny.py")
    with open(corpora.export("champ_noisy", "train")) as src, open(d / "docs.jsonl", "w") as out:
        out.writelines(line for _, line in zip(range(200), src))
    return d


@pytest.fixture(scope="module")
def trained(home):
    """`rho-jax prepare` of a relative JSONL glob into a relative directory, `rho-jax train` (CLM) from it, then
    `rho-jax score` with that model as the reference into relative score shards, then cached SLM training."""
    prep = ok(rho_jax("prepare", "--config=tiny.py", "--config.data.source=jsonl:docs*.jsonl", *PREPARED, *TINY,
                      "--config.prepare.workers=1", cwd=home))
    assert "1 shards written" in prep.stdout and (home / "runs" / "prepared" / "manifest.json").exists()
    train = ok(rho_jax("train", "--config=tiny.py", "--config.objective.mode=clm", "--config.workdir=runs/ref",
                       *PREPARED, *TINY, cwd=home))
    assert (home / "runs" / "ref" / "final").is_dir() and (home / "runs" / "ref" / "checkpoints").is_dir()
    assert "'step': 2" in train.stdout
    score = ok(rho_jax("score", "--config=tiny.py", "--config.init.reference=runs/ref/final",
                       "--config.data.score_cache=runs/scores", *PREPARED, *TINY, cwd=home))
    assert "scores complete" in score.stdout
    assert json.loads((home / "runs" / "scores" / "manifest.json").read_text())["shards"]
    ok(rho_jax("train", "--config=tiny.py", "--config.objective.reference=cached", "--config.workdir=runs/slm",
               "--config.data.score_cache=runs/scores", "--config.init.reference=runs/ref/final", *PREPARED, *TINY,
               cwd=home))
    rows = [json.loads(r) for r in (home / "runs" / "slm" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and 0 < rows[-1]["selected_fraction"] < 1
    return home


@pytest.mark.slow
def test_train_and_score_with_relative_paths_from_another_directory(trained):
    assert not (REPO / "runs" / "ref").exists()  # nothing landed in the repository


@pytest.mark.slow
def test_eval_analyze_convert(trained):
    home = trained
    ok(rho_jax("eval", "--checkpoint=runs/ref", "--tasks=gsm8k100", "--limit=1", "--shots=1", "--max_new_tokens=2",
               "--batch_size=1", "--out=eval.json", cwd=home))
    assert json.loads((home / "eval.json").read_text())["tasks"]["gsm8k100"]["n"] == 1
    ok(rho_jax("analyze", "--workdir=runs/slm", "--rows=4", "--html_rows=1", "--batch_size=4", cwd=home))
    assert "heldout_loss.png" in json.loads((home / "runs" / "slm" / "analysis" / "analysis.json").read_text())[
        "files"] or (home / "runs" / "slm" / "analysis" / "analysis.json").exists()
    ok(rho_jax("convert", "runs/ref/final", "hf_ref", "--to=hf", cwd=home))
    assert (home / "hf_ref" / "config.json").exists()


@pytest.mark.slow
def test_bench(home):
    one_device = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # configs/bench_tiny.py: mesh 1x1x1
    proc = ok(rho_jax("bench", "--modes=clm,score", "--iters=1", "--warmup=0", cwd=home, env=one_device))
    assert "clm" in proc.stdout and "score" in proc.stdout
    assert not (home / "BENCHMARKS.md").exists()


@pytest.mark.slow
def test_bench_peer_side_by_side(home):
    """`rho-jax bench --peer`: rho-jax and the eager PyTorch peer alternate, one row each per mode, and every
    rho-jax row carries its ratio to the peer (tiny.py's shape, one timed step)."""
    one_device = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = ok(rho_jax("bench", "--peer", "--config=tiny.py", "--config.mesh.data=1", "--iters=1", "--warmup=0",
                      "--nopeer_compile", "--modes=clm,slm_online,score", cwd=home, env=one_device))
    for mode in ("clm", "slm_online", "score"):
        ours = [ln for ln in proc.stdout.splitlines() if ln.startswith(f"| {mode} | rho-jax |")]
        assert len(ours) == 1 and ours[0].rstrip().endswith("** |"), proc.stdout  # the ratio to the peer
        assert f"| {mode} | torch eager |" in proc.stdout, proc.stdout
    assert not (home / "BENCHMARKS.md").exists()


def test_help_lists_exactly_the_accepted_flags(tmp_path):
    proc = ok(rho_jax("eval", "--help", cwd=tmp_path))
    assert "--checkpoint" in proc.stdout and "--config" not in proc.stdout
    proc = ok(rho_jax("--help", cwd=tmp_path))
    for cmd in ("prepare", "train", "score", "eval", "analyze", "convert", "bench", "compile", "demo"):
        assert f"  {cmd} " in proc.stdout


ERRORS = {  # (command line, a fragment of the one error line)
    "prepare empty glob": (["prepare", "--config=tiny.py", "--config.data.source=jsonl:nothing/*.jsonl",
                            "--config.data.prepared=p"], "nothing/*.jsonl"),
    "prepare no config": (["prepare"], "--config is required"),
    "train unknown key": (["train", "--config=tiny.py", "--config.foo=1"], "foo"),
    "train bad value": (["train", "--config=tiny.py", "--config.train.steps=abc"], "steps"),
    "train bad choice": (["train", "--config=tiny.py", "--config.objective.mode=xyz", "--config.workdir=wd"],
                         "config.objective.mode='xyz'"),
    "train missing config": (["train", "--config=missing.py"], "missing.py"),
    "train no config": (["train"], "--config is required"),
    "train missing model": (["train", "--config=tiny.py", "--config.objective.mode=clm", "--config.init.target=nope",
                             "--config.workdir=wd"],
                            "config.init.target"),
    "train slm no reference": (["train", "--config=tiny.py", "--config.workdir=wd"],  # tiny.py: cached SLM
                               "config.init.reference"),
    "train missing prepared": (["train", "--config=tiny.py", "--config.objective.mode=clm", "--config.workdir=wd",
                                "--config.data.prepared=nope"], "nope"),
    "score demo config": (["score", "--config=" + str(REPO / "configs" / "demo.py")], "unknown config key config."),
    "score no reference": (["score", "--config=tiny.py", "--config.data.score_cache=sc", "--config.data.prepared=pp"],
                           "config.init.reference"),
    "score no prepared": (["score", "--config=tiny.py", "--config.data.score_cache=sc"], "config.data.prepared"),
    "eval missing checkpoint": (["eval", "--checkpoint=nope"], "nope"),
    "eval config flag": (["eval", "--config=tiny.py", "--checkpoint=nope"], "config"),
    "eval bad task": (["eval", "--checkpoint=nope", "--tasks=bogus"], "bogus"),
    "analyze empty workdir": (["analyze", "--workdir=."], "no metrics.jsonl"),
    "analyze bad int": (["analyze", "--workdir=.", "--rows=x"], "rows"),
    "convert missing source": (["convert", "nope", "out"], "nope"),
    "convert one argument": (["convert", "nope"], "SRC DST"),
    "convert bad format": (["convert", "a", "b", "--to=onnx"], "to"),
    "bench unknown key": (["bench", "--config.foo=1"], "foo"),
    "bench bad mode": (["bench", "--modes=fast"], "fast"),
    "compile no slice": (["compile", "--config=tiny.py"], "names no SLICE; pass --topology"),
    "compile unknown topology": (["compile", "--config=tiny.py", "--topology=v9:2x2"], "unknown TPU topology 'v9:2x2'"),
    "compile bad mesh": (["compile", "--config=tiny.py", "--topology=v5litepod-4", "--config.mesh.fsdp=3"], "mesh"),
    "demo unknown key": (["demo", "--config.foo=1"], "foo"),
    "demo bad value": (["demo", "--config.cpt.ratio=1.5", "--config.workdir=wd"], "ratio=1.5"),
    "unknown flag": (["analyze", "--workdir=.", "--bogus=1"], "bogus"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_one_line_error_exit_2_nothing_written(case, tmp_path):
    args, fragment = ERRORS[case]
    shutil.copy(REPO / "configs" / "tiny.py", tmp_path / "tiny.py")
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = rho_jax(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert fragment in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == before


def test_incompatible_checkpoint_is_one_line(trained, tmp_path):
    """Resuming a workdir whose checkpoints hold another architecture: one line, the workdir untouched."""
    before = sorted(str(p) for p in (trained / "runs" / "ref").rglob("*"))
    proc = rho_jax("train", "--config=tiny.py", "--config.objective.mode=clm", "--config.workdir=runs/ref",
                   "--config.model.d_model=32", *TINY, cwd=trained)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    assert sorted(str(p) for p in (trained / "runs" / "ref").rglob("*")) == before


def test_debug_shows_the_traceback(tmp_path):
    shutil.copy(REPO / "configs" / "tiny.py", tmp_path / "tiny.py")
    proc = rho_jax("train", "--config=tiny.py", "--config.objective.mode=xyz", "--debug", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr
    env = {**os.environ, "RHO_JAX_DEBUG": "1"}
    proc = subprocess.run([str(RHO_JAX), "train", "--config=tiny.py", "--config.objective.mode=xyz"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=600)
    assert "Traceback" in proc.stderr


def test_quiet_start(trained):
    """No backend-probing or native-library lines before the command's own output on CPU."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL")}
    proc = subprocess.run([str(RHO_JAX), "train", "--config=tiny.py", "--config.workdir=runs/quiet", *PREPARED, *TINY,
                           "--config.objective.mode=clm", "--config.train.steps=1"],
                          cwd=trained, capture_output=True, text=True, env=env, timeout=600)
    ok(proc)
    for noise in ("Unable to initialize backend", "cuInit", "cuda", "oneDNN", "absl::InitializeLog", "xla_bridge",
                  "TPU_WORKER_HOSTNAMES", "TPU accelerator type", "libtpu"):  # libtpu: the `tpu` extra, in the lock
        assert noise not in proc.stderr, proc.stderr[:2000]

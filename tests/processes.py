"""Real `rho-jax` processes for the tests (and scripts/kill_test.py): the small online-SLM run every resume
check uses, its inputs (a random reference model, prepared CHAMP rows), subprocess start/run/kill with a
clean single-process environment, and bit-identity of final params.

The end-to-end checks (tests/test_resume.py, test_pod.py, test_multiprocess.py, ...) and conftest.py's
prepared-rows fixtures import it; pytest puts tests/ on sys.path.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout
# The console script of the interpreter running this (a venv's bin/), else the checkout's .venv, else PATH's.
RHO_JAX = next((str(p) for p in (Path(sys.executable).parent / "rho-jax", ROOT / ".venv" / "bin" / "rho-jax")
                if p.exists()), "rho-jax")


def make_reference_model(directory: Path, seed: int = 1) -> Path:
    """A random-init Orbax model dir with configs/tiny.py's architecture (the online reference)."""
    import jax
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from configs import tiny
    from rho_jax import checkpoint, config as config_lib, model

    if not (directory / checkpoint.MODEL_CONFIG_FILE).exists():
        cfg = config_lib.model_config(tiny.get_config())
        params = jax.tree.map(np.asarray, model.init_params(cfg, jax.random.PRNGKey(seed)))
        checkpoint.save_model(cfg, params, str(directory))
    return directory


def make_jsonl(path: Path, documents: int = 200, first: int = 0) -> Path:
    """A JSONL file of CHAMP noisy-math documents [first, first + documents) (real text)."""
    sys.path.insert(0, str(ROOT))
    from rho_jax.data import corpora

    src = corpora.export("champ_noisy", "train")
    with open(src) as f, open(path, "w") as out:
        for i, line in zip(range(first + documents), f):
            if i >= first:
                out.write(line)
    return path


def make_prepared(directory: Path, documents: int = 200, seq_len: int = 32, shards: int = 3, first: int = 0) -> Path:
    """A prepared directory (`rho-jax prepare` output) of CHAMP noisy-math documents [first, first + documents):
    real text, the demo vocabulary, about `shards` ArrayRecord shards. Reused when it exists."""
    sys.path.insert(0, str(ROOT))
    from rho_jax.data import prepare, rows, vocab

    if not (directory / rows.MANIFEST).exists():
        directory.mkdir(parents=True, exist_ok=True)
        subset = make_jsonl(directory.parent / f"{directory.name}.jsonl", documents, first)
        prepare.prepare(f"jsonl:{subset}", str(directory), tokenizer=str(vocab.tokenizer_path("")),
                        vocab_identity=vocab.vocabulary_identity(""), seq_len=seq_len,
                        shard_bytes=subset.stat().st_size // shards + 1)
    return directory


def train_overrides(workdir: Path, reference: Path, prepared: Path, steps: int = 12, **extra) -> list[str]:
    """CLI flags of the small online-SLM run every resume check uses (checkpoint every step)."""
    flags = {"objective.mode": "slm", "objective.reference": "online", "init.reference": str(reference),
             "data.prepared": str(prepared), "data.max_rows": 64, "data.seq_len": 32, "train.steps": steps, "train.log_every": 1,
             "checkpoint.every": 1, "workdir": str(workdir)}
    flags.update(extra)
    return ["train", f"--config={ROOT / 'configs' / 'tiny.py'}"] + [f"--config.{k}={v}" for k, v in flags.items()]


# Variables that would make a process think it is one of several (scrubbed from the child env).
CLUSTER_VARS = (
    "RHO_JAX_COORDINATOR", "RHO_JAX_NUM_PROCESSES", "RHO_JAX_PROCESS_ID", "RHO_JAX_MULTIHOST",
    "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_NUM_SLICES", "MEGASCALE_COORDINATOR_ADDRESS",
    "SLURM_JOB_ID", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "CLOUD_TPU_TASK_ID",
)


def cli_env(devices: int = 1, compile_cache: Path | None = None) -> dict:
    """The subprocess environment: one process (no cluster variables) with `devices` simulated CPU devices
    and, optionally, a persistent compilation cache (a cache hit loads the same executable, so results are
    unchanged)."""
    env = {k: v for k, v in os.environ.items() if k not in CLUSTER_VARS}
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", TPU_SKIP_MDS_QUERY="1",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    if compile_cache is not None:
        env.update(JAX_COMPILATION_CACHE_DIR=str(compile_cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen([RHO_JAX] + args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def start_processes(args: list[str], env: dict, logs: list[Path]) -> list[subprocess.Popen]:
    """`rho-jax args` as len(logs) processes of one jax.distributed job (loopback coordinator, process i
    logging to logs[i]), the way every host of a slice runs the same command."""
    coordinator = f"127.0.0.1:{free_port()}"
    return [start(args, dict(env, RHO_JAX_COORDINATOR=coordinator, RHO_JAX_NUM_PROCESSES=str(len(logs)),
                             RHO_JAX_PROCESS_ID=str(i)), log) for i, log in enumerate(logs)]


def wait_all(procs: list[subprocess.Popen], timeout: float = 600) -> list[int]:
    """The exit codes of `procs`; on a timeout, every one still running is killed (then it raises)."""
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(max(deadline - time.monotonic(), 0.001)) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def run(args: list[str], env: dict, log: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs `rho-jax args` to completion; returns it with .output = this run's log text."""
    proc = start(args, env, log)
    before = log.stat().st_size if log.exists() else 0
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    text = log.read_bytes()[before:].decode(errors="replace")
    return subprocess.CompletedProcess(proc.args, rc, text, "")


def _steps_on_disk(ckpt_dir: Path) -> tuple[set[int], set[int]]:
    """(finalised steps, steps whose save is in flight) under a checkpoints dir."""
    done, tmp = set(), set()
    try:
        names = os.listdir(ckpt_dir)
    except FileNotFoundError:
        return done, tmp
    for name in names:
        head = name.split(".", 1)[0]
        if head.isdigit():
            (done if name == head else tmp).add(int(head))
    return done, tmp


def kill_at(proc: subprocess.Popen | list[subprocess.Popen], ckpt_dir: Path, step: int, during_save: bool,
            rng: random.Random, timeout: float = 600) -> str:
    """SIGKILLs `proc` (its process group; or every process of a list) while checkpoint `step` is being
    saved (`during_save`) or a random 0-0.3 s after it is complete. Returns what happened ('killed ...'
    or 'exited rc=N')."""
    procs = proc if isinstance(proc, list) else [proc]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            return "exited rc=" + ",".join(str(p.poll()) for p in procs)
        done, tmp = _steps_on_disk(ckpt_dir)
        if during_save and step in tmp:
            how = f"killed during the save of step {step}"
            break
        if any(s >= step for s in done):
            if not during_save:
                time.sleep(rng.uniform(0.0, 0.3))
            how = f"killed after step {step} was saved" + ("" if not during_save else " (save not caught in flight)")
            break
        time.sleep(0.002)
    else:
        how = "killed at the timeout"
    for p in procs:
        os.killpg(p.pid, signal.SIGKILL)
    for p in procs:
        p.wait()
    return how


def final_params(workdir: Path):
    """Host numpy params of <workdir>/final."""
    import jax
    import numpy as np

    from rho_jax import checkpoint

    _, params = checkpoint.restore_model_dir(str(workdir / "final"))
    return jax.tree.map(np.asarray, params)


def bit_identical(a, b) -> bool:
    import jax
    import numpy as np

    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    return [p for p, _ in la] == [p for p, _ in lb] and all(
        x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x.view(np.uint8), y.view(np.uint8))
        for (_, x), (_, y) in zip(la, lb))


def resumed_from(output: str) -> int | None:
    for line in output.splitlines():
        if line.startswith("resumed from checkpoint step "):
            return int(line.split()[4])
    return None

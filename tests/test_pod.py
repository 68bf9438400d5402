"""The TPU pod flow of tpu/README.md, end to end, with CPU processes shaped like the slice: PROCESSES real
`rho-jax` processes of DEVICES simulated devices each (4 x 4 stands in for a v4-32's 4 hosts x 4 chips),
one jax.distributed job per command (loopback coordinator), and one config file for every step:
configs/tinyllama_owm_slm.py with its mesh spanning every process (data=-1, fsdp=PROCESSES x DEVICES) and
a tiny model, cached reference scores and real text.

  rho-jax prepare   once, one process (the README prepares off the slice);
  rho-jax score     on every process: the same global mesh and compiled scorer as training, so the score
                    shards equal, bit for bit, one PROCESSES x DEVICES-device process scoring the same rows;
  rho-jax train     on every process, kill -9 of every process after a checkpoint;
  rho-jax train     again: resumes from that checkpoint and finishes, each step's metrics written once and
                    equal to what the killed run logged for it.
"""

import os
import random
from pathlib import Path

import numpy as np
import processes as kt
import pytest

from rho_jax.data import rows, scores
from rho_jax.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]

PROCESSES, DEVICES = 4, 4
SEQ, STEPS, KILL_AFTER = 32, 6, 2
TIMEOUT_S = 600
pytestmark = pytest.mark.slow

CONFIG = '''"""configs/tinyllama_owm_slm.py on {processes} CPU processes x {devices} devices: tiny model, local paths."""
import importlib.util

_spec = importlib.util.spec_from_file_location("tinyllama_owm_slm", {real!r})
_real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_real)


def get_config():
    c = _real.get_config()
    c.update_from_flattened_dict({overrides!r})
    return c
'''


def write_config(path: Path, root: Path, jsonl: Path, target: Path, reference: Path) -> Path:
    """The one config file of every step; the real config's mesh with fsdp = every device of the job."""
    overrides = {
        "workdir": str(root / "slm"), "init.target": str(target), "init.reference": str(reference),
        "model.vocab_size": 4096, "model.d_model": 64, "model.n_layers": 2, "model.n_heads": 4,
        "model.n_kv_heads": 2, "model.d_ff": 128, "model.max_positions": 128, "model.attention_chunk": 16,
        "objective.ce_chunk": 1024,
        "data.source": f"jsonl:{jsonl}", "data.prepared": str(root / "prepared"), "data.vocab": "",
        "data.score_cache": str(root / "scores"), "data.seq_len": SEQ, "prepare.workers": 1,
        # about 2 shards per process, unevenly split: the processes have unequal rows to score
        "prepare.shard_mb": jsonl.stat().st_size / (2 * PROCESSES + 1) / (1 << 20),
        "train.batch_size": 2 * PROCESSES * DEVICES,  # 2 rows a device: a row's place in its block varies
        "train.steps": STEPS, "train.warmup_steps": 1,
        "train.log_every": 1, "checkpoint.every": 1,
        "mesh.data": -1, "mesh.fsdp": PROCESSES * DEVICES, "mesh.tensor": 1,
    }
    real = REPO / "configs" / "tinyllama_owm_slm.py"
    path.write_text(CONFIG.format(processes=PROCESSES, devices=DEVICES, real=str(real), overrides=overrides))
    return path


def on_all(args, env, logs):
    """`rho-jax args` on every process, to completion; asserts each exits 0."""
    rcs = kt.wait_all(kt.start_processes(args, env, logs), TIMEOUT_S)
    assert rcs == [0] * len(logs), "\n".join(f"--- {log.name} rc={rc}\n{tail(log)}" for log, rc in zip(logs, rcs) if rc)


def tail(log: Path) -> str:
    return "\n".join(ln for ln in log.read_text().splitlines() if not ln.startswith("[Gloo]"))[-2500:]


def untimed(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("tokens_per_s", "mfu")}


def score_arrays(cache: Path, manifest: dict) -> list:
    return [np.stack([scores.decode_scores(r, SEQ) for r in rows.read_records(cache / s["file"])])
            for s in manifest["shards"]]


def test_pod_flow_prepare_score_train_kill_resume(tmp_path):
    root, logs = tmp_path, tmp_path / "logs"
    config = write_config(root / "pod_config.py", root, kt.make_jsonl(root / "docs.jsonl", documents=24),
                          kt.make_reference_model(root / "target", seed=3), kt.make_reference_model(root / "ref"))
    flag = f"--config={config}"
    env = kt.cli_env(DEVICES, root / "jax_cache")
    per_process = lambda step: [logs / f"{step}-{p}.log" for p in range(PROCESSES)]  # noqa: E731

    res = kt.run(["prepare", flag], kt.cli_env(1), logs / "prepare.log", TIMEOUT_S)
    assert res.returncode == 0, res.stdout[-3000:]
    on_all(["score", flag], env, per_process("score"))
    pod = rows.read_manifest(root / "scores", scores.FORMAT)
    n = len(pod["shards"])  # the prepared shards that hold rows
    assert n > PROCESSES, n
    for p, log in enumerate(per_process("score")):  # shard i -> process i % PROCESSES
        assert f"process {p}/{PROCESSES}: scored {len(range(p, n, PROCESSES))} shards, 0 already done" in \
            log.read_text()
    single = root / "scores_single_process"  # the same rows, mesh shape and micro-batch in one process
    res = kt.run(["score", flag, f"--config.data.score_cache={single}"], kt.cli_env(PROCESSES * DEVICES),
                 logs / "score-single.log", TIMEOUT_S)
    assert res.returncode == 0, res.stdout[-3000:]
    assert pod == rows.read_manifest(single, scores.FORMAT)  # every shard's sha256 too
    for a, b in zip(score_arrays(root / "scores", pod), score_arrays(single, pod)):
        assert a.dtype == b.dtype and np.array_equal(a.view(np.uint32), b.view(np.uint32))

    procs = kt.start_processes(["train", flag], env, per_process("train"))
    how = kt.kill_at(procs, root / "slm" / "checkpoints", KILL_AFTER, during_save=False, rng=random.Random(0),
                     timeout=TIMEOUT_S)
    assert how.startswith("killed"), how + "".join(tail(log) for log in per_process("train"))
    assert not (root / "slm" / "final").exists()
    killed = {r["step"]: untimed(r) for r in read_metrics(str(root / "slm"))}
    assert len(killed) >= KILL_AFTER, killed

    on_all(["train", flag], env, per_process("resume"))
    resumed = kt.resumed_from(per_process("resume")[0].read_text())
    assert resumed is not None and KILL_AFTER <= resumed < STEPS, resumed
    metrics = read_metrics(str(root / "slm"))  # each step once, the counters carried across the kill
    assert [r["step"] for r in metrics] == list(range(1, STEPS + 1))
    assert [r["tokens_processed"] for r in metrics] == [s * 2 * PROCESSES * DEVICES * SEQ for s in range(1, STEPS + 1)]
    # the steps the killed run logged read the same after the resume (those after its checkpoint were redone)
    assert [untimed(r) for r in metrics if r["step"] in killed] == [killed[s] for s in sorted(killed)]
    assert (root / "slm" / "final").is_dir() and os.listdir(root / "slm" / "final")

"""Two JAX processes (4 CPU devices each, loopback coordinator) train configs/tiny.py for 3 SLM steps on
one global batch, each feeding only its own rows; their per-step metrics equal a single 8-device process.

Run as a script, this file is the worker: `python test_multiprocess.py single` or
`python test_multiprocess.py multi COORDINATOR PROCESS_ID`; it prints one JSON line.
"""

import json
import subprocess
import sys
from pathlib import Path

import processes as kt
import pytest

REPO = Path(__file__).resolve().parents[1]

TIMEOUT_S = 300
STEPS = 3
TOL = 1e-5



def global_batch_at(step: int, batch: int, seq_len: int, vocab: int) -> dict:
    """The same global numpy batch in every process: two packed documents a row, random cached ref CE."""
    import numpy as np

    from rho_jax.bench import random_batch

    return random_batch(np.random.default_rng(1000 + step), batch, seq_len, vocab, docs_per_row=2)


def worker(argv) -> dict:
    """Trains STEPS steps; returns per-step metrics and, per process, the rows it fed."""
    from rho_jax import distributed

    if argv[0] == "multi":
        assert distributed.maybe_initialize(coordinator_address=argv[1], num_processes=2, process_id=int(argv[2]))
    import importlib.util

    import jax
    import numpy as np

    from rho_jax import sharding
    from rho_jax.loop import Trainer

    spec = importlib.util.spec_from_file_location("tiny", REPO / "configs" / "tiny.py")
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    config = tiny.get_config()
    assert config.objective.reference == "cached"  # no reference checkpoint needed
    trainer = Trainer(config)
    state = trainer.init_state()
    B, L = config.train.batch_size, config.data.seq_len

    # The rows this process must provide: those its addressable devices hold under the batch sharding.
    rows = sharding.process_rows(trainer.step_fn.batch_shardings["tokens"], (B, L))
    lo, hi = rows[0], rows[-1] + 1
    assert rows == list(range(lo, hi)), f"process {jax.process_index()} holds non-contiguous rows {rows}"

    out = {"process": jax.process_index(), "processes": jax.process_count(), "devices": jax.device_count(),
           "rows": [lo, hi], "loss": [], "grad_norm": [], "n_selected": [], "shards_match": True}
    for step in range(STEPS):
        full = global_batch_at(step, B, L, config.model.vocab_size)
        batch = trainer.global_batch({k: v[lo:hi] for k, v in full.items()})
        for k, arr in batch.items():  # every local shard holds the global batch's rows at its index
            for shard in arr.addressable_shards:
                out["shards_match"] &= bool(np.array_equal(np.asarray(shard.data), full[k][shard.index]))
        state, metrics = trainer.train_step(state, batch)
        metrics = jax.device_get(metrics)
        for k in ("loss", "grad_norm", "n_selected"):
            out[k].append(float(metrics[k]))
    return out


def _env(n_devices: int) -> dict:
    return dict(kt.cli_env(n_devices), PYTHONPATH=str(REPO))


@pytest.mark.slow
def test_two_processes_match_one():
    coordinator = f"127.0.0.1:{kt.free_port()}"
    me = str(Path(__file__).resolve())
    commands = [([sys.executable, me, "multi", coordinator, str(pid)], 4) for pid in (0, 1)]
    commands.append(([sys.executable, me, "single"], 8))
    procs = [subprocess.Popen(cmd, env=_env(n), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd, n in commands]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT_S)
            assert p.returncode == 0, f"worker {p.args[2:]} failed (rc={p.returncode}):\n{err[-4000:]}"
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()

    *multi, single = results
    assert single["processes"] == 1 and single["devices"] == 8 and single["rows"] == [0, 8]
    for pid, r in enumerate(multi):
        assert (r["process"], r["processes"], r["devices"]) == (pid, 2, 8)
        assert r["rows"] == [pid * 4, pid * 4 + 4]  # process p holds rows [p*B/2, (p+1)*B/2) of B = 8
        assert r["shards_match"]
        for k in ("loss", "grad_norm", "n_selected"):
            assert len(r[k]) == STEPS
            assert r[k] == pytest.approx(single[k], rel=TOL, abs=TOL), (k, pid, r[k], single[k])
    assert len(set(single["loss"])) == STEPS  # the steps really differ (params update, batches change)


if __name__ == "__main__":
    print(json.dumps(worker(sys.argv[1:])), flush=True)

"""rho_jax.distributed: two real processes join over loopback; a lone process does nothing."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TIMEOUT_S = 120
REPO = Path(__file__).resolve().parents[1]

# Each process holds rows [pid*2, pid*2+2) of a [4, 3] global array (2 local CPU devices each,
# 4 devices in all) and prints the jitted sum of the whole array, which needs the other's rows.
WORKER = textwrap.dedent(
    """
    import json, sys
    from rho_jax import distributed
    coordinator, pid = sys.argv[1], int(sys.argv[2])
    called = distributed.maybe_initialize(coordinator_address=coordinator, num_processes=2, process_id=pid)
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    mesh = Mesh(np.array(jax.devices()), ("data",))
    local_4x3 = np.arange(pid * 6, pid * 6 + 6, dtype=np.float32).reshape(2, 3)
    global_4x3 = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local_4x3, (4, 3))
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(global_4x3)
    print(json.dumps({
        "called": called, "again": distributed.maybe_initialize(coordinator_address=coordinator,
                                                                 num_processes=2, process_id=pid),
        "count": jax.process_count(), "index": jax.process_index(), "primary": distributed.is_primary(),
        "devices": jax.device_count(), "local_devices": jax.local_device_count(),
        "sum": float(total.addressable_data(0)),
    }))
    """
)

SINGLE = textwrap.dedent(
    """
    import json
    from rho_jax import distributed
    called = distributed.maybe_initialize()
    import jax
    print(json.dumps({"called": called, "initialized": distributed.is_initialized(),
                      "count": jax.process_count(), "primary": distributed.is_primary()}))
    """
)

# Variables that would make a process think it is one of several (scrubbed from the child env).
CLUSTER_VARS = (
    "RHO_JAX_COORDINATOR", "RHO_JAX_NUM_PROCESSES", "RHO_JAX_PROCESS_ID", "RHO_JAX_MULTIHOST",
    "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_NUM_SLICES", "MEGASCALE_COORDINATOR_ADDRESS",
    "SLURM_JOB_ID", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "CLOUD_TPU_TASK_ID",
)


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in CLUSTER_VARS}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               TPU_SKIP_MDS_QUERY="1", PYTHONPATH=str(REPO), **extra)
    return env


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def test_two_processes_share_one_global_computation():
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, coordinator, str(pid)], env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for pid in (0, 1)
    ]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT_S)
            assert p.returncode == 0, f"worker failed (rc={p.returncode}):\n{err[-4000:]}"
            outs.append(_last_json(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()

    expected_sum = float(sum(range(12)))  # rows 0..3 hold 0..11
    for pid, r in enumerate(outs):
        assert r["called"] is True
        assert r["again"] is False  # already initialised: the second call is a no-op
        assert r["count"] == 2 and r["index"] == pid
        assert r["primary"] is (pid == 0)
        assert r["devices"] == 4 and r["local_devices"] == 2
        assert r["sum"] == expected_sum


def test_single_process_is_a_no_op():
    out = subprocess.run([sys.executable, "-c", SINGLE], env=_env(), capture_output=True, text=True,
                         timeout=TIMEOUT_S, check=True).stdout
    r = _last_json(out)
    assert r == {"called": False, "initialized": False, "count": 1, "primary": True}


def test_num_processes_one_is_a_no_op():
    out = subprocess.run([sys.executable, "-c", SINGLE], env=_env(RHO_JAX_NUM_PROCESSES="1"),
                         capture_output=True, text=True, timeout=TIMEOUT_S, check=True).stdout
    assert _last_json(out)["called"] is False


def test_cluster_env_is_recognised(monkeypatch):
    from rho_jax import distributed

    for var in CLUSTER_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TPU_SKIP_MDS_QUERY", "1")
    assert distributed.cluster_process_count() == 1
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w-0,w-1,w-2,w-3")
    assert distributed.cluster_process_count() == 4
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w-0")
    assert distributed.cluster_process_count() == 1
    monkeypatch.setenv("MEGASCALE_NUM_SLICES", "2")
    assert distributed.cluster_process_count() == 2
    monkeypatch.delenv("MEGASCALE_NUM_SLICES")
    monkeypatch.setenv("RHO_JAX_MULTIHOST", "1")
    assert distributed.cluster_process_count() == 0  # several; JAX finds out how many


def test_bad_process_id_names_the_value():
    from rho_jax import distributed

    with pytest.raises(ValueError, match="process_id=2"):
        distributed.maybe_initialize(coordinator_address="127.0.0.1:1", num_processes=2, process_id=2)

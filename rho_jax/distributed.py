"""Multi-host start-up: call `jax.distributed.initialize()` only where there are several hosts.

Every host of a TPU pod slice runs the same `rho-jax …` command (see tpu/run.sh). Before any
other JAX call, each process must join the distributed runtime so that `jax.devices()` lists the
devices of all hosts. On a single host (a laptop, one GPU box, a v4-8) that call is skipped.

A multi-host setup is recognised from, in order:
  1. explicit arguments, or RHO_JAX_COORDINATOR / RHO_JAX_NUM_PROCESSES / RHO_JAX_PROCESS_ID;
  2. RHO_JAX_MULTIHOST=1 (tpu/run.sh sets it on every worker);
  3. cluster variables that JAX's own auto-detection reads: TPU_WORKER_HOSTNAMES or
     TPU_PROCESS_ADDRESSES with more than one host, MEGASCALE_NUM_SLICES > 1, SLURM_NTASKS > 1,
     OMPI_COMM_WORLD_SIZE > 1;
  4. on a Cloud TPU VM (a /dev/accel* or /dev/vfio/N device), the GCE metadata server's
     `worker-network-endpoints` listing more than one worker.
In cases 2-4 `jax.distributed.initialize()` is called without arguments and JAX detects the
coordinator, process count and process id itself.

Nothing here touches the JAX backend before `initialize()`: no `jax.devices()`, no
`jax.process_count()`; those would freeze a single-process backend.
"""

from __future__ import annotations

import glob
import logging
import os
import urllib.error
import urllib.request

import jax

log = logging.getLogger(__name__)

ENV_COORDINATOR = "RHO_JAX_COORDINATOR"  # host:port of process 0
ENV_NUM_PROCESSES = "RHO_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "RHO_JAX_PROCESS_ID"
ENV_MULTIHOST = "RHO_JAX_MULTIHOST"  # "1": trust JAX's cluster auto-detection

_METADATA_URL = "http://{ip}/computeMetadata/v1/instance/attributes/worker-network-endpoints"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer; set it to a whole number or unset it.") from None


def _host_count(var: str) -> int:
    hosts = [h for h in os.environ.get(var, "").split(",") if h.strip()]
    return len(hosts)


def _gce_tpu_worker_count(timeout_s: float = 2.0) -> int:
    """Number of workers in this TPU slice per the GCE metadata server; 0 when not on a TPU VM."""
    if os.environ.get("TPU_SKIP_MDS_QUERY") is not None:
        return 0
    if not (glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*")):
        return 0
    # The IP, not metadata.google.internal: a DNS miss off GCE could outlast the timeout.
    url = _METADATA_URL.format(ip=os.environ.get("GCE_METADATA_IP", "169.254.169.254"))
    request = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            endpoints = response.read().decode()
    except (urllib.error.URLError, OSError):
        return 0
    return len([e for e in endpoints.split(",") if e.strip()])


def cluster_process_count() -> int:
    """Process count implied by the cluster environment (1 when nothing says multi-host).

    0 means "several, let JAX work out how many" (RHO_JAX_MULTIHOST=1).
    """
    if os.environ.get(ENV_MULTIHOST, "").strip() in ("1", "true", "True"):
        return 0
    counts = [
        _host_count("TPU_PROCESS_ADDRESSES") or _host_count("TPU_WORKER_HOSTNAMES"),
        _env_int("MEGASCALE_NUM_SLICES") or 0,  # ≥2 slices means ≥2 hosts
        (_env_int("SLURM_NTASKS") or 0) if "SLURM_JOB_ID" in os.environ else 0,
        _env_int("OMPI_COMM_WORLD_SIZE") or 0,
    ]
    count = max(counts)
    if count > 1:
        return count
    return max(_gce_tpu_worker_count(), 1)


def is_initialized() -> bool:
    """Whether this process has already joined a JAX distributed runtime."""
    return bool(jax.distributed.is_initialized())  # public since before the JAX this package requires


def maybe_initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Joins the JAX distributed runtime when this is one process of several; else does nothing.

    Call it first thing, before any other JAX call.

    Args:
      coordinator_address: "host:port" of process 0 (default: env RHO_JAX_COORDINATOR).
      num_processes: total process count (default: env RHO_JAX_NUM_PROCESSES).
      process_id: this process's index in [0, num_processes) (default: env RHO_JAX_PROCESS_ID).

    Returns:
      True when `jax.distributed.initialize` was called by this call; False when skipped (one
      process, or already initialised).
    """
    if is_initialized():
        return False
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)

    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit):
        if num_processes is not None and num_processes < 1:
            raise ValueError(f"num_processes={num_processes}; it must be >= 1.")
        if num_processes == 1:
            return False
        if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
            raise ValueError(
                f"process_id={process_id} is outside [0, {num_processes}); give each process a distinct id "
                f"from 0 to num_processes-1 ({ENV_PROCESS_ID})."
            )
        log.info("jax.distributed.initialize(%s, %s, %s)", coordinator_address, num_processes, process_id)
        jax.distributed.initialize(
            coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
        )
        return True

    count = cluster_process_count()
    if count == 1:
        return False
    log.info("multi-host environment (%s processes); jax.distributed.initialize() auto-detects", count or "several")
    jax.distributed.initialize()
    return True


def is_primary() -> bool:
    """True on process 0: the one that writes logs, reports and exports."""
    return jax.process_index() == 0

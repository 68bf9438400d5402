"""A quiet start: no backend-probing or native-library log lines before a command's own output.

JAX logs (at INFO) every accelerator backend it fails to initialise; TensorFlow's C++ runtime prints
oneDNN/CUDA notices at import, before its own log level applies. Both say nothing to a user on a
machine without that accelerator. `--debug` / RHO_JAX_DEBUG=1 keeps them all.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import logging
import os

_DEBUG = False
_GOOGLE_PCI_VENDOR = "0x1ae0"


def quiet_start(debug: bool = False) -> None:
    """Sets log levels for a command-line run; call before JAX or TensorFlow is used."""
    global _DEBUG
    _DEBUG = debug
    if debug:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    quiet_libtpu()
    for name in ("jax._src.xla_bridge", "absl", "orbax", "tensorflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every checkpoint save at INFO


def has_tpu_chips() -> bool:
    """Whether a TPU chip sits on this host's PCI bus (Google's vendor id), as libtpu itself checks."""
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        with contextlib.suppress(OSError), open(vendor) as f:
            if f.read().strip() == _GOOGLE_PCI_VENDOR:
                return True
    return False


def quiet_libtpu() -> None:
    """libtpu (the `tpu` extra, which `rho-jax compile` needs) prints two start-up error lines on a host
    without TPU chips unless it is told the worker hosts and an accelerator type. No TPU backend can start
    there either way, so placeholder values only silence it; a real TPU host keeps its own settings."""
    if importlib.util.find_spec("libtpu") is None or has_tpu_chips():
        return
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v4-8")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server off Cloud TPU VMs
    # No chip to guard: without this, one process holding /tmp/libtpu_lockfile (any JAX process that
    # probed the TPU backend) stops every other one from describing a topology to compile for.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


@contextlib.contextmanager
def native_stderr_silenced():
    """Sends file descriptor 2 to /dev/null inside the block (C++ log lines that bypass Python logging).

    A Python exception raised inside still propagates and is printed after stderr is restored."""
    if _DEBUG or os.environ.get("RHO_JAX_DEBUG", "") not in ("", "0"):
        yield
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)

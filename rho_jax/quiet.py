"""A quiet start: no backend-probing or native-library log lines before a command's own output.

JAX logs (at INFO) every accelerator backend it fails to initialise; TensorFlow's C++ runtime prints
oneDNN/CUDA notices at import, before its own log level applies. Both say nothing to a user on a
machine without that accelerator. `--debug` / RHO_JAX_DEBUG=1 keeps them all.
"""

from __future__ import annotations

import contextlib
import logging
import os

_DEBUG = False


def quiet_start(debug: bool = False) -> None:
    """Sets log levels for a command-line run; call before JAX or TensorFlow is used."""
    global _DEBUG
    _DEBUG = debug
    if debug:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("jax._src.xla_bridge", "absl", "orbax", "tensorflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every checkpoint save at INFO


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

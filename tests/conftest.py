"""Test-process setup: 8 simulated CPU devices, set before jax is first imported."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


import pytest  # noqa: E402

import processes  # noqa: E402 - tests/ is on sys.path (pytest's rootdir conftest)


def _prepared(tmp_path_factory, seq_len: int):
    return processes.make_prepared(tmp_path_factory.mktemp("prepared") / f"seq{seq_len}", seq_len=seq_len)


@pytest.fixture(scope="session")
def prepared32(tmp_path_factory):
    """`rho-jax prepare` output (seq_len 32, demo vocabulary) of 200 real noisy-math documents, shared."""
    return _prepared(tmp_path_factory, 32)


@pytest.fixture(scope="session")
def prepared64(tmp_path_factory):
    """The same documents prepared at seq_len 64."""
    return _prepared(tmp_path_factory, 64)

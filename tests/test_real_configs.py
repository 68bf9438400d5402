"""Real-scale configs: each validates, builds its mesh and shardings, and lowers its train step on its
named slice's device count (simulated CPU devices, nothing allocated); their docstring estimates
are what rho_jax.estimate computes; a wrong device count fails with the mesh error."""

import ast
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rho_jax import config as config_lib
from rho_jax import estimate, sharding

REPO = Path(__file__).resolve().parents[1]
REAL_CONFIGS = ("tinyllama_owm_slm", "tinyllama_owm_reference", "mistral7b_owm_slm", "mistral7b_owm_reference",
                "general_631_slm")
TIMEOUT_S = 300


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Runs in a fresh process with N simulated devices: validate, mesh, param/state shardings, and the
# train step lowered (traced, not compiled) against abstract state and batch.
WORKER = textwrap.dedent(
    """
    import importlib.util, json, sys
    import jax, jax.numpy as jnp
    from rho_jax import config as config_lib, estimate, model, sharding, train

    out = []
    for path in sys.argv[1:]:
        spec_ = importlib.util.spec_from_file_location("cfg", path)
        mod = importlib.util.module_from_spec(spec_)
        spec_.loader.exec_module(mod)
        c = mod.get_config()
        config_lib.validate(c, jax.device_count())
        mesh = sharding.mesh_from_config(c.mesh)
        cfg = config_lib.model_config(c)
        rules = tuple(tuple(r) for r in c.mesh.rules)
        p_shape = model.param_shapes(cfg)
        p_sh = sharding.param_shardings(cfg, mesh, rules)
        step_spec = train.StepSpec.from_config(c, cfg, None)
        tx = train.make_optimizer(c.train)
        st_sh, _ = train.state_shardings(step_spec, tx, mesh, rules)
        state = train.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=p_shape,
                                 opt_state=jax.eval_shape(tx.init, p_shape),
                                 rng=jax.eval_shape(lambda: jax.random.PRNGKey(0)))

        def shard_bytes(x, sh):
            n = 1
            for d in sh.shard_shape(x.shape):
                n *= d
            return n * x.dtype.itemsize

        state_bytes = sum(jax.tree.leaves(jax.tree.map(shard_bytes, state, st_sh)))
        matrices = [(x.shape, sh.spec) for x, sh in zip(jax.tree.leaves(p_shape), jax.tree.leaves(p_sh))
                    if x.size >= 2**20]  # weights, not the [layers, d] norm scales
        B, L = c.train.batch_size, c.data.seq_len
        batch = {k: jax.ShapeDtypeStruct((B, L), jnp.float32 if k.startswith("ref") else jnp.int32)
                 for k in train.batch_keys(step_spec)}
        step = train.compile_train_step(step_spec, tx, mesh, rules)
        step.jitted.lower(state, batch)  # traces the whole step under these shardings
        out.append({
            "path": path, "devices": jax.device_count(), "mesh": dict(mesh.shape),
            "mesh_devices": int(mesh.devices.size), "state_bytes_per_device": state_bytes,
            "hbm_bytes": estimate.SLICES[mod.SLICE].hbm_bytes,
            "replicated_matrices": [str(s) for s, spec in matrices if all(a is None for a in spec)],
            "batch_rows_per_device": batch["tokens"].shape[0] // c.train.grad_accum
                                     // sharding.data_parallel_size(mesh),
        })
    print(json.dumps(out))
    """
)


def _run_worker(n_devices, names):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}",
               PYTHONPATH=str(REPO))
    paths = [str(REPO / "configs" / f"{n}.py") for n in names]
    proc = subprocess.run([sys.executable, "-c", WORKER, *paths], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"worker with {n_devices} devices failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _by_device_count():
    groups = {}
    for name in REAL_CONFIGS:
        groups.setdefault(estimate.SLICES[_load(name).SLICE].chips, []).append(name)
    return sorted(groups.items())


@pytest.mark.parametrize("n_devices,names", _by_device_count(), ids=lambda v: str(v))
def test_configs_build_on_their_slice(n_devices, names):
    for r in _run_worker(n_devices, names):
        assert r["devices"] == n_devices and r["mesh_devices"] == n_devices, r["path"]
        # FSDP shards every weight: none is fully replicated on every chip.
        assert r["replicated_matrices"] == [], r["path"]
        # f32 params + Adam state per chip leave most of HBM to activations.
        assert r["state_bytes_per_device"] < 0.25 * r["hbm_bytes"], r
        assert r["batch_rows_per_device"] >= 1, r


@pytest.mark.parametrize("name", REAL_CONFIGS)
def test_docstring_estimate_matches_computation(name):
    module = _load(name)
    reference = None
    if hasattr(module, "REFERENCE"):  # SLM: the whole pipeline counts the reference's training too
        ref_module = _load(module.REFERENCE)
        reference = estimate.estimate(ref_module.get_config(), ref_module.SLICE)
    expected = estimate.summary(module.get_config(), module.SLICE, reference=reference)
    assert " ".join(expected.split()) in " ".join(module.__doc__.split()), expected


@pytest.mark.parametrize("name", REAL_CONFIGS)
def test_paper_settings(name):
    c = _load(name).get_config()
    config_lib.validate(c)
    tokens_per_step = c.train.batch_size * c.data.seq_len
    assert tokens_per_step == 2**20  # 1M tokens per step
    paper = {  # the Rho-1 paper's runs: (mode, ratio, lr, processed tokens, seq_len, source)
        "tinyllama_owm_slm": ("slm", 0.6, 8e-5, 15e9, 2048, "openwebmath"),
        "tinyllama_owm_reference": ("clm", None, 5e-5, 1.5e9, 2048, "clean_math"),
        "mistral7b_owm_slm": ("slm", 0.7, 2e-5, 15e9, 4096, "openwebmath"),
        "mistral7b_owm_reference": ("clm", None, 1e-5, 1.5e9, 4096, "clean_math"),
        "general_631_slm": ("slm", 0.6, 1e-4, 80e9, 2048, "general_631"),
    }[name]
    mode, ratio, lr, tokens, seq_len, source = paper
    assert (c.objective.mode, c.train.lr, c.data.seq_len, c.data.source) == (mode, lr, seq_len, source)
    if ratio is not None:
        assert c.objective.ratio == ratio
    # the last step ends within one step of the token budget
    assert 0 <= tokens - c.train.steps * tokens_per_step < tokens_per_step


@pytest.mark.parametrize("name", REAL_CONFIGS)
def test_every_override_has_a_comment(name):
    source = (REPO / "configs" / f"{name}.py").read_text().splitlines()
    fn = next(n for n in ast.parse("\n".join(source)).body if isinstance(n, ast.FunctionDef) and n.name == "get_config")
    overrides = [s for s in fn.body if source[s.lineno - 1].strip().startswith("c.")]
    assert len(overrides) >= 10
    for stmt in overrides:
        text, above = source[stmt.lineno - 1], source[stmt.lineno - 2].strip()
        assert "#" in text or above.startswith("#"), f"configs/{name}.py:{stmt.lineno} has no comment: {text}"


def test_wrong_device_count_is_a_mesh_error():
    c = _load("tinyllama_owm_slm").get_config()  # fsdp=16, for a v4-32
    with pytest.raises(config_lib.ConfigError, match=r"config\.mesh: .*does not divide the 8 devices"):
        config_lib.validate(c, 8)
    with pytest.raises(sharding.MeshError, match="does not divide the 8 devices"):
        sharding.mesh_from_config(c.mesh)  # this test process has 8 simulated devices


def test_unknown_slice_names_the_known_ones():
    with pytest.raises(KeyError, match="v4-32"):
        estimate.estimate(_load("tinyllama_owm_slm").get_config(), "v9-1")


@pytest.mark.parametrize("name", REAL_CONFIGS)
def test_tpu_readme_table_matches_estimate(name):
    module = _load(name)
    e = estimate.estimate(module.get_config(), module.SLICE)
    row = next(line for line in (REPO / "tpu" / "README.md").read_text().splitlines()
               if line.startswith(f"| `{name}.py`"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[2] == f"{module.SLICE} ({e.chips})", row
    hours = f"{e.train_hours:.1f} h" + (f" + {e.score_hours:.1f} h scoring" if e.score_flops else "")
    assert cells[4] == hours, row

"""`rho-jax compile`: the run's programs compiled by XLA's TPU compiler (libtpu, the `tpu` extra) for small
TPU topologies on this CPU host. Per-chip memory shrinks as FSDP grows, the global top-k adds only the
all-gather of its sort keys, FLOPs counted over scanned layers match rho_jax.flops, and a program that does
not fit is one error line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rho_jax import aot, config as config_lib, estimate, flops

REPO = Path(__file__).resolve().parents[1]
RHO_JAX = str(Path(sys.executable).with_name("rho-jax"))


def tiny(**sections):
    """configs/tiny.py with `section={field: value}` overrides."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny", REPO / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    for section, fields in sections.items():
        c[section].update(fields)
    return c


def by_program(results):
    return {r.program.split(" ")[0]: r for r in results}


def all_gather_bytes(r) -> int:
    return r.collectives.get("all-gather", [0, 0])[1]


@pytest.mark.parametrize("mode", ["clm", "slm_cached", "slm_online"])
def test_console_script_compiles_each_mode_for_v5e(mode, tmp_path):
    objective = ["--config.objective.mode=clm"] if mode == "clm" else [
        "--config.objective.mode=slm", f"--config.objective.reference={mode.split('_')[1]}"]
    out = tmp_path / "r.json"
    p = subprocess.run([RHO_JAX, "compile", "--config=configs/tiny.py", "--topology=v5litepod-4", "--config.eval.every=5",
                        f"--json={out}", f"--hlo_dir={tmp_path / 'hlo'}", *objective],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip() == "", p.stderr  # libtpu's start-up lines are silenced on a host without TPU chips
    rows = [line for line in p.stdout.splitlines() if line.startswith("| ") and "v5litepod-4" in line]
    expected = {"clm": ["train_step (clm)", "eval forward"],
                "slm_cached": ["train_step (slm cached)", "score (rho-jax score)", "eval forward"],
                "slm_online": ["train_step (slm online)", "reference scorer (online)", "eval forward"]}[mode]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == expected
    results = json.loads(out.read_text())
    for r in results:
        assert r["chips"] == 4 and r["hbm_bytes"] == 16 * 2**30 and r["fits"]
        assert 0 < r["total_bytes"] < r["hbm_bytes"]
        assert abs(r["flops_per_token"] / r["expected_flops_per_token"] - 1) < 0.05, r
    assert len(list((tmp_path / "hlo").glob("*.hlo.txt"))) == len(expected)


def test_per_chip_memory_shrinks_as_fsdp_grows():
    # d_model 256 so that the weights and Adam state, which FSDP shards, outweigh the activations
    model = dict(d_model=256, d_ff=512, n_heads=4, n_kv_heads=2)
    total = {}
    for fsdp in (1, 2, 4):
        c = tiny(model=model, mesh=dict(data=-1, fsdp=fsdp), objective=dict(mode="clm"))
        total[fsdp] = by_program(aot.compile_config(c, "v4-8"))["train_step"].total_bytes
    assert total[1] > total[2] > total[4], total


def test_global_topk_adds_only_the_sort_keys_all_gather():
    """The exact global top-k sorts the whole batch on every chip: SPMD all-gathers the sort keys (at most
    four 32-bit values per position of the global batch) and nothing else beyond CLM's collectives."""
    for fsdp in (1, 4):
        mesh = dict(data=-1, fsdp=fsdp)
        clm = by_program(aot.compile_config(tiny(mesh=mesh, objective=dict(mode="clm")), "v5litepod-4"))["train_step"]
        slm = by_program(aot.compile_config(tiny(mesh=mesh), "v5litepod-4"))["train_step"]
        c = tiny()
        n_positions = c.train.batch_size * c.data.seq_len
        extra = all_gather_bytes(slm) - all_gather_bytes(clm)
        assert 0 < extra <= 16 * n_positions, (fsdp, clm.collectives, slm.collectives)
        for op in ("reduce-scatter", "all-to-all"):
            assert slm.collectives.get(op, [0])[0] == clm.collectives.get(op, [0])[0], (op, fsdp)


def test_scanned_layers_count_every_layer():
    """FLOPs and collectives of a scanned stack count a loop body times its trip count (XLA's own cost
    analysis counts the body once): the counted FLOPs equal XLA's for the same layers unrolled, and the
    collectives grow linearly with the number of scanned layers."""
    mesh = dict(data=1, fsdp=-1)  # FSDP: every layer all-gathers its weights
    step = {n: by_program(aot.compile_config(tiny(model=dict(n_layers=n), mesh=mesh), "v5litepod-4"))["train_step"]
            for n in (2, 4, 6)}
    unrolled = by_program(aot.compile_config(tiny(model=dict(n_layers=4, scan_layers=False), mesh=mesh),
                                             "v5litepod-4"))["train_step"]
    assert step[4].flops_per_token == pytest.approx(unrolled.flops_per_token, rel=1e-9)
    # no loop: XLA counts the same products (and elementwise work, a few percent at this tiny width)
    assert unrolled.flops_per_token == pytest.approx(unrolled.xla_flops_per_token, rel=0.1)
    assert step[4].xla_flops_per_token < 0.9 * unrolled.xla_flops_per_token  # XLA alone: one layer's worth
    gathers = {n: r.collectives["all-gather"] for n, r in step.items()}
    assert gathers[4][0] - gathers[2][0] == gathers[6][0] - gathers[4][0] > 0, gathers
    assert gathers[4][1] - gathers[2][1] == gathers[6][1] - gathers[4][1] > 0, gathers


def test_causal_query_blocks_are_counted_as_executed():
    """At 256 positions the plain XLA attention runs 4 causal query blocks, 62.5% of the score square; with query
    chunks of 64 rows it computes the whole square. Each program's traced FLOPs equal rho_jax.flops' count."""
    for overrides, share in ((dict(max_positions=256), 0.625), (dict(max_positions=256, attention_chunk=64), 1.0)):
        c = tiny(model=overrides, data=dict(seq_len=256))
        assert flops.executed_attention_share(config_lib.model_config(c), 256) == share
        for r in aot.compile_config(c, "v5litepod-4"):
            assert r.flops_ratio == pytest.approx(1.0, rel=1e-3), (overrides, r.program)


def test_a_program_that_does_not_fit_is_one_error_line():
    p = subprocess.run([RHO_JAX, "compile", "--config=configs/tiny.py", "--topology=v5litepod-4",
                        "--config.objective.mode=clm", "--config.train.batch_size=32768",
                        "--config.data.seq_len=128"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: train_step (clm) needs "), p.stderr
    assert "GiB per chip on v5litepod-4 but a chip has" in lines[0] and "remat" in lines[0]
    assert "does not fit" in p.stdout  # the table is printed first


def test_real_configs_name_slices_the_compiler_knows():
    import importlib.util

    from rho_jax import sharding

    named = 0
    for path in sorted((REPO / "configs").glob("*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if getattr(module, "SLICE", ""):
            _, s = aot.resolve_slice(module.SLICE)
            m = module.get_config().mesh
            sharding.mesh_shape(m.data, m.fsdp, m.tensor, s.chips)  # the config's mesh covers the slice
            named += 1
    assert named >= 5
    assert aot.resolve_slice("v5e:4x4")[1].chips == 16
    assert aot.resolve_slice("v5e:4x4")[1].hbm_bytes == estimate.SLICES["v5litepod-4"].hbm_bytes

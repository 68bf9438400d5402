"""`rho-jax compile`: every program a run executes, compiled ahead of time by XLA's TPU compiler for a
TPU slice, on any host. libtpu's compiler runs on a CPU machine, and `jax.experimental.topologies` gives the
slice's abstract devices; state, weights and batches are abstract arrays carrying the run's NamedShardings on
the run's mesh, so nothing is allocated or read.

Per program (the train step; the reference scorer that online SLM runs before each step, or the same scorer
as `rho-jax score` runs it over the prepared rows; the held-out evaluation's forward):
  memory       the compiler's buffer assignment per chip: arguments, temporaries, and the total
               (arguments + outputs + temporaries - donated aliases) against the chip's HBM
  FLOPs/token  counted over the traced program (`rho_jax.hlo.jaxpr_flops`): every dot_general, times the
               length of each scan around it (layers, query blocks, vocabulary chunks). XLA's own cost
               analysis counts a loop body once, so with scanned layers it reports about one layer's worth;
               it is kept as `xla_flops`
  expected     `rho_jax.flops.executed_step_flops_per_token` / `reference_flops_per_token` for the same
               program (model FLOPs + remat recompute, attention as the kernel computes it)
  collectives  all-gather, reduce-scatter, all-reduce, all-to-all and collective-permute in the optimized
               HLO (`rho_jax.hlo.hlo_collectives`): how many execute per call (a loop body's times its trip count) and the bytes of their
               results per chip
The reference model is taken to have the target's shape (as in every shipped config): nothing is read.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import time
from typing import Any

import jax
import jax.numpy as jnp

from rho_jax import config as config_lib
from rho_jax import estimate, flops, losses, model, quiet, score, sharding, train
from rho_jax.hlo import hlo_collectives, jaxpr_flops
from rho_jax.batch import INPUT_KEYS

GIB = 2**30


class CompileError(config_lib.ConfigError):
    """A program does not fit its chip, or the compiler is missing: one `error:` line, exit 2."""


@dataclasses.dataclass(frozen=True)
class Program:
    name: str  # as printed
    jitted: Any  # a jax.jit-wrapped function
    args: tuple  # ShapeDtypeStructs with shardings
    tokens: int  # token positions one call processes (global)
    expected_flops_per_token: float  # rho_jax.flops' executed count for this program


@dataclasses.dataclass(frozen=True)
class Result:
    program: str
    topology: str
    chips: int
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int
    hbm_bytes: int
    flops_per_token: float  # traced dot_generals x scan lengths, global / tokens
    expected_flops_per_token: float
    xla_flops_per_token: float  # XLA's cost analysis (loop bodies once), x chips / tokens
    collectives: dict  # op -> [count, bytes] per call and chip
    compile_s: float
    xla_seconds: float  # XLA's cost model's optimal time of one call; negative (no estimate) for loops

    @property
    def total_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.hbm_bytes

    @property
    def flops_ratio(self) -> float:
        return self.flops_per_token / self.expected_flops_per_token


# ----------------------------------------------------------------------------- the slice

def resolve_slice(name: str) -> tuple[str, estimate.Slice]:
    """A slice name of `estimate.SLICES` (v4-32, v5litepod-64, ...) or a libtpu topology name of a
    generation listed there (v5e:4x4, v4:2x2x2, ...) -> (label, Slice)."""
    if name in estimate.SLICES:
        return name, estimate.SLICES[name]
    gen, _, grid = name.partition(":")
    known = {s.topology.split(":")[0]: s for s in estimate.SLICES.values()}
    if gen not in known or not re.fullmatch(r"\d+(x\d+)+", grid):
        raise config_lib.ConfigError(
            f"unknown TPU topology {name!r}; use a slice name ({', '.join(estimate.SLICES)}) or a topology "
            f"GEN:AxB[xC] of generation {', '.join(sorted(known))}")
    like = known[gen]
    chips = math.prod(int(x) for x in grid.split("x"))
    return name, dataclasses.replace(like, chips=chips, hosts=0, topology=name)


def abstract_devices(s: estimate.Slice) -> list:
    """The slice's devices as libtpu describes them (no TPU needed); CompileError without libtpu."""
    quiet.quiet_libtpu()
    try:
        from jax.experimental import topologies

        with quiet.native_stderr_silenced():
            topo = topologies.get_topology_desc(platform="tpu", topology_name=s.topology,
                                                chip_config_name=s.chip_config)
    except Exception as e:  # noqa: BLE001 - no libtpu, or libtpu refuses the topology
        raise CompileError(f"cannot describe TPU topology {s.topology}: {' '.join(str(e).split())[:200]}; "
                           f"`rho-jax compile` needs libtpu, the `tpu` extra (pip install 'rho-jax[tpu]' or "
                           f"`pip install -r requirements/lock.txt`)") from None
    return list(topo.devices)


# ----------------------------------------------------------------------------- the programs

def _abstract(tree, shardings):
    return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), tree, shardings)


def _rows(n: int, seq_len: int, sh, keys=INPUT_KEYS) -> dict:
    return {k: jax.ShapeDtypeStruct((n, seq_len), jnp.float32 if k.startswith("ref") else jnp.int32, sharding=sh)
            for k in keys}


def mode_label(spec: train.StepSpec) -> str:
    if not spec.slm:
        return "clm"
    return f"slm {spec.ref.kind}" if spec.uses_ref or spec.cached else f"slm {spec.score}"


def run_programs(config, mesh, t_cfg: model.ModelConfig, r_cfg: model.ModelConfig) -> list[Program]:
    """Every program a run of `config` executes on `mesh`, with abstract arguments."""
    rules = config_lib.mesh_rules(config)
    spec = train.StepSpec.from_config(config, t_cfg, r_cfg)
    tx = train.make_optimizer(config.train)
    step = train.compile_train_step(spec, tx, mesh, rules)
    B, L = int(config.train.batch_size), int(config.data.seq_len)
    state = train.abstract_state(spec, tx, step.state_shardings)
    progs = [Program(f"train_step ({mode_label(spec)})", step.jitted,
                     (state, _rows(B, L, sharding.batch_sharding(mesh), tuple(step.batch_shardings))), B * L,
                     flops.executed_step_flops_per_token(spec, L))]
    if spec.online or spec.cached:
        # `rho-jax score` runs the scorer online SLM runs, on the training mesh and micro-batch shape
        scorer = score.reference_scorer(r_cfg, mesh, rules, spec.ce_chunk)
        micro = score.micro_batch_size(B, spec.grad_accum)
        ref = _abstract(model.param_shapes(r_cfg), scorer.param_shardings)
        progs.append(Program("score (rho-jax score)" if spec.cached else "reference scorer (online)", scorer.jitted,
                             (ref, _rows(micro, L, scorer.batch_sharding)), micro * L,
                             flops.reference_flops_per_token(r_cfg, L, flops.dense_attention(r_cfg))))
    if config.eval.every > 0:
        n = int(config.eval.batch_size)  # held-out rows are the same numpy batch on every host: replicated
        progs.append(Program("eval forward", losses.summed_ce_fn(t_cfg, spec.ce_chunk),
                             (state.params, _rows(n, L, sharding.replicated(mesh))), n * L,
                             flops.reference_flops_per_token(t_cfg, L, flops.dense_attention(t_cfg))))
    return progs


# ----------------------------------------------------------------------------- compile

_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_OOM = re.compile(r"required for .+? \(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)")


def _out_of_memory(p: Program, label: str, s: estimate.Slice, counted: float, message: str) -> Result:
    """The TPU compiler refuses a program whose temporaries exceed HBM: a Result that does not fit, with the
    compiler's own figures (needed temporaries, available HBM)."""
    m = _OOM.search(message)
    if not m:
        raise CompileError(f"XLA:TPU could not compile {p.name} for {label}: {' '.join(message.split())[:300]}")
    need, have = float(m.group(1)) * _UNITS[m.group(2)], float(m.group(3)) * _UNITS[m.group(4)]
    return Result(program=p.name, topology=label, chips=s.chips, argument_bytes=0, output_bytes=0,
                  temp_bytes=int(need), alias_bytes=0, hbm_bytes=int(have), flops_per_token=counted / p.tokens,
                  expected_flops_per_token=p.expected_flops_per_token, xla_flops_per_token=0.0, collectives={},
                  compile_s=0.0, xla_seconds=-1.0)


def compile_program(p: Program, label: str, s: estimate.Slice, mesh, hlo_dir: str = "") -> Result:
    t0 = time.time()
    with sharding.mesh_context(mesh):
        traced = p.jitted.trace(*p.args)
        counted = jaxpr_flops(traced.jaxpr.jaxpr)
        try:
            compiled = traced.lower().compile()
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            return _out_of_memory(p, label, s, counted, str(e))
    seconds = time.time() - t0
    mem, hlo = compiled.memory_analysis(), compiled.as_text()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if hlo_dir:
        os.makedirs(hlo_dir, exist_ok=True)
        slug = re.sub(r"[^\w]+", "_", f"{label}_{p.name}").strip("_")
        with open(os.path.join(hlo_dir, f"{slug}.hlo.txt"), "w") as f:
            f.write(hlo)
    return Result(program=p.name, topology=label, chips=s.chips, argument_bytes=int(mem.argument_size_in_bytes),
                  output_bytes=int(mem.output_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
                  alias_bytes=int(mem.alias_size_in_bytes), hbm_bytes=s.hbm_bytes,
                  flops_per_token=counted / p.tokens, expected_flops_per_token=p.expected_flops_per_token,
                  xla_flops_per_token=float(cost.get("flops", 0.0)) * s.chips / p.tokens,
                  collectives=hlo_collectives(hlo), compile_s=seconds,
                  xla_seconds=float(cost.get("optimal_seconds", -1.0)))


def compile_config(config, topology: str, hlo_dir: str = "") -> list[Result]:
    """Compiles every program of `config`'s run for `topology` (a slice or libtpu topology name)."""
    label, s = resolve_slice(topology)
    devices = abstract_devices(s)
    config_lib.validate(config, len(devices))
    mesh = sharding.mesh_from_config(config.mesh, devices)
    t_cfg = config_lib.model_config(config, platform="tpu")
    return [compile_program(p, label, s, mesh, hlo_dir) for p in run_programs(config, mesh, t_cfg, t_cfg)]


def check_fit(results: list[Result]) -> None:
    """CompileError naming the first program that does not fit its chips' HBM, and what to change."""
    for r in results:
        if not r.fits:
            raise CompileError(
                f"{r.program} needs {r.total_bytes / GIB:.2f} GiB per chip on {r.topology} but a chip has "
                f"{r.hbm_bytes / GIB:.2f} GiB; lower the rows per chip (train.batch_size, or raise "
                f"train.grad_accum), recompute more (model.remat='full', model.attention_chunk), or shard "
                f"over more chips (mesh.fsdp, a larger slice)")


# ----------------------------------------------------------------------------- report

def _size(n: float) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


HEADER = ("| program | topology | chips | arguments GiB | temporaries GiB | total GiB / HBM | GFLOP/token "
          "(compiled) | rho_jax.flops | ratio | collectives per call (count, bytes per chip) |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def row(r: Result) -> str:
    coll = "; ".join(f"{op} {c}x {_size(b)}" for op, (c, b) in sorted(r.collectives.items())) or "none"
    fit = "" if r.fits else " **does not fit**"
    return (f"| {r.program} | {r.topology} | {r.chips} | {r.argument_bytes / GIB:.2f} | {r.temp_bytes / GIB:.2f} | "
            f"{r.total_bytes / GIB:.2f} / {r.hbm_bytes / GIB:.4g}{fit} | {r.flops_per_token / 1e9:.4g} | "
            f"{r.expected_flops_per_token / 1e9:.4g} | {r.flops_ratio:.3f} | {coll} |")


def to_json(results: list[Result]) -> str:
    return json.dumps([{**dataclasses.asdict(r), "total_bytes": r.total_bytes, "fits": r.fits} for r in results],
                      indent=1)


def config_slice(config_file: str) -> str:
    """The SLICE a config file names (the real-scale configs do); a ConfigError without it."""
    path = config_file.split(":")[0]
    spec = importlib.util.spec_from_file_location("rho_jax_user_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not getattr(module, "SLICE", ""):
        raise config_lib.ConfigError(f"rho-jax compile: {path} names no SLICE; pass --topology=NAME (e.g. "
                                     f"v5litepod-4, v4-32, v5e:2x2)")
    return module.SLICE


def command(config, config_file: str, topology: str = "", hlo_dir: str = "", json_path: str = "") -> None:
    """`rho-jax compile`: prints one table row per program (then writes the JSON), and raises CompileError
    for the first program that does not fit."""
    results = compile_config(config, topology or config_slice(config_file), hlo_dir)
    print(HEADER)
    for r in results:
        print(row(r), flush=True)
    if json_path:
        with open(json_path, "w") as f:
            f.write(to_json(results))
    check_fit(results)


"""`rho-jax <command> [flags]`: prepare | train | score | eval | analyze | convert | bench | compile | demo.

One parser for every command: absl flags, with `--config=FILE` and `--config.a.b=v` overrides from
`ml_collections.config_flags` where a command takes a config. Each command gets a fresh flag set, so
the usage text printed by `rho-jax <command> --help` is exactly what that command accepts.

One error path: a problem the user can fix (unknown flag or config key, bad value, missing file,
incompatible checkpoint) prints a single `error: ...` line on stderr and exits 2, before anything is
written. `--debug` (or RHO_JAX_DEBUG=1) shows the traceback instead. Every path from a flag or a config
is made absolute against the directory the command was started in, once, here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rho_jax import paths, quiet

# Each command imports its own stack inside its cmd_* function, on purpose: quiet.py must set the
# environment before JAX (and TF) are first imported, `rho-jax <cmd> --help` stays instant, and a command
# never pulls in another's optional dependencies (Beam for prepare, torch for bench --peer).

CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # a source checkout's configs/

COMMANDS = {
    "prepare": "tokenise + pack config.data.source into ArrayRecord rows in config.data.prepared (Apache Beam; resumes)",
    "train": "train (CLM or SLM) from a config, resuming from the workdir's checkpoints",
    "score": "reference scores of the prepared rows, as score shards in config.data.score_cache (resumes)",
    "eval": "few-shot accuracy and held-out losses of a model",
    "analyze": "token categories, selected-token HTML and plots of a training or demo workdir",
    "convert": "HF dir / GGUF / Orbax model dir -> Orbax model dir (with its identity), or Orbax -> HF dir",
    "bench": "step time, tokens/s, MFU and peak memory of CLM, SLM and scoring (--peer: beside a PyTorch peer)",
    "compile": "every program of a run compiled by XLA's TPU compiler for a slice, on any host: memory, FLOPs, "
               "collectives",
    "demo": "the end-to-end Rho-1 demo (tokenizer, base, reference, scoring, CLM vs SLM, eval, report)",
}


class UsageError(Exception):
    """A command line the user can fix; printed as `error: ...`, exit 2."""


def _define_flags(cmd: str):
    """A fresh absl FlagValues holding exactly the flags of `cmd`."""
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FlagValues()
    flags.DEFINE_bool("debug", False, "show Python tracebacks instead of one-line errors (or RHO_JAX_DEBUG=1)",
                      flag_values=fv)
    if cmd in ("prepare", "train", "score", "bench", "compile", "demo"):
        config_flags.DEFINE_config_file("config", None, _CONFIG_HELP[cmd], flag_values=fv, lock_config=True)
    if cmd == "eval":
        flags.DEFINE_string("checkpoint", None, "Orbax model dir, training workdir (its final/), HF dir or .gguf",
                            flag_values=fv)
        flags.DEFINE_string("vocab", "", "tokenizer path ('' = the demo SentencePiece vocabulary)", flag_values=fv)
        flags.DEFINE_string("tasks", "gsm8k100", "comma list of gsm8k100, asdiv, heldout:<source>", flag_values=fv)
        flags.DEFINE_integer("limit", 0, "> 0: the first N items (rows for heldout)", lower_bound=0, flag_values=fv)
        flags.DEFINE_integer("shots", None, "few-shot examples (default: all in the prompt)", lower_bound=0,
                             flag_values=fv)
        flags.DEFINE_integer("max_new_tokens", 128, "greedy tokens per answer", lower_bound=1, flag_values=fv)
        flags.DEFINE_integer("batch_size", 8, "sequences per forward", lower_bound=1, flag_values=fv)
        flags.DEFINE_integer("seq_len", 256, "held-out row length when the checkpoint has no config.json",
                             lower_bound=2, flag_values=fv)
        flags.DEFINE_string("out", "", "also write the full results (with predictions) to this JSON file",
                            flag_values=fv)
    if cmd == "analyze":
        flags.DEFINE_string("workdir", None, "a training workdir, or a demo workdir of run subdirectories",
                            flag_values=fv)
        flags.DEFINE_string("vocab", "", "tokenizer path ('' = the run's config.data.vocab or the demo vocab)",
                            flag_values=fv)
        flags.DEFINE_string("reference", "", "reference model for the HTML ('' = the run's init.reference)",
                            flag_values=fv)
        flags.DEFINE_string("out", "", "output directory (default <workdir>/analysis)", flag_values=fv)
        flags.DEFINE_integer("rows", 16, "held-out rows for the categories", lower_bound=1, flag_values=fv)
        flags.DEFINE_integer("html_rows", 4, "training rows shown in the HTML", lower_bound=1, flag_values=fv)
        flags.DEFINE_integer("batch_size", 8, "sequences per forward", lower_bound=1, flag_values=fv)
    if cmd == "convert":
        flags.DEFINE_enum("to", "orbax", ["orbax", "hf"], "output format", flag_values=fv)
    if cmd == "bench":
        flags.DEFINE_bool("append", False, "append the table to BENCHMARKS.md (in the current directory)",
                          flag_values=fv)
        flags.DEFINE_list("modes", "clm,slm_cached,slm_online,score", "modes to time", flag_values=fv)
        flags.DEFINE_integer("iters", 5, "timed steps per mode", lower_bound=1, flag_values=fv)
        flags.DEFINE_integer("warmup", 2, "untimed steps per mode", lower_bound=0, flag_values=fv)
        flags.DEFINE_string("name", "", "a heading for the table", flag_values=fv)
        flags.DEFINE_bool("input", False, "also time the input pipeline (imports seqio/TF) against CLM consumption",
                          flag_values=fv)
        flags.DEFINE_bool("peer", False, "side by side with the PyTorch peer (HF Llama; needs the bench extra: torch, "
                          "transformers)", flag_values=fv)
        flags.DEFINE_bool("peer_compile", True, "with --peer: also time a torch.compile peer", flag_values=fv)
        flags.DEFINE_string("variants", "", "with --peer: extra rho-jax runners, e.g. 'unrolled:scan_layers=false' "
                            "(model field overrides, ';' between runners)", flag_values=fv)
    if cmd == "compile":
        flags.DEFINE_string("topology", "", "TPU slice (v4-32, v5litepod-64, v5p-128, v6e-64, ...) or libtpu topology "
                            "(v5e:2x2, v4:2x2x4, ...); default: the config file's SLICE", flag_values=fv)
        flags.DEFINE_string("hlo_dir", "", "also write each program's optimized HLO here", flag_values=fv)
        flags.DEFINE_string("json", "", "also write the results as JSON to this file", flag_values=fv)
    return fv


_CONFIG_HELP = {
    "prepare": "the config whose data.source / data.prepared are prepared, e.g. configs/tiny.py (required)",
    "train": "a ConfigDict file, e.g. configs/tiny.py (required)",
    "score": "the training config whose rows are scored, e.g. configs/demo.py's slm stage (required)",
    "bench": "a ConfigDict file (default configs/bench_tiny.py)",
    "compile": "the run's ConfigDict file, e.g. configs/tinyllama_owm_slm.py (required)",
    "demo": "the demo ConfigDict (default configs/demo.py)",
}
_DEFAULT_CONFIG = {"bench": CONFIGS / "bench_tiny.py", "demo": CONFIGS / "demo.py"}
_POSITIONAL = {"convert": "SRC DST"}


def usage() -> str:
    lines = ["usage: rho-jax <command> [flags]   (rho-jax <command> --help lists a command's flags)", "",
             "commands:"]
    lines += [f"  {name:<8} {text}" for name, text in COMMANDS.items()]
    lines += ["", "Config-driven commands (prepare, train, score, bench, compile, demo) take --config=FILE and --config.a.b=v overrides.",
              "Relative paths are relative to the directory the command is started in. --debug shows tracebacks."]
    return "\n".join(lines)


def command_usage(cmd: str, fv) -> str:
    pos = f" {_POSITIONAL[cmd]}" if cmd in _POSITIONAL else ""
    cfg = " [--config.a.b=v ...]" if "config" in fv else ""
    return f"usage: rho-jax {cmd}{pos} [flags]{cfg}\n{COMMANDS[cmd]}\n\nflags:\n{fv.get_help(include_special_flags=False)}"


def _parse(cmd: str, args: list[str]):
    """(FlagValues, positional args) for `rho-jax cmd args...`; UsageError for anything not accepted."""
    from absl import flags

    fv = _define_flags(cmd)
    if cmd in _DEFAULT_CONFIG and not any(a == "--config" or a.startswith("--config=") for a in args):
        args = [f"--config={_DEFAULT_CONFIG[cmd]}"] + args
    if "--config" in args:
        raise UsageError(f"rho-jax {cmd}: write --config=FILE (with '='), e.g. --config=configs/tiny.py")
    from rho_jax.config import check_moved_overrides
    check_moved_overrides(args)  # a key that moved names its new one (absl would call it unknown)
    try:
        rest = fv([f"rho-jax {cmd}"] + args)[1:]
    except flags.Error as e:
        raise UsageError(f"rho-jax {cmd}: {_one_line(e)}; see `rho-jax {cmd} --help`") from None
    except (AttributeError, KeyError) as e:  # ml_collections: an override names a key the config lacks
        key = str(e.args[0] if e.args else e).strip("'\"")
        raise UsageError(f"rho-jax {cmd}: unknown config key {key!r} in the --config.* overrides; use a field of "
                         f"the config file (training configs: rho_jax/config.py:base_config)") from None
    for name in ("config", "checkpoint", "workdir"):
        if name in fv and fv[name].value is None:
            raise UsageError(f"rho-jax {cmd}: --{name} is required; see `rho-jax {cmd} --help`")
    if "config" in fv:
        try:  # ml_collections defers a config file's load error to the first use: surface it here
            fv.config.keys()
        except Exception as e:  # noqa: BLE001 - any failure to load the user's file is a usage error
            name = fv["config"].config_filename
            path = name.split(":")[0]  # config_flags allows FILE:arg
            why = (f"no such file (relative to {os.getcwd()})" if not os.path.exists(path)
                   else _one_line(e.__cause__ or e))
            raise UsageError(f"rho-jax {cmd}: cannot load --config={name}: {why}") from None
    n_pos = len(_POSITIONAL.get(cmd, "").split())
    if len(rest) != n_pos:
        want = f"exactly {_POSITIONAL[cmd]}" if n_pos else "no positional arguments"
        raise UsageError(f"rho-jax {cmd} takes {want}, got {rest}; see `rho-jax {cmd} --help`")
    return fv, rest


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _user_errors() -> tuple:
    """Exceptions that name a problem the user can fix: printed as one line, not a traceback."""
    from rho_jax.checkpoint import CheckpointError
    from rho_jax.config import ConfigError
    from rho_jax.sharding import MeshError

    errors = [UsageError, ConfigError, CheckpointError, MeshError, FileNotFoundError, FileExistsError, NotADirectoryError,
              IsADirectoryError, PermissionError]
    for module, name in (("rho_jax.interop.hf", "CheckpointError"),
                         ("rho_jax.data.documents", "CorpusError")):
        if module in sys.modules and hasattr(sys.modules[module], name):  # only where that layer ran
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename and e.strerror:
        return f"{e.strerror}: {e.filename}"
    return _one_line(e)


# ----------------------------------------------------------------------------- commands

def _resolved_config(fv):
    return paths.resolve_paths(fv.config)


def cmd_train(fv, _):
    from rho_jax import loop

    row = loop.run(_resolved_config(fv))
    print({k: row[k] for k in ("step", "loss") if k in row})


def cmd_prepare(fv, _):
    from rho_jax.data import prepare

    config = _resolved_config(fv)
    result = prepare.run(config)
    for name, m in result["components"]:
        t = m["totals"]
        print(f"prepared {name or m['input']}: {t['rows']} rows of {m['seq_len']} in {len(m['shards'])} shards, "
              f"{t['documents']} documents, {t['tokens']} tokens, skipped {t['skipped']}")
    print(f"{result['written']} shards written, {result['done_before']} already done -> {config.data.prepared}")


def cmd_score(fv, _):
    from rho_jax import score_job

    for m in score_job.run(_resolved_config(fv)):
        print(f"scores complete: {m['rows']} rows in {len(m['shards'])} shards of {m['prepared']} "
              f"(reference {m['ref_identity'][:28]})")


def cmd_eval(fv, _):
    from rho_jax import evaluate

    return evaluate.command(checkpoint=paths.resolve_path(fv.checkpoint), vocab=paths.resolve_path(fv.vocab), tasks=fv.tasks,
                            limit=fv.limit, shots=fv.shots, max_new_tokens=fv.max_new_tokens,
                            batch_size=fv.batch_size, seq_len=fv.seq_len, out=paths.resolve_path(fv.out))


def cmd_analyze(fv, _):
    from rho_jax import analysis

    return analysis.command(workdir=paths.resolve_path(fv.workdir), vocab=paths.resolve_path(fv.vocab),
                            reference=paths.resolve_path(fv.reference), out=paths.resolve_path(fv.out), rows=fv.rows,
                            html_rows=fv.html_rows, batch_size=fv.batch_size)


def cmd_convert(fv, rest):
    from rho_jax.convert import convert

    convert(paths.resolve_path(rest[0]), paths.resolve_path(rest[1]), fv.to)


def cmd_bench(fv, _):
    from rho_jax import bench

    unknown = sorted(set(fv.modes) - set(bench.MODES))
    if unknown:
        raise UsageError(f"rho-jax bench: --modes has {unknown}; choose from {list(bench.MODES)}")
    config = _resolved_config(fv)
    if fv.peer:
        from rho_jax import sidebyside  # imports torch: only here

        modes = tuple(m for m in fv.modes if m in sidebyside.PEER_MODES)
        rows = sidebyside.run(config, modes, fv.warmup, fv.iters, fv.peer_compile,
                              variants=sidebyside.parse_variants(fv.variants))
        text = sidebyside.table(config, rows, fv.name or "rho-jax vs PyTorch peer", fv.iters)
    else:
        rows = bench.run(config, tuple(fv.modes), fv.warmup, fv.iters)
        text = bench.table(config, rows, fv.name or "rho-jax bench", fv.iters)
        if fv.input:
            text += bench.input_table(config, rows)
    print(text)
    if fv.append:
        with open("BENCHMARKS.md", "a") as out:
            out.write("\n" + text)


def cmd_compile(fv, _):
    from rho_jax import aot

    aot.command(_resolved_config(fv), fv["config"].config_filename, fv.topology, paths.resolve_path(fv.hlo_dir),
                paths.resolve_path(fv.json))


def cmd_demo(fv, _):
    from rho_jax import demo

    demo.run(_resolved_config(fv))


HANDLERS = {"prepare": cmd_prepare, "train": cmd_train, "score": cmd_score, "eval": cmd_eval, "analyze": cmd_analyze,
            "convert": cmd_convert, "bench": cmd_bench, "compile": cmd_compile, "demo": cmd_demo}


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage())
        return 0
    cmd, args = argv[1], argv[2:]
    if cmd not in COMMANDS:
        print(f"error: unknown command {cmd!r}; choose one of {', '.join(COMMANDS)} (see `rho-jax --help`)",
              file=sys.stderr)
        return 2
    debug = "--debug" in args or os.environ.get("RHO_JAX_DEBUG", "") not in ("", "0")
    quiet.quiet_start(debug)
    if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in args):
        print(command_usage(cmd, _define_flags(cmd)))
        return 0
    try:
        fv, rest = _parse(cmd, args)
        from rho_jax.distributed import maybe_initialize

        maybe_initialize()  # multi-host slices join one job before any other JAX call; a no-op on one host
        return HANDLERS[cmd](fv, rest) or 0
    except Exception as e:  # noqa: BLE001 - re-raised below unless it is a user error
        if debug or not isinstance(e, _user_errors()):
            raise
        print(f"error: {_describe(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

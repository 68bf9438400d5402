"""`rho-jax <command>`: train | score | eval | analyze | convert | bench | demo.

Config-driven commands take `--config=configs/<name>.py` and `--config.a.b=v` overrides
(absl flags + `ml_collections.config_flags`).
"""

from __future__ import annotations

import sys

COMMANDS = ("train", "score", "eval", "analyze", "convert", "bench", "demo")
USAGE = """usage: rho-jax <command> [flags]

commands:
  train    --config=configs/<name>.py [--config.x.y=v ...]   train (CLM or SLM), resuming if possible
  score    --config=... [--config.data.score_cache=DIR]      offline reference scoring into the score cache
  eval     --config=... --checkpoint=DIR                      held-out loss and few-shot accuracy
  analyze  --workdir=DIR                                      token categories, selected-token HTML, plots
  convert  SRC DST [--to=orbax|hf]                            HF dir / GGUF -> Orbax, or Orbax -> HF
  bench    [--config=configs/bench_tiny.py] [--append]        step time, tokens/s, MFU, peak memory
           [--peer]                                           ... side by side with the PyTorch peer
  demo     [--config=configs/demo.py]                         the end-to-end Rho-1 demo
"""


class UsageError(Exception):
    pass


def _parse(argv):
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except AttributeError as e:  # ml_collections: an override names a key the config does not have
        raise UsageError(f"unknown config key in the overrides: {e}; see rho_jax/config.py:base_config") from None
    except flags.Error as e:
        raise UsageError(str(e)) from None


def _user_errors() -> tuple:
    """Errors that name a problem the user can fix: printed as one line, not a traceback."""
    from rho_jax.checkpoint import CheckpointError
    from rho_jax.config import ConfigError

    errors = [ConfigError, CheckpointError, FileNotFoundError, FileExistsError]
    if "rho_jax.data.scored" in sys.modules:  # only loaded where the data layer ran
        errors.append(sys.modules["rho_jax.data.scored"].CacheError)
    return tuple(errors)


def _absl_main(argv, body):
    """Runs `body(args)` under absl; a config or input problem prints one line and exits 2."""
    from absl import app, flags

    flags.FLAGS.unparse_flags()

    def guarded(args):
        try:
            return body(args)
        except _user_errors() as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    try:
        app.run(guarded, argv=argv, flags_parser=_parse)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _config_flag(default: str | None = None):
    from absl import flags
    from ml_collections import config_flags

    if "config" not in flags.FLAGS:
        config_flags.DEFINE_config_file("config", default, "a ConfigDict file in configs/", lock_config=True)


def cmd_train(argv):
    from absl import flags

    _config_flag()

    def body(_):
        import os

        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from rho_jax import loop

        row = loop.run(flags.FLAGS.config)
        print({k: row[k] for k in ("step", "loss") if k in row})

    _absl_main(argv, body)


def cmd_bench(argv):
    from absl import flags

    _config_flag("configs/bench_tiny.py")
    flags.DEFINE_bool("append", False, "append the table to BENCHMARKS.md")
    flags.DEFINE_string("modes", "clm,slm_cached,slm_online,score", "comma-separated modes")
    flags.DEFINE_integer("iters", 5, "timed steps per mode")
    flags.DEFINE_integer("warmup", 2, "untimed steps per mode")
    flags.DEFINE_string("name", "", "a heading for the table")
    flags.DEFINE_bool("input", False, "also time the input pipeline (imports seqio/TF) against CLM consumption")
    flags.DEFINE_bool("peer", False, "side by side with the PyTorch peer (HF Llama; needs torch + transformers)")
    flags.DEFINE_bool("peer_compile", True, "with --peer: also time a torch.compile peer")
    flags.DEFINE_string("variants", "", "with --peer: extra rho-jax runners, e.g. 'unrolled:scan_layers=false;"
                        "scan:scan_layers=true' (model field overrides)")

    def body(_):
        from rho_jax import bench

        f = flags.FLAGS
        if f.peer:
            from rho_jax import sidebyside

            modes = tuple(m for m in f.modes.split(",") if m in sidebyside.PEER_MODES)
            rows = sidebyside.run(f.config, modes, f.warmup, f.iters, f.peer_compile,
                                  variants=sidebyside.parse_variants(f.variants))
            text = sidebyside.table(f.config, rows, f.name or "rho-jax vs PyTorch peer", f.iters)
            print(text)
            if f.append:
                with open("BENCHMARKS.md", "a") as out:
                    out.write("\n" + text)
            return
        rows = bench.run(f.config, tuple(f.modes.split(",")), f.warmup, f.iters)
        text = bench.table(f.config, rows, f.name or "rho-jax bench", f.iters)
        if f.input:
            text += bench.input_table(f.config, rows)
        print(text)
        if f.append:
            with open("BENCHMARKS.md", "a") as out:
                out.write("\n" + text)

    _absl_main(argv, body)


def cmd_convert(argv):
    from absl import flags

    flags.DEFINE_enum("to", "orbax", ["orbax", "hf"], "output format")

    def body(args):
        if len(args) != 3:
            raise SystemExit("usage: rho-jax convert SRC DST [--to=orbax|hf]")
        from rho_jax.convert import convert

        convert(args[1], args[2], flags.FLAGS.to)

    _absl_main(argv, body)


def _delegate(module: str, argv):
    import importlib

    mod = importlib.import_module(module)
    return mod.main(argv)


def main(argv=None):
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd = argv[1]
    if cmd not in COMMANDS:
        print(f"unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    sub = [f"rho-jax {cmd}"] + argv[2:]
    from rho_jax.distributed import maybe_initialize

    maybe_initialize()  # multi-host slices join one job before any other JAX call; a no-op on one host
    if cmd == "train":
        return cmd_train(sub)
    if cmd == "bench":
        return cmd_bench(sub)
    if cmd == "convert":
        return cmd_convert(sub)
    modules = {"score": "rho_jax.data.score_job", "eval": "rho_jax.evaluate", "analyze": "rho_jax.analysis",
               "demo": "rho_jax.demo"}
    return _delegate(modules[cmd], sub)


if __name__ == "__main__":
    sys.exit(main())

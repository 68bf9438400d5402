"""The training loop's overhead: `loop.run`'s tokens/s over `rho-jax bench`'s for the same config and mode.

  python scripts/loop_overhead.py configs/bench_demo.py [--steps 30] [--rounds 3] [--modes clm,slm_cached]

Each round runs the real loop (`loop.run`: counters, NaN policy, metrics file, one log row at the end; no
checkpoints or eval, which are boundaries the loop syncs at by design) for `steps` steps on random host batches
drawn fresh each step, then `steps` steps of `bench.build_mode`'s step, alternating, so load hits both alike.
The loop's rate is its last row's tokens_per_s (first batch to last metrics read); bench's is the median step.
Prints one line per round and mode, and the medians.
"""
import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from rho_jax import bench, loop  # noqa: E402


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


class RandomBatches:
    """Fresh random rows each step (host work like a reader's), with the loop's `get_state` contract."""

    def __init__(self, config, state=None):
        self.config, self.n = config, (state or {}).get("n", 0)
        self.rng = np.random.default_rng(self.n)

    def __next__(self):
        self.n += 1
        c = self.config
        return bench.random_batch(self.rng, c.train.batch_size, c.data.seq_len, c.model.vocab_size, docs_per_row=2)

    def get_state(self):
        return {"n": self.n}


def mode_config(config, mode: str, steps: int, workdir: str):
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.objective.mode = "clm" if mode == "clm" else "slm"
        c.objective.reference = "cached"
        c.train.update(steps=steps, log_every=steps, warmup_steps=1)
        c.checkpoint.every = 0
        c.eval.every = 0
        c.workdir = workdir
    return c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline_loop", default="", help="another loop.py (e.g. `git show REV:rho_jax/loop.py > "
                    "/tmp/old_loop.py`) run alternately too, for a before/after")
    ap.add_argument("--modes", default="clm")  # slm_cached needs a real reference dir (config.init.reference)
    a = ap.parse_args()
    config = load_config(a.config)
    tmp = tempfile.mkdtemp(prefix="loop_overhead_")
    modes = a.modes.split(",")
    loops = {"loop": loop}
    if a.baseline_loop:
        spec = importlib.util.spec_from_file_location("baseline_loop", a.baseline_loop)
        loops["baseline loop"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loops["baseline loop"])
    trainers = {m: loop.Trainer(mode_config(config, m, a.steps, tmp)) for m in modes}
    steps_fn = {m: bench.build_mode(mode_config(config, m, a.steps, tmp), m)[0] for m in modes}
    tokens = config.train.batch_size * config.data.seq_len
    ratios = {(m, name): [] for m in modes for name in loops}
    for r in range(a.rounds + 1):  # round 0 compiles and warms up
        for mode in modes:
            tok_s = {}
            for name, module in (reversed if r % 2 else iter)(list(loops.items())):  # alternate the order
                c = mode_config(config, mode, a.steps, os.path.join(tmp, f"{mode}{r}{name.replace(' ', '_')}"))
                tok_s[name] = module.run(c, make_input=RandomBatches, trainer=trainers[mode])["tokens_per_s"]
            ts = []
            for _ in range(a.steps):
                t0 = time.perf_counter()
                steps_fn[mode]()
                ts.append(time.perf_counter() - t0)
            bench_tok_s = tokens / statistics.median(ts)
            for name, v in tok_s.items():
                if r:
                    ratios[(mode, name)].append(v / bench_tok_s)
                print(f"round {r} {mode}: {name} {v:,.0f} tok/s, bench {bench_tok_s:,.0f} tok/s (median step; "
                      f"mean step {tokens * len(ts) / sum(ts):,.0f}), ratio {v / bench_tok_s:.3f}"
                      f"{'' if r else ' (warm-up)'}; load {os.getloadavg()[0]:.2f}", flush=True)
    for (mode, name), rs in ratios.items():
        print(f"{mode} {name}: median of {a.rounds} rounds, tok/s over bench's = {statistics.median(rs):.3f} "
              f"({min(rs):.3f}-{max(rs):.3f})")


if __name__ == "__main__":
    main()

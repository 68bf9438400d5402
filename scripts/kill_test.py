"""kill -9 a real `rho-jax train` at random points, restart it, and check that it finishes with
final params bit-identical to an uninterrupted run of the same config (CPU, 1 device).

    .venv/bin/python scripts/kill_test.py [--trials 20] [--steps 12] [--workdir DIR] [--seed 0]

Each trial starts a fresh run, waits until checkpoint step t (random) is being written (kill during
the asynchronous save) or has been written (kill after a random delay of up to 0.3 s), sends SIGKILL,
restarts the same command and lets it finish. The run is online-reference SLM (top-k selection,
reference forward), so every state piece must round-trip: step, params, opt_state, rng, input position.
The helpers live in tests/processes.py (the resume tests use them too).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import processes as kt  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="/tmp/rho_jax_kill_test")
    args = ap.parse_args(argv)
    root = Path(args.workdir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rng = random.Random(args.seed)
    env = kt.cli_env(1, root / "jax_cache")
    reference = kt.make_reference_model(root / "reference_model")
    prepared = kt.make_prepared(root / "prepared")
    t0 = time.perf_counter()
    res = kt.run(kt.train_overrides(root / "uninterrupted", reference, prepared, args.steps), env,
                 root / "uninterrupted.log")
    if res.returncode != 0:
        print(res.stdout[-3000:])
        raise SystemExit(f"the uninterrupted run failed (rc={res.returncode})")
    expected = kt.final_params(root / "uninterrupted")
    results = []
    for i in range(args.trials):
        wd, log = root / f"trial{i:02d}", root / f"trial{i:02d}.log"
        step, during = rng.randint(1, args.steps - 1), rng.random() < 0.5
        proc = kt.start(kt.train_overrides(wd, reference, prepared, args.steps), env, log)
        how = kt.kill_at(proc, wd / "checkpoints", step, during, rng)
        res = kt.run(kt.train_overrides(wd, reference, prepared, args.steps), env, log)
        same = res.returncode == 0 and kt.bit_identical(kt.final_params(wd), expected)
        results.append({"trial": i, "kill_step": step, "how": how, "resumed_from": kt.resumed_from(res.stdout),
                        "rc": res.returncode, "bit_identical": same})
        print(json.dumps(results[-1]), flush=True)
    n_ok = sum(r["bit_identical"] for r in results)
    print(f"{n_ok}/{len(results)} trials finished bit-identical to the uninterrupted run "
          f"({time.perf_counter() - t0:.0f} s)")
    return 0 if n_ok == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())

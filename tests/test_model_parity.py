"""Our model reproduces transformers' Llama/Mistral logits from the same checkpoint, and packing is exact."""

import jax
import numpy as np
import pytest
import torch
import transformers

from rho_jax.interop import load_pretrained
from rho_jax.model import ModelConfig, causal_query_blocks, forward, param_shapes

forward = jax.jit(forward, static_argnums=0)  # one compile per shape beats op-by-op tracing

TOL = 1e-4
SEQ = 16
TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6)


def hf_model(kind="llama", seed=0, **overrides):
    """A random HF model with O(1) logits: HF's default 0.02 init would make every comparison trivially close."""
    config_cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig}[kind]
    model_cls = {"llama": transformers.LlamaForCausalLM, "mistral": transformers.MistralForCausalLM}[kind]
    config = config_cls(**{**TINY, **overrides})
    torch.manual_seed(seed)
    model = model_cls(config).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15)
    return model


def hf_logits(model, tokens, attention_mask=None):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens), attention_mask=None if attention_mask is None
                    else torch.tensor(attention_mask))
    return out.logits.numpy()


def roundtrip(model, tmp_path):
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    return load_pretrained(tmp_path / "hf")


def random_params(cfg, seed=0):
    """Random f32 params of O(1) scale, drawn in numpy (cheaper on CPU than compiling `init_params`)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, s: (1.0 + 0.2 * rng.standard_normal(s.shape) if "norm" in jax.tree_util.keystr(path)
                         else 0.15 * rng.standard_normal(s.shape)).astype(np.float32), param_shapes(cfg))


def random_tokens(batch, length, seed=1):
    return np.random.default_rng(seed).integers(0, TINY["vocab_size"], (batch, length)).astype(np.int32)


@pytest.mark.parametrize("kind,overrides,expect", [
    ("llama", {}, {"n_heads": 4, "n_kv_heads": 2, "arch": "llama"}),
    ("llama", {"tie_word_embeddings": True}, {"tie_embeddings": True}),
    ("llama", {"rope_theta": 123456.0}, {"rope_theta": 123456.0}),
    ("mistral", {"sliding_window": None}, {"arch": "mistral", "sliding_window": 0}),
], ids=["llama_gqa", "tied", "rope_theta", "mistral_full"])
def test_logits_match_transformers(tmp_path, kind, overrides, expect):
    model = hf_model(kind, **overrides)
    cfg, params = roundtrip(model, tmp_path)
    for field, value in expect.items():
        assert getattr(cfg, field) == value, field
    if cfg.tie_embeddings:
        assert "lm_head" not in params
    tokens = random_tokens(2, SEQ)
    ours = np.asarray(forward(cfg, params, tokens))
    np.testing.assert_allclose(ours, hf_logits(model, tokens), atol=TOL, rtol=0)


def test_rows_longer_than_a_causal_block_match_transformers(tmp_path):
    """160 positions: the attention runs as two causal query blocks (model.causal_query_blocks)."""
    model = hf_model("llama", max_position_embeddings=256)
    cfg, params = roundtrip(model, tmp_path)
    assert len(causal_query_blocks(160)) == 2
    tokens = random_tokens(2, 160)
    np.testing.assert_allclose(np.asarray(forward(cfg, params, tokens)), hf_logits(model, tokens), atol=TOL, rtol=0)


def test_mistral_sliding_window_matches_transformers(tmp_path):
    window = 5
    model = hf_model("mistral", sliding_window=window, attn_implementation="eager")
    cfg, params = roundtrip(model, tmp_path)
    assert cfg.sliding_window == window
    tokens = random_tokens(2, SEQ)
    reference = hf_logits(model, tokens)
    np.testing.assert_allclose(np.asarray(forward(cfg, params, tokens)), reference, atol=TOL, rtol=0)
    # The comparison means something only if HF really restricts attention to the window.
    full = hf_model("mistral", sliding_window=None, attn_implementation="eager")
    full_logits = hf_logits(full, tokens)
    assert np.abs(full_logits[:, :window] - reference[:, :window]).max() < TOL
    assert np.abs(full_logits[:, window:] - reference[:, window:]).max() > 100 * TOL


def test_right_padded_batch_matches_transformers(tmp_path):
    model = hf_model("llama")
    cfg, params = roundtrip(model, tmp_path)
    tokens = random_tokens(3, SEQ)
    lengths = [SEQ, 9, 4]
    mask = (np.arange(SEQ)[None] < np.array(lengths)[:, None]).astype(np.int32)
    tokens = np.where(mask == 1, tokens, 0)
    ours = np.asarray(forward(cfg, params, tokens, segment_ids=mask))
    theirs = hf_logits(model, tokens, mask)
    for row, n in enumerate(lengths):
        np.testing.assert_allclose(ours[row, :n], theirs[row, :n], atol=TOL, rtol=0)


def test_packed_row_equals_documents_run_alone():
    cfg = ModelConfig(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=160)
    params = random_params(cfg)
    lengths = [5, 8, 3]
    docs = [random_tokens(1, n, seed=i)[0] for i, n in enumerate(lengths)]
    pad = 4
    tokens = np.concatenate(docs + [np.zeros(pad, np.int32)])[None]
    segments = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)] + [np.zeros(pad)])[None]
    positions = np.concatenate([np.arange(n) for n in lengths] + [np.zeros(pad)])[None]
    packed = np.asarray(forward(cfg, params, tokens, positions.astype(np.int32), segments.astype(np.int32)))
    # Each document alone, trailing-padded to one common length (padding cannot affect a causal prefix).
    width = max(lengths)
    alone = np.zeros((len(docs), width), np.int32)
    for i, doc in enumerate(docs):
        alone[i, :len(doc)] = doc
    alone_segments = (np.arange(width)[None] < np.array(lengths)[:, None]).astype(np.int32)
    alone_logits = np.asarray(forward(cfg, params, alone, None, alone_segments))
    start = 0
    for i, doc in enumerate(docs):
        np.testing.assert_allclose(packed[0, start:start + len(doc)], alone_logits[i, :len(doc)], atol=1e-5, rtol=0)
        start += len(doc)

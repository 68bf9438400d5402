"""GGUF (llama.cpp) Llama-architecture files -> our `ModelConfig` and f32 parameter tree.

Tensors are dequantised with the `gguf` package, renamed to their HF names and then converted by the
same code as HF checkpoints (`hf.params_from_hf`). Two GGUF conventions matter:
  * `GGUFReader` exposes each tensor in numpy order, i.e. HF's [out, in]; `tensor.shape` lists the
    GGML dimensions (ne0 first), so the numpy shape is `tensor.shape` reversed.
  * llama.cpp permutes the rows of Q and K for its interleaved RoPE; we undo it for HF rotate_half.
"""

from __future__ import annotations

import re

import numpy as np

from rho_jax.interop.hf import CheckpointError, check_tensors, params_from_hf
from rho_jax.model import ModelConfig, Params

# The types whose dequantisation `gguf.quants` implements and that llama.cpp files commonly use.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K",
                   "Q5_K", "Q6_K")
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
_LAYER_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.weight")


def field(reader, key: str, default=None):
    """A GGUF metadata value as a Python scalar/str/list, or `default` when absent."""
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def hf_name(gguf_name: str) -> str:
    """llama.cpp tensor name -> HF name; raises CheckpointError for tensors we have no place for."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _LAYER_RE.fullmatch(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"
    raise CheckpointError(f"GGUF tensor {gguf_name!r} is not part of a plain Llama model (biases, rope_freqs "
                          f"and other extras are unsupported)")


def config_from_gguf(reader) -> ModelConfig:
    arch = field(reader, "general.architecture")
    if arch != "llama":  # Mistral-7B GGUFs also declare "llama"
        raise CheckpointError(f"unsupported GGUF architecture {arch!r}; only 'llama' is supported")
    scaling = field(reader, "llama.rope.scaling.type", "none")
    if scaling != "none":
        raise CheckpointError(f"GGUF field llama.rope.scaling.type={scaling!r} is not supported (only plain RoPE)")
    names = {t.name for t in reader.tensors}
    n_heads = int(field(reader, "llama.attention.head_count"))
    vocab = field(reader, "llama.vocab_size") or len(field(reader, "tokenizer.ggml.tokens", []))
    return ModelConfig(
        vocab_size=int(vocab),
        d_model=int(field(reader, "llama.embedding_length")),
        n_layers=int(field(reader, "llama.block_count")),
        n_heads=n_heads,
        n_kv_heads=int(field(reader, "llama.attention.head_count_kv", n_heads)),
        d_ff=int(field(reader, "llama.feed_forward_length")),
        head_dim=int(field(reader, "llama.attention.key_length", field(reader, "llama.rope.dimension_count", 0))),
        rope_theta=float(field(reader, "llama.rope.freq_base", 10000.0)),
        rms_eps=float(field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        max_positions=int(field(reader, "llama.context_length", 2048)),
        tie_embeddings="output.weight" not in names,
        arch="llama",
    )


def _unpermute(w_RxD: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved RoPE pairs -> HF rotate_half halves)."""
    r, d = w_RxD.shape
    return w_RxD.reshape(heads, r // heads // 2, 2, d).swapaxes(1, 2).reshape(r, d)


def open_gguf(source):
    """A `gguf.GGUFReader` for a path (parsing the metadata takes seconds: pass readers around)."""
    import gguf

    if isinstance(source, gguf.GGUFReader):
        return source
    try:
        return gguf.GGUFReader(str(source))
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{source} is not a readable GGUF file: {e}") from None


def load_gguf(source) -> tuple[ModelConfig, Params]:
    """Reads a Llama GGUF file (a path or an open `gguf.GGUFReader`); every tensor is dequantised to f32."""
    import gguf

    reader = open_gguf(source)
    path = getattr(reader.data, "filename", source)  # the memmap knows its file
    cfg = config_from_gguf(reader)
    tensors, shapes = {}, {}
    for t in reader.tensors:
        if t.tensor_type.name not in SUPPORTED_TYPES:
            raise CheckpointError(f"GGUF tensor {t.name!r} has quantisation {t.tensor_type.name}, which is not "
                                  f"supported; supported: {', '.join(SUPPORTED_TYPES)}")
        name = hf_name(t.name)
        tensors[name] = t
        shapes[name] = tuple(int(x) for x in reversed(t.shape.tolist()))
    check_tensors(cfg, shapes, str(path))

    def load(name):
        t = tensors[name]
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32).reshape(shapes[name])
        if name.endswith("q_proj.weight"):
            w = _unpermute(w, cfg.n_heads)
        elif name.endswith("k_proj.weight"):
            w = _unpermute(w, cfg.n_kv_heads)
        return w

    return cfg, params_from_hf(cfg, load)

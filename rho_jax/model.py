"""The Llama-family decoder (Llama-2 / TinyLlama, Mistral, SmolLM2) in Flax Linen.

One model definition serves training, scoring and KV-cache decoding:

  forward(cfg, params, tokens_BxL, positions_BxL=None, segment_ids_BxL=None) -> logits_BxLxV (f32)
  forward_hidden(...)                 -> h_BxLxD, final-normed, in the compute dtype
  forward_with_cache(cfg, params, tokens_BxT, cache, ...) -> (logits_BxTxV, cache)

Conventions:
  * `segment_ids` 0 marks padding; tokens attend only within their own segment (packing).
  * `positions` feed RoPE and restart at 0 in each packed document.
  * Parameters are f32; `cfg.dtype` is the compute dtype; logits are always f32.
  * Layers run through `nn.scan`, so every layer parameter has a leading [n_layers] axis.
  * Every parameter carries logical axis names (see `param_logical_axes`), mapped to mesh
    axes by the rules in `rho_jax.sharding`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rho_jax.projection import PROJECTION, project

Params = Any

_cp = jax.checkpoint_policies
# A projection's matmul runs inside projection.project's custom VJP, where the dot policies cannot see it; its
# output carries the name PROJECTION, saved beside the dots (it is a dot with no batch dimensions).
REMAT_POLICIES = {
    "none": None,
    "full": _cp.nothing_saveable,
    "dots_saveable": _cp.save_from_both_policies(_cp.dots_saveable, _cp.save_only_these_names(PROJECTION)),
    "dots_with_no_batch_dims_saveable": _cp.save_from_both_policies(
        _cp.dots_with_no_batch_dims_saveable, _cp.save_only_these_names(PROJECTION)),
}
ATTENTION_IMPLS = ("xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters. Hashable, so it can be a static jit argument."""

    vocab_size: int = 32000
    d_model: int = 2048
    n_layers: int = 22
    n_heads: int = 32
    n_kv_heads: int = 4
    d_ff: int = 5632
    head_dim: int = 0  # 0 means d_model // n_heads
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    max_positions: int = 2048
    tie_embeddings: bool = False
    sliding_window: int = 0  # 0 means full causal attention (Mistral uses 4096)
    arch: str = "llama"  # "llama" or "mistral": only changes the HF export class
    dtype: str = "float32"  # compute dtype: "float32" or "bfloat16"
    remat: str = "none"  # a key of REMAT_POLICIES
    attention: str = "xla"  # "xla" (einsum, any mask) or "cudnn" (fused kernel on GPU)
    attention_chunk: int = 0  # xla only: > 0 scans query blocks of this many rows, each rematerialised,
    # so no [B, H, L, L] score tensor is ever whole (the memory of a full-batch step at long sequences)
    scan_layers: bool = True  # False unrolls the layer loop (same parameters); config.layers_scanned picks it
    init_std: float = 0.02

    def __post_init__(self):
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"ModelConfig.remat={self.remat!r}; expected one of {sorted(REMAT_POLICIES)}")
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"ModelConfig.attention={self.attention!r}; expected one of {ATTENTION_IMPLS}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.attention_chunk < 0:
            raise ValueError(f"ModelConfig.attention_chunk={self.attention_chunk}; expected 0 (off) or a block size")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"ModelConfig.dtype={self.dtype!r}; expected float32, bfloat16 or float16")

    @property
    def hd(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    def num_params(self, include_embedding: bool = True) -> int:
        d, f, hd = self.d_model, self.d_ff, self.hd
        attn = d * hd * (self.n_heads * 2 + self.n_kv_heads * 2)
        per_layer = attn + 3 * d * f + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.n_layers * per_layer + d + (emb if include_embedding else 0)


def _param(module: nn.Module, name: str, shape, axes, init):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


class RMSNorm(nn.Module):
    eps: float
    dtype: Any

    @nn.compact
    def __call__(self, x):
        scale = _param(self, "scale", (x.shape[-1],), ("norm",), nn.initializers.ones)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * scale).astype(self.dtype)


@jax.named_scope("rope")  # names its ops in profiles (scripts/profile_step.py)
def rope(x_BxLxHxK, positions_BxL, theta: float):
    """HF rotate_half RoPE: pairs dimension i with i + K/2. Computed in f32."""
    hd = x_BxLxHxK.shape[-1]
    inv_freq_K2 = 1.0 / (theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
    freqs_BxLxK2 = positions_BxL.astype(jnp.float32)[..., None] * inv_freq_K2
    cos, sin = jnp.cos(freqs_BxLxK2)[:, :, None, :], jnp.sin(freqs_BxLxK2)[:, :, None, :]
    x = x_BxLxHxK.astype(jnp.float32)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxLxHxK.dtype)


@jax.named_scope("attention_mask")  # names its ops in profiles (scripts/profile_step.py)
def attention_mask(q_idx_BxT, k_idx_BxS, q_seg_BxT, k_seg_BxS, window: int):
    """True where query t may attend key s: causal, same segment, inside the sliding window."""
    q, k = q_idx_BxT[:, :, None], k_idx_BxS[:, None, :]
    mask = (k <= q) & (q_seg_BxT[:, :, None] == k_seg_BxS[:, None, :])
    if window:
        mask &= k > q - window
    return mask  # [B, T, S]


@jax.named_scope("attention_core")  # names its ops in profiles (scripts/profile_step.py)
def _attend_xla(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, mask_BxTxS):
    # GQA heads folded into the batch (K/V repeated to every query head): plain batched [T, K] x [K, S] dots
    # over B*H. XLA CPU runs these about 1.3-2x faster (forward + backward) than the grouped
    # [B, G, R, T, S] einsum, which needs layout transposes around each dot; equal up to f32 rounding.
    b, t, h, hd = q_BxTxHxK.shape
    r = h // k_BxSxGxK.shape[2]
    k_BxSxHxK = jnp.repeat(k_BxSxGxK, r, axis=2)  # query head j reads kv head j // r, as the grouped form
    v_BxSxHxK = jnp.repeat(v_BxSxGxK, r, axis=2)
    logits = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK, k_BxSxHxK, preferred_element_type=jnp.float32)
    logits = logits / jnp.sqrt(jnp.float32(hd))
    logits = jnp.where(mask_BxTxS[:, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v_BxSxGxK.dtype)
    return jnp.einsum("bhts,bshk->bthk", probs, v_BxSxHxK)


CAUSAL_BLOCK_MIN = 64  # queries per causal block, at least (smaller blocks lose more to overhead than they skip)
CAUSAL_BLOCKS_MAX = 8


def causal_query_blocks(t: int) -> tuple[tuple[int, int], ...]:
    """The query blocks [a, b) of causal self-attention over t positions (`_attend_causal`).

    Block [a, b) reads keys [0, b) only: the keys after b are masked for all of its queries, so the kernel skips
    them instead of computing scores that the mask zeroes. It executes sum (b - a)·b of the t² query-key pairs
    (t = 256: 4 blocks, 62.5%; t = 2048: 8 blocks, 56%). At least CAUSAL_BLOCK_MIN queries a block and at most
    CAUSAL_BLOCKS_MAX blocks, as near equal as t allows."""
    n = max(1, min(CAUSAL_BLOCKS_MAX, t // CAUSAL_BLOCK_MIN))
    edges = [round(i * t / n) for i in range(n + 1)]
    return tuple(zip(edges[:-1], edges[1:]))


@jax.named_scope("attention_core")  # names its ops in profiles (scripts/profile_step.py)
def _attend_causal(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, mask_BxTxT):
    """`_attend_xla` of self-attention (keys = the queries' own positions, mask causal) by `causal_query_blocks`.
    Exact: a skipped key's probability is exp(finfo.min - max) = 0 (every row keeps its diagonal), so only the
    order of the softmax's and the value product's sums changes (f32 rounding)."""
    outs = [_attend_xla(q_BxTxHxK[:, a:b], k_BxTxGxK[:, :b], v_BxTxGxK[:, :b], mask_BxTxT[:, a:b, :b])
            for a, b in causal_query_blocks(q_BxTxHxK.shape[1])]
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


@jax.named_scope("attention_core")  # names its ops in profiles (scripts/profile_step.py)
def _attend_xla_chunked(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, mask_BxTxS, chunk: int):
    """`_attend_xla` over query blocks of `chunk` rows (T must divide into them), each under jax.checkpoint:
    peak score memory is [B, H, chunk, S] in the forward and the backward; exact (softmax is per query)."""
    b, t, h, hd = q_BxTxHxK.shape
    if t % chunk:
        raise ValueError(f"attention_chunk={chunk} does not divide the sequence length {t}")
    n = t // chunk
    q_NxBxCxHxK = q_BxTxHxK.reshape(b, n, chunk, h, hd).swapaxes(0, 1)
    mask_NxBxCxS = mask_BxTxS.reshape(b, n, chunk, -1).swapaxes(0, 1)
    block = jax.checkpoint(lambda q, m: _attend_xla(q, k_BxSxGxK, v_BxSxGxK, m))
    out_NxBxCxHxK = jax.lax.map(lambda x: block(*x), (q_NxBxCxHxK, mask_NxBxCxS))
    return out_NxBxCxHxK.swapaxes(0, 1).reshape(b, t, h, hd)


def _attend_cudnn(q, k, v, mask_BxTxS, plain_causal: bool):
    # cuDNN's fused kernel takes GQA K/V unrepeated; a plain causal mask avoids a dense mask input.
    if plain_causal:
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
    return jax.nn.dot_product_attention(q, k, v, mask=mask_BxTxS[:, None], implementation="cudnn")


class Attention(nn.Module):
    cfg: ModelConfig
    plain_causal: bool = True

    @nn.compact
    def __call__(self, x_BxTxD, positions_BxT, mask_BxTxS, kv_cache, cache_index):
        cfg, dt = self.cfg, self.cfg.compute_dtype
        d, h, g, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.hd
        init = nn.initializers.normal(cfg.init_std)
        wq = _param(self, "wq", (d, h, hd), ("embed", "q_heads", "head_dim"), init)
        wk = _param(self, "wk", (d, g, hd), ("embed", "kv_heads", "head_dim"), init)
        wv = _param(self, "wv", (d, g, hd), ("embed", "kv_heads", "head_dim"), init)
        wo = _param(self, "wo", (h, hd, d), ("q_heads", "head_dim", "embed"), init)
        q = project("btd,dhk->bthk", x_BxTxD, wq.astype(dt))
        k = project("btd,dgk->btgk", x_BxTxD, wk.astype(dt))
        v = project("btd,dgk->btgk", x_BxTxD, wv.astype(dt))
        q = nn.with_logical_constraint(rope(q, positions_BxT, cfg.rope_theta), ("batch", "length", "q_heads", "head_dim"))
        k = rope(k, positions_BxT, cfg.rope_theta)
        new_cache = None
        if kv_cache is not None:  # write the new keys/values at [cache_index, cache_index + T)
            k_cache = jax.lax.dynamic_update_slice_in_dim(kv_cache["k"], k.astype(kv_cache["k"].dtype), cache_index, axis=1)
            v_cache = jax.lax.dynamic_update_slice_in_dim(kv_cache["v"], v.astype(kv_cache["v"].dtype), cache_index, axis=1)
            new_cache = {"k": k_cache, "v": v_cache}
            k, v = k_cache.astype(dt), v_cache.astype(dt)
        if cfg.attention == "cudnn" and kv_cache is None:
            out = _attend_cudnn(q, k, v, mask_BxTxS, self.plain_causal)
        elif cfg.attention_chunk and kv_cache is None and q.shape[1] > cfg.attention_chunk:
            out = _attend_xla_chunked(q, k, v, mask_BxTxS, cfg.attention_chunk)
        elif kv_cache is None:
            out = _attend_causal(q, k, v, mask_BxTxS)
        else:
            out = _attend_xla(q, k, v, mask_BxTxS)
        out = nn.with_logical_constraint(out, ("batch", "length", "q_heads", "head_dim"))
        return project("bthk,hkd->btd", out, wo.astype(dt)), new_cache


class MLP(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD):
        cfg, dt = self.cfg, self.cfg.compute_dtype
        init = nn.initializers.normal(cfg.init_std)
        w_gate = _param(self, "w_gate", (cfg.d_model, cfg.d_ff), ("embed", "mlp"), init)
        w_up = _param(self, "w_up", (cfg.d_model, cfg.d_ff), ("embed", "mlp"), init)
        w_down = _param(self, "w_down", (cfg.d_ff, cfg.d_model), ("mlp", "embed"), init)
        gate = project("btd,df->btf", x_BxTxD, w_gate.astype(dt))
        up = project("btd,df->btf", x_BxTxD, w_up.astype(dt))
        hidden = nn.with_logical_constraint(nn.silu(gate) * up, ("batch", "length", "mlp"))
        return project("btf,fd->btd", hidden, w_down.astype(dt))


class DecoderLayer(nn.Module):
    cfg: ModelConfig
    plain_causal: bool = True  # no packing, no window, no cache: lets cuDNN skip the dense mask

    @nn.compact
    def __call__(self, x_BxTxD, positions_BxT, mask_BxTxS, cache_index, kv_cache):
        cfg = self.cfg
        h = RMSNorm(cfg.rms_eps, cfg.compute_dtype, name="attn_norm")(x_BxTxD)
        attn, new_cache = Attention(cfg, self.plain_causal, name="attn")(h, positions_BxT, mask_BxTxS, kv_cache, cache_index)
        x_BxTxD = x_BxTxD + attn
        h = RMSNorm(cfg.rms_eps, cfg.compute_dtype, name="mlp_norm")(x_BxTxD)
        x_BxTxD = x_BxTxD + MLP(cfg, name="mlp")(h)
        x_BxTxD = nn.with_logical_constraint(x_BxTxD, ("batch", "length", "embed"))
        return x_BxTxD, new_cache


class Transformer(nn.Module):
    """Returns the final-normed hidden states [B, T, D]; the LM head is applied in `forward`."""

    cfg: ModelConfig
    unpacked: bool = False  # True when the caller passed no segment_ids (one document per row)

    @nn.compact
    def __call__(self, tokens_BxT, positions_BxT, segment_ids_BxT, cache=None):
        cfg = self.cfg
        embed = _param(self, "embedding", (cfg.vocab_size, cfg.d_model), ("vocab", "embed"),
                       nn.initializers.normal(cfg.init_std))
        x = jnp.take(embed, tokens_BxT, axis=0).astype(cfg.compute_dtype)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

        b, t = tokens_BxT.shape
        q_idx = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        if cache is None:
            cache_index, kv_cache, new_seg = jnp.zeros((), jnp.int32), None, None
            mask = attention_mask(q_idx, q_idx, segment_ids_BxT, segment_ids_BxT, cfg.sliding_window)
        else:
            cache_index = cache["index"]
            new_seg = jax.lax.dynamic_update_slice_in_dim(cache["segment_ids"], segment_ids_BxT, cache_index, axis=1)
            s = new_seg.shape[1]
            k_idx = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
            mask = attention_mask(q_idx + cache_index, k_idx, segment_ids_BxT, new_seg, cfg.sliding_window)
            kv_cache = {"k": cache["k"], "v": cache["v"]}

        layer_cls = DecoderLayer
        if cfg.remat != "none":
            layer_cls = nn.remat(DecoderLayer, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
        scanned = nn.scan(
            layer_cls,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0),
            length=cfg.n_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
            unroll=1 if cfg.scan_layers else cfg.n_layers,
        )
        # cuDNN can use its built-in causal mask only when nothing else restricts attention; the
        # packed/padded case passes the dense mask. `plain_causal` is a trace-time fact of the call.
        plain_causal = cache is None and cfg.sliding_window == 0 and self.unpacked
        x, layer_caches = scanned(cfg, plain_causal, name="layers")(x, positions_BxT, mask, cache_index, kv_cache)
        x = RMSNorm(cfg.rms_eps, cfg.compute_dtype, name="final_norm")(x)
        if not cfg.tie_embeddings:
            _param(self, "lm_head", (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                   nn.initializers.normal(cfg.init_std))
        new_cache = None
        if cache is not None:
            new_cache = {"k": layer_caches["k"], "v": layer_caches["v"], "segment_ids": new_seg,
                         "index": cache_index + t}
        return x, new_cache


def _defaults(tokens_BxL, positions_BxL, segment_ids_BxL):
    tokens_BxL = jnp.asarray(tokens_BxL, jnp.int32)
    if segment_ids_BxL is None:
        segment_ids_BxL = jnp.ones_like(tokens_BxL)
    if positions_BxL is None:
        positions_BxL = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1], dtype=jnp.int32), tokens_BxL.shape)
    return tokens_BxL, jnp.asarray(positions_BxL, jnp.int32), jnp.asarray(segment_ids_BxL, jnp.int32)


def _unbox(tree):
    return jax.tree.map(lambda x: x.unbox() if isinstance(x, nn.meta.AxisMetadata) else x, tree,
                        is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def _abstract_boxed(cfg: ModelConfig):
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    return jax.eval_shape(lambda t: Transformer(cfg).init(jax.random.PRNGKey(0), t, t, t)["params"], tokens)


def init_params(cfg: ModelConfig, rng: jax.Array) -> Params:
    """Random f32 parameters: a nested dict of plain arrays (layer params have a leading [n_layers] axis)."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    boxed = Transformer(cfg).init(rng, tokens, tokens, jnp.ones_like(tokens))["params"]
    return _unbox(boxed)


def param_shapes(cfg: ModelConfig) -> Params:
    """The parameter tree as `jax.ShapeDtypeStruct`s, without allocating anything."""
    return _unbox(_abstract_boxed(cfg))


def param_logical_axes(cfg: ModelConfig) -> Params:
    """The parameter tree with a `PartitionSpec` of logical axis names at each leaf."""
    return nn.get_partition_spec(_abstract_boxed(cfg))


def head_kernel(cfg: ModelConfig, params: Params) -> jax.Array:
    """The LM head as an f32 [D, V] matrix (the transposed embedding when tied)."""
    return params["embedding"].T if cfg.tie_embeddings else params["lm_head"]


def forward_hidden(cfg: ModelConfig, params: Params, tokens, positions=None, segment_ids=None) -> jax.Array:
    """Final-normed hidden states h_BxLxD in the compute dtype."""
    unpacked = segment_ids is None
    tokens, positions, segment_ids = _defaults(tokens, positions, segment_ids)
    h, _ = Transformer(cfg, unpacked).apply({"params": params}, tokens, positions, segment_ids)
    return h


@jax.named_scope("lm_head")  # names its ops in profiles (scripts/profile_step.py)
def logits_from_hidden(cfg: ModelConfig, params: Params, h_BxLxD) -> jax.Array:
    w_DxV = head_kernel(cfg, params).astype(cfg.compute_dtype)
    logits = project("bld,dv->blv", h_BxLxD, w_DxV, preferred_element_type=jnp.float32)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


def forward(cfg: ModelConfig, params: Params, tokens, positions=None, segment_ids=None) -> jax.Array:
    """int32 tokens [B, L] -> float32 logits [B, L, V]. logits[:, t] predicts tokens[:, t + 1]."""
    return logits_from_hidden(cfg, params, forward_hidden(cfg, params, tokens, positions, segment_ids))


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> dict:
    """An empty KV cache for `forward_with_cache`: segment id 0 marks empty slots."""
    dtype = dtype or cfg.compute_dtype
    shape = (cfg.n_layers, batch, max_len, cfg.n_kv_heads, cfg.hd)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
            "segment_ids": jnp.zeros((batch, max_len), jnp.int32), "index": jnp.zeros((), jnp.int32)}


def forward_with_cache(cfg: ModelConfig, params: Params, tokens_BxT, cache: dict, positions_BxT,
                       segment_ids_BxT) -> tuple[jax.Array, dict]:
    """Runs T new tokens against the cache (prefill when T > 1, decode when T == 1).

    The new tokens occupy cache slots [index, index + T). Left-padded prompts use segment id 0
    for padding, so real tokens (segment 1) never attend to it.
    """
    tokens_BxT, positions_BxT, segment_ids_BxT = _defaults(tokens_BxT, positions_BxT, segment_ids_BxT)
    h, cache = Transformer(cfg).apply({"params": params}, tokens_BxT, positions_BxT, segment_ids_BxT, cache)
    return logits_from_hidden(cfg, params, h), cache


@functools.lru_cache(maxsize=None)
def jitted_forward(cfg: ModelConfig):
    return jax.jit(functools.partial(forward, cfg))

"""Hugging Face Llama/Mistral checkpoints <-> our `ModelConfig` and parameter tree.

HF stores every projection as a torch Linear weight [out, in]; we store [in, ...] kernels with
split head axes and a leading [n_layers] axis (see `rho_jax.model`). The mapping lives here once,
as `hf_shapes` / `params_from_hf` / `hf_from_params`, and the GGUF reader reuses it after renaming
its tensors to HF names.

Everything is validated (architecture, config fields, every tensor name and shape) before any
tensor is read or any file is written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Mapping

import jax
import numpy as np

from rho_jax.model import ModelConfig, Params, param_shapes

ARCHS = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral"}
MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}
_IGNORED = ("rotary_emb.inv_freq",)  # buffers that old checkpoints saved; recomputed from rope_theta


class CheckpointError(ValueError):
    """A checkpoint we cannot convert faithfully; the message names the tensor, field or architecture."""


# ----------------------------------------------------------------------------------------- config

def config_from_hf(hf: Mapping) -> ModelConfig:
    """An HF `config.json` dict -> ModelConfig. Rejects features our model does not implement."""
    archs = hf.get("architectures") or [MODEL_TYPES.get(hf.get("model_type", ""), str(hf.get("model_type")))]
    if len(archs) != 1 or archs[0] not in ARCHS:
        raise CheckpointError(f"unsupported architecture {archs} (model_type={hf.get('model_type')!r}); "
                              f"supported: {sorted(ARCHS)}")
    arch = ARCHS[archs[0]]
    rope_params = hf.get("rope_parameters") or {}
    if hf.get("rope_scaling") is not None:
        raise CheckpointError(f"config field rope_scaling={hf['rope_scaling']!r} is not supported (only plain RoPE)")
    if rope_params.get("rope_type", "default") != "default":
        raise CheckpointError(f"config field rope_parameters.rope_type={rope_params['rope_type']!r} is not "
                              f"supported (only 'default' RoPE)")
    for field in ("attention_bias", "mlp_bias"):
        if hf.get(field):
            raise CheckpointError(f"config field {field}=True is not supported (our projections have no bias)")
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"config field hidden_act={hf['hidden_act']!r} is not supported (only 'silu')")
    window = hf.get("sliding_window") if arch == "mistral" else None
    try:
        return ModelConfig(
            vocab_size=int(hf["vocab_size"]),
            d_model=int(hf["hidden_size"]),
            n_layers=int(hf["num_hidden_layers"]),
            n_heads=int(hf["num_attention_heads"]),
            n_kv_heads=int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
            d_ff=int(hf["intermediate_size"]),
            head_dim=int(hf.get("head_dim") or 0),
            rope_theta=float(rope_params.get("rope_theta", hf.get("rope_theta", 10000.0))),
            rms_eps=float(hf.get("rms_norm_eps", 1e-6)),
            max_positions=int(hf.get("max_position_embeddings", 2048)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            sliding_window=int(window or 0),
            arch=arch,
        )
    except KeyError as e:
        raise CheckpointError(f"config.json lacks the required field {e.args[0]!r}") from None


def hf_config(cfg: ModelConfig, bos_id: int | None = 1, eos_id: int | None = 2) -> dict:
    """ModelConfig -> an HF `config.json` dict that transformers 4.x and 5.x both read."""
    if cfg.arch not in MODEL_TYPES:
        raise CheckpointError(f"ModelConfig.arch={cfg.arch!r} has no HF class; expected one of {sorted(MODEL_TYPES)}")
    if cfg.sliding_window and cfg.arch != "mistral":
        raise CheckpointError(f"sliding_window={cfg.sliding_window} needs arch='mistral' (LlamaForCausalLM has none)")
    out = {
        "architectures": [MODEL_TYPES[cfg.arch]], "model_type": cfg.arch,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.hd, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_positions, "rms_norm_eps": cfg.rms_eps,
        # transformers 5 reads rope_parameters, 4.x reads rope_theta.
        "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings, "bos_token_id": bos_id, "eos_token_id": eos_id,
        "attention_dropout": 0.0, "initializer_range": cfg.init_std, "use_cache": True, "dtype": "float32",
    }
    if cfg.arch == "mistral":
        out["sliding_window"] = cfg.sliding_window or None
    else:
        out.update(attention_bias=False, mlp_bias=False)
    return out


# ---------------------------------------------------------------------------------------- tensors

def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name a checkpoint of `cfg` must hold, with its [out, in] shape."""
    d, f, v, hd = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.hd
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (v, d)
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (cfg.n_heads * hd, d),
            p + "self_attn.k_proj.weight": (cfg.n_kv_heads * hd, d),
            p + "self_attn.v_proj.weight": (cfg.n_kv_heads * hd, d),
            p + "self_attn.o_proj.weight": (d, cfg.n_heads * hd),
            p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
            p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
        })
    return shapes


def check_tensors(cfg: ModelConfig, found: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Raises CheckpointError naming every missing, mis-shaped or unexpected tensor."""
    want = hf_shapes(cfg)
    missing = [n for n in want if n not in found]
    bad = [f"{n}: shape {tuple(found[n])}, expected {want[n]}" for n in want
           if n in found and tuple(found[n]) != want[n]]
    extra = [n for n in found if n not in want and not n.endswith(_IGNORED)
             and not (n == "lm_head.weight" and cfg.tie_embeddings)]
    problems = ([f"missing tensor {n}" for n in missing] + [f"mis-shaped tensor {b}" for b in bad]
                + [f"unexpected tensor {n}" for n in extra])
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} problems)" if len(problems) > 8 else "")
        raise CheckpointError(f"{source}: {shown}")


def params_from_hf(cfg: ModelConfig, load: Callable[[str], np.ndarray]) -> Params:
    """Builds our f32 parameter tree from HF-named tensors; `load(name)` returns one as numpy."""
    d, h, g, hd, n = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.hd, cfg.n_layers

    def get(name):
        return np.asarray(load(name), np.float32)

    def stack(suffix, fn):
        return np.stack([fn(get(f"model.layers.{i}.{suffix}")) for i in range(n)])

    params = {
        "embedding": get("model.embed_tokens.weight"),
        "final_norm": {"scale": get("model.norm.weight")},
        "layers": {
            "attn": {
                "wq": stack("self_attn.q_proj.weight", lambda w: w.T.reshape(d, h, hd)),
                "wk": stack("self_attn.k_proj.weight", lambda w: w.T.reshape(d, g, hd)),
                "wv": stack("self_attn.v_proj.weight", lambda w: w.T.reshape(d, g, hd)),
                "wo": stack("self_attn.o_proj.weight", lambda w: w.T.reshape(h, hd, d)),
            },
            "attn_norm": {"scale": stack("input_layernorm.weight", lambda w: w)},
            "mlp": {
                "w_gate": stack("mlp.gate_proj.weight", lambda w: w.T),
                "w_up": stack("mlp.up_proj.weight", lambda w: w.T),
                "w_down": stack("mlp.down_proj.weight", lambda w: w.T),
            },
            "mlp_norm": {"scale": stack("post_attention_layernorm.weight", lambda w: w)},
        },
    }
    if not cfg.tie_embeddings:
        params["lm_head"] = get("lm_head.weight").T
    return params


def check_params(cfg: ModelConfig, params: Params) -> None:
    """Raises CheckpointError naming each leaf whose path or shape differs from `init_params(cfg)`."""
    want = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(param_shapes(cfg))}
    got = {jax.tree_util.keystr(k): tuple(np.shape(v)) for k, v in jax.tree_util.tree_leaves_with_path(params)}
    problems = [f"missing param {k}" for k in want if k not in got]
    problems += [f"param {k} has shape {got[k]}, expected {want[k]}" for k in want if k in got and got[k] != want[k]]
    problems += [f"unexpected param {k}" for k in got if k not in want]
    if problems:
        raise CheckpointError("params do not match the config: " + "; ".join(problems[:8]))


def hf_from_params(cfg: ModelConfig, params: Params) -> dict[str, np.ndarray]:
    """Our parameter tree -> HF-named f32 numpy tensors (the inverse of `params_from_hf`)."""
    check_params(cfg, params)
    d, h, g, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.hd
    p = {k: np.asarray(v, np.float32) for k, v in _flat(params).items()}
    out = {"model.embed_tokens.weight": p["embedding"], "model.norm.weight": p["final_norm/scale"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = p["lm_head"].T
    for i in range(cfg.n_layers):
        pre = f"model.layers.{i}."
        out.update({
            pre + "self_attn.q_proj.weight": p["layers/attn/wq"][i].reshape(d, h * hd).T,
            pre + "self_attn.k_proj.weight": p["layers/attn/wk"][i].reshape(d, g * hd).T,
            pre + "self_attn.v_proj.weight": p["layers/attn/wv"][i].reshape(d, g * hd).T,
            pre + "self_attn.o_proj.weight": p["layers/attn/wo"][i].reshape(h * hd, d).T,
            pre + "mlp.gate_proj.weight": p["layers/mlp/w_gate"][i].T,
            pre + "mlp.up_proj.weight": p["layers/mlp/w_up"][i].T,
            pre + "mlp.down_proj.weight": p["layers/mlp/w_down"][i].T,
            pre + "input_layernorm.weight": p["layers/attn_norm/scale"][i],
            pre + "post_attention_layernorm.weight": p["layers/mlp_norm/scale"][i],
        })
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = v
    return out


# ------------------------------------------------------------------------------------- directories

def _safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [path / f for f in sorted(set(weight_map.values()))]
    single = path / "model.safetensors"
    if single.exists():
        return [single]
    raise CheckpointError(f"{path} holds neither model.safetensors nor model.safetensors.index.json "
                          f"(save with save_pretrained(..., safe_serialization=True))")


def load_hf_dir(path: str | os.PathLike) -> tuple[ModelConfig, Params]:
    """Reads an HF `save_pretrained` directory (single-file or sharded safetensors)."""
    from safetensors import safe_open

    path = Path(path)
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path} has no config.json; expected an HF save_pretrained directory or a .gguf file")
    cfg = config_from_hf(json.loads((path / "config.json").read_text()))
    where, shapes, bf16 = {}, {}, set()
    for file in _safetensors_files(path):
        with safe_open(file, framework="numpy") as f:
            for name in f.keys():
                shapes[name] = tuple(f.get_slice(name).get_shape())
                where[name] = file
                if f.get_slice(name).get_dtype() == "BF16":
                    bf16.add(name)
    check_tensors(cfg, shapes, str(path))
    handles = {}

    def load(name):
        # numpy has no bfloat16, in which most checkpoints ship: read those through the flax backend.
        key = (where[name], name in bf16)
        if key not in handles:
            handles[key] = safe_open(key[0], framework="flax" if key[1] else "numpy")
        return np.asarray(handles[key].get_tensor(name), np.float32)

    params = params_from_hf(cfg, load)
    return cfg, params


def atomic_dir(out_dir: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Runs `write(tmp)` into a temporary sibling of `out_dir`, then renames it into place.

    A failure leaves neither `out_dir` nor the temporary directory behind. An existing empty
    `out_dir` is replaced; a non-empty one is refused.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CheckpointError(f"{out_dir} exists and is not an empty directory; choose a new output path")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        write(tmp)
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def save_hf(cfg: ModelConfig, params: Params, out_dir: str | os.PathLike, bos_id: int | None = 1,
            eos_id: int | None = 2) -> Path:
    """Writes config.json + model.safetensors (f32) that `AutoModelForCausalLM.from_pretrained` loads."""
    from safetensors.numpy import save_file

    config = hf_config(cfg, bos_id, eos_id)  # validate everything before touching the disk
    tensors = hf_from_params(cfg, params)

    def write(tmp: Path):
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})

    return atomic_dir(out_dir, write)

"""Checkpoint interop: HF round trips, sharded checkpoints, GGUF dequantisation, and bad inputs."""

import json

import gguf
import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from rho_jax.interop import CheckpointError, load_pretrained, save_hf
from rho_jax.model import forward

TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6)
forward = jax.jit(forward, static_argnums=0)


def hf_model(kind="llama", seed=0, **overrides):
    config_cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig}[kind]
    model_cls = {"llama": transformers.LlamaForCausalLM, "mistral": transformers.MistralForCausalLM}[kind]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**{**TINY, **overrides})).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.2 * torch.randn_like(p) if name.endswith("norm.weight") else 0.15 * torch.randn_like(p))
    return model


def saved(tmp_path, name="hf", **kw):
    path = tmp_path / name
    hf_model(**kw).save_pretrained(path, safe_serialization=True)
    return path


def state(model):
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def left_behind(tmp_path, name):
    """Everything named like `name` (the target or a temporary sibling) under tmp_path."""
    return [p.name for p in tmp_path.iterdir() if name in p.name]


# ------------------------------------------------------------------------------------ round trips

@pytest.mark.parametrize("kw", [dict(kind="llama"), dict(kind="llama", tie_word_embeddings=True),
                                dict(kind="mistral", sliding_window=6, rope_theta=5e5)],
                         ids=["llama", "tied", "mistral"])
def test_hf_roundtrip_is_bit_identical(tmp_path, kw):
    src = saved(tmp_path, **kw)
    cfg, params = load_pretrained(src)
    save_hf(cfg, params, tmp_path / "out")
    original = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert type(reloaded) is type(original)
    assert reloaded.config.tie_word_embeddings == original.config.tie_word_embeddings
    assert getattr(reloaded.config, "sliding_window", None) == getattr(original.config, "sliding_window", None)
    a, b = state(original), state(reloaded)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # Our own load of the export gives the same params too.
    cfg2, params2 = load_pretrained(tmp_path / "out")
    assert cfg2 == cfg
    jax.tree.map(np.testing.assert_array_equal, params, params2)


def test_sharded_checkpoint_loads(tmp_path):
    model = hf_model()
    model.save_pretrained(tmp_path / "one", safe_serialization=True)
    model.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="30KB")
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    cfg1, p1 = load_pretrained(tmp_path / "one")
    cfg2, p2 = load_pretrained(tmp_path / "sharded")
    assert cfg1 == cfg2
    jax.tree.map(np.testing.assert_array_equal, p1, p2)


def test_convert_to_orbax_records_the_identity_the_hf_dir_hashes_to(tmp_path, capsys):
    """An HF dir has no model_meta.json: its identity is a hash of its weights (with a note). `rho-jax convert`
    to Orbax records that same identity, so score caches made from either agree; Orbax -> Orbax keeps it."""
    from rho_jax import checkpoint as ckpt
    from rho_jax.convert import convert as rho_convert

    src = saved(tmp_path)
    hashed = ckpt.model_identity(str(src), "reference")
    assert capsys.readouterr().out.startswith(f"note: config.init.reference={src} has no model_meta.json")
    rho_convert(str(src), str(tmp_path / "orbax"))
    assert ckpt.stored_identity(str(tmp_path / "orbax")) == hashed
    rho_convert(str(tmp_path / "orbax"), str(tmp_path / "orbax2"))
    assert ckpt.stored_identity(str(tmp_path / "orbax2")) == hashed


# ------------------------------------------------------------------------------------- bad inputs

def rewrite_tensors(path, edit):
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def convert(src, out):
    """The convert flow a user runs: load, then save. Must not create `out` when loading fails."""
    cfg, params = load_pretrained(src)
    save_hf(cfg, params, out)


def test_missing_tensor_is_named_and_nothing_written(tmp_path):
    src = saved(tmp_path)
    rewrite_tensors(src, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor model\.layers\.1\.mlp\.up_proj\.weight"):
        convert(src, tmp_path / "out")
    assert not left_behind(tmp_path, "out")


def test_misshaped_tensor_is_named_and_nothing_written(tmp_path):
    src = saved(tmp_path)

    def shrink(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:-16]

    rewrite_tensors(src, shrink)
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight: shape \(16, 64\)"):
        convert(src, tmp_path / "out")
    assert not left_behind(tmp_path, "out")


def test_save_hf_validates_params_before_writing(tmp_path):
    cfg, params = load_pretrained(saved(tmp_path))
    params["layers"]["mlp"]["w_up"] = params["layers"]["mlp"]["w_up"][:, :, :-1]
    with pytest.raises(CheckpointError, match=r"w_up.*\(2, 64, 159\).*\(2, 64, 160\)"):
        save_hf(cfg, params, tmp_path / "out")
    assert not left_behind(tmp_path, "out")


def test_unsupported_architecture_is_named(tmp_path):
    src = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)) \
        .save_pretrained(src, safe_serialization=True)
    with pytest.raises(CheckpointError, match="GPT2LMHeadModel"):
        convert(src, tmp_path / "out")
    assert not left_behind(tmp_path, "out")


@pytest.mark.parametrize("field,value", [("rope_scaling", {"rope_type": "linear", "factor": 2.0}),
                                         ("rope_parameters", {"rope_type": "llama3", "factor": 8.0}),
                                         ("attention_bias", True), ("mlp_bias", True), ("hidden_act", "gelu")])
def test_unsupported_config_field_is_named(tmp_path, field, value):
    src = saved(tmp_path)
    config = json.loads((src / "config.json").read_text())
    config[field] = value
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=field):
        load_pretrained(src)


def test_save_hf_refuses_a_nonempty_target(tmp_path):
    cfg, params = load_pretrained(saved(tmp_path))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not an empty directory"):
        save_hf(cfg, params, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["keep.txt"]


# -------------------------------------------------------------------------------------------- GGUF

def permute_for_gguf(w, heads):
    """llama.cpp's convert_hf_to_gguf.py Q/K permutation (HF rotate_half -> interleaved pairs)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def write_gguf(path, model, qtypes):
    """A llama GGUF of an HF model; `qtypes(gguf_name)` picks each tensor's type (a raw-bytes type is zeros)."""
    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.head_dim)
    w.add_vocab_size(c.vocab_size)
    for name, t in state(model).items():
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            gname = "output.weight"
        else:
            layer, rest = name.removeprefix("model.layers.").split(".", 1)
            gname = f"blk.{layer}.{GGUF_NAMES[rest.removesuffix('.weight')]}.weight"
            if rest.startswith("self_attn.q_proj"):
                t = permute_for_gguf(t, c.num_attention_heads)
            elif rest.startswith("self_attn.k_proj"):
                t = permute_for_gguf(t, c.num_key_value_heads)
        qtype = qtypes(gname)
        if qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(gname, np.ascontiguousarray(t, np.float32))
        elif qtype == gguf.GGMLQuantizationType.Q8_1:  # gguf cannot quantise to it: write raw zero blocks
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            w.add_tensor(gname, np.zeros((t.shape[0], t.shape[1] // block * size), np.uint8), raw_dtype=qtype)
        else:
            w.add_tensor(gname, gguf.quants.quantize(np.ascontiguousarray(t, np.float32), qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_matches_transformers_gguf_loader(tmp_path):
    """Our dequantise + un-permute gives the logits of transformers' own GGUF loader on the same file."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    Q = gguf.GGMLQuantizationType
    model = hf_model(rope_theta=50000.0)
    path = write_gguf(tmp_path / "tiny.gguf", model,
                      lambda n: Q.F32 if n.endswith("norm.weight") else Q.Q8_0 if "attn" in n else Q.Q4_1)
    cfg, params = load_pretrained(path)
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.rope_theta, cfg.tie_embeddings) == (4, 2, 50000.0, False)

    with torch.device("meta"):
        skeleton = transformers.LlamaForCausalLM(model.config)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=skeleton)["tensors"]
    reference = transformers.LlamaForCausalLM(model.config).float().eval()
    reference.load_state_dict(tensors)
    tokens = np.random.default_rng(0).integers(0, TINY["vocab_size"], (2, 12))
    with torch.no_grad():
        theirs = reference(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(np.asarray(forward(cfg, params, tokens)), theirs, atol=1e-4, rtol=0)
    # Every dequantised tensor is within 4-bit rounding of the f32 original (a wrong orientation or
    # permutation would be off by the size of the weights).
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    _, exact = load_pretrained(tmp_path / "hf")
    for (path_, ours), want in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(exact)):
        assert np.abs(ours - want).max() < 0.1 * np.abs(want).max(), jax.tree_util.keystr(path_)


def test_gguf_unsupported_quantisation_is_named(tmp_path):
    Q = gguf.GGMLQuantizationType
    path = write_gguf(tmp_path / "bad.gguf", hf_model(),
                      lambda n: Q.Q8_1 if n == "blk.1.ffn_down.weight" else Q.F32)
    with pytest.raises(CheckpointError, match=r"blk\.1\.ffn_down\.weight.*Q8_1"):
        convert(path, tmp_path / "out")
    assert not left_behind(tmp_path, "out")


# ------------------------------------------------------------------------------- the real model

@pytest.mark.slow
def test_smollm2_gguf_speaks_english():
    """SmolLM2-135M (Q4_1 GGUF): greedy knows Paris; real prose scores low perplexity, shuffled prose high."""
    from rho_jax import assets
    from rho_jax.generate import greedy_generate
    from rho_jax.interop.gguf import load_gguf, open_gguf
    from rho_jax.interop.tokenizer import bpe_from_gguf
    from rho_jax.smoke import english_paragraph, perplexity

    reader = open_gguf(assets.smollm2_gguf())
    cfg, params = load_gguf(reader)
    tok = bpe_from_gguf(reader)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.tie_embeddings) == (30, 576, 9, 3, True)
    params = jax.device_put(params)

    [out] = greedy_generate(cfg, params, [tok.encode("The capital of France is")], 8, tok.eos_id)
    assert "Paris" in tok.decode(out)

    ids = tok.encode(english_paragraph())
    assert 100 <= len(ids) <= 200
    real = perplexity(cfg, params, ids)
    shuffled = perplexity(cfg, params, np.random.default_rng(0).permutation(ids))
    assert real < 30
    assert shuffled > 10 * real

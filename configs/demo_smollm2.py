"""The demo at accelerator scale: SmolLM2-135M (GGUF) as the base and the reference's starting point.

    rho-jax demo --config=configs/demo_smollm2.py [--config.workdir=DIR]  (a local dir)

Same pipeline as configs/demo.py, minus pretraining a base: the pinned SmolLM2-135M-Instruct GGUF
(rho_jax.assets.smollm2_gguf) is the base, its embedded byte-level BPE tokenizer the vocabulary, and
the architecture fields below are the GGUF's. Continual pretraining runs at tens of millions
of tokens (bf16, batch 64 x 512 = 32k tokens per step): minutes per run on one H100, not feasible on a
CPU; configs/demo.py's arms (CLM, SLM, the random control) x 3 seeds make 9 such runs
(`--config.cpt.seeds=0` for one seed).
About 0.8 GFLOP per trained token (6 x 135M parameters plus attention): a smoke test on a CPU.
"""

import importlib.util
import os

from rho_jax import assets


def _demo_config():
    """configs/demo.py's config (config files are loaded by path, not as a package)."""
    spec = importlib.util.spec_from_file_location("_rho_jax_demo_config", os.path.join(os.path.dirname(__file__), "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


# SmolLM2-135M as its GGUF declares it (tests/test_demo.py checks these against the file): reading the
# GGUF's metadata takes seconds, so the config does not parse it on every load.
SMOLLM2_135M = dict(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_ff=1536, head_dim=64,
                    rope_theta=100000.0, rms_eps=1e-5, max_positions=8192, tie_embeddings=True)


def get_config():
    c = _demo_config()
    gguf = str(assets.smollm2_gguf())
    c.workdir = "./runs/demo_smollm2"
    c.model.update(SMOLLM2_135M)  # documents the model; the weights (and this shape) come from the GGUF
    c.model.update(dtype="bfloat16", remat="none")  # bf16 compute, f32 master weights
    c.data.update(seq_len=512, vocab=gguf)  # the SmolLM2 BPE tokenizer embedded in the GGUF
    c.base.update(checkpoint=gguf)  # no base pretraining: SmolLM2-135M is the base
    c.reference.update(epochs=3.0, batch_size=32, lr=5e-5, warmup_steps=10)  # paper: 3 epochs, max LR 5e-5
    c.cpt.update(steps=2000, batch_size=64, lr=8e-5, warmup_steps=50,  # 2000 x 64 x 512 = 65.5M tokens
                 ratio=0.6, eval_every=100, checkpoint_every=250)
    c.prepare.update(shard_mb=1.0)  # larger input shards than the CPU demo's
    c.eval.update(batch_size=32, max_rows=0, gsm8k_n=100, asdiv_n=300, shots=8, max_new_tokens=256, solution_loss_n=100)
    c.analysis.update(category_rows=256, html_rows=8)
    return c

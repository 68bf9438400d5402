"""The PyTorch peer for side-by-side benchmarks: HF `LlamaForCausalLM` at a rho-jax model shape.

What a user who picks PyTorch would write: random init from the same shape config, AdamW with
global-norm clipping, per-token CE, and for SLM the global top-k excess loss over the whole batch
(k = ceil(ratio * n_valid), loss = sum(ce * mask) / k) with an online reference model under no_grad.
Modes match `rho_jax.bench.MODES`; `score` returns the reference CE and entropy like our scorer.

Benchmark-only: torch and transformers are imported here and nowhere in the training path
(they stay in the `test` extra). Nothing in rho_jax imports this module at import time.
"""

from __future__ import annotations

import math

import numpy as np


def hf_config(cfg, attn_implementation: str = "sdpa"):
    """A transformers LlamaConfig of the same shape as a rho_jax ModelConfig."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                       num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                       num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.hd, rope_theta=cfg.rope_theta,
                       rms_norm_eps=cfg.rms_eps, max_position_embeddings=cfg.max_positions,
                       tie_word_embeddings=cfg.tie_embeddings, initializer_range=cfg.init_std,
                       attn_implementation=attn_implementation)


class Peer:
    """One mode's step on the torch side. `step()` runs one step and synchronises (returns a float)."""

    def __init__(self, cfg, mode: str, batch: dict, *, ratio: float = 0.6, lr: float = 1e-3,
                 compile: bool = False, dtype: str = "float32", device: str = "cpu", seed: int = 0):
        import torch
        from transformers import LlamaForCausalLM

        torch.manual_seed(seed)
        self.torch, self.mode, self.ratio, self.device = torch, mode, ratio, device
        self.autocast = dtype in ("bfloat16", "float16")
        self.amp_dtype = getattr(torch, dtype) if self.autocast else None
        hf = hf_config(cfg)
        self.tokens = torch.from_numpy(np.asarray(batch["tokens"], np.int64)).to(device)
        seg = np.asarray(batch["segment_ids"])
        if not (seg == seg[:, :1]).all():
            raise ValueError("the peer runs one document per row (plain causal attention); "
                             "build the side-by-side batch with docs_per_row=1")
        valid = np.zeros(seg.shape, bool)  # same rule as ce.shift_targets: the last column never trains
        valid[:, :-1] = (seg[:, :-1] != 0) & (seg[:, 1:] == seg[:, :-1])
        self.valid = torch.from_numpy(valid).to(device)
        self.n_valid = int(valid.sum())
        self.k = math.ceil(round(ratio * 1_000_000) * self.n_valid / 1_000_000)
        self.ref_ce_cached = torch.from_numpy(np.asarray(batch["ref_ce"], np.float32)).to(device)
        needs_target = mode != "score"
        needs_ref = mode in ("slm_online", "score")
        self.model = LlamaForCausalLM(hf).to(device).train() if needs_target else None
        self.ref = LlamaForCausalLM(hf).to(device).eval() if needs_ref else None
        if self.ref is not None:
            for p in self.ref.parameters():
                p.requires_grad_(False)
        if self.model is not None:
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-8,
                                         weight_decay=0.1)
        if compile:  # the usual way: compile the modules; the optimizer and top-k stay eager
            self.model = torch.compile(self.model) if self.model is not None else None
            self.ref = torch.compile(self.ref) if self.ref is not None else None
        self._fn = self._score if mode == "score" else self._train
        self.compiled = compile

    def _ce(self, logits_BxLxV):
        torch = self.torch
        b, seq, v = logits_BxLxV.shape
        targets = torch.nn.functional.pad(self.tokens[:, 1:], (0, 1))
        return torch.nn.functional.cross_entropy(logits_BxLxV.float().reshape(-1, v), targets.reshape(-1),
                                                 reduction="none").reshape(b, seq)

    def _logits(self, m):
        torch = self.torch
        with torch.autocast(self.device, dtype=self.amp_dtype, enabled=self.autocast):
            return m(input_ids=self.tokens).logits

    def _train(self):
        torch = self.torch
        validf = self.valid.float()
        if self.mode == "slm_online":
            with torch.no_grad():
                ref_ce = self._ce(self._logits(self.ref))
        else:
            ref_ce = self.ref_ce_cached
        ce = self._ce(self._logits(self.model))
        if self.mode == "clm":
            loss = (ce * validf).sum() / validf.sum()
        else:  # global top-k of the signed excess loss over every valid token of the batch
            score = torch.where(self.valid, ce.detach() - ref_ce, float("-inf")).reshape(-1)
            mask = torch.zeros_like(score).scatter_(0, torch.topk(score, self.k).indices, 1.0).reshape(ce.shape)
            loss = (ce * mask).sum() / self.k
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.autograd.profiler.record_function("peer:clip"):  # scripts/profile_step.py: the optimizer group
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        return loss.detach()

    def _score(self):
        torch = self.torch
        with torch.no_grad():
            logits = self._logits(self.ref).float()
            logp = torch.log_softmax(logits, dim=-1)
            ce = self._ce(logits)
            ent = -(logp.exp() * logp).sum(-1)
            return torch.where(self.valid, ce, 0.0).sum() + torch.where(self.valid, ent, 0.0).sum()

    def step(self) -> float:
        out = self._fn()
        if self.device != "cpu":
            self.torch.cuda.synchronize()
        return float(out)

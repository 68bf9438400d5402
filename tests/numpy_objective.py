"""Plain-numpy (float64) reference of the SLM objective, written from the paper's rules, no jax.

Used by tests/test_objective.py to check rho_jax.objective: shift, CE, entropy, exact k, selection
with its tie rule, every score function, soft / prob weights, document scope, Goldfish masking, the loss and its analytic logits gradient.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


def shift_targets(tokens, seg):
    targets = np.zeros_like(tokens)
    targets[:, :-1] = tokens[:, 1:]
    valid = np.zeros(tokens.shape, bool)
    valid[:, :-1] = (seg[:, :-1] != 0) & (seg[:, 1:] == seg[:, :-1])
    return targets, valid


def log_softmax(logits):
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def cross_entropy(logits, targets):
    return -np.take_along_axis(log_softmax(logits), targets[..., None], -1)[..., 0]


def entropy(logits):
    logp = log_softmax(logits)
    return -(np.exp(logp) * logp).sum(-1)


def compute_k(n, ratio):
    """ceil(ratio * n) with ratio read as a 6-decimal fraction, in exact rational arithmetic."""
    return math.ceil(Fraction(round(ratio * 10**6), 10**6) * n)


def rank(score, valid):
    """Rank (0 = best) over the flattened array: valid first, non-NaN first, high score, low index."""
    s, v = score.reshape(-1).astype(np.float64), valid.reshape(-1)
    nan = np.isnan(s)
    order = np.lexsort((np.arange(s.size), -np.where(nan, 0.0, s), nan, ~v))  # last key is primary
    r = np.empty(s.size, np.int64)
    r[order] = np.arange(s.size)
    return r.reshape(score.shape)


def select_documents(score, valid, seg, ratio):
    """Whole (row, segment id) groups by the mean score of their valid tokens, ties to the first token."""
    docs = []  # (mean, first flat index, positions)
    for r in range(seg.shape[0]):
        for s in np.unique(seg[r]):
            cols = np.flatnonzero(seg[r] == s)
            v = cols[valid[r, cols]]
            if len(v):
                docs.append((score[r, v].astype(np.float64).mean(), r * seg.shape[1] + cols[0], r, v))
    docs.sort(key=lambda d: (np.isnan(d[0]), -np.nan_to_num(d[0]), d[1]))
    mask = np.zeros(valid.shape, bool)
    for _, _, r, v in docs[:compute_k(len(docs), ratio)]:
        mask[r, v] = True
    return mask


def goldfish_keep(tokens, seg, k, h):
    """False where the Goldfish rule drops position t: h same-segment context tokens and hash % k == 0."""
    keep = np.ones(tokens.shape, bool)
    if not k:
        return keep
    for r in range(tokens.shape[0]):
        for t in range(h - 1, tokens.shape[1] - 1):
            ctx = range(t - h + 1, t + 1)
            if seg[r, t + 1] == 0 or any(seg[r, i] != seg[r, t + 1] for i in ctx):
                continue
            x = 2166136261  # FNV-1a over 4 little-endian bytes per id, then MurmurHash3 fmix32
            for i in ctx:
                for byte in int(tokens[r, i]).to_bytes(4, "little"):
                    x = ((x ^ byte) * 16777619) % 2**32
            x ^= x >> 16
            x = (x * 0x85EBCA6B) % 2**32
            x ^= x >> 13
            x = (x * 0xC2B2AE35) % 2**32
            x ^= x >> 16
            keep[r, t] = x % k != 0
    return keep


def select_topk(score, valid, ratio, scope="batch", seg=None):
    if scope == "document":
        return select_documents(score, valid, seg, ratio)
    if scope == "sequence":
        return np.stack([select_topk(score[i:i + 1], valid[i:i + 1], ratio)[0] for i in range(len(score))])
    return (rank(score, valid) < compute_k(int(valid.sum()), ratio)) & valid


def scores(name, ce, ref_ce, ref_ent, valid, random_scores=None):
    if name == "excess":
        return ce - ref_ce
    if name == "reverse_excess":
        return ref_ce - ce
    if name == "target_loss":
        return ce
    if name == "ref_loss":
        return -ref_ce
    if name == "ref_entropy":
        return -ref_ent
    if name == "random":
        return random_scores
    r1, r2 = rank(-ref_ce, valid), rank(-ref_ent, valid)
    return -(np.maximum(r1, r2) if name == "ref_loss_and_entropy" else np.minimum(r1, r2))


def soft_weights(score, valid, temperature):
    s = np.where(valid, score / temperature, -np.inf)
    e = np.where(valid, np.exp(s - s[valid].max()), 0.0)
    return e / e.sum() * valid.sum()


def objective(logits, targets, valid, ref_ce, ref_ent, *, ratio, score, scope="batch", weighting="hard",
              temperature=1.0, random_scores=None, seg=None):
    """Returns (weight, loss, dloss/dlogits, stats) for loss = sum(ce * w) / sum(w)."""
    ce = cross_entropy(logits, targets)
    sc = scores(score, ce, ref_ce, ref_ent, valid, random_scores)
    if weighting in ("hard", "prob"):
        m = select_topk(sc, valid, ratio, scope, seg)
        threshold = sc[m].min()
        w = m.astype(np.float64)
        if weighting == "prob":  # p(target) on the selected tokens, mean 1 over them
            w = w * np.exp(-ce)
            w = w / w.sum() * m.sum()
    else:
        w = soft_weights(sc, valid, temperature)
        # the score whose weight is exactly 1: n * exp(s/T) / sum(exp(s/T)) = 1
        threshold = temperature * np.log(np.exp(sc[valid] / temperature).mean())
    loss = (ce * w).sum() / w.sum()
    onehot = np.eye(logits.shape[-1])[targets]
    grad = w[..., None] * (np.exp(log_softmax(logits)) - onehot) / w.sum()
    unsel = valid & (w == 0)
    stats = {
        "threshold": threshold,
        "n_valid": int(valid.sum()),
        "n_selected": int((w > 0).sum()),
        "selected_fraction": (w > 0).sum() / valid.sum(),
        "loss_all": ce[valid].mean(),
        "loss_unselected": ce[unsel].mean() if unsel.any() else 0.0,
        "ref_loss": ref_ce[valid].mean(),
        "excess_mean": (ce - ref_ce)[valid].mean(),
    }
    return w, loss, grad, stats

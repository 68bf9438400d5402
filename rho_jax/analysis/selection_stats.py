"""Selection diagnostics over the same rows at several checkpoints: which tokens SLM's top-k keeps by excess
loss (target CE minus reference CE), the kept fraction per group of tokens (a mixture component, a token
category), the Jaccard overlap of the kept sets between checkpoints, and the excess histogram.

Pure numpy over per-token arrays [K checkpoints, N rows, L positions]; the selection is
`objective.select_topk` over all N rows at once, as one batch."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from rho_jax import objective


def selection_masks(excess_KxNxL, valid_NxL, ratio: float) -> np.ndarray:
    """bool [K, N, L]: the top `ratio` of the valid tokens by excess at each checkpoint."""
    valid = jnp.asarray(valid_NxL, bool)
    return np.stack([np.asarray(objective.select_topk(jnp.asarray(e, jnp.float32), valid, ratio))
                     for e in np.asarray(excess_KxNxL)])


def fraction_by_group(mask, valid, groups) -> dict:
    """{group: selected / valid tokens of that group} (masks, valid and groups: arrays of one shape)."""
    mask, valid, groups = np.asarray(mask, bool), np.asarray(valid, bool), np.asarray(groups)
    out = {}
    for g in sorted(set(groups[valid].tolist())):
        in_g = valid & (groups == g)
        out[str(g)] = float(mask[in_g].sum() / in_g.sum())
    return out


def jaccard(a, b) -> float:
    """|a ∩ b| / |a ∪ b| of two boolean masks (1 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def excess_histogram(first, last, bins: int = 40) -> dict:
    """{edges, first, last}: counts of two sets of excess values over shared bins."""
    first, last = np.asarray(first, np.float64), np.asarray(last, np.float64)
    both = np.concatenate([first, last])
    edges = np.linspace(float(both.min()), float(both.max()) + 1e-9, bins + 1)
    return {"edges": edges.tolist(), "first": np.histogram(first, edges)[0].tolist(),
            "last": np.histogram(last, edges)[0].tolist()}


def plot_excess_histogram(hist: dict, labels: tuple[str, str], path: str) -> str:
    """Two step histograms of the excess loss (nats) on shared bins, as a PNG."""
    from rho_jax.analysis.plots import save_figure  # matplotlib stays lazy

    edges = np.asarray(hist["edges"])

    def draw(ax):
        for key, label in zip(("first", "last"), labels):
            ax.stairs(hist[key], edges, label=label)
        ax.axvline(0.0, color="grey", lw=0.8)

    return save_figure(path, draw, "Excess loss of the noisy-corpus tokens (target CE - reference CE)",
                   "excess loss (nats)", "tokens")

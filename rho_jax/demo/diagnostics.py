"""The demo's selection diagnostics (stage 8), on the first noisy-corpus rows of each mixture component
(config.analysis.category_rows in all) and the first seed's SLM run: at the base (the run's start) and every
kept checkpoint, the tokens SLM's top-k keeps by excess loss over these rows as one batch; the kept fraction
per component (math vs general) and per token category (the paper's rule on the CLM run's checkpoints, the
same rows); the Jaccard overlap of the kept sets between checkpoints; the excess histogram at start and end."""

from __future__ import annotations

import numpy as np

from rho_jax import analysis, checkpoint
from rho_jax.analysis import selection_stats
from rho_jax.data import rows as rows_lib
from rho_jax.data.inputs import heldout_rows
from rho_jax.demo.evaluation import tokens_at
from rho_jax.demo.stages import stage_config
from rho_jax.losses import token_losses
from rho_jax.metrics import read_metrics


def _rows(dc, cfg) -> tuple[dict, np.ndarray]:
    """The first rows of each component of the SLM run's prepared mixture, and the component of each row."""
    comps = rows_lib.components(cfg.data.prepared)
    per = max(1, dc.analysis.category_rows // len(comps))
    parts = [(name or "all", heldout_rows(cfg, str(d), per)) for name, d, _ in comps]
    ex = {k: np.concatenate([p[k] for _, p in parts]) for k in parts[0][1]}
    return ex, np.concatenate([np.full(len(p["tokens"]), name) for name, p in parts])


def _clm_categories(dc, m_cfg, ex, valid_NxL) -> np.ndarray:
    """str [N, L]: each valid token's category over the first seed's CLM checkpoints ('' elsewhere)."""
    cfg = stage_config(dc, "clm")
    steps = checkpoint.kept_steps(cfg.workdir)
    xs = [tokens_at(read_metrics(cfg.workdir), s, cfg) for s in steps]
    params = [checkpoint.restore_params(cfg.workdir, s, m_cfg) for s in steps]
    losses_KxNxL = token_losses(m_cfg, params, ex, dc.eval.batch_size)
    ok_NxL = valid_NxL & np.all(np.isfinite(losses_KxNxL), axis=0)
    out = np.full(valid_NxL.shape, "", dtype=object)
    if len(steps) >= 2:
        out[ok_NxL] = analysis.categorize(losses_KxNxL[:, ok_NxL], dc.analysis.threshold, xs=xs)
    return out


def selection_diagnostics(dc, m_cfg, base_params, plot_path: str) -> dict:
    """{checkpoints, by_component, by_category, jaccard, histogram}; the histogram plotted at plot_path."""
    cfg = stage_config(dc, "slm")
    ex, comp_N = _rows(dc, cfg)
    ref_cfg, ref_params = checkpoint.load_weights(cfg.init.reference, "reference")
    ref_ce_NxL = token_losses(ref_cfg, [ref_params], ex, dc.eval.batch_size)[0]
    steps = checkpoint.kept_steps(cfg.workdir)
    params = [base_params] + [checkpoint.restore_params(cfg.workdir, s, m_cfg) for s in steps]
    ce_KxNxL = token_losses(m_cfg, params, ex, dc.eval.batch_size)
    valid_NxL = np.isfinite(ref_ce_NxL) & np.all(np.isfinite(ce_KxNxL), axis=0)
    excess_KxNxL = np.where(valid_NxL, ce_KxNxL - ref_ce_NxL, 0.0)
    masks = selection_stats.selection_masks(excess_KxNxL, valid_NxL, float(cfg.objective.ratio))
    labels = ["start"] + [f"step {s}" for s in steps]
    comp_NxL = np.broadcast_to(comp_N[:, None], valid_NxL.shape)
    cats_NxL = _clm_categories(dc, m_cfg, ex, valid_NxL)
    has_cat = valid_NxL & (cats_NxL != "")
    hist = selection_stats.excess_histogram(excess_KxNxL[0][valid_NxL], excess_KxNxL[-1][valid_NxL])
    selection_stats.plot_excess_histogram(hist, (labels[0] + " (the base)", labels[-1]), plot_path)
    return {
        "rows": {str(c): int(np.sum(comp_N == c)) for c in sorted(set(comp_N.tolist()))},
        "checkpoints": labels,
        "by_component": {lb: selection_stats.fraction_by_group(m, valid_NxL, comp_NxL) for lb, m in zip(labels, masks)},
        "by_category": {lb: selection_stats.fraction_by_group(m, has_cat, cats_NxL) for lb, m in zip(labels, masks)},
        "jaccard": {**{f"{a} -> {b}": selection_stats.jaccard(masks[i], masks[i + 1])
                       for i, (a, b) in enumerate(zip(labels, labels[1:]))},
                    f"{labels[0]} -> {labels[-1]}": selection_stats.jaccard(masks[0], masks[-1])},
        "histogram": hist,
    }

"""The paper's token categories (Rho-1 §2.1 / App. D) over K checkpoints.

Fit a least-squares line to each token's loss over the checkpoints; ΔL = fitted(last) − fitted(first).
ΔL < −threshold → H→L; ΔL > threshold → L→H; otherwise the final loss decides: ≤ the mean final loss
over all tokens considered → L→L, else H→H.
"""

from __future__ import annotations

import numpy as np

from rho_jax.losses import token_losses

CATEGORIES = ("H→H", "L→H", "H→L", "L→L")
PAPER_SPLIT = {"H→H": 0.11, "L→H": 0.12, "H→L": 0.26, "L→L": 0.51}


def loss_delta(losses_KxT: np.ndarray, xs=None) -> np.ndarray:
    """ΔL = fitted(x_last) − fitted(x_first) of a least-squares line per token (column): f64 [T]."""
    y = np.asarray(losses_KxT, np.float64)
    if y.ndim != 2 or y.shape[0] < 2:
        raise ValueError(f"losses must be [K >= 2 checkpoints, T tokens]; got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("losses contain NaN/inf; keep only valid positions (finite at every checkpoint)")
    x = np.arange(y.shape[0], dtype=np.float64) if xs is None else np.asarray(xs, np.float64)
    if x.shape != (y.shape[0],) or np.ptp(x) == 0:
        raise ValueError(f"xs must be K={y.shape[0]} distinct values (checkpoint steps or tokens); got {xs}")
    xc = x - x.mean()
    slope = xc @ (y - y.mean(axis=0)) / (xc @ xc)
    return slope * (x[-1] - x[0])


def categorize(losses_KxT: np.ndarray, threshold: float = 0.2, xs=None) -> np.ndarray:
    """The paper's category of each token (column of losses [K checkpoints, T tokens]): str array [T].

    ΔL is rounded to 1e-9 so an exact ±threshold stays in the middle group (the rule is strict)
    despite float rounding in the fit.
    """
    delta = np.round(loss_delta(losses_KxT, xs), 9)
    final = np.asarray(losses_KxT, np.float64)[-1]
    low_final = final <= final.mean()
    return np.where(delta < -threshold, "H→L", np.where(delta > threshold, "L→H",
                                                           np.where(low_final, "L→L", "H→H")))


def category_split(categories) -> dict:
    """{category: fraction} over all four categories (they sum to 1)."""
    cats = np.asarray(categories)
    if cats.size == 0:
        raise ValueError("no tokens to split into categories")
    unknown = set(np.unique(cats)) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown categories {sorted(unknown)}; expected {CATEGORIES}")
    return {c: float(np.mean(cats == c)) for c in CATEGORIES}


def checkpoint_categories(cfg, params_list, examples: dict, xs, threshold: float = 0.2,
                          batch_size: int = 8) -> dict:
    """{split: {category: fraction}, tokens: T} of the tokens of packed examples ({tokens, segment_ids,
    positions}: [N, L]) over K checkpoints (params_list, at x = xs: steps or processed tokens).

    T counts the target tokens valid at every checkpoint (all of them, as the checkpoints share the rows)."""
    losses_KxT = token_losses(cfg, params_list, examples, batch_size).reshape(len(params_list), -1)
    losses_KxT = losses_KxT[:, np.all(np.isfinite(losses_KxT), axis=0)]
    return {"split": category_split(categorize(losses_KxT, threshold, xs=xs)), "tokens": int(losses_KxT.shape[1])}

"""Plots of metrics rows and category splits, as PNG files.

matplotlib's object API with the Agg canvas: no global backend state. matplotlib is imported lazily on
purpose: it is slow to import and only the plots need it.
"""

from __future__ import annotations

import numpy as np

from rho_jax.analysis.categories import CATEGORIES, PAPER_SPLIT


def save_figure(path: str, draw, title: str, xlabel: str, ylabel: str) -> str:
    """One 640x400 PNG at `path`: `draw(ax)` plots, then title, axis labels, grid and legend. Returns `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy on purpose: see the module docstring
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    draw(ax)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _as_runs(rows) -> dict:
    return rows if isinstance(rows, dict) else {"run": rows}


def _series(rows, key, x_keys=("tokens_processed", "step")):
    have = [r for r in rows if isinstance(r.get(key), (int, float))]
    x_key = next((k for k in x_keys if have and all(k in r for r in have)), "step")
    return [r.get(x_key, i) for i, r in enumerate(have)], [r[key] for r in have], x_key


def _plot_lines(runs: dict, key: str, path: str, title: str, ylabel: str, x_keys) -> str:
    lines = {name: _series(rows, key, x_keys) for name, rows in runs.items()}
    lines = {n: s for n, s in lines.items() if s[0]}
    if not lines:
        present = sorted({k for rows in runs.values() for r in rows for k in r})
        raise ValueError(f"no metrics row has {key!r}; keys present: {present}")
    x_key = next(iter(lines.values()))[2]

    def draw(ax):
        for name, (x, y, _) in lines.items():
            ax.plot(x, y, marker="o", markersize=3, label=name)

    return save_figure(path, draw, title, x_key.replace("_", " "), ylabel)


def plot_heldout(runs: dict, path: str, key: str = "eval_loss") -> str:
    """Held-out loss vs tokens processed, one line per run ({name: metrics rows})."""
    return _plot_lines(runs, key, path, "Held-out loss", f"{key} (nats/token)", ("tokens_processed", "step"))


def plot_heldout_bands(groups: dict, path: str, key: str = "eval_loss") -> str:
    """Held-out loss vs tokens processed: per group ({name: [metrics rows of each seed]}) the mean over its
    seeds as a line and mean ± sample std as a band (the seeds share their eval points)."""
    curves = {}
    for name, seed_rows in groups.items():
        series = [_series(rows, key, ("tokens_processed", "step")) for rows in seed_rows]
        if not series or not series[0][0]:
            continue
        if any(s[0] != series[0][0] for s in series):
            raise ValueError(f"{name}: the seeds' {key!r} points are at different x; a band needs the same points")
        y_SxP = np.asarray([s[1] for s in series], dtype=np.float64)
        std_P = y_SxP.std(axis=0, ddof=1) if len(series) > 1 else np.zeros(y_SxP.shape[1])
        curves[name] = (series[0][0], y_SxP.mean(axis=0), std_P, len(series), series[0][2])
    if not curves:
        raise ValueError(f"no metrics row has {key!r}")

    def draw(ax):
        for name, (x, mean_P, std_P, n, _) in curves.items():
            line, = ax.plot(x, mean_P, marker="o", markersize=3, label=f"{name} (mean of {n})")
            ax.fill_between(x, mean_P - std_P, mean_P + std_P, color=line.get_color(), alpha=0.2, linewidth=0)

    x_key = next(iter(curves.values()))[4]
    return save_figure(path, draw, "Held-out loss (band: ± std over seeds)", x_key.replace("_", " "),
                   f"{key} (nats/token)")


def plot_selected_fraction(rows, path: str) -> str:
    """Selected fraction of valid target tokens per logged step (rows, or {name: rows})."""
    return _plot_lines(_as_runs(rows), "selected_fraction", path, "Selected token fraction", "fraction", ("step",))


def plot_selected_vs_unselected(rows, path: str) -> str:
    """Training loss on selected tokens ('loss'), unselected ('loss_unselected') and all ('loss_all')."""
    runs = {k: rows for k in ("loss", "loss_unselected", "loss_all")}
    series = {k: _series(rows, k, ("step",)) for k in runs}
    series = {k: s for k, s in series.items() if s[0]}
    if not series:
        raise ValueError("no metrics row has 'loss' / 'loss_unselected' / 'loss_all'")

    def draw(ax):
        for name, (x, y, _) in series.items():
            ax.plot(x, y, marker="o", markersize=3, label={"loss": "selected (loss)"}.get(name, name))

    return save_figure(path, draw, "Training loss: selected vs unselected tokens", "step", "CE (nats/token)")


def plot_categories(split: dict, path: str, paper: dict = PAPER_SPLIT) -> str:
    """Bar chart of the category split next to the paper's."""
    def draw(ax):
        x = np.arange(len(CATEGORIES))
        ax.bar(x - 0.2, [split.get(c, 0.0) for c in CATEGORIES], 0.4, label="ours")
        ax.bar(x + 0.2, [paper[c] for c in CATEGORIES], 0.4, label="Rho-1 paper")
        ax.set_xticks(x, CATEGORIES)

    return save_figure(path, draw, "Token categories over checkpoints", "category", "fraction of tokens")

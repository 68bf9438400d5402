"""Analysis of training runs: the paper's token categories over checkpoints, the selected-token page,
plots, and `rho-jax analyze`. One core serves `rho-jax analyze` and the demo's report.

    categories   ΔL over checkpoints -> H→H / L→H / H→L / L→L (Rho-1 §2.1 / App. D)
    page         the selected-token HTML page (SLM's top-k over the excess loss)
    plots        PNG plots of metrics rows and category splits
    runs         reading workdirs: runs and their recorded configs (checkpoints: rho_jax.checkpoint)
    analyze      the `rho-jax analyze` command
Per-token losses over packed examples live in rho_jax.losses (evaluation uses them too).
"""

from rho_jax.analysis.analyze import command
from rho_jax.analysis.categories import (CATEGORIES, PAPER_SPLIT, categorize, category_split, checkpoint_categories,
                                         loss_delta)
from rho_jax.analysis.page import selected_html, selection_page, token_text
from rho_jax.analysis.plots import (plot_categories, plot_heldout, plot_heldout_bands, plot_selected_fraction,
                                    plot_selected_vs_unselected)
from rho_jax.analysis.runs import discover_runs, run_config
from rho_jax.losses import token_losses

__all__ = ["CATEGORIES", "PAPER_SPLIT", "categorize", "category_split", "checkpoint_categories", "command",
           "discover_runs", "loss_delta", "plot_categories", "plot_heldout",
           "plot_heldout_bands", "plot_selected_fraction", "plot_selected_vs_unselected", "run_config",
           "selected_html", "selection_page", "token_losses", "token_text"]

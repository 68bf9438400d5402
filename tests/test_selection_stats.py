"""Selection diagnostics on hand-made arrays: top-k per checkpoint, kept fraction by group, Jaccard, histogram."""

import numpy as np
import pytest

from rho_jax.analysis import selection_stats


def test_masks_fractions_jaccard_and_histogram_by_hand():
    valid = np.array([[True, True, True, False], [True, True, True, True]])
    excess = np.array([[[3.0, 2.0, 1.0, 9.0], [0.0, -1.0, 5.0, 4.0]],   # keeps 5, 4, 3, 2 (9 is not valid)
                       [[0.0, 1.0, 2.0, 9.0], [3.0, 4.0, 5.0, 6.0]]])  # keeps 6, 5, 4, 3
    masks = selection_stats.selection_masks(excess, valid, 0.5)  # k = ceil(0.5 * 7) = 4
    assert masks.sum(axis=(1, 2)).tolist() == [4, 4] and not masks[:, 0, 3].any()
    assert masks[0].tolist() == [[True, True, False, False], [False, False, True, True]]
    groups = np.array([["math"] * 4, ["general"] * 4])
    assert selection_stats.fraction_by_group(masks[0], valid, groups) == {"general": 0.5, "math": pytest.approx(2 / 3)}
    assert selection_stats.jaccard(masks[0], masks[1]) == pytest.approx(2 / 6)  # {0,0}{0,1}{1,2}{1,3} vs {1,*}
    assert selection_stats.jaccard(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    h = selection_stats.excess_histogram([0.0, 1.5], [1.5, 2.0, 2.0], bins=2)  # edges 0, 1, 2
    assert h["first"] == [1, 1] and h["last"] == [0, 3] and len(h["edges"]) == 3


def test_histogram_plot_is_written(tmp_path):
    h = selection_stats.excess_histogram(np.random.default_rng(0).normal(size=100), np.zeros(10))
    path = selection_stats.plot_excess_histogram(h, ("start", "end"), str(tmp_path / "h.png"))
    assert open(path, "rb").read(4) == b"\x89PNG"

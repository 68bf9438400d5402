"""The demo's statistics over seeds: mean ± sample std of a number, and the paired difference of two arms
(same seed = same rows in the same order) with a two-sided Student-t interval."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as scipy_stats


def mean_std(values) -> dict:
    """{mean, std (sample, ddof=1; 0 for one value), n, values} of the numbers in `values` (None skipped);
    mean and std None when there is none."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return {"mean": None, "std": None, "n": 0, "values": []}
    arr_N = np.asarray(xs)
    return {"mean": float(arr_N.mean()), "std": float(arr_N.std(ddof=1)) if len(xs) > 1 else 0.0, "n": len(xs),
            "values": xs}


def paired_interval(a, b, level: float = 0.95) -> dict:
    """a - b per seed (a[i], b[i] of the same seed): {diffs, mean, std, n, lo, hi, level}, the interval
    mean ± t_{(1+level)/2, n-1} · std / sqrt(n); lo and hi None below two pairs (no spread to measure)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same seeds: {len(a)} vs {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b) if x is not None and y is not None]
    out = {**mean_std(diffs), "diffs": diffs, "level": level, "lo": None, "hi": None}
    out.pop("values")
    n = out["n"]
    if n >= 2:
        half = float(scipy_stats.t.ppf((1 + level) / 2, n - 1)) * out["std"] / math.sqrt(n)
        out["lo"], out["hi"] = out["mean"] - half, out["mean"] + half
    return out


def excludes_zero(interval: dict) -> bool:
    """Whether a paired interval lies wholly on one side of 0 (False without an interval)."""
    return interval["lo"] is not None and (interval["lo"] > 0 or interval["hi"] < 0)

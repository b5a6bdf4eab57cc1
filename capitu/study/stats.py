"""The statistics a study reports, from scipy.stats: summaries over seeds, the paired t-test
with the confidence interval of the mean difference, and the overlap rule for timings."""

from __future__ import annotations

import math
import statistics

from scipy import stats as scipy_stats

CONFIDENCE = 0.95


def mean(values: list[float]) -> float:
    return statistics.fmean(values)


def std(values: list[float]) -> float:
    """Sample standard deviation (n - 1); 0 for a single value."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def paired_t_test(a: list[float], b: list[float]) -> dict | None:
    """Paired t-test of mean(a - b) = 0 over matched pairs (here: the same seed, so the same training batches), with
    the 95% confidence interval of the mean difference. None with fewer than two pairs."""
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    if len(a) < 2:
        return None
    differences = [x - y for x, y in zip(a, b)]
    if all(d == differences[0] for d in differences):  # no spread: scipy gives nan; the answer is exact
        m = differences[0]
        return {"mean_difference": m, "t": 0.0 if m == 0 else math.copysign(math.inf, m), "df": len(a) - 1,
                "p": 1.0 if m == 0 else 0.0, "ci": [m, m]}
    result = scipy_stats.ttest_rel(a, b)
    interval = result.confidence_interval(CONFIDENCE)
    return {"mean_difference": mean(differences), "t": float(result.statistic), "df": int(result.df),
            "p": float(result.pvalue), "ci": [float(interval.low), float(interval.high)]}


def spread(values: list[float]) -> dict:
    """Median and range of repeated timings."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": list(values)}


def compare_spreads(a: dict, b: dict) -> str:
    """'faster', 'slower' or 'within noise': a against b, by whether their ranges overlap."""
    if a["min"] > b["max"]:
        return "faster"
    if a["max"] < b["min"]:
        return "slower"
    return "within noise"

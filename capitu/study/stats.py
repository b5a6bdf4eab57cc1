"""The statistics a study reports, from scipy.stats: summaries over seeds, the paired t-test
with the confidence interval of the mean difference, and the paired test of timings."""

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


def summary(values: list[float]) -> dict:
    """Mean, sample standard deviation and the values, as a study reports a measure over seeds."""
    return {"mean": mean(values), "std": std(values), "values": list(values)}


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


SPEED_ALPHA, SPEED_MARGIN = 0.05, 0.05


def compare_rates(a: list[float], b: list[float]) -> dict:
    """Timings a against b, round by round (round r of each ran close in time, so a slow spell of
    the machine falls on both): the ratio is the geometric mean of a_r / b_r, and "faster" or
    "slower" needs both a paired t-test on log a_r - log b_r with p < SPEED_ALPHA and a ratio
    at least SPEED_MARGIN away from 1; anything else is "no difference shown"."""
    test = paired_t_test([math.log(x) for x in a], [math.log(y) for y in b])
    ratio = math.exp(mean([math.log(x / y) for x, y in zip(a, b)]))
    p = test["p"] if test else None
    verdict = "no difference shown"
    if p is not None and p < SPEED_ALPHA and abs(ratio - 1) >= SPEED_MARGIN:
        verdict = "faster" if ratio > 1 else "slower"
    return {"ratio": ratio, "p": p, "rounds": len(a), "verdict": verdict}

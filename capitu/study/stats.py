"""The statistics a study reports, from scipy.stats: summaries over seeds, the paired t-test
with the confidence interval of the mean difference, the paired test of timings, and Holm's
adjustment of the p-values of a family of tests (every variant against the baseline)."""

from __future__ import annotations

import math
import statistics
from typing import Iterable

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


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of m p-values (several variants, each against the baseline on one
    measure), so that calling each adjusted p below α a finding keeps the chance of any false finding in the family
    at most α: the k-th smallest (k = 0, 1, ...) times m - k, never below the one before it, at most 1. (scipy has
    Benjamini-Hochberg's false discovery rate, not this.)"""
    adjusted, running = [0.0] * len(p_values), 0.0
    for k, i in enumerate(sorted(range(len(p_values)), key=p_values.__getitem__)):
        running = max(running, min(1.0, (len(p_values) - k) * p_values[i]))
        adjusted[i] = running
    return adjusted


def adjust_family(tests: Iterable[dict | None]) -> None:
    """Give each test of one family (dicts with "p"; None for no test) its "p_holm" over those with a p."""
    tests = [test for test in tests if test is not None]
    tested = [test for test in tests if test.get("p") is not None]
    for test, p in zip(tested, holm([test["p"] for test in tested])):
        test["p_holm"] = p
    for test in tests:
        test.setdefault("p_holm", None)


def spread(values: list[float]) -> dict:
    """Median and range of repeated timings."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": list(values)}


SPEED_ALPHA, SPEED_MARGIN = 0.05, 0.05


def compare_rates(a: list[float], b: list[float]) -> dict:
    """Timings a against b, round by round (round r of each ran close in time, so a slow spell of
    the machine falls on both): the ratio is the geometric mean of a_r / b_r, and p a paired
    t-test on log a_r - log b_r."""
    test = paired_t_test([math.log(x) for x in a], [math.log(y) for y in b])
    ratio = math.exp(mean([math.log(x / y) for x, y in zip(a, b)]))
    return {"ratio": ratio, "p": test["p"] if test else None, "rounds": len(a)}


def rate_verdict(ratio: float, p: float | None) -> str:
    """"faster" or "slower" needs both p < SPEED_ALPHA (Holm-adjusted, in a study) and a ratio at least SPEED_MARGIN
    away from 1; anything else is "no difference shown"."""
    if p is not None and p < SPEED_ALPHA and abs(ratio - 1) >= SPEED_MARGIN:
        return "faster" if ratio > 1 else "slower"
    return "no difference shown"

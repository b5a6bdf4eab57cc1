import math

import pytest

from capitu.study.stats import adjust_family, compare_rates, holm, mean, paired_t_test, rate_verdict, spread, std


def test_paired_t_test_hand_computed():
    # differences -0.1, -0.3, -0.2: mean -0.2, sd 0.1, t = -0.2 / (0.1 / sqrt 3) = -3.4641;
    # with 2 degrees of freedom P(|T| >= t) = 1 - t / sqrt(2 + t^2) (closed form)
    result = paired_t_test([1.0, 2.0, 3.0], [1.1, 2.3, 3.2])
    assert result["t"] == pytest.approx(-2 * math.sqrt(3))
    assert result["df"] == 2
    assert result["p"] == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(2 + 12))
    # 95% interval: mean ± t(0.975, 2) * sd / sqrt(n), t(0.975, 2) = 4.302653 (tables)
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert result["ci"] == pytest.approx([-0.2 - half, -0.2 + half], abs=1e-6)
    assert paired_t_test([1.0], [2.0]) is None


def test_paired_t_test_one_degree_is_the_cauchy_tail():
    # differences 1 and 3: mean 2, sd sqrt 2, t = 2 / (sqrt 2 / sqrt 2) = 2; df 1: p = 1 - 2/pi atan(t)
    result = paired_t_test([2.0, 4.0], [1.0, 1.0])
    assert result["t"] == pytest.approx(2.0)
    assert result["p"] == pytest.approx(1 - 2 / math.pi * math.atan(2.0))


def test_paired_t_test_without_spread_is_exact():
    assert paired_t_test([1.0, 2.0], [1.0, 2.0])["p"] == 1.0
    constant = paired_t_test([2.0, 3.0], [1.0, 2.0])
    assert constant["p"] == 0.0 and constant["ci"] == [1.0, 1.0]


def test_mean_and_sample_std():
    assert mean([1, 2, 3, 4]) == 2.5
    assert std([2, 4, 4, 4, 5, 5, 7, 9]) == pytest.approx(math.sqrt(32 / 7))
    assert std([3.0]) == 0.0


def test_timings_differ_only_with_a_significant_paired_test_and_a_margin():
    base = spread([100.0, 110.0, 105.0])
    assert base["median"] == 105.0 and (base["min"], base["max"]) == (100.0, 110.0)
    baseline = [100.0, 110.0, 105.0]
    # round by round 1.20x, 1.19x, 1.21x: the log ratios barely vary, so the test is decisive
    faster = compare_rates([120.0, 131.0, 127.0], baseline)
    logs = [math.log(a / b) for a, b in zip([120.0, 131.0, 127.0], baseline)]
    t = mean(logs) / (std(logs) / math.sqrt(3))
    assert faster["ratio"] == pytest.approx(math.exp(mean(logs)))
    assert faster["p"] == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t))  # two-sided, 2 degrees of freedom

    def verdict(rates):
        test = compare_rates(rates, baseline)
        return rate_verdict(test["ratio"], test["p"])

    assert verdict([120.0, 131.0, 127.0]) == "faster" and verdict([83.0, 92.0, 88.0]) == "slower"
    # the same 1.2x on average, but one round against it: not shown (the overlap rule would also say noise)
    assert verdict([150.0, 99.0, 131.0]) == "no difference shown"
    # consistent but tiny (2%): below the margin
    assert verdict([102.0, 112.2, 107.1]) == "no difference shown"
    assert compare_rates([120.0], [100.0])["p"] is None and rate_verdict(1.5, None) == "no difference shown"


def test_holm_hand_computed():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04, raised to the 0.06 before it
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # at most 1
    assert holm([0.02]) == [0.02] and holm([]) == []  # a family of one is its own test
    # a family: tests without a p (one seed) count in nothing and get None
    tests = [{"p": 0.04}, None, {"p": None}, {"p": 0.01}]
    adjust_family(tests)
    assert [t and t["p_holm"] for t in tests] == [pytest.approx(0.04), None, None, pytest.approx(0.02)]

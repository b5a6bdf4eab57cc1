import math

import pytest

from capitu.study.stats import mean, paired_t_test, regularized_beta, std, t_two_sided_p


@pytest.mark.parametrize("t", [0.0, 0.1, 1.0, 3.0, 12.706])
def test_t_with_one_degree_is_the_cauchy_tail(t):
    assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(abs(t)), abs=1e-12)


@pytest.mark.parametrize("t", [0.5, 2.0, 4.303])
def test_t_with_two_degrees_closed_form(t):
    assert t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-12)


@pytest.mark.parametrize("t, df", [(2.776445, 4), (2.228139, 10), (2.042272, 30)])
def test_t_table_critical_values_give_five_percent(t, df):
    assert t_two_sided_p(t, df) == pytest.approx(0.05, abs=1e-6)


def test_regularized_beta_symmetry_and_uniform_case():
    assert regularized_beta(0.3, 1, 1) == pytest.approx(0.3)
    for x, a, b in [(0.2, 2.5, 0.5), (0.9, 3, 7), (0.5, 0.5, 0.5)]:
        assert regularized_beta(x, a, b) + regularized_beta(1 - x, b, a) == pytest.approx(1.0, abs=1e-12)


def test_paired_t_test_hand_computed():
    # differences -0.1, -0.3, -0.2: mean -0.2, sd 0.1, t = -0.2 / (0.1 / sqrt 3) = -3.4641
    result = paired_t_test([1.0, 2.0, 3.0], [1.1, 2.3, 3.2])
    assert result["t"] == pytest.approx(-2 * math.sqrt(3))
    assert result["df"] == 2
    assert result["p"] == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(2 + 12))
    assert paired_t_test([1.0], [2.0]) is None
    assert paired_t_test([1.0, 2.0], [1.0, 2.0])["p"] == 1.0


def test_mean_and_sample_std():
    assert mean([1, 2, 3, 4]) == 2.5
    assert std([2, 4, 4, 4, 5, 5, 7, 9]) == pytest.approx(math.sqrt(32 / 7))
    assert std([3.0]) == 0.0

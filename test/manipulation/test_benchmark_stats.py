"""The manipulation benchmark's statistics (scipy.stats underneath) against textbook values
worked out by hand, so a wrong call into scipy (one-sided, wrong n, the other count) fails."""
import math

import pytest

pytest.importorskip('scipy')

from qail_ros.manipulation.benchmark import binomial_se, mcnemar_exact  # noqa: E402


def test_mcnemar_exact_textbook_values():
    # 2 * P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), summed by hand:
    # b=1, c=9: 2 * (1 + 10) / 2**10
    assert mcnemar_exact(1, 9) == pytest.approx(0.021484375, abs=1e-15)
    # b=5, c=10: 2 * (1 + 15 + 105 + 455 + 1365 + 3003) / 2**15
    assert mcnemar_exact(5, 10) == pytest.approx(0.3017578125, abs=1e-15)
    # b=0, c=5: 2 / 2**5
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625, abs=1e-15)
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)          # two-sided
    assert mcnemar_exact(2, 2) == 1.0 and mcnemar_exact(0, 0) == 1.0
    with pytest.raises(ValueError, match='>= 0'):
        mcnemar_exact(-1, 3)


def test_binomial_standard_error_textbook_values():
    assert binomial_se(0.5, 100) == pytest.approx(0.05, abs=1e-15)      # sqrt(.25 / 100)
    assert binomial_se(0.8, 50) == pytest.approx(math.sqrt(0.16 / 50), abs=1e-15)
    assert binomial_se(1.0, 20) == 0.0
    assert math.isnan(binomial_se(0.5, 0))

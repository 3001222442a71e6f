"""Accuracy statistics: paired differences and McNemar's exact test (fastvit_jax/util/stats.py)."""

import numpy as np


def test_mcnemar_exact_against_the_binomial_test():
    """McNemar's exact p-value is the two-sided binomial test of the discordant counts at p = 1/2."""
    from scipy.stats import binomtest

    from fastvit_jax.util.stats import mcnemar_exact, paired_difference

    for a_only, b_only in [(0, 0), (3, 0), (12, 4), (40, 55), (7, 7), (1, 20)]:
        want = binomtest(min(a_only, b_only), a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
        assert abs(mcnemar_exact(a_only, b_only) - want) < 1e-12, (a_only, b_only)
    a = np.array([1, 1, 0, 1, 0, 1, 1, 1], bool)
    b = np.array([1, 0, 0, 0, 0, 1, 0, 1], bool)
    d = paired_difference(a, b)
    assert (d["a_only"], d["b_only"]) == (3, 0) and abs(d["p_mcnemar"] - 0.25) < 1e-12

"""PROPOSITION 23 — A*PO-style regression (``astar_po``) at finite K: the free minimiser is
f*_K(y) = r(y)/α − E[log mean_j e^{r(y_j)/α} | y in the tuple] (``theory_atlas.astar_optimum``), which tends to NCA's
target r/α − log Z as K → ∞ with K·(f*_K − target) → c_A(y) = 1 − e^{r(y)/α}/Z + Var_μ(e^{r/α})/(2Z²).

Tolerances: 1e-6 is the contract's accuracy of ``optimum`` (the loss is quadratic, so Newton ends in one step;
observed ~1e-15). The two exact routes to f*_K (enumeration of the K − 1 other draws, and Frullani's integral
evaluated by mpmath at 30 digits) agree to 1e-10. The 1/K check is Proposition 3's: the error
E(K) = max_y |K·gap_K − c_A| must halve when K doubles (ratio 0.5 ± 0.1, the O(1/K²) remainder), at K ≫ Var/Z².
"""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from strategies import alphas, betas, instances, prop_settings, solve, torch_one_thread  # noqa: F401 (autouse fixture)

from nca_lab import theory, theory_atlas as TA

TOL = 1e-6


@prop_settings(30)
@given(instances(), alphas, betas, st.sampled_from([2, 3, 4]))
def test_prop_23(inst, alpha, beta, K):
    mu, r = inst
    f = solve("astar_po", mu, r, K, alpha=alpha, beta=beta)
    np.testing.assert_allclose(f, TA.astar_optimum(mu, r, alpha, K), atol=TOL, rtol=0)
    if K == 2:  # biased at small K (Jensen: E log mean ≤ log E mean), unless r is constant
        assert np.abs(f - TA.astar_optimum(mu, r, alpha)).max() > 1e-3


@prop_settings(5)
@given(instances(max_y=4, min_gap=0.3, min_mu=0.05), st.floats(1.0, 3.0), st.sampled_from([3, 6]))
def test_prop_23_two_exact_routes(inst, alpha, K):
    mu, r = inst
    np.testing.assert_allclose(TA.astar_optimum(mu, r, alpha, K, method="integral"),
                               TA.astar_optimum(mu, r, alpha, K, method="enumerate"), atol=1e-10, rtol=0)


@prop_settings(5)
@given(instances(max_y=4, min_gap=0.3, min_mu=0.05), st.floats(1.0, 3.0))
def test_prop_23_K_times_gap_tends_to_c_A(inst, alpha):
    mu, r = inst
    a = np.exp(r / alpha - (r / alpha).max())
    rel_var = float(np.sum(mu * (a / np.dot(mu, a) - 1) ** 2))
    K1 = int(200 * (1 + rel_var))
    c = TA.astar_gap_coefficient(mu, r, alpha)
    limit = TA.astar_optimum(mu, r, alpha)
    np.testing.assert_allclose(limit, theory.nca_optimum(mu, r, alpha), atol=1e-12, rtol=0)  # NCA's target
    err = [np.abs(K * (TA.astar_optimum(mu, r, alpha, K, method="integral") - limit) - c).max() for K in (K1, 2 * K1)]
    assert err[0] < 0.1 * max(1.0, np.abs(c).max())
    assert 0.4 < err[1] / err[0] < 0.6
    # half of NCA's variance term (Proposition 3's c(y) = 1 − a/Z + Var/Z²)
    np.testing.assert_allclose(theory.nca_gap_coefficient(mu, r, alpha) - c, rel_var / 2, atol=1e-12, rtol=0)

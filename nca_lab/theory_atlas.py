"""Closed forms of the loss atlas (Propositions 21–24), float64 numpy, one context ``[Y]``.

Conventions as in :mod:`nca_lab.theory`: μ over a finite response set Y with full support, rewards r,
a = e^{r/α}, Z = E_μ a. f denotes the implicit reward r_θ = β(log π − log μ) ("free" parameterisation);
where a minimiser is only defined up to a constant C the functions say which representative they return.

- Proposition 21 (EXO): :func:`exo_pair_y2_optimum` (|Y| = 2, K = 2: the gap f*_1 − f*_2 for any ε).
- Proposition 22 (BT pairs): :func:`bco_pair_bt_optimum`, :func:`sppo_bt_optimum`, :func:`apo_zero_bt_direction`,
  :func:`discopop_pair_loss`, :func:`discopop_y2_optimum`.
- Proposition 23 (A*PO at finite K): :func:`astar_optimum` (exact, enumeration or a one-dimensional integral),
  :func:`astar_gap_coefficient`.
- Proposition 24 (Plackett–Luce): the minimiser is r + C (no helper needed); ``nca_lab.toy.atlas`` computes
  the population loss under Plackett–Luce rankings.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize
from scipy.special import expit, log_expit, logsumexp

from nca_lab.theory import bt_win_probability, n_multisets

__all__ = [
    "exo_pair_y2_optimum",
    "bco_pair_bt_optimum",
    "sppo_bt_optimum",
    "apo_zero_bt_direction",
    "discopop_pair_loss",
    "discopop_y2_optimum",
    "astar_optimum",
    "astar_optimum_enumerated",
    "astar_optimum_integral",
    "astar_gap_coefficient",
]


def _row(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 2 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a finite vector of shape [Y], Y >= 2; got shape {arr.shape}")
    return arr


def _mu_r(mu, r):
    mu, r = _row(mu, "mu"), _row(r, "r")
    if mu.shape != r.shape:
        raise ValueError(f"shape mismatch: mu {mu.shape}, r {r.shape}")
    if np.any(mu <= 0) or abs(mu.sum() - 1) > 1e-9:
        raise ValueError("mu must be a probability vector with full support")
    return mu, r


# ----------------------------------------------------------------------------------------------
# Proposition 21: EXO
# ----------------------------------------------------------------------------------------------


def exo_pair_y2_optimum(dr: float, alpha: float, eps: float) -> float:
    """|Y| = 2, K = 2, labels softmax(R/α) smoothed with ε: the population minimiser's gap f*_1 − f*_2.

    Only the draw {y_1, y_2} depends on f (an identical pair has p = q = (½, ½)), so f*_1 − f*_2 = log(q_1/q_2)
    with q_1 = (1 − ε)σ(Δ/α) + ε σ(−Δ/α), Δ = r_1 − r_2. ε = 0 gives Δ/α (InfoNCA's r/α + C).
    """
    w1, w2 = expit(dr / alpha), expit(-dr / alpha)
    q1 = (1 - eps) * w1 + eps * w2
    q2 = (1 - eps) * w2 + eps * w1
    return float(np.log(q1) - np.log(q2))


# ----------------------------------------------------------------------------------------------
# Proposition 22: pairwise variants under Bradley–Terry pairs from μ × μ
# ----------------------------------------------------------------------------------------------


def bco_pair_bt_optimum(mu, r) -> np.ndarray:
    """``bco_pair`` with BT pairs from μ×μ: f*(y) = logit p_win(y) (unique; no free constant)."""
    mu, r = _mu_r(mu, r)
    p = bt_win_probability(mu, r)
    return np.log(p) - np.log1p(-p)


def sppo_bt_optimum(mu, r, beta) -> np.ndarray:
    """``sppo`` at K = 2 with BT pairs: the log-ratio ρ* = log π*/μ = (p_win − ½)/β. Returns f* = β ρ* = p_win − ½
    (the implicit reward, what ``nca_lab.toy.optimum`` returns); independent of β."""
    mu, r = _mu_r(mu, r)
    if not (beta > 0):
        raise ValueError("beta must be > 0")
    return bt_win_probability(mu, r) - 0.5


def apo_zero_bt_direction(mu, r) -> np.ndarray:
    """``apo_zero`` with BT pairs: the population loss is Σ_y 2μ_y [p_win + (1 − 2 p_win) σ(f_y)], so every f_y
    runs to +∞ where p_win > ½ and to −∞ where p_win < ½: returns sign(p_win − ½)."""
    mu, r = _mu_r(mu, r)
    return np.sign(bt_win_probability(mu, r) - 0.5)


def discopop_pair_loss(h, tau: float):
    """DiscoPOP's per-pair loss ℓ(h) = (1 − σ(h/τ))(−log σ(h)) + σ(h/τ) e^{−h} (numpy, elementwise)."""
    h = np.asarray(h, dtype=np.float64)
    m = expit(h / tau)
    return -log_expit(h) * (1 - m) + np.exp(-h) * m


def discopop_y2_optimum(dr: float, tau: float) -> float:
    """|Y| = 2 with BT pairs: only the draw {y_1, y_2} depends on f, so the minimiser's gap h* = f*_1 − f*_2
    minimises g(h) = σ(Δ) ℓ(h) + σ(−Δ) ℓ(−h), Δ = r_1 − r_2 (DPO: h* = Δ). Computed by a dense grid on
    [−40, 40] (step 1e-3) followed by a bounded scalar minimisation around the best grid point; g → ∞ at both
    ends for τ < 1, so the global minimiser lies inside."""
    p = expit(dr)
    g = lambda h: p * discopop_pair_loss(h, tau) + (1 - p) * discopop_pair_loss(-h, tau)  # noqa: E731
    grid = np.linspace(-40, 40, 80001)
    i = int(np.argmin(g(grid)))
    res = optimize.minimize_scalar(lambda h: float(g(h)), bounds=(grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]),
                                   method="bounded", options={"xatol": 1e-12})
    return float(res.x)


# ----------------------------------------------------------------------------------------------
# Proposition 23: A*PO at finite K
# ----------------------------------------------------------------------------------------------


def _multisets_counts(n_draws: int, n_items: int) -> np.ndarray:
    import itertools

    rows = []
    for c in itertools.combinations_with_replacement(range(n_items), n_draws):
        rows.append(np.bincount(np.asarray(c, dtype=np.int64), minlength=n_items))
    return np.asarray(rows, dtype=np.int64).reshape(-1, n_items)


def astar_optimum_enumerated(mu, r, alpha, K: int) -> np.ndarray:
    """f*_K(y) = r(y)/α − E[log((a_y + S)/K)] − (shift), S = Σ of the K − 1 other draws' a, by enumerating the
    multisets of K − 1 draws (multinomial weights). Exact to round-off; a is scaled by e^{−max r/α} and the shift
    added back. The A*PO regression is quadratic per response, so its minimiser is this conditional mean of
    the target t_1 given y_1 = y (no solver)."""
    mu, r = _mu_r(mu, r)
    z = r / alpha
    zmax = z.max()
    a = np.exp(z - zmax)
    counts = _multisets_counts(K - 1, len(mu))  # [M, Y]
    log_coef = math.lgamma(K) - np.sum([[math.lgamma(c + 1) for c in row] for row in counts], axis=1)
    log_w = log_coef + counts @ np.log(mu)
    S = counts @ a  # [M]
    logmean = np.log(a[:, None] + S[None, :]) - math.log(K) + zmax  # [Y, M]
    w = np.exp(log_w)
    return z - logmean @ w


def astar_optimum_integral(mu, r, alpha, K: int, digits: int = 30) -> np.ndarray:
    """The same f*_K by Frullani's integral, E log X = ∫₀^∞ (e^{−t} − E e^{−tX})/t dt with X = a_y + S_{K−1}
    (a scaled into (0, 1]): E e^{−tX} = e^{−t a_y} φ(t)^{K−1}, φ(t) = E_μ e^{−t a}. mpmath tanh–sinh quadrature
    with breakpoints at every decade of t (exact for any K; used for large K)."""
    import mpmath as mp

    mu, r = _mu_r(mu, r)
    z = r / alpha
    zmax = z.max()
    out = []
    with mp.workdps(digits):
        a = [mp.exp(mp.mpf(float(v - zmax))) for v in z]
        m = [mp.mpf(float(v)) for v in mu]
        amin = min(a)
        lo = mp.mpf(1) / (K * 10)
        hi = 100 / (amin * max(K - 1, 1)) + 100
        pts = [mp.mpf(0)]
        t = lo * mp.mpf("1e-3")
        while t < hi:
            pts.append(t)
            t *= 10
        pts.append(mp.inf)

        def phi(t):
            return mp.fsum(mi * mp.exp(-t * ai) for mi, ai in zip(m, a))

        for ay in a:
            val = mp.quad(lambda t: (mp.exp(-t) - mp.exp(-t * ay) * phi(t) ** (K - 1)) / t if t > 0 else mp.mpf(0), pts)
            out.append(float(val))
    e_log = np.asarray(out)  # E log(a_y + S) in scaled units
    return z - (e_log - math.log(K) + zmax)


def astar_optimum(mu, r, alpha, K=None, *, method: str = "auto") -> np.ndarray:
    """Population minimiser of ``astar_po`` (free parameterisation, R = r on K i.i.d. draws from μ):
    f*_K(y) = r(y)/α − E[log mean_j e^{r(y_j)/α} | y_1 = y]. ``K=None``: the K → ∞ limit r/α − log Z, NCA's
    target. ``method``: ``"enumerate"``, ``"integral"`` or ``"auto"`` (enumeration up to 20 000 multisets)."""
    mu, r = _mu_r(mu, r)
    if not (alpha > 0):
        raise ValueError("alpha must be > 0")
    if K is None:
        z = r / alpha
        return z - logsumexp(z, b=mu)
    if isinstance(K, bool) or int(K) != K or K < 2:
        raise ValueError(f"K must be an int >= 2, got {K!r}")
    K = int(K)
    if method == "auto":
        method = "enumerate" if n_multisets(K - 1, len(mu)) <= 20_000 else "integral"
    if method == "enumerate":
        return astar_optimum_enumerated(mu, r, alpha, K)
    if method == "integral":
        return astar_optimum_integral(mu, r, alpha, K)
    raise ValueError(f"method must be 'auto', 'enumerate' or 'integral', got {method!r}")


def astar_gap_coefficient(mu, r, alpha) -> np.ndarray:
    """c_A(y) = lim K·(f*_K(y) − (r/α − log Z)) = 1 − a(y)/Z + Var_μ(a)/(2Z²), a = e^{r/α} (Proposition 23).
    NCA's coefficient (Proposition 3) is 1 − a/Z + Var_μ(a)/Z²: the same linear term, half the variance term."""
    mu, r = _mu_r(mu, r)
    z = r / alpha
    a = np.exp(z - z.max())
    Z = float(mu @ a)
    var = float(mu @ (a - Z) ** 2)
    return 1 - a / Z + var / (2 * Z**2)

"""Closed-form optima and identities of the toy bandit world (float64 numpy).

One context x is a reference distribution ``mu`` over a finite response set Y and a reward
vector ``r`` over Y; ``a = exp(r / alpha)`` and ``Z = E_mu[a]`` (the partition function).
Every function accepts lists, numpy arrays or CPU torch tensors of shape ``[Y]`` (one context)
or ``[X, Y]`` (X contexts, the last axis is Y; ``mu`` and ``r`` broadcast against each other)
and returns float64 numpy arrays. Proposition numbers refer to the list in
``proofs/README.md`` (one line each); the derivations are in ``proofs/``.

Sources: NCA / InfoNCA -- Chen et al., "Noise Contrastive Alignment of Language Models with
Explicit Rewards" (NeurIPS 2024); DPO -- Rafailov et al. 2023; IPO -- Azar et al.,
"A General Theoretical Paradigm to Understand Learning from Human Preferences" (2023);
CPL -- Hejna et al., "Contrastive Preference Learning" (2023); rDPO -- Chowdhury et al.,
"Provably Robust DPO" (2024).

Finite-K expectations over K i.i.d. draws from mu are computed exactly, either by enumerating
the multisets of draws (multinomial weights) or by an exact one-dimensional Laplace-type
integral, ``1 / s = int_0^inf exp(-t s) dt``, evaluated with ``scipy.integrate.quad`` in
log-time ``t = e^u`` so that every scale of the integrand (one per distinct reward) is resolved.
"""

from __future__ import annotations

import itertools
import math
import operator

import numpy as np
from scipy import integrate, optimize
from scipy.special import expit, gammaln, log_expit, logsumexp

__all__ = [
    "log_partition",
    "infonca_optimum",
    "infonca_policy_optimum",
    "nca_exact_normalisation_optimum",
    "nca_optimum",
    "nca_optimum_enumerated",
    "nca_optimum_integral",
    "nca_gap_coefficient",
    "nca_self_normalisation",
    "nca_loo_constant",
    "nca_loo_optimum",
    "nca_loo_mass",
    "bt_win_probability",
    "nca_pair_optimum",
    "dpo_bt_optimum",
    "ipo_finite_data_optimum",
    "ipo_three_action_example",
    "cpl_bandit_optimum",
    "cpl_population_loss",
    "cpl_policy_optimum",
    "cpl_bias",
    "rdpo_per_sample_loss",
    "rdpo_expected_loss",
    "n_multisets",
]

# Largest number of multisets of K-1 draws that `nca_optimum(..., method="auto")` enumerates;
# above it the one-dimensional integral is used (both are exact to float64 round-off).
MAX_ENUMERATED_MULTISETS = 20_000
# r / alpha may span at most this range: exp(-745) underflows to 0 in float64, and a reward
# whose e^{r/alpha} underflows would give f* = -inf silently.
_MAX_LOG_RANGE = 700.0


# ----------------------------------------------------------------------------------------------
# input validation
# ----------------------------------------------------------------------------------------------


def _as_float64(x, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array, got {type(x).__name__}") from exc
    if arr.ndim not in (1, 2):
        raise ValueError(f"{name} must have shape [Y] or [X, Y], got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def _check_mu(mu) -> np.ndarray:
    mu = _as_float64(mu, "mu")
    if mu.shape[-1] < 1:
        raise ValueError("mu must have at least one response (last axis is empty)")
    if np.any(mu <= 0.0):
        raise ValueError(
            "mu must have full support (every entry > 0); got a minimum of "
            f"{mu.min():.3g}: a response with mu = 0 is never sampled, so its optimum is undefined"
        )
    sums = mu.sum(axis=-1)
    if np.any(np.abs(sums - 1.0) > 1e-9):
        raise ValueError(f"mu must sum to 1 along the last axis, got sums {np.atleast_1d(sums)}")
    return mu


def _check_positive(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a positive number, got {value!r}") from exc
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _check_K(K) -> int:
    if isinstance(K, bool):
        raise ValueError(f"K must be an integer >= 2, got {K!r}")
    try:
        k = operator.index(K)
    except TypeError:
        if isinstance(K, float) and K.is_integer():
            k = int(K)
        else:
            raise ValueError(f"K must be an integer >= 2, got {K!r}") from None
    if k < 2:
        raise ValueError(f"K must be an integer >= 2 (a tuple needs two responses), got {K!r}")
    return k


def _mu_r(mu, r) -> tuple[np.ndarray, np.ndarray]:
    """Validate and broadcast mu and r to a common shape [Y] or [X, Y]."""
    mu = _check_mu(mu)
    r = _as_float64(r, "r")
    if mu.shape[-1] != r.shape[-1]:
        raise ValueError(
            f"shape mismatch: mu has {mu.shape[-1]} responses, r has {r.shape[-1]} (shapes "
            f"{mu.shape} and {r.shape})"
        )
    try:
        mu, r = np.broadcast_arrays(mu, r)
    except ValueError as exc:
        raise ValueError(f"shape mismatch: mu {mu.shape} and r {r.shape} do not broadcast") from exc
    return np.array(mu), np.array(r)


def _scaled_a(r_row: np.ndarray, alpha: float) -> np.ndarray:
    """a / max(a) = exp(r/alpha - max(r/alpha)) in (0, 1]; raises if an entry would underflow."""
    z = r_row / alpha
    span = z.max() - z.min()
    if span > _MAX_LOG_RANGE:
        raise ValueError(
            f"r/alpha spans {span:.1f} > {_MAX_LOG_RANGE}: exp(r/alpha) under/overflows float64; "
            "use a larger alpha or a smaller reward range"
        )
    return np.exp(z - z.max())


def _rowwise(fn, *arrays):
    """Apply fn(row_0, row_1, ...) -> [Y] to each row of [X, Y] inputs (or once for [Y])."""
    if arrays[0].ndim == 1:
        return fn(*arrays)
    return np.stack([fn(*rows) for rows in zip(*arrays)])


# ----------------------------------------------------------------------------------------------
# partition function, InfoNCA (Proposition 1) and NCA with exact normalisation (Proposition 2)
# ----------------------------------------------------------------------------------------------


def log_partition(mu, r, alpha) -> np.ndarray:
    """log Z = log E_{y~mu} exp(r(y)/alpha), computed with log-sum-exp.

    Shapes: mu, r [Y] -> scalar array []; [X, Y] -> [X].
    """
    mu, r = _mu_r(mu, r)
    alpha = _check_positive(alpha, "alpha")
    return logsumexp(r / alpha + np.log(mu), axis=-1)


def infonca_optimum(mu, r, alpha) -> np.ndarray:
    """Free-parameterisation minimiser of the population InfoNCA loss (Proposition 1).

    f*(y) = r(y)/alpha - log Z,  Z = E_mu exp(r/alpha).

    InfoNCA only sees softmax(f) over each tuple, so every f = r/alpha + C (C constant over Y)
    is a minimiser, for every K >= 2; this returns the representative with
    sum_y mu(y) exp(f(y)) = 1 (the one NCA converges to as K -> inf).
    Shapes: [Y] or [X, Y] -> same. Paper: Chen et al. 2024 (InfoNCA).
    """
    mu, r = _mu_r(mu, r)
    alpha = _check_positive(alpha, "alpha")
    return r / alpha - log_partition(mu, r, alpha)[..., None]


def infonca_policy_optimum(mu, r, alpha, beta) -> np.ndarray:
    """log pi* for InfoNCA in the policy parameterisation pi = softmax(theta) (Proposition 1).

    With f = beta (log pi - log mu), f = r/alpha + C gives
    pi*(y) = mu(y) exp(r(y)/(alpha beta)) / E_mu exp(r/(alpha beta)), for every beta > 0.
    Returns log pi* (normalised). Shapes: [Y] or [X, Y] -> same.
    """
    mu, r = _mu_r(mu, r)
    alpha = _check_positive(alpha, "alpha")
    beta = _check_positive(beta, "beta")
    logits = np.log(mu) + r / (alpha * beta)
    return logits - logsumexp(logits, axis=-1, keepdims=True)


def nca_exact_normalisation_optimum(mu, r, alpha) -> np.ndarray:
    """Free NCA minimiser with labels e^{R_i/alpha} / (K Z) (true partition function; Prop. 2).

    f*(y) = r(y)/alpha - log Z, for every K >= 2: the expected label mass on y is
    K mu(y) e^{r(y)/alpha}/(K Z) = mu(y) e^{r/alpha}/Z against mu(y) for the negative term.
    (Passed to ``nca_lab.losses.nca`` as ``label_weights``; with labels e^{R_i/alpha}/Z instead,
    the optimum is this plus log K.) Shapes: [Y] or [X, Y] -> same.
    """
    return infonca_optimum(mu, r, alpha)


# ----------------------------------------------------------------------------------------------
# finite-K expectations: multiset enumeration and the one-dimensional integral
# ----------------------------------------------------------------------------------------------


def n_multisets(n_draws: int, n_items: int) -> int:
    """Number of multisets of size n_draws from n_items kinds: C(n_draws + n_items - 1, n_items - 1)."""
    return math.comb(n_draws + n_items - 1, n_items - 1)


def _multiset_counts(n_draws: int, n_items: int) -> np.ndarray:
    """All count vectors c in N^{n_items} with sum n_draws, shape [M, n_items] (stars and bars)."""
    n_slots = n_draws + n_items - 1
    bars = np.fromiter(
        itertools.chain.from_iterable(itertools.combinations(range(n_slots), n_items - 1)),
        dtype=np.int64,
        # the row count is explicit: with one item there are no bars and reshape(-1, 0) cannot infer it
    ).reshape(n_multisets(n_draws, n_items), n_items - 1)
    edges = np.concatenate(
        [np.full((len(bars), 1), -1), bars, np.full((len(bars), 1), n_slots)], axis=1
    )
    return np.diff(edges, axis=1) - 1


def _multiset_draws(mu_row: np.ndarray, a_row: np.ndarray, n_draws: int):
    """Sums S = sum of n_draws i.i.d. draws of a under mu, with their exact probabilities."""
    counts = _multiset_counts(n_draws, len(mu_row))
    log_w = (
        gammaln(n_draws + 1)
        - gammaln(counts + 1).sum(axis=1)
        + counts @ np.log(mu_row)
    )
    return np.exp(log_w), counts @ a_row


def _log_phi(t: float, mu_row: np.ndarray, log_mu: np.ndarray, a_row: np.ndarray) -> float:
    """log phi(t), phi(t) = E_mu exp(-t a): log1p form near t = 0 (where phi ~ 1 - tZ and the
    (K-1)-fold power amplifies relative error), log-sum-exp form once phi is small."""
    x = float(np.dot(mu_row, np.expm1(-t * a_row)))
    if x > -0.5:
        return math.log1p(x)
    return float(logsumexp(log_mu - t * a_row))


def _integrate_positive(log_integrand, t_lo: float, t_hi: float, scale: float) -> float:
    """int_{t_lo}^{t_hi} exp(log_integrand(t)) dt for a positive integrand, in u = log t.

    The interval in u is cut into unit pieces, each integrated by adaptive Gauss-Kronrod
    (quad) to relative 1e-13; ``scale`` is a lower bound of the full integral, used to set an
    absolute floor so that pieces where the integrand is negligible terminate immediately.
    """
    u_lo, u_hi = math.log(t_lo), math.log(t_hi)
    n_pieces = max(1, math.ceil(u_hi - u_lo))
    edges = np.linspace(u_lo, u_hi, n_pieces + 1)
    epsabs = 1e-17 * scale / n_pieces

    def integrand(u):
        t = math.exp(u)
        return math.exp(log_integrand(t) + u)

    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        val, _ = integrate.quad(integrand, lo, hi, epsabs=epsabs, epsrel=1e-13, limit=200)
        total += val
    return total


def _nca_ratio_integral(mu_row, a_row, K) -> np.ndarray:
    """E[a_y / (a_y + S)] for each y, S = sum of K-1 draws of a (a scaled so max a = 1).

    E[a/(a+S)] = a int_0^inf e^{-t a} phi(t)^{K-1} dt. The piece below t0 is <= a t0 and the
    piece above t1 is <= a e^{-t1 b}/b with b = a + (K-1) min(a) (phi(t) <= e^{-t min a});
    both are kept below 1e-16 times the lower bound a/(a + K - 1) of the whole integral.
    """
    log_mu = np.log(mu_row)
    a_min = a_row.min()
    out = np.empty_like(a_row)
    for y, a in enumerate(a_row):
        lower = a / (a + K - 1)
        b = a + (K - 1) * a_min
        t0 = 1e-17 / (a + K - 1)
        t1 = (40.0 + math.log((a + K - 1) / b)) / b

        def log_integrand(t, a=a):
            return math.log(a) - t * a + (K - 1) * _log_phi(t, mu_row, log_mu, a_row)

        out[y] = _integrate_positive(log_integrand, t0, t1, lower)
    return out


def _nca_ratio_enumerated(mu_row, a_row, K) -> np.ndarray:
    weights, sums = _multiset_draws(mu_row, a_row, K - 1)
    return (weights[:, None] * (a_row[None, :] / (a_row[None, :] + sums[:, None]))).sum(axis=0)


def _inverse_mean_integral(mu_row, a_row, K) -> float:
    """E[1/M_{K-1}] = (K-1) int_0^inf phi(t)^{K-1} dt (a scaled so max a = 1, hence M <= 1).

    Tail above t1 is <= e^{-t1 b}/b with b = (K-1) min(a); below t0 it is <= t0; both are kept
    below 1e-16 times the lower bound 1/(K-1) of int phi^{K-1}.
    """
    log_mu = np.log(mu_row)
    b = (K - 1) * a_row.min()
    t0 = 1e-17 / (K - 1)
    t1 = (40.0 + math.log((K - 1) / b)) / b

    def log_integrand(t):
        return (K - 1) * _log_phi(t, mu_row, log_mu, a_row)

    return (K - 1) * _integrate_positive(log_integrand, t0, t1, 1.0 / (K - 1))


def _inverse_mean_enumerated(mu_row, a_row, K) -> float:
    weights, sums = _multiset_draws(mu_row, a_row, K - 1)
    return float(np.dot(weights, (K - 1) / sums))


def _choose_method(method: str, K: int, n_items: int) -> str:
    if method not in ("auto", "enumerate", "integral"):
        raise ValueError(f"method must be 'auto', 'enumerate' or 'integral', got {method!r}")
    if method == "auto":
        return "enumerate" if n_multisets(K - 1, n_items) <= MAX_ENUMERATED_MULTISETS else "integral"
    return method


# ----------------------------------------------------------------------------------------------
# NCA with softmax labels at finite K (Propositions 3, 4, 5)
# ----------------------------------------------------------------------------------------------


def _nca_finite_k(mu, r, alpha, K, method) -> np.ndarray:
    mu, r = _mu_r(mu, r)
    alpha = _check_positive(alpha, "alpha")
    K = _check_K(K)
    method = _choose_method(method, K, mu.shape[-1])
    ratio = _nca_ratio_enumerated if method == "enumerate" else _nca_ratio_integral

    def row(mu_row, r_row):
        a = _scaled_a(r_row, alpha)  # the ratio a_y/(a_y + S) is invariant to scaling a
        return np.log(K * ratio(mu_row, a, K))

    return _rowwise(row, mu, r)


def nca_optimum(mu, r, alpha, K=None, *, method: str = "auto") -> np.ndarray:
    """Free-parameterisation minimiser of the population NCA loss (Propositions 3 and 4).

    NCA per tuple: -sum_i [w_i log sigma(f_i) + (1/K) log sigma(-f_i)], w = softmax(R/alpha)
    over K responses drawn i.i.d. from mu.

    - ``K=None``: the paper's target, the K -> inf limit  f*(y) = r(y)/alpha - log Z.
    - finite integer K >= 2: the exact finite-K minimiser
      f*_K(y) = log( K E_{y_2..y_K ~ mu}[ a_y / (a_y + S) ] ),  a = e^{r/alpha},
      S = sum_{j>=2} a_{y_j}; it satisfies sum_y mu(y) e^{f*_K(y)} = 1 (Proposition 4) and
      f*_K - (r/alpha - log Z) = c/K + O(K^-2) with c = ``nca_gap_coefficient``.
      ``method``: "enumerate" (multinomial sum over multisets of K-1 draws), "integral"
      (the one-dimensional integral, accurate to ~1e-12 relative for K up to millions) or
      "auto" (enumerate when there are at most ``MAX_ENUMERATED_MULTISETS`` multisets).

    Shapes: [Y] or [X, Y] -> same. Paper: Chen et al. 2024 (NCA).
    """
    if K is None:
        return infonca_optimum(mu, r, alpha)
    return _nca_finite_k(mu, r, alpha, K, method)


def nca_optimum_enumerated(mu, r, alpha, K) -> np.ndarray:
    """Exact finite-K NCA optimum (Prop. 3) by enumerating the multisets of the K-1 other draws.

    Cost grows like C(K+|Y|-2, |Y|-1); meant for small K (cross-check of the integral).
    """
    return _nca_finite_k(mu, r, alpha, K, "enumerate")


def nca_optimum_integral(mu, r, alpha, K) -> np.ndarray:
    """Exact finite-K NCA optimum (Prop. 3) via E[a/(a+S)] = a int_0^inf e^{-ta} phi(t)^{K-1} dt,
    phi(t) = E_mu e^{-t a} (a rescaled by its max), integrated with scipy's quad in log t."""
    return _nca_finite_k(mu, r, alpha, K, "integral")


def nca_gap_coefficient(mu, r, alpha) -> np.ndarray:
    """Leading finite-K bias of NCA (Proposition 3): f*_K - (r/alpha - log Z) = c/K + O(K^-2),

    c(y) = 1 - e^{r(y)/alpha}/Z + Var_mu(e^{r/alpha}) / Z^2.

    The expansion is in powers of max(a)/(K Z) (max(a)/Z bounds 1 + Var(a)/Z^2 and every higher
    relative moment): it describes f*_K only once K >> max(a)/Z >= Var_mu(e^{r/alpha})/Z^2.
    Shapes: [Y] or [X, Y] -> same.
    """
    mu, r = _mu_r(mu, r)
    alpha = _check_positive(alpha, "alpha")
    z = r / alpha
    ratio = np.exp(z - log_partition(mu, r, alpha)[..., None])  # a/Z, scale-free
    rel_var = np.sum(mu * (ratio - 1.0) ** 2, axis=-1, keepdims=True)  # Var(a)/Z^2
    return 1.0 - ratio + rel_var


def nca_self_normalisation(mu, f) -> np.ndarray:
    """sum_y mu(y) exp(f(y)) (Proposition 4: equals 1 at every NCA optimum, finite K or limit).

    Shapes: mu, f [Y] -> []; [X, Y] -> [X].
    """
    mu, f = _mu_r(mu, f)
    return np.exp(logsumexp(f + np.log(mu), axis=-1))


# ----------------------------------------------------------------------------------------------
# NCA with leave-one-out labels (Proposition 19)
# ----------------------------------------------------------------------------------------------


def nca_loo_constant(mu, r, alpha, K, *, method: str = "auto") -> np.ndarray:
    """C_K = log E[1/M_{K-1}], M_{K-1} = mean of K-1 i.i.d. draws of e^{r/alpha} under mu.

    Computed exactly: enumeration of multisets, or E[1/M] = (K-1) int_0^inf phi(t)^{K-1} dt.
    Shapes: [Y] -> []; [X, Y] -> [X]. (Proposition 19.)
    """
    mu, r = _mu_r(mu, r)
    alpha = _check_positive(alpha, "alpha")
    K = _check_K(K)
    method = _choose_method(method, K, mu.shape[-1])
    inv_mean = _inverse_mean_enumerated if method == "enumerate" else _inverse_mean_integral

    def row(mu_row, r_row):
        a = _scaled_a(r_row, alpha)  # a = e^{r/alpha - max}, so E[1/M] picks up e^{-max}
        return np.array(math.log(inv_mean(mu_row, a, K)) - (r_row / alpha).max())

    return _rowwise(row, mu, r)


def nca_loo_optimum(mu, r, alpha, K, *, method: str = "auto") -> np.ndarray:
    """Free NCA minimiser with leave-one-out labels (Proposition 19).

    Labels w_i = e^{R_i/alpha} / (K mean_{j != i} e^{R_j/alpha}) give
    f*(y) = r(y)/alpha + C_K,  C_K = log E[1/M_{K-1}]  (``nca_loo_constant``), for every K >= 2:
    the shape r/alpha is exact, the normalisation is not (see ``nca_loo_mass``).
    Shapes: [Y] or [X, Y] -> same.
    """
    mu, r = _mu_r(mu, r)
    alpha = _check_positive(alpha, "alpha")
    return r / alpha + nca_loo_constant(mu, r, alpha, K, method=method)[..., None]


def nca_loo_mass(mu, r, alpha, K, *, method: str = "auto") -> np.ndarray:
    """sum_y mu(y) e^{f*_LOO(y)} = Z E[1/M_{K-1}] >= Z / E[M_{K-1}] = 1 (Jensen; Prop. 19),
    strictly > 1 unless r is constant on the support of mu. Shapes: [Y] -> []; [X, Y] -> [X]."""
    mu, r = _mu_r(mu, r)
    alpha = _check_positive(alpha, "alpha")
    return np.exp(log_partition(mu, r, alpha) + nca_loo_constant(mu, r, alpha, K, method=method))


# ----------------------------------------------------------------------------------------------
# Bradley-Terry pairs: nca_pair (Proposition 7) and DPO (Proposition 8)
# ----------------------------------------------------------------------------------------------


def bt_win_probability(mu, r) -> np.ndarray:
    """p_win(y) = E_{y'~mu} sigma(r(y) - r(y')): Bradley-Terry probability that y beats a fresh
    draw from mu (the draw y' = y counts, with probability 1/2). sum_y mu(y) p_win(y) = 1/2.
    Shapes: [Y] or [X, Y] -> same.
    """
    mu, r = _mu_r(mu, r)
    diff = r[..., :, None] - r[..., None, :]  # [..., y, y']
    return np.sum(expit(diff) * mu[..., None, :], axis=-1)


def nca_pair_optimum(mu, r) -> np.ndarray:
    """Free minimiser of the population ``nca_pair`` loss with pairs from mu x mu and
    Bradley-Terry labels (Proposition 7): f*(y) = log(2 p_win(y)); sum_y mu 2 p_win = 1.

    Shapes: [Y] or [X, Y] -> same. Loss: NCA paper, pairwise form (TRL ``nca_pair``).
    """
    return np.log(2.0 * bt_win_probability(mu, r))


def dpo_bt_optimum(mu, r, beta) -> np.ndarray:
    """DPO implicit reward at the population optimum with Bradley-Terry labels (Proposition 8).

    The free minimiser is any f = r + C (each pair's loss is minimised at f_w - f_l = r_w - r_l);
    this returns the representative realised by a normalised policy,
    f* = beta (log pi* - log mu) with pi* = mu e^{r/beta} / E_mu e^{r/beta}, i.e.
    f* = r - beta log E_mu e^{r/beta}. Shapes: [Y] or [X, Y] -> same. Paper: Rafailov et al. 2023.
    """
    mu, r = _mu_r(mu, r)
    beta = _check_positive(beta, "beta")
    return r - beta * log_partition(mu, r, beta)[..., None]


# ----------------------------------------------------------------------------------------------
# IPO on finite data (Proposition 9)
# ----------------------------------------------------------------------------------------------


def ipo_finite_data_optimum(pairs, n_actions, tau, mu=None) -> np.ndarray:
    """Minimiser of the empirical IPO loss sum_{(w,l) in data} (g_w - g_l - 1/(2 tau))^2.

    ``pairs``: sequence of (winner, loser) action indices in [0, n_actions), repeated pairs
    counted with multiplicity; g = log pi - log mu (log-ratio units, no beta inside h = g_w - g_l;
    tau is IPO's regulariser, beta in our API). The normal equations are L g = b with L the
    Laplacian of the comparison multigraph and b_i = (wins_i - losses_i)/(2 tau); g is only
    determined up to one constant per connected component of the graph, and this returns the
    minimum-norm least-squares solution (mean zero on each component, 0 on actions never
    compared). With ``mu`` given, a single constant is added so that sum mu e^g = 1, i.e. the
    returned g gives the normalised log pi* = log mu + g. Shape: [n_actions].

    On the same deterministic data DPO's loss sum -log sigma(beta h) has no minimiser for an
    acyclic comparison graph: it decreases to 0 as the margins grow without bound.
    Paper: Azar et al. 2023 (IPO).
    """
    try:
        n = operator.index(n_actions)
    except TypeError:
        raise ValueError(f"n_actions must be an integer >= 2, got {n_actions!r}") from None
    if n < 2:
        raise ValueError(f"n_actions must be >= 2, got {n_actions!r}")
    tau = _check_positive(tau, "tau")
    pairs = list(pairs)
    if not pairs:
        raise ValueError("pairs must contain at least one (winner, loser) pair")
    laplacian = np.zeros((n, n))
    rhs = np.zeros(n)
    for idx, pair in enumerate(pairs):
        try:
            w, l = (operator.index(v) for v in pair)
        except (TypeError, ValueError):
            raise ValueError(f"pairs[{idx}] must be a (winner, loser) pair of ints, got {pair!r}") from None
        if not (0 <= w < n and 0 <= l < n):
            raise ValueError(f"pairs[{idx}] = {pair!r} has an action outside [0, {n})")
        if w == l:
            raise ValueError(f"pairs[{idx}] = {pair!r} compares an action with itself")
        laplacian[w, w] += 1.0
        laplacian[l, l] += 1.0
        laplacian[w, l] -= 1.0
        laplacian[l, w] -= 1.0
        rhs[w] += 1.0 / (2.0 * tau)
        rhs[l] -= 1.0 / (2.0 * tau)
    g = np.linalg.lstsq(laplacian, rhs, rcond=None)[0]  # minimum-norm: orthogonal to nullspace
    if mu is not None:
        mu = _check_mu(mu)
        if mu.shape != (n,):
            raise ValueError(f"mu must have shape [{n}] (n_actions), got {mu.shape}")
        g = g - logsumexp(g + np.log(mu))
    return g


def ipo_three_action_example(tau) -> dict[tuple[str, str], float]:
    """Proposition 9's example: actions a > b > c, uniform mu, data {(a,b), (b,c), (a,c)}.

    Returns the IPO optimum's log-ratio margins h(w, l) = g_w - g_l on the three data pairs,
    computed by ``ipo_finite_data_optimum`` (the claim is h(a,b) = h(b,c) = 1/(3 tau) and
    h(a,c) = 2/(3 tau)).
    """
    names = ("a", "b", "c")
    data = [(0, 1), (1, 2), (0, 2)]
    g = ipo_finite_data_optimum(data, 3, tau, mu=np.full(3, 1.0 / 3.0))
    return {(names[w], names[l]): float(g[w] - g[l]) for w, l in data}


# ----------------------------------------------------------------------------------------------
# CPL in a bandit (Proposition 10)
# ----------------------------------------------------------------------------------------------


def cpl_bandit_optimum(r, alpha, lam=1.0, mu_pairs=None) -> np.ndarray:
    """log pi* of CPL with single-step segments and Bradley-Terry labels (Proposition 10).

    lam = 1: loss -log sigma(alpha (log pi_w - log pi_l)), minimised pairwise at
    alpha (log pi_w - log pi_l) = r_w - r_l, so log pi* = r/alpha - logsumexp(r/alpha),
    whatever the pair distribution (CPL has no reference). lam < 1: no closed form; the pair
    distribution ``mu_pairs`` (pairs from mu_pairs x mu_pairs) is required and the optimum is
    computed numerically by ``cpl_policy_optimum``. Shapes: r [Y] or [X, Y] -> same.
    Paper: Hejna et al. 2023 (CPL; lam is ``contrastive_bias``).
    """
    r = _as_float64(r, "r")
    alpha = _check_positive(alpha, "alpha")
    lam = _check_lam(lam)
    if lam == 1.0:
        z = r / alpha
        return z - logsumexp(z, axis=-1, keepdims=True)
    if mu_pairs is None:
        raise ValueError("mu_pairs is required for lam < 1 (the optimum depends on the pair distribution)")
    return cpl_policy_optimum(mu_pairs, r, alpha, lam)


def _check_lam(lam) -> float:
    try:
        v = float(lam)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"lam must be a number in (0, 1], got {lam!r}") from exc
    if not (0.0 < v <= 1.0):
        raise ValueError(f"lam must be in (0, 1], got {lam!r}")
    return v


def _cpl_pair_weights(mu_row, r_row, include_identical: bool) -> np.ndarray:
    """P(winner = w, loser = l) for one pair from mu x mu with Bradley-Terry labels.

    Ordered draw (y1, y2), y1 wins w.p. sigma(r1 - r2): P(w, l) = 2 mu_w mu_l sigma(r_w - r_l)
    for w != l, and mu_y^2 for the identical draw (y, y) (either orientation, each w.p. 1/2).
    """
    c = 2.0 * mu_row[:, None] * mu_row[None, :] * expit(r_row[:, None] - r_row[None, :])
    if not include_identical:
        np.fill_diagonal(c, 0.0)
    return c


def _cpl_value_grad_hess(logpi, c, alpha, lam):
    """Loss sum_{w,l} c_wl softplus(-x_wl), x_wl = alpha (logpi_w - lam logpi_l); gradient and
    Hessian with respect to logpi."""
    x = alpha * (logpi[:, None] - lam * logpi[None, :])
    value = float(np.sum(c * -log_expit(x)))
    s = c * -expit(-x)  # d loss / d x_wl
    grad = alpha * (s.sum(axis=1) - lam * s.sum(axis=0))
    h = c * expit(x) * expit(-x)  # d^2 loss / d x_wl^2
    hess = alpha**2 * (
        np.diag(h.sum(axis=1)) + lam**2 * np.diag(h.sum(axis=0)) - lam * (h + h.T)
    )
    return value, grad, hess


def cpl_population_loss(logpi, mu, r, alpha, lam, *, include_identical: bool = True) -> np.ndarray:
    """Exact expected CPL loss of one pair from mu x mu with Bradley-Terry labels (Prop. 10).

    E = sum_{w,l} P(w,l) [-log sigma(alpha log pi_w - lam alpha log pi_l)], P(w,l) as in the toy
    contract's labels="bt" (identical draws included, each orientation w.p. 1/2; set
    ``include_identical=False`` to drop them). ``logpi`` is used as given (not renormalised).
    Shapes: logpi, mu, r [Y] -> []; [X, Y] -> [X].
    """
    mu, r = _mu_r(mu, r)
    logpi = _as_float64(logpi, "logpi")
    if logpi.shape[-1] != mu.shape[-1]:
        raise ValueError(f"shape mismatch: logpi {logpi.shape} vs mu {mu.shape}")
    alpha = _check_positive(alpha, "alpha")
    lam = _check_lam(lam)
    logpi, mu, r = np.broadcast_arrays(logpi, mu, r)

    def row(lp, mu_row, r_row):
        c = _cpl_pair_weights(mu_row, r_row, include_identical)
        return np.array(_cpl_value_grad_hess(lp, c, alpha, lam)[0])

    return _rowwise(row, logpi, mu, r)


def cpl_policy_optimum(mu, r, alpha, lam, *, include_identical: bool = True) -> np.ndarray:
    """log pi* minimising ``cpl_population_loss`` over pi = softmax(theta) (Proposition 10).

    theta = (0, z) removes softmax's shift invariance; scipy's trust-exact uses the analytic
    gradient and Hessian (chain rule through log-softmax), then Newton steps until the step is
    below 1e-12 or stalls at round-off below 1e-9 (RuntimeError otherwise), so log pi*
    is accurate to about 1e-9 (the last Newton step bounds the error). Starts from the lam = 1 optimum r/alpha.
    Shapes: [Y] or [X, Y] -> same.
    """
    mu, r = _mu_r(mu, r)
    alpha = _check_positive(alpha, "alpha")
    lam = _check_lam(lam)

    def row(mu_row, r_row):
        c = _cpl_pair_weights(mu_row, r_row, include_identical)

        def parts(z):
            theta = np.concatenate([[0.0], z])
            logpi = theta - logsumexp(theta)
            pi = np.exp(logpi)
            value, g, h = _cpl_value_grad_hess(logpi, c, alpha, lam)
            jac = np.eye(len(pi)) - pi[None, :]  # d logpi_k / d theta_j = delta_kj - pi_j
            g_theta = jac.T @ g
            h_theta = jac.T @ h @ jac - g.sum() * (np.diag(pi) - np.outer(pi, pi))
            return value, g_theta[1:], h_theta[1:, 1:]

        z0 = (r_row[1:] - r_row[0]) / alpha
        res = optimize.minimize(
            lambda z: parts(z)[0], z0, jac=lambda z: parts(z)[1], hess=lambda z: parts(z)[2],
            method="trust-exact", options={"gtol": 1e-12, "maxiter": 1000},
        )
        # trust-exact may stop on its trust radius a little short of gtol; finish with plain
        # Newton steps (quadratic convergence near the optimum) until the step itself is tiny,
        # because the step, not the gradient, bounds the error in log pi when mu has small
        # entries (the Hessian then has small eigenvalues).
        z, previous, size = res.x, np.inf, np.inf
        for _ in range(50):
            _, g, h = parts(z)
            step = np.linalg.solve(h, -g)
            z = z + step
            size = np.abs(step).max()
            # stop at 1e-12, or where round-off in an ill-conditioned Hessian (tiny mu entries)
            # stalls the steps before that; a stall above 1e-9 is reported as a failure.
            if size < 1e-12 or (size > 0.5 * previous and size < 1e-9):
                break
            previous = size
        if not size < 1e-9:
            raise RuntimeError(f"cpl_policy_optimum did not converge: last Newton step {size:.3g}")
        theta = np.concatenate([[0.0], z])
        return theta - logsumexp(theta)

    return _rowwise(row, mu, r)


def cpl_bias(mu, r, alpha, lam, *, include_identical: bool = True) -> np.ndarray:
    """max_y |centered(log pi*_lam) - centered(log pi*_1)|: how far CPL with conservative bias
    lam < 1 lands from the lam = 1 optimum r/alpha (centered = minus the mean over Y, which
    removes the normalisation constant). Shapes: [Y] -> []; [X, Y] -> [X]. (Proposition 10.)
    """
    mu, r = _mu_r(mu, r)
    lp_lam = cpl_policy_optimum(mu, r, alpha, lam, include_identical=include_identical)
    lp_one = cpl_bandit_optimum(r, alpha, 1.0)

    def centered(v):
        return v - v.mean(axis=-1, keepdims=True)

    return np.abs(centered(lp_lam) - centered(lp_one)).max(axis=-1)


# ----------------------------------------------------------------------------------------------
# rDPO (Proposition 11)
# ----------------------------------------------------------------------------------------------


def _check_eps(eps) -> float:
    try:
        v = float(eps)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"eps must be a number in [0, 1/2), got {eps!r}") from exc
    if not (0.0 <= v < 0.5):
        raise ValueError(f"eps must be in [0, 1/2) (the rDPO correction divides by 1 - 2 eps), got {eps!r}")
    return v


def rdpo_per_sample_loss(h, eps) -> np.ndarray:
    """rDPO loss of one (possibly flipped) pair: [(1-eps) l(h) - eps l(-h)] / (1 - 2 eps),
    l(h) = -log sigma(h), h the implicit-reward margin of the labelled winner. Elementwise."""
    eps = _check_eps(eps)
    h = np.asarray(h, dtype=np.float64)
    return ((1.0 - eps) * -log_expit(h) - eps * -log_expit(-h)) / (1.0 - 2.0 * eps)


def rdpo_expected_loss(h, eps) -> np.ndarray:
    """Expectation of the rDPO loss over symmetric label flips with rate eps (Proposition 11):
    (1-eps) lhat(h) + eps lhat(-h), which equals the clean DPO loss -log sigma(h) exactly
    (proved in proofs/sympy_rdpo.py). Elementwise. Paper: Chowdhury et al. 2024 (rDPO).
    """
    eps = _check_eps(eps)
    h = np.asarray(h, dtype=np.float64)
    return (1.0 - eps) * rdpo_per_sample_loss(h, eps) + eps * rdpo_per_sample_loss(-h, eps)

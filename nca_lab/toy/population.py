"""Exact population losses of the toy bandit world.

``population_loss(name, logpi, mu, r, K)`` is the expectation of the registry loss ``name``
(``nca_lab.losses``) over K responses drawn i.i.d. from the reference μ, as a function of the policy
log-probabilities ``logpi`` over the response set Y. Nothing is sampled:

- **enumeration** (small Y and K): every multiset of K draws is one row of a single batched loss
  call, weighted by its multinomial probability K!/∏n_y! · ∏ μ_y^{n_y}. When two different
  responses share a reward, tie rules (lowest index wins) make a loss depend on the order of the
  draws, so then every ordered K-tuple (probability ∏ μ) is a row instead.
- **one-dimensional integrals** (large K, ``nca`` only): NCA's tuple loss is a sum of per-response
  terms, so its expectation is Σ_y μ_y [−c_y log σ(f_y) − log σ(−f_y)] with c_y = K·E[w | y drawn].
  For softmax labels c_y = K a_y E[1/(a_y + S)], S the sum of K−1 i.i.d. draws of a = e^{r/α}, and
  E[1/(a + S)] = ∫₀^∞ e^{−ta} φ(t)^{K−1} dt with φ(t) = E_μ e^{−t a} (the toy contract, :mod:`nca_lab.toy`),
  evaluated with mpmath's tanh–sinh quadrature at 25 significant digits — a different method from
  ``nca_lab.theory``'s scipy quadrature, so the two cross-check each other.

Label sources (``labels``): ``"reward"`` (the drawn responses carry R = r), ``"bt"`` (K = 2,
Bradley–Terry preferences R = (1, 0) in both orientations, optionally flipped with ``flip_rate``),
``"loo"`` (R = r and the loss's leave-one-out labels, Proposition 19), ``"exact_norm"`` (R = r and
``label_weights`` e^{r_i/α}/(K·Z) with the true partition function, Proposition 2), or a callable
``fn(R: Tensor[N, K]) -> Tensor[N, K]`` returning ``label_weights`` for each drawn tuple (it must treat
the K positions alike, as every rule above does, because a multiset row stands for all its orders).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Union

import numpy as np
import torch
from scipy.special import expit
from torch import Tensor

from nca_lab.losses import LOSSES, CombinedLoss, LossSpec, get_loss

__all__ = [
    "population_loss",
    "LABEL_SOURCES",
    "MAX_ENUMERATED_ROWS",
    "nca_label_coefficients",
    "check_instance",
    "resolve_hparam",
    "one_thread",
]

LABEL_SOURCES = ("reward", "bt", "loo", "exact_norm")
# Rows of the one batched loss call (multisets, or ordered tuples when rewards tie). 200k rows of
# K ≤ 16 float64 entries keep a Hessian evaluation (one backward pass per coordinate) well below a
# second; beyond it auto mode uses the integral path or raises.
MAX_ENUMERATED_ROWS = 200_000
# Significant digits of the mpmath quadrature: the coefficients c_y must be exact to float64
# round-off after the final log, with headroom for the (K−1)-th power of φ.
_MP_DIGITS = 25

LabelFn = Callable[[Tensor], Tensor]
Labels = Union[str, LabelFn]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch single-threaded inside the block, restoring the thread count after. The tensors of
    the toy world have at most a few hundred thousand entries; intra-op threads only add
    synchronisation (measured: a 126×4 logsigmoid takes 1.4 ms with 2 threads on a loaded 2-core
    machine, 3 µs with 1)."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _as_f64(x, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array of shape [Y] or [X, Y], got {type(x).__name__}") from exc
    if arr.ndim not in (1, 2) or arr.shape[-1] < 1:
        raise ValueError(f"{name} must have shape [Y] or [X, Y] with Y >= 1, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def check_instance(mu, r) -> tuple[np.ndarray, np.ndarray]:
    """Validate a bandit instance and return (mu, r) as float64 ``[X, Y]`` arrays (X = 1 for ``[Y]``).

    μ must be a probability vector per context with full support: a response with μ = 0 is never
    drawn, and log μ = −inf would poison the reference log-probs.
    """
    mu = _as_f64(mu, "mu")
    r = _as_f64(r, "r")
    if mu.shape != r.shape:
        raise ValueError(f"shape mismatch: mu has shape {mu.shape}, r has shape {r.shape}")
    if np.any(mu <= 0):
        raise ValueError(f"mu must have full support (every entry > 0); got min(mu) = {mu.min():.3g}")
    sums = mu.sum(axis=-1)
    if np.any(np.abs(sums - 1.0) > 1e-9):
        raise ValueError(f"mu must sum to 1 over Y (last axis); got sums {np.atleast_1d(sums)}")
    return np.atleast_2d(mu), np.atleast_2d(r)


def _check_K(K, loss) -> int:
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)):
        raise ValueError(f"K must be an int (responses per tuple), got {K!r}")
    K = int(K)
    names = [s.name for _, s in loss.terms] if isinstance(loss, CombinedLoss) else [loss.name]
    needs_two = [n for n in names if n != "sft"]
    if K < 1:
        raise ValueError(f"K = {K}: a tuple holds at least one response (K >= 1)")
    if K < 2 and needs_two:
        raise ValueError(f"K = {K}: loss {needs_two[0]!r} compares responses and needs K >= 2")
    return K


def resolve_hparam(loss: LossSpec | CombinedLoss, hparams: dict, name: str) -> float:
    """The value of hyperparameter ``name``: given in ``hparams``, else the registry default."""
    if name in hparams:
        return float(hparams[name])
    if name not in loss.defaults:
        raise ValueError(f"loss {loss.name!r} has no hyperparameter {name!r}")
    return float(loss.defaults[name])


# --------------------------------------------------------------------------------------------
# Draws: which K-tuples, with which probabilities
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _multisets(Y: int, K: int) -> tuple[np.ndarray, np.ndarray]:
    """All multisets of K draws from Y responses as sorted index rows ``[M, K]`` and the log
    multinomial coefficient log(K!/∏ n_y!) of each ``[M]``."""
    idx = np.array(list(itertools.combinations_with_replacement(range(Y), K)), dtype=np.int64)
    counts = np.stack([(idx == y).sum(axis=1) for y in range(Y)], axis=1)
    log_coef = math.lgamma(K + 1) - np.vectorize(math.lgamma)(counts + 1.0).sum(axis=1)
    return idx, log_coef


@functools.lru_cache(maxsize=64)
def _ordered(Y: int, K: int) -> np.ndarray:
    """All ordered K-tuples ``[Y**K, K]``."""
    return np.array(list(itertools.product(range(Y), repeat=K)), dtype=np.int64).reshape(-1, K)


def _n_multisets(Y: int, K: int) -> int:
    return math.comb(Y + K - 1, K)


def _has_reward_ties(r: np.ndarray) -> bool:
    s = np.sort(r, axis=-1)
    return bool(np.any(s[:, 1:] == s[:, :-1]))


@dataclass
class _Draws:
    idx: np.ndarray  # [M, K] response indices of each row
    log_w: np.ndarray  # [X, M] log-probability of each row under each context's μ
    R: np.ndarray  # [X, M, K] data rewards passed to the loss


def _reward_draws(mu: np.ndarray, r: np.ndarray, K: int, max_rows: int) -> _Draws:
    Y = mu.shape[1]
    ordered = _has_reward_ties(r)
    n = Y**K if ordered else _n_multisets(Y, K)
    if n > max_rows:
        kind = "ordered tuples (rewards tie, so order matters)" if ordered else "multisets"
        raise _TooManyRows(f"{n} {kind} of K = {K} draws from Y = {Y} responses exceed max_rows = {max_rows}")
    if ordered:
        idx = _ordered(Y, K)
        log_coef = np.zeros(len(idx))
    else:
        idx, log_coef = _multisets(Y, K)
    log_mu = np.log(mu)
    log_w = log_coef[None, :] + log_mu[:, idx].sum(axis=2)
    return _Draws(idx, log_w, r[:, idx])


def _bt_draws(mu: np.ndarray, r: np.ndarray, flip_rate: float) -> _Draws:
    """Ordered pairs (y1, y2) from μ×μ, each in both orientations R = (1, 0) and R = (0, 1).

    P(y1 ≻ y2) = σ(r1 − r2) (½ for identical draws), flipped with probability ``flip_rate``.
    """
    Y = mu.shape[1]
    pairs = _ordered(Y, 2)  # [Y², 2]
    idx = np.concatenate([pairs, pairs])  # first block: y1 wins; second: y2 wins
    log_mu = np.log(mu)
    d = r[:, pairs[:, 0]] - r[:, pairs[:, 1]]  # [X, Y²]
    p_first = expit(d)  # σ(d) without exp's overflow warning at |d| > 709 (it is exactly 0 or 1 there)
    p_first = (1.0 - flip_rate) * p_first + flip_rate * (1.0 - p_first)
    log_pair = log_mu[:, pairs].sum(axis=2)
    with np.errstate(divide="ignore"):  # a probability of exactly 0 (flip_rate 0, |d| huge) is fine
        log_w = np.concatenate([log_pair + np.log(p_first), log_pair + np.log1p(-p_first)], axis=1)
    M = len(pairs)
    R = np.concatenate([np.tile([1.0, 0.0], (M, 1)), np.tile([0.0, 1.0], (M, 1))])
    return _Draws(idx, log_w, np.broadcast_to(R, (mu.shape[0],) + R.shape).copy())


class _TooManyRows(ValueError):
    pass


# --------------------------------------------------------------------------------------------
# The integral path (nca, large K)
# --------------------------------------------------------------------------------------------


def _mp_laplace(weights_mu, a, K: int, shift):
    """∫₀^∞ e^{−t·shift} φ(t)^{K−1} dt with φ(t) = Σ μ_j e^{−t a_j}, a scaled into (0, 1].

    The integrand decays on scales between lo = 1/(shift + (K−1)·max a) and hi = 1/(shift + (K−1)·min a);
    breakpoints every decade from 10⁻³·lo to at least 10³·hi let the tanh–sinh rule resolve every scale.
    The upper margin matters: the last piece [t_last, ∞) is mapped as if it decayed on a unit scale, so
    it is resolved only when nothing is left there. Its share is ≤ e^{−t_last/hi} ≤ e^{−1000}; a last
    point at 10·hi (the earlier cut, hi·100 exclusive) left up to e^{−10} = 5e-5 of the integral
    uncounted, 1e-8 relative at r/α spread over 120 nats.
    """
    import mpmath as mp

    amax, amin = max(a), min(a)
    lo = 1 / (shift + (K - 1) * amax)
    hi = 1 / (shift + (K - 1) * amin)
    pts = [mp.mpf(0)]
    t = lo * mp.mpf("1e-3")
    while t < hi * 10_000:  # so the last finite point is ≥ 1000·hi
        pts.append(t)
        t *= 10
    pts.append(mp.inf)

    def integrand(t):
        phi = mp.fsum(m * mp.exp(-t * aj) for m, aj in zip(weights_mu, a))
        return mp.exp(-t * shift) * phi ** (K - 1)

    return mp.quad(integrand, pts)


def nca_label_coefficients(mu_row: np.ndarray, r_row: np.ndarray, alpha: float, K: int, labels: str) -> np.ndarray:
    """c_y = K·E[w_1 | y_1 = y] for NCA labels over K i.i.d. draws from μ (one context, ``[Y]``).

    The population NCA loss is Σ_y μ_y [−c_y log σ(f_y) − log σ(−f_y)], minimised at f_y = log c_y.
    - ``"reward"`` (softmax labels): c_y = K·a_y·∫₀^∞ e^{−t a_y} φ(t)^{K−1} dt, a = e^{r/α};
    - ``"loo"``: w_i = a_i (K−1)/(K·S_{−i}), so c_y = a_y (K−1) E[1/S_{K−1}] = a_y (K−1) ∫₀^∞ φ^{K−1} dt;
    - ``"exact_norm"``: c_y = a_y / Z, Z = E_μ a (no integral).
    a is rescaled by e^{−max r/α}, which leaves every label unchanged. Computed with mpmath.
    """
    import mpmath as mp

    with mp.workdps(_MP_DIGITS):
        z = r_row / alpha
        a = [mp.exp(mp.mpf(float(v - z.max()))) for v in z]
        m = [mp.mpf(float(v)) for v in mu_row]
        if labels == "exact_norm":
            Z = mp.fsum(mi * ai for mi, ai in zip(m, a))
            return np.array([float(ai / Z) for ai in a])
        if labels == "loo":
            inv = _mp_laplace(m, a, K, mp.mpf(0))
            return np.array([float(ai * (K - 1) * inv) for ai in a])
        if labels == "reward":
            return np.array([float(K * ai * _mp_laplace(m, a, K, ai)) for ai in a])
    raise ValueError(f"labels={labels!r} has no integral form; use 'reward', 'loo' or 'exact_norm'")


@functools.lru_cache(maxsize=256)
def _cached_coefficients(mu_bytes: bytes, r_bytes: bytes, alpha: float, K: int, labels: str) -> np.ndarray:
    mu_row = np.frombuffer(mu_bytes, dtype=np.float64)
    r_row = np.frombuffer(r_bytes, dtype=np.float64)
    return nca_label_coefficients(mu_row, r_row, alpha, K, labels)


def _integral_loss(loss, logpi: Tensor, mu: np.ndarray, r: np.ndarray, K: int, labels, rho: np.ndarray, hparams: dict) -> Tensor:
    if not (isinstance(loss, LossSpec) and loss.name == "nca"):
        raise ValueError(
            f"the one-dimensional-integral path exists only for 'nca' (per-response terms); loss {loss.name!r} "
            "needs enumeration"
        )
    if callable(labels) or labels not in ("reward", "loo", "exact_norm"):
        raise ValueError(f"the integral path for 'nca' supports labels 'reward', 'loo', 'exact_norm'; got {labels!r}")
    unknown = sorted(set(hparams) - {"beta", "alpha"})
    if unknown:
        raise ValueError(f"the integral path for 'nca' takes only beta and alpha; got {', '.join(unknown)}")
    beta = resolve_hparam(loss, hparams, "beta")
    alpha = resolve_hparam(loss, hparams, "alpha")
    if not (beta > 0 and alpha > 0):
        raise ValueError(f"beta and alpha must be > 0, got beta={beta}, alpha={alpha}")
    c = np.stack(
        [_cached_coefficients(m.tobytes(), rr.tobytes(), alpha, K, labels) for m, rr in zip(mu, r)]
    )
    mu_t = torch.from_numpy(mu)
    f = beta * (logpi - torch.log(mu_t))
    per_y = -torch.from_numpy(c) * torch.nn.functional.logsigmoid(f) - torch.nn.functional.logsigmoid(-f)
    return (torch.from_numpy(rho) * (mu_t * per_y).sum(dim=1)).sum()


# --------------------------------------------------------------------------------------------
# The population loss
# --------------------------------------------------------------------------------------------


def _context_weights(context_weights, X: int) -> np.ndarray:
    if context_weights is None:
        return np.full(X, 1.0 / X)
    rho = _as_f64(context_weights, "context_weights").reshape(-1)
    if rho.shape != (X,) or np.any(rho < 0) or abs(rho.sum() - 1.0) > 1e-9:
        raise ValueError(f"context_weights must be a probability vector of length X = {X}, got {rho}")
    return rho


def _label_hparams(loss, labels: Labels, R: Tensor, mu: np.ndarray, r: np.ndarray, K: int, hparams: dict, M: int) -> dict:
    """Extra keyword arguments of the loss call that realise the label source."""
    if callable(labels):
        if "label_weights" not in loss.defaults:
            raise ValueError(f"labels=<callable> gives label_weights, which loss {loss.name!r} does not take")
        lw = labels(R)
        if not isinstance(lw, Tensor) or lw.shape != R.shape:
            raise ValueError(f"the labels callable must return a tensor of shape {tuple(R.shape)}, got {getattr(lw, 'shape', type(lw))}")
        return {"label_weights": lw.to(torch.float64)}
    if labels == "loo":
        if "labels" not in loss.defaults:
            raise ValueError(f"labels='loo' is an option of infonca and nca; loss {loss.name!r} does not take it")
        return {"labels": "loo"}
    if labels == "exact_norm":
        if "label_weights" not in loss.defaults:
            raise ValueError(f"labels='exact_norm' gives label_weights, which loss {loss.name!r} does not take")
        alpha = resolve_hparam(loss, hparams, "alpha")
        z = r / alpha
        log_Z = np.log(np.sum(mu * np.exp(z - z.max(axis=1, keepdims=True)), axis=1)) + z.max(axis=1)  # [X]
        log_norm = torch.from_numpy(np.repeat(log_Z + math.log(K), M))[:, None]  # [X·M, 1]
        return {"label_weights": torch.exp(R / alpha - log_norm)}
    return {}


def population_loss(
    name: str,
    logpi,
    mu,
    r,
    K: int,
    labels: Labels = "reward",
    *,
    context_weights=None,
    flip_rate: float = 0.0,
    method: str = "auto",
    max_rows: int = MAX_ENUMERATED_ROWS,
    **hparams,
) -> Tensor:
    """Exact expectation of the registry loss ``name`` over K responses drawn i.i.d. from μ.

    E_{y_1..y_K ~ μ} [ loss(policy_logps = logpi[y], ref_logps = log μ[y], rewards = R, lengths = None) ]

    Args:
        name: a registry name or combination (``"nca"``, ``"nca+0.1*sft"``), see ``nca_lab.losses.get_loss``.
        logpi: policy log-probabilities ``[Y]`` or ``[X, Y]`` (numpy or torch; unconstrained — the free
            parameterisation passes any real vector). Gradients flow when it is a tensor requiring grad.
        mu, r: the instance, ``[Y]`` or ``[X, Y]`` (μ with full support, summing to 1 per context).
        K: responses per tuple.
        labels: ``"reward"``, ``"bt"`` (K = 2), ``"loo"``, ``"exact_norm"`` or a callable (module docstring).
        context_weights: distribution over the X contexts (default uniform).
        flip_rate: with ``labels="bt"``, each preference is flipped with this probability (rDPO's ε).
        method: ``"auto"`` (enumerate when at most ``max_rows`` rows, else the integral for ``nca``),
            ``"enumerate"`` or ``"integral"``.
        **hparams: the loss's hyperparameters (β, α, …); registry defaults otherwise.

    Returns:
        scalar float64 tensor: Σ_x ρ_x E[loss | x].
    """
    with one_thread():
        return _population_loss(name, logpi, mu, r, K, labels, context_weights, flip_rate, method, max_rows, hparams)


def _population_loss(name, logpi, mu, r, K, labels, context_weights, flip_rate, method, max_rows, hparams) -> Tensor:
    loss = get_loss(name)
    mu_in = mu
    mu, r = check_instance(mu, r)
    X, Y = mu.shape
    if isinstance(logpi, Tensor):
        logpi_t = logpi.to(torch.float64)
    else:
        logpi_t = torch.from_numpy(_as_f64(logpi, "logpi"))
    given_shape = tuple(logpi_t.shape)
    if logpi_t.dim() == 1:
        logpi_t = logpi_t[None]
    if tuple(logpi_t.shape) != (X, Y):
        raise ValueError(f"shape mismatch: logpi has shape {given_shape}, mu has shape {np.shape(mu_in)}")
    K = _check_K(K, loss)
    if not (callable(labels) or labels in LABEL_SOURCES):
        raise ValueError(f"labels must be one of {', '.join(map(repr, LABEL_SOURCES))} or a callable; got {labels!r}")
    for bad in ("label_weights", "labels", "mask", "lengths"):
        if bad in hparams:
            raise ValueError(f"{bad} is set by population_loss itself (use its `labels` argument), not passed as a hyperparameter")
    if not (0.0 <= flip_rate < 0.5):
        raise ValueError(f"flip_rate must lie in [0, 0.5), got {flip_rate!r}")
    if flip_rate and labels != "bt":
        raise ValueError("flip_rate applies to labels='bt' only")
    if method not in ("auto", "enumerate", "integral"):
        raise ValueError(f"method must be 'auto', 'enumerate' or 'integral', got {method!r}")
    rho = _context_weights(context_weights, X)

    if method == "integral":
        return _integral_loss(loss, logpi_t, mu, r, K, labels, rho, hparams)
    if labels == "bt":
        if K != 2:
            raise ValueError(f"labels='bt' (Bradley–Terry pairs) needs K = 2, got K = {K}")
        draws = _bt_draws(mu, r, flip_rate)
    else:
        try:
            draws = _reward_draws(mu, r, K, max_rows)
        except _TooManyRows as exc:
            if method == "auto" and isinstance(loss, LossSpec) and loss.name == "nca" and not callable(labels):
                return _integral_loss(loss, logpi_t, mu, r, K, labels, rho, hparams)
            raise ValueError(
                f"cannot enumerate: {exc}; only 'nca' (labels 'reward', 'loo', 'exact_norm') has the exact "
                f"large-K integral path; use a smaller K or Y"
            ) from None

    M = draws.idx.shape[0]
    idx = torch.from_numpy(draws.idx)
    policy = logpi_t[:, idx].reshape(X * M, K)
    ref = torch.from_numpy(np.log(mu)[:, draws.idx].reshape(X * M, K))
    R = torch.from_numpy(draws.R.reshape(X * M, K))
    extra = _label_hparams(loss, labels, R, mu, r, K, hparams, M)
    values = loss(policy, ref, R, **hparams, **extra).reshape(X, M)
    w = torch.from_numpy(np.exp(draws.log_w))
    # w = 0 rows (a BT orientation of probability exactly 0) must not turn an inf loss into NaN
    per_context = torch.where(w > 0, w * values, torch.zeros_like(values)).sum(dim=1)
    return (torch.from_numpy(rho) * per_context).sum()

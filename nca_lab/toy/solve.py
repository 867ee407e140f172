"""Minimisers of the exact population losses (``nca_lab.toy.population``) by damped Newton.

``optimum(name, mu, r, K, param="free"|"policy")`` returns, per context,

- the implicit reward r_θ* = β(log π* − log μ) for reference-based losses (β from ``hparams`` or the
  registry default; for ``ipo`` β is τ, so divide by β for IPO's log-ratio units),
- log π* for reference-free ones (``cpl``, ``simpo``, ``pro``, ``sft``, …).

Parameterisations:

- ``"free"``: log π unconstrained (the NCA paper's energy view). For a reference-based loss the
  Newton variable is f = β(log π − log μ) itself, for a reference-free one log π.
- ``"policy"``: π = softmax(θ); the Newton variable is θ with θ_0 = 0 (softmax ignores a common
  shift of θ, which would make the Hessian singular).

Gauge. A loss that is invariant to adding one constant to every log π (InfoNCA, DPO, IPO, CPL with
λ = 1, SimPO, …; detected numerically) has a line of free minimisers. ``optimum`` returns the point
of that line where π is normalised (Σ_y π*(y) = 1), i.e. it solves in the policy parameterisation.
So InfoNCA's free answer is r/α − β log E_μ e^{r/(αβ)} and DPO's is ``theory.dpo_bt_optimum``.

Solver: Newton's method with autograd gradient and Hessian (Y ≤ 8, so the full Hessian is
cheap), Levenberg–Marquardt damping when the Hessian is not positive definite, steps capped at 5 in
the ∞-norm, Armijo backtracking far from the solution. It stops when the Newton step at a positive
definite Hessian is below ``xtol`` (1e-10), or has stalled below 1e-7 at the round-off floor. The
error is then set by round-off: the computed gradient is off by ~1e-15·max(1, |loss|), which moves
its zero by up to ‖H⁻¹‖∞ times that. That is far below the contract's 1e-6 except where the loss is
nearly flat (a response with μ ≈ 1e-3 whose implicit reward saturates the sigmoid, e.g. InfoNCA with
μ = (0.999, 0.001), Δr/α = 17.9: smallest Hessian eigenvalue 3e-11, observed error 3.4e-6); there
:class:`IllConditionedWarning` is issued. A loss with no minimiser (DPO on deterministic preferences,
free CPL with λ < 1, …) keeps taking O(1) steps while its gradient decays: after ``max_iter``
iterations, once |x|∞ exceeds ``x_max``, or when the step vanishes only because the Hessian has
underflowed, :class:`NoMinimiserError` is raised instead of returning a point. Piecewise-linear
losses (``hinge``, ``rrhf``, ``clha``) have no Hessian and generally a set of minimisers; refused.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from nca_lab.losses import CombinedLoss, get_loss

from .population import Labels, check_instance, one_thread, population_loss, resolve_hparam

__all__ = ["optimum", "NoMinimiserError", "IllConditionedWarning", "newton_minimise", "is_shift_invariant"]

PIECEWISE_LINEAR = ("hinge", "rrhf", "clha")


class IllConditionedWarning(RuntimeWarning):
    """The returned minimiser may be off by more than 1e-6 because of float64 round-off: the
    population loss is nearly flat along some direction (e.g. a response with μ = 1e-3 whose
    implicit reward saturates the sigmoid)."""


class NoMinimiserError(RuntimeError):
    """The population loss has no (isolated) minimiser: Newton's iterates run off to infinity or do
    not settle."""


def _hessian(fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Value, gradient and Hessian of a scalar function at x (float64), by double backward."""
    x = x.detach().requires_grad_(True)
    value = fn(x)
    (grad,) = torch.autograd.grad(value, x, create_graph=True)
    if not grad.requires_grad:  # the loss is linear in x (SFT in the free log π): its Hessian is zero
        return value.detach(), grad.detach(), torch.zeros(x.numel(), x.numel(), dtype=x.dtype)
    rows = []
    for i in range(x.numel()):
        (row,) = torch.autograd.grad(grad[i], x, retain_graph=True, allow_unused=True)
        rows.append(torch.zeros_like(x) if row is None else row)
    return value.detach(), grad.detach(), torch.stack(rows).detach()


_TOY_DIR = os.path.dirname(os.path.abspath(__file__))


def _stacklevel_outside_toy(frame) -> int:
    """``stacklevel`` for a warning raised in ``frame`` (the warning's own frame is level 1) that points at the first
    frame outside ``nca_lab/toy``: the user's line, whether they called :func:`newton_minimise` or :func:`optimum`.
    Counting from the given frame, not this function's, keeps the count right when wrappers sit in between."""
    level = 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _TOY_DIR:
        frame, level = frame.f_back, level + 1
    return level


def newton_minimise(
    fn: Callable[[Tensor], Tensor],
    x0: Tensor,
    *,
    xtol: float = 1e-10,
    max_iter: int = 200,
    x_max: float = 1e4,
    warn_tol: float = 1e-6,
    max_step: float = 5.0,
    what: str = "loss",
) -> Tensor:
    """Minimise a smooth scalar function of a float64 vector by damped Newton (see module docstring).

    Returns x once the Newton step at a positive definite Hessian is ≤ ``xtol``, or has stalled
    (≤ 1e-7 and no longer halving: the round-off floor). Steps are capped at ``max_step`` in the
    ∞-norm (a trust region: log-probabilities rarely need to move more than that per step). Raises :class:`NoMinimiserError` if the
    iterates run off (|x|∞ > ``x_max``) or ``max_iter`` passes. Warns (:class:`IllConditionedWarning`)
    when round-off alone may move the minimiser by more than ``warn_tol``: the computed gradient
    carries an error of ~1e-15·max(1, |loss|) (a few ulps of the row terms), which shifts the point
    where it vanishes by up to ‖H⁻¹‖∞ times that.
    """
    x = x0.detach().clone().to(torch.float64)
    n = x.numel()
    eye = torch.eye(n, dtype=torch.float64)
    step_norm = prev_step = math.inf
    for it in range(max_iter):
        value, g, H = _hessian(fn, x)
        if not (torch.isfinite(value) and torch.isfinite(g).all() and torch.isfinite(H).all()):
            raise NoMinimiserError(f"{what}: non-finite value/gradient/Hessian at Newton iteration {it} (|x|∞ = {x.abs().max():.3g})")
        H = 0.5 * (H + H.T)
        scale = float(H.abs().max()) or 1.0
        L, info = torch.linalg.cholesky_ex(H)
        pd = int(info) == 0
        if not pd:
            # Levenberg–Marquardt: shift the spectrum just past 0 (relative margin 1e-6) so the step
            # is a descent direction; the step cap below keeps it from jumping across the domain.
            tau = max(0.0, -float(torch.linalg.eigvalsh(H)[0])) + 1e-6 * scale
            L = torch.linalg.cholesky(H + tau * eye)
        p = torch.cholesky_solve(-g[:, None], L)[:, 0]
        if float(p.abs().max()) > max_step:  # trust region in the ∞-norm: far from a minimiser,
            p = p * (max_step / float(p.abs().max()))  # Newton's step on a flat loss can be huge
        prev_step, step_norm = step_norm, float(p.abs().max())
        if pd and (step_norm <= xtol or (step_norm <= 1e-7 and step_norm > 0.5 * prev_step)):
            roundoff = 1e-15 * max(1.0, abs(float(value))) * float(torch.linalg.inv(H).abs().sum(dim=1).max())
            if roundoff > 1e-2:  # e.g. every gradient term underflowed far out along a descent direction
                raise NoMinimiserError(
                    f"{what}: Newton's step vanished at |x|∞ = {float(x.abs().max()):.3g}, but the Hessian is so "
                    f"small there that float64 does not determine a minimiser (round-off bound {roundoff:.2g})"
                )
            if roundoff > warn_tol:
                warnings.warn(
                    f"{what}: the minimiser is determined only to ~{roundoff:.1g} in float64 (smallest Hessian "
                    f"eigenvalue {float(torch.linalg.eigvalsh(H)[0]):.2g}: the loss is nearly flat along some direction)",
                    IllConditionedWarning,
                    stacklevel=_stacklevel_outside_toy(sys._getframe()),
                )
            return x + p
        if pd and step_norm <= 1e-4:
            # quadratic region: the full Newton step is right, and loss differences there are at
            # round-off level, so a line search would only stall.
            x = x + p
        else:
            t, slope = 1.0, float(g @ p)
            while float(fn(x + t * p)) > float(value) + 1e-4 * t * slope:
                t *= 0.5
                if t < 1e-12:
                    raise NoMinimiserError(f"{what}: line search failed at Newton iteration {it} (step {step_norm:.3g})")
            x = x + t * p
        if float(x.abs().max()) > x_max:
            raise NoMinimiserError(
                f"{what}: no minimiser — Newton's iterates ran off to |x|∞ = {float(x.abs().max()):.3g} "
                f"(> {x_max:g}) while the loss kept decreasing"
            )
    raise NoMinimiserError(
        f"{what}: no minimiser found — after {max_iter} Newton iterations the step is still {step_norm:.3g} "
        f"and |x|∞ = {float(x.abs().max()):.3g}: the loss keeps decreasing along a direction (e.g. DPO on "
        "deterministic preferences) or its minimiser is not isolated"
    )


def is_shift_invariant(name: str, mu, r, K: int, labels: Labels = "reward", **kwargs) -> bool:
    """Whether the population loss is unchanged by adding one constant to every log π (tested at two
    points with shifts of 0.7 and −1.3; invariant losses agree to round-off, others differ by O(1))."""
    mu, r = check_instance(mu, r)
    rng = np.random.default_rng(0)
    for c in (0.7, -1.3):
        lp = np.log(mu) + rng.normal(size=mu.shape) * 0.3
        a = float(population_loss(name, lp, mu, r, K, labels, **kwargs))
        b = float(population_loss(name, lp + c, mu, r, K, labels, **kwargs))
        if abs(a - b) > 1e-10 * (1.0 + abs(a)):
            return False
    return True


def optimum(
    name: str,
    mu,
    r,
    K: int,
    param: str = "free",
    labels: Labels = "reward",
    *,
    flip_rate: float = 0.0,
    method: str = "auto",
    xtol: float = 1e-10,
    max_iter: int = 200,
    **hparams,
) -> np.ndarray:
    """Minimiser of ``population_loss(name, ·, mu, r, K, labels, **hparams)``, float64 ``[Y]`` or ``[X, Y]``.

    Returns r_θ* = β(log π* − log μ) for reference-based losses, log π* for reference-free ones.
    ``param``: ``"free"`` (log π unconstrained; shift-invariant losses return the normalised
    representative) or ``"policy"`` (π = softmax θ). Contexts are solved independently (tabular
    parameters: the context weights do not move a context's minimiser). Raises
    :class:`NoMinimiserError` when there is none, ``ValueError`` on bad input or piecewise-linear losses.
    """
    loss = get_loss(name)
    names = [s.name for _, s in loss.terms] if isinstance(loss, CombinedLoss) else [loss.name]
    flat = [n for n in names if n in PIECEWISE_LINEAR]
    if flat:
        raise ValueError(
            f"optimum() uses Newton's method and needs a twice-differentiable loss; {flat[0]!r} is piecewise "
            "linear (no Hessian, and its minimiser is generally a set, not a point)"
        )
    if param not in ("free", "policy"):
        raise ValueError(f"param must be 'free' or 'policy', got {param!r}")
    with one_thread():
        return _optimum(name, loss, mu, r, K, param, labels, flip_rate, method, xtol, max_iter, hparams)


def _optimum(name, loss, mu, r, K, param, labels, flip_rate, method, xtol, max_iter, hparams) -> np.ndarray:
    mu2, r2 = check_instance(mu, r)
    squeeze = np.asarray(mu).ndim == 1
    kw = dict(flip_rate=flip_rate, method=method, **hparams)
    beta = resolve_hparam(loss, hparams, "beta") if loss.needs_ref else 1.0
    out = []
    for x_mu, x_r in zip(mu2, r2):
        log_mu = torch.from_numpy(np.log(x_mu))
        Y = len(x_mu)

        def F(logpi: Tensor) -> Tensor:
            return population_loss(name, logpi, x_mu, x_r, K, labels, **kw)

        use_policy = param == "policy" or is_shift_invariant(name, x_mu, x_r, K, labels, **kw)
        what = f"{name} (K={K}, labels={labels!r}, param={param!r})"
        if use_policy:
            def G(z: Tensor) -> Tensor:
                theta = torch.cat([torch.zeros(1, dtype=torch.float64), z])
                return F(torch.log_softmax(theta, dim=0))

            z0 = log_mu[1:] - log_mu[0]  # start at π = μ
            z = newton_minimise(G, z0, xtol=xtol, max_iter=max_iter, what=what)
            logpi = torch.log_softmax(torch.cat([torch.zeros(1, dtype=torch.float64), z]), dim=0)
        elif loss.needs_ref:
            f = newton_minimise(lambda f: F(log_mu + f / beta), torch.zeros(Y, dtype=torch.float64), xtol=xtol, max_iter=max_iter, what=what)
            out.append(f.numpy())
            continue
        else:
            logpi = newton_minimise(F, log_mu.clone(), xtol=xtol, max_iter=max_iter, what=what)
        out.append((beta * (logpi - log_mu)).numpy() if loss.needs_ref else logpi.numpy())
    res = np.stack(out)
    return res[0] if squeeze else res

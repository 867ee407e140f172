"""The loss atlas in the toy world: population losses under Plackett–Luce rankings (Proposition 24) and every
registry loss's population minimiser on one instance (the atlas figure, ``nca_lab.toy.atlas_plot``).

Plackett–Luce labels. K responses are drawn i.i.d. from μ (ordered tuples, probability ∏ μ) and ranked by a
Plackett–Luce draw with weights e^{r}: the probability of the order σ (σ(0) first) is
∏_k e^{r_σ(k)} / Σ_{j≥k} e^{r_σ(j)}. The loss sees R = (K − position), so a ranking-based loss reads the
order; every (tuple, order) pair is one row of one batched loss call, weighted by its probability
(Y^K·K! rows: 6 144 for Y = 4, K = 4). Nothing is sampled. At K = 2 this is the Bradley–Terry label source
``labels="bt"`` of :func:`nca_lab.toy.population_loss`.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import torch
from torch import Tensor

from nca_lab.losses import LOSSES, get_loss

from .population import check_instance, one_thread, resolve_hparam
from .solve import IllConditionedWarning, NoMinimiserError, is_shift_invariant, newton_minimise, optimum

__all__ = ["pl_population_loss", "pl_optimum", "ATLAS_INSTANCE", "ATLAS_HPARAMS", "atlas_minimisers"]

MAX_PL_ROWS = 200_000


def _pl_rows(mu_row: np.ndarray, r_row: np.ndarray, K: int):
    Y = len(mu_row)
    if Y**K * math.factorial(K) > MAX_PL_ROWS:
        raise ValueError(f"Plackett–Luce enumeration: Y^K·K! = {Y**K * math.factorial(K)} rows exceed {MAX_PL_ROWS}")
    tuples = np.array(list(itertools.product(range(Y), repeat=K)), dtype=np.int64).reshape(-1, K)
    perms = np.array(list(itertools.permutations(range(K))), dtype=np.int64)  # perms[p, k] = slot at position k
    idx = np.repeat(tuples, len(perms), axis=0)  # [T·P, K]
    order = np.tile(perms, (len(tuples), 1))  # [T·P, K]
    log_w = np.log(mu_row)[idx].sum(axis=1)
    ranked = np.take_along_axis(r_row[idx], order, axis=1)  # rewards in ranked order
    suffix = np.logaddexp.accumulate(ranked[:, ::-1], axis=1)[:, ::-1]
    log_w = log_w + (ranked - suffix)[:, :-1].sum(axis=1)
    R = np.empty_like(order, dtype=np.float64)
    np.put_along_axis(R, order, (K - np.arange(K, dtype=np.float64))[None].repeat(len(order), 0), axis=1)
    return idx, log_w, R


def pl_population_loss(name: str, logpi, mu, r, K: int, **hparams) -> Tensor:
    """E over K i.i.d. draws from μ and a Plackett–Luce(e^r) ranking of them of the registry loss ``name``, with
    R = K − position (one context, ``[Y]``). ``logpi``: policy log-probs ``[Y]`` (free parameterisation)."""
    loss = get_loss(name)
    mu2, r2 = check_instance(mu, r)
    if mu2.shape[0] != 1:
        raise ValueError("pl_population_loss takes one context ([Y])")
    mu_row, r_row = mu2[0], r2[0]
    idx, log_w, R = _pl_rows(mu_row, r_row, K)
    lp = logpi if isinstance(logpi, Tensor) else torch.as_tensor(np.asarray(logpi, dtype=np.float64))
    lp = lp.to(torch.float64)
    it = torch.from_numpy(idx)
    values = loss(lp[it], torch.from_numpy(np.log(mu_row)[idx]), torch.from_numpy(R), **hparams)
    return (torch.from_numpy(np.exp(log_w)) * values).sum()


def pl_optimum(name: str, mu, r, K: int, **hparams) -> np.ndarray:
    """Free minimiser r_θ* = β(log π* − log μ) of :func:`pl_population_loss` for a reference-based loss; a
    shift-invariant loss (detected as in ``nca_lab.toy.solve``) gets its normalised representative (Σ π* = 1)."""
    loss = get_loss(name)
    if not loss.needs_ref:
        raise ValueError("pl_optimum is for reference-based losses")
    mu2, r2 = check_instance(mu, r)
    mu_row, r_row = mu2[0], r2[0]
    beta = resolve_hparam(loss, hparams, "beta")
    log_mu = torch.from_numpy(np.log(mu_row))
    F = lambda logpi: pl_population_loss(name, logpi, mu_row, r_row, K, **hparams)  # noqa: E731
    with one_thread():
        rng = np.random.default_rng(0)
        lp0 = np.log(mu_row) + rng.normal(size=len(mu_row)) * 0.3
        shift_inv = abs(float(F(torch.from_numpy(lp0))) - float(F(torch.from_numpy(lp0 + 0.7)))) < 1e-10
        what = f"{name} (K={K}, Plackett–Luce labels)"
        if shift_inv:
            def G(z: Tensor) -> Tensor:
                return F(torch.log_softmax(torch.cat([torch.zeros(1, dtype=torch.float64), z]), dim=0))

            z = newton_minimise(G, log_mu[1:] - log_mu[0], what=what)
            logpi = torch.log_softmax(torch.cat([torch.zeros(1, dtype=torch.float64), z]), dim=0)
            return (beta * (logpi - log_mu)).numpy()
        f = newton_minimise(lambda f: F(log_mu + f / beta), torch.zeros(len(mu_row), dtype=torch.float64), what=what)
        return f.numpy()


# --------------------------------------------------------------------------------------------
# The atlas: every registry loss's population minimiser on one instance
# --------------------------------------------------------------------------------------------

# One instance (Y = 5, distinct rewards, μ with full support), α = β = 1 wherever a loss has them (the other
# hyperparameters at their registry defaults), so that every minimiser is on the scale of r.
ATLAS_INSTANCE = {"mu": [0.1, 0.3, 0.2, 0.25, 0.15], "r": [-1.0, 0.3, 1.2, -0.4, 0.7]}
ATLAS_HPARAMS = ("alpha", "beta")
PIECEWISE_LINEAR = ("hinge", "rrhf", "clha")


def _hp(name: str) -> dict:
    return {k: 1.0 for k in ATLAS_HPARAMS if k in LOSSES[name].defaults}


def atlas_minimisers(mu=None, r=None, Ks=(2, 4), labels: str = "reward") -> dict:
    """For every registry loss and K: the population minimiser (``nca_lab.toy.optimum``) on the instance with
    R = r (deterministic preferences; ``labels="bt"`` for Bradley–Terry pairs at K = 2), as a record:
    ``status`` ("finite", "none" = the solver's NoMinimiserError, "piecewise-linear" = not solved),
    ``f`` (reference-based: the free r_θ*; reference-free: log π*/μ of the policy parameterisation, where log π
    is a distribution), ``shift_invariant``, ``mass`` = Σ_y μ e^{f/β} (1 = self-normalised), ``message``."""
    mu = np.asarray(ATLAS_INSTANCE["mu"] if mu is None else mu, dtype=np.float64)
    r = np.asarray(ATLAS_INSTANCE["r"] if r is None else r, dtype=np.float64)
    out: dict = {}
    for name, spec in LOSSES.items():
        for K in Ks:
            key = f"{name}@K={K}"
            if name in PIECEWISE_LINEAR:
                out[key] = {"status": "piecewise-linear", "message": "not twice differentiable: not solved"}
                continue
            hp = _hp(name)
            param = "free" if spec.needs_ref else "policy"
            rec: dict = {"param": param, "hparams": hp}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    f = optimum(name, mu, r, K, param=param, labels=labels, **hp)
                except NoMinimiserError as exc:
                    rec.update(status="none", message=str(exc).split(": ", 1)[-1][:160])
                    out[key] = rec
                    continue
            if spec.needs_ref:
                beta = hp.get("beta", 1.0)
                f_plot = f
            else:
                beta = 1.0
                f_plot = f - np.log(mu)
            rec.update(
                status="finite",
                f=[float(v) for v in f_plot],
                shift_invariant=bool(is_shift_invariant(name, mu, r, K, labels=labels, **hp)),
                mass=float(np.sum(mu * np.exp(f_plot / beta))),
                ill_conditioned=any(issubclass(w.category, IllConditionedWarning) for w in caught),
            )
            out[key] = rec
    return out

"""Finite-data training dynamics in the toy bandit world (Propositions 15–18 of ``proofs/README.md``).

A batch of G independent problems (one per seed) is trained at once: problem g has X contexts,
Y responses, a reference μ[g, x, ·], rewards r[g, x, ·] and a finite dataset of N tuples of K
responses per context, drawn i.i.d. from μ(·|x). Every loss call goes through
:mod:`nca_lab.losses` unchanged: one call per step on all G·X·N tuples, ``policy_logps`` and
``ref_logps`` of shape ``[G·X·N, K]``, ``lengths=None`` (length-one responses).

Policies (all float64, all start exactly at π = μ):

- ``"tabular"``: logits θ[g, x, y], initialised at log μ; π = softmax(θ) per context.
- ``"loglinear"``: logits = log μ + Φ[g, x, y, :]·w[g] with random Gaussian features Φ of dimension
  d < X·Y, so one parameter vector is shared by every response of every context (w starts at 0).
- ``"mlp"``: logits = log μ + MLP(e(x, y)), a one-hidden-layer tanh network on the one-hot pair
  (x, y) (``mlp_input="onehot"``) or on the features Φ (``"features"``); the output layer starts
  at zero, so the initial policy is μ exactly.

Optimisation is full-batch: plain gradient descent (``"gd"``) or Adam (``"adam"``) on
Σ_g mean_{tuples of g} loss — the sum over problems keeps the G problems independent (each
parameter tensor has a leading G axis and Adam is elementwise), so batching seeds only saves time.

Recorded along training (every ``record_every`` steps, plus the first and the last):
log π(y_best|x) − log μ(y_best|x) and the same for y_worst, where y_best / y_worst are the
responses with the highest / lowest true reward r among those present in context x's dataset
(ties: the lowest response index); exact KL(π‖μ) and exact E_π r, both averaged over contexts;
the training loss; and log π itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from nca_lab.losses import get_loss

__all__ = [
    "POLICY_CLASSES",
    "OPTIMIZERS",
    "Problem",
    "Trajectory",
    "make_problems",
    "make_policy",
    "TabularPolicy",
    "LogLinearPolicy",
    "MLPPolicy",
    "train",
]

POLICY_CLASSES = ("tabular", "loglinear", "mlp")
OPTIMIZERS = ("gd", "adam")
LABELS = ("reward", "bt")


# --------------------------------------------------------------------------------------------
# Problems: bandits + finite datasets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """G independent finite-data bandit problems (numpy, float64 / int64).

    ``mu``: ``[G, X, Y]`` reference, full support, rows sum to 1. ``r``: ``[G, X, Y]`` true rewards.
    ``responses``: ``[G, X, N, K]`` response indices of the dataset's tuples. ``rewards``:
    ``[G, X, N, K]`` the data rewards R passed to the loss (r itself, or Bradley–Terry labels
    (1, 0)/(0, 1)). ``features``: ``[G, X, Y, d]`` or ``None`` (needed by the log-linear policy and
    the MLP on features). ``seeds``: the seed of each problem, when it came from :func:`make_problems`.
    """

    mu: np.ndarray
    r: np.ndarray
    responses: np.ndarray
    rewards: np.ndarray
    features: np.ndarray | None = None
    seeds: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        mu, r, resp, R = self.mu, self.r, self.responses, self.rewards
        for name, a, nd in (("mu", mu, 3), ("r", r, 3), ("responses", resp, 4), ("rewards", R, 4)):
            if not isinstance(a, np.ndarray) or a.ndim != nd:
                raise ValueError(f"Problem.{name} must be a {nd}-d numpy array, got {getattr(a, 'shape', type(a).__name__)}")
        if r.shape != mu.shape:
            raise ValueError(f"Problem.r has shape {r.shape}, expected mu's shape {mu.shape}")
        G, X, Y = mu.shape
        if resp.shape[:2] != (G, X) or R.shape != resp.shape:
            raise ValueError(
                f"Problem.responses {resp.shape} and rewards {R.shape} must both be [G, X, N, K] with (G, X) = {(G, X)}"
            )
        if resp.shape[3] < 2:
            raise ValueError(f"Problem.responses: K = {resp.shape[3]}; every loss here needs K >= 2")
        if not np.all(np.isfinite(mu)) or np.any(mu <= 0):
            raise ValueError("Problem.mu must be finite and > 0 everywhere (full support)")
        if np.max(np.abs(mu.sum(-1) - 1.0)) > 1e-9:
            raise ValueError("Problem.mu: every row mu[g, x, :] must sum to 1")
        if not np.all(np.isfinite(r)) or not np.all(np.isfinite(R)):
            raise ValueError("Problem.r and Problem.rewards must be finite")
        if not np.issubdtype(resp.dtype, np.integer) or resp.min() < 0 or resp.max() >= Y:
            raise ValueError(f"Problem.responses must be integer indices in [0, {Y})")
        if self.features is not None:
            f = self.features
            if not isinstance(f, np.ndarray) or f.ndim != 4 or f.shape[:3] != (G, X, Y) or not np.all(np.isfinite(f)):
                raise ValueError(f"Problem.features must be a finite [G, X, Y, d] array with (G, X, Y) = {(G, X, Y)}")
        if self.seeds is not None and len(self.seeds) != G:
            raise ValueError(f"Problem.seeds has {len(self.seeds)} entries for G = {G} problems")

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """(G, X, Y, N, K)."""
        G, X, Y = self.mu.shape
        return G, X, Y, self.responses.shape[2], self.responses.shape[3]

    def best_worst(self) -> tuple[np.ndarray, np.ndarray]:
        """``[G, X]`` indices of the highest- and lowest-true-reward responses present in each
        context's dataset (ties: lowest response index, which is what ``argmax`` returns)."""
        G, X, Y = self.mu.shape
        present = np.zeros((G, X, Y), dtype=bool)
        g, x = np.meshgrid(np.arange(G), np.arange(X), indexing="ij")
        flat = self.responses.reshape(G, X, -1)
        for j in range(flat.shape[2]):
            present[g, x, flat[:, :, j]] = True
        best = np.where(present, self.r, -np.inf).argmax(-1)
        worst = np.where(present, self.r, np.inf).argmin(-1)
        return best, worst


def make_problems(
    seeds: Sequence[int],
    *,
    contexts: int,
    responses: int,
    tuples: int,
    K: int,
    features_dim: int = 8,
    labels: str = "reward",
    reward_scale: float = 1.0,
    mu_concentration: float = 1.0,
    mu_floor: float = 0.1,
) -> Problem:
    """One random problem per seed, stacked along G.

    For each seed (``np.random.default_rng(seed)``, draws in this order): μ(·|x) =
    (1 − ``mu_floor``)·Dirichlet(``mu_concentration``) + ``mu_floor``/Y (so min μ ≥ mu_floor/Y);
    r(x, y) = ``reward_scale``·N(0, 1); ``tuples`` tuples of K responses per context drawn i.i.d.
    from μ(·|x); for ``labels="bt"`` (K = 2) the Bradley–Terry coin per tuple, P(first ≻ second) =
    σ(r_1 − r_2), giving data rewards (1, 0) or (0, 1) (``labels="reward"`` uses R = r of the drawn
    responses); last, features Φ(x, y) ~ N(0, I_d)/√d, always drawn, so tabular and log-linear runs
    on the same seed see the same data whatever d is. μ and r depend on (seed, X, Y) only, so two
    calls differing only in K or the number of tuples share the bandit (for equal reward_scale,
    mu_concentration and mu_floor).
    """
    if labels not in LABELS:
        raise ValueError(f"labels must be one of {LABELS}, got {labels!r}")
    if labels == "bt" and K != 2:
        raise ValueError(f'labels="bt" needs K = 2 (pairs), got K = {K}')
    for name, v in (("contexts", contexts), ("responses", responses), ("tuples", tuples), ("features_dim", features_dim)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not isinstance(K, int) or K < 2:
        raise ValueError(f"K must be an integer >= 2, got {K!r}")
    if not 0 < mu_floor < 1:
        raise ValueError(f"mu_floor must lie in (0, 1), got {mu_floor!r}")
    if len(seeds) == 0:
        raise ValueError("seeds must be a non-empty sequence of integers")
    X, Y, N = contexts, responses, tuples
    mus, rs, resps, Rs, feats = [], [], [], [], []
    for seed in seeds:
        rng = np.random.default_rng(int(seed))
        mu = (1 - mu_floor) * rng.dirichlet(np.full(Y, float(mu_concentration)), size=X) + mu_floor / Y
        mu = mu / mu.sum(-1, keepdims=True)
        r = reward_scale * rng.standard_normal((X, Y))
        resp = np.stack([rng.choice(Y, size=(N, K), p=mu[x]) for x in range(X)])
        rr = np.take_along_axis(r[:, None, :].repeat(N, 1), resp, axis=2)
        if labels == "reward":
            R = rr
        else:
            p_first = 1.0 / (1.0 + np.exp(-(rr[..., 0] - rr[..., 1])))
            first = rng.random((X, N)) < p_first
            R = np.stack([first, ~first], axis=-1).astype(np.float64)
        # features last, so the data of a seed does not depend on features_dim
        phi = rng.standard_normal((X, Y, features_dim)) / np.sqrt(features_dim)
        mus.append(mu), rs.append(r), resps.append(resp), Rs.append(R), feats.append(phi)
    return Problem(
        mu=np.stack(mus),
        r=np.stack(rs),
        responses=np.stack(resps).astype(np.int64),
        rewards=np.stack(Rs).astype(np.float64),
        features=np.stack(feats),
        seeds=tuple(int(s) for s in seeds),
    )


# --------------------------------------------------------------------------------------------
# Policies: forward() -> log π [G, X, Y]
# --------------------------------------------------------------------------------------------


class TabularPolicy(nn.Module):
    """π(·|x) = softmax(θ[g, x, ·]), θ initialised at log μ (so π = μ at step 0)."""

    def __init__(self, log_mu: Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(log_mu.clone())

    def forward(self) -> Tensor:
        return torch.log_softmax(self.theta, dim=-1)


class LogLinearPolicy(nn.Module):
    """π(·|x) ∝ μ(·|x)·exp(Φ[g, x, ·, :]·w[g]); w ∈ R^d shared by all contexts and responses, w₀ = 0."""

    def __init__(self, log_mu: Tensor, features: Tensor) -> None:
        super().__init__()
        self.register_buffer("log_mu", log_mu)
        self.register_buffer("features", features)
        self.w = nn.Parameter(torch.zeros(features.shape[0], features.shape[-1], dtype=log_mu.dtype))

    def forward(self) -> Tensor:
        # elementwise product + sum rather than a matmul: a fixed reduction order, no BLAS blocking
        logits = self.log_mu + (self.features * self.w[:, None, None, :]).sum(-1)
        return torch.log_softmax(logits, dim=-1)


class MLPPolicy(nn.Module):
    """π(·|x) ∝ μ(·|x)·exp(v[g]·tanh(W[g]ᵀe(x, y) + b[g])), one hidden layer of width H.

    e(x, y): ``[G, X, Y, D]`` inputs (one-hot of x concatenated with one-hot of y, or features).
    W[g] ~ N(0, 1/D) from ``np.random.default_rng([init_seed, keys[g]])`` (``keys``: the problems'
    seeds, so a problem gets the same network whether it is trained alone or in a batch), b = 0,
    v = 0: the output starts at exactly zero (π = μ) and the first step moves v only (the gradient
    on W is v-weighted).
    """

    def __init__(self, log_mu: Tensor, inputs: Tensor, hidden: int, init_seed: int, keys: Sequence[int]) -> None:
        super().__init__()
        G, X, Y, D = inputs.shape
        W = np.stack([np.random.default_rng([init_seed, k]).standard_normal((D, hidden)) for k in keys])
        self.register_buffer("log_mu", log_mu)
        self.register_buffer("inputs", inputs.reshape(G, X * Y, D))
        self.W = nn.Parameter(torch.from_numpy(W / np.sqrt(D)))
        self.b = nn.Parameter(torch.zeros(G, 1, hidden, dtype=torch.float64))
        self.v = nn.Parameter(torch.zeros(G, 1, hidden, dtype=torch.float64))

    def forward(self) -> Tensor:
        h = torch.tanh(torch.bmm(self.inputs, self.W) + self.b)  # [G, X·Y, H]
        out = (h * self.v).sum(-1).reshape(self.log_mu.shape)
        return torch.log_softmax(self.log_mu + out, dim=-1)


def make_policy(
    kind: str, problem: Problem, *, hidden: int = 32, mlp_input: str = "onehot", init_seed: int = 0
) -> nn.Module:
    """The policy module of class ``kind`` (one of :data:`POLICY_CLASSES`) for ``problem``, at π = μ."""
    if kind not in POLICY_CLASSES:
        raise ValueError(f"policy must be one of {POLICY_CLASSES}, got {kind!r}")
    log_mu = torch.from_numpy(np.log(problem.mu))
    if kind == "tabular":
        return TabularPolicy(log_mu)
    if kind == "loglinear" or mlp_input == "features":
        if problem.features is None:
            raise ValueError(f"policy {kind!r} (input {mlp_input!r}) needs Problem.features, which is None")
        feats = torch.from_numpy(problem.features)
    if kind == "loglinear":
        return LogLinearPolicy(log_mu, feats)
    if mlp_input not in ("onehot", "features"):
        raise ValueError(f'mlp_input must be "onehot" or "features", got {mlp_input!r}')
    if not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"hidden must be a positive integer, got {hidden!r}")
    if mlp_input == "onehot":
        G, X, Y = problem.mu.shape
        ex = torch.eye(X, dtype=torch.float64)[:, None, :].expand(X, Y, X)
        ey = torch.eye(Y, dtype=torch.float64)[None, :, :].expand(X, Y, Y)
        feats = torch.cat([ex, ey], dim=-1)[None].expand(G, X, Y, X + Y).contiguous()
    keys = problem.seeds if problem.seeds is not None else tuple(range(problem.mu.shape[0]))
    return MLPPolicy(log_mu, feats, hidden, init_seed, keys)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class Trajectory:
    """Recorded training run. Arrays are numpy float64; T = number of recorded steps.

    ``steps`` [T]; ``loss``, ``kl``, ``reward`` [T, G] (per problem: mean loss over its tuples,
    exact KL(π‖μ) and E_π r averaged over its contexts); ``logratio_best``, ``logratio_worst``
    [T, G, X] (log π − log μ at the dataset's best / worst response); ``logpi`` [T, G, X, Y];
    ``best``, ``worst`` [G, X] response indices; ``config``: what was trained.
    """

    steps: np.ndarray
    loss: np.ndarray
    kl: np.ndarray
    reward: np.ndarray
    logratio_best: np.ndarray
    logratio_worst: np.ndarray
    logpi: np.ndarray
    best: np.ndarray
    worst: np.ndarray
    config: dict = field(default_factory=dict)

    @property
    def reference_reward(self) -> np.ndarray:
        """E_μ r averaged over contexts, ``[G]`` (the reward at step 0)."""
        return self.reward[0]


def _gather(t: Tensor, idx: Tensor) -> Tensor:
    """t [G, X, Y], idx [G, X, N, K] → t at idx, [G, X, N, K]."""
    G, X, N, K = idx.shape
    return torch.gather(t, 2, idx.reshape(G, X, N * K)).reshape(G, X, N, K)


def train(
    problem: Problem,
    loss: str,
    *,
    hparams: Mapping[str, object] | None = None,
    policy: str = "tabular",
    optimizer: str = "adam",
    lr: float = 0.05,
    steps: int = 500,
    record_every: int = 10,
    hidden: int = 32,
    mlp_input: str = "onehot",
    init_seed: int = 0,
) -> Trajectory:
    """Train ``policy`` on ``problem``'s dataset with the registry loss ``loss`` (a name or a
    combination such as ``"nca+0.1*sft"``) and hyperparameters ``hparams``, full batch, for
    ``steps`` updates of ``optimizer`` (``"gd"``: θ ← θ − lr·∇, ``"adam"``: torch defaults with lr).

    Objective: Σ_g mean_{x, n} loss(log π[g, x, tuple], log μ[g, x, tuple], R[g, x, n]).
    Quantities are recorded at step 0 (π = μ), every ``record_every`` steps, and after the last
    update; the loss recorded at a step is the loss of the parameters at that step.
    Deterministic: float64, CPU, no sampling (the MLP's initialisation uses ``init_seed`` and the
    problems' seeds). Problems do not interact: training a sub-batch of the seeds gives the same
    trajectories for those seeds (up to round-off).
    Raises ``FloatingPointError`` if the loss stops being finite (name the step and problem).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if not isinstance(record_every, int) or record_every < 1:
        raise ValueError(f"record_every must be an integer >= 1, got {record_every!r}")
    if not (isinstance(lr, (int, float)) and np.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    spec = get_loss(loss)
    hparams = dict(hparams or {})
    G, X, Y, N, K = problem.shape
    net = make_policy(policy, problem, hidden=hidden, mlp_input=mlp_input, init_seed=init_seed)
    params = list(net.parameters())
    opt = torch.optim.SGD(params, lr=lr) if optimizer == "gd" else torch.optim.Adam(params, lr=lr)

    log_mu = torch.from_numpy(np.log(problem.mu))
    r = torch.from_numpy(problem.r)
    idx = torch.from_numpy(problem.responses)
    ref_logps = _gather(log_mu, idx).reshape(G * X * N, K)
    rewards = torch.from_numpy(problem.rewards).reshape(G * X * N, K)
    best, worst = problem.best_worst()
    best_t, worst_t = torch.from_numpy(best)[..., None], torch.from_numpy(worst)[..., None]

    rec: dict[str, list] = {k: [] for k in ("steps", "loss", "kl", "reward", "best", "worst", "logpi")}
    for t in range(steps + 1):
        logpi = net()
        policy_logps = _gather(logpi, idx).reshape(G * X * N, K)
        # validate the data once (step 0); afterwards skip the checks, as the LLM trainer does
        per_tuple = spec(policy_logps, ref_logps, rewards, validate=(t == 0), **hparams)
        per_problem = per_tuple.reshape(G, X * N).mean(dim=1)
        if not bool(torch.isfinite(per_problem).all()):
            g = int(torch.nonzero(~torch.isfinite(per_problem))[0, 0])
            raise FloatingPointError(f"{loss}: loss is {float(per_problem[g].detach())} at step {t} for problem {g}")
        if t % record_every == 0 or t == steps:
            with torch.no_grad():
                ratio = logpi - log_mu
                pi = logpi.exp()
                rec["steps"].append(t)
                rec["loss"].append(per_problem.detach().numpy().copy())
                rec["kl"].append(torch.where(pi > 0, pi * ratio, torch.zeros_like(pi)).sum(-1).mean(-1).numpy().copy())
                rec["reward"].append((pi * r).sum(-1).mean(-1).numpy().copy())
                rec["best"].append(torch.gather(ratio, 2, best_t)[..., 0].numpy().copy())
                rec["worst"].append(torch.gather(ratio, 2, worst_t)[..., 0].numpy().copy())
                rec["logpi"].append(logpi.detach().numpy().copy())
        if t == steps:
            break
        opt.zero_grad(set_to_none=True)
        per_problem.sum().backward()
        opt.step()

    return Trajectory(
        steps=np.asarray(rec["steps"], dtype=np.int64),
        loss=np.stack(rec["loss"]),
        kl=np.stack(rec["kl"]),
        reward=np.stack(rec["reward"]),
        logratio_best=np.stack(rec["best"]),
        logratio_worst=np.stack(rec["worst"]),
        logpi=np.stack(rec["logpi"]),
        best=best,
        worst=worst,
        config=dict(
            loss=loss, hparams=hparams, policy=policy, optimizer=optimizer, lr=lr, steps=steps,
            record_every=record_every, hidden=hidden, mlp_input=mlp_input, init_seed=init_seed,
        ),
    )

"""The loss module: every contrastive alignment objective as a pure function on ``[B, K]`` tensors.

One module serves both worlds: the toy bandit simulator (``nca_lab.toy``) and the LLM trainer
(``nca_lab.llm``) call these functions unchanged.

The loss contract (this docstring is where it is stated; the toy world, the trainer and the tests rely on
it). Notation: R = the data rewards (scores in the dataset); r_θ = the implicit reward of the model. Every
loss is a pure function::

    loss = name(policy_logps, ref_logps, rewards, *, mask=None, lengths=None, **hparams)  # -> Tensor[B]

- ``policy_logps``, ``ref_logps``: float ``[B, K]``, *summed* log π(y_k | x_b) over the response tokens
  of the K responses of each prompt. Reference-free losses accept ``ref_logps=None`` (and ignore it).
- ``rewards``: float ``[B, K]``, the data rewards R (higher is better). A pairwise preference is
  K = 2 with R = (1, 0).
- ``mask``: bool ``[B, K]``, True where response k exists (prompts may have fewer than K responses).
  Masked entries reach neither the loss nor the gradient, even when they hold NaN or ±inf.
- ``lengths``: ``[B, K]`` response token counts, or ``None`` meaning length 1 (the toy world). Losses
  defined on length-normalised scores s = logps / lengths (``ipo``, ``simpo``, ``clha``, ``pro``,
  ``rrhf``; ``sft`` is a token mean) divide themselves: callers (the LLM trainer) always pass summed
  log-probs and lengths.
- returns the per-prompt loss ``[B]``: float64 if an input log-prob tensor is float64, float32
  otherwise (bf16/fp16 inputs are upcast before any arithmetic). Callers average.

Conventions shared by all losses:

- implicit reward r_θ = β·(policy_logps − ref_logps);
- soft labels (``infonca``, ``nca``) over the n valid responses: w = softmax(R / α)
  (``labels="softmax"``), or leave-one-out labels w_i = e^{R_i/α} / (n · mean_{j≠i} e^{R_j/α})
  (``labels="loo"``), or explicit ``label_weights`` ``[B, K]`` (override both; need not sum to 1);
- "best"/"worst" (w/l) are the valid responses with the highest/lowest R; among equal R the lowest
  index wins. A pair with equal R carries no preference and is skipped; a prompt whose valid
  responses all tie contributes 0 to a pairwise loss;
- ``pairs`` (every pairwise loss: ``dpo``, ``cdpo``, ``rdpo``, ``ipo``, ``hinge``, ``nca_pair``,
  ``cpl``, ``simpo``): ``"best_worst"`` (default), ``"best_rest"`` (best against every valid
  response with lower R, averaged) or ``"all"`` (every ordered pair with R_i > R_j, averaged; CPL's
  rank mode);
- ``validate=False`` skips the data checks that need a host–device synchronisation (NaN rewards,
  counts of valid responses). The LLM trainer validates its data once at load time and passes
  ``validate=False`` inside the training step; hyperparameter checks always run.

The losses (per prompt; h = r_θ,w − r_θ,l; s = logps / lengths; each function's docstring gives the
source, the default hyperparameters, where it differs from the authors' code and, where one applies,
the proposition of ``proofs/README.md`` about its optimum):

=============  ==============================================================================================
``infonca``    −Σ_i w_i log softmax(r_θ)_i
``nca``        −Σ_i [ w_i log σ(r_θ,i) + (1/n) log σ(−r_θ,i) ], n = number of valid responses
``nca_pair``   −log σ(r_θ,w) − ½ log σ(−r_θ,w) − ½ log σ(−r_θ,l)
``dpo``        −log σ(h)
``cdpo``       −(1−ε) log σ(h) − ε log σ(−h)  (conservative DPO, label smoothing)
``rdpo``       [(1−ε) ℓ(h) − ε ℓ(−h)] / (1 − 2ε), ℓ(h) = −log σ(h)  (provably robust DPO)
``ipo``        (h' − 1/(2β))², h' = (s_w − s^ref_w) − (s_l − s^ref_l) (length-normalised, no β inside)
``hinge``      max(0, 1 − h)  (SLiC)
``clha``       rank-offset hinges max(0, margin·i − (s_k − s_{k+i})) on pairs with an R gap > min_gap,
               + an SFT term on the best when its R > sft_gate (reference-free)
``pro``        Σ_k [ log(e^{s_k T_kk} + Σ_{j>k} e^{s_j T_kj}) − s_k T_kk ], T_kj = R_k − R_j, + an SFT term
               on the best (reference-free)
``rrhf``       Σ_{R_i < R_j} max(0, s_i − s_j) + sft_weight·(−s_best)  (reference-free)
``cpl``        −log σ(α·log π_w − λ·α·log π_l)  (reference-free, summed log-probs)
``simpo``      −log σ(β(s_w − s_l) − γ)  (reference-free)
``sft``        −log π(y_best) / |y_best|  (token-mean NLL of the best response)
=============  ==============================================================================================

The loss atlas (the field's other objectives at any K; TRL 1.16's loss types where it has them):

=================  ==========================================================================================
``exo``            Σ_i p_i (log p_i − log q_i), p = softmax(r_θ), q = (1−ε)w + ε(1−w)/(n−1)  (listwise EXO)
``apo_zero``       (1 − σ(r_θ,w)) + σ(r_θ,l)
``apo_down``       σ(r_θ,w) + 1 − σ(h)
``discopop``       (1 − σ(h/τ))·(−log σ(h)) + σ(h/τ)·e^{−h}
``bco_pair``       −log σ(r_θ,w) − log σ(−r_θ,l)
``sigmoid_norm``   −log σ(β(g_w − g_l)), g = (log π_θ − log π_ref)/length  (length-normalised DPO)
``sppo``           Σ_i (ρ_i − (P̂_i − ½)/β)², ρ = log π_θ − log π_ref, P̂_i = in-tuple win rate
``plackett_luce``  −Σ_k [r_θ,σ(k) − log Σ_{j≥k} e^{r_θ,σ(j)}], σ = order by R  (listwise DPO)
``astar_po``       mean_i (r_θ,i − R_i/α + log mean_j e^{R_j/α})²  (A*PO-style regression)
``orpo``           −s_w − λ log σ(o_w − o_l), o = s − log(1 − e^s)  (reference-free)
``kto``            mean over desirable/undesirable responses of 1 − σ(±β(ρ_i − z₀))
=================  ==========================================================================================

The registry :data:`LOSSES` maps each name to a :class:`LossSpec`: the function, whether it needs the
reference, whether it uses lengths, whether it uses the scalar rewards (not only their order), whether it
takes ``pairs``, and the paper's default hyperparameters (the CLI's defaults when a flag is not given).
:func:`get_loss` also accepts weighted combinations such as ``"nca+0.1*sft"`` (weighted sums of registry
losses, parsed from the string).
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LOSSES",
    "LossSpec",
    "CombinedLoss",
    "get_loss",
    "best_worst_indices",
    "implicit_rewards",
    "soft_labels",
    "infonca",
    "nca",
    "nca_pair",
    "dpo",
    "cdpo",
    "rdpo",
    "ipo",
    "hinge",
    "clha",
    "pro",
    "rrhf",
    "cpl",
    "simpo",
    "sft",
    "exo",
    "apo_zero",
    "apo_down",
    "discopop",
    "bco_pair",
    "sigmoid_norm",
    "sppo",
    "plackett_luce",
    "astar_po",
    "orpo",
    "kto",
]

PAIR_MODES = ("best_worst", "best_rest", "all")
LABEL_MODES = ("softmax", "loo")


# --------------------------------------------------------------------------------------------
# Input handling shared by every loss
# --------------------------------------------------------------------------------------------


@dataclass
class _Batch:
    """Validated, sanitised inputs in the compute dtype. Masked entries are replaced by 0."""

    logps: Tensor  # [B, K]
    ref: Tensor | None  # [B, K]
    rewards: Tensor  # [B, K]
    mask: Tensor  # [B, K] bool
    lengths: Tensor  # [B, K] (ones when lengths=None)
    n_valid: Tensor  # [B] number of valid responses, compute dtype


def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    # float64 in → float64 out (the toy world); everything else, bf16/fp16 included, is computed
    # in float32 because logsigmoid/logsumexp in half precision lose the differences that matter.
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def _check_same_shape(name: str, t: Tensor, shape: torch.Size) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape [B, K], got {type(t).__name__}")
    if t.shape != shape:
        raise ValueError(
            f"shape mismatch: {name} has shape {tuple(t.shape)} but policy_logps has shape {tuple(shape)}"
        )


def _prepare(
    loss_name: str,
    policy_logps: Tensor,
    ref_logps: Tensor | None,
    rewards: Tensor,
    mask: Tensor | None,
    lengths: Tensor | None,
    *,
    needs_ref: bool,
    min_valid: int,
    validate: bool,
) -> _Batch:
    if not isinstance(policy_logps, Tensor) or policy_logps.dim() != 2:
        shape = tuple(policy_logps.shape) if isinstance(policy_logps, Tensor) else type(policy_logps).__name__
        raise ValueError(f"{loss_name}: policy_logps must be a [B, K] tensor, got {shape}")
    shape = policy_logps.shape
    if shape[1] < 1:
        raise ValueError(f"{loss_name}: policy_logps has K = 0 responses per prompt")
    if needs_ref and ref_logps is None:
        raise ValueError(f"{loss_name} needs ref_logps (the reference model's summed log-probs); got None")
    if ref_logps is not None:
        _check_same_shape("ref_logps", ref_logps, shape)
    _check_same_shape("rewards", rewards, shape)
    if mask is None:
        mask = torch.ones(shape, dtype=torch.bool, device=policy_logps.device)
    else:
        _check_same_shape("mask", mask, shape)
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    if lengths is not None:
        _check_same_shape("lengths", lengths, shape)

    dtype = _compute_dtype(policy_logps, ref_logps)
    zero = torch.zeros((), dtype=dtype, device=policy_logps.device)

    def clean(t: Tensor) -> Tensor:
        # torch.where routes no gradient to the masked branch, so NaN/inf there stays harmless.
        return torch.where(mask, t.to(dtype), zero)

    r = rewards.to(dtype)
    if validate:
        n = mask.sum(dim=1)
        if bool((n < min_valid).any()):
            row = int(torch.nonzero(n < min_valid)[0, 0])
            raise ValueError(
                f"{loss_name}: row {row} has {int(n[row])} valid response(s); "
                f"{loss_name} needs at least {min_valid}"
            )
        bad = mask & ~torch.isfinite(r)
        if bool(bad.any()):
            row, k = (int(i) for i in torch.nonzero(bad)[0])
            raise ValueError(f"{loss_name}: rewards[{row}, {k}] is {float(r[row, k])} in a valid entry (NaN/inf reward)")
        if lengths is not None:
            badl = mask & ~(lengths > 0)
            if bool(badl.any()):
                row, k = (int(i) for i in torch.nonzero(badl)[0])
                raise ValueError(f"{loss_name}: lengths[{row}, {k}] = {lengths[row, k].item()} must be > 0 (empty response)")
    ln = torch.ones(shape, dtype=dtype, device=policy_logps.device) if lengths is None else clean(lengths)
    ln = torch.where(mask, ln, torch.ones((), dtype=dtype, device=ln.device))
    return _Batch(
        logps=clean(policy_logps),
        ref=None if ref_logps is None else clean(ref_logps),
        rewards=clean(r),
        mask=mask,
        lengths=ln,
        n_valid=mask.sum(dim=1).to(dtype),
    )


def _positive(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _nonneg(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _finite(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_eps(eps: float) -> float:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not (0.0 <= eps < 0.5):
        raise ValueError(f"eps must lie in [0, 0.5), got {eps!r}")
    return float(eps)


def _check_lam(lam: float) -> float:
    if not isinstance(lam, (int, float)) or isinstance(lam, bool) or not (0.0 < lam <= 1.0):
        raise ValueError(f"lam must lie in (0, 1], got {lam!r}")
    return float(lam)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value


def _masked_log_softmax(z: Tensor, mask: Tensor) -> Tensor:
    """log softmax of z over the valid entries of each row; 0 (not -inf) at masked entries so that
    products with zero weights stay finite in value and gradient."""
    zm = torch.where(mask, z, torch.full_like(z, -math.inf))
    zm = torch.where(mask.any(dim=-1, keepdim=True), zm, torch.zeros_like(z))  # rows with no valid entry
    # torch.log_softmax (not z − logsumexp z) keeps equal scores exactly equal: round-off there is
    # what limits the toy solvers' accuracy on nearly flat losses.
    return torch.where(mask, torch.log_softmax(zm, dim=-1), torch.zeros_like(z))


# --------------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------------


def implicit_rewards(policy_logps: Tensor, ref_logps: Tensor, beta: float) -> Tensor:
    """r_θ = β·(log π_θ − log π_ref), elementwise; shapes ``[B, K]``."""
    return beta * (policy_logps - ref_logps)


def best_worst_indices(rewards: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Indices ``[B]`` of the best and worst valid responses: highest/lowest R, lowest index on ties.

    ``torch.argmax``/``argmin`` return the first extremal index, which is exactly the tie rule.
    Masked entries (even NaN) are never chosen.
    """
    if mask is None:
        mask = torch.ones_like(rewards, dtype=torch.bool)
    r = torch.where(mask, rewards, torch.zeros_like(rewards))
    best = torch.where(mask, r, torch.full_like(r, -math.inf)).argmax(dim=1)
    worst = torch.where(mask, r, torch.full_like(r, math.inf)).argmin(dim=1)
    return best, worst


def soft_labels(
    rewards: Tensor,
    mask: Tensor | None = None,
    *,
    alpha: float,
    labels: str = "softmax",
) -> Tensor:
    """Soft labels ``[B, K]`` over the valid responses (0 at masked entries).

    ``labels="softmax"``: w_i = e^{R_i/α} / Σ_j e^{R_j/α} (the NCA paper's labels).
    ``labels="loo"``: w_i = e^{R_i/α} / (n · mean_{j≠i} e^{R_j/α}) with n valid responses — the
    leave-one-out label of Proposition 19 (needs n ≥ 2; does not sum to 1; unbounded: it is
    +inf where a gap R_i − R_j divided by α overflows, which the losses report as an error).
    Computed in log space, so α = 1e-4 on 1–10 scores (the NCA recipe) is exact, not NaN.
    """
    alpha = _positive("alpha", alpha)
    _check_choice("labels", labels, LABEL_MODES)
    if mask is None:
        mask = torch.ones_like(rewards, dtype=torch.bool)
    z = torch.where(mask, rewards / alpha, torch.zeros_like(rewards))
    if labels == "softmax":
        return torch.where(mask, _masked_log_softmax(z, mask).exp(), torch.zeros_like(z))
    # leave-one-out: log w_i = z_i − log n − log mean_{j≠i} e^{z_j}
    K = z.shape[1]
    n = mask.sum(dim=1, keepdim=True).to(z.dtype)
    eye = torch.eye(K, dtype=torch.bool, device=z.device)
    others = mask[:, None, :] & ~eye[None]  # [B, i, j]: valid j ≠ i
    zz = torch.where(others, z[:, None, :].expand(-1, K, -1), torch.full((), -math.inf, dtype=z.dtype, device=z.device))
    lse = torch.logsumexp(zz, dim=-1)
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    log_mean_others = lse - torch.log((n - 1).clamp_min(1))
    logw = z - torch.log(n.clamp_min(1)) - log_mean_others
    return torch.where(mask, logw.exp(), torch.zeros_like(z))


def _labels_for(b: _Batch, alpha: float, labels: str, label_weights: Tensor | None, validate: bool) -> Tensor:
    if label_weights is not None:
        _check_same_shape("label_weights", label_weights, b.mask.shape)
        lw = torch.where(b.mask, label_weights.to(b.logps.dtype), torch.zeros_like(b.logps))
        if validate:
            bad = b.mask & ~(torch.isfinite(label_weights) & (label_weights >= 0))
            if bool(bad.any()):
                row, k = (int(i) for i in torch.nonzero(bad)[0])
                raise ValueError(f"label_weights[{row}, {k}] = {float(label_weights[row, k])} must be finite and >= 0")
        return lw
    # no check for rows with < 2 valid responses here: both callers (infonca, nca) ask _prepare for min_valid=2
    w = soft_labels(b.rewards, b.mask, alpha=alpha, labels=labels)
    if labels == "loo" and validate and bool((b.mask & ~torch.isfinite(w)).any()):
        # loo labels are unbounded (e^{(R_i − R_j)/α}); an overflow would turn the loss into inf/NaN
        row = int(torch.nonzero(b.mask & ~torch.isfinite(w))[0, 0])
        raise ValueError(
            f'labels="loo": row {row}: label overflows float range at alpha={alpha}; '
            "the reward gaps divided by alpha are too large (use a larger alpha)"
        )
    return w


def _pair_weights(b: _Batch, pairs: str) -> Tensor:
    """Weights ``[B, K, K]``: entry (i, j) is the weight of the pair "i preferred over j".

    Only pairs of valid responses with R_i > R_j (strictly: ties carry no preference) get weight;
    each prompt's weights sum to 1, or to 0 when it has no such pair.
    """
    R, m = b.rewards, b.mask
    strict = m[:, :, None] & m[:, None, :] & (R[:, :, None] > R[:, None, :])
    if pairs == "all":
        sel = strict
    else:
        best, worst = best_worst_indices(R, m)
        K = R.shape[1]
        ar = torch.arange(K, device=R.device)
        is_best = ar[None, :] == best[:, None]  # [B, K]
        if pairs == "best_rest":
            sel = strict & is_best[:, :, None]
        else:  # best_worst
            is_worst = ar[None, :] == worst[:, None]
            sel = strict & is_best[:, :, None] & is_worst[:, None, :]
    w = sel.to(b.logps.dtype)
    return w / w.sum(dim=(1, 2), keepdim=True).clamp_min(1.0)


def _pairwise_scores(b: _Batch, pairs: str, score: Tensor, pair_loss: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Σ_{i,j} P_ij · pair_loss(score_i, score_j) with the pair weights of :func:`_pair_weights`.

    ``pair_loss`` receives ``[B, K, 1]`` winner and ``[B, 1, K]`` loser scores and broadcasts.
    K is small (≤ ~16), so the K×K evaluation costs nothing next to a forward pass.
    """
    P = _pair_weights(b, pairs)
    values = pair_loss(score[:, :, None], score[:, None, :])  # [B, K, K]
    # scores are finite after sanitising; `where` also keeps an inf from a selected-out pair out.
    values = torch.where(P > 0, values, torch.zeros_like(values))
    return (P * values).sum(dim=(1, 2))


def _check_pairs(pairs: str) -> str:
    return _check_choice("pairs", pairs, PAIR_MODES)


# --------------------------------------------------------------------------------------------
# Listwise losses on scalar rewards (NCA paper)
# --------------------------------------------------------------------------------------------


def infonca(
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    *,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    beta: float = 0.01,
    alpha: float = 1e-4,
    labels: str = "softmax",
    label_weights: Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    """InfoNCA (Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit Rewards").

    L = −Σ_i w_i · log softmax(r_θ)_i over the n valid responses, r_θ = β(log π_θ − log π_ref),
    w = softmax(R/α) (or ``labels="loo"``, or explicit ``label_weights``).

    Shapes: all inputs ``[B, K]``; returns ``[B]``. ``lengths`` is ignored (summed log-probs).
    Optimum (Proposition 1): r_θ* = R/α + C(x). At π_θ = π_ref the value is ln n.
    Defaults β = 0.01, α = 1e-4: the authors' released recipe (labels effectively one-hot for
    1–10 scores). Differences from thu-ml/Noise-Contrastive-Alignment ``reward_trainer.py``:
    ``alpha`` divides the rewards, as their code does (their comment calls it 1/α); we do not add
    +0.01 to the first response's score to break ties (equal rewards get equal labels), and K is
    any number of valid responses instead of 4.
    """
    beta, alpha = _positive("beta", beta), _positive("alpha", alpha)
    _check_choice("labels", labels, LABEL_MODES)
    b = _prepare("infonca", policy_logps, ref_logps, rewards, mask, lengths, needs_ref=True, min_valid=2, validate=validate)
    w = _labels_for(b, alpha, labels, label_weights, validate)
    logp = _masked_log_softmax(implicit_rewards(b.logps, b.ref, beta), b.mask)
    return -(w * logp).sum(dim=1)


def nca(
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    *,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    beta: float = 0.01,
    alpha: float = 1e-4,
    labels: str = "softmax",
    label_weights: Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    """NCA (Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit Rewards").

    L = −Σ_i [ w_i · log σ(r_θ,i) + (1/n) · log σ(−r_θ,i) ] over the n valid responses,
    r_θ = β(log π_θ − log π_ref), w = softmax(R/α) (or ``labels="loo"``, or ``label_weights``).

    Shapes: all inputs ``[B, K]``; returns ``[B]``. ``lengths`` is ignored (summed log-probs).
    Optimum: r_θ* → R/α − log E_μ e^{R/α} as n → ∞ (Propositions 2–4; the exact finite-n optimum is
    in ``nca_lab.theory.nca_optimum``). At π_θ = π_ref the value is 2 ln 2 for every n.
    Defaults β = 0.01, α = 1e-4 (the authors' released recipe). Matches the authors' code
    (``-logsigmoid(-r).mean()`` over K gives the 1/K term) with n = number of valid responses
    instead of a hard-coded K = 4; no +0.01 tie-break on the first score (see :func:`infonca`).
    """
    beta, alpha = _positive("beta", beta), _positive("alpha", alpha)
    _check_choice("labels", labels, LABEL_MODES)
    b = _prepare("nca", policy_logps, ref_logps, rewards, mask, lengths, needs_ref=True, min_valid=2, validate=validate)
    w = _labels_for(b, alpha, labels, label_weights, validate)
    r = implicit_rewards(b.logps, b.ref, beta)
    per = w * F.logsigmoid(r) + F.logsigmoid(-r) / b.n_valid.clamp_min(1)[:, None]
    return -torch.where(b.mask, per, torch.zeros_like(per)).sum(dim=1)


# --------------------------------------------------------------------------------------------
# Pairwise losses with a reference (order of R only)
# --------------------------------------------------------------------------------------------


def nca_pair(
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    *,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    beta: float = 0.01,
    pairs: str = "best_worst",
    validate: bool = True,
) -> Tensor:
    """Pairwise NCA (Chen et al. 2024; TRL ``loss_type="nca_pair"``).

    ℓ(w, l) = −log σ(r_θ,w) − ½ log σ(−r_θ,w) − ½ log σ(−r_θ,l), r_θ = β(log π_θ − log π_ref),
    averaged over the selected pairs (``pairs``). Shapes ``[B, K]`` → ``[B]``.
    Value at π_θ = π_ref: 2 ln 2. Population optimum under Bradley–Terry labels: log(2 p_win)
    (Proposition 7). Default β = 0.01 (the NCA recipe; TRL's DPOConfig default is 0.1).
    Identical to the authors' ``preference_trainer.py`` ``NCA`` and to TRL on K = 2 data.
    """
    beta = _positive("beta", beta)
    _check_pairs(pairs)
    b = _prepare("nca_pair", policy_logps, ref_logps, rewards, mask, lengths, needs_ref=True, min_valid=2, validate=validate)
    r = implicit_rewards(b.logps, b.ref, beta)
    return _pairwise_scores(
        b, pairs, r, lambda w, l: -F.logsigmoid(w) - 0.5 * F.logsigmoid(-w) - 0.5 * F.logsigmoid(-l)
    )


def dpo(
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    *,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    beta: float = 0.1,
    pairs: str = "best_worst",
    validate: bool = True,
) -> Tensor:
    """DPO (Rafailov et al. 2023, "Direct Preference Optimization"; TRL ``loss_type="sigmoid"``).

    ℓ(w, l) = −log σ(r_θ,w − r_θ,l), r_θ = β(log π_θ − log π_ref), averaged over the selected pairs.
    Shapes ``[B, K]`` → ``[B]``. Value at π_θ = π_ref: ln 2. Population optimum under Bradley–Terry
    labels: r_θ* = r + C (Proposition 8). Default β = 0.1 (DPO paper, TRL).
    ``pairs="all"`` on K scored responses is the "DPO×C(K,2)" baseline of the NCA paper.
    """
    beta = _positive("beta", beta)
    _check_pairs(pairs)
    b = _prepare("dpo", policy_logps, ref_logps, rewards, mask, lengths, needs_ref=True, min_valid=2, validate=validate)
    r = implicit_rewards(b.logps, b.ref, beta)
    return _pairwise_scores(b, pairs, r, lambda w, l: -F.logsigmoid(w - l))


def cdpo(
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    *,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    beta: float = 0.1,
    eps: float = 0.1,
    pairs: str = "best_worst",
    validate: bool = True,
) -> Tensor:
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences"; label smoothing).

    ℓ(w, l) = −(1−ε) log σ(h) − ε log σ(−h), h = r_θ,w − r_θ,l. Shapes ``[B, K]`` → ``[B]``.
    ε = 0 is DPO. Value at π_θ = π_ref: ln 2 for every ε. Defaults β = 0.1, ε = 0.1 (ε must lie
    in [0, 0.5)). TRL removed this form (``label_smoothing``) from its sigmoid loss in 0.29.
    """
    beta, eps = _positive("beta", beta), _check_eps(eps)
    _check_pairs(pairs)
    b = _prepare("cdpo", policy_logps, ref_logps, rewards, mask, lengths, needs_ref=True, min_valid=2, validate=validate)
    r = implicit_rewards(b.logps, b.ref, beta)
    return _pairwise_scores(
        b, pairs, r, lambda w, l: -(1 - eps) * F.logsigmoid(w - l) - eps * F.logsigmoid(l - w)
    )


def rdpo(
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    *,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    beta: float = 0.1,
    eps: float = 0.1,
    pairs: str = "best_worst",
    validate: bool = True,
) -> Tensor:
    """Provably robust DPO (Chowdhury et al. 2024, "Provably Robust DPO"; TRL ``loss_type="robust"``).

    ℓ̂(h) = [(1−ε)·ℓ(h) − ε·ℓ(−h)] / (1 − 2ε), ℓ(h) = −log σ(h), h = r_θ,w − r_θ,l.
    Unbiased under symmetric label flips with rate ε (Proposition 11). Shapes ``[B, K]`` → ``[B]``.
    Value at π_θ = π_ref: ln 2. Defaults β = 0.1, ε = 0.1 (ε ∈ [0, 0.5)). Not bounded below for
    ε > 0 (the −ε ℓ(−h) term): a property of the estimator, not of this implementation.
    """
    beta, eps = _positive("beta", beta), _check_eps(eps)
    _check_pairs(pairs)
    b = _prepare("rdpo", policy_logps, ref_logps, rewards, mask, lengths, needs_ref=True, min_valid=2, validate=validate)
    r = implicit_rewards(b.logps, b.ref, beta)
    return _pairwise_scores(
        b, pairs, r, lambda w, l: ((1 - eps) * -F.logsigmoid(w - l) - eps * -F.logsigmoid(l - w)) / (1 - 2 * eps)
    )


def ipo(
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    *,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    beta: float = 0.1,
    pairs: str = "best_worst",
    validate: bool = True,
) -> Tensor:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences").

    ℓ(w, l) = (h − 1/(2β))², h = (s_w − s^ref_w) − (s_l − s^ref_l), s = logps / lengths (length-normalised),
    no β inside h: β is IPO's τ. Shapes ``[B, K]`` → ``[B]``. Value at π_θ = π_ref: 1/(4β²).
    Default β = 0.1 (TRL). Matches TRL 1.16 ``ipo``, which normalises by length as the IPO authors
    confirmed; with ``lengths=None`` (toy world) s is the summed log-prob.
    """
    beta = _positive("beta", beta)
    _check_pairs(pairs)
    b = _prepare("ipo", policy_logps, ref_logps, rewards, mask, lengths, needs_ref=True, min_valid=2, validate=validate)
    g = (b.logps - b.ref) / b.lengths
    target = 1.0 / (2.0 * beta)
    return _pairwise_scores(b, pairs, g, lambda w, l: (w - l - target) ** 2)


def hinge(
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    *,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    beta: float = 0.1,
    pairs: str = "best_worst",
    validate: bool = True,
) -> Tensor:
    """SLiC-style hinge (Zhao et al. 2023, "SLiC-HF"; TRL ``loss_type="hinge"``).

    ℓ(w, l) = max(0, 1 − (r_θ,w − r_θ,l)), r_θ = β(log π_θ − log π_ref). Shapes ``[B, K]`` → ``[B]``.
    Value at π_θ = π_ref: 1. Default β = 0.1 (TRL).
    """
    beta = _positive("beta", beta)
    _check_pairs(pairs)
    b = _prepare("hinge", policy_logps, ref_logps, rewards, mask, lengths, needs_ref=True, min_valid=2, validate=validate)
    r = implicit_rewards(b.logps, b.ref, beta)
    return _pairwise_scores(b, pairs, r, lambda w, l: torch.relu(1 - (w - l)))


# --------------------------------------------------------------------------------------------
# Reference-free losses
# --------------------------------------------------------------------------------------------


def cpl(
    policy_logps: Tensor,
    ref_logps: Tensor | None,
    rewards: Tensor,
    *,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    alpha: float = 0.1,
    lam: float = 0.5,
    pairs: str = "best_worst",
    validate: bool = True,
) -> Tensor:
    """Contrastive Preference Learning (Hejna et al. 2024, "Contrastive Preference Learning").

    ℓ(w, l) = −log σ(α·log π_w − λ·α·log π_l) on summed log-probs, no reference. Shapes ``[B, K]`` → ``[B]``.
    Defaults α = 0.1, λ = 0.5 (``contrastive_bias`` in jhejna/cpl); λ ∈ (0, 1]. ``pairs="all"`` is
    CPL's rank mode (every ordered pair). With λ = 1 and segments of length one it is reference-free
    DPO with β = α (Proposition 10). ``ref_logps`` is ignored.
    """
    alpha, lam = _positive("alpha", alpha), _check_lam(lam)
    _check_pairs(pairs)
    b = _prepare("cpl", policy_logps, None, rewards, mask, lengths, needs_ref=False, min_valid=2, validate=validate)
    return _pairwise_scores(b, pairs, alpha * b.logps, lambda w, l: -F.logsigmoid(w - lam * l))


def simpo(
    policy_logps: Tensor,
    ref_logps: Tensor | None,
    rewards: Tensor,
    *,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    beta: float = 2.5,
    gamma: float = 1.375,
    pairs: str = "best_worst",
    validate: bool = True,
) -> Tensor:
    """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward").

    ℓ(w, l) = −log σ(β(s_w − s_l) − γ), s = logps / lengths, no reference. Shapes ``[B, K]`` → ``[B]``.
    Defaults β = 2.5, γ = 1.375: the SimPO paper's Llama-3-8B-Instruct recipe (TRL's CPOConfig
    defaults are β = 0.1, γ = 0.5). ``ref_logps`` is ignored.
    """
    beta, gamma = _positive("beta", beta), _finite("gamma", gamma)
    _check_pairs(pairs)
    b = _prepare("simpo", policy_logps, None, rewards, mask, lengths, needs_ref=False, min_valid=2, validate=validate)
    s = b.logps / b.lengths
    return _pairwise_scores(b, pairs, s, lambda w, l: -F.logsigmoid(beta * (w - l) - gamma))


def _sorted_by_reward(b: _Batch) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Responses sorted by R descending (valid first; stable, so equal R keeps index order).

    Returns sorted (logps, lengths, rewards, mask, order)."""
    key = torch.where(b.mask, b.rewards, torch.full_like(b.rewards, -math.inf))
    _, order = torch.sort(key, dim=1, descending=True, stable=True)
    g = lambda t: torch.gather(t, 1, order)  # noqa: E731
    return g(b.logps), g(b.lengths), g(b.rewards), g(b.mask), order


def clha(
    policy_logps: Tensor,
    ref_logps: Tensor | None,
    rewards: Tensor,
    *,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    margin: float = 3.0,
    min_gap: float = 3.0,
    sft_gate: float = 0.0,
    sft_weight: float = 0.05,
    validate: bool = True,
) -> Tensor:
    """CLHA (Fang et al. 2024, "CLHA: A Simple yet Effective Contrastive Learning Framework for Human Alignment").

    Responses sorted by R descending (n valid), s = logps / lengths (reference-free).
    L = Σ_{i=1}^{n−1} mean_{k : R_k − R_{k+i} > min_gap} max(0, margin·i − (s_k − s_{k+i}))
        + sft_weight·(n−1)²·(−log π(y_0))·[R_0 > sft_gate]          (summed log-prob of the best)
    An offset with no pair passing the gap contributes 0. Shapes ``[B, K]`` → ``[B]``.
    Defaults margin = 3, min_gap = 3 (calubkk/CLHA ``process_manager.py``), sft_gate = 0,
    sft_weight = 0.05 (the PRO scripts CLHA's code derives from). Differences from the authors' code:
    their masked mean per offset runs over the whole batch; ours is per prompt (so the loss is a
    per-prompt quantity as the contract requires). There is no rescoring model: the gap threshold
    is the code's only trace of the poster's rescoring strategy, and the gate is applied to R.
    On pairwise data R = (1, 0) the gap 1 never exceeds min_gap = 3, so only the SFT term acts.
    ``ref_logps`` is ignored.
    """
    margin, min_gap = _nonneg("margin", margin), _finite("min_gap", min_gap)
    sft_gate, sft_weight = _finite("sft_gate", sft_gate), _nonneg("sft_weight", sft_weight)
    b = _prepare("clha", policy_logps, None, rewards, mask, lengths, needs_ref=False, min_valid=2, validate=validate)
    lp, ln, R, m, _ = _sorted_by_reward(b)
    s = lp / ln
    K = s.shape[1]
    total = torch.zeros(s.shape[0], dtype=s.dtype, device=s.device)
    for i in range(1, K):  # rank offsets; K is small
        ok = m[:, :-i] & m[:, i:] & (R[:, :-i] - R[:, i:] > min_gap)
        h = torch.relu(margin * i - (s[:, :-i] - s[:, i:]))
        okf = ok.to(s.dtype)
        total = total + (torch.where(ok, h, torch.zeros_like(h)) * okf).sum(1) / okf.sum(1).clamp_min(1.0)
    n = b.n_valid
    gate = (R[:, 0] > sft_gate).to(s.dtype)
    return total + sft_weight * (n - 1) ** 2 * (-lp[:, 0]) * gate


def pro(
    policy_logps: Tensor,
    ref_logps: Tensor | None,
    rewards: Tensor,
    *,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    sft_weight: float = 0.05,
    validate: bool = True,
) -> Tensor:
    """PRO (Song et al. 2024, "Preference Ranking Optimization for Human Alignment").

    Responses sorted by R descending (n valid), s = logps / lengths (reference-free),
    T_kj = R_k − R_j (j > k), T_kk = max_{j>k} T_kj:
    L = Σ_{k=0}^{n−2} [ log(e^{s_k T_kk} + Σ_{j>k} e^{s_j T_kj}) − s_k T_kk ]
        + sft_weight·(n−1)²·(−log π(y_0))                              (summed log-prob of the best)
    With all T = 1 the ranking part is the Plackett–Luce NLL. Shapes ``[B, K]`` → ``[B]``.
    Default sft_weight = 0.05 (AlibabaResearch/DAMO-ConvAI PRO scripts). Ours returns the per-prompt
    sum; the authors average over the batch, as callers here do. ``ref_logps`` is ignored.
    """
    sft_weight = _nonneg("sft_weight", sft_weight)
    b = _prepare("pro", policy_logps, None, rewards, mask, lengths, needs_ref=False, min_valid=2, validate=validate)
    lp, ln, R, m, _ = _sorted_by_reward(b)
    s = lp / ln
    K = s.shape[1]
    ar = torch.arange(K, device=s.device)
    later = (ar[None, :] > ar[:, None])[None] & m[:, None, :] & m[:, :, None]  # [B, k, j], j > k, both valid
    T = R[:, :, None] - R[:, None, :]
    neg_inf = torch.full((), -math.inf, dtype=s.dtype, device=s.device)
    Tkk = torch.where(later, T, neg_inf).amax(dim=2)  # [B, k]
    active = later.any(dim=2)  # k < n − 1
    Tkk = torch.where(active, Tkk, torch.zeros_like(Tkk))
    diag = s * Tkk  # [B, k]
    offd = torch.where(later, s[:, None, :] * T, neg_inf)  # [B, k, j]
    lse = torch.logsumexp(torch.cat([diag[:, :, None], offd], dim=2), dim=2)
    per_k = torch.where(active, lse - diag, torch.zeros_like(diag))
    n = b.n_valid
    return per_k.sum(1) + sft_weight * (n - 1) ** 2 * (-lp[:, 0])


def rrhf(
    policy_logps: Tensor,
    ref_logps: Tensor | None,
    rewards: Tensor,
    *,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    sft_weight: float = 1.0,
    validate: bool = True,
) -> Tensor:
    """RRHF (Yuan et al. 2023, "RRHF: Rank Responses to Align Language Models with Human Feedback without tears").

    s = logps / lengths (reference-free). L = Σ_{R_i < R_j} max(0, s_i − s_j) + sft_weight·(−s_best)
    (the best's length-normalised NLL). Pairs with equal R are skipped. Shapes ``[B, K]`` → ``[B]``.
    Default sft_weight = 1 (GanjinZero/RRHF: total = rrhf_weight·L_rank + L_sft with rrhf_weight = 1,
    i.e. the same ratio). Unlike the authors' code, any batch size works. ``ref_logps`` is ignored.
    """
    sft_weight = _nonneg("sft_weight", sft_weight)
    b = _prepare("rrhf", policy_logps, None, rewards, mask, lengths, needs_ref=False, min_valid=2, validate=validate)
    s = b.logps / b.lengths
    R, m = b.rewards, b.mask
    worse = m[:, :, None] & m[:, None, :] & (R[:, :, None] < R[:, None, :])  # [B, i, j]: R_i < R_j
    h = torch.relu(s[:, :, None] - s[:, None, :])
    rank = torch.where(worse, h, torch.zeros_like(h)).sum(dim=(1, 2))
    best, _ = best_worst_indices(R, m)
    s_best = s.gather(1, best[:, None])[:, 0]
    return rank + sft_weight * (-s_best)


def sft(
    policy_logps: Tensor,
    ref_logps: Tensor | None,
    rewards: Tensor,
    *,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    """SFT term: the token-mean negative log-likelihood of the best response, −log π(y_best) / |y_best|.

    Best = highest R, lowest index on ties. Shapes ``[B, K]`` → ``[B]``. No hyperparameters; weight it
    in a combination (``"nca+0.1*sft"``). Matches TRL's ``sft`` loss type (token-mean NLL of chosen).
    ``ref_logps`` is ignored.
    """
    b = _prepare("sft", policy_logps, None, rewards, mask, lengths, needs_ref=False, min_valid=1, validate=validate)
    best, _ = best_worst_indices(b.rewards, b.mask)
    return -(b.logps / b.lengths).gather(1, best[:, None])[:, 0]


# --------------------------------------------------------------------------------------------
# The loss atlas: the field's other objectives (TRL 1.16 loss types and listwise forms)
# --------------------------------------------------------------------------------------------


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 − e^x) for x < 0, as TRL 1.16's ORPO computes it (branch at −ln 2)."""
    t = -0.6931471805599453
    return torch.where(x < t, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def exo(
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    *,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    beta: float = 0.1,
    alpha: float = 1e-4,
    eps: float = 1e-3,
    validate: bool = True,
) -> Tensor:
    """Listwise EXO (Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model Alignment").

    L = Σ_i p_i (log p_i − log q_i) = KL(p ‖ q) over the n valid responses, p = softmax(r_θ),
    r_θ = β(log π_θ − log π_ref), q_i = (1 − ε)·w_i + ε·(1 − w_i)/(n − 1), w = softmax(R/α).
    Shapes ``[B, K]`` → ``[B]``. Defaults β = 0.1, α = 1e-4 (labels one-hot on distinct rewards), ε = 1e-3
    (TRL's ``label_smoothing`` for ``exo_pair``; ε ∈ [0, 0.5)). At K = 2 with hard labels this is TRL 1.16's
    ``loss_type="exo_pair"`` with ``label_smoothing = ε``. With ε = 0 and softmax labels the free minimiser is
    InfoNCA's r/α + C at every K; ε > 0 biases it (Proposition 21). Value at π_θ = π_ref: −log n − mean_i log q_i.
    """
    beta, alpha, eps = _positive("beta", beta), _positive("alpha", alpha), _check_eps(eps)
    b = _prepare("exo", policy_logps, ref_logps, rewards, mask, lengths, needs_ref=True, min_valid=2, validate=validate)
    m = b.mask
    logp = _masked_log_softmax(implicit_rewards(b.logps, b.ref, beta), m)
    z = torch.where(m, b.rewards / alpha, torch.zeros_like(b.rewards))
    logw = _masked_log_softmax(z, m)
    # log(1 − w_i) = log Σ_{j≠i} w_j, exact even where w_i rounds to 1
    K = z.shape[1]
    others = m[:, None, :] & ~torch.eye(K, dtype=torch.bool, device=z.device)[None]
    neg_inf = torch.full((), -math.inf, dtype=z.dtype, device=z.device)
    log1mw = torch.logsumexp(torch.where(others, logw[:, None, :].expand(-1, K, -1), neg_inf), dim=-1)
    log1mw = torch.where(m & torch.isfinite(log1mw), log1mw, torch.zeros_like(log1mw))
    n = b.n_valid.clamp_min(2)[:, None]
    first = math.log1p(-eps) + logw
    if eps > 0:
        logq = torch.logaddexp(first, math.log(eps) - torch.log(n - 1) + log1mw)
    else:
        logq = first
    per = logp.exp() * (logp - logq)
    return torch.where(m, per, torch.zeros_like(per)).sum(dim=1)


def apo_zero(
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    *,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    beta: float = 0.1,
    pairs: str = "best_worst",
    validate: bool = True,
) -> Tensor:
    """APO-zero (D'Oosterlinck et al. 2024, "Anchored Preference Optimization"; TRL ``loss_type="apo_zero"``).

    ℓ(w, l) = (1 − σ(r_θ,w)) + σ(r_θ,l), r_θ = β(log π_θ − log π_ref), averaged over the selected pairs.
    Shapes ``[B, K]`` → ``[B]``. Value at π_θ = π_ref: 1. Default β = 0.1 (TRL). Bounded, so under
    Bradley–Terry pairs it has no finite minimiser: r_θ → ±∞ with sign(p_win − ½) (Proposition 22).
    """
    beta = _positive("beta", beta)
    _check_pairs(pairs)
    b = _prepare("apo_zero", policy_logps, ref_logps, rewards, mask, lengths, needs_ref=True, min_valid=2, validate=validate)
    r = implicit_rewards(b.logps, b.ref, beta)
    return _pairwise_scores(b, pairs, r, lambda w, l: (1 - torch.sigmoid(w)) + torch.sigmoid(l))


def apo_down(
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    *,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    beta: float = 0.1,
    pairs: str = "best_worst",
    validate: bool = True,
) -> Tensor:
    """APO-down (D'Oosterlinck et al. 2024, "Anchored Preference Optimization"; TRL ``loss_type="apo_down"``).

    ℓ(w, l) = σ(r_θ,w) + (1 − σ(r_θ,w − r_θ,l)), r_θ = β(log π_θ − log π_ref), averaged over the selected
    pairs. Shapes ``[B, K]`` → ``[B]``. Value at π_θ = π_ref: 1. Default β = 0.1 (TRL).
    """
    beta = _positive("beta", beta)
    _check_pairs(pairs)
    b = _prepare("apo_down", policy_logps, ref_logps, rewards, mask, lengths, needs_ref=True, min_valid=2, validate=validate)
    r = implicit_rewards(b.logps, b.ref, beta)
    return _pairwise_scores(b, pairs, r, lambda w, l: torch.sigmoid(w) + (1 - torch.sigmoid(w - l)))


def discopop(
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    *,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    beta: float = 0.1,
    tau: float = 0.05,
    pairs: str = "best_worst",
    validate: bool = True,
) -> Tensor:
    """DiscoPOP (Chris Lu et al. 2024, "Discovering Preference Optimization Algorithms with and for Large Language
    Models"; TRL ``loss_type="discopop"``).

    ℓ(w, l) = (1 − m)·(−log σ(h)) + m·e^{−h}, m = σ(h/τ), h = r_θ,w − r_θ,l, r_θ = β(log π_θ − log π_ref):
    the log-ratio-modulated blend of the logistic and the exponential loss. Shapes ``[B, K]`` → ``[B]``.
    Value at π_θ = π_ref: ½ ln 2 + ½. Defaults β = 0.1, τ = 0.05 (TRL's ``discopop_tau``, the paper's value).
    """
    beta, tau = _positive("beta", beta), _positive("tau", tau)
    _check_pairs(pairs)
    b = _prepare("discopop", policy_logps, ref_logps, rewards, mask, lengths, needs_ref=True, min_valid=2, validate=validate)
    r = implicit_rewards(b.logps, b.ref, beta)

    def pair(w: Tensor, l: Tensor) -> Tensor:
        h = w - l
        m = torch.sigmoid(h / tau)
        return -F.logsigmoid(h) * (1 - m) + torch.exp(-h) * m

    return _pairwise_scores(b, pairs, r, pair)


def bco_pair(
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    *,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    beta: float = 0.1,
    pairs: str = "best_worst",
    validate: bool = True,
) -> Tensor:
    """Pairwise BCO (Jung et al. 2024, "Binary Classifier Optimization"; TRL ``loss_type="bco_pair"``).

    ℓ(w, l) = −log σ(r_θ,w) − log σ(−r_θ,l), r_θ = β(log π_θ − log π_ref), averaged over the selected pairs
    (TRL 1.16's form: no running reward shift δ). Shapes ``[B, K]`` → ``[B]``. Value at π_θ = π_ref: 2 ln 2.
    Default β = 0.1 (TRL). Under Bradley–Terry pairs: f* = logit p_win (Proposition 22).
    """
    beta = _positive("beta", beta)
    _check_pairs(pairs)
    b = _prepare("bco_pair", policy_logps, ref_logps, rewards, mask, lengths, needs_ref=True, min_valid=2, validate=validate)
    r = implicit_rewards(b.logps, b.ref, beta)
    return _pairwise_scores(b, pairs, r, lambda w, l: -F.logsigmoid(w) - F.logsigmoid(-l))


def sigmoid_norm(
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    *,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    beta: float = 0.1,
    pairs: str = "best_worst",
    validate: bool = True,
) -> Tensor:
    """Length-normalised DPO (TRL 1.16 ``loss_type="sigmoid_norm"``; DPO of Rafailov et al. 2023 on per-token log-ratios).

    ℓ(w, l) = −log σ(β(g_w − g_l)), g = (log π_θ − log π_ref)/length. Shapes ``[B, K]`` → ``[B]``.
    Value at π_θ = π_ref: ln 2. Default β = 0.1 (TRL). With ``lengths=None`` it is ``dpo``.
    """
    beta = _positive("beta", beta)
    _check_pairs(pairs)
    b = _prepare("sigmoid_norm", policy_logps, ref_logps, rewards, mask, lengths, needs_ref=True, min_valid=2, validate=validate)
    g = (b.logps - b.ref) / b.lengths
    return _pairwise_scores(b, pairs, g, lambda w, l: -F.logsigmoid(beta * (w - l)))


def sppo(
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    *,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    beta: float = 0.1,
    validate: bool = True,
) -> Tensor:
    """SPPO (Wu et al. 2024, "Self-Play Preference Optimization for Language Model Alignment"), hard win rates.

    L = Σ_i (ρ_i − (P̂_i − ½)/β)² over the n valid responses, ρ = log π_θ − log π_ref (no β inside),
    P̂_i = (1/(n−1)) Σ_{j≠i} ([R_i > R_j] + ½[R_i = R_j]): the win rate of response i against the other
    n − 1 responses of its prompt (ties count ½). Shapes ``[B, K]`` → ``[B]``. Default β = 0.1 (TRL).
    At K = 2 with distinct rewards P̂ = (1, 0) and this is TRL 1.16's ``loss_type="sppo_hard"``. Value at
    π_θ = π_ref: Σ_i (P̂_i − ½)²/β². Under Bradley–Terry pairs (K = 2): ρ* = (p_win − ½)/β (Proposition 22).
    The SPPO paper's P̂ comes from a preference model (PairRM); here it comes from the rewards R.
    """
    beta = _positive("beta", beta)
    b = _prepare("sppo", policy_logps, ref_logps, rewards, mask, lengths, needs_ref=True, min_valid=2, validate=validate)
    R, m = b.rewards, b.mask
    both = m[:, :, None] & m[:, None, :] & ~torch.eye(R.shape[1], dtype=torch.bool, device=R.device)[None]
    win = (R[:, :, None] > R[:, None, :]).to(R.dtype) + 0.5 * (R[:, :, None] == R[:, None, :]).to(R.dtype)
    p_hat = torch.where(both, win, torch.zeros_like(win)).sum(2) / (b.n_valid[:, None] - 1).clamp_min(1)
    per = (b.logps - b.ref - (p_hat - 0.5) / beta) ** 2
    return torch.where(m, per, torch.zeros_like(per)).sum(dim=1)


def plackett_luce(
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    *,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    beta: float = 0.1,
    validate: bool = True,
) -> Tensor:
    """Listwise DPO with a reference: the Plackett–Luce NLL of the ranking by R (Rafailov et al. 2023, DPO §A.3).

    L = −Σ_{k=0}^{n−2} [ r_θ,σ(k) − log Σ_{j≥k} e^{r_θ,σ(j)} ], r_θ = β(log π_θ − log π_ref), σ = the valid
    responses sorted by R descending. Ties in R: the stable sort keeps index order (the lower index ranks
    first), so a tie is treated as a strict preference for the lower index (unlike the pairwise losses, which
    skip tied pairs). Shapes ``[B, K]`` → ``[B]``. Default β = 0.1 (DPO). At K = 2 with distinct rewards it
    is ``dpo``. Value at π_θ = π_ref: log n!. With rankings drawn from Plackett–Luce(e^r): f* = r + C at
    every K (Proposition 24).
    """
    beta = _positive("beta", beta)
    b = _prepare("plackett_luce", policy_logps, ref_logps, rewards, mask, lengths, needs_ref=True, min_valid=2, validate=validate)
    r = implicit_rewards(b.logps, b.ref, beta)
    key = torch.where(b.mask, b.rewards, torch.full_like(b.rewards, -math.inf))
    _, order = torch.sort(key, dim=1, descending=True, stable=True)
    rs, ms = torch.gather(r, 1, order), torch.gather(b.mask, 1, order)
    neg_inf = torch.full((), -math.inf, dtype=r.dtype, device=r.device)
    z = torch.where(ms, rs, neg_inf)
    # suffix logsumexp: lse_{j ≥ k} z_j
    suffix = torch.logcumsumexp(z.flip(1), dim=1).flip(1)
    active = ms & torch.cat([ms[:, 1:], torch.zeros_like(ms[:, :1])], dim=1)  # k has a valid successor
    per = torch.where(active, rs - torch.where(active, suffix, torch.zeros_like(suffix)), torch.zeros_like(rs))
    return -per.sum(dim=1)


def astar_po(
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    *,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    beta: float = 2e-3,
    alpha: float = 0.5,
    validate: bool = True,
) -> Tensor:
    """A*PO-style advantage regression (Brantley et al. 2025, "Accelerating RL for LLM Reasoning with Optimal
    Advantage Regression").

    L = mean_i (r_θ,i − t_i)² over the n valid responses, r_θ = β(log π_θ − log π_ref),
    t_i = R_i/α − log mean_j e^{R_j/α} (j over the n valid responses, i included): the in-sample estimate of
    NCA's target R/α − log E_μ e^{R/α}. Shapes ``[B, K]`` → ``[B]``. A*PO regresses β₂·log π/π_ref onto
    R − V̂*, V̂* = β₁ log mean_j e^{R_j/β₁}; dividing by β₁ gives this form with α = β₁, β = β₂/β₁. Defaults
    α = 0.5, β = 2e-3 (β₁ = ½, β₂ = 1e-3 as we read the paper; not checked against the authors' code). The
    authors estimate V̂* from separate reference samples; here the K responses themselves serve, so the
    finite-K optimum is biased by O(1/K) (Proposition 23). Value at π_θ = π_ref: mean_i t_i².
    """
    beta, alpha = _positive("beta", beta), _positive("alpha", alpha)
    b = _prepare("astar_po", policy_logps, ref_logps, rewards, mask, lengths, needs_ref=True, min_valid=2, validate=validate)
    m = b.mask
    z = torch.where(m, b.rewards / alpha, torch.zeros_like(b.rewards))
    lse = torch.logsumexp(torch.where(m, z, torch.full_like(z, -math.inf)), dim=1, keepdim=True)
    t = z - (lse - torch.log(b.n_valid.clamp_min(1)[:, None]))
    per = (implicit_rewards(b.logps, b.ref, beta) - t) ** 2
    return torch.where(m, per, torch.zeros_like(per)).sum(dim=1) / b.n_valid.clamp_min(1)


def orpo(
    policy_logps: Tensor,
    ref_logps: Tensor | None,
    rewards: Tensor,
    *,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    lam: float = 0.1,
    pairs: str = "best_worst",
    validate: bool = True,
) -> Tensor:
    """ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model").

    L = −s_best − λ·mean_{selected pairs} log σ(o_w − o_l), o = s − log(1 − e^s), s = logps / lengths
    (reference-free). Shapes ``[B, K]`` → ``[B]``. Default λ = 0.1 (the paper; TRL ORPOConfig ``beta``).
    The odds term is TRL 1.16's ``ORPOTrainer.odds_ratio_loss`` (with its log(1 − e^x)); s is clamped to
    ≤ −1e-12 so that a response of probability 1 gives a finite loss. Differences from TRL: the SFT term is the
    per-prompt token mean −s_best (TRL's cross-entropy averages over all chosen tokens of the batch); a prompt
    whose responses all tie carries no preference and contributes 0 (SFT term included), as every pairwise
    loss here. ``ref_logps`` is ignored.
    """
    lam = _positive("lam", lam)
    _check_pairs(pairs)
    b = _prepare("orpo", policy_logps, None, rewards, mask, lengths, needs_ref=False, min_valid=2, validate=validate)
    s = torch.where(b.mask, b.logps / b.lengths, torch.full_like(b.logps, -1.0)).clamp_max(-1e-12)
    odds = s - _log1mexp(s)
    ratio = _pairwise_scores(b, pairs, odds, lambda w, l: -F.logsigmoid(w - l))
    has_pair = _pair_weights(b, pairs).sum(dim=(1, 2)) > 0
    best, _ = best_worst_indices(b.rewards, b.mask)
    nll = -s.gather(1, best[:, None])[:, 0]
    return torch.where(has_pair, nll, torch.zeros_like(nll)) + lam * ratio


def kto(
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    *,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    validate: bool = True,
) -> Tensor:
    """KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization"; TRL 1.16 ``KTOTrainer``).

    Response i of a prompt is desirable if it beats more of the prompt's valid responses than beat it
    (#{j: R_j < R_i} > #{j: R_j > R_i}, i.e. it ranks above the median), undesirable if fewer, and left out if
    as many (exact comparisons of R, no rounding; on pairwise data R = (1, 0) the chosen is desirable and the
    rejected undesirable). With ρ = log π_θ − log π_ref and the reference point
    z₀ = max(0, mean_i ρ_i) over the prompt's valid responses (detached: no gradient flows through it):
    L = mean over the desirable and undesirable responses of
        λ_D·(1 − σ(β(ρ_i − z₀)))  (desirable),   λ_U·(1 − σ(β(z₀ − ρ_i)))  (undesirable).
    Shapes ``[B, K]`` → ``[B]``; a prompt whose responses all tie contributes 0. Defaults β = 0.1,
    desirable_weight = undesirable_weight = 1 (TRL's KTOConfig). Given the same z₀ this is TRL's loss on the
    prompt's responses (its ``nanmean`` over the examples). Difference from TRL: TRL estimates z₀ once per batch
    as max(0, mean of log π/π_ref) over completions paired with other examples' prompts; here z₀ is per prompt,
    from the prompt's own K responses, so the per-prompt contract holds. Value at π_θ = π_ref with unit weights: ½.
    """
    beta = _positive("beta", beta)
    wd, wu = _nonneg("desirable_weight", desirable_weight), _nonneg("undesirable_weight", undesirable_weight)
    b = _prepare("kto", policy_logps, ref_logps, rewards, mask, lengths, needs_ref=True, min_valid=2, validate=validate)
    m = b.mask
    n = b.n_valid.clamp_min(1)[:, None]
    rho = b.logps - b.ref
    z0 = (torch.where(m, rho, torch.zeros_like(rho)).sum(1, keepdim=True) / n).clamp_min(0).detach()
    R = b.rewards
    both = m[:, :, None] & m[:, None, :]
    beats = (both & (R[:, :, None] > R[:, None, :])).sum(2)
    beaten = (both & (R[:, :, None] < R[:, None, :])).sum(2)
    des = m & (beats > beaten)
    und = m & (beats < beaten)
    per = torch.where(des, wd * (1 - torch.sigmoid(beta * (rho - z0))), torch.zeros_like(rho))
    per = per + torch.where(und, wu * (1 - torch.sigmoid(beta * (z0 - rho))), torch.zeros_like(rho))
    count = (des | und).sum(1).to(rho.dtype)
    return per.sum(1) / count.clamp_min(1)


# --------------------------------------------------------------------------------------------
# Registry and combinations
# --------------------------------------------------------------------------------------------

_NOT_HPARAMS = {"mask", "lengths", "validate"}


@dataclass(frozen=True)
class LossSpec:
    """A registry entry.

    ``needs_ref``: uses the reference log-probs. ``uses_lengths``: divides by response lengths.
    ``uses_reward_values``: uses the scalar rewards R (not only their order). ``pairwise``: accepts
    ``pairs``. ``defaults``: the paper's default hyperparameters (the CLI's defaults), read from the
    function signature so the two cannot drift apart.
    """

    name: str
    fn: Callable[..., Tensor]
    needs_ref: bool
    uses_lengths: bool
    uses_reward_values: bool
    pairwise: bool
    defaults: Mapping[str, object] = field(default_factory=dict)

    @property
    def hparams(self) -> tuple[str, ...]:
        return tuple(self.defaults)

    def __call__(self, policy_logps, ref_logps, rewards, *, mask=None, lengths=None, validate=True, **hparams) -> Tensor:
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"loss {self.name!r} has no hyperparameter {', '.join(unknown)}; "
                f"its hyperparameters are: {', '.join(self.hparams) or '(none)'}"
            )
        return self.fn(policy_logps, ref_logps, rewards, mask=mask, lengths=lengths, validate=validate, **hparams)


def _spec(fn: Callable[..., Tensor], *, needs_ref: bool, uses_lengths: bool, uses_reward_values: bool) -> LossSpec:
    params = inspect.signature(fn).parameters
    defaults = {k: p.default for k, p in params.items() if p.kind is p.KEYWORD_ONLY and k not in _NOT_HPARAMS}
    return LossSpec(fn.__name__, fn, needs_ref, uses_lengths, uses_reward_values, "pairs" in params, defaults)


LOSSES: dict[str, LossSpec] = {
    s.name: s
    for s in [
        _spec(infonca, needs_ref=True, uses_lengths=False, uses_reward_values=True),
        _spec(nca, needs_ref=True, uses_lengths=False, uses_reward_values=True),
        _spec(nca_pair, needs_ref=True, uses_lengths=False, uses_reward_values=False),
        _spec(dpo, needs_ref=True, uses_lengths=False, uses_reward_values=False),
        _spec(cdpo, needs_ref=True, uses_lengths=False, uses_reward_values=False),
        _spec(rdpo, needs_ref=True, uses_lengths=False, uses_reward_values=False),
        _spec(ipo, needs_ref=True, uses_lengths=True, uses_reward_values=False),
        _spec(hinge, needs_ref=True, uses_lengths=False, uses_reward_values=False),
        _spec(clha, needs_ref=False, uses_lengths=True, uses_reward_values=True),
        _spec(pro, needs_ref=False, uses_lengths=True, uses_reward_values=True),
        _spec(rrhf, needs_ref=False, uses_lengths=True, uses_reward_values=False),
        _spec(cpl, needs_ref=False, uses_lengths=False, uses_reward_values=False),
        _spec(simpo, needs_ref=False, uses_lengths=True, uses_reward_values=False),
        _spec(sft, needs_ref=False, uses_lengths=True, uses_reward_values=False),
        # the loss atlas
        _spec(exo, needs_ref=True, uses_lengths=False, uses_reward_values=True),
        _spec(apo_zero, needs_ref=True, uses_lengths=False, uses_reward_values=False),
        _spec(apo_down, needs_ref=True, uses_lengths=False, uses_reward_values=False),
        _spec(discopop, needs_ref=True, uses_lengths=False, uses_reward_values=False),
        _spec(bco_pair, needs_ref=True, uses_lengths=False, uses_reward_values=False),
        _spec(sigmoid_norm, needs_ref=True, uses_lengths=True, uses_reward_values=False),
        _spec(sppo, needs_ref=True, uses_lengths=False, uses_reward_values=False),
        _spec(plackett_luce, needs_ref=True, uses_lengths=False, uses_reward_values=False),
        _spec(astar_po, needs_ref=True, uses_lengths=False, uses_reward_values=True),
        _spec(orpo, needs_ref=False, uses_lengths=True, uses_reward_values=False),
        _spec(kto, needs_ref=True, uses_lengths=False, uses_reward_values=False),
    ]
}


@dataclass(frozen=True)
class CombinedLoss:
    """A weighted sum of registry losses, e.g. ``"nca+0.1*sft"`` → 1·nca + 0.1·sft.

    Hyperparameters given at call time go to every term that accepts them; one accepted by no term
    is an error. Each term otherwise uses its own defaults. Exposes the same flags as :class:`LossSpec`.
    """

    name: str
    terms: tuple[tuple[float, LossSpec], ...]

    @property
    def needs_ref(self) -> bool:
        return any(s.needs_ref for _, s in self.terms)

    @property
    def uses_lengths(self) -> bool:
        return any(s.uses_lengths for _, s in self.terms)

    @property
    def uses_reward_values(self) -> bool:
        return any(s.uses_reward_values for _, s in self.terms)

    @property
    def pairwise(self) -> bool:
        return any(s.pairwise for _, s in self.terms)

    @property
    def defaults(self) -> dict[str, object]:
        merged: dict[str, object] = {}
        for _, s in self.terms:
            for k, v in s.defaults.items():
                merged.setdefault(k, v)
        return merged

    @property
    def hparams(self) -> tuple[str, ...]:
        return tuple(self.defaults)

    def __call__(self, policy_logps, ref_logps, rewards, *, mask=None, lengths=None, validate=True, **hparams) -> Tensor:
        unknown = sorted(k for k in hparams if not any(k in s.defaults for _, s in self.terms))
        if unknown:
            raise ValueError(
                f"loss {self.name!r} has no hyperparameter {', '.join(unknown)}; "
                f"its terms accept: {', '.join(self.hparams) or '(none)'}"
            )
        total = None
        for weight, s in self.terms:
            hp = {k: v for k, v in hparams.items() if k in s.defaults}
            term = weight * s(policy_logps, ref_logps, rewards, mask=mask, lengths=lengths, validate=validate, **hp)
            total = term if total is None else total + term
        return total


_TERM = re.compile(r"^\s*(?:(?P<w>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*$")


def _unknown_name(name: str) -> ValueError:
    return ValueError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}")


def get_loss(spec: str) -> LossSpec | CombinedLoss:
    """The registry entry for ``spec``: a loss name (``"nca"``) or a weighted sum of names
    (``"nca+0.1*sft"``, ``"0.5*dpo + 0.5*ipo"``; weights are positive numbers)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"loss must be a non-empty string naming a loss; got {spec!r}")
    if spec in LOSSES:
        return LOSSES[spec]
    parts = spec.split("+")
    terms: list[tuple[float, LossSpec]] = []
    for part in parts:
        m = _TERM.match(part)
        if m is None:
            raise ValueError(
                f"cannot parse loss {spec!r}: term {part.strip()!r} is not NAME or WEIGHT*NAME "
                f"(e.g. 'nca+0.1*sft'); known losses: {', '.join(sorted(LOSSES))}"
            )
        name = m["name"]
        if name not in LOSSES:
            raise _unknown_name(name)
        weight = float(m["w"]) if m["w"] is not None else 1.0
        if weight <= 0:
            raise ValueError(f"cannot parse loss {spec!r}: weight of {name!r} must be > 0, got {weight}")
        if any(s.name == name for _, s in terms):
            raise ValueError(f"cannot parse loss {spec!r}: {name!r} appears twice")
        terms.append((weight, LOSSES[name]))
    if len(terms) == 1 and terms[0][0] == 1.0:
        return terms[0][1]
    return CombinedLoss(spec.replace(" ", ""), tuple(terms))

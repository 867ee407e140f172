"""Training metrics with TRL's names, accumulated over a logging interval and across processes.

Per prompt b, with best/worst = the valid responses with the highest/lowest data reward R (lowest index on
ties, :func:`nca_lab.losses.best_worst_indices`) and the implicit reward r = β·(log π_θ − log π_ref):

================== ===============================================================================
``rewards/chosen``   r of the best response                                  (TRL: same name)
``rewards/rejected`` r of the worst response                                 (TRL: same name)
``rewards/margins``  r_best − r_worst                                        (TRL: same name)
``rewards/accuracies`` 1 if r_best is strictly above r of every other valid response, else 0
                     (K = 2: TRL's ``chosen_rewards > rejected_rewards``; 0 at step 0, as in TRL)
``logps/chosen``     summed log π_θ of the best response: the chosen-likelihood trajectory
``logps/rejected``   summed log π_θ of the worst response
``logratio/mean``    mean of log π_θ − log π_ref over all valid responses (not a KL: no expectation under π_θ)
================== ===============================================================================

Reference-free losses have no π_ref: only ``logps/*`` are logged for them. β is the loss's β (1 for losses
without one).

Averaging (as TRL's ``DPOTrainer`` stores per-step metrics and averages them in ``log``): each step adds
per-metric *sums* and *counts* (prompts, or valid responses for ``logratio/mean``) on the device, without a
host synchronisation; at logging time one all-reduce over processes turns them into means over every prompt
seen by every process since the last log.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nca_lab.losses import best_worst_indices

__all__ = ["REFERENCE_METRICS", "POLICY_METRICS", "batch_metric_sums", "MetricAccumulator"]

REFERENCE_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logratio/mean")
POLICY_METRICS = ("logps/chosen", "logps/rejected")


@torch.no_grad()
def batch_metric_sums(policy_logps: Tensor, ref_logps: Tensor | None, rewards: Tensor, mask: Tensor,
                      beta: float) -> dict[str, tuple[Tensor, Tensor]]:
    """``{name: (sum, count)}`` for one batch; all inputs ``[B, K]`` (``ref_logps`` None: policy metrics only).

    Sums are float32 0-dim tensors on the input device; means are taken later by :class:`MetricAccumulator`.
    """
    policy = policy_logps.detach().float()
    b = policy.shape[0]
    best, worst = best_worst_indices(rewards, mask)
    pick = lambda t, i: t.gather(1, i[:, None])[:, 0]  # noqa: E731
    n_prompts = torch.tensor(float(b), device=policy.device)
    out = {
        "logps/chosen": (pick(policy, best).sum(), n_prompts),
        "logps/rejected": (pick(policy, worst).sum(), n_prompts),
    }
    if ref_logps is None:
        return out
    ratio = torch.where(mask, policy - ref_logps.float(), torch.zeros_like(policy))
    r = beta * ratio
    r_best, r_worst = pick(r, best), pick(r, worst)
    others = mask.clone()
    others.scatter_(1, best[:, None], False)
    beats_all = torch.where(others, r_best[:, None] > r, torch.ones_like(others)).all(dim=1)
    out.update({
        "rewards/chosen": (r_best.sum(), n_prompts),
        "rewards/rejected": (r_worst.sum(), n_prompts),
        "rewards/margins": ((r_best - r_worst).sum(), n_prompts),
        "rewards/accuracies": (beats_all.float().sum(), n_prompts),
        "logratio/mean": (ratio.sum(), mask.sum().float()),
    })
    return out


class MetricAccumulator:
    """Running sums and counts of metrics between two logs (one per mode: train / eval)."""

    def __init__(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, Tensor] = {}

    def add(self, metrics: dict[str, tuple[Tensor, Tensor]]) -> None:
        for name, (s, c) in metrics.items():
            if name in self._sums:
                self._sums[name] = self._sums[name] + s
                self._counts[name] = self._counts[name] + c
            else:
                self._sums[name], self._counts[name] = s.clone(), c.clone()

    def __bool__(self) -> bool:
        return bool(self._sums)

    def reduce_and_reset(self, reduce_sum=None) -> dict[str, float]:
        """Means over the interval (and over processes: ``reduce_sum`` all-reduces a 1-D tensor by sum, e.g.
        ``lambda t: accelerator.reduce(t, "sum")``); clears the sums. Every process must call it together."""
        names = sorted(self._sums)
        if not names:
            return {}
        stacked = torch.stack([self._sums[n] for n in names] + [self._counts[n] for n in names]).float()
        if reduce_sum is not None:
            stacked = reduce_sum(stacked)
        values = stacked.cpu().tolist()
        k = len(names)
        self._sums.clear()
        self._counts.clear()
        return {n: values[i] / values[k + i] for i, n in enumerate(names) if values[k + i] > 0}

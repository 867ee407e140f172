"""The pairwise losses against a peer's code: TRL 1.16's own ``DPOTrainer._compute_loss`` (and
``trl.experimental.cpo``'s ``CPOTrainer.cpo_loss`` for SimPO), run on the log-probabilities we choose.

``_compute_loss`` is called unbound with a stand-in for the trainer (only the attributes the method reads)
and a stand-in model whose fused-head output carries per-token log-probabilities that sum to the chosen
sequence log-probabilities (zero at prompt positions, as TRL's fused head gives for label −100). Reference
log-probs are "precomputed" (passed in the batch). So the loss formulas, TRL's length normalisation of
IPO (completion-mask token counts) and its averaging are TRL's code, not a re-typing; nca_lab's registry
loss gets the same sequences as K = 2 rows with R = (1, 0) and ``lengths`` = the completion token counts.

Tolerance: both sides evaluate the same float64 expression with torch's kernels; 1e-12.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")

from nca_lab.losses import LOSSES  # noqa: E402

B, T = 6, 9


class _Accel:
    device = torch.device("cpu")

    @staticmethod
    def gather_for_metrics(x):
        return x

    @staticmethod
    def gather(x):
        return x


class _Model:
    training = True

    def __init__(self, per_token):
        self.per_token = per_token

    def __call__(self, **kw):
        n = self.per_token.shape
        return SimpleNamespace(
            log_probs=self.per_token,
            entropy=torch.zeros(n, dtype=torch.float64),
            mean_logits=torch.zeros(n, dtype=torch.float64),
            is_top1=torch.zeros(n, dtype=torch.bool),
        )


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    n = torch.randint(1, T + 1, (2 * B,), generator=g)  # completion tokens of [chosen; rejected]
    completion_mask = torch.zeros(2 * B, T + 1, dtype=torch.long)
    for i, k in enumerate(n.tolist()):
        completion_mask[i, T + 1 - k :] = 1
    shift = completion_mask[:, 1:]
    per_token = -torch.rand(2 * B, T, generator=g, dtype=torch.float64) * 4 * shift  # 0 outside the completion
    logps = per_token.sum(1)
    ref = logps + torch.randn(2 * B, generator=g, dtype=torch.float64) * 3
    return per_token, completion_mask, logps, ref, n.to(torch.float64)


def trl_loss(loss_type, beta, eps, per_token, completion_mask, ref):
    trainer = SimpleNamespace(
        model=_Model(per_token), accelerator=_Accel(), aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0],
        beta=beta, label_smoothing=eps, use_weighting=False, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    inputs = {
        "input_ids": torch.zeros(2 * B, T + 1, dtype=torch.long),
        "attention_mask": torch.ones(2 * B, T + 1, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref[:B],
        "ref_rejected_logps": ref[B:],
    }
    return trl_dpo.DPOTrainer._compute_loss(trainer, trainer.model, inputs, return_outputs=False)


@pytest.mark.parametrize(
    "ours, theirs, hp",
    [
        ("dpo", "sigmoid", {"beta": 0.3}),
        ("hinge", "hinge", {"beta": 0.3}),
        ("ipo", "ipo", {"beta": 0.3}),
        ("rdpo", "robust", {"beta": 0.3, "eps": 0.2}),
        ("nca_pair", "nca_pair", {"beta": 0.3}),
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pairwise_losses_equal_trls_dpo_trainer(ours, theirs, hp, seed):
    per_token, completion_mask, logps, ref, n = _batch(seed)
    expect = float(trl_loss(theirs, hp["beta"], hp.get("eps", 0.0), per_token, completion_mask, ref))
    pair = lambda t: torch.stack([t[:B], t[B:]], dim=1)  # noqa: E731  [chosen; rejected] → [B, 2]
    R = torch.tensor([[1.0, 0.0]] * B, dtype=torch.float64)
    got = float(LOSSES[ours](pair(logps), pair(ref), R, lengths=pair(n), **hp).mean())
    assert got == pytest.approx(expect, rel=1e-12, abs=1e-12)


def test_simpo_equals_trls_cpo_trainer():
    """TRL's ``CPOTrainer.cpo_loss`` with ``loss_type="simpo"`` takes length-averaged log-probs (SimPO's
    s = logps/|y|) and returns −log σ(β(s_w − s_l) − γ) per pair (label smoothing 0)."""
    trl_cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer", reason="CPOTrainer not in this TRL")
    fn = getattr(trl_cpo.CPOTrainer, "cpo_loss", None)
    if fn is None:
        pytest.skip("this TRL's CPOTrainer has no cpo_loss")
    per_token, completion_mask, logps, ref, n = _batch(5)
    s = logps / n
    beta, gamma = 2.0, 0.7
    trainer = SimpleNamespace(
        loss_type="simpo", beta=beta, simpo_gamma=gamma, label_smoothing=0.0, accelerator=_Accel(),
        alpha=0.0, cpo_alpha=0.0, aux_loss_enabled=False,
    )  # fmt: skip
    out = fn(trainer, s[:B], s[B:])
    losses = out[0] if isinstance(out, tuple) else out
    R = torch.tensor([[1.0, 0.0]] * B, dtype=torch.float64)
    pair = lambda t: torch.stack([t[:B], t[B:]], dim=1)  # noqa: E731
    got = LOSSES["simpo"](pair(logps), None, R, lengths=pair(n), beta=beta, gamma=gamma)
    torch.testing.assert_close(got, losses.to(torch.float64), rtol=1e-12, atol=1e-12)

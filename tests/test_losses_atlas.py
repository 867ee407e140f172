"""Software tests of the loss atlas (``exo``, ``apo_zero``, ``apo_down``, ``discopop``, ``bco_pair``, ``sigmoid_norm``,
``sppo``, ``plackett_luce``, ``astar_po``, ``orpo``, ``kto``): TRL 1.16's own code as the oracle where TRL has the
loss, hand-computed values otherwise.

TRL's losses live inside trainer methods (``DPOTrainer._compute_loss``, ``KTOTrainer._compute_loss``,
``ORPOTrainer.odds_ratio_loss``). The tests call those methods unchanged, as unbound functions, on a stand-in
``self`` (the attributes the method reads) and a stand-in model whose per-token log-probs put each sequence's
summed log-prob on its first completion position (TRL sums the per-token log-probs, so only the sum matters).
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nca_lab import losses as L
from nca_lab.losses import LOSSES

ATLAS = ["exo", "apo_zero", "apo_down", "discopop", "bco_pair", "sigmoid_norm", "sppo", "plackett_luce", "astar_po",
         "orpo", "kto"]


def lsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def sig(x: float) -> float:
    return math.exp(lsig(x))


def t64(*rows):
    return torch.tensor(rows, dtype=torch.float64)


# ------------------------------------------------------------------ stand-ins for TRL's trainer and model


class _FakeModel:
    """Returns TRL's fused-LM-head outputs for sequences whose first token is a row id into ``table``: per-token
    log-probs zero except the first position, which holds the sequence's summed log-prob."""

    def __init__(self, table: torch.Tensor):
        self.table = table

    def __call__(self, input_ids, **kwargs):
        N, T = input_ids.shape
        lp = torch.zeros(N, T - 1, dtype=self.table.dtype)
        lp[:, 0] = self.table[input_ids[:, 0]]
        z = torch.zeros(N, T - 1, dtype=self.table.dtype)
        return SimpleNamespace(log_probs=lp, entropy=z, mean_logits=z, is_top1=torch.zeros(N, T - 1, dtype=torch.bool))


def _accelerator():
    return SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x,
                           unwrap_model=lambda m: m)


def _trainer_self(**attrs):
    base = dict(model=SimpleNamespace(training=True), accelerator=_accelerator(), aux_loss_enabled=False,
                precompute_ref_logps=True, _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0,
                _tp_size=1)
    base.update(attrs)
    return SimpleNamespace(**base)


def _seqs(ids: list[int], lengths: list[int], T: int):
    """input_ids with row ids in column 0 and completion masks with ``lengths`` ones (positions 1..n)."""
    N = len(ids)
    input_ids = torch.zeros(N, T, dtype=torch.long)
    input_ids[:, 0] = torch.tensor(ids)
    cm = torch.zeros(N, T, dtype=torch.long)
    for i, n in enumerate(lengths):
        cm[i, 1 : 1 + n] = 1
    return input_ids, torch.ones(N, T, dtype=torch.long), cm


def trl_dpo_losses(loss_type: str, chosen, rejected, ref_chosen, ref_rejected, len_c, len_r, *, beta, eps=0.0, tau=0.05):
    """The per-sequence loss of TRL 1.16 ``DPOTrainer._compute_loss`` for ``loss_type``, one pair per batch row
    (its batch mean is returned by TRL; with one pair per call it is the pair's loss)."""
    from trl.trainer.dpo_trainer import DPOTrainer

    out = []
    T = int(max(max(len_c), max(len_r))) + 2
    for i in range(len(chosen)):
        table = torch.tensor([float(chosen[i]), float(rejected[i])], dtype=torch.float64)
        input_ids, attn, cm = _seqs([0, 1], [int(len_c[i]), int(len_r[i])], T)
        self_ = _trainer_self(ld_alpha=None, f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0],
                              beta=beta, label_smoothing=eps, use_weighting=False,
                              args=SimpleNamespace(discopop_tau=tau, gradient_checkpointing_kwargs=None))
        inputs = {"input_ids": input_ids, "attention_mask": attn, "completion_mask": cm,
                  "ref_chosen_logps": torch.tensor([float(ref_chosen[i])], dtype=torch.float64),
                  "ref_rejected_logps": torch.tensor([float(ref_rejected[i])], dtype=torch.float64)}
        out.append(float(DPOTrainer._compute_loss(self_, _FakeModel(table), inputs, False)))
    return torch.tensor(out, dtype=torch.float64)


def _pairs(seed: int, B: int = 6):
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(B, 2, generator=g, dtype=torch.float64) * 40 - 0.5
    ref = lp + torch.randn(B, 2, generator=g, dtype=torch.float64) * 4
    n = torch.randint(1, 12, (B, 2), generator=g).to(torch.float64)
    # the chosen response is column 0 in even rows, column 1 in odd rows
    R = torch.tensor([[1.0, 0.0] if b % 2 == 0 else [0.0, 1.0] for b in range(B)], dtype=torch.float64)
    c = R.argmax(1)
    pick = lambda t, idx: t.gather(1, idx[:, None])[:, 0]  # noqa: E731
    return lp, ref, n, R, (pick(lp, c), pick(lp, 1 - c), pick(ref, c), pick(ref, 1 - c), pick(n, c), pick(n, 1 - c))


# ------------------------------------------------------------------ TRL's DPOTrainer loss types


@pytest.mark.parametrize(
    "name,loss_type,hp,tol",
    [
        ("apo_zero", "apo_zero", dict(beta=0.1), 1e-12),
        ("apo_down", "apo_down", dict(beta=0.1), 1e-12),
        ("discopop", "discopop", dict(beta=0.1, tau=0.05), 1e-12),
        ("bco_pair", "bco_pair", dict(beta=0.1), 1e-12),
        ("sigmoid_norm", "sigmoid_norm", dict(beta=0.1), 1e-12),
        ("sppo", "sppo_hard", dict(beta=0.1), 1e-9),
        ("dpo", "sigmoid", dict(beta=0.3), 1e-12),
        ("discopop", "discopop", dict(beta=0.7, tau=0.3), 1e-12),
        ("bco_pair", "bco_pair", dict(beta=2.0), 1e-12),
    ],
)
def test_dpo_trainer_loss_types(name, loss_type, hp, tol):
    """Ours on K = 2 rows equals TRL's ``DPOTrainer._compute_loss`` for the same pair, number for number.
    Tolerance: float64 round-off (1e-12 on losses of order 1; ``sppo`` ~1e-9 relative to values up to 1e3 ×
    β⁻² = 100: the squared log-ratio terms)."""
    lp, ref, n, R, (c, r, rc, rr, nc, nr) = _pairs(hash(name) % 1000)
    trl = trl_dpo_losses(loss_type, c, r, rc, rr, nc, nr, beta=hp["beta"], tau=hp.get("tau", 0.05))
    ours = LOSSES[name](lp, ref, R, lengths=n, **hp)
    torch.testing.assert_close(ours, trl, rtol=tol, atol=tol)


def test_exo_k2_hard_labels_is_trl_exo_pair():
    """Listwise EXO at K = 2 with the default α = 1e-4 (labels one-hot on R = (1, 0)) is TRL's ``exo_pair`` with
    ``label_smoothing = ε``. Tolerance 1e-6: TRL builds ε as a float32 tensor, so its log(1 − ε) and log ε carry
    float32 round-off (~1e-7 relative) into an otherwise float64 computation."""
    lp, ref, n, R, (c, r, rc, rr, nc, nr) = _pairs(7)
    for eps in (1e-3, 0.1, 0.3):
        for beta in (0.1, 0.5):
            trl = trl_dpo_losses("exo_pair", c, r, rc, rr, nc, nr, beta=beta, eps=eps)
            ours = L.exo(lp, ref, R, beta=beta, eps=eps)
            torch.testing.assert_close(ours, trl, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ TRL's KTOTrainer


def trl_kto_loss(logps, ref, labels, kl_logps, kl_ref, *, beta, wd=1.0, wu=1.0):
    """TRL 1.16 ``KTOTrainer._compute_loss`` on one batch: completions ``logps`` (labels True = desirable) and
    the KL completions whose mean log-ratio, clamped at 0, is TRL's z₀."""
    from trl.trainer.kto_trainer import KTOTrainer

    N, M = len(logps), len(kl_logps)
    table = torch.cat([logps, kl_logps]).to(torch.float64)
    T = 3
    input_ids, attn, cm = _seqs(list(range(N)), [1] * N, T)
    kl_ids, kl_attn, kl_cm = _seqs(list(range(N, N + M)), [1] * M, T)
    self_ = _trainer_self(calculate_KL=True, loss_type="kto", beta=beta, desirable_weight=wd, undesirable_weight=wu,
                          args=SimpleNamespace(gradient_checkpointing_kwargs=None))
    self_._compute_kl_logps = lambda model, batch: KTOTrainer._compute_kl_logps(self_, model, batch)
    batch = {"input_ids": input_ids, "attention_mask": attn, "completion_mask": cm, "KL_input_ids": kl_ids,
             "KL_attention_mask": kl_attn, "KL_completion_mask": kl_cm, "label": torch.tensor(labels),
             "ref_logps": ref.to(torch.float64), "ref_KL_logps": kl_ref.to(torch.float64)}
    return float(KTOTrainer._compute_loss(self_, _FakeModel(table), batch, False))


@pytest.mark.parametrize("seed", range(6))
def test_kto_is_trl_kto_given_the_same_z0(seed):
    """Our per-prompt KTO equals TRL's KTO loss on the prompt's desirable and undesirable responses when TRL's
    KL completions are the prompt's own valid responses (so TRL's z₀ = max(0, mean log-ratio) is ours). The
    desirable/undesirable split is ours (above/below the median by rank); K from 2 to 5, integer rewards so
    that ties (left-out responses) occur. Tolerance: float64 round-off."""
    g = torch.Generator().manual_seed(seed)
    K = 2 + seed % 4
    lp = -torch.rand(1, K, generator=g, dtype=torch.float64) * 30
    ref = lp + torch.randn(1, K, generator=g, dtype=torch.float64) * (3 if seed % 2 else 0.5) + (1.0 if seed % 3 else -1.0)
    R = torch.randint(0, 3, (1, K), generator=g).to(torch.float64)
    if seed == 0:
        R = t64([1.0, 0.0])
    beta, wd, wu = 0.1 + 0.3 * seed, 1.0, 1.0 + 0.25 * seed
    ours = L.kto(lp, ref, R, beta=beta, desirable_weight=wd, undesirable_weight=wu).item()
    Rl = R[0].tolist()
    beats = [sum(x < y for x in Rl) for y in Rl]
    beaten = [sum(x > y for x in Rl) for y in Rl]
    keep = [i for i in range(K) if beats[i] != beaten[i]]
    if not keep:
        assert ours == 0.0
        return
    labels = [beats[i] > beaten[i] for i in keep]
    trl = trl_kto_loss(lp[0, keep], ref[0, keep], labels, lp[0], ref[0], beta=beta, wd=wd, wu=wu)
    assert ours == pytest.approx(trl, rel=1e-12, abs=1e-12)


def test_kto_z0_detached_and_rules():
    # z0 carries no gradient: d/dρ_i only through the explicit term
    lp = t64([-1.0, -2.0, -3.0]).requires_grad_(True)
    ref = t64([-2.0, -2.5, -2.0])
    R = t64([2.0, 1.0, 0.0])  # desirable, neutral (the median), undesirable
    beta = 0.5
    out = L.kto(lp, ref, R, beta=beta)
    rho = [1.0, 0.5, -1.0]
    z0 = max(0.0, sum(rho) / 3)
    expect = ((1 - sig(beta * (rho[0] - z0))) + (1 - sig(beta * (z0 - rho[2])))) / 2
    assert out.item() == pytest.approx(expect, abs=1e-14)
    (gx,) = torch.autograd.grad(out.sum(), lp)
    s0, s2 = sig(beta * (rho[0] - z0)), sig(beta * (z0 - rho[2]))
    torch.testing.assert_close(gx, t64([-beta * s0 * (1 - s0) / 2, 0.0, beta * s2 * (1 - s2) / 2]), rtol=0, atol=1e-14)
    # all tied: no signal
    assert L.kto(lp.detach(), ref, t64([1.0, 1.0, 1.0])).item() == 0.0


# ------------------------------------------------------------------ TRL's ORPOTrainer


def test_orpo_odds_ratio_is_trl():
    """ORPO = −s_w − λ·log σ(o_w − o_l): the odds term is TRL 1.16 ``ORPOTrainer.odds_ratio_loss`` (which returns
    λ·log σ(·), to be subtracted from the NLL), called on our length-normalised scores. Tolerance 1e-6 relative:
    TRL casts the log-probs to float32 first."""
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    lp, ref, n, R, (c, r, rc, rr, nc, nr) = _pairs(11)
    lam = 0.25
    self_ = SimpleNamespace(beta=lam, accelerator=_accelerator())
    trl_losses = ORPOTrainer.odds_ratio_loss(self_, c / nc, r / nr)[0].to(torch.float64)
    expect = -(c / nc) - trl_losses
    ours = L.orpo(lp, None, R, lengths=n, lam=lam)
    torch.testing.assert_close(ours, expect, rtol=1e-6, atol=1e-6)
    # hand value of the odds term for one row
    s_w, s_l = (c / nc)[0].item(), (r / nr)[0].item()
    o = lambda s: s - math.log(1 - math.exp(s))  # noqa: E731
    assert ours[0].item() == pytest.approx(-s_w - lam * lsig(o(s_w) - o(s_l)), abs=1e-12)


# ------------------------------------------------------------------ hand-computed values (no TRL counterpart)


def test_hand_exo_listwise():
    lp, ref, R = t64([-3.0, -5.0, -4.0]), t64([-4.0, -4.5, -3.0]), t64([2.0, 0.0, 1.0])
    beta, alpha, eps = 0.5, 2.0, 0.2
    r = [beta * (a - b) for a, b in zip([-3.0, -5.0, -4.0], [-4.0, -4.5, -3.0])]
    p = [math.exp(x) / sum(math.exp(y) for y in r) for x in r]
    e = [math.exp(x / alpha) for x in (2.0, 0.0, 1.0)]
    w = [v / sum(e) for v in e]
    q = [(1 - eps) * wi + eps * (1 - wi) / 2 for wi in w]
    expect = sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    assert L.exo(lp, ref, R, beta=beta, alpha=alpha, eps=eps).item() == pytest.approx(expect, abs=1e-14)
    # ε = 0: KL(p ‖ w), zero exactly when r_θ = R/α + C
    f = t64([2.0 / alpha + 0.3, 0.0 + 0.3, 1.0 / alpha + 0.3])
    assert L.exo(f / beta, torch.zeros_like(f), R, beta=beta, alpha=alpha, eps=0.0).item() == pytest.approx(0.0, abs=1e-15)


def test_hand_sppo_win_rates():
    lp, ref = t64([-1.0, -2.0, -3.0, -4.0]), t64([-1.5, -1.5, -2.5, -4.5])
    R = t64([3.0, 1.0, 1.0, 0.0])  # P̂ = (1, 1/2, 1/2, 0) against the 3 others, ties ½
    beta = 0.4
    p_hat = [1.0, (1 + 0.5) / 3, (1 + 0.5) / 3, 0.0]
    rho = [0.5, -0.5, -0.5, 0.5]
    expect = sum((x - (p - 0.5) / beta) ** 2 for x, p in zip(rho, p_hat))
    assert L.sppo(lp, ref, R, beta=beta).item() == pytest.approx(expect, abs=1e-13)


def test_hand_plackett_luce():
    lp, ref, R = t64([-3.0, -5.0, -4.0]), t64([-4.0, -4.5, -3.0]), t64([2.0, 0.0, 1.0])
    beta = 0.5
    r = [beta * (a - b) for a, b in zip([-3.0, -5.0, -4.0], [-4.0, -4.5, -3.0])]
    order = [0, 2, 1]
    rs = [r[i] for i in order]
    expect = -sum(rs[k] - math.log(sum(math.exp(x) for x in rs[k:])) for k in range(2))
    assert L.plackett_luce(lp, ref, R, beta=beta).item() == pytest.approx(expect, abs=1e-14)
    # K = 2, distinct rewards: DPO
    g = torch.Generator().manual_seed(5)
    a, b = -torch.rand(8, 2, generator=g, dtype=torch.float64) * 9, -torch.rand(8, 2, generator=g, dtype=torch.float64) * 9
    RR = torch.randn(8, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(L.plackett_luce(a, b, RR, beta=0.7), L.dpo(a, b, RR, beta=0.7), rtol=0, atol=1e-14)
    # at the reference: log n!
    assert L.plackett_luce(lp, lp, R).item() == pytest.approx(math.log(6), abs=1e-14)
    # ties keep index order (the lower index ranks first)
    Rt = t64([1.0, 1.0, 0.0])
    rs = [r[0], r[1], r[2]]
    expect_t = -sum(rs[k] - math.log(sum(math.exp(x) for x in rs[k:])) for k in range(2))
    assert L.plackett_luce(lp, ref, Rt, beta=beta).item() == pytest.approx(expect_t, abs=1e-14)


def test_hand_astar_po():
    lp, ref, R = t64([-3.0, -5.0, -4.0]), t64([-4.0, -4.5, -3.0]), t64([2.0, 0.0, 1.0])
    beta, alpha = 0.5, 2.0
    r = [beta * (a - b) for a, b in zip([-3.0, -5.0, -4.0], [-4.0, -4.5, -3.0])]
    v = math.log(sum(math.exp(x / alpha) for x in (2.0, 0.0, 1.0)) / 3)
    expect = sum((ri - (x / alpha - v)) ** 2 for ri, x in zip(r, (2.0, 0.0, 1.0))) / 3
    assert L.astar_po(lp, ref, R, beta=beta, alpha=alpha).item() == pytest.approx(expect, abs=1e-14)


def test_values_at_reference():
    g = torch.Generator().manual_seed(9)
    lp = -torch.rand(4, 3, generator=g, dtype=torch.float64) * 10
    R = torch.randn(4, 3, generator=g, dtype=torch.float64)
    one = torch.ones(4, dtype=torch.float64)
    at = lambda name, **hp: LOSSES[name](lp, lp.clone(), R, **hp)  # noqa: E731
    torch.testing.assert_close(at("apo_zero"), one, rtol=0, atol=1e-15)
    torch.testing.assert_close(at("apo_down"), one, rtol=0, atol=1e-15)
    torch.testing.assert_close(at("discopop"), one * (0.5 * math.log(2) + 0.5), rtol=0, atol=1e-15)
    torch.testing.assert_close(at("bco_pair"), one * 2 * math.log(2), rtol=0, atol=1e-15)
    torch.testing.assert_close(at("sigmoid_norm"), one * math.log(2), rtol=0, atol=1e-15)
    torch.testing.assert_close(at("kto"), one * 0.5, rtol=0, atol=1e-15)
    torch.testing.assert_close(at("plackett_luce"), one * math.log(6), rtol=0, atol=1e-14)


# ------------------------------------------------------------------ the registry and the consumers


def test_atlas_registry_flags():
    for name in ATLAS:
        assert name in LOSSES
    assert not LOSSES["orpo"].needs_ref and all(LOSSES[n].needs_ref for n in ATLAS if n != "orpo")
    assert {n for n in ATLAS if LOSSES[n].pairwise} == {"apo_zero", "apo_down", "discopop", "bco_pair", "sigmoid_norm", "orpo"}
    assert {n for n in ATLAS if LOSSES[n].uses_lengths} == {"sigmoid_norm", "orpo"}
    assert {n for n in ATLAS if LOSSES[n].uses_reward_values} == {"exo", "astar_po"}
    assert LOSSES["exo"].defaults == {"beta": 0.1, "alpha": 1e-4, "eps": 1e-3}
    assert LOSSES["discopop"].defaults["tau"] == 0.05 and LOSSES["orpo"].defaults["lam"] == 0.1


def test_every_registry_name_is_accepted_by_the_trainer_study_and_bench(tmp_path):
    """The train CLI parses ``--loss NAME`` for every registry loss and resolves its hyperparameters; the study's
    :class:`Method` builds a trainer command line from any registry loss; the bench runs ours through the same CLI.
    No consumer keeps its own list of loss names."""
    from nca_lab.llm.config import config_from_args, loss_hparams, resolved_hparams
    from nca_lab.llm.study.recipe import Method

    for name in LOSSES:
        cfg = config_from_args(["--loss", name, "--output-dir", str(tmp_path / name)])
        assert cfg.loss == name
        loss_hparams(cfg)
        resolved_hparams(cfg)
        assert Method(name).loss == name
        if "beta" in LOSSES[name].defaults:  # the bench's command line (``bench.trainers.run_ours``) always sets --beta
            bench = config_from_args(["--model", str(tmp_path / "m"), "--data", str(tmp_path / "d.jsonl"), "--schema",
                                      "generic", "--output-dir", str(tmp_path / name), "--loss", name, "--beta", "0.1",
                                      "--max-steps", "1"])
            assert loss_hparams(bench)["beta"] == 0.1


# ------------------------------------------------------------------ contract checks per atlas loss

# The defaults each docstring states (the paper's, or TRL 1.16's config where TRL has the loss).
ATLAS_DEFAULTS = {
    "exo": {"beta": 0.1, "alpha": 1e-4, "eps": 1e-3},
    "apo_zero": {"beta": 0.1, "pairs": "best_worst"},
    "apo_down": {"beta": 0.1, "pairs": "best_worst"},
    "discopop": {"beta": 0.1, "tau": 0.05, "pairs": "best_worst"},
    "bco_pair": {"beta": 0.1, "pairs": "best_worst"},
    "sigmoid_norm": {"beta": 0.1, "pairs": "best_worst"},
    "sppo": {"beta": 0.1},
    "plackett_luce": {"beta": 0.1},
    "astar_po": {"beta": 2e-3, "alpha": 0.5},
    "orpo": {"lam": 0.1, "pairs": "best_worst"},
    "kto": {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0},
}


def _off_reference_batch(seed: int = 21, B: int = 3, K: int = 4):
    """Log-probs away from the reference (log-ratios of a few nats), distinct rewards, lengths ≠ 1: a point
    where every hyperparameter of every atlas loss changes the value."""
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(B, K, generator=g, dtype=torch.float64) * 12 - 0.5
    ref = lp + torch.randn(B, K, generator=g, dtype=torch.float64) * 3
    R = torch.stack([torch.randperm(K, generator=g) for _ in range(B)]).to(torch.float64) / K
    n = torch.randint(2, 9, (B, K), generator=g).to(torch.float64)
    return lp, ref, R, n


def test_atlas_defaults_are_the_documented_values():
    assert {n: dict(LOSSES[n].defaults) for n in ATLAS} == ATLAS_DEFAULTS


@pytest.mark.parametrize("name", ATLAS)
def test_atlas_defaults_act_at_call_time(name):
    """A call with no hyperparameters equals the call with the documented defaults spelled out, and moving any
    one numeric default by ×1.5 changes the value at this point (so the equality is not vacuous: a function
    whose own default differed from the documented one would fail it)."""
    lp, ref, R, n = _off_reference_batch()
    implicit = LOSSES[name](lp, ref, R, lengths=n)
    documented = ATLAS_DEFAULTS[name]
    torch.testing.assert_close(implicit, LOSSES[name](lp, ref, R, lengths=n, **documented), rtol=0, atol=0)
    for hp, value in documented.items():
        if isinstance(value, float):
            # EXO's α is a temperature on rewards (labels softmax(R/α)): with reward gaps of 0.25 the labels are
            # one-hot to e^-2500 at α = 1e-4 and 1.5e-4 alike, so α is probed at rewards on α's own scale.
            R_hp = R * value if (name, hp) == ("exo", "alpha") else R
            at_default = LOSSES[name](lp, ref, R_hp, lengths=n)
            moved = LOSSES[name](lp, ref, R_hp, lengths=n, **{**documented, hp: value * 1.5})
            assert not torch.allclose(moved, at_default, rtol=1e-9, atol=0), (name, hp)


@pytest.mark.parametrize("name", ATLAS)
def test_atlas_bad_hyperparameters_are_refused_by_name(name):
    """Every numeric hyperparameter refuses a bool, a string, NaN, inf, None and a negative number with a
    ValueError whose message starts with its name; a pairwise loss refuses an unknown ``pairs`` mode."""
    lp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    R = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    for hp, value in ATLAS_DEFAULTS[name].items():
        if isinstance(value, float):
            for bad in (True, "0.5", math.nan, math.inf, None, -1.0):
                with pytest.raises(ValueError, match=f"^{hp} must"):
                    LOSSES[name](lp, lp.clone(), R, **{hp: bad})
    if LOSSES[name].pairwise:
        with pytest.raises(ValueError, match="^pairs must be one of"):
            LOSSES[name](lp, lp.clone(), R, pairs="every")


@pytest.mark.parametrize("name", [n for n in ATLAS if LOSSES[n].pairwise])
@pytest.mark.parametrize("pairs", ["best_worst", "best_rest", "all"])
def test_atlas_pair_modes_average_the_two_response_loss(name, pairs):
    """An independent computation of the pair modes: the value on K = 4 distinct rewards is the mean, over the
    pairs the mode selects (enumerated here), of the same loss called on that pair alone (K = 2); for ORPO,
    whose SFT term is per prompt, with that term counted once."""
    lp, ref, R, n = _off_reference_batch(seed=5, B=2)
    got = LOSSES[name](lp, ref, R, lengths=n, pairs=pairs)
    for b in range(R.shape[0]):
        r = R[b].tolist()
        best, worst = r.index(max(r)), r.index(min(r))
        chosen = {
            "best_worst": [(best, worst)],
            "best_rest": [(best, j) for j in range(4) if j != best],
            "all": [(i, j) for i in range(4) for j in range(4) if r[i] > r[j]],
        }[pairs]
        two = [float(LOSSES[name](lp[b : b + 1, [i, j]], ref[b : b + 1, [i, j]], R[b : b + 1, [i, j]],
                                  lengths=n[b : b + 1, [i, j]])) for i, j in chosen]
        expected = sum(two) / len(two)
        if name == "orpo":
            # ORPO's SFT term −s_best is paid once per prompt, not once per pair: each K = 2 call paid −s_w of
            # its own winner, so swap the pairs' mean SFT term for the prompt's (s = logps / lengths).
            s = (lp[b] / n[b]).tolist()
            expected += sum(s[i] for i, _ in chosen) / len(chosen) - s[best]
        assert float(got[b]) == pytest.approx(expected, rel=1e-13), (name, pairs, b)


def test_plackett_luce_ties_at_large_K_keep_index_order():
    """Plackett–Luce at K = 24 with rewards from {0, 1, 2} (most responses tie; two masked) against a
    plain-Python sum over the ranking that orders ties by index, as the docstring states. From K = 17 on,
    torch's CPU sort reorders ties unless asked to be stable, so this is where the rule can fail."""
    rng = np.random.default_rng(17)
    K, beta = 24, 0.1
    R = rng.integers(0, 3, K).astype(float)
    lp = -rng.uniform(0.5, 8.0, K)
    ref = lp + rng.normal(0, 1, K)
    mask = np.array([k not in (3, 17) for k in range(K)])
    ranking = sorted((k for k in range(K) if mask[k]), key=lambda k: (-R[k], k))
    r = [beta * (lp[k] - ref[k]) for k in ranking]
    expect = -sum(r[i] - math.log(sum(math.exp(x) for x in r[i:])) for i in range(len(r) - 1))
    t = lambda a: torch.tensor(a[None], dtype=torch.float64)  # noqa: E731
    got = float(LOSSES["plackett_luce"](t(lp), t(ref), t(R), mask=torch.tensor(mask[None])))
    assert got == pytest.approx(expect, rel=1e-12)


def test_log1mexp_is_accurate_across_its_range():
    """ORPO's log(1 − e^x) against 50-digit mpmath, from x = −1e-12 (where 1 − e^x cancels: a naive
    log1p(−e^x) is off by ~1e-4 relative) to x = −50 (where log(−expm1(x)) rounds to 0): both branches of the
    −ln 2 switch to 4e-16 relative (a few ulps)."""
    import mpmath

    mpmath.mp.dps = 50
    xs = [-1e-12, -1e-6, -1e-3, -0.3, -0.69, -0.7, -1.0, -5.0, -20.0, -50.0]
    got = L._log1mexp(torch.tensor(xs, dtype=torch.float64)).tolist()
    for x, g in zip(xs, got):
        exact = float(mpmath.log(1 - mpmath.exp(mpmath.mpf(x))))
        assert g == pytest.approx(exact, rel=4e-16, abs=0), (x, g, exact)

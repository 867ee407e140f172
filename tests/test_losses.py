"""Software tests of the loss module: hand-computed values, one-tuple laws, masking, dtypes, errors.

The population-level statements (optima, propositions 1–19) live in tests/test_prop_*.py; here every
check is at the level of one tuple of K responses, against formulas written out independently (plain
Python `math` or loops mirroring the public reference implementations: the NCA authors'
thu-ml/Noise-Contrastive-Alignment `reward_trainer.py`, TRL 1.16 `DPOTrainer._compute_loss`, and
AlibabaResearch/DAMO-ConvAI's PRO `process_manager.py`; each test names the one it mirrors).
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nca_lab import losses as L
from nca_lab.losses import LOSSES, get_loss

LN2 = math.log(2.0)


def lsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def t64(*rows):
    return torch.tensor(rows, dtype=torch.float64)


DESIGN_TABLE = [
    "infonca", "nca", "nca_pair", "dpo", "cdpo", "rdpo", "ipo", "hinge",
    "clha", "pro", "rrhf", "cpl", "simpo", "sft",
    # the loss atlas (tests/test_losses_atlas.py)
    "exo", "apo_zero", "apo_down", "discopop", "bco_pair", "sigmoid_norm", "sppo", "plackett_luce", "astar_po",
    "orpo", "kto",
]  # fmt: skip


# ------------------------------------------------------------------ registry and documentation


def test_registry_has_every_design_loss():
    assert sorted(LOSSES) == sorted(DESIGN_TABLE)
    for name, spec in LOSSES.items():
        assert spec.name == name and callable(spec.fn)
        doc = spec.fn.__doc__ or ""
        # formula, shapes, source, defaults: every docstring carries them
        assert "[B, K]" in doc and "[B]" in doc, name
        assert re.search(r"(19|20)\d\d", doc) or "TRL" in doc, f"{name}: no source paper/year"
        for hp, value in spec.defaults.items():
            if hp in ("pairs", "labels", "label_weights"):
                continue
            assert f"{hp}" in doc.replace("β", "beta").replace("α", "alpha").replace("ε", "eps").replace(
                "λ", "lam"
            ).replace("γ", "gamma"), f"{name}: default {hp} undocumented"


def test_registry_flags():
    ref_free = {n for n, s in LOSSES.items() if not s.needs_ref}
    assert ref_free == {"clha", "pro", "rrhf", "cpl", "simpo", "sft", "orpo"}
    assert {n for n, s in LOSSES.items() if s.uses_lengths} == {"ipo", "clha", "pro", "rrhf", "simpo", "sft", "sigmoid_norm", "orpo"}
    assert {n for n, s in LOSSES.items() if s.uses_reward_values} == {"infonca", "nca", "clha", "pro", "exo", "astar_po"}
    assert {n for n, s in LOSSES.items() if s.pairwise} == {
        "dpo", "cdpo", "rdpo", "ipo", "hinge", "nca_pair", "cpl", "simpo",
        "apo_zero", "apo_down", "discopop", "bco_pair", "sigmoid_norm", "orpo",
    }  # fmt: skip
    # the paper defaults the CLI relies on
    assert LOSSES["dpo"].defaults["beta"] == 0.1
    assert LOSSES["nca"].defaults["beta"] == 0.01 and LOSSES["infonca"].defaults["beta"] == 0.01
    assert LOSSES["simpo"].defaults["beta"] == 2.5 and LOSSES["simpo"].defaults["gamma"] == 1.375
    assert LOSSES["cpl"].defaults == {"alpha": 0.1, "lam": 0.5, "pairs": "best_worst"}
    assert LOSSES["clha"].defaults["margin"] == 3.0 and LOSSES["clha"].defaults["min_gap"] == 3.0
    assert LOSSES["pro"].defaults["sft_weight"] == 0.05
    assert LOSSES["infonca"].defaults["labels"] == "softmax"


# ------------------------------------------------------------------ values at π_θ = π_ref


@pytest.mark.parametrize("K", [2, 3, 5])
def test_values_at_reference(K):
    g = torch.Generator().manual_seed(K)
    logp = torch.randn(4, K, generator=g, dtype=torch.float64) * 5 - 20
    R = torch.randn(4, K, generator=g, dtype=torch.float64)  # continuous: no ties
    for beta in (0.05, 0.3, 2.0):
        at = lambda name, **hp: LOSSES[name](logp, logp.clone(), R, **hp)  # noqa: E731
        torch.testing.assert_close(at("dpo", beta=beta), torch.full((4,), LN2, dtype=torch.float64), rtol=0, atol=1e-14)
        torch.testing.assert_close(at("nca_pair", beta=beta), torch.full((4,), 2 * LN2, dtype=torch.float64), rtol=0, atol=1e-14)
        torch.testing.assert_close(at("infonca", beta=beta, alpha=0.7), torch.full((4,), math.log(K), dtype=torch.float64), rtol=0, atol=1e-14)
        torch.testing.assert_close(at("nca", beta=beta, alpha=0.7), torch.full((4,), 2 * LN2, dtype=torch.float64), rtol=0, atol=1e-14)
        torch.testing.assert_close(at("ipo", beta=beta), torch.full((4,), 1 / (4 * beta**2), dtype=torch.float64), rtol=1e-14, atol=0)
        torch.testing.assert_close(at("hinge", beta=beta), torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-14)
        for eps in (0.0, 0.2, 0.45):
            torch.testing.assert_close(at("cdpo", beta=beta, eps=eps), torch.full((4,), LN2, dtype=torch.float64), rtol=0, atol=1e-13)
            torch.testing.assert_close(at("rdpo", beta=beta, eps=eps), torch.full((4,), LN2, dtype=torch.float64), rtol=0, atol=1e-13)


# ------------------------------------------------------------------ hand-computed values

# One prompt, K = 3, rewards (2, 0, 1): best = 0, worst = 1. β = 0.5, α = 2.
PL = t64([-3.0, -5.0, -4.0])
RL = t64([-4.0, -4.5, -3.0])
RW = t64([2.0, 0.0, 1.0])
LEN = t64([2.0, 5.0, 4.0])
BETA, ALPHA = 0.5, 2.0
RT = [BETA * (p - q) for p, q in zip([-3.0, -5.0, -4.0], [-4.0, -4.5, -3.0])]  # (0.5, -0.25, -0.5)


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def test_hand_infonca_and_nca():
    w = _softmax([2 / ALPHA, 0 / ALPHA, 1 / ALPHA])
    lsm = [x - math.log(sum(math.exp(y) for y in RT)) for x in RT]
    expect_info = -sum(wi * li for wi, li in zip(w, lsm))
    expect_nca = -sum(wi * lsig(r) + lsig(-r) / 3 for wi, r in zip(w, RT))
    assert L.infonca(PL, RL, RW, beta=BETA, alpha=ALPHA).item() == pytest.approx(expect_info, abs=1e-14)
    assert L.nca(PL, RL, RW, beta=BETA, alpha=ALPHA).item() == pytest.approx(expect_nca, abs=1e-14)
    # leave-one-out labels: w_i = e^{R_i/α} / (n · mean_{j≠i} e^{R_j/α})
    e = [math.exp(x / ALPHA) for x in (2.0, 0.0, 1.0)]
    loo = [e[i] / (3 * (sum(e) - e[i]) / 2) for i in range(3)]
    expect_loo = -sum(wi * lsig(r) + lsig(-r) / 3 for wi, r in zip(loo, RT))
    assert L.nca(PL, RL, RW, beta=BETA, alpha=ALPHA, labels="loo").item() == pytest.approx(expect_loo, abs=1e-14)
    lw = t64([0.2, 0.3, 0.9])
    expect_lw = -sum(wi * li for wi, li in zip([0.2, 0.3, 0.9], lsm))
    assert L.infonca(PL, RL, RW, beta=BETA, label_weights=lw).item() == pytest.approx(expect_lw, abs=1e-14)


def test_hand_pairwise_with_reference():
    rw, rl = RT[0], RT[1]  # best = index 0 (R = 2), worst = index 1 (R = 0)
    h = rw - rl
    cases = {
        "dpo": (dict(beta=BETA), -lsig(h)),
        "nca_pair": (dict(beta=BETA), -lsig(rw) - 0.5 * lsig(-rw) - 0.5 * lsig(-rl)),
        "cdpo": (dict(beta=BETA, eps=0.2), -0.8 * lsig(h) - 0.2 * lsig(-h)),
        "rdpo": (dict(beta=BETA, eps=0.2), (0.8 * -lsig(h) - 0.2 * -lsig(-h)) / 0.6),
        "hinge": (dict(beta=BETA), max(0.0, 1 - h)),
    }
    for name, (hp, expect) in cases.items():
        assert LOSSES[name](PL, RL, RW, **hp).item() == pytest.approx(expect, abs=1e-14), name
    # IPO: length-normalised log-ratios, no β inside h
    g = [(p - q) / n for p, q, n in zip([-3.0, -5.0, -4.0], [-4.0, -4.5, -3.0], [2.0, 5.0, 4.0])]
    expect_ipo = (g[0] - g[1] - 1 / (2 * BETA)) ** 2
    assert L.ipo(PL, RL, RW, lengths=LEN, beta=BETA).item() == pytest.approx(expect_ipo, abs=1e-13)


def test_hand_pair_modes():
    r = RT  # R = (2, 0, 1): ordered pairs with R_i > R_j: (0,1), (0,2), (2,1)
    best_rest = (-lsig(r[0] - r[1]) - lsig(r[0] - r[2])) / 2
    all_pairs = (-lsig(r[0] - r[1]) - lsig(r[0] - r[2]) - lsig(r[2] - r[1])) / 3
    assert L.dpo(PL, RL, RW, beta=BETA, pairs="best_rest").item() == pytest.approx(best_rest, abs=1e-14)
    assert L.dpo(PL, RL, RW, beta=BETA, pairs="all").item() == pytest.approx(all_pairs, abs=1e-14)


def test_hand_reference_free():
    s = [p / n for p, n in zip([-3.0, -5.0, -4.0], [2.0, 5.0, 4.0])]  # (-1.5, -1, -1)
    # CPL on summed log-probs: −log σ(α log π_w − λ α log π_l)
    # λ = 0.5: α(−3 + 0.5·5) = −0.5α, so the value depends on α and λ (with λ = 0.6 the argument was 0, ln 2 for every α)
    for a, lam, expect in ((0.3, 0.5, math.log1p(math.exp(0.15))), (2.0, 0.5, math.log1p(math.exp(1.0))), (0.3, 1.0, math.log1p(math.exp(-0.6)))):
        assert L.cpl(PL, None, RW, alpha=a, lam=lam).item() == pytest.approx(-lsig(a * -3.0 - lam * a * -5.0), abs=1e-14)
        assert L.cpl(PL, None, RW, alpha=a, lam=lam).item() == pytest.approx(expect, abs=1e-14)
    # SimPO on length-normalised scores
    b, gm = 2.0, 0.4
    assert L.simpo(PL, None, RW, lengths=LEN, beta=b, gamma=gm).item() == pytest.approx(-lsig(b * (s[0] - s[1]) - gm), abs=1e-14)
    # SFT: token-mean NLL of the best
    assert L.sft(PL, None, RW, lengths=LEN).item() == pytest.approx(1.5, abs=1e-15)
    # RRHF: Σ_{R_i<R_j} max(0, s_i − s_j) + w·(−s_best); pairs (1<0), (1<2), (2<0)
    rank = max(0, s[1] - s[0]) + max(0, s[1] - s[2]) + max(0, s[2] - s[0])
    assert L.rrhf(PL, None, RW, lengths=LEN, sft_weight=0.7).item() == pytest.approx(rank + 0.7 * 1.5, abs=1e-14)


def _pro_loop(s, R, sft_summed, sft_weight):
    """PRO as AlibabaResearch/DAMO-ConvAI computes it (``PRO/train/utils/process_manager.py``: responses sorted by
    reward, length-averaged scores, T_kj = R_k − R_j, T_kk = max_j T_kj), for one prompt, plain loops."""
    order = sorted(range(len(R)), key=lambda i: -R[i])
    s, R = [s[i] for i in order], [R[i] for i in order]
    n, total = len(R), 0.0
    for k in range(n - 1):
        T = [R[k] - R[j] for j in range(k + 1, n)]
        tkk = max(T)
        terms = [s[k] * tkk] + [s[j] * t for j, t in zip(range(k + 1, n), T)]
        m = max(terms)
        total += m + math.log(sum(math.exp(x - m) for x in terms)) - s[k] * tkk
    return total + sft_weight * (n - 1) ** 2 * (-sft_summed[order[0]])


def _clha_loop(s, R, summed, margin, min_gap, sft_gate, sft_weight):
    order = sorted(range(len(R)), key=lambda i: -R[i])
    s2, R2 = [s[i] for i in order], [R[i] for i in order]
    n, total = len(R), 0.0
    for off in range(1, n):
        vals = [max(0.0, margin * off - (s2[k] - s2[k + off])) for k in range(n - off) if R2[k] - R2[k + off] > min_gap]
        total += sum(vals) / len(vals) if vals else 0.0
    gate = 1.0 if R2[0] > sft_gate else 0.0
    return total + sft_weight * (n - 1) ** 2 * (-summed[order[0]]) * gate


def test_hand_pro_and_clha_against_loops():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        K = int(torch.randint(2, 6, (1,), generator=g))
        lp = -torch.rand(1, K, generator=g, dtype=torch.float64) * 20
        ln = torch.randint(1, 9, (1, K), generator=g).to(torch.float64)
        R = torch.randint(0, 10, (1, K), generator=g).to(torch.float64)  # integer scores: ties happen
        s = (lp / ln)[0].tolist()
        got = L.pro(lp, None, R, lengths=ln, sft_weight=0.05).item()
        assert got == pytest.approx(_pro_loop(s, R[0].tolist(), lp[0].tolist(), 0.05), abs=1e-12)
        got = L.clha(lp, None, R, lengths=ln, margin=0.5, min_gap=1.5, sft_gate=4.0, sft_weight=0.1).item()
        assert got == pytest.approx(_clha_loop(s, R[0].tolist(), lp[0].tolist(), 0.5, 1.5, 4.0, 0.1), abs=1e-12)


def test_pro_is_plackett_luce_with_unit_gaps():
    # R = (2, 1, 0): T_kj = j − k, not all 1 — use R with unit differences only for K = 2
    s = t64([-1.0, -2.0])
    R = t64([1.0, 0.0])
    pl = -(s[0, 0] - torch.logsumexp(s[0], 0))
    assert L.pro(s, None, R, sft_weight=0.0).item() == pytest.approx(pl.item(), abs=1e-14)


# ------------------------------------------------------------------ ties and best/worst choice


def test_ties_and_best_worst_rule():
    R = t64([1.0, 3.0, 3.0, 0.0, 0.0])
    best, worst = L.best_worst_indices(R)
    assert best.tolist() == [1] and worst.tolist() == [3]  # lowest index among equals
    lp = t64([-1.0, -2.0, -3.0, -4.0, -5.0])
    ref = torch.zeros_like(lp)
    expect = -lsig(0.1 * (-2.0 - -4.0))
    assert L.dpo(lp, ref, R).item() == pytest.approx(expect, abs=1e-14)
    # a prompt whose responses all tie carries no preference: 0 for every pairwise loss, with zero gradient
    tied = t64([2.0, 2.0, 2.0])
    x = torch.tensor([[-1.0, -2.0, -3.0]], dtype=torch.float64, requires_grad=True)
    for name, spec in LOSSES.items():
        if spec.pairwise:
            out = spec(x, torch.zeros_like(x), tied, lengths=torch.ones_like(x))
            assert out.item() == 0.0, name
            (gx,) = torch.autograd.grad(out.sum(), x)
            assert torch.all(gx == 0), name
    # best_rest skips responses tied with the best
    R2 = t64([3.0, 3.0, 1.0])
    lp2 = t64([-1.0, -2.0, -4.0])
    expect2 = -lsig(0.1 * (-1.0 - -4.0))
    assert L.dpo(lp2, torch.zeros_like(lp2), R2, pairs="best_rest").item() == pytest.approx(expect2, abs=1e-14)


# ------------------------------------------------------------------ one-tuple laws (hypothesis)

finite = st.floats(-4, 4, allow_nan=False)


@st.composite
def tuples(draw, kmin=2, kmax=6):
    K = draw(st.integers(kmin, kmax))
    lp = draw(st.lists(st.floats(-30, 0), min_size=K, max_size=K))
    ref = draw(st.lists(st.floats(-30, 0), min_size=K, max_size=K))
    R = draw(st.lists(st.floats(-3, 3), min_size=K, max_size=K))
    return t64(lp), t64(ref), t64(R)


@settings(deadline=None, max_examples=60)
@given(tuples(), st.floats(0.05, 3.0), st.floats(0.2, 3.0), st.floats(-50, 50))
def test_shift_invariance_infonca_dpo(tup, beta, alpha, c):
    """Proposition 12 at tuple level: adding c/β to every policy log-prob (a constant c on every r_θ)
    changes neither InfoNCA nor DPO. Tolerance: |loss| ≲ 50 and float64 round-off of logsumexp of
    shifted arguments is ~1e-13 relative."""
    lp, ref, R = tup
    for name, hp in (("infonca", dict(beta=beta, alpha=alpha)), ("dpo", dict(beta=beta))):
        base = LOSSES[name](lp, ref, R, **hp)
        shifted = LOSSES[name](lp + c / beta, ref, R, **hp)
        torch.testing.assert_close(shifted, base, rtol=1e-9, atol=1e-9)


@settings(deadline=None, max_examples=60)
@given(tuples(2, 2), st.floats(0.05, 3.0), st.floats(0.2, 3.0))
def test_k2_infonca_is_soft_label_dpo(tup, beta, alpha):
    """Proposition 6: K = 2 InfoNCA = −q log σ(Δ) − (1−q) log σ(−Δ), q = σ((R_1 − R_2)/α), Δ = r_θ,1 − r_θ,2."""
    lp, ref, R = tup
    d = beta * ((lp[0, 0] - ref[0, 0]) - (lp[0, 1] - ref[0, 1])).item()
    q = 1 / (1 + math.exp(-(R[0, 0] - R[0, 1]).item() / alpha))
    expect = -q * lsig(d) - (1 - q) * lsig(-d)
    assert L.infonca(lp, ref, R, beta=beta, alpha=alpha).item() == pytest.approx(expect, rel=1e-12, abs=1e-12)


@settings(deadline=None, max_examples=60)
@given(tuples(2, 2), st.floats(0.05, 3.0), st.floats(0.2, 2.0))
def test_k2_infonca_alpha_to_zero_is_dpo(tup, beta, gap):
    """Proposition 6, α → 0 on untied rewards: |InfoNCA − DPO| ≤ (1−q)·|2 log σ| terms → 0; with
    gap/α ≥ 2000 the label error e^{−gap/α} underflows below 1e-300, so the match is to round-off."""
    lp, ref, _ = tup
    R = t64([gap, 0.0])
    info = L.infonca(lp, ref, R, beta=beta, alpha=gap / 2000)
    torch.testing.assert_close(info, L.dpo(lp, ref, R, beta=beta), rtol=1e-12, atol=1e-12)
    # on the way the error is exactly (1 − q)·|Δ| (it vanishes at Δ = 0), so it falls with α
    d = beta * ((lp[0, 0] - ref[0, 0]) - (lp[0, 1] - ref[0, 1])).item()
    for a in (1.0, 0.3, 0.1):
        err = (L.infonca(lp, ref, R, beta=beta, alpha=a) - L.dpo(lp, ref, R, beta=beta)).item()
        q = 1 / (1 + math.exp(-gap / a))
        assert err == pytest.approx((1 - q) * d, abs=1e-12)


@settings(deadline=None, max_examples=60)
@given(tuples(2, 2), st.floats(0.05, 3.0))
def test_nca_k2_hard_labels_is_nca_pair(tup, beta):
    lp, ref, R = tup
    assume(abs((R[0, 0] - R[0, 1]).item()) > 1e-3)
    hard = (R == R.max()).to(torch.float64)
    got = L.nca(lp, ref, R, beta=beta, label_weights=hard)
    torch.testing.assert_close(got, L.nca_pair(lp, ref, R, beta=beta), rtol=1e-12, atol=1e-12)


@settings(deadline=None, max_examples=60)
@given(tuples(), st.floats(0.05, 3.0), st.sampled_from(L.PAIR_MODES))
def test_cdpo_eps0_is_dpo(tup, beta, pairs):
    lp, ref, R = tup
    torch.testing.assert_close(L.cdpo(lp, ref, R, beta=beta, eps=0.0, pairs=pairs), L.dpo(lp, ref, R, beta=beta, pairs=pairs), rtol=0, atol=1e-14)
    torch.testing.assert_close(L.rdpo(lp, ref, R, beta=beta, eps=0.0, pairs=pairs), L.dpo(lp, ref, R, beta=beta, pairs=pairs), rtol=0, atol=1e-14)


def _grad(name, lp, ref, R, **hp):
    x = lp.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(LOSSES[name](x, ref, R, **hp).sum(), x)
    return g


@settings(deadline=None, max_examples=60)
@given(tuples(), st.floats(0.05, 3.0), st.floats(0.2, 3.0))
def test_gradients_at_reference(tup, beta, alpha):
    """Proposition 13 at tuple level: at π_θ = π_ref, ∇NCA = ½∇InfoNCA and ∇nca_pair = ½∇DPO exactly
    (σ(0) = ½ makes the two coefficient vectors proportional). Tolerance: float64 round-off."""
    _, ref, R = tup
    lp = ref.clone()
    g_nca, g_info = _grad("nca", lp, ref, R, beta=beta, alpha=alpha), _grad("infonca", lp, ref, R, beta=beta, alpha=alpha)
    torch.testing.assert_close(g_nca, 0.5 * g_info, rtol=1e-12, atol=1e-14)
    g_np, g_dpo = _grad("nca_pair", lp, ref, R, beta=beta), _grad("dpo", lp, ref, R, beta=beta)
    torch.testing.assert_close(g_np, 0.5 * g_dpo, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ masking


@settings(deadline=None, max_examples=40)
@given(tuples(2, 5), st.lists(st.booleans(), min_size=7, max_size=7),
       st.sampled_from([math.nan, math.inf, -math.inf, 1e30]))
def test_masked_entries_reach_neither_loss_nor_gradient(tup, gaps, junk):
    """For every registry loss: masked columns full of NaN/inf inserted anywhere in the row (at the
    positions ``gaps`` draws, at least one) give exactly the loss and gradient of the compact tuple,
    and an exactly-zero, finite gradient on the masked entries. Order among the valid responses is
    kept, so ties break the same way in both."""
    lp, ref, R = tup
    K = lp.shape[1]
    ln = torch.arange(1, K + 1, dtype=torch.float64)[None]
    # layout: for each valid response, optionally a masked column before it; always one at the end
    cols = []
    for k in range(K):
        if gaps[k]:
            cols.append(None)
        cols.append(k)
    cols.append(None)
    mask = torch.tensor([[c is not None for c in cols]])
    spread = lambda t: torch.stack([t[0, c] if c is not None else torch.tensor(junk, dtype=t.dtype) for c in cols])[None]  # noqa: E731
    for name in sorted(LOSSES):
        x = spread(lp).requires_grad_(True)
        out = LOSSES[name](x, spread(ref), spread(R), mask=mask, lengths=spread(ln))
        (gx,) = torch.autograd.grad(out.sum(), x)
        y = lp.clone().requires_grad_(True)
        base = LOSSES[name](y, ref, R, lengths=ln)
        (gy,) = torch.autograd.grad(base.sum(), y)
        torch.testing.assert_close(out, base, rtol=0, atol=1e-12, msg=lambda m: f"{name}: {m}")
        assert torch.isfinite(gx).all(), name
        torch.testing.assert_close(gx[mask], gy[0], rtol=0, atol=1e-12, msg=lambda m: f"{name}: {m}")
        assert torch.all(gx[~mask] == 0), name


def test_mask_middle_entries_and_mixed_rows():
    # row 0 uses all 3; row 1 has its middle response missing
    lp = t64([-1.0, -2.0, -3.0], [-1.0, math.nan, -3.0])
    ref = t64([-1.5, -2.0, -2.0], [-1.5, math.nan, -2.0])
    R = t64([1.0, 0.0, 2.0], [1.0, math.nan, 2.0])
    mask = torch.tensor([[True, True, True], [True, False, True]])
    out = L.infonca(lp, ref, R, mask=mask, beta=1.0, alpha=1.0)
    row1 = L.infonca(lp[1:, [0, 2]], ref[1:, [0, 2]], R[1:, [0, 2]], beta=1.0, alpha=1.0)
    assert out[1].item() == pytest.approx(row1.item(), abs=1e-14)
    nca_out = L.nca(lp, ref, R, mask=mask, beta=1.0, alpha=1.0)
    assert nca_out[1].item() == pytest.approx(L.nca(lp[1:, [0, 2]], ref[1:, [0, 2]], R[1:, [0, 2]], beta=1.0, alpha=1.0).item(), abs=1e-14)


# ------------------------------------------------------------------ dtypes


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("dtype,out", [(torch.bfloat16, torch.float32), (torch.float16, torch.float32), (torch.float32, torch.float32), (torch.float64, torch.float64)])
def test_output_dtype(name, dtype, out):
    g = torch.Generator().manual_seed(1)
    lp = (-torch.rand(3, 4, generator=g) * 10).to(dtype)
    ref = (-torch.rand(3, 4, generator=g) * 10).to(dtype)
    R = torch.randn(3, 4, generator=g).to(dtype)
    res = LOSSES[name](lp, ref, R, lengths=torch.full((3, 4), 5))
    assert res.dtype == out and res.shape == (3,) and torch.isfinite(res).all()


def test_half_inputs_computed_in_float32():
    # bf16 inputs are upcast before the arithmetic: the result equals the float32 computation on the
    # same (already rounded) values exactly, not a bf16 computation.
    g = torch.Generator().manual_seed(2)
    lp = (-torch.rand(8, 4, generator=g) * 50).to(torch.bfloat16)
    ref = (lp.float() + torch.randn(8, 4, generator=g) * 0.01).to(torch.bfloat16)
    R = torch.randn(8, 4, generator=g)
    for name in ("nca", "infonca", "dpo", "ipo"):
        a = LOSSES[name](lp, ref, R, lengths=torch.full((8, 4), 3.0))
        b = LOSSES[name](lp.float(), ref.float(), R, lengths=torch.full((8, 4), 3.0))
        assert torch.equal(a, b), name


def test_tiny_alpha_is_exact_one_hot():
    # the NCA recipe's α = 1e-4 on 1–10 scores: labels one-hot, no NaN/overflow
    R = t64([9.0, 3.0, 7.0, 1.0])
    w = L.soft_labels(R, alpha=1e-4)
    assert w.tolist() == [[1.0, 0.0, 0.0, 0.0]]
    # leave-one-out labels are unbounded: e^{(9 − 7)/1e-4} overflows, and the loss says so
    assert torch.isinf(L.soft_labels(R, alpha=1e-4, labels="loo")[0, 0])
    _err(lambda: L.nca(R, R, R, alpha=1e-4, labels="loo"), r'labels="loo": row 0: label overflows float range at alpha=0.0001')


# ------------------------------------------------------------------ combinations


def test_combination():
    comb = get_loss("nca + 0.1*sft")
    assert comb.needs_ref and comb.uses_lengths and comb.name == "nca+0.1*sft"
    got = comb(PL, RL, RW, lengths=LEN, beta=BETA, alpha=ALPHA)
    expect = L.nca(PL, RL, RW, beta=BETA, alpha=ALPHA) + 0.1 * L.sft(PL, None, RW, lengths=LEN)
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-15)
    two = get_loss("0.5*dpo+2e-1*ipo")
    expect2 = 0.5 * L.dpo(PL, RL, RW, beta=0.3) + 0.2 * L.ipo(PL, RL, RW, beta=0.3, lengths=LEN)
    torch.testing.assert_close(two(PL, RL, RW, lengths=LEN, beta=0.3), expect2, rtol=0, atol=1e-15)
    assert get_loss("dpo") is LOSSES["dpo"] and get_loss("1*dpo") is LOSSES["dpo"]


def test_combination_passes_mask_and_validate_to_every_term():
    """A weighted sum forwards ``mask`` and ``validate`` to each term: with a padded entry it equals the sum of the
    terms computed with the same mask (and differs from the unmasked sum); by default it validates the data (a
    NaN reward in a valid entry is refused, as each term refuses it); ``validate=False`` reaches the terms."""
    comb = get_loss("nca+0.5*dpo")
    pl, rl, rw = t64([-3.0, -5.0, -4.0], [-1.0, -2.0, -6.0]), t64([-4.0, -4.5, -3.0], [-1.5, -2.5, -1.0]), \
        t64([2.0, 0.0, 1.0], [1.0, 3.0, 0.0])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    got = comb(pl, rl, rw, mask=mask, beta=0.3, alpha=0.7)
    expect = L.nca(pl, rl, rw, mask=mask, beta=0.3, alpha=0.7) + 0.5 * L.dpo(pl, rl, rw, mask=mask, beta=0.3)
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-15)
    assert not torch.allclose(got[1], (L.nca(pl, rl, rw, beta=0.3, alpha=0.7) + 0.5 * L.dpo(pl, rl, rw, beta=0.3))[1])
    bad = rw.clone()
    bad[0, 1] = math.nan
    _err(lambda: comb(pl, rl, bad, beta=0.3), r"^nca: rewards\[0, 1\] is nan in a valid entry")
    unchecked = comb(pl, rl, bad, beta=0.3, validate=False)  # no data check: the NaN flows into the value
    assert torch.isnan(unchecked[0]) and torch.isfinite(unchecked[1])


def test_combination_names_unknown_hyperparameters_and_what_its_terms_accept():
    lp, ref, R = t64([-1.0, -2.0]), t64([-1.0, -2.0]), t64([1.0, 0.0])
    with pytest.raises(ValueError) as err:
        get_loss("nca+0.1*sft")(lp, ref, R, zeta=1.0, gamma=2.0)
    accepted = ", ".join(get_loss("nca+0.1*sft").hparams)
    assert str(err.value) == f"loss 'nca+0.1*sft' has no hyperparameter gamma, zeta; its terms accept: {accepted}"
    names = accepted.split(", ")
    assert len(names) == len(set(names)) and set(names) == {*LOSSES["nca"].defaults, *LOSSES["sft"].defaults}
    with pytest.raises(ValueError) as err:
        get_loss("0.5*sft")(lp, None, R, beta=1.0)  # a scaled term alone is a combination too
    assert str(err.value) == "loss '0.5*sft' has no hyperparameter beta; its terms accept: (none)"


# ------------------------------------------------------------------ errors


def _err(fn, match):
    with pytest.raises(ValueError, match=match):
        fn()


def test_error_messages():
    lp, ref, R = t64([-1.0, -2.0]), t64([-1.0, -2.0]), t64([1.0, 0.0])
    _err(lambda: L.dpo(lp, ref, t64([1.0, 0.0, 2.0])), r"shape mismatch: rewards has shape \(1, 3\).*\(1, 2\)")
    _err(lambda: L.dpo(lp, t64([-1.0]), R), r"shape mismatch: ref_logps")
    _err(lambda: L.dpo(lp, ref, R, mask=torch.tensor([[True]])), r"shape mismatch: mask")
    _err(lambda: L.dpo(lp, ref, R, mask=torch.ones(1, 2)), r"mask must be a bool tensor")
    _err(lambda: L.dpo(lp[0], ref, R), r"policy_logps must be a \[B, K\] tensor")
    _err(lambda: L.dpo(lp, None, R), r"dpo needs ref_logps")
    _err(lambda: L.dpo(lp, ref, R, mask=torch.tensor([[True, False]])), r"dpo: row 0 has 1 valid response\(s\); dpo needs at least 2")
    _err(lambda: L.nca(lp, ref, t64([math.nan, 0.0])), r"nca: rewards\[0, 0\] is nan in a valid entry")
    _err(lambda: L.infonca(lp, ref, R, alpha=0.0), r"alpha must be a finite number > 0, got 0.0")
    _err(lambda: L.nca(lp, ref, R, alpha=-1), r"alpha must be a finite number > 0")
    _err(lambda: L.dpo(lp, ref, R, beta=0), r"beta must be a finite number > 0")
    _err(lambda: L.cdpo(lp, ref, R, eps=0.5), r"eps must lie in \[0, 0.5\), got 0.5")
    _err(lambda: L.rdpo(lp, ref, R, eps=-0.1), r"eps must lie in \[0, 0.5\)")
    _err(lambda: L.cpl(lp, None, R, lam=0.0), r"lam must lie in \(0, 1\], got 0.0")
    _err(lambda: L.cpl(lp, None, R, lam=1.5), r"lam must lie in \(0, 1\]")
    _err(lambda: L.dpo(lp, ref, R, pairs="best"), r"pairs must be one of 'best_worst', 'best_rest', 'all'; got 'best'")
    _err(lambda: L.nca(lp, ref, R, labels="hard"), r"labels must be one of 'softmax', 'loo'")
    _err(lambda: L.infonca(lp, ref, R, labels="hard"), r"^labels must be one of 'softmax', 'loo'; got 'hard'")
    _err(lambda: L.soft_labels(R, alpha=1.0, labels="hard"), r"^labels must be one of 'softmax', 'loo'; got 'hard'")
    _err(lambda: L.soft_labels(R, alpha=0.0), r"^alpha must be a finite number > 0, got 0.0")
    _err(lambda: L.ipo(lp, ref, R, lengths=t64([3.0, 0.0])), r"lengths\[0, 1\] = 0.0 must be > 0 \(empty response\)")
    _err(lambda: L.infonca(lp, ref, R, label_weights=t64([-1.0, 0.5])), r"label_weights\[0, 0\] = -1.0 must be finite and >= 0")
    _err(lambda: L.nca(lp, ref, R, label_weights=t64([0.5, 0.5, 0.0])), r"^shape mismatch: label_weights ")
    _err(lambda: L.nca(lp, ref, R, labels="loo", mask=torch.tensor([[True, False]])),
         r"^nca: row 0 has 1 valid response\(s\); nca needs at least 2$")
    _err(lambda: L.sft(lp, None, R, mask=torch.tensor([[False, False]])), r"sft: row 0 has 0 valid")
    _err(lambda: get_loss("ncaa"), r"unknown loss 'ncaa'; known losses: apo_down, apo_zero, .*cdpo, clha, cpl, .*dpo, .*sft, .*simpo")
    _err(lambda: get_loss("nca+0.1*sftt"), r"unknown loss 'sftt'")
    _err(lambda: get_loss("nca+-0.1*sft"), r"cannot parse loss")
    _err(lambda: get_loss(""), r"non-empty string")
    _err(lambda: LOSSES["dpo"](lp, ref, R, alpha=1.0), r"loss 'dpo' has no hyperparameter alpha; its hyperparameters are: beta, pairs")
    _err(lambda: get_loss("nca+0.1*sft")(lp, ref, R, gamma=1.0), r"has no hyperparameter gamma")


def test_input_checks_say_exactly_what_is_wrong():
    """The full text of every input refusal (a message that lost its field, its row or its value fails), the
    first offending entry in row-major order, and the boundary of each check: a masked entry is never checked."""
    lp, ref, R = t64([-1.0, -2.0]), t64([-1.0, -2.0]), t64([1.0, 0.0])
    two = lambda *rows: (t64(*rows), t64(*rows))  # noqa: E731
    cases = [
        (lambda: L.dpo([[-1.0, -2.0]], ref, R), "dpo: policy_logps must be a [B, K] tensor, got list"),
        (lambda: L.dpo(lp[0], ref, R), "dpo: policy_logps must be a [B, K] tensor, got (2,)"),
        (lambda: L.dpo(*two([]), torch.zeros(1, 0, dtype=torch.float64)), "dpo: policy_logps has K = 0 responses per prompt"),
        (lambda: L.dpo(lp, None, R), "dpo needs ref_logps (the reference model's summed log-probs); got None"),
        (lambda: L.dpo(lp, [[-1.0, -2.0]], R), "ref_logps must be a torch.Tensor of shape [B, K], got list"),
        (lambda: L.dpo(lp, ref, t64([1.0, 0.0, 2.0])), "shape mismatch: rewards has shape (1, 3) but policy_logps has shape (1, 2)"),
        (lambda: L.dpo(lp, ref, R, mask=torch.ones(1, 2)), "mask must be a bool tensor, got dtype torch.float32"),
        (lambda: L.ipo(lp, ref, R, lengths=t64([1.0])), "shape mismatch: lengths has shape (1, 1) but policy_logps has shape (1, 2)"),
        (lambda: L.dpo(*two([-1.0, -2.0], [-1.0, -2.0]), t64([1.0, 0.0], [1.0, 0.0]), mask=torch.tensor([[True, True], [True, False]])),
         "dpo: row 1 has 1 valid response(s); dpo needs at least 2"),
        (lambda: L.nca(*two([-1.0, -2.0], [-1.0, -2.0]), t64([1.0, 0.0], [0.0, math.inf])),
         "nca: rewards[1, 1] is inf in a valid entry (NaN/inf reward)"),
        (lambda: L.nca(*two([-1.0, -2.0], [-1.0, -2.0]), t64([1.0, math.nan], [math.nan, 0.0])),
         "nca: rewards[0, 1] is nan in a valid entry (NaN/inf reward)"),
        (lambda: L.ipo(*two([-1.0, -2.0], [-1.0, -2.0]), t64([1.0, 0.0], [1.0, 0.0]), lengths=t64([3.0, 2.0], [-1.0, 2.0])),
         "ipo: lengths[1, 0] = -1.0 must be > 0 (empty response)"),
        (lambda: L.ipo(lp, ref, R, lengths=t64([math.nan, 2.0])), "ipo: lengths[0, 0] = nan must be > 0 (empty response)"),
        (lambda: L.dpo(lp, ref, R, beta=True), "beta must be a finite number > 0, got True"),
        (lambda: L.dpo(lp, ref, R, beta="1"), "beta must be a finite number > 0, got '1'"),
        (lambda: L.dpo(lp, ref, R, beta=math.inf), "beta must be a finite number > 0, got inf"),
        (lambda: L.dpo(lp, ref, R, pairs="x"), "pairs must be one of 'best_worst', 'best_rest', 'all'; got 'x'"),
        (lambda: LOSSES["sft"](lp, None, R, beta=1.0), "loss 'sft' has no hyperparameter beta; its hyperparameters are: (none)"),
        (lambda: LOSSES["dpo"](lp, ref, R, gamma=2.0, alpha=1.0),
         "loss 'dpo' has no hyperparameter alpha, gamma; its hyperparameters are: beta, pairs"),
        (lambda: get_loss(3), "loss must be a non-empty string naming a loss; got 3"),
        (lambda: get_loss("  "), "loss must be a non-empty string naming a loss; got '  '"),
        (lambda: get_loss("nca+0.1*"), "cannot parse loss 'nca+0.1*': term '0.1*' is not NAME or WEIGHT*NAME (e.g. "
                                       f"'nca+0.1*sft'); known losses: {', '.join(sorted(LOSSES))}"),
        (lambda: get_loss("nca+0*sft"), "cannot parse loss 'nca+0*sft': weight of 'sft' must be > 0, got 0.0"),
        (lambda: get_loss("nca+0.1*nca"), "cannot parse loss 'nca+0.1*nca': 'nca' appears twice"),
        (lambda: get_loss("nca+sftt"), f"unknown loss 'sftt'; known losses: {', '.join(sorted(LOSSES))}"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value) == message
    # boundaries: masked entries may hold anything (NaN reward, zero length, NaN log-prob) and change nothing
    masked = torch.tensor([[True, True, False]])
    base = L.ipo(t64([-1.0, -2.0]), t64([-1.5, -2.0]), t64([1.0, 0.0]), lengths=t64([2.0, 3.0]))
    junk = L.ipo(t64([-1.0, -2.0, math.nan]), t64([-1.5, -2.0, math.inf]), t64([1.0, 0.0, math.nan]),
                 lengths=t64([2.0, 3.0, 0.0]), mask=masked)
    assert float(junk) == float(base)
    # one valid response is enough for SFT (zero is refused: test_error_messages)
    assert float(L.sft(t64([-1.0, -2.0]), None, t64([1.0, 0.0]), mask=torch.tensor([[True, False]]))) == 1.0
    # weights and spaces in a combination: weight 1 alone is the registry entry itself
    assert get_loss("1*nca") is LOSSES["nca"] and get_loss(" nca ") is LOSSES["nca"]
    combo = get_loss(" nca + 0.1*sft ")
    assert combo.name == "nca+0.1*sft" and [(w, s.name) for w, s in combo.terms] == [(1.0, "nca"), (0.1, "sft")]
    assert get_loss("0.5*nca").name == "0.5*nca"


def test_input_check_boundaries_and_the_registry_passes_everything_through():
    """What sits next to each refusal is accepted (K = 1 for SFT, length 1; β = 0 and length 0 are refused), rewards
    of any float dtype are used in the compute dtype, and a registry call is the function's call: mask, lengths,
    hyperparameters and validate reach it, and validation is on by default."""
    lp, ref, R = t64([-1.0, -2.0]), t64([-1.0, -2.0]), t64([1.0, 0.0])
    for call, message in [
        (lambda: L.dpo(lp, ref, R, beta=0.0), "beta must be a finite number > 0, got 0.0"),
        (lambda: L.ipo(lp, ref, R, lengths=t64([2.0, 0.0])), "ipo: lengths[0, 1] = 0.0 must be > 0 (empty response)"),
        (lambda: L.dpo(lp, ref, R, mask=torch.ones(1, 3, dtype=torch.bool)),
         "shape mismatch: mask has shape (1, 3) but policy_logps has shape (1, 2)"),
        (lambda: LOSSES["nca"](lp, ref, t64([1.0, math.nan])), "nca: rewards[0, 1] is nan in a valid entry (NaN/inf reward)"),
        # rewards are checked in the compute dtype: 1e39 is finite in float64 but inf in float32 (max 3.4e38)
        (lambda: L.nca(lp.float(), ref.float(), t64([1e39, 0.0])), "nca: rewards[0, 0] is inf in a valid entry (NaN/inf reward)"),
    ]:
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value) == message
    # one response per prompt is a valid SFT batch: the token mean of log π over one response of length 1
    assert float(L.sft(t64([-1.5]), None, t64([0.0]))) == 1.5
    # length 1 is a valid length: the same as no lengths
    assert float(L.ipo(lp, t64([-1.5, -2.0]), R, lengths=t64([1.0, 1.0]))) == float(L.ipo(lp, t64([-1.5, -2.0]), R))
    # rewards in float16 (values exact there) are turned into the compute dtype before dividing by α: 1000/0.01
    # overflows float16 (max 65504) but not float64, and the loss must be the float64 rewards' loss
    lp2, ref2 = t64([-1.0, -2.0, -3.0]), t64([-1.5, -2.0, -2.5])
    R64 = t64([1000.0, 0.0, -1000.0])
    for name in ("infonca", "nca"):
        want = float(LOSSES[name](lp2, ref2, R64, alpha=0.01))
        assert math.isfinite(want) and float(LOSSES[name](lp2, ref2, R64.half(), alpha=0.01)) == want, name
    # the registry passes mask, lengths, hyperparameters and validate=False to the function (each changes the value,
    # or, for validate, whether a NaN reward is refused)
    m = torch.tensor([[True, True, False], [True, True, True]])
    args = (t64([-1.0, -2.0, -3.0], [-1.0, -0.5, -3.0]), t64([-1.5, -2.0, -2.5], [-2.0, -0.5, -1.0]),
            t64([1.0, 0.0, 2.0], [0.0, 1.0, 2.0]))
    ln = t64([2.0, 3.0, 4.0], [1.0, 5.0, 2.0])
    full = LOSSES["ipo"](*args, mask=m, lengths=ln, beta=0.3)
    torch.testing.assert_close(full, L.ipo(*args, mask=m, lengths=ln, beta=0.3), rtol=0, atol=0)
    for without in (dict(lengths=ln, beta=0.3), dict(mask=m, beta=0.3), dict(mask=m, lengths=ln)):
        assert not torch.equal(LOSSES["ipo"](*args, **without), full), sorted(without)
    nan_row = (t64([-1.0, -2.0]), t64([-1.0, -2.0]), t64([1.0, math.nan]))
    assert LOSSES["nca"](*nan_row, validate=False).shape == (1,)  # not refused: the checks are skipped


def test_compute_dtype_is_float64_if_any_input_is_and_float32_otherwise():
    """float64 anywhere (policy or reference) → float64; bf16/fp16/fp32 → float32 (logsigmoid in half precision
    loses the differences that matter). implicit_rewards is β·(log π − log π_ref) elementwise."""
    lp, ref, R = t64([-1.0, -2.0]), t64([-1.5, -2.0]), t64([1.0, 0.0])
    for p_dtype, r_dtype, want in [(torch.float64, torch.float32, torch.float64), (torch.float32, torch.float64, torch.float64),
                                   (torch.float32, torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16, torch.float32),
                                   (torch.float16, None, torch.float32)]:
        # no reference: a reference-free loss (SimPO) on the policy alone
        out = L.simpo(lp.to(p_dtype), None, R) if r_dtype is None else L.dpo(lp.to(p_dtype), ref.to(r_dtype), R)
        assert out.dtype == want, (p_dtype, r_dtype)
    assert torch.equal(L.implicit_rewards(lp, ref, 0.5), t64([0.25, 0.0]))


def test_validate_false_skips_only_data_checks():
    lp, ref, R = t64([-1.0, -2.0]), t64([-1.0, -2.0]), t64([1.0, 0.0])
    # hyperparameter checks are pure Python and always run
    _err(lambda: L.dpo(lp, ref, R, beta=-1.0, validate=False), r"beta must be")
    # data checks that would synchronise with the device are skipped; the value is unchanged
    assert L.dpo(lp, ref, R, validate=False).item() == L.dpo(lp, ref, R).item()


# ------------------------------------------------------------------ the reference implementations' batch formulas


def test_nca_authors_batch_formulation():
    """The NCA authors' thu-ml/Noise-Contrastive-Alignment ``reward_trainer.py`` (K = 4 hard-coded there):
    InfoNCA = mean_b −Σ_i p_i log_softmax(r)_i; NCA = −logsigmoid(−r).mean() over B×K − mean_b Σ_i p_i logsigmoid(r_i),
    p = softmax(scores / temperature_alpha), r = β(logπ − logπ_ref). Our per-prompt losses, averaged over B, match."""
    g = torch.Generator().manual_seed(3)
    B, K, beta, temp = 6, 4, 0.01, 0.5
    lp = -torch.rand(B, K, generator=g, dtype=torch.float64) * 200
    ref = lp + torch.randn(B, K, generator=g, dtype=torch.float64) * 20
    scores = torch.randint(1, 11, (B, K), generator=g).to(torch.float64)
    r = beta * (lp - ref)
    p = torch.softmax(scores / temp, dim=-1)
    info_ref = -(p * torch.log_softmax(r, dim=-1)).sum(-1).mean()
    nca_ref = -torch.nn.functional.logsigmoid(-r).mean() - (p * torch.nn.functional.logsigmoid(r)).sum(-1).mean()
    assert L.infonca(lp, ref, scores, beta=beta, alpha=temp).mean().item() == pytest.approx(info_ref.item(), abs=1e-12)
    assert L.nca(lp, ref, scores, beta=beta, alpha=temp).mean().item() == pytest.approx(nca_ref.item(), abs=1e-12)


def test_trl_batch_formulation():
    """TRL 1.16 ``DPOTrainer._compute_loss`` (``trl/trainer/dpo_trainer.py``) on [chosen; rejected] pairs: d = ρ_c − ρ_r,
    sigmoid −logσ(βd), hinge relu(1 − βd), ipo ((s_c/|y_c| − s_r/|y_r|) − 1/(2β))² on log-ratios,
    robust [−(1−ε)logσ(βd) + ε logσ(−βd)]/(1−2ε), nca_pair as in the NCA paper; batch means."""
    g = torch.Generator().manual_seed(4)
    B, beta, eps = 8, 0.2, 0.15
    lp = -torch.rand(B, 2, generator=g, dtype=torch.float64) * 50
    ref = lp + torch.randn(B, 2, generator=g, dtype=torch.float64) * 3
    n = torch.randint(1, 30, (B, 2), generator=g).to(torch.float64)
    R = torch.tensor([[1.0, 0.0]] * B, dtype=torch.float64)
    rho = lp - ref
    d = rho[:, 0] - rho[:, 1]
    F_ = torch.nn.functional
    trl = {
        "dpo": (-F_.logsigmoid(beta * d)).mean(),
        "hinge": torch.relu(1 - beta * d).mean(),
        "ipo": ((rho[:, 0] / n[:, 0] - rho[:, 1] / n[:, 1]) - 1 / (2 * beta)).pow(2).mean(),
        "rdpo": ((-(1 - eps) * F_.logsigmoid(beta * d) + eps * F_.logsigmoid(-beta * d)) / (1 - 2 * eps)).mean(),
        "nca_pair": (-F_.logsigmoid(beta * rho[:, 0]) - 0.5 * F_.logsigmoid(-beta * rho[:, 0]) - 0.5 * F_.logsigmoid(-beta * rho[:, 1])).mean(),
    }
    for name, expect in trl.items():
        hp = dict(beta=beta, eps=eps) if name == "rdpo" else dict(beta=beta)
        got = LOSSES[name](lp, ref, R, lengths=n, **hp).mean()
        assert got.item() == pytest.approx(expect.item(), abs=1e-12), name


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_computes_on_its_inputs_device(name):
    """Every tensor a loss creates lives on its inputs' device (the trainer's batches live on the GPU). The
    ``meta`` device stands in for a GPU on a CPU-only machine: mixing a tensor made on the CPU with meta
    tensors raises, so a helper that forgets ``device=`` fails here. Every pairs / labels mode is run, with
    a mask and lengths, and validate=False (meta tensors hold no values to validate)."""
    spec = LOSSES[name]
    meta = dict(device="meta")
    lp, R = torch.empty(3, 4, **meta), torch.empty(3, 4, dtype=torch.float64, **meta)
    mask, lengths = torch.empty(3, 4, dtype=torch.bool, **meta), torch.empty(3, 4, **meta)
    modes = [{}]
    modes += [{"pairs": p} for p in L.PAIR_MODES] if "pairs" in spec.defaults else []
    modes += [{"labels": m} for m in L.LABEL_MODES] if "labels" in spec.defaults else []
    for kw in modes:
        for given in ({"mask": mask, "lengths": lengths}, {}):  # given, and made by the loss (all valid, length 1)
            out = spec(lp, lp, R, validate=False, **given, **kw)
            assert out.device.type == "meta" and out.shape == (3,), (name, kw, sorted(given))
    if name == "infonca":  # the soft labels on their own, each mode
        for m in L.LABEL_MODES:
            assert L.soft_labels(R, mask, alpha=0.5, labels=m).device.type == "meta"


@pytest.mark.parametrize("name", ["infonca", "nca"])
def test_label_weights_do_not_change_the_compute_dtype(name):
    """The compute dtype follows the log-probs (float32 unless a log-prob tensor is float64): float64 rewards or
    label weights with float32 log-probs give a float32 loss, equal to the loss computed from float32 weights."""
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(2, 3, generator=g)
    R, w = torch.randn(2, 3, generator=g, dtype=torch.float64), torch.rand(2, 3, generator=g, dtype=torch.float64)
    out = LOSSES[name](lp, lp - 0.1, R, label_weights=w)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, LOSSES[name](lp, lp - 0.1, R.float(), label_weights=w.float()), rtol=0, atol=0)


def test_loo_label_overflow_names_the_row_it_happens_in():
    """Leave-one-out labels e^{(R_i − R_j)/α} overflow once a gap over α passes ~709: the loss refuses with the row
    (here row 1, whose overflowing label is in column 0) and says what to change."""
    lp = torch.zeros(2, 2, dtype=torch.float64)
    R = torch.tensor([[0.0, 1.0], [1000.0, 0.0]], dtype=torch.float64)
    for name in ("infonca", "nca"):
        _err(lambda: LOSSES[name](lp, lp, R, alpha=1.0, labels="loo"),
             r'^labels="loo": row 1: label overflows float range at alpha=1.0; the reward gaps divided by alpha are '
             r"too large \(use a larger alpha\)$")


def test_an_overflowing_pair_outside_the_selection_leaves_no_nan():
    """Pairwise losses evaluate all K×K pairs and keep the selected ones. IPO's square overflows to +inf for the
    unselected pair (y0, y1) when log π(y1) = −1e200 (finite, extreme); best_worst keeps only (y0, y2), whose
    h = 0 gives (0 − 1/(2β))² = 1 at β = ½ exactly. The inf must be dropped, not multiplied by a zero weight (NaN).
    With pairs='all' the overflowing pair is selected and the loss is honestly +inf."""
    pol, ref, R = t64([0.0, -1e200, 0.0]), t64([0.0, 0.0, 0.0]), t64([2.0, 1.0, 0.0])
    assert float(LOSSES["ipo"](pol, ref, R, beta=0.5)) == 1.0
    assert float(LOSSES["ipo"](pol, ref, R, beta=0.5, pairs="all")) == math.inf

"""The loss module against an independent oracle: ``tests/reference_losses.py`` (plain-Python loops written
from the README's formulas and tie rule, no torch), on what training feeds the losses.

Every registry loss, on random tuples with: reward ties (rewards drawn from {0, 1, 2} half the time),
masks whose masked slots hold NaN/±inf in every input, ``lengths`` (or None), every ``pairs`` mode,
leave-one-out labels, explicit hyperparameters or none at all (then the oracle uses the README's
documented defaults, so a changed default fails here), and log-probabilities up to 1e3 in size (margins
|h| to ~3e3). The masked row must also equal the same row with the masked columns removed.

Tolerance: the oracle and the module both evaluate sums of at most K² = 25 float64 terms, each to a few
ulps (stable log-sigmoid and log-sum-exp on both sides); with terms of size up to M ≈ 3e3 the difference
is below ~25·M·2.2e-16 ≈ 2e-11, so rel 1e-10 with an absolute floor of 1e-10 is asserted.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from reference_losses import DOCUMENTED_DEFAULTS, PAIRWISE, reference_loss
from strategies import prop_settings, torch_one_thread  # noqa: F401 (autouse fixture)

from nca_lab import losses as L
from nca_lab import theory
from nca_lab.losses import LOSSES

RTOL = ATOL = 1e-10
JUNK = [math.nan, math.inf, -math.inf]


def _random_hparams(draw, name: str, n_valid: int) -> dict:
    f = lambda lo, hi: draw(st.floats(lo, hi, allow_nan=False))  # noqa: E731
    hp: dict = {}
    if name in ("infonca", "nca"):
        labels = draw(st.sampled_from(["softmax", "loo"]))
        hp.update(beta=f(0.01, 3.0), alpha=f(0.3, 3.0) if labels == "loo" else f(1e-4, 3.0), labels=labels)
    elif name in ("nca_pair", "dpo", "ipo", "hinge"):
        hp.update(beta=f(0.01, 3.0))
    elif name in ("cdpo", "rdpo"):
        hp.update(beta=f(0.01, 3.0), eps=f(0.0, 0.45))
    elif name == "clha":
        hp.update(margin=f(0.0, 3.0), min_gap=f(0.0, 2.0), sft_gate=f(-1.0, 1.0), sft_weight=f(0.0, 1.0))
    elif name in ("pro", "rrhf"):
        hp.update(sft_weight=f(0.0, 1.0))
    elif name == "cpl":
        hp.update(alpha=f(0.01, 2.0), lam=f(0.05, 1.0))
    elif name == "simpo":
        hp.update(beta=f(0.1, 3.0), gamma=f(-2.0, 2.0))
    if name in PAIRWISE:
        hp["pairs"] = draw(st.sampled_from(L.PAIR_MODES))
    return hp


@st.composite
def cases(draw, name: str):
    K = draw(st.integers(2, 5))
    min_valid = 1 if name == "sft" else 2
    n_valid = draw(st.integers(min_valid, K))
    order = draw(st.permutations(range(K)))
    mask = [k in order[:n_valid] for k in range(K)]
    if draw(st.booleans()):
        R = [float(draw(st.integers(0, 2))) for _ in range(K)]  # ties
    else:
        R = [draw(st.floats(-3.0, 3.0)) for _ in range(K)]
    scale = draw(st.sampled_from([1.0, 30.0, 1000.0]))
    lp = [draw(st.floats(-scale, 0.0)) for _ in range(K)]
    ref = [draw(st.floats(-scale, 0.0)) for _ in range(K)]
    lengths = None if draw(st.booleans()) else [float(draw(st.integers(1, 50))) for _ in range(K)]
    use_defaults = draw(st.booleans())
    hp = {} if use_defaults else _random_hparams(draw, name, n_valid)
    junk = [draw(st.sampled_from(JUNK)) for _ in range(4)]
    return K, mask, R, lp, ref, lengths, hp, junk


def _with_junk(values, mask, junk):
    return [v if m else junk for v, m in zip(values, mask)]


def _run(name, lp, ref, R, mask, lengths, hp):
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    policy = t(lp).requires_grad_(True)
    out = LOSSES[name](
        policy,
        t(ref),
        t(R),
        mask=None if mask is None else torch.tensor([mask]),
        lengths=None if lengths is None else t(lengths),
        **hp,
    )
    (g,) = torch.autograd.grad(out.sum(), policy, allow_unused=True)
    return float(out[0].detach()), (torch.zeros_like(policy) if g is None else g)[0]


@pytest.mark.parametrize("name", sorted(DOCUMENTED_DEFAULTS))
@prop_settings(40)
@given(data=st.data())
def test_every_loss_equals_the_plain_python_oracle(name, data):
    K, mask, R, lp, ref, lengths, hp, junk = data.draw(cases(name))
    full_hp = {**DOCUMENTED_DEFAULTS[name], **hp}
    expect = reference_loss(name, lp, ref, R, mask, lengths, **full_hp)
    # masked slots hold NaN/±inf in every input: they must reach neither the value nor the gradient
    got, grad = _run(
        name,
        _with_junk(lp, mask, junk[0]),
        _with_junk(ref, mask, junk[1]),
        _with_junk(R, mask, junk[2]),
        mask,
        None if lengths is None else _with_junk(lengths, mask, junk[3]),
        hp,
    )
    assert math.isfinite(got) and got == pytest.approx(expect, rel=RTOL, abs=ATOL), (name, hp, got, expect)
    assert bool(torch.isfinite(grad).all()), (name, grad)
    assert all(float(grad[k]) == 0.0 for k in range(K) if not mask[k]), (name, grad)
    # the same prompt with the masked columns removed
    keep = [k for k in range(K) if mask[k]]
    pick = lambda v: [v[k] for k in keep]  # noqa: E731
    compact, _ = _run(name, pick(lp), pick(ref), pick(R), None, None if lengths is None else pick(lengths), hp)
    assert compact == pytest.approx(got, rel=1e-12, abs=1e-12), (name, hp, compact, got)


# ------------------------------------------------------------------ defaults


def test_registry_defaults_are_the_documented_values():
    """Every default of every loss, against the README's loss table (``DOCUMENTED_DEFAULTS``)."""
    for name, documented in DOCUMENTED_DEFAULTS.items():
        assert dict(LOSSES[name].defaults) == documented, name


def test_defaults_act_at_call_time():
    """The defaults are the ones the functions use, not only the ones the registry reports: values at
    π_θ = π_ref with no hyperparameter given (IPO: 1/(4β²) = 25 at β = 0.1; SimPO: −log σ(−γ) with
    γ = 1.375 on equal scores; CPL at log π = −1: −log σ(−α(1 − λ)) with α = 0.1, λ = 0.5)."""
    lp = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    R = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    assert float(L.ipo(lp, lp.clone(), R)) == pytest.approx(25.0, rel=1e-14)
    assert float(L.simpo(lp, None, R)) == pytest.approx(math.log1p(math.exp(1.375)), rel=1e-14)
    assert float(L.cpl(lp, None, R)) == pytest.approx(math.log1p(math.exp(0.05)), rel=1e-14)
    assert float(L.hinge(lp + torch.tensor([[1.0, 0.0]]), lp, R)) == pytest.approx(0.9, rel=1e-14)  # β = 0.1
    assert float(L.dpo(lp + torch.tensor([[1.0, 0.0]]), lp, R)) == pytest.approx(math.log1p(math.exp(-0.1)), rel=1e-14)


# ------------------------------------------------------------------ the audit's survivors, one by one


def test_clha_gap_must_exceed_min_gap_strictly():
    """A reward gap equal to ``min_gap`` selects no pair: R = (5, 2), min_gap 3 gives 0 (no SFT term)."""
    lp = torch.tensor([[-4.0, -1.0]], dtype=torch.float64)
    for R, expect in (([5.0, 2.0], 0.0), ([5.0, 1.9], 3.0 - (-4.0 + 1.0))):
        got = float(L.clha(lp, None, torch.tensor([R], dtype=torch.float64), min_gap=3.0, margin=3.0, sft_weight=0.0))
        assert got == expect, (R, got)


def test_rrhf_skips_tied_pairs():
    """R = (1, 1, 0), s = (0, −2, 0), no SFT term: only the pairs (2 ≺ 0) and (2 ≺ 1) count:
    max(0, 0 − 0) + max(0, 0 + 2) = 2 (counting the tied pair would add |s_0 − s_1| = 2)."""
    lp = torch.tensor([[0.0, -2.0, 0.0]], dtype=torch.float64)
    R = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    assert float(L.rrhf(lp, None, R, sft_weight=0.0)) == 2.0
    lp = torch.tensor([[-1.0, -1.0, -2.0]], dtype=torch.float64)
    assert float(L.rrhf(lp, None, R, sft_weight=0.0)) == 0.0  # only tied pairs could contribute


@pytest.mark.parametrize("h", [-1000.0, -300.0, 300.0, 1000.0])
def test_sigmoid_losses_at_extreme_margins(h):
    """−log σ(h) = log(1 + e^{−h}): 1000 at h = −1000 (not inf), with a finite gradient of exactly ∓1."""
    expect = -h + math.log1p(math.exp(h)) if h < 0 else math.log1p(math.exp(-h))
    R = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    ref = torch.zeros(1, 2, dtype=torch.float64)
    lp = torch.tensor([[h, 0.0]], dtype=torch.float64, requires_grad=True)
    for name, fn in {
        "dpo": lambda x: L.dpo(x, ref, R, beta=1.0),
        "cdpo": lambda x: L.cdpo(x, ref, R, beta=1.0, eps=0.0),
        "rdpo": lambda x: L.rdpo(x, ref, R, beta=1.0, eps=0.0),
        "cpl": lambda x: L.cpl(x, None, R, alpha=1.0, lam=1.0),
        "simpo": lambda x: L.simpo(x, None, R, beta=1.0, gamma=0.0),
        "infonca": lambda x: L.infonca(x, ref, R, beta=1.0, alpha=1e-4),  # one-hot labels: −log softmax
    }.items():
        out = fn(lp)
        (g,) = torch.autograd.grad(out.sum(), lp)
        # h < 0: relative accuracy; h > 0: the value e^{−h} is below round-off of 1, so absolute (1e-15)
        atol = 0.0 if h < 0 else 1e-15
        assert float(out.detach()) == pytest.approx(expect, rel=1e-15, abs=atol), name
        slope = 1.0 / (1.0 + math.exp(h)) if h < 0 else math.exp(-h) / (1.0 + math.exp(-h))  # σ(−h)
        torch.testing.assert_close(g, torch.tensor([[-slope, slope]], dtype=torch.float64), rtol=1e-15, atol=atol, msg=name)
    # nca: −log σ(h) − ½ log σ(−h) − ½ log σ(0) at the extremes
    out = L.nca_pair(lp, ref, R, beta=1.0)
    half = 0.5 * (math.log1p(math.exp(-abs(h))) + (abs(h) if h > 0 else 0.0))
    assert float(out.detach()) == pytest.approx(expect + half + 0.5 * math.log(2.0), rel=1e-15)


def test_log_partition_at_extreme_rewards():
    """μ = (½, ½), r = (0, 800), α = 1: log Z = 800 + log(½ + ½e^{−800}) = 800 − ln 2 (a naive Σ e^x overflows)."""
    assert float(theory.log_partition([0.5, 0.5], [0.0, 800.0], 1.0)) == pytest.approx(800.0 - math.log(2.0), rel=1e-15)
    f = theory.infonca_optimum([0.5, 0.5], [0.0, 800.0], 1.0)
    # r/α − log Z subtracts two numbers near 800: round-off 800·2.2e-16 ≈ 2e-13, so atol 1e-12
    np.testing.assert_allclose(f, [-800.0 + math.log(2.0), math.log(2.0)], rtol=0, atol=1e-12)
    f = theory.dpo_bt_optimum([0.25, 0.75], [-700.0, 100.0], 1.0)  # r/β spans 800
    np.testing.assert_allclose(f, [-800.0 - math.log(0.75), -math.log(0.75)], rtol=0, atol=1e-12)


def test_cpl_with_length_one_segments_is_reference_free_dpo():
    """Proposition 10's identity at the tuple level: CPL with λ = 1 is DPO with β = α and a flat
    reference (log π_ref = 0), for every pair mode, with ties and masks."""
    g = torch.Generator().manual_seed(10)
    lp = -torch.rand(6, 5, generator=g, dtype=torch.float64) * 8
    R = torch.randint(0, 3, (6, 5), generator=g).to(torch.float64)
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[0, 1] = mask[3, 4] = False
    for alpha in (0.05, 0.7, 3.0):
        for pairs in L.PAIR_MODES:
            a = L.cpl(lp, None, R, mask=mask, alpha=alpha, lam=1.0, pairs=pairs)
            b = L.dpo(lp, torch.zeros_like(lp), R, mask=mask, beta=alpha, pairs=pairs)
            torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)


# ------------------------------------------------------------------ every loss names itself in its data errors


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_data_errors_name_the_loss(name):
    """Each loss's data checks (every registry loss, the atlas included) say which loss refused the data (message
    starts with the loss's name): too few valid responses, a NaN reward, a zero length (checked even where the
    loss ignores lengths: the contract is the same for every loss), a missing reference where one is needed."""
    fn = LOSSES[name]
    lp = torch.tensor([[-1.0, -2.0, -3.0]], dtype=torch.float64)
    R = torch.tensor([[1.0, 0.0, 2.0]], dtype=torch.float64)
    too_few = torch.tensor([[False, False, False]]) if name == "sft" else torch.tensor([[True, False, False]])
    with pytest.raises(ValueError, match=f"^{name}: row 0 has"):
        fn(lp, lp.clone(), R, mask=too_few)
    with pytest.raises(ValueError, match=f"^{name}: rewards\\[0, 1\\] is nan"):
        fn(lp, lp.clone(), torch.tensor([[1.0, math.nan, 2.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match=f"^{name}: lengths\\[0, 2\\] = 0"):
        fn(lp, lp.clone(), R, lengths=torch.tensor([[3.0, 2.0, 0.0]], dtype=torch.float64))
    if fn.needs_ref:
        with pytest.raises(ValueError, match=f"^{name} needs ref_logps"):
            fn(lp, None, R)
    else:  # reference-free: the reference is ignored, whatever it holds
        assert float(fn(lp, None, R)) == float(fn(lp, torch.full_like(lp, math.nan), R))
    # validate=False is the caller's promise that the data are clean: the same clean call gives the same value
    assert float(fn(lp, lp - 0.5, R, validate=False)) == float(fn(lp, lp - 0.5, R))


@pytest.mark.parametrize("name", sorted(DOCUMENTED_DEFAULTS))
def test_bad_hyperparameters_are_refused_by_name(name):
    """Every numeric hyperparameter of every loss refuses a bool, a string, NaN and inf with a ValueError whose
    message starts with the hyperparameter's name."""
    lp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    R = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    numeric = [k for k, v in DOCUMENTED_DEFAULTS[name].items() if isinstance(v, float)]
    for hp in numeric:
        for bad in (True, "0.5", math.nan, math.inf, None):
            with pytest.raises(ValueError, match=f"^{hp} must"):
                LOSSES[name](lp, lp.clone(), R, **{hp: bad})


def test_non_tensor_input_is_named_by_its_type():
    with pytest.raises(ValueError, match=r"^dpo: policy_logps must be a \[B, K\] tensor, got list"):
        L.dpo([[-1.0, -2.0]], torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))


@pytest.mark.parametrize("name", sorted(DOCUMENTED_DEFAULTS))
def test_each_prompt_is_computed_alone(name):
    """The loss is per prompt: a batch of prompts (ties, masks, lengths) gives each row's value computed alone."""
    g = torch.Generator().manual_seed(3)
    B, K = 5, 4
    lp = -torch.rand(B, K, generator=g, dtype=torch.float64) * 20
    ref = -torch.rand(B, K, generator=g, dtype=torch.float64) * 20
    R = torch.randint(0, 8, (B, K), generator=g).to(torch.float64)  # gaps up to 7 pass CLHA's min_gap 3
    ln = torch.randint(1, 9, (B, K), generator=g).to(torch.float64)
    mask = torch.ones(B, K, dtype=torch.bool)
    mask[1, 3] = mask[4, 0] = False
    hp = {"alpha": 1.0} if name in ("infonca", "nca") else {}
    batch = LOSSES[name](lp, ref, R, mask=mask, lengths=ln, **hp)
    for b in range(B):
        one = LOSSES[name](lp[b : b + 1], ref[b : b + 1], R[b : b + 1], mask=mask[b : b + 1], lengths=ln[b : b + 1], **hp)
        assert float(batch[b]) == pytest.approx(float(one[0]), rel=1e-14, abs=1e-14), (name, b)


# ------------------------------------------------------------------ defaults of the functions themselves

# The registry's ``LossSpec.__call__`` passes ``validate`` explicitly, so only a direct call of the function
# shows the function's own ``validate`` default; the hyperparameter defaults are checked through both.


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_functions_validate_by_default(name):
    """Called directly with no ``validate`` argument, every loss function checks its data: a NaN reward is
    refused with the loss's name (unchecked, it would flow into the value or be silently dropped)."""
    lp = torch.tensor([[-1.0, -2.0, -3.0]], dtype=torch.float64)
    R = torch.tensor([[1.0, math.nan, 2.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match=f"^{name}: rewards\\[0, 1\\] is nan"):
        LOSSES[name].fn(lp, lp.clone(), R)


@pytest.mark.parametrize("name", sorted(DOCUMENTED_DEFAULTS))
def test_every_default_acts_at_call_time(name):
    """At a point away from the reference (log-ratios of a few nats, reward gaps 1.75 to 5.25, lengths 2-8),
    the function called with no hyperparameters equals the call with the README's defaults spelled out, and
    moving any one numeric default changes the value (so the equality is not vacuous). The moves: ×1.5;
    ``sft_gate`` 0 → 10 (above every reward, so the SFT term switches off); the label temperature α of
    infonca/nca (softmax(R/α)) is probed at rewards on α's own scale (R·α), where labels are not one-hot."""
    g = torch.Generator().manual_seed(8)
    B, K = 3, 4
    lp = -torch.rand(B, K, generator=g, dtype=torch.float64) * 12 - 0.5
    ref = lp + torch.randn(B, K, generator=g, dtype=torch.float64) * 3
    R = torch.stack([torch.randperm(K, generator=g) for _ in range(B)]).to(torch.float64) * 1.75
    n = torch.randint(2, 9, (B, K), generator=g).to(torch.float64)
    fn = LOSSES[name].fn
    documented = {k: v for k, v in DOCUMENTED_DEFAULTS[name].items() if k != "label_weights"}
    torch.testing.assert_close(fn(lp, ref, R, lengths=n), fn(lp, ref, R, lengths=n, **documented), rtol=0, atol=0)
    for hp, value in documented.items():
        if not isinstance(value, float):
            continue
        R_hp = R * value if hp == "alpha" and name in ("infonca", "nca") else R
        moved = {**documented, hp: value * 1.5 if value else 10.0}
        assert not torch.allclose(fn(lp, ref, R_hp, lengths=n, **moved), fn(lp, ref, R_hp, lengths=n),
                                  rtol=1e-9, atol=0), (name, hp)


@pytest.mark.parametrize("name", sorted(DOCUMENTED_DEFAULTS))
def test_ties_at_large_K_keep_index_order(name):
    """The tie rule at K = 24 (rewards from {0, 1, 2}, so most responses tie, two masked): every loss equals
    the oracle. The listwise losses (PRO, CLHA) rank a tie by index; torch's sort is stable by construction
    only when asked (from K = 17 on, an unstable CPU sort reorders ties), so this is where the rule can fail."""
    rng = np.random.default_rng(24)
    K = 24
    R = rng.integers(0, 3, K).astype(float).tolist()
    lp = (-rng.uniform(0.5, 8.0, K)).tolist()
    ref = (np.array(lp) + rng.normal(0, 1, K)).tolist()
    lengths = rng.integers(1, 9, K).astype(float).tolist()
    mask = [k not in (3, 17) for k in range(K)]
    hp = {"pairs": "all"} if name in PAIRWISE else {}
    expect = reference_loss(name, lp, ref, R, mask, lengths, **{**DOCUMENTED_DEFAULTS[name], **hp})
    got, _ = _run(name, lp, ref, R, mask, lengths, hp)
    assert got == pytest.approx(expect, rel=RTOL, abs=ATOL), (name, got, expect)

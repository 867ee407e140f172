"""Proposition 20 in the LLM world: at π_θ = π_ref, the gradient of nca_lab's ``infonca`` on K sampled completions
is TRL 1.16 ``GRPOTrainer``'s Dr. GRPO gradient (``loss_type="dr_grpo"``, ``scale_rewards="none"``, ``beta=0``) on
the same completions and rewards, times β·L_max/α, up to the proposition's O(range R/α) remainder.

TRL's own code computes its side, from the rewards on: a ``GRPOTrainer`` is constructed (tiny Llama, float64,
CPU); its ``rollout_func`` hook (experimental in TRL 1.16) hands it our pre-sampled completions instead of
generating, so ``_generate_and_score_completions`` calls our reward function, forms the group advantages itself
and returns the ``inputs`` dict that ``compute_loss`` (→ ``_compute_loss``) turns into the loss. Nothing of TRL's
loss is re-typed here. Our side is the trainer's path: ``collate_responses`` → ``batch_logps`` (the chunked
sequence log-probs) → ``infonca(...).mean()`` over prompts, with the reference log-probs the policy's own
(detached), i.e. r_θ = 0 exactly. B = 2 prompts × K = 4 completions of 2–6 tokens; ``max_completion_length`` = 8.

The factor (``proofs/20_infonca_policy_gradient.md``): TRL's Dr. GRPO divides the summed token loss by N·L_max,
N = B·K rows and L_max = ``max_completion_length`` (the config value, not the longest completion), so
−∇L_TRL = Σ_n A_n ∇log π(y_n) / (B·K·L_max); our loss is a mean over the B prompts, so
−∇L_ours = (β/B) Σ_n (w_n − 1/K) ∇log π(y_n) = β/(B·K·α) Σ_n Kα(w_n − 1/K) ∇log π(y_n). Hence
∇L_ours = (β·L_max/α)·∇L_TRL exactly when TRL's advantages are Kα(w − 1/K) (``test_exact_at_any_alpha``), and up
to the remainder −Δ/(B·K·L_max) of Proposition 20 (b) when they are R − R̄. B and K cancel. TRL's default
``"dapo"`` divides by the batch's completion-token count T instead (factor β·T/(B·K·α)); ``"grpo"`` by each
completion's own length, a different direction.

Measured (CPU, torch 2.13, TRL 1.16): Dr. GRPO at α = 1e4: 1 − cos = 1.4e-10, scale ratio 0.9999977
(remainder ‖∇L_ours/factor − ∇L_TRL‖ = 1.3e-5 against the proved bound 1.6e-3; ‖∇L_TRL‖ = 0.76); exact variant
at α = 0.5: 1 − cos = 7e-14, ratio 0.99999999 (raw advantages at that α: 1 − cos = 5e-2); GRPO standardised at
c = 1e4: 1 − cos = 1.2e-9, ratio 0.9999936; dapo: 1 − cos = 1.4e-10; grpo: 1 − cos = 0.17.
Tolerances: cos ≥ 1 − 1e-6 (the remainder's perpendicular part is O(range/α) = 1e-4 relative, so
1 − cos = O(1e-8); our head's float32 log-softmax adds ~1e-7 relative per entry); scale within 1e-3 (measured
2e-6 to 7e-6; the proved bound, asserted separately, is 2e-3 relative here); exact variant to 1e-5·‖∇L_TRL‖
(float32 head).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from nca_lab.llm.collate import collate_responses  # noqa: E402
from nca_lab.llm.logps import batch_logps  # noqa: E402
from nca_lab.llm.tokenization import build_tiny_tokenizer  # noqa: E402
from nca_lab.losses import infonca  # noqa: E402
from nca_lab.toy.population import one_thread  # noqa: E402

B, K, L_MAX, PROMPT_LEN = 2, 4, 6, 5
L_MAX_CONFIG = 8  # TRL's max_completion_length; > the longest sampled completion (L_MAX), so the factor shows which one
BETA = 0.1


def _tiny_llama(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False, attn_implementation="eager")
    config.initializer_range = 0.3  # non-uniform predictions: the K completions' gradients differ clearly
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    return model.to(torch.float64)


def _sample(model, tokenizer, seed: int = 1):
    """B prompts of equal length (TRL left-pads prompts and passes no position ids: equal lengths keep the two
    layouts' positions identical) and K distinct completions each, sampled from the model at temperature 1 and
    cut after EOS or after a random cap of 2..L_MAX tokens (so that lengths differ)."""
    g = torch.Generator().manual_seed(seed)
    prompts = [[tokenizer.bos_token_id] + torch.randint(6, len(tokenizer), (PROMPT_LEN - 1,), generator=g).tolist()
               for _ in range(B)]
    completions = []
    with torch.no_grad():
        for p in prompts:
            seen: list[list[int]] = []
            while len(seen) < K:
                ids = list(p)
                out = []
                cap = int(torch.randint(2, L_MAX + 1, (1,), generator=g))  # varied lengths (a random model rarely
                for _ in range(cap):                                       # samples EOS within L_MAX tokens)
                    logits = model(torch.tensor([ids])).logits[0, -1].float()
                    tok = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=g))
                    out.append(tok)
                    ids.append(tok)
                    if tok == tokenizer.eos_token_id:
                        break
                if out not in seen:
                    seen.append(out)
            completions.append(seen)
    return prompts, completions


@pytest.fixture(scope="module")
def world():
    """(tokenizer, float64 tiny Llama = π_θ = π_ref, B prompts, B×K completions, rewards [B, K] in [0, 1])."""
    with one_thread():  # tiny tensors: intra-op threads only add synchronisation on a shared 2-core machine
        tokenizer = build_tiny_tokenizer()
        model = _tiny_llama(tokenizer)
        prompts, completions = _sample(model, tokenizer)
        g = torch.Generator().manual_seed(2)
        rewards = torch.rand(B, K, generator=g, dtype=torch.float64)
        yield tokenizer, model, prompts, completions, rewards


def _flat_grad(model) -> torch.Tensor:
    out = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return out


def ours_gradient(model, prompts, completions, rewards, alpha: float) -> torch.Tensor:
    """∇ of nca_lab's infonca (mean over prompts) at π_θ = π_ref, through the trainer's log-prob path."""
    features = [{"prompt_ids": p, "response_ids": c, "rewards": r.tolist(), "row": i}
                for i, (p, c, r) in enumerate(zip(prompts, completions, rewards))]
    batch = collate_responses(features, pad_token_id=0)
    model.zero_grad(set_to_none=True)
    logps, _ = batch_logps(model, batch)
    pol = logps.double()  # the labels' 1/K − w_i ~ 1e-5 at α = 1e4: float64 keeps its cancellation exact
    loss = infonca(pol, pol.detach(), rewards, beta=BETA, alpha=alpha).mean()
    loss.backward()
    return _flat_grad(model)


def per_sequence_gradients(model, prompts, completions) -> torch.Tensor:
    """∇ log π(y_n | x) ``[B*K, P]`` (float64), for the remainder bound of Proposition 20."""
    features = [{"prompt_ids": p, "response_ids": c, "rewards": [0.0] * K, "row": i}
                for i, (p, c) in enumerate(zip(prompts, completions))]
    logps, _ = batch_logps(model, collate_responses(features, pad_token_id=0))
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for v in logps.reshape(-1):
        gs = torch.autograd.grad(v, params, retain_graph=True)
        out.append(torch.cat([x.reshape(-1) for x in gs]).double())
    return torch.stack(out)


def trl_gradient(model, tokenizer, prompts, completions, trl_rewards, tmp_path, *, loss_type="dr_grpo",
                 scale_rewards="none"):
    """∇ of TRL's GRPO loss, computed by TRL from the rewards on (advantages, normalisation, loss)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is marked experimental in TRL 1.16
    from trl import GRPOConfig, GRPOTrainer

    texts = [f"prompt {i}" for i in range(B)]
    by_text = {t: i for i, t in enumerate(texts)}
    drawn = {t: 0 for t in texts}

    def rollout_func(batch_prompts, trainer):
        # TRL repeats each prompt K times (num_generations), consecutively; hand it the pre-sampled completions
        p_ids, c_ids = [], []
        for t in batch_prompts:
            i = by_text[t]
            p_ids.append(list(prompts[i]))
            c_ids.append(list(completions[i][drawn[t] % K]))
            drawn[t] += 1
        return {"prompt_ids": p_ids, "completion_ids": c_ids, "logprobs": None}

    reward_of = {(texts[i], tuple(c)): float(trl_rewards[i, k]) for i in range(B) for k, c in enumerate(completions[i])}

    def reward_func(prompts, completions, completion_ids, **kwargs):
        return [reward_of[(t, tuple(c))] for t, c in zip(prompts, completion_ids)]

    args = GRPOConfig(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, fp16=False,
        per_device_train_batch_size=B * K, num_generations=K, max_completion_length=L_MAX_CONFIG,
        loss_type=loss_type, scale_rewards=scale_rewards, beta=0.0, temperature=1.0,
        gradient_checkpointing=False, save_strategy="no", seed=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=reward_func, args=args, processing_class=tokenizer,
                          train_dataset=datasets.Dataset.from_dict({"prompt": texts}), rollout_func=rollout_func)
    # The Trainer's loop sets this attribute per optimizer step (to 1 for gradient_accumulation_steps = 1);
    # compute_loss divides by it in training mode. We call compute_loss outside the loop, so we set it.
    trainer.current_gradient_accumulation_steps = 1
    model = trainer.model
    model.train()
    inputs = trainer._generate_and_score_completions([{"prompt": t} for t in texts for _ in range(K)])
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    return _flat_grad(model), inputs, trainer


def _cos(a, b) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def test_infonca_at_reference_is_dr_grpo(world, tmp_path):
    """α = 1e4: cosine ≥ 1 − 1e-6, scale ratio within the Proposition 20 remainder bound."""
    tokenizer, model, prompts, completions, rewards = world
    alpha = 1e4
    g_ours = ours_gradient(model, prompts, completions, rewards, alpha)
    g_trl, inputs, trainer = trl_gradient(model, tokenizer, prompts, completions, rewards, tmp_path)
    # TRL formed the group-mean advantages itself (float32 in TRL's reward tensor)
    adv = (rewards - rewards.mean(dim=1, keepdim=True)).reshape(-1)
    torch.testing.assert_close(inputs["advantages"].double(), adv, atol=1e-6, rtol=0)
    assert trainer.max_completion_length == L_MAX_CONFIG > max(len(c) for cs in completions for c in cs)
    factor = BETA * trainer.max_completion_length / alpha
    cos, ratio = _cos(g_ours, g_trl), float(g_ours.norm() / (factor * g_trl.norm()))
    print(f"dr_grpo, alpha={alpha:g}: 1 - cos = {1 - cos:.3e}, scale ratio = {ratio:.9f}")
    # The remainder: g_ours/factor − g_trl = −Δ/(B·K·L_max), ‖Δ‖ ≤ Σ_b e·span_b²/α·Σ_i ‖∇ℓ_bi‖ (Prop. 20 (b));
    # plus float32 round-off of the two log-prob paths (our head's log-softmax is float32): 1e-5 relative.
    grads = per_sequence_gradients(model, prompts, completions).reshape(B, K, -1)
    spans = rewards.max(dim=1).values - rewards.min(dim=1).values
    bound = float((math.e * spans**2 / alpha * grads.norm(dim=-1).sum(dim=1)).sum()) / (B * K * L_MAX_CONFIG)
    gap = float((g_ours / factor - g_trl).norm())
    print(f"remainder {gap:.3e} <= bound {bound:.3e} (norm of the TRL gradient {float(g_trl.norm()):.3e})")
    assert gap <= bound + 1e-5 * float(g_trl.norm())
    assert cos >= 1 - 1e-6
    assert abs(ratio - 1) <= 1e-3


def test_exact_at_any_alpha(world, tmp_path):
    """Part (a) of Proposition 20 through TRL: with rewards Kα(w − 1/K) (group mean 0, so TRL's advantages are
    exactly these) the gradients agree up to β·L_max/α at α = 0.5, far from the limit, to float32 round-off."""
    tokenizer, model, prompts, completions, rewards = world
    alpha = 0.5
    w = torch.softmax(rewards / alpha, dim=1)
    g_ours = ours_gradient(model, prompts, completions, rewards, alpha)
    g_trl, _, trainer = trl_gradient(model, tokenizer, prompts, completions, K * alpha * (w - 1 / K), tmp_path)
    factor = BETA * trainer.max_completion_length / alpha
    cos, ratio = _cos(g_ours, g_trl), float(g_ours.norm() / (factor * g_trl.norm()))
    print(f"exact, alpha={alpha:g}: 1 - cos = {1 - cos:.3e}, scale ratio = {ratio:.9f}")
    torch.testing.assert_close(g_ours / factor, g_trl, atol=1e-5 * float(g_trl.norm()), rtol=0)
    # not vacuous: at this α the raw group-mean advantages give a visibly different gradient
    g_raw, _, _ = trl_gradient(model, tokenizer, prompts, completions, rewards, tmp_path)
    print(f"raw advantages at alpha={alpha:g}: 1 - cos = {1 - _cos(g_ours, g_raw):.3e}")
    assert 1 - _cos(g_ours, g_raw) > 1e-4


def test_grpo_standardised(world, tmp_path):
    """Part (c): TRL's scale_rewards="group" advantages (R − R̄)/(std + 1e-4) are InfoNCA's with the per-group
    α = c·(std + 1e-4), i.e. infonca on R/(std + 1e-4) at α = c (c = 1e4)."""
    tokenizer, model, prompts, completions, rewards = world
    c = 1e4
    s = rewards.std(dim=1, keepdim=True) + 1e-4
    g_ours = ours_gradient(model, prompts, completions, rewards / s, c)
    g_trl, inputs, trainer = trl_gradient(model, tokenizer, prompts, completions, rewards, tmp_path,
                                          scale_rewards="group")
    torch.testing.assert_close(inputs["advantages"].double(), ((rewards - rewards.mean(1, keepdim=True)) / s).reshape(-1),
                               atol=1e-5, rtol=0)
    factor = BETA * trainer.max_completion_length / c
    cos, ratio = _cos(g_ours, g_trl), float(g_ours.norm() / (factor * g_trl.norm()))
    print(f"grpo standardised, c={c:g}: 1 - cos = {1 - cos:.3e}, scale ratio = {ratio:.9f}")
    assert cos >= 1 - 1e-6
    assert abs(ratio - 1) <= 1e-3


def test_dapo_same_direction_grpo_not(world, tmp_path):
    """TRL 1.16's default loss_type "dapo" divides by the batch's completion-token count T: same direction,
    factor β·T/(B·K·α). "grpo" divides each completion by its own length: a different direction (lengths differ)."""
    tokenizer, model, prompts, completions, rewards = world
    alpha = 1e4
    g_ours = ours_gradient(model, prompts, completions, rewards, alpha)
    g_dapo, inputs, _ = trl_gradient(model, tokenizer, prompts, completions, rewards, tmp_path, loss_type="dapo")
    T = sum(len(c) for cs in completions for c in cs)
    assert int(inputs["num_items_in_batch"]) == T
    factor = BETA * T / (B * K * alpha)
    cos, ratio = _cos(g_ours, g_dapo), float(g_ours.norm() / (factor * g_dapo.norm()))
    print(f"dapo: 1 - cos = {1 - cos:.3e}, scale ratio = {ratio:.9f}")
    assert cos >= 1 - 1e-6
    assert abs(ratio - 1) <= 1e-3
    g_grpo, _, _ = trl_gradient(model, tokenizer, prompts, completions, rewards, tmp_path, loss_type="grpo")
    assert len({len(c) for cs in completions for c in cs}) > 1
    print(f"grpo (per-sequence length normalisation): 1 - cos = {1 - _cos(g_ours, g_grpo):.3e}")
    assert 1 - _cos(g_ours, g_grpo) > 1e-4

"""The verifiable arithmetic task: generator, splits, canonical chains, verifier scale, demonstrations, tokenizer."""

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nca_lab.llm.study.task import (ALPHABET, DIFFICULTY, ERROR_KINDS, LEVELS, SPLITS, Problem,
                                    build_task_tokenizer, corrupted_demonstration, demonstration, format_response,
                                    load_splits, make_problems, parse_response, solution_steps, verify)

EXAMPLE = Problem((37, 58, 21, 3), ("+", "-", "*"))  # 37+58-21*3 = 32


def problems_strategy():
    """Any problem the generator can produce: 1-6 operations, operands up to 9 or 99, seed-driven."""
    return st.builds(lambda seed, n_ops, top: make_problems(1, seed, n_ops, max_operand=top)[0],
                     st.integers(0, 10**6), st.integers(1, 6), st.sampled_from([9, 99]))


# --------------------------------------------------------------------------------------------------- generator

def test_make_problems_is_deterministic_distinct_and_prefix_stable():
    a, b = make_problems(300, seed=7, difficulty=(2, 4)), make_problems(300, seed=7, difficulty=(2, 4))
    assert a == b
    assert make_problems(100, seed=7, difficulty=(2, 4)) == a[:100]
    assert make_problems(300, seed=8, difficulty=(2, 4)) != a
    assert len({p.id for p in a}) == 300
    assert {len(p.operators) for p in a} == {2, 3, 4}
    assert all(len(p.operators) == 3 for p in make_problems(50, seed=1, difficulty=3))
    excluded = {p.id for p in a[:50]}
    assert not excluded & {p.id for p in make_problems(300, seed=7, difficulty=(2, 4), exclude=excluded)}


@pytest.mark.parametrize("difficulty", [0, (3, 2), 99, (0, 2)])
def test_make_problems_rejects_bad_difficulty(difficulty):
    with pytest.raises(ValueError, match="difficulty"):
        make_problems(5, seed=0, difficulty=difficulty)


def test_make_problems_rejects_impossible_request():
    # 1 operation on small operand ranges has < 99*99*2 + 99*8 distinct problems: asking for more must fail loudly
    with pytest.raises(ValueError, match="distinct"):
        make_problems(30_000, seed=0, difficulty=1)


def test_problem_rejects_bad_fields():
    with pytest.raises(ValueError, match="operands"):
        Problem((1, 2), ("+", "+"))
    with pytest.raises(ValueError, match="operators"):
        Problem((1, 2), ("/",))


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_splits_are_fixed_sized_and_disjoint(level):
    splits = load_splits(level=level)
    assert {k: len(v) for k, v in splits.items()} == {k: s.size for k, s in SPLITS.items()}
    ids = {k: {p.id for p in v} for k, v in splits.items()}
    assert all(len(ids[k]) == len(splits[k]) for k in splits)  # no duplicates inside a split
    assert not ids["train"] & ids["validation"]
    assert not ids["train"] & ids["test"]
    assert not ids["validation"] & ids["test"]
    assert load_splits(level=level) == splits  # fixed
    lo, hi = LEVELS[level].difficulty
    assert all(lo <= len(p.operators) <= hi for v in splits.values() for p in v)
    assert max(max(p.operands) for v in splits.values() for p in v) == LEVELS[level].max_operand
    assert load_splits(n_train=10, level=level)["train"] == splits["train"][:10]
    for bad in (SPLITS["train"].size + 1, -1, "10", 2.0, True):
        with pytest.raises(ValueError, match=r"^n_train: expected 0\.\."):
            load_splits(n_train=bad, level=level)


def test_standard_level_is_the_default_and_unknown_levels_are_rejected():
    assert load_splits(n_train=5) == load_splits(n_train=5, level="standard")
    assert LEVELS["standard"].difficulty == DIFFICULTY
    with pytest.raises(ValueError, match="level"):
        load_splits(level="hard")
    with pytest.raises(ValueError, match="max_operand"):
        make_problems(3, seed=0, max_operand=1)


# ------------------------------------------------------------------------------------------ canonical chains

def test_example_chain_matches_the_documented_one():
    assert EXAMPLE.prompt == "Compute 37+58-21*3="
    assert [str(s) for s in solution_steps(EXAMPLE)] == ["37+58=95", "21*3=63", "95-63=32"]
    assert EXAMPLE.answer == 32


@settings(max_examples=60, deadline=None)
@given(problems_strategy())
def test_chain_evaluates_the_expression(problem):
    # Python's precedence for + - * (products first, then left to right) is the task's, so eval is an oracle.
    steps = solution_steps(problem)
    assert len(steps) == len(problem.operators)
    assert problem.answer == eval(problem.expression)
    assert all(eval(f"{s.left}{s.op}{s.right}") == s.result for s in steps)
    assert verify(problem, format_response(steps, problem.answer)) == 1.0


# --------------------------------------------------------------------------------------------------- verifier

@pytest.mark.parametrize("response, reward", [
    ("37+58=95; 21*3=63; 95-63=32; answer: 32", 1.0),                       # correct
    ("  37 + 58 = 95 ;21*3=63;95-63=32;  answer:32 \n", 1.0),               # extra whitespace is tolerated
    ("answer: 32", 1.0),                                                     # correct answer, no steps shown
    ("37+58=95; 21*3=63; 95-63=32; answer: 33", 0.5),                       # all 3 steps right, final wrong
    ("37+58=96; 21*3=63; 96-63=33; answer: 33", 0.5 * 1 / 3),               # propagated slip: 1 of 3 right
    ("21*3=63; 37+58=95; answer: 0", 0.5 * 2 / 3),                          # steps count in any order
    ("37+58=95; 37+58=95; 37+58=95; answer: 1", 0.5 * 1 / 3),               # a repeated step counts once
    ("1+1=2; answer: 7", 0.0),                                               # well-formed, nothing right
    ("37+58=95; 21*3=63; 95-63=32", 0.0),                                    # malformed: no answer segment
    ("37+58=95; 21*3=63; answer: 32; 95-63=32", 0.0),                       # malformed: answer not last
    ("37+58=95;; answer: 32", 0.0),                                          # malformed: empty segment
    ("37+58 95; answer: 32", 0.0),                                           # malformed: step without '='
    ("answer: 32 done", 0.0),                                                # malformed: trailing text
    ("answer: thirty-two", 0.0),                                             # malformed: not an integer
    ("", 0.0),                                                               # empty
    ("   \n ", 0.0),                                                         # whitespace only
])
def test_verify_scale_on_hand_written_examples(response, reward):
    assert verify(EXAMPLE, response) == pytest.approx(reward, abs=1e-12)


def test_parse_response_reads_negative_numbers():
    parsed = parse_response("5-63=-58; -58+3=-55; answer: -55")
    assert parsed is not None and parsed.answer == -55 and parsed.steps[1].left == -58
    with pytest.raises(ValueError, match="response"):
        parse_response(None)


# --------------------------------------------------------------------------------------------- demonstrations

@settings(max_examples=60, deadline=None)
@given(problems_strategy(), st.integers(0, 10**6))
def test_each_error_kind_gets_its_documented_reward(problem, seed):
    rng = random.Random(seed)
    assert verify(problem, demonstration(problem, 0.0, rng)) == 1.0
    assert verify(problem, corrupted_demonstration(problem, "wrong_final", rng)) == 0.5
    wrong = corrupted_demonstration(problem, "wrong_intermediate", rng)
    parsed = parse_response(wrong)
    # The slip propagates to the answer.  A slip that makes a result negative, later written as a right operand
    # ("14+-6"), leaves the step grammar (right operands are unsigned): then the chain does not parse at all.
    if parsed is None:
        assert re.search(r"[+\-*]-\d", wrong), wrong
    else:
        assert parsed.answer != problem.answer
    assert verify(problem, wrong) < 0.5
    assert verify(problem, corrupted_demonstration(problem, "malformed", rng)) == 0.0
    with pytest.raises(ValueError, match="kind"):
        corrupted_demonstration(problem, "typo", rng)


def test_a_slip_to_a_negative_right_operand_does_not_parse():
    # Found by the property above: 5+5+4+1*4 with seed 0 writes "1*4=-6; 14+-6=8".
    problem = make_problems(1, 2, 4, max_operand=9)[0]
    rng = random.Random(0)
    demonstration(problem, 0.0, rng), corrupted_demonstration(problem, "wrong_final", rng)
    wrong = corrupted_demonstration(problem, "wrong_intermediate", rng)
    assert "14+-6" in wrong and parse_response(wrong) is None and verify(problem, wrong) == 0.0


def test_demonstration_error_rate_is_controlled():
    problems = load_splits(n_train=500)["train"]
    rng = random.Random(0)
    n, rate = 4000, 0.3
    wrong = sum(verify(p, demonstration(p, rate, rng)) < 1.0 for p in (problems * 8)[:n])
    # Binomial(n, 0.3): sd = sqrt(0.3*0.7/4000) ≈ 0.0072; 0.03 is > 4 sd.
    assert abs(wrong / n - rate) < 0.03
    assert all(verify(p, demonstration(p, 1.0, rng)) < 1.0 for p in problems[:200])
    with pytest.raises(ValueError, match="error_rate"):
        demonstration(problems[0], 1.5, rng)


def test_demonstration_is_reproducible():
    problems = load_splits(n_train=50)["train"]
    a = [demonstration(p, 0.5, random.Random(3)) for p in problems]
    assert a == [demonstration(p, 0.5, random.Random(3)) for p in problems]
    assert set(ERROR_KINDS) == {"wrong_intermediate", "wrong_final", "malformed"}


# -------------------------------------------------------------------------------------------------- tokenizer

def test_tokenizer_roundtrips_every_character(tmp_path):
    from transformers import AutoTokenizer

    tok = build_task_tokenizer()
    rng = random.Random(0)
    problems = load_splits(n_train=300)["train"]
    texts = [p.prompt for p in problems] + [demonstration(p, 0.5, rng) for p in problems] + [ALPHABET]
    assert set("".join(texts)) <= set(ALPHABET)
    plain, special = tok(texts, add_special_tokens=False)["input_ids"], tok(texts)["input_ids"]
    for text, ids, with_bos in zip(texts, plain, special):
        assert len(ids) == len(text) and tok.unk_token_id not in ids  # one token per character, none unknown
        assert with_bos == [tok.bos_token_id] + ids  # BOS prepended, no EOS appended
    assert tok.batch_decode(plain) == texts
    assert len(set(tok(ALPHABET, add_special_tokens=False)["input_ids"])) == len(ALPHABET)
    assert tok.chat_template is None
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]

    build_task_tokenizer(save_dir=str(tmp_path))
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert reloaded(texts)["input_ids"] == special
    assert reloaded.batch_decode(reloaded(texts, add_special_tokens=False)["input_ids"]) == texts
    assert (reloaded.pad_token, reloaded.bos_token, reloaded.eos_token) == ("<pad>", "<bos>", "<eos>")
    assert len(reloaded) == len(tok) == len(ALPHABET) + 4

"""A verifiable multi-step reasoning task: integer arithmetic with a worked chain of steps.

No pretrained weights or hub datasets are reachable here, so the LLM runs use a task whose reward is computed
exactly by :func:`verify`; every claim about a trained policy (accuracy, reward) is then checkable.

**Problem.** An expression of ``n_ops`` binary operations on positive integers with the usual precedence
(``*`` before ``+``/``-``, left to right), e.g. ``37+58-21*3``.  The first factor of every product term is in
1..99, the other factors in 2..9 (so products stay short), additive terms are in 1..99 (the ``standard``
level; the ``easy`` level of :data:`LEVELS` uses 1..9 and 2-3 operations, for CPU-scale runs).

**Prompt / response** (plain strings, no chat template; the model sees BOS + prompt + response + EOS)::

    prompt   = "Compute 37+58-21*3="
    response = "37+58=95; 21*3=63; 95-63=32; answer: 32"

**Canonical chain** (:func:`solution_steps`): read the terms left to right keeping a running total; a product
term is multiplied out factor by factor (one step per ``*``), then combined with the running total (one step
per ``+``/``-``).  A problem with ``n_ops`` operations has exactly ``n_ops`` steps.

**Verifier scale** (:func:`verify`), exact and documented:

* **0.0** — malformed: after stripping, the response must be ``step; step; ...; answer: N`` where every
  ``;``-separated segment but the last is a step ``a OP b = c`` (integers, ``a``/``c`` may be negative,
  OP in ``+ - *``, spaces around tokens allowed) and the last is ``answer: N``.  Empty text, a missing or
  misplaced answer segment, an empty segment (``;;``) or any other text makes the response malformed.
* **1.0** — well-formed and ``N`` equals the true value (the steps are not checked then).
* **0.5 × m / n** — well-formed with a wrong ``N``, where ``n`` = number of canonical steps and ``m`` = how
  many canonical steps appear verbatim (same operands, operator and result) among the response's steps,
  matched as a multiset (order-free, each response step used once).  So a wrong final answer earns at most
  0.5, and a chain whose error propagates loses the steps downstream of the error.

Examples (all tested in ``tests/test_llm_task.py``) for ``37+58-21*3`` (= 32):
``"37+58=95; 21*3=63; 95-63=32; answer: 32"`` → 1.0; ``"37+58=95; 21*3=63; 95-63=32; answer: 33"`` → 0.5;
``"37+58=96; 21*3=63; 96-63=33; answer: 33"`` → 0.5 × 1/3; ``"37+58=95; 21*3=63"`` → 0.0 (no answer).

**Splits** (:data:`SPLITS`, :func:`load_splits`): per level, fixed seeds, generated test → validation →
train, each excluding the problems of the splits before it, so the three are disjoint by construction.  Problems are
identified by their expression string (:attr:`Problem.id`).

**Tokenizer** (:func:`build_task_tokenizer`): one token per character over :data:`ALPHABET` plus
``<pad> <bos> <eos> <unk>``, a ``PreTrainedTokenizerFast`` built offline with the ``tokenizers`` library; it
prepends BOS (never appends EOS) and decodes by plain concatenation, so encode/decode is lossless on the
alphabet.
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "Problem",
    "Step",
    "ParsedResponse",
    "SplitSpec",
    "Level",
    "LEVELS",
    "SPLITS",
    "DIFFICULTY",
    "ERROR_KINDS",
    "ALPHABET",
    "SPECIAL_TOKENS",
    "make_problems",
    "load_splits",
    "solution_steps",
    "format_response",
    "demonstration",
    "corrupted_demonstration",
    "parse_response",
    "verify",
    "build_task_tokenizer",
]

OPERATORS = ("+", "-", "*")
# Probabilities of drawing each operator: enough products to make multi-step chains, mostly short numbers.
_OPERATOR_WEIGHTS = (0.4, 0.3, 0.3)
MAX_OPS = 8


@dataclass(frozen=True)
class Problem:
    """An arithmetic expression ``operands[0] operators[0] operands[1] ...`` (usual precedence)."""

    operands: tuple[int, ...]
    operators: tuple[str, ...]

    def __post_init__(self):
        if len(self.operands) != len(self.operators) + 1:
            raise ValueError(f"operands: expected len(operators) + 1 = {len(self.operators) + 1} operands, "
                             f"got {len(self.operands)}")
        if not self.operators:
            raise ValueError("operators: a problem needs at least one operation")
        for op in self.operators:
            if op not in OPERATORS:
                raise ValueError(f"operators: {op!r} is not one of {OPERATORS}")
        for a in self.operands:
            if not isinstance(a, int) or a < 0:
                raise ValueError(f"operands: expected non-negative ints, got {a!r}")

    @property
    def expression(self) -> str:
        parts = [str(self.operands[0])]
        for op, b in zip(self.operators, self.operands[1:]):
            parts += [op, str(b)]
        return "".join(parts)

    @property
    def id(self) -> str:
        """Unique identifier: the expression itself."""
        return self.expression

    @property
    def prompt(self) -> str:
        return f"Compute {self.expression}="

    @property
    def answer(self) -> int:
        return solution_steps(self)[-1].result


@dataclass(frozen=True)
class Step:
    """One worked step ``left op right = result``."""

    left: int
    op: str
    right: int
    result: int

    def __str__(self) -> str:
        return f"{self.left}{self.op}{self.right}={self.result}"


def _apply(left: int, op: str, right: int) -> int:
    return left + right if op == "+" else left - right if op == "-" else left * right


def _terms(problem: Problem) -> list[tuple[str | None, list[int]]]:
    """Split into additive terms: [(sign operator or None for the first term, factors)]."""
    terms: list[tuple[str | None, list[int]]] = [(None, [problem.operands[0]])]
    for op, b in zip(problem.operators, problem.operands[1:]):
        if op == "*":
            terms[-1][1].append(b)
        else:
            terms.append((op, [b]))
    return terms


def _chain(problem: Problem, corrupt_step: int | None = None, delta: int = 0) -> list[Step]:
    """The canonical chain; if ``corrupt_step`` is given, that step's result is off by ``delta`` and the
    error propagates (later steps compute correctly from the wrong value)."""
    steps: list[Step] = []

    def record(left: int, op: str, right: int) -> int:
        result = _apply(left, op, right)
        if len(steps) == corrupt_step:
            result += delta
        steps.append(Step(left, op, right, result))
        return result

    total: int | None = None
    for sign, factors in _terms(problem):
        value = factors[0]
        for f in factors[1:]:
            value = record(value, "*", f)
        total = value if total is None else record(total, sign, value)
    return steps


def solution_steps(problem: Problem) -> list[Step]:
    """The canonical worked chain (see module docstring); ``len == len(problem.operators)``."""
    return _chain(problem)


def format_response(steps: list[Step], answer: int | str) -> str:
    """``"s1; s2; ...; answer: N"``."""
    return "; ".join([str(s) for s in steps] + [f"answer: {answer}"])


# ------------------------------------------------------------------------------------------------- generator

def _difficulty_range(difficulty: int | tuple[int, int]) -> tuple[int, int]:
    lo, hi = (difficulty, difficulty) if isinstance(difficulty, int) else tuple(difficulty)
    if not (1 <= lo <= hi <= MAX_OPS):
        raise ValueError(f"difficulty: expected a number of operations (or a (lo, hi) range) within "
                         f"1..{MAX_OPS}, got {difficulty!r}")
    return lo, hi


def _random_problem(rng: random.Random, n_ops: int, max_operand: int) -> Problem:
    operators = tuple(rng.choices(OPERATORS, weights=_OPERATOR_WEIGHTS, k=n_ops))
    operands = [rng.randint(1, max_operand)]
    for op in operators:
        # A factor after '*' is 2..9, so a product term is (1..99) * (2..9) * ...: results stay a few digits.
        operands.append(rng.randint(2, min(9, max_operand)) if op == "*" else rng.randint(1, max_operand))
    return Problem(tuple(operands), operators)


def make_problems(n: int, seed: int, difficulty: int | tuple[int, int] = 3, *, max_operand: int = 99,
                  exclude: frozenset[str] | set[str] = frozenset()) -> list[Problem]:
    """``n`` distinct problems, deterministic in ``seed``; the number of operations is ``difficulty`` or drawn
    uniformly from the inclusive range ``difficulty = (lo, hi)``; additive terms and first factors are in
    1..``max_operand``, later factors in 2..min(9, ``max_operand``).  Problems whose id is in ``exclude`` are
    skipped.  Prefix-stable: ``make_problems(m, s)`` is the first ``m`` items of ``make_problems(n, s)`` for
    ``m <= n`` (same ``exclude``)."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected a non-negative int, got {n!r}")
    if not isinstance(max_operand, int) or max_operand < 2:
        raise ValueError(f"max_operand: expected an int >= 2, got {max_operand!r}")
    lo, hi = _difficulty_range(difficulty)
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[Problem] = []
    misses = 0  # consecutive draws that were duplicates or excluded
    while len(out) < n:
        problem = _random_problem(rng, rng.randint(lo, hi), max_operand)
        if problem.id in seen or problem.id in exclude:
            misses += 1
            if misses > 5_000:
                raise ValueError(f"n: could not draw {n} distinct problems at difficulty {difficulty!r} "
                                 f"(got {len(out)}); the problem space is (nearly) exhausted")
            continue
        misses = 0
        seen.add(problem.id)
        out.append(problem)
    return out


@dataclass(frozen=True)
class SplitSpec:
    seed: int
    size: int


@dataclass(frozen=True)
class Level:
    difficulty: tuple[int, int]
    max_operand: int


# Two fixed task levels.  "standard" (the GPU runs): 2-4 operations on numbers up to 99, so prompts differ in
# how hard they are and μ's reward varies across prompts.  "easy" (CPU-scale runs): 2-3 operations on
# single digits, whose arithmetic a sub-1M-parameter model picks up within minutes on a CPU.
LEVELS: dict[str, Level] = {"standard": Level(difficulty=(2, 4), max_operand=99),
                            "easy": Level(difficulty=(2, 3), max_operand=9),
                            # the real pretrained instruct model (nca_lab.llm.real_model): one operation on numbers
                            # up to 120, where SmolLM2-135M is right often enough (measured: ~19 % of samples) for
                            # its K samples to differ; 1-2 operations left 80 % of the training split at 2
                            # operations, which it almost never solves (1 %)
                            "chat": Level(difficulty=(1, 1), max_operand=120),
                            # the v2 CPU study (llm/study/cpu_v2.yaml): 4-6 operations on single digits, so chains
                            # are 4-6 steps long and a ~1M-parameter μ makes slips often enough for its K samples
                            # to differ (its greedy accuracy and reward spread are recorded by the base stage)
                            "multi": Level(difficulty=(4, 6), max_operand=9)}
DIFFICULTY = LEVELS["standard"].difficulty
SPLITS: dict[str, SplitSpec] = {  # the same seeds and sizes at every level
    "test": SplitSpec(seed=20_002, size=1_000),
    "validation": SplitSpec(seed=20_001, size=500),
    "train": SplitSpec(seed=20_000, size=20_000),
}
_SPLIT_ORDER = ("test", "validation", "train")  # each split excludes the ones generated before it


@lru_cache(maxsize=16)
def _split(name: str, level: str) -> tuple[Problem, ...]:
    exclude: set[str] = set()
    for earlier in _SPLIT_ORDER[:_SPLIT_ORDER.index(name)]:
        exclude |= {p.id for p in _split(earlier, level)}
    spec, lv = SPLITS[name], LEVELS[level]
    return tuple(make_problems(spec.size, spec.seed, lv.difficulty, max_operand=lv.max_operand,
                               exclude=frozenset(exclude)))


def load_splits(n_train: int | None = None, level: str = "standard") -> dict[str, list[Problem]]:
    """The fixed ``train`` / ``validation`` / ``test`` splits of a :data:`LEVELS` entry (disjoint; sizes and
    seeds in :data:`SPLITS`).  ``n_train`` (at most ``SPLITS["train"].size``) takes a prefix of train."""
    if level not in LEVELS:
        raise ValueError(f"level: expected one of {sorted(LEVELS)}, got {level!r}")
    size = SPLITS["train"].size
    bad_type = not isinstance(n_train, int) or isinstance(n_train, bool)  # "10" or True: not a count
    if n_train is not None and (bad_type or not 0 <= n_train <= size):
        raise ValueError(f"n_train: expected 0..{size}, got {n_train!r}")
    train = _split("train", level)
    return {"train": list(train[:n_train] if n_train is not None else train),
            "validation": list(_split("validation", level)),
            "test": list(_split("test", level))}


# -------------------------------------------------------------------------------------------- demonstrations

ERROR_KINDS = ("wrong_intermediate", "wrong_final", "malformed")
_DELTAS = (-10, -2, -1, 1, 2, 10)  # typical slips: off by one, two, or a carry


def corrupted_demonstration(problem: Problem, kind: str, rng: random.Random) -> str:
    """A demonstration with one error of the given kind:

    * ``wrong_intermediate``: one step's result is off by a small nonzero delta and the error propagates, so
      the final answer is wrong too (every later factor is ≥ 2, so the error never cancels) — reward < 0.5 (a
      slip that makes a result negative, later written as a right operand, e.g. ``14+-6``, leaves the step
      grammar: such a chain does not parse and scores 0);
    * ``wrong_final``: every step is right, the answer line is off — reward exactly 0.5;
    * ``malformed``: the answer segment is missing, or a step lost its ``=``, or the text is cut mid-chain —
      reward 0.
    """
    steps = solution_steps(problem)
    delta = rng.choice(_DELTAS)
    if kind == "wrong_intermediate":
        wrong = _chain(problem, corrupt_step=rng.randrange(len(steps)), delta=delta)
        return format_response(wrong, wrong[-1].result)
    if kind == "wrong_final":
        return format_response(steps, steps[-1].result + delta)
    if kind == "malformed":
        text = format_response(steps, steps[-1].result)
        how = rng.randrange(3)
        if how == 0:  # no answer segment
            return "; ".join(str(s) for s in steps)
        if how == 1:  # a step without '='
            j = rng.randrange(len(steps))
            garbled = [str(s).replace("=", " ") if i == j else str(s) for i, s in enumerate(steps)]
            return "; ".join(garbled + [f"answer: {steps[-1].result}"])
        # cut inside the chain, before the answer's digits
        return text[:rng.randrange(1, text.rindex(":") + 1)]
    raise ValueError(f"kind: expected one of {ERROR_KINDS}, got {kind!r}")


def demonstration(problem: Problem, error_rate: float, rng: random.Random) -> str:
    """With probability ``1 - error_rate`` the canonical chain, else a :func:`corrupted_demonstration` whose
    kind is drawn uniformly from :data:`ERROR_KINDS`.  ``rng`` is a :class:`random.Random` (the only source of
    randomness, so demonstrations are reproducible)."""
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error_rate: expected a probability in [0, 1], got {error_rate!r}")
    if rng.random() >= error_rate:
        steps = solution_steps(problem)
        return format_response(steps, steps[-1].result)
    return corrupted_demonstration(problem, rng.choice(ERROR_KINDS), rng)


# -------------------------------------------------------------------------------------------------- verifier

_INT = r"-?\d{1,18}"
_STEP_RE = re.compile(rf"({_INT})\s*([+\-*])\s*(\d{{1,18}})\s*=\s*({_INT})")
_ANSWER_RE = re.compile(rf"answer\s*:\s*({_INT})")


@dataclass(frozen=True)
class ParsedResponse:
    steps: tuple[Step, ...]
    answer: int


def parse_response(response: str) -> ParsedResponse | None:
    """The steps and final answer of a well-formed response, or None if malformed (grammar in the module
    docstring)."""
    if not isinstance(response, str):
        raise ValueError(f"response: expected a str, got {type(response).__name__}")
    segments = [s.strip() for s in response.strip().split(";")]
    answer = _ANSWER_RE.fullmatch(segments[-1])
    if answer is None:
        return None
    steps = []
    for segment in segments[:-1]:
        m = _STEP_RE.fullmatch(segment)
        if m is None:
            return None
        steps.append(Step(int(m[1]), m[2], int(m[3]), int(m[4])))
    return ParsedResponse(tuple(steps), int(answer[1]))


def verify(problem: Problem, response: str) -> float:
    """Reward in [0, 1] on the scale of the module docstring: 1.0 correct answer (well-formed); 0.5 × (fraction
    of canonical steps present) for a well-formed wrong answer; 0.0 malformed."""
    parsed = parse_response(response)
    if parsed is None:
        return 0.0
    reference = solution_steps(problem)
    if parsed.answer == reference[-1].result:
        return 1.0
    matched = sum((Counter(reference) & Counter(parsed.steps)).values())
    return 0.5 * matched / len(reference)


# ------------------------------------------------------------------------------------------------- tokenizer

# Every character a prompt or response of this task uses, plus the rest of the ASCII letters and a little
# punctuation so that any free text a model emits still round-trips.
ALPHABET = string.digits + "+-*=;: \n().," + string.ascii_letters
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}


def build_task_tokenizer(save_dir: str | None = None):
    """Character-level ``PreTrainedTokenizerFast``: ids 0..3 are ``<pad> <bos> <eos> <unk>``, then one id per
    character of :data:`ALPHABET`.  Encoding with special tokens prepends BOS only; decoding concatenates.
    No chat template.  If ``save_dir`` is given, ``save_pretrained(save_dir)`` (reload with
    ``AutoTokenizer.from_pretrained(save_dir)``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values())
    vocab = {tok: i for i, tok in enumerate(specials + list(ALPHABET))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one piece per char
    backend.decoder = decoders.Fuse()  # join pieces without separators
    bos = SPECIAL_TOKENS["bos_token"]
    backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                           special_tokens=[(bos, vocab[bos])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False,
                                        model_max_length=512, **SPECIAL_TOKENS)
    if save_dir is not None:
        tokenizer.save_pretrained(save_dir)
    return tokenizer

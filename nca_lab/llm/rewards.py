"""Reward functions of on-policy training (``python -m nca_lab.llm.train --online --reward SPEC``).

A reward function is any callable ``(prompts, responses, rows) -> list[float]``: three lists of the same length N
(one entry per sampled response, prompt-major: prompt i's K responses are entries i·K .. i·K + K − 1), where
``prompts[n]`` is the prompt as the data gives it (a string or a message list), ``responses[n]`` the sampled text
(EOS removed) and ``rows[n]`` the prompt's whole data row (a dict: any extra field the reward needs, e.g. the
reference answer). It returns N finite numbers. An optional attribute ``max_reward`` (a float) is the reward of a
fully correct response: the ``accuracy`` metric counts responses reaching it (default 1.0).

``SPEC`` is a built-in name (:data:`BUILTIN_REWARDS`) or ``module:function`` (imported when the run starts, so the
module must be importable: installed or on ``PYTHONPATH``). The library imports no experiment: a built-in name is
only a ``module:function`` string resolved at run time.

A spec that does not resolve is bad input (:class:`ValueError`, exit code 2); a reward function that raises, or
returns something other than N finite numbers, stops training with :class:`RewardError` (a ValueError: exit code 2),
one line naming the function, the step and what was wrong.
"""

from __future__ import annotations

import importlib
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["BUILTIN_REWARDS", "RewardError", "resolve_reward", "score_responses", "max_reward"]

# Short names of the built-in rewards: each a module:function string, resolved at run time.
BUILTIN_REWARDS = {
    "arithmetic": "nca_lab.llm.study.online_reward:arithmetic_reward",
}


class RewardError(ValueError):
    """The reward function failed at run time (raised, wrong length, non-finite value): like bad input, the CLI
    prints the one-line message and exits with code 2; no final model is saved."""


def resolve_reward(spec: str) -> tuple[Callable[..., Sequence[float]], str]:
    """``(callable, name)`` for ``--reward SPEC``; ValueError (bad input) when it does not resolve."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"--reward: expected a built-in name ({', '.join(BUILTIN_REWARDS)}) or module:function, "
                         f"got {spec!r}")
    target = BUILTIN_REWARDS.get(spec, spec)
    if ":" not in target:
        raise ValueError(f"--reward {spec!r}: not a built-in reward ({', '.join(BUILTIN_REWARDS)}) and not of the "
                         "form module:function")
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--reward {spec!r}: expected module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or the module failing while it is imported
        raise ValueError(f"--reward {spec!r}: cannot import module {module_name!r} ({type(e).__name__}: {e}); is it "
                         "installed or on PYTHONPATH?") from e
    fn: Any = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ValueError(f"--reward {spec!r}: module {module_name!r} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ValueError(f"--reward {spec!r}: {attr!r} is not callable ({type(fn).__name__})")
    return fn, spec


def max_reward(fn) -> float:
    """The reward of a fully correct response: ``fn.max_reward`` if the function declares one, else 1.0."""
    value = getattr(fn, "max_reward", 1.0)
    return float(value)


def score_responses(fn, name: str, prompts: Sequence, responses: Sequence[str], rows: Sequence[dict], *,
                    step: int) -> list[float]:
    """``fn(prompts, responses, rows)`` checked: N finite numbers, else :class:`RewardError` (one line)."""
    n = len(responses)
    where = f"reward function {name!r} at step {step}"
    try:
        values = fn(list(prompts), list(responses), list(rows))
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise RewardError(f"{where} raised {type(e).__name__}: {first}") from e
    try:
        values = list(values)
    except TypeError:
        raise RewardError(f"{where} returned {type(values).__name__}, expected a list of {n} numbers") from None
    if len(values) != n:
        raise RewardError(f"{where} returned {len(values)} values for {n} responses (expected one per response)")
    out = []
    for i, v in enumerate(values):
        if hasattr(v, "item") and callable(v.item):  # numpy / torch scalars
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise RewardError(f"{where} returned a non-number for response {i}: {v!r}")
        v = float(v)
        if not math.isfinite(v):
            raise RewardError(f"{where} returned {v} for response {i} (rewards must be finite)")
        out.append(v)
    return out

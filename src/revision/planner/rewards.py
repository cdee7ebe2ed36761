"""Rewards for planner completions: plain callables `fn(completions, **kwargs) -> list[float]`.

One set serves both training paths (the embedded GRPO trainer and TRL's `GRPOTrainer`, which
passes extra dataset columns as keyword arguments). A completion is a string, or a chat
message list whose last message's `content` is the text.

- `format_reward`: 1.0 when the completion is exactly one `<think>…</think>` block followed by
  only tool indices, with no repeats and only live tools; else 0.0 (several think blocks, text
  after the answer, duplicates are what reward hacking tried first).
- `answer_reward` (graded, the paper's r_ans): 2.0 for the reference sequence exactly, 1.0 for
  the reference set in another order, 0.0 otherwise. The answer is read leniently (after the
  last `</think>` if any) so that the "without format reward" ablation still gets a signal, but
  duplicates and indices outside the live tool list always earn 0. "List every tool" earns 0
  unless every tool is the reference: it is simply the wrong set.
- `binary_answer_reward`: 1.0 for the exact sequence, else 0.0 (the paper's ablation).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from revision.tools.grammar import THINK_CLOSE, PlanError, parse_completion

Reward = Callable[..., list[float]]
_INDEX = re.compile(r"\(\s*(\d+)\s*\)")


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or the last message of a chat completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        if isinstance(content, list):  # multimodal message parts
            return "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return str(content or "")
    return ""


def _per_sample(value: Any, n: int) -> list[Any]:
    if isinstance(value, list | tuple) and len(value) == n and n > 0:
        first = value[0]
        if isinstance(first, list | tuple | set | frozenset | str) or first is None:
            return list(value)
    return [value] * n


def _live(value: Any) -> set[int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return set(range(1, value + 1))
    return {int(v) for v in value}


def answer_of(text: str) -> list[int] | None:
    """Tool indices after the last `</think>` (or in the whole text); None if there are
    words other than indices there.

    >>> answer_of("<think>x</think> (2) (6)")
    [2, 6]
    >>> answer_of("(3) because cheaper") is None
    True
    """
    tail = text.rsplit(THINK_CLOSE, 1)[-1]
    if re.search(r"[^\s()\d]", tail):
        return None
    return [int(i) for i in _INDEX.findall(tail)]


def format_reward(completions: Sequence[Any], live: Any = None, **kwargs: Any) -> list[float]:
    """1.0 for a well-formed completion, else 0.0.

    >>> format_reward(["<think>cheap</think> (2)", "<think>a</think><think>b</think> (2)"])
    [1.0, 0.0]
    >>> format_reward(["<think>x</think> (2) (2)", "(2)"])
    [0.0, 0.0]
    """
    lives = _per_sample(live, len(completions))
    out = []
    for completion, lv in zip(completions, lives, strict=True):
        try:
            parse_completion(completion_text(completion), _live(lv))
            out.append(1.0)
        except PlanError:
            out.append(0.0)
    return out


def _graded(predicted: list[int] | None, reference: Sequence[int], live: set[int] | None) -> float:
    if not predicted or len(set(predicted)) != len(predicted):
        return 0.0
    if live is not None and any(i not in live for i in predicted):
        return 0.0
    reference = [int(i) for i in reference]
    if predicted == reference:
        return 2.0
    if set(predicted) == set(reference) and len(predicted) == len(reference):
        return 1.0
    return 0.0


def answer_reward(
    completions: Sequence[Any], answer: Any = None, live: Any = None, **kwargs: Any
) -> list[float]:
    """Graded answer reward against the reference `answer` (a list of indices per sample).

    >>> answer_reward(["<think>x</think> (2) (6)", "<think>x</think> (6) (2)",
    ...                "<think>x</think> (2)", "<think>x</think> (2) (2) (6)"],
    ...               answer=[[2, 6]] * 4)
    [2.0, 1.0, 0.0, 0.0]
    >>> answer_reward(["<think>x</think> (1) (2) (3)"], answer=[[1, 2, 3]], live=[[1, 2]])
    [0.0]
    """
    if answer is None:
        raise ValueError("answer_reward needs the reference `answer` column")
    answers = _per_sample(answer, len(completions))
    lives = _per_sample(live, len(completions))
    return [
        _graded(answer_of(completion_text(c)), ref, _live(lv))
        for c, ref, lv in zip(completions, answers, lives, strict=True)
    ]


def binary_answer_reward(
    completions: Sequence[Any], answer: Any = None, live: Any = None, **kwargs: Any
) -> list[float]:
    """1.0 for the exact reference sequence, else 0.0 (the paper's binary ablation).

    >>> binary_answer_reward(["<think>x</think> (6) (2)"], answer=[[2, 6]])
    [0.0]
    """
    graded = answer_reward(completions, answer=answer, live=live)
    return [1.0 if g == 2.0 else 0.0 for g in graded]


REWARDS: dict[str, Reward] = {
    "format": format_reward,
    "answer": answer_reward,
    "binary_answer": binary_answer_reward,
}


def total_reward(
    completions: Sequence[Any],
    rewards: Sequence[Reward] = (format_reward, answer_reward),
    **kwargs: Any,
) -> list[float]:
    """The sum of `rewards` per completion (the paper: r_format + r_ans).

    >>> total_reward(["<think>x</think> (2)"], answer=[[2]])
    [3.0]
    """
    totals = [0.0] * len(completions)
    for fn in rewards:
        for i, r in enumerate(fn(completions, **kwargs)):
            totals[i] += r
    return totals

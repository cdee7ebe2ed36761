"""The plan grammar: `<think>…</think> (1) (3) (5)`, parsed and printed in one place.

Dependency-light on purpose (the standard library and `revision.errors` only): the planner's
reward functions, its decoders and the online service import it on every request, and none of
them should pay for networkx, the component registry or torch.

Two readers, for two kinds of text:

- `parse_indices` reads a plan a person wrote ("(1) (3) (5)", "1, 3"): forgiving about
  spacing, strict about content (unknown words, repeats and non-numbers are errors).
- `parse_completion` reads what a planner model generated: exactly one think block, then only
  tool indices. It is the contract the format reward and the service both enforce, so a model
  cannot earn a reward for text the service would reject.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from revision.errors import InputError

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_TOKEN = re.compile(r"\(\s*([^()]*?)\s*\)")
_THINK = re.compile(r"<think>(.*?)</think>", re.S)
_COMPLETION = re.compile(r"^\s*<think>(?P<think>.*?)</think>(?P<answer>.*)$", re.S)
_ANSWER = re.compile(r"^\s*(?:\(\s*\d+\s*\)\s*)*$")


class PlanError(InputError):
    """A plan that cannot be read or run: bad syntax, unknown tool, cycle, missing input."""


@dataclass(frozen=True)
class Completion:
    """A planner's output: the thinking and the ordered tool indices."""

    thinking: str
    tools: tuple[int, ...]

    def __str__(self) -> str:
        return format_completion(self.thinking, self.tools)


def format_indices(tools: Iterable[int]) -> str:
    """`(1) (3) (5)`.

    >>> format_indices([1, 3, 5])
    '(1) (3) (5)'
    """
    return " ".join(f"({int(i)})" for i in tools)


def format_completion(thinking: str, tools: Iterable[int]) -> str:
    """The planner's output format: one think block, then the tool indices.

    >>> format_completion("dark photo; ask", [8])
    '<think>dark photo; ask</think> (8)'
    """
    thinking = " ".join(thinking.replace(THINK_OPEN, " ").replace(THINK_CLOSE, " ").split())
    answer = format_indices(tools)
    return f"{THINK_OPEN}{thinking}{THINK_CLOSE}" + (f" {answer}" if answer else "")


def parse_indices(text: str) -> list[int]:
    """Tool indices of a hand-written plan; a leading `<think>…</think>` is ignored.

    >>> parse_indices("<think>dark photo; ask</think> (1) (3) (5)")
    [1, 3, 5]
    >>> parse_indices("2, 6")
    [2, 6]
    """
    body = _THINK.sub(" ", text or "")
    tokens = _TOKEN.findall(body)
    if not tokens and re.fullmatch(r"\s*\d+(\s*[,\s]\s*\d+)*\s*", body):
        tokens = re.findall(r"\d+", body)
    elif re.search(r"[^\W_]", _TOKEN.sub(" ", body).replace("->", " ").replace("→", " ")):
        extra = " ".join(_TOKEN.sub(" ", body).split())
        raise PlanError(
            f"plan {text!r}: unexpected text {extra!r}; write a plan as tool indices: (1) (3) (5)"
        )
    if not tokens:
        raise PlanError(f"plan {text!r} names no tools; write it as tool indices: (1) (3) (5)")
    out: list[int] = []
    for t in tokens:
        if not t.isdigit() or int(t) < 1:
            raise PlanError(f"plan {text!r}: ({t}) is not a tool index (a positive number)")
        if int(t) in out:
            raise PlanError(f"plan {text!r}: tool ({t}) appears twice")
        out.append(int(t))
    return out


def parse_completion(text: str, live: Collection[int] | None = None) -> Completion:
    """A planner's completion, checked: exactly one think block first, then only `(i)` tokens,
    no repeats and (when `live` is given) only indices of live tool-list entries. An empty
    answer is allowed: "no tool helps" is a valid plan.

    >>> parse_completion("<think>cheap items exist</think> (2) (6)")
    Completion(thinking='cheap items exist', tools=(2, 6))
    >>> parse_completion("<think>a</think><think>b</think> (2)")
    Traceback (most recent call last):
    ...
    revision.tools.grammar.PlanError: completion has 2 think blocks; exactly one is allowed
    """
    text = text or ""
    blocks = text.count(THINK_OPEN)
    if blocks != 1 or text.count(THINK_CLOSE) != 1:
        raise PlanError(
            f"completion has {max(blocks, text.count(THINK_CLOSE))} think blocks; "
            "exactly one is allowed"
        )
    m = _COMPLETION.match(text)
    if m is None:
        raise PlanError("completion must start with <think>…</think>")
    answer = m.group("answer")
    if not _ANSWER.match(answer):
        extra = " ".join(_TOKEN.sub(" ", answer).split())[:80]
        raise PlanError(f"after </think> only tool indices may follow, found {extra!r}")
    tools = [int(t) for t in re.findall(r"\d+", answer)]
    seen: set[int] = set()
    for i in tools:
        if i in seen:
            raise PlanError(f"tool ({i}) appears twice in the answer")
        seen.add(i)
        if i < 1 or (live is not None and i not in live):
            raise PlanError(f"tool ({i}) is not a live entry of the tool list")
    return Completion(" ".join(m.group("think").split()), tuple(tools))


def format_tool_list(entries: Iterable[tuple[int, str, str]]) -> str:
    """The planner's view of the tool list: `(index) title: description`, one a line.

    >>> print(format_tool_list([(1, "Price range segmentation", "cheaper or dearer")]))
    (1) Price range segmentation: cheaper or dearer
    """
    return "\n".join(f"({i}) {title}: {' '.join(desc.split())}" for i, title, desc in entries)


def dedupe(tools: Sequence[int]) -> list[int]:
    """Indices in first-seen order, repeats dropped (mined signals often name a tool twice).

    >>> dedupe([2, 6, 2, 3])
    [2, 6, 3]
    """
    return list(dict.fromkeys(int(t) for t in tools))

"""Preference-guided interaction: one clarifying question, options drawn from the results.

When a photo is ambiguous (dark, blurred, a colour between two), the results spread over
several values of some attribute. The question asks about the attribute that splits them most
(entropy) and that the photo settles least (the attribute heads' confidence), offering first
the values the top designs come in (a user who photographed a navy jumper may want it in
black), then those common among the candidates, each with how many products it leads to.
`answer()` re-runs the search with the chosen value as a refinement.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from revision.errors import InputError
from revision.search._base import QuestionCue
from revision.tools._base import Component, ToolContext, ToolStage
from revision.tools.builtin._common import Attribute, rows_of
from revision.tools.builtin.summary import entropy
from revision.tools.info import Info

if TYPE_CHECKING:
    from revision.search._base import Query, SearchResponse
    from revision.tools.executor import PlanExecutor

QUESTION_ATTRIBUTES = ("colour", "category", "pattern", "index_group")
_WORDING = {
    "colour": "Which colour are you looking for?",
    "category": "Which kind of product are you looking for?",
    "pattern": "Which pattern are you looking for?",
    "index_group": "Who is it for?",
    "department": "Which department?",
}


class PreferenceQuestion(Component):
    name = "preference_question"
    title = "Preference-guided interaction"
    description = (
        "Ask the user one question that resolves an ambiguous photo (which colour, which "
        "type, who it is for), with options drawn from the results; the answer re-runs the "
        "search refined by the chosen option. Input: optionally the attribute to ask about. "
        "Output: a question with options."
    )
    stage = ToolStage.INTERACTION
    keywords = ("ask", "question", "preference", "clarify", "choose", "which")

    def run(
        self,
        ctx: ToolContext,
        attribute: Attribute | None = None,
        max_options: int = 8,
        depth: int = 30,
    ) -> None:
        """Add a clarifying question cue.

        Args:
            attribute: ask about this attribute instead of the one that splits the results most.
            max_options: at most this many options.
            depth: how many candidates the options are drawn from.
        """
        cat = ctx.catalog
        pool = ctx.search.candidates[: max(depth, ctx.top_k)] or ctx.search.results
        if not pool:
            ctx.notes["skipped"] = "no results"
            return
        rows = rows_of(ctx, pool)
        # the other variants of the top designs: what the photographed design comes in
        groups = [int(g) for g in dict.fromkeys(cat.group[rows[:3]]) if cat.group_names[g]]
        design_rows = np.concatenate([cat.group_rows(g) for g in groups]) if groups else rows[:0]
        rows_all = np.concatenate([design_rows, rows])
        attribute = attribute or self._most_ambiguous(ctx, rows_all)
        codes = cat.codes[attribute]
        counts = Counter(int(c) for c in codes[rows_all] if c >= 0)
        first = [int(c) for c in dict.fromkeys(codes[design_rows]) if c >= 0]
        ranked = first + [c for c, _ in counts.most_common() if c not in first]
        options = [cat.vocab[attribute][c] for c in ranked[:max_options]]
        if len(options) < 2:
            ctx.notes["skipped"] = f"the results agree on {attribute}"
            return
        ctx.search.cues.append(
            QuestionCue(
                attribute=attribute,
                text=_WORDING.get(attribute, f"Which {attribute}?"),
                options=options,
                counts=[counts[cat.code(attribute, o)] for o in options],
            )
        )

    @staticmethod
    def _most_ambiguous(ctx: ToolContext, rows: np.ndarray) -> str:
        """The attribute the results split on most (entropy) and the photo settles least
        (1 - confidence of the query's own value)."""
        cat = ctx.catalog
        seen = ctx.query_info.attributes()
        best, best_score = QUESTION_ATTRIBUTES[0], -1.0
        for attr in QUESTION_ATTRIBUTES:
            h = entropy([int(c) for c in cat.codes[attr][rows] if c >= 0])
            score = h * (1.0 - seen.get(attr, (None, 0.0))[1])
            if score > best_score + 1e-9:
                best, best_score = attr, score
        return best

    def from_info(self, info: Info) -> dict[str, Any]:
        return {"attribute": info.mentioned[0]} if info.mentioned else {}


def answer(
    executor: PlanExecutor, query: Query, question: QuestionCue | dict[str, Any], choice: str
) -> SearchResponse:
    """Re-run the search for `query` refined by the option the user chose (keeping the
    product type when the photo shows it clearly).

    `question` is the cue `PreferenceQuestion` produced; `choice` must be one of its options.
    """
    from dataclasses import replace

    from pydantic import ValidationError

    from revision.tools.dag import Plan, PlanStep

    if isinstance(question, dict):
        try:
            question = QuestionCue.model_validate(question)
        except ValidationError:
            raise InputError(
                "answer() needs a question cue (type 'question' with an attribute and options)"
            ) from None
    options = question.options
    if choice not in options:
        raise InputError(f"{choice!r} is not an option; options: {', '.join(options)}")
    tools = executor.tools
    step = PlanStep(
        index=tools.index_of("search_refinement"),
        component="search_refinement",
        title="answer",
        inputs={question.attribute: choice, "same": ["category"]},
    )
    fresh = replace(query, facts={}, vector=query.vector, image=query.image)
    return executor.run(fresh, Plan([step], source=f"answer {question.attribute}={choice}"))

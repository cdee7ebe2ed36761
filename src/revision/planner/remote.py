"""A planner behind an OpenAI-compatible endpoint: the TRL-trained model served by vLLM or SGLang.

The request is rendered exactly as the TRL path trains it (`trl_backend.serve_messages`: the
tool list, the query photo, the results' metadata lines as delimited untrusted data), sent
through the project's chat client, and the answer is constrained to the plan grammar where the
server supports it: a GBNF grammar (llama.cpp), or a regular expression (vLLM's and SGLang's
structured outputs). The reply is then parsed strictly anyway; garbage is a `PlanError`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from revision.chat import ChatClient
from revision.errors import ConfigError
from revision.planner.trl_backend import serve_messages
from revision.tools.grammar import Completion, PlanError, parse_completion

CONSTRAINTS = ("gbnf", "regex", "none")


def plan_gbnf(live: Collection[int]) -> str:
    """A llama.cpp grammar: one think block, then live tool indices.

    >>> print(plan_gbnf([2, 6]).splitlines()[0])
    root ::= "<think>" [^<]* "</think>" (" (" idx ")")*
    """
    alternatives = " | ".join(f'"{i}"' for i in sorted(live)) or '"0"'
    return f'root ::= "<think>" [^<]* "</think>" (" (" idx ")")*\nidx ::= {alternatives}\n'


def plan_regex(live: Collection[int]) -> str:
    r"""The same constraint as a regular expression (vLLM / SGLang structured outputs).

    >>> plan_regex([2, 6])
    '<think>[^<]*</think>( \\((2|6)\\))*'
    """
    alternatives = "|".join(str(i) for i in sorted(live)) or "0"
    return rf"<think>[^<]*</think>( \(({alternatives})\))*"


@dataclass
class RemoteConfig:
    model: str = "default"
    max_tokens: int = 160
    images: bool = True  # send photos (False for a text-only model)
    constraint: str = "gbnf"  # how the server is told the grammar

    def __post_init__(self) -> None:
        if self.constraint not in CONSTRAINTS:
            raise ConfigError(f"constraint={self.constraint!r}; valid: {', '.join(CONSTRAINTS)}")


class RemotePlanner:
    """Implements the planner backend interface over HTTP (`plan_request`)."""

    def __init__(
        self,
        client: ChatClient,
        tools: str | Iterable[tuple[int, str, str]],
        toollist_digest: str,
        config: RemoteConfig | None = None,
    ):
        self.client, self.tools = client, tools
        self.config = config or RemoteConfig()
        self.version = f"remote:{self.config.model}"
        self.toollist_digest = toollist_digest

    def messages(self, request) -> list[dict]:
        results = [
            {"image": "", "title": title, "price": price}
            for title, price in zip(request.titles, request.prices, strict=False)
        ]
        meta = {"image": request.image or "query", "results": results}
        if self.config.images and request.image:
            meta["results"] = [
                {**r, "image": path}
                for r, path in zip(results, request.result_images, strict=False)
            ]
            return serve_messages(meta, self.tools)
        # text-only: the same rendering with the photos left out
        messages = serve_messages(
            {**meta, "results": [{**r, "image": "-"} for r in results]},
            self.tools,
            image_url=lambda ref: "",
        )
        user = messages[1]["content"]
        text = "".join(p.get("text", "") for p in user if p["type"] == "text")
        return [messages[0], {"role": "user", "content": re.sub(r"\n{3,}", "\n\n", text)}]

    def plan_request(self, request, live: Collection[int]) -> Completion:
        c = self.config
        extra = {}
        if c.constraint == "gbnf":
            extra = {"grammar": plan_gbnf(live)}
        elif c.constraint == "regex":
            extra = {"structured_outputs": {"regex": plan_regex(live)}}
        reply = self.client.complete(
            self.messages(request), model=c.model, max_tokens=c.max_tokens, extra=extra
        )
        text = reply.text.strip()
        if "</think>" not in text and text.startswith("<think>"):
            raise PlanError(f"the reply stopped inside the thinking ({len(text)} characters)")
        return parse_completion(text, set(live))

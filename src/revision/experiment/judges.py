"""Relevance judges: does a product shown for a request serve the user's need? (Table I)

A judge is a plug-in with one method, `judge(requests, pairs) -> [True | False | None]`, None
for a pair it could not judge. Two ship:

- `truth` (evaluation only): the simulator's own predicate on the request's hidden intent
  (`revision.sim.intents.satisfies`, the rule that decides what its users click), with the
  response's cues (a metadata cue serves an `info` need, a question a `preference` one);
- `llm`: a language model behind any OpenAI-compatible server, through the project's one chat
  client (retries, a JSON-schema reply validated by pydantic, an on-disk reply cache). Its
  prompt and rubric are `prompts/relevance.en.txt`; catalog and user text go in as a delimited,
  escaped data block only, never as instructions.

Trade-off: the LLM judge sees one product at a time, blind to which system showed it and at
which rank, so one verdict serves both systems when they show the same product (and a rerun is
served by the cache); it cannot weigh a product against the others on the page.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
from pydantic import BaseModel, BeforeValidator, ConfigDict

from revision.errors import ConfigError, InputError
from revision.progress import progress
from revision.tables import EVENTS, TRUTH
from revision.warehouse import Warehouse

GRADES = ("highly relevant", "partly relevant", "not relevant")
RELEVANT = "highly relevant"  # the paper's "highly relevant product"
PROMPT = "relevance.en.txt"
_NAMES = {"category": "type", "index_group": "audience"}  # as the product's fields are named
_SECTION = re.compile(r"^\[(system|user)\]\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Pair:
    """One product shown for one request, with the cues of the response that showed it."""

    request_id: str
    product_id: str
    cues: tuple[dict, ...] = ()


# -- judges --------------------------------------------------------------------------------------


class RelevanceJudge:
    """Says, per pair, whether the product is relevant to the request's need: True, False, or
    None (unjudged). `requests` has one row per request (`request_id`, `user_id`, `image`,
    `image_hash`, ...)."""

    name = "base"

    def judge(self, requests: pd.DataFrame, pairs: Sequence[Pair]) -> list[bool | None]:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


class TruthJudge(RelevanceJudge):
    """The simulator's predicate on each request's hidden intent (evaluation only): the rule
    that decides what its users click. `world` gives the predicates' thresholds (default: the
    shipped world)."""

    name = "truth"

    def __init__(self, warehouse: Warehouse, *, world: str | Path | None = None):
        from revision.catalog.schema import load_products
        from revision.sim.intents import PredicateParams, product_rows
        from revision.sim.world import load_world

        if not warehouse.exists(TRUTH):
            raise InputError(
                f"--judge truth needs {TRUTH} (the simulator's hidden intents), and "
                f"{warehouse.root} has none: use --judge llm for logs without truth"
            )
        self.params = PredicateParams.from_world(load_world(world))
        self.rows = product_rows(load_products(warehouse))
        truth = warehouse.read_pandas(
            TRUTH, columns=["request_id", "intent", "target_product_id", "preferred"]
        ).drop_duplicates("request_id")
        truth = truth.astype(object).where(truth.notna(), None)
        self.truth = {r["request_id"]: r for r in truth.to_dict("records")}
        self.counts: Counter[str] = Counter()

    def judge(self, requests: pd.DataFrame, pairs: Sequence[Pair]) -> list[bool | None]:
        from revision.sim.intents import UserState, satisfies

        out: list[bool | None] = []
        for pair in pairs:
            t = self.truth.get(pair.request_id)
            target = self.rows.get(t["target_product_id"]) if t else None
            if t is None or t["intent"] is None or target is None:
                self.counts["unjudged"] += 1
                out.append(None)
                continue
            hit = self.rows.get(pair.product_id)
            user = UserState(t["preferred"])
            ok = hit is not None and satisfies(
                t["intent"], target, hit, pair.cues, user, self.params
            )
            self.counts["judged"] += 1
            out.append(bool(ok))
        return out

    def stats(self) -> dict[str, Any]:
        return {"pairs": sum(self.counts.values()), **self.counts}


def _clip(limit: int):
    return BeforeValidator(lambda v: v.strip()[:limit] if isinstance(v, str) else v)


class Verdict(BaseModel):
    """The LLM judge's reply for one pair."""

    model_config = ConfigDict(extra="ignore")
    grade: Annotated[
        Literal["highly relevant", "partly relevant", "not relevant"],
        BeforeValidator(lambda v: v.strip().lower() if isinstance(v, str) else v),
    ]
    reason: Annotated[str, _clip(200)] = ""

    @property
    def relevant(self) -> bool:
        return self.grade == RELEVANT


def verdict_schema() -> dict[str, Any]:
    # No maxLength on the reason: llama.cpp turns it into a slow grammar; max_tokens bounds it.
    return {
        "type": "object",
        "properties": {
            "grade": {"type": "string", "enum": list(GRADES)},
            "reason": {"type": "string"},
        },
        "required": ["grade", "reason"],
        "additionalProperties": False,
    }


def load_prompt(path: str | Path | None = None):
    """The judge's prompt: the shipped `prompts/relevance.en.txt`, or a file in its format (a
    `[system]` and a `[user]` section, the user one holding `{{DATA}}`)."""
    from revision.mining.openai_backend import Prompt

    if path:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"judge prompt {path} not found")
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        text = files("revision.experiment").joinpath("prompts", PROMPT).read_text("utf-8")
        source = f"<shipped prompts/{PROMPT}>"
    parts = _SECTION.split(text)
    sections = dict(zip(parts[1::2], (p.strip() for p in parts[2::2]), strict=True))
    if set(sections) != {"system", "user"} or "{{DATA}}" not in sections["user"]:
        raise ConfigError(
            f"{source}: a prompt needs a [system] and a [user] section, the user one with "
            "{{DATA}}"
        )
    return Prompt(sections["system"], sections["user"])


class LLMJudge(RelevanceJudge):
    """A language model behind an OpenAI-compatible server judges each distinct (request,
    product, what was shown beside it) once, blind to which system showed it.

    What goes in, as a delimited data block only (untrusted text, never instructions): what the
    photo shows by the attribute heads' reading (when they are trained; the photo itself with
    `images=True`, for a VLM), the user's own follow-ups (sorted, filtered, typed, answered),
    and the product's catalog fields with the cues shown about it. The reply is a `Verdict`
    (validated; relevant = "highly relevant"). A timeout, a refusal or a reply that stays
    unusable after the client's retries leaves the pair unjudged, counted by kind; a server that
    cannot be reached at all, or that refuses the request itself (an HTTP 4xx: a model name, a
    key), is one clear error. Replies are cached by the chat client (a rerun costs no tokens).
    """

    name = "llm"

    def __init__(
        self,
        warehouse: Warehouse,
        *,
        base_url: str = "",
        model: str = "",
        timeout_s: float | None = None,
        concurrency: int = 2,
        max_retries: int = 2,
        max_tokens: int = 96,
        images: bool = False,
        prompt: str | Path | None = None,
        settings=None,
        client=None,
    ):
        from revision.catalog.schema import load_products
        from revision.chat import ChatClient, ChatConfig
        from revision.settings import get_settings

        self.warehouse = warehouse
        self.prompt = load_prompt(prompt)
        self.images, self.max_tokens = images, max_tokens
        if client is None:
            config = ChatConfig.from_settings(
                settings or get_settings(),
                base_url=base_url,
                model=model,
                timeout_s=timeout_s,
                concurrency=concurrency,
                max_retries=max_retries,
            )
            client = ChatClient(config, warehouse.artifact_dir("cache", "llm"))
        self.client = client
        products = load_products(warehouse)
        products = products.astype(object).where(products.notna(), None)
        self.products = {r["product_id"]: r for r in products.to_dict("records")}
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []  # the first few reasons, for the report
        self._lock = threading.Lock()

    # -- what the judge sees -----------------------------------------------------------------------
    def request_facts(self, requests: pd.DataFrame) -> dict[str, dict[str, Any]]:
        """Per request: the photo's attributes (heads' reading, when trained) and the user's
        follow-ups."""
        facts: dict[str, dict[str, Any]] = {r: {} for r in requests["request_id"]}
        for rid, photo in self._photo_facts(requests).items():
            facts[rid]["photo"] = photo
        if self.warehouse.exists(EVENTS):
            events = self.warehouse.read_pandas(
                EVENTS, columns=["request_id", "ts", "kind", "value"]
            )
            events = events[events["request_id"].isin(list(facts))]
            events = events.sort_values(["request_id", "ts"])
            for rid, part in events.groupby("request_id", sort=False):
                facts[rid]["user_actions"] = [
                    {"kind": k, "value": v or ""}
                    for k, v in zip(part["kind"], part["value"], strict=True)
                ]
        return facts

    def _photo_facts(self, requests: pd.DataFrame) -> dict[str, dict[str, Any]]:
        from revision.vision.attributes import UNKNOWN
        from revision.vision.understanding import QueryUnderstanding

        understanding = QueryUnderstanding.for_warehouse(self.warehouse, cached=True)
        if understanding.heads is None:
            return {}
        photos = {
            r.request_id: understanding.photo(
                self.warehouse.resolve(r.image),
                key=r.image_hash if isinstance(r.image_hash, str) and r.image_hash else None,
            )
            for r in requests.itertuples()
        }
        understanding.read(list(photos.values()))
        out = {}
        for rid, photo in photos.items():
            if photo.error is not None:
                continue
            reading = photo.reading()
            out[rid] = {
                _NAMES.get(attr, attr): {"label": label, "p": round(p, 2)}
                for attr, (label, p) in reading.as_dict().items()
                if label != UNKNOWN
            }
        return out

    def product_facts(self, product_id: str, cues: Sequence[dict]) -> dict[str, Any]:
        row = self.products.get(product_id) or {}
        description = row.get("description") or ""
        product = {
            "title": row.get("title") or product_id,
            "type": row.get("category"),
            "colour": row.get("colour"),
            "pattern": row.get("pattern"),
            "audience": row.get("index_group"),
            "department": row.get("department"),
            "price": row.get("price"),
            "description": description[:300],
        }
        shown = [
            {k: v for k, v in c.items() if k not in ("type", "product_id")} | {"kind": c["type"]}
            for c in cues
            if c.get("product_id") == product_id and c.get("type") in ("metadata", "label")
        ]
        return {"product": product, **({"shown_with": shown} if shown else {})}

    def messages(self, request: dict[str, Any], product: dict[str, Any], image: str | None):
        from revision.mining.openai_backend import image_data_url

        data = {"search": request, **product}
        images = [image_data_url(image, 384)] if self.images and image else None
        return self.prompt.messages(data, images)

    # -- judging -----------------------------------------------------------------------------------
    def check_server(self) -> None:
        """One clear error when nothing answers at the server's address (before any pair)."""
        import httpx

        from revision.chat import ChatError

        try:
            self.client.http.get("/models", timeout=min(10.0, self.client.config.timeout_s))
        except (httpx.ConnectError, httpx.TimeoutException) as exc:
            raise ChatError(
                f"LLM judge: no server answers at {self.client.config.base_url} "
                f"({type(exc).__name__}): start one (e.g. `python -m llama_cpp.server --model "
                "FILE.gguf`) or pass --base-url"
            ) from None

    def verdict(self, messages: list[dict]) -> Verdict:
        reply, _ = self.client.structured(
            messages, Verdict, max_tokens=self.max_tokens, schema=verdict_schema()
        )
        return reply

    def judge(self, requests: pd.DataFrame, pairs: Sequence[Pair]) -> list[bool | None]:
        from revision.chat import ChatError, ChatHTTPError, ChatRefusal, ChatTimeout

        if not pairs:
            return []
        self.check_server()
        facts = self.request_facts(requests)
        images = dict(zip(requests["request_id"], requests["image"], strict=True))
        keyed: dict[tuple, list[int]] = {}
        inputs: dict[tuple, tuple] = {}
        for i, pair in enumerate(pairs):
            product = self.product_facts(pair.product_id, pair.cues)
            key = (pair.request_id, json.dumps(product, sort_keys=True, default=str))
            keyed.setdefault(key, []).append(i)
            if key not in inputs:
                image = images.get(pair.request_id)
                path = self.warehouse.resolve(image) if isinstance(image, str) else None
                image = str(path) if path is not None and path.is_file() else None
                inputs[key] = (facts.get(pair.request_id, {}), product, image)

        def one(key: tuple) -> bool | None:
            try:
                verdict = self.verdict(self.messages(*inputs[key]))
            except ChatHTTPError:
                raise  # the request itself is refused (model name, key): so would every pair be
            except ChatError as exc:
                kind = (
                    "timeout"
                    if isinstance(exc, ChatTimeout)
                    else "refusal"
                    if isinstance(exc, ChatRefusal)
                    else "reply"
                )
                self._failed(kind, str(exc))
                return None
            except Exception as exc:  # an unreadable photo, a broken connection, ...
                self._failed("error", f"{type(exc).__name__}: {exc}")
                return None
            with self._lock:
                self.counts.update(("judged", verdict.grade))
            return verdict.relevant

        keys = list(keyed)
        with ThreadPoolExecutor(max_workers=self.client.config.concurrency) as pool:
            results = list(
                progress(pool.map(one, keys), total=len(keys), description="judging relevance")
            )
        out: list[bool | None] = [None] * len(pairs)
        for key, result in zip(keys, results, strict=True):
            for i in keyed[key]:
                out[i] = result
        return out

    def _failed(self, kind: str, message: str) -> None:
        with self._lock:
            self.counts.update(("unjudged", f"unjudged_{kind}"))
            if len(self.errors) < 5:
                self.errors.append(message[:300])

    def stats(self) -> dict[str, Any]:
        usage = dict(self.client.usage)
        return {
            "judged_pairs": self.counts["judged"],  # distinct (request, product, cues about it)
            "unjudged_pairs": self.counts["unjudged"],
            "grades": {g: self.counts[g] for g in GRADES},
            "unjudged_by_kind": {
                k.removeprefix("unjudged_"): n
                for k, n in sorted(self.counts.items())
                if k.startswith("unjudged_")
            },
            "calls": usage.get("calls", 0),
            "cache_hits": usage.get("cache_hits", 0),
            "prompt_tokens": usage.get("prompt_tokens", 0),
            "completion_tokens": usage.get("completion_tokens", 0),
            "errors": list(self.errors),
            "model": self.client.config.model,
            "base_url": self.client.config.base_url,
        }

    def close(self) -> None:
        self.client.close()


JUDGES = {"truth": TruthJudge, "llm": LLMJudge}


def get_judge(name: str, warehouse: Warehouse, **options: Any) -> RelevanceJudge:
    if name not in JUDGES:
        raise InputError(f"unknown judge {name!r}; valid: {', '.join(JUDGES)}")
    return JUDGES[name](warehouse, **options)

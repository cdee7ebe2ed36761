"""The OpenAI-compatible analyst: a VLM for stage 1 and an LLM for stage 2, over HTTP.

Any server speaking `/v1/chat/completions` works (vLLM, SGLang, llama.cpp, DashScope): stage 1
sends the query photo and up to K product photos as data URLs with the request's data; stage 2
sends the stage-1 analysis, the product metadata top 10, the expert rules and the rules' hints.
Both replies are constrained by a JSON schema (OpenAI's `json_schema` response format, or
llama-cpp-python's `json_object` + `schema`, picked automatically) and validated again here.

Trade-off: the project's one generic chat client (`revision.chat`: httpx, retries, back-off,
concurrency limit, on-disk reply cache) instead of each vendor's SDK: the same code reaches every
server, and a rerun of a batch costs no tokens. Untrusted text (titles, descriptions, OCR) only ever
appears inside a delimited JSON data block whose `<`/`>` are escaped, under a system prompt that
says it is data; the output schema stays the same whatever the data says.
"""

from __future__ import annotations

import base64
import functools
import io
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from revision.chat import SCHEMA_STYLES, ChatClient, ChatConfig, ChatError, data_block
from revision.errors import ConfigError, MissingArtifactError
from revision.mining._base import (
    CANONICAL_ACTIONS,
    MAX_SIGNALS,
    Analysis,
    Analyst,
    MiningInput,
    Signal,
    config_from_options,
    describe_error,
)
from revision.mining.perception import ATTRS, Perception, metadata_top
from revision.mining.rules import load_rules
from revision.settings import Settings, get_settings
from revision.warehouse import Warehouse

LANGUAGES = ("en", "zh")
ACTION_MODES = ("canonical", "free")
_SECTION = re.compile(r"^\[(system|user)\]\s*$", re.MULTILINE)


@dataclass
class OpenAIConfig:
    """Options of the `openai` backend (`revision mine run --backend openai --option k=v`)."""

    base_url: str = ""  # default: the settings' llm_base_url ($REVISION_LLM_BASE_URL)
    api_key: str = ""  # default: the settings' llm_api_key ($REVISION_LLM_API_KEY)
    vision_model: str = "default"  # stage 1, e.g. Qwen2.5-VL-72B-Instruct
    reasoning_model: str = "default"  # stage 2, e.g. Qwen3-30B-A3B
    language: str = "en"  # prompt language: en or zh
    images: bool = True  # send photos as data URLs (False for a text-only model)
    max_product_images: int = 12
    max_results: int = 12  # results listed in the stage-1 data (K = 12)
    image_side: int = 384  # photos are shrunk to fit this square before encoding
    perception: bool = True  # add the attribute heads' readings when they are trained
    ocr: bool = False
    temperature: float = 0.0
    seed: int = 0
    timeout_s: float = 120.0
    max_retries: int = 2  # after the first attempt
    backoff_s: float = 0.5  # doubled per retry, with jitter
    concurrency: int = 4  # requests in flight at once
    max_tokens_stage1: int = 320
    max_tokens_stage2: int = 400
    actions: str = "canonical"  # constrain actions to the known list, or "free" text
    schema_style: str = "auto"
    cache: bool = True
    prompts: str = ""  # a folder with stage{1,2}.{en,zh}.txt to replace the shipped prompts
    rules: str = ""  # an expert rules file (default: the shipped rules)

    def __post_init__(self) -> None:
        for name, value, valid in (
            ("language", self.language, LANGUAGES),
            ("schema_style", self.schema_style, SCHEMA_STYLES),
            ("actions", self.actions, ACTION_MODES),
        ):
            if value not in valid:
                raise ConfigError(f"openai backend: {name}={value!r}; valid: {', '.join(valid)}")
        for name in ("concurrency", "max_tokens_stage1", "max_tokens_stage2", "image_side"):
            if getattr(self, name) < 1:
                raise ConfigError(f"openai backend: {name} must be at least 1")
        if self.max_retries < 0 or self.timeout_s <= 0 or self.backoff_s < 0:
            raise ConfigError(
                "openai backend: max_retries >= 0, timeout_s > 0 and backoff_s >= 0 are required"
            )
        if not 0 <= self.max_product_images <= 12 or not 1 <= self.max_results <= 12:
            raise ConfigError(
                "openai backend: max_product_images must be within 0-12 and max_results within "
                "1-12 (K = 12)"
            )


# -- output schemas ----------------------------------------------------------------------------
def _clip(limit: int):
    """Over-long text is clipped, not rejected: small models ramble inside valid JSON."""
    return BeforeValidator(lambda v: v.strip()[:limit] if isinstance(v, str) else v)


Short = Annotated[str, _clip(60)]
Sentence = Annotated[str, _clip(160)]


class _Query(BaseModel):
    model_config = ConfigDict(extra="ignore")
    category: Short = ""
    colour: Short = ""
    pattern: Short = ""
    text: Short = ""


class _Suggestion(BaseModel):
    model_config = ConfigDict(extra="ignore")
    action: Annotated[str, _clip(80), Field(min_length=1)]
    info: Annotated[str, _clip(80)] = ""


class Stage1Reply(BaseModel):
    model_config = ConfigDict(extra="ignore")
    query: _Query
    differences: Annotated[
        list[Sentence], BeforeValidator(lambda v: v[:4] if isinstance(v, list) else v)
    ] = []
    suggestions: Annotated[
        list[_Suggestion], BeforeValidator(lambda v: v[:4] if isinstance(v, list) else v)
    ] = []


class _Signal(BaseModel):
    model_config = ConfigDict(extra="ignore")
    action: Annotated[str, _clip(80), Field(min_length=1)]
    info: Annotated[str, _clip(80), Field(min_length=1)]


class Stage2Reply(BaseModel):
    model_config = ConfigDict(extra="ignore")
    thinking: Annotated[str, _clip(1200), Field(min_length=1)]
    signals: Annotated[
        list[_Signal],
        BeforeValidator(lambda v: v[:MAX_SIGNALS] if isinstance(v, list) else v),
        Field(min_length=1),
    ]


def _string(min_length: int = 0) -> dict[str, Any]:
    # No maxLength: llama.cpp turns it into a deep grammar that slows sampling a lot; lengths
    # are bounded by max_tokens and checked again by the reply models.
    return {"type": "string", "minLength": min_length} if min_length else {"type": "string"}


def stage1_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "query": {
                "type": "object",
                "properties": {k: _string() for k in ("category", "colour", "pattern", "text")},
                "required": ["category", "colour", "pattern", "text"],
                "additionalProperties": False,
            },
            "differences": {"type": "array", "items": _string(), "maxItems": 4},
            "suggestions": {
                "type": "array",
                "maxItems": 4,
                "items": {
                    "type": "object",
                    "properties": {"action": _string(1), "info": _string()},
                    "required": ["action", "info"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["query", "differences", "suggestions"],
        "additionalProperties": False,
    }


def stage2_schema(actions: list[str] | None) -> dict[str, Any]:
    action = {"type": "string", "enum": actions} if actions else _string(1)
    return {
        "type": "object",
        "properties": {
            "thinking": _string(1),
            "signals": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_SIGNALS,
                "items": {
                    "type": "object",
                    "properties": {"action": action, "info": _string(1)},
                    "required": ["action", "info"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["thinking", "signals"],
        "additionalProperties": False,
    }


# -- prompts -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prompt:
    system: str
    user: str  # holds the placeholder {{DATA}}

    def messages(self, data: dict[str, Any], images: list[str] | None = None) -> list[dict]:
        """Chat messages: the data block goes in as escaped JSON, images as data URLs."""
        text = self.user.replace("{{DATA}}", data_block(data))
        if images:
            content: Any = [{"type": "text", "text": text}] + [
                {"type": "image_url", "image_url": {"url": url}} for url in images
            ]
        else:
            content = text
        return [{"role": "system", "content": self.system}, {"role": "user", "content": content}]


def load_prompt(stage: int, language: str, folder: str | Path | None = None) -> Prompt:
    name = f"stage{stage}.{language}.txt"
    if folder:
        path = Path(folder) / name
        if not path.exists():
            raise ConfigError(f"prompt file {path} not found (need stage1/stage2 .en/.zh .txt)")
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        text = (
            files("revision.mining").joinpath("prompts").joinpath(name).read_text(encoding="utf-8")
        )
        source = f"<shipped prompts/{name}>"
    parts = _SECTION.split(text)
    sections = dict(zip(parts[1::2], (p.strip() for p in parts[2::2]), strict=True))
    if set(sections) != {"system", "user"} or "{{DATA}}" not in sections.get("user", ""):
        raise ConfigError(
            f"{source}: a prompt needs a [system] and a [user] section, "
            "the user one with {{DATA}}"
        )
    return Prompt(sections["system"], sections["user"])


@functools.lru_cache(maxsize=2048)
def image_data_url(path: str, side: int) -> str:
    """A photo shrunk to fit side x side, as a JPEG data URL (cached: products recur)."""
    from revision.vision.images import load_image

    image = load_image(path)
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


# -- the analyst -------------------------------------------------------------------------------
class OpenAIAnalyst(Analyst):
    name = "openai"

    def __init__(self, warehouse: Warehouse, *, settings: Settings | None = None, **options: Any):
        self.config = config_from_options(OpenAIConfig, options, "openai")
        c = self.config
        self.warehouse = warehouse
        self.rules = load_rules(c.rules or None)
        self.prompts = {s: load_prompt(s, c.language, c.prompts or None) for s in (1, 2)}
        actions = list(
            dict.fromkeys([*CANONICAL_ACTIONS, *(r.action for r in self.rules.rules.rules)])
        )
        self.actions = actions if c.actions == "canonical" else None
        self.schemas = {1: stage1_schema(), 2: stage2_schema(self.actions)}
        self.perception = None
        if c.perception:
            try:
                self.perception = Perception(warehouse, ocr=c.ocr)
            except MissingArtifactError:
                self.perception = None  # no attribute heads trained: the VLM sees on its own
        chat = ChatConfig.from_settings(
            settings or get_settings(),
            base_url=c.base_url,
            api_key=c.api_key,
            timeout_s=c.timeout_s,
            max_retries=c.max_retries,
            backoff_s=c.backoff_s,
            concurrency=c.concurrency,
            temperature=c.temperature,
            seed=c.seed,
            schema_style=c.schema_style,
            cache=c.cache,
        )
        self.client = ChatClient(chat, warehouse.artifact_dir("cache", "llm"))

    def stats(self) -> dict[str, Any]:
        return dict(self.client.usage)

    def close(self) -> None:
        self.client.close()

    # -- batch ---------------------------------------------------------------------------------
    def analyse(self, batch: list[MiningInput]) -> list[Analysis]:
        """Stage 1 for the whole batch, then stage 2: each stage is its own model (the VLM,
        the LLM), and a server that reuses the previous prompt's prefix (llama.cpp) sees the
        same system prompt call after call."""
        facts = self.perception.facts(batch) if self.perception else [{} for _ in batch]
        usages = [Counter() for _ in batch]
        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            first = list(pool.map(self._safely, ["stage1"] * len(batch), batch, facts, usages))
            return list(
                pool.map(self._safely, ["stage2"] * len(batch), batch, facts, usages, first)
            )

    def _safely(self, stage, item, facts, usage, stage1=None) -> Any:
        """One stage for one request; any failure becomes a failed Analysis (and stays one)."""
        if isinstance(stage1, Analysis):
            return stage1  # failed earlier
        if isinstance(facts, str):
            return Analysis.failed(item.request_id, "perception", facts)
        try:
            if stage == "stage1":
                return self.stage1(item, facts, usage)
            return self.stage2(item, facts, stage1, usage)
        except ChatError as exc:
            return Analysis.failed(item.request_id, stage, str(exc))
        except Exception as exc:  # an unreadable photo, a broken connection, …
            return Analysis.failed(item.request_id, stage, describe_error(exc))

    # -- stages --------------------------------------------------------------------------------
    def stage1_data(self, item: MiningInput, facts: dict[str, Any]) -> dict[str, Any]:
        tools: dict[str, Any] = {}
        if facts:
            tools["attributes"] = {
                a: {"label": facts.get(f"query.{a}"), "p": facts.get(f"query.{a}_p")} for a in ATTRS
            }
            tools["ocr_text"] = facts.get("query.text") or ""
            tools["photo_quality"] = {
                "blur": facts.get("query.blur"),
                "brightness": facts.get("query.brightness"),
                "low_quality": facts.get("query.low_quality"),
            }
        return {
            "tools": tools,
            "results": [
                {
                    "rank": r.rank,
                    "title": r.title,
                    "price": r.price,
                    "similarity": round(r.score, 3),
                    "type": r.category,
                    "colour": r.colour,
                    "pattern": r.pattern,
                }
                for r in item.results[: self.config.max_results]
            ],
        }

    def stage1(self, item: MiningInput, facts: dict[str, Any], usage: Counter) -> Stage1Reply:
        c = self.config
        images = None
        if c.images:
            images = [image_data_url(item.image, c.image_side)] + [
                image_data_url(r.image_path, c.image_side)
                for r in item.results[: c.max_product_images]
                if r.image_path
            ]
        messages = self.prompts[1].messages(self.stage1_data(item, facts), images)
        reply, raw = self.client.structured(
            messages,
            Stage1Reply,
            model=c.vision_model,
            max_tokens=c.max_tokens_stage1,
            schema=self.schemas[1],
        )
        usage.update(raw.usage)
        return reply

    def stage2_data(
        self, item: MiningInput, facts: dict[str, Any], stage1: Stage1Reply
    ) -> dict[str, Any]:
        # Only the rules whose conditions hold for this request: the others cannot apply, and
        # every prompt token costs (the full list is in the rules file, for the humans).
        fired = self.rules.rules.apply(facts) if facts else []
        return {
            "visual_analysis": stage1.model_dump(),
            "metadata_top10": metadata_top(item, facts) if facts else [],
            "expert_rules": [
                {"rule": rule.description or rule.name, "action": s.action, "info": s.info}
                for rule, s in fired
            ],
            "allowed_actions": self.actions or [],
            # What the logs say around the request (history, session, follow-ups with the
            # user's own text): untrusted data like the rest of the block.
            "user_context": item.context.as_facts() if item.context is not None else {},
        }

    def stage2(
        self, item: MiningInput, facts: dict[str, Any], stage1: Stage1Reply, usage: Counter
    ) -> Analysis:
        c = self.config
        messages = self.prompts[2].messages(self.stage2_data(item, facts, stage1))
        reply, raw = self.client.structured(
            messages,
            Stage2Reply,
            model=c.reasoning_model,
            max_tokens=c.max_tokens_stage2,
            schema=self.schemas[2],
        )
        usage.update(raw.usage)
        signals, seen = [], set()
        for s in reply.signals:
            key = (s.action.strip(), s.info.strip())
            if key not in seen and all(key):
                seen.add(key)
                signals.append(Signal(*key))
        return Analysis(
            request_id=item.request_id,
            thinking=reply.thinking.strip(),
            signals=signals,
            facts={"stage1": stage1.model_dump()},
            usage=dict(usage),
        )

"""Typed mining objects and the analyst plug-in contract.

An analyst turns a batch of no-click requests (query photo + up to K result products) into one
`Analysis` per request: a short thinking text and ordered `Action -> Info` signals. A request
it cannot analyse comes back as a failed `Analysis` (stage + reason) instead of an exception,
so one bad photo or one garbage model reply never stops a batch. Analysts are plug-ins: an
entry point in the group `revision.analysts` names a factory `f(warehouse, **options) ->
Analyst`; the built-ins are declared the same way in this project's pyproject.toml.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from revision.errors import InputError
from revision.logs.context import RequestContext

K = 12  # result products per query, as in the paper (§IV-A(a))
MAX_SIGNALS = 3  # per request: a plan built from more runs too many tools

# The canonical action texts of the embedded analyst. The clustering stage's shipped ontology
# is built around them: change one only together with `clustering/default_ontology.yaml`.
CANONICAL_ACTIONS = (
    "Refine search condition",
    "Supplement premium products",
    "Supplement cheaper products",
    "Show other colour variants",
    "Search by text description",
    "Summarise results",
    "Label target products",
    "Show material details",
    "Show care details",
    "Ask a preference question",
    "Show same type in another department",
)


@dataclass(frozen=True)
class Product:
    """One result product as the user saw it, with the catalog fields the analysts read."""

    product_id: str
    rank: int  # 1-based display position
    score: float  # similarity to the query
    title: str = ""
    price: float | None = None
    description: str = ""
    category: str | None = None
    colour: str | None = None
    pattern: str | None = None
    department: str | None = None
    index_group: str | None = None
    variant_group: str | None = None
    image_path: str | None = None


@dataclass(frozen=True)
class MiningInput:
    request_id: str
    image: str  # path of the query photo
    image_hash: str | None = None  # sha256 of its bytes when the log has it
    results: tuple[Product, ...] = ()
    context: RequestContext | None = None  # history, session, follow-ups, outcomes


@dataclass(frozen=True)
class Signal:
    action: str
    info: str
    confidence: float | None = None  # the embedded analyst's rule confidence; None from LLMs

    def __str__(self) -> str:
        return f"{self.action} -> {self.info}"


@dataclass
class Analysis:
    request_id: str
    thinking: str = ""
    signals: list[Signal] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # stage-1 facts, for inspection
    error: str | None = None  # set when the request could not be analysed
    stage: str | None = None  # where it failed: "input", "perception", "stage1", "stage2"
    usage: dict[str, int] = field(default_factory=dict)  # tokens spent, LLM backends only

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, request_id: str, stage: str, reason: str) -> Analysis:
        return cls(request_id=request_id, error=reason, stage=stage)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["signals"] = [asdict(s) for s in self.signals]
        return out


def describe_error(exc: BaseException) -> str:
    """One line for the errors table: library errors carry their message, others their type."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, InputError) else f"{type(exc).__name__}: {text}".rstrip(": ")


class Analyst:
    """Plug-in base: `analyse` one batch; a per-request failure is a failed `Analysis`."""

    name = "base"

    def analyse(self, batch: list[MiningInput]) -> list[Analysis]:
        out = []
        for item in batch:
            try:
                out.append(self.analyse_one(item))
            except Exception as exc:  # one bad request must not stop the batch
                out.append(Analysis.failed(item.request_id, "analysis", describe_error(exc)))
        return out

    def analyse_one(self, item: MiningInput) -> Analysis:
        raise NotImplementedError

    def prepare(self, inputs: Callable[[], list[MiningInput]], folder) -> dict[str, Any]:
        """One-time work over a whole run before its batches (e.g. fitting a calibration),
        saved under `folder` so that a resumed run and every worker reuse it; `inputs()`
        assembles the run's inputs when needed. Returns the options a worker's copy of the
        analyst needs to find that work (default: nothing to do)."""
        return {}

    def stats(self) -> dict[str, Any]:
        """Counters worth reporting after a run (tokens, cache hits, …)."""
        return {}

    def close(self) -> None:
        """Release clients and servers; the runner calls it once at the end."""


C = TypeVar("C")


def config_from_options(cls: type[C], options: dict[str, Any], backend: str) -> C:
    """A backend's config dataclass from `--option KEY=VALUE` pairs: unknown keys fail with
    the valid ones listed; strings become the field's type (`ocr=true`, `concurrency=8`)."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise InputError(
            f"unknown {backend} backend option(s) {', '.join(unknown)}; valid: {', '.join(known)}"
        )
    return cls(**{k: _coerce(backend, k, v, type(known[k].default)) for k, v in options.items()})


def _coerce(backend: str, key: str, value: Any, kind: type) -> Any:
    if not isinstance(value, str) or kind is str:
        return value
    try:
        if kind is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        return kind(value)
    except ValueError:
        raise InputError(
            f"{backend} backend option {key}={value!r}: expected {kind.__name__}"
        ) from None


AnalystFactory = Callable[..., Analyst]  # f(warehouse, **options) -> Analyst
ENTRY_POINT_GROUP = "revision.analysts"
# The built-ins' entry points (declared in pyproject.toml), used as they are when an install
# predates their declaration: one mechanism for built-ins and third parties alike.
BUILTIN_ENTRY_POINTS = {
    "embedded": "revision.mining.embedded:EmbeddedAnalyst",
    "openai": "revision.mining.openai_backend:OpenAIAnalyst",
}


class AnalystRegistry:
    """Analyst factories by backend name, filled from the `revision.analysts` entry points."""

    def __init__(self) -> None:
        self._factories: dict[str, AnalystFactory] = {}
        self._loaded = False
        self._lock = threading.RLock()
        self.plugin_errors: dict[str, str] = {}  # entry point -> why it failed to load

    def register(self, name: str, factory: AnalystFactory) -> AnalystFactory:
        """Make `factory(warehouse, **options)` available as backend `name`."""
        with self._lock:
            self._factories[name] = factory
        return factory

    def load_plugins(self) -> None:
        from importlib.metadata import EntryPoint, entry_points

        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            eps = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
            for name, value in BUILTIN_ENTRY_POINTS.items():
                eps.setdefault(name, EntryPoint(name, value, ENTRY_POINT_GROUP))
            for name, ep in eps.items():
                try:
                    self._factories.setdefault(name, ep.load())
                except Exception as exc:  # a broken plug-in must not take mining down
                    if ep.value in BUILTIN_ENTRY_POINTS.values():
                        raise
                    self.plugin_errors[ep.value] = f"{type(exc).__name__}: {exc}"
                    warnings.warn(
                        f"analyst plug-in {name} ({ep.value}) failed: {exc}", stacklevel=2
                    )

    def names(self) -> list[str]:
        self.load_plugins()
        return sorted(self._factories)

    def get(self, name: str, warehouse, **options) -> Analyst:
        """Build the analyst registered as `name`; unknown names list the valid ones."""
        self.load_plugins()
        if name not in self._factories:
            raise InputError(f"unknown mining backend {name!r}; valid: {', '.join(self.names())}")
        return self._factories[name](warehouse, **options)


_REGISTRY = AnalystRegistry()


def analysts() -> AnalystRegistry:
    """The process-wide analyst registry, plug-ins loaded."""
    _REGISTRY.load_plugins()
    return _REGISTRY


def get_analyst(name: str, warehouse, **options) -> Analyst:
    return analysts().get(name, warehouse, **options)

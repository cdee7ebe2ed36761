"""Recent requests, so that events (clicks, orders, answers) can be checked and served.

An event names a request by id; the service must know who made it, when (its log day), what was
shown (a click on anything else is refused), and for an answer, the question and the query
embedding to re-run the search. Several workers must share this, since the event may reach
another worker than the request did: `RedisRecent` keeps a hash per request with a TTL;
`LocalRecent` is the single-worker default. Embeddings are kept only for requests that asked a
question (the only ones an answer can refine), as float16: 2.5 kB each.
"""

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np


@dataclass
class Recent:
    request_id: str
    user_id: str
    ts_ms: int
    arm: str
    act: bool
    top_k: int
    shown: list[str] = field(default_factory=list)  # product ids shown, refinements included
    question: dict | None = None  # the question cue, when one was shown
    source: str = ""
    embedding: np.ndarray | None = None  # raw query embedding, kept with a question only

    def meta(self) -> str:
        d = asdict(self)
        d.pop("embedding")
        return json.dumps(d)


class RecentStore(ABC):
    @abstractmethod
    def put(self, item: Recent) -> None: ...

    @abstractmethod
    def get(self, request_id: str) -> Recent | None: ...

    def add_shown(self, request_id: str, product_ids: list[str]) -> None:
        item = self.get(request_id)
        if item is not None:
            shown = list(dict.fromkeys([*item.shown, *product_ids]))
            self.put(replace(item, shown=shown))


class LocalRecent(RecentStore):
    """In-process, least recently used out beyond `max_entries`, expired after `ttl_s`."""

    def __init__(self, ttl_s: float = 3600.0, max_entries: int = 200_000, clock=time.monotonic):
        self.ttl_s, self.max_entries, self.clock = ttl_s, max_entries, clock
        self._items: OrderedDict[str, tuple[float, Recent]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, item: Recent) -> None:
        with self._lock:
            self._items.pop(item.request_id, None)
            self._items[item.request_id] = (self.clock(), item)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def get(self, request_id: str) -> Recent | None:
        with self._lock:
            found = self._items.get(request_id)
            if found is None:
                return None
            if self.clock() - found[0] > self.ttl_s:
                del self._items[request_id]
                return None
            return found[1]


class RedisRecent(RecentStore):
    """Shared by every worker: `{prefix}{request_id}` → hash {meta: JSON, emb: float16 bytes}."""

    def __init__(self, client: Any, ttl_s: float = 3600.0, prefix: str = "revision:req:"):
        self.client, self.ttl_s, self.prefix = client, ttl_s, prefix

    def put(self, item: Recent) -> None:
        mapping: dict[str, Any] = {"meta": item.meta()}
        if item.embedding is not None:
            mapping["emb"] = np.asarray(item.embedding, np.float16).tobytes()
        key = self.prefix + item.request_id
        pipe = self.client.pipeline()
        pipe.delete(key)
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, max(1, int(self.ttl_s)))
        pipe.execute()

    def get(self, request_id: str) -> Recent | None:
        found = self.client.hgetall(self.prefix + request_id)
        if not found:
            return None
        item = Recent(**json.loads(found[b"meta"]))
        if b"emb" in found:
            item.embedding = np.frombuffer(found[b"emb"], np.float16).astype(np.float32)
        return item


def compact(embedding: np.ndarray | None) -> np.ndarray | None:
    """The embedding as a local store keeps it (float16, as Redis does: the same answers)."""
    if embedding is None:
        return None
    return np.asarray(embedding, np.float16).astype(np.float32)

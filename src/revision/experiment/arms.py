"""Arms of an experiment: who is served by which variant, and the reference planners.

Users are assigned to arms by a stable hash of their id (and the experiment's salt), so a user
stays in one arm for the whole test, and every arm shares the service's trigger rule and cap:
the arms differ only in what they do with a triggered request. Besides the baseline (act on
nothing) and REVISION (the published planner), three reference planners bracket what a planner
can be worth:

- `always_all`: every live tool on every triggered request (a planner that learned nothing
  but "run everything");
- `random_plan`: as many tools as REVISION plans on average, drawn at random;
- `oracle`: evaluation only: it hears the hidden intent from the simulator and runs the one
  tool that serves it (the ceiling of this world).

Each has the planner interface the service calls (`plan(PlanRequest) -> PlanOutcome`).
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Sequence

from revision.planner.online import PlanOutcome, PlanRequest
from revision.tools.grammar import Completion

REFERENCE_ARMS = ("always_all", "random_plan", "oracle")


def assign(user_id: str, arms: Sequence[str], weights: Sequence[float], salt: str = "") -> str:
    """The arm of `user_id`: a stable hash into the cumulative weights.

    >>> arms = ["baseline", "revision"]
    >>> assign("u1", arms, [0.5, 0.5]) == assign("u1", arms, [0.5, 0.5])
    True
    """
    if len(arms) != len(weights) or not arms:
        raise ValueError(f"{len(arms)} arms and {len(weights)} weights: give one weight per arm")
    digest = hashlib.blake2b(f"{salt}:{user_id}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64 * sum(weights)
    total = 0.0
    for arm, w in zip(arms, weights, strict=True):
        total += w
        if u < total:
            return arm
    return arms[-1]


class _Reference:
    """A planner that does not read the request (it only picks tools)."""

    def __init__(self, name: str, toollist_digest: str):
        self.version = name
        self.toollist_digest = toollist_digest

    def plan(self, request: PlanRequest) -> PlanOutcome:
        return PlanOutcome(Completion(self.version, tuple(self.tools(request))), 0.0)

    def tools(self, request: PlanRequest) -> list[int]:
        raise NotImplementedError


class AllTools(_Reference):
    def __init__(self, live: Sequence[int], toollist_digest: str):
        super().__init__("always_all", toollist_digest)
        self.live = sorted(live)

    def tools(self, request: PlanRequest) -> list[int]:
        return list(self.live)


class RandomPlan(_Reference):
    def __init__(self, live: Sequence[int], toollist_digest: str, mean_tools: float, seed: int = 0):
        super().__init__("random_plan", toollist_digest)
        self.live, self.mean = sorted(live), max(1.0, mean_tools)
        self.rng = random.Random(seed)
        self.lock = threading.Lock()

    def tools(self, request: PlanRequest) -> list[int]:
        with self.lock:
            k = int(self.mean) + (self.rng.random() < self.mean - int(self.mean))
            return self.rng.sample(self.live, min(k, len(self.live)))


class Oracle(_Reference):
    """Runs the tool that serves the request's hidden intent (evaluation only); among several,
    the one whose title names what the user holds back (care rather than material)."""

    def __init__(self, serves: dict[int, set[str]], titles: dict[int, str], toollist_digest: str):
        super().__init__("oracle", toollist_digest)
        self.serves, self.titles = serves, titles
        self.hidden: dict[str, dict] = {}  # request_id -> truth, filled by the simulator
        self.lock = threading.Lock()

    def reveal(self, request_id: str, truth: dict) -> None:
        with self.lock:
            self.hidden[request_id] = truth

    def tools(self, request: PlanRequest) -> list[int]:
        with self.lock:
            truth = self.hidden.pop(request.request_id or "", {})
        intent, preferred = truth.get("intent"), str(truth.get("preferred") or "").lower()
        serving = [i for i, intents in sorted(self.serves.items()) if intent in intents]
        named = [i for i in serving if preferred and preferred in self.titles.get(i, "").lower()]
        return (named or serving)[:1]

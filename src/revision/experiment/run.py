"""Run an A/B test on simulated traffic through the online service (`revision experiment run`).

Users are split between arms by a stable hash; one simulation plays every user, and each
request goes to its user's arm (`Router`), so the arms see the same world, the same photos and
the same kinds of users, and differ only in what they do with triggered requests. Every arm is
the real service (`RevisionService`): the same trigger rule and daily cap, its own decision
cache; the baseline arm decides and logs but never acts. The treatment arm runs in-process, or,
with `http=True`, behind a real `revision serve` on loopback (the same results either way).

The simulator writes the logs (requests with each arm and the service's decision, impressions
with the tool that placed each result, clicks, orders, follow-ups); `analyze` reads them back.
The experiment's days follow the warehouse's last logged day, so earlier traffic never mixes in.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from revision.errors import InputError
from revision.experiment.arms import REFERENCE_ARMS, AllTools, Oracle, RandomPlan, assign
from revision.search._base import SearchRequest, SearchResponse
from revision.settings import Settings, get_settings
from revision.tables import REQUESTS
from revision.warehouse import Warehouse

ARMS = ("baseline", "revision", *REFERENCE_ARMS)


@dataclass
class ExperimentConfig:
    world: str | Path | None = None
    arms: tuple[str, ...] = ("baseline", "revision")
    split: tuple[float, ...] | None = None  # per arm; default: equal
    days: int = 7
    users: int = 2000
    requests: int = 20000
    seed: int = 0
    start_date: str | None = None  # default: the day after the last logged day
    name: str = "ab"
    http: bool = False
    salt: str = ""

    def __post_init__(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise InputError(
                f"--arms: unknown arm(s) {', '.join(unknown)}; valid: {', '.join(ARMS)}"
            )
        if "baseline" not in self.arms:
            raise InputError("--arms must include baseline: every arm is compared with it")
        if len(set(self.arms)) != len(self.arms):
            raise InputError("--arms: an arm is named twice")
        if self.split is not None and (
            len(self.split) != len(self.arms) or any(w <= 0 for w in self.split)
        ):
            raise InputError(
                f"--split {'/'.join(map(str, self.split))}: one positive share per arm "
                f"({len(self.arms)})"
            )

    @property
    def weights(self) -> tuple[float, ...]:
        return self.split or tuple(1.0 for _ in self.arms)


class Router:
    """A `Searcher` that sends each request to its user's arm."""

    deterministic = False

    def __init__(self, searchers: dict[str, Any], arm_of):
        self.searchers, self.arm_of = searchers, arm_of

    def respond(self, request: SearchRequest) -> SearchResponse:
        return self.searchers[self.arm_of(request.user_id or "")].respond(request)

    def answer(self, request_id: str, user_id: str, choice: str, ts_ms: int):
        """A user answered the question of a response: the refined response, if the arm's
        searcher takes answers (the service does)."""
        searcher = self.searchers[self.arm_of(user_id)]
        if not hasattr(searcher, "record_event"):
            return None
        from revision.serve.service import Event

        event = Event(request_id, "question_answer", value=choice, user_id=user_id, ts_ms=ts_ms)
        return searcher.record_event(event)


def next_day(warehouse: Warehouse) -> date:
    """The day after the warehouse's last logged request day (its first day when empty)."""
    if not warehouse.exists(REQUESTS):
        from revision.sim.traffic import DEFAULT_START

        return DEFAULT_START
    days = {
        str(p.name)[3:] for p in warehouse.table_dir(REQUESTS).iterdir() if p.name.startswith("dt=")
    }
    return date.fromisoformat(max(days)) + timedelta(days=1)


def build_arms(
    warehouse: Warehouse, config: ExperimentConfig, settings: Settings, mean_tools: float = 2.0
):
    """The arms' searchers (sharing one engine and the users' histories) and the oracle."""
    from revision.eval.plans import tool_intents
    from revision.serve.service import RevisionService

    base = RevisionService.open(warehouse, settings)
    tools = base.tools
    live = tools.live_indices()
    searchers: dict[str, Any] = {}
    oracle = None
    for arm in config.arms:
        if arm == "baseline":
            searchers[arm] = base.variant("baseline", act=False)
        elif arm == "revision":
            if base._active.planner is None:
                raise InputError(
                    f"no planner to test in the revision arm ({base._active.error}): train and "
                    "publish one (`revision planner train`, `revision planner publish`)"
                )
            searchers[arm] = base.variant("revision", act=True)
        else:
            if arm == "always_all":
                planner = AllTools(live, tools.digest)
            elif arm == "random_plan":
                planner = RandomPlan(live, tools.digest, mean_tools, seed=config.seed)
            else:
                titles = {e.index: e.title for e in tools.active()}
                planner = oracle = Oracle(tool_intents(tools), titles, tools.digest)
            searchers[arm] = RevisionService(
                base.engine,
                # a reference planner decides per request (the oracle per user): no reuse
                settings=settings.model_copy(update={"decision_cache": False}),
                planner=planner,
                tools=tools,
                histories=base.histories,
                threshold=base.threshold,
                arm=arm,
                act=True,
            )
    return base, searchers, oracle


def run_experiment(warehouse: Warehouse, config: ExperimentConfig) -> dict[str, Any]:
    """Simulate the experiment's traffic through its arms; returns the simulation summary,
    the days it covers and the arms' users."""
    from revision.sim.traffic import simulate
    from revision.sim.world import load_world

    world = load_world(config.world)
    start = date.fromisoformat(config.start_date) if config.start_date else next_day(warehouse)
    settings = get_settings().model_copy(update={"serve_logs": False})  # the simulator logs
    base, searchers, oracle = build_arms(warehouse, config, settings)

    def arm_of(user_id: str) -> str:
        return assign(user_id, config.arms, config.weights, config.salt or config.name)

    server = None
    try:
        if config.http and "revision" in searchers:
            server, client = _serve(warehouse)
            searchers["revision"] = client
        started = time.perf_counter()
        summary = simulate(
            world,
            Router(searchers, arm_of),
            warehouse,
            users=config.users,
            days=config.days,
            requests=config.requests,
            seed=config.seed,
            start_date=start,
            variant=config.name,
            arm_of=arm_of,
            reveal=oracle.reveal if oracle is not None else None,
        )
        seconds = time.perf_counter() - started
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        base.close()
    last = start + timedelta(days=config.days - 1)
    return {
        "config": {**asdict(config), "world": str(config.world or "default")},
        "days": [start.isoformat(), last.isoformat()],
        "threshold": getattr(base.threshold, "value", None),
        "simulation": {k: summary[k] for k in ("requests", "human_requests", "no_click_ratio")},
        "seconds": round(seconds, 1),
    }


def _serve(warehouse: Warehouse):
    """`revision serve` on a free loopback port as the revision arm; (process, client)."""
    import socket

    from revision.serve.client import ServiceClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"REVISION_ARM": "revision", "REVISION_ACT": "true", "REVISION_SERVE_LOGS": "false"}
    from revision.settings import child_env

    process = subprocess.Popen(
        [sys.executable, "-m", "revision.cli.main", "serve", "--port", str(port),
         "--warehouse", str(warehouse.root)],
        env=child_env(**env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = ServiceClient(f"http://127.0.0.1:{port}")
    client.wait_ready(timeout_s=180)
    return process, client

"""The simulated world: query photos, users with hidden intents, click and purchase models, traffic.

- `revision.sim.world`: the world file (`load_world`), validated, unknown keys named.
- `revision.sim.intents`: intent names and the predicates `satisfies` / `satisfied`.
- `revision.sim.photos`: the query-photo pool (`build_pool`), derived from catalog photos.
- `revision.sim.traffic`: `simulate(world, searcher, warehouse, ...)` writes the log tables.
- `revision.sim.behaviour`: how a user reacts to a response (examination, clicks, purchases).
- `revision.sim.truth`: the hidden-intent table `sim/truth`, for evaluation only.

Names are loaded lazily so that `import revision.sim.intents` stays light.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "World": "world",
    "load_world": "world",
    "parse_world": "world",
    "INTENTS": "intents",
    "UserState": "intents",
    "PredicateParams": "intents",
    "satisfies": "intents",
    "satisfied": "intents",
    "PhotoPool": "photos",
    "build_pool": "photos",
    "simulate": "traffic",
    "TRUTH": "truth",
    "read_truth": "truth",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'revision.sim' has no attribute {name!r}")
    return getattr(importlib.import_module(f"revision.sim.{_EXPORTS[name]}"), name)

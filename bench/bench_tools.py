"""Tools benchmark: added latency per tool and per 3-tool plan; satisfied rate per intent.

Latency: query photos of catalog products (medium severity) are decoded and encoded once; each
request then runs with its vector and photo (so attribute heads still read the photo), the
baseline search and every configuration interleaved request by request, so machine load hits
them alike. "Added" is the configuration's latency minus the baseline's, per request; p50/p99
of those. The encoder's own time (identical for all) is reported separately.

Intents (needs `revision.sim`): for each hidden intent, photos of products that can carry it
(`CatalogFacts.eligible`), severity drawn from the world file, the hidden preferred value drawn
as the simulator does; satisfied rate = share of requests where `revision.sim.intents.satisfied`
holds, for the baseline and with the tool meant for that intent (given the Info that the tool
list's subcategory implies, e.g. "cheaper" for Cheaper supplement). For `preference` the rate
after the user answers the question (`answer()` re-runs the search) is reported too.

    python bench/bench_tools.py --warehouse /tmp/wh-copy --queries 200 --per-intent 80
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from revision.search._base import Query
from revision.search.engine import SearchEngine
from revision.search.pipeline import SearchPipeline
from revision.tools._registry import default_tool_list
from revision.tools.builtin.preference import answer
from revision.tools.builtin.text_search import TextSearch
from revision.tools.executor import PlanExecutor
from revision.vision.images import load_image
from revision.vision.query_photos import make_query_photo
from revision.warehouse import Warehouse

TOOL_INFO = {  # the Info a tool-list subcategory implies, for the default list's (n)
    1: "",
    2: "cheaper",
    3: "",
    4: "",
    5: "",
    6: "",
    7: "",
    8: "",
}
THREE_TOOL_PLANS = {
    "(2) (5) (6)": {2: "cheaper"},
    "(1) (3) (7)": {},
    "(3) (6) (8)": {},
    "(4) (5) (6)": {},
}
INTENT_PLANS = {  # intent -> (plan, info) of the tool meant for it
    "variant": ("(3)", {}),
    "cheaper": ("(2)", {2: "cheaper"}),
    "premium": ("(2)", {2: "premium"}),
    "same_pattern": ("(1)", {1: "same pattern"}),
    "other_department": ("(1)", {1: "another department"}),
    "info": ("(7)", {}),
    "preference": ("(8)", {}),
    "similar": ("(4)", {}),
    "exact": ("(6)", {}),
}


def _q(values, q) -> float:
    return round(float(np.quantile(np.asarray(values), q)), 3) if len(values) else float("nan")


def _query(vector, image, top_k=10) -> Query:
    return Query(source="bench", vector=vector, image=image, top_k=top_k)


_FORGET: list = []  # set by `latency`: empties the text-search tool's query memo


def _timed(run) -> tuple[float, object]:
    for forget in _FORGET:
        forget()  # worst case: every text query is new to the e5 encoder
    t = time.perf_counter()
    response = run()
    return (time.perf_counter() - t) * 1000, response


def latency(executor: PlanExecutor, n: int, seed: int) -> dict:
    """Added latency with the query embedding in hand (the encoder excluded), and end to end
    from a decoded photo (encoding included: tools that need no embedding overlap with it)."""
    engine = executor.engine
    pipeline = executor.pipeline
    memo = executor.component(TextSearch.name).searcher(executor.catalog).queries
    _FORGET[:] = [memo.clear]
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.array(engine.index.ids_), size=min(n, len(engine.index)), replace=False)
    photos, vectors, encode_ms = [], [], []
    for i, pid in enumerate(ids):
        photo = make_query_photo(
            load_image(engine.products.loc[pid, "image_path"]), "medium", seed=seed + i
        )
        t = time.perf_counter()
        vectors.append(engine.encode(photo))
        encode_ms.append((time.perf_counter() - t) * 1000)
        photos.append(photo)
    configs: dict[str, object] = {}
    for idx in range(1, 9):
        info = {idx: TOOL_INFO[idx]} if TOOL_INFO[idx] else {}
        configs[f"({idx})"] = executor.prepare(executor.dag(f"({idx})", info))
    configs["(4) Info text"] = executor.prepare(executor.dag("(4)", {4: "black cotton dress"}))
    for plan, info in THREE_TOOL_PLANS.items():
        configs[plan] = executor.prepare(executor.dag(plan, info))
    end_to_end = ["(4)", "(4) Info text", *THREE_TOOL_PLANS]
    # warm-up: first calls build caches (catalog arrays, parsed descriptions, quantiles)
    for j in range(min(5, len(ids))):
        pipeline.run(_query(vectors[j], photos[j]))
        for dag in configs.values():
            executor.run(_query(vectors[j], photos[j]), dag)
    out: dict = {
        "queries": len(ids),
        "encode_ms": {"p50": _q(encode_ms, 0.5), "p99": _q(encode_ms, 0.99)},
    }
    for mode in ("vector", "end_to_end"):
        base_ms: list[float] = []
        names = list(configs) if mode == "vector" else end_to_end
        added: dict[str, list[float]] = {k: [] for k in names}
        total: dict[str, list[float]] = {k: [] for k in names}
        dropped: dict[str, int] = dict.fromkeys(names, 0)
        for v, photo in zip(vectors, photos, strict=True):

            def query(v=v, photo=photo, mode=mode):
                return _query(v if mode == "vector" else None, photo)

            b, _ = _timed(lambda query=query: pipeline.run(query()))
            base_ms.append(b)
            for name in names:
                ms, r = _timed(lambda name=name, query=query: executor.run(query(), configs[name]))
                total[name].append(ms)
                added[name].append(ms - b)
                dropped[name] += sum(e.status != "ok" for e in r.trace)
        block: dict = {
            "baseline_ms": {"p50": _q(base_ms, 0.5), "p99": _q(base_ms, 0.99)},
            "configs": {},
        }
        for name in names:
            dag = configs[name]
            block["configs"][name] = {
                "tools": [f"({s.index}) {s.component}" for s in dag.plan.steps],
                "total_p50": _q(total[name], 0.5),
                "total_p99": _q(total[name], 0.99),
                "added_p50": _q(added[name], 0.5),
                "added_p99": _q(added[name], 0.99),
                "p99_over_baseline_p99": round(_q(total[name], 0.99) - _q(base_ms, 0.99), 3),
                "dropped_tools": dropped[name],
            }
        out[mode] = block
    return out


def intents(executor: PlanExecutor, per_intent: int, seed: int, only=None) -> dict:
    from revision.sim.intents import (
        INFO,
        OTHER_DEPARTMENT,
        PREFERENCE,
        CatalogFacts,
        PredicateParams,
        UserState,
        product_rows,
        satisfied,
    )
    from revision.sim.world import load_world

    world = load_world()
    engine = executor.engine
    pipeline = executor.pipeline
    rows = product_rows(engine.products.loc[engine.index.ids_])
    params = PredicateParams.from_world(world)
    facts = CatalogFacts(rows, params, world.catalog.price_tiers)
    severities = list(world.photos.severity)
    sev_p = np.array([world.photos.severity[s] for s in severities], float)
    sev_p /= sev_p.sum()
    info_spec = world.intents.info
    fields = list(info_spec.fields) if info_spec else ["material"]
    field_p = np.array([info_spec.fields[f] for f in fields], float) if info_spec else np.ones(1)
    field_p /= field_p.sum()
    rng = np.random.default_rng(seed)
    all_ids = np.array(engine.index.ids_)
    out: dict = {}
    for intent, (plan, info) in INTENT_PLANS.items():
        if only and intent not in only:
            continue
        dag = executor.prepare(executor.dag(plan, info))
        eligible = [p for p in rng.permutation(all_ids) if facts.eligible(intent, rows[p])]
        sample = eligible[:per_intent]
        base_ok = tool_ok = answered_ok = 0
        for i, pid in enumerate(sample):
            target = rows[pid]
            severity = severities[int(rng.choice(len(severities), p=sev_p))]
            photo = make_query_photo(load_image(target["image_path"]), severity, seed=seed + i)
            vector = engine.encode(photo)
            preferred = None
            if intent in (OTHER_DEPARTMENT, PREFERENCE):
                values, weights = facts.preferred_options(intent, target)
                w = np.asarray(weights, float)
                preferred = values[int(rng.choice(len(values), p=w / w.sum()))]
            elif intent == INFO:
                preferred = fields[int(rng.choice(len(fields), p=field_p))]
            user = UserState(preferred)
            kw = {"products": rows, "user": user, "params": params}
            base = pipeline.run(_query(vector, photo))
            tuned = executor.run(_query(vector, photo), dag)
            base_ok += satisfied(intent, target, base, **kw)
            hit = satisfied(intent, target, tuned, **kw)
            tool_ok += hit
            if intent == PREFERENCE:
                question = next((c for c in tuned.cues if c.type == "question"), None)
                offered = question is not None and preferred in question.options
                if offered and question.attribute == params.preference_attribute:
                    again = answer(executor, _query(vector, photo), question, preferred)
                    again.cues = [*again.cues, question]
                    answered_ok += satisfied(intent, target, again, **kw)
        n = max(len(sample), 1)
        row = {
            "plan": plan,
            "info": info,
            "requests": len(sample),
            "baseline": round(base_ok / n, 3),
            "with_tool": round(tool_ok / n, 3),
        }
        if intent == PREFERENCE:
            row["after_answer"] = round(answered_ok / n, 3)
        best = row.get("after_answer", row["with_tool"])
        row["ratio"] = round(best / row["baseline"], 2) if row["baseline"] else None
        out[intent] = row
        print(f"  {intent}: {row}", flush=True)
    return out


def markdown(result: dict) -> str:
    lines = []
    lat = result.get("latency")
    if lat:
        lines += [
            f"### Added latency over the baseline search ({lat['queries']} queries, "
            f"{result['machine']})",
            "",
            f"Image encoding: p50 {lat['encode_ms']['p50']} ms, p99 {lat['encode_ms']['p99']} ms. "
            "Every text query is new to the e5 encoder (its cache cleared before each request).",
            "",
        ]
        titles = {
            "vector": "With the query embedding in hand (encoder excluded)",
            "end_to_end": "End to end from a decoded photo (encoder included)",
        }
        for mode in ("vector", "end_to_end"):
            block = lat.get(mode)
            if not block:
                continue
            lines += [
                f"**{titles[mode]}**: baseline p50 {block['baseline_ms']['p50']} ms, "
                f"p99 {block['baseline_ms']['p99']} ms.",
                "",
                "| configuration | added p50 ms | added p99 ms | p99 − baseline p99 ms | "
                "dropped tools |",
                "|---|---|---|---|---|",
            ]
            for name, c in block["configs"].items():
                label = f"{name}: {', '.join(t.split(' ', 1)[1] for t in c['tools'])}"
                lines.append(
                    f"| {label} | {c['added_p50']} | {c['added_p99']} | "
                    f"{c['p99_over_baseline_p99']} | {c['dropped_tools']} |"
                )
            lines.append("")
    ints = result.get("intents")
    if ints:
        lines += [
            "### Satisfied rate per hidden intent (simulator predicates)",
            "",
            "| intent | tool (plan, Info) | requests | baseline | with tool | after answer | "
            "ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for intent, r in ints.items():
            info = "; ".join(f"{k}={v}" for k, v in r["info"].items())
            lines.append(
                f"| {intent} | {r['plan']} {info} | {r['requests']} | {r['baseline']} | "
                f"{r['with_tool']} | {r.get('after_answer', '')} | {r['ratio']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--warehouse",
        default=None,
        help="a built warehouse (tools write their text index into it: use a copy of a shared one)",
    )
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--per-intent", type=int, default=80)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout-ms", type=float, default=250.0)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-intents", action="store_true")
    parser.add_argument("--intents", nargs="*", help="only these intents")
    parser.add_argument("--out", default="bench/out/tools.json")
    args = parser.parse_args(argv)

    import os

    warehouse = Warehouse(args.warehouse)
    engine = SearchEngine.open(warehouse)
    # the eight default tools by their default indices, whatever tool list the warehouse holds
    executor = PlanExecutor(SearchPipeline(engine), default_tool_list(), timeout_ms=args.timeout_ms)
    result: dict = {"machine": f"{os.cpu_count()} CPU cores", "products": len(engine.index)}
    if not args.skip_latency or not args.intents or "similar" in args.intents:
        started = time.perf_counter()
        executor.prepare("(4)")  # builds the catalog text index once
        result["text_index_s"] = round(time.perf_counter() - started, 2)
    if not args.skip_latency:
        result["latency"] = latency(executor, args.queries, args.seed)
    if not args.skip_intents:
        try:
            import revision.sim.intents  # noqa: F401
        except ImportError:
            result["intents"] = None
        else:
            result["intents"] = intents(executor, args.per_intent, args.seed, args.intents)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    for key, value in result.items():
        if isinstance(value, dict) and isinstance(previous.get(key), dict):
            previous[key].update(value)  # a partial run (--intents) refreshes its rows only
        elif value is not None:
            previous[key] = value
    out.write_text(json.dumps(previous, indent=2))
    print(markdown(previous))


if __name__ == "__main__":
    main()

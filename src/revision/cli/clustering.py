"""`revision cluster …`: assign mined actions to the ontology, draft ontologies, build tools."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from revision.cli._common import JsonOpt, WarehouseOpt, console, open_warehouse, print_json

app = typer.Typer(
    help="Cluster mined actions into the ontology (paper §III-B(b)) and build the tool list.",
    no_args_is_help=True,
)

OntologyOpt = Annotated[
    Path | None,
    typer.Option(
        "--ontology",
        help="Ontology YAML (default: the shipped default_ontology.yaml).",
        show_default=False,
    ),
]
TableOpt = Annotated[
    str | None,
    typer.Option(
        "--table",
        help="Warehouse table of mined actions (default: mining/signals).",
        show_default=False,
    ),
]
FileOpt = Annotated[
    Path | None,
    typer.Option(
        "--file",
        help="A text file with one action per line (instead of --table).",
        show_default=False,
    ),
]
EncoderOpt = Annotated[
    str,
    typer.Option(
        "--encoder",
        help="Text encoder: auto (MiniLM for English, centred e5 when any "
        "text is Chinese), minilm, e5-centered, e5.",
    ),
]
LlmUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--llm-url",
        show_default=False,
        help="OpenAI-compatible base URL (…/v1) to name clusters / draft categories "
        "(default: $REVISION_LLM_BASE_URL; unset: no LLM).",
    ),
]
LlmModelOpt = Annotated[
    str | None,
    typer.Option(
        "--llm-model",
        show_default=False,
        help="Model name sent to the LLM backend (default: $REVISION_LLM_MODEL).",
    ),
]


def _backend(url: str | None, model: str | None):
    """The chat client for naming / drafting, or None when no LLM endpoint is configured."""
    from revision.chat import ChatClient, ChatConfig
    from revision.settings import get_settings

    settings = get_settings()
    if not (url or settings.llm_base_url):
        return None
    return ChatClient(ChatConfig.from_settings(settings, base_url=url, model=model))


def _print_summary(result) -> None:
    s = result.model.summary()
    kind = "incremental batch" if result.incremental else "run"
    console.print(
        f"{kind} {result.state['run']}: {result.model.n_items_ - result.start} new actions "
        f"({s['items']} in the run, {s['distinct_texts']} distinct, encoder {s['encoder']})"
    )
    console.print(
        f"  assigned {s['assigned']} (to a subcategory {s['assigned_to_sub']}, "
        f"other {s['other']}); "
        f"unassigned {s['unassigned']} → {s['aux_clusters']} auxiliary clusters, noise {s['noise']}"
    )
    for m in result.model.hierarchy(max_actions=0)["main_categories"]:
        subs = ", ".join(f"{x['name']} {x['size']}" for x in m["subcategories"] if x["size"])
        console.print(f"  {m['name']:<22} {m['size']:>6}  {subs}")
    if result.report:
        console.print(f"  report: {result.report}")


@app.command("run")
def run(
    ontology: OntologyOpt = None,
    table: TableOpt = None,
    file: FileOpt = None,
    run_id: Annotated[
        str | None,
        typer.Option("--run", help="Only this run= partition of --table.", show_default=False),
    ] = None,
    incremental: Annotated[
        bool,
        typer.Option(
            "--incremental",
            help="Continue the latest run: assign only new "
            "actions (new file, or table partitions not read yet); earlier "
            "assignments stay as they are.",
        ),
    ] = False,
    alpha1: Annotated[float, typer.Option(help="Level-1 weight of the synonym score.")] = 0.7,
    alpha2: Annotated[float, typer.Option(help="Level-2 weight of the synonym score.")] = 0.6,
    tau1: Annotated[float, typer.Option(help="Level-1 threshold (main category).")] = 0.40,
    tau2: Annotated[float, typer.Option(help="Level-2 threshold (subcategory).")] = 0.35,
    eps: Annotated[float, typer.Option(help="DBSCAN radius for unassigned actions.")] = 0.5,
    min_samples: Annotated[int, typer.Option(help="DBSCAN min_samples.")] = 2,
    metric: Annotated[str, typer.Option(help="DBSCAN distance: cosine, l2, l1.")] = "cosine",
    encoder: EncoderOpt = "auto",
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Also write the HTML report here (it is always written next to the run's state).",
            show_default=False,
        ),
    ] = None,
    llm_url: LlmUrlOpt = None,
    llm_model: LlmModelOpt = None,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Assign each action to main category → subcategory; DBSCAN-cluster the rest.

    Writes table clustering/assignments (dt=…/run=…), clustering/aux_clusters, and
    artifacts/clustering/runs/RUN/{state.json,hierarchy.json,report.html}. With --json, prints
    one object per input action, in input order: {action, main, sub, score_main, score_sub,
    aux_cluster}.

    Examples:

      revision cluster run --table mining/signals --json

      revision cluster run --ontology my_ontology.yaml --file actions.txt --tau1 0.55 --tau2 0.5

      revision cluster run --incremental
    """
    from revision.clustering.llm import LLMNamer
    from revision.clustering.report import write_report
    from revision.clustering.runner import run_clustering
    from revision.clustering.store import Source

    wh = open_warehouse(warehouse)
    backend = _backend(llm_url, llm_model)
    result = run_clustering(
        wh,
        Source.from_options(table, file),
        ontology=ontology,
        run=run_id,
        incremental=incremental,
        encoder=encoder,
        namer=LLMNamer(backend) if backend else None,
        alpha1=alpha1,
        alpha2=alpha2,
        tau1=tau1,
        tau2=tau2,
        eps=eps,
        min_samples=min_samples,
        metric=metric,
    )
    for w in result.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    if report is not None:
        write_report(result.model, report, title=f"Clustering run {result.state['run']}")
    if json:
        print_json(result.records())
    else:
        _print_summary(result)


@app.command("propose")
def propose(
    table: TableOpt = None,
    file: FileOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="New YAML file for the draft (must not exist; "
            "default: artifacts/clustering/proposed/ontology-RUN.yaml).",
            show_default=False,
        ),
    ] = None,
    base: Annotated[
        Path | None,
        typer.Option(
            "--base",
            help="Existing ontology: propose categories only for "
            "the actions it leaves unassigned, appended to it.",
            show_default=False,
        ),
    ] = None,
    eps: Annotated[float, typer.Option(help="DBSCAN radius for the fine groups.")] = 0.5,
    min_size: Annotated[int, typer.Option(help="Smallest group (actions) to propose.")] = 3,
    main_distance: Annotated[
        float, typer.Option(help="Cosine distance below which groups share a main category.")
    ] = 0.75,
    encoder: EncoderOpt = "auto",
    llm_url: LlmUrlOpt = None,
    llm_model: LlmModelOpt = None,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Draft main/sub categories with keyword lists from mined actions, into a NEW file.

    Uses the LLM backend when --llm-url (or $REVISION_LLM_URL) is set, else DBSCAN groups and
    c-TF-IDF keywords. Never overwrites an existing file: review the draft, then pass it to
    `revision cluster run --ontology`.

    Examples:

      revision cluster propose --table mining/signals --out ontology.draft.yaml

      revision cluster propose --file actions.txt --base ontology.yaml --out additions.yaml
    """
    from revision.clustering.ontology import load_ontology
    from revision.clustering.propose import propose_ontology, write_proposal
    from revision.clustering.store import Source, new_run_id, read_source

    wh = open_warehouse(warehouse)
    src = read_source(wh, Source.from_options(table, file))
    draft = propose_ontology(
        src.actions,
        base=load_ontology(base) if base else None,
        encoder=encoder,
        cache=wh,
        eps=eps,
        min_size=min_size,
        main_distance=main_distance,
        backend=_backend(llm_url, llm_model),
    )
    if out is None:
        out = wh.artifact("clustering", "proposed", f"ontology-{new_run_id()}.yaml")
    path = write_proposal(draft, out)
    new = [m for m in draft.main_categories if (m.model_extra or {}).get("proposed")]
    if json:
        print_json(
            {
                "path": str(path),
                "main_categories": [
                    {
                        "name": m.name,
                        "keywords": m.keywords,
                        "subcategories": [
                            {"name": s.name, "keywords": s.keywords} for s in m.subcategories
                        ],
                    }
                    for m in new
                ],
            }
        )
        return
    console.print(f"proposed {len(new)} main categories → {path} (review before use)")
    for m in new:
        console.print(f"  {m.name}: {', '.join(s.name for s in m.subcategories)}")


@app.command("tools")
def tools(
    ontology: OntologyOpt = None,
    min_support: Annotated[
        int, typer.Option(help="Groups with fewer actions in the latest run stay inactive.")
    ] = 0,
    show: Annotated[
        bool, typer.Option("--show", help="Print the stored list; change nothing.")
    ] = False,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Build (or show) the tool list: one numbered tool per subcategory, indices stable.

    A new group is appended after the highest index ever used; a group that disappears is
    kept as retired with its index reserved. Stored as artifacts/tools/toollist.json and table
    clustering/toollist.

    Examples:

      revision cluster tools --json

      revision cluster tools --ontology reviewed.yaml --min-support 5

      revision cluster tools --show
    """
    from revision.clustering.runner import update_tool_list
    from revision.clustering.toollist import load_tool_list

    wh = open_warehouse(warehouse)
    items = (
        load_tool_list(wh)
        if show
        else update_tool_list(wh, ontology=ontology, min_support=min_support)
    )
    if json:
        print_json([t.to_dict() for t in items])
        return
    for t in items:
        flag = " [dim](retired)[/]" if t.retired else ""
        console.print(f"({t.index}) {t.title} → {t.component or '–'}  support {t.support}{flag}")


@app.command("demo")
def demo(
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Cluster the mined signals with the shipped ontology; write the report and tool list.

    Uses table mining/signals when it exists, else a bundled sample of mined actions.

    Example: revision cluster demo
    """
    from revision.clustering.runner import demo_actions, run_clustering, update_tool_list
    from revision.clustering.store import Source
    from revision.tables import SIGNALS

    wh = open_warehouse(warehouse)
    if wh.exists(SIGNALS):
        source = Source.table(SIGNALS)
    else:
        path = wh.artifact("clustering", "demo_actions.txt")
        path.write_text("\n".join(demo_actions()) + "\n", encoding="utf-8")
        source = Source.file(path)
        console.print(f"no {SIGNALS} table yet: clustering the bundled sample actions")
    result = run_clustering(wh, source)
    tool_list = update_tool_list(wh)
    if json:
        print_json(
            {
                "run": result.state["run"],
                "summary": result.model.summary(),
                "report": str(result.report),
                "tools": [t.to_dict() for t in tool_list],
            }
        )
        return
    _print_summary(result)
    console.print(
        f"tool list: {sum(not t.retired for t in tool_list)} active tools → "
        f"{wh.artifact('tools', 'toollist.json')}"
    )

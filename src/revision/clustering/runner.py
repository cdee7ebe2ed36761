"""What `revision cluster run | tools | demo` do, as library calls (the CLI only parses options).

`run_clustering` reads SOURCE, fits (or restores the latest run and assigns the new actions
incrementally), saves the run and writes the report; `update_tool_list` merges the ontology's
groups, with their support in the latest run, into the stored tool list.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa

from revision.clustering._base import ClusterNamer
from revision.clustering.dbscan import canonical_metric
from revision.clustering.hierarchy import HierarchicalClusterer
from revision.clustering.ontology import Ontology, default_ontology_path, load_ontology
from revision.clustering.report import write_report
from revision.clustering.store import (
    ASSIGNMENTS,
    Source,
    align_meta,
    check_compatible,
    latest_state,
    load_run,
    new_run_id,
    read_source,
    run_dir,
    save_run,
)
from revision.clustering.toollist import (
    ToolSpec,
    build_tool_list,
    load_tool_list,
    save_tool_list,
    tool_key,
)
from revision.errors import MissingArtifactError
from revision.text.tokenize import has_cjk
from revision.warehouse import Warehouse

DEFAULTS: dict[str, Any] = {
    "alpha1": 0.7,
    "alpha2": 0.6,
    "tau1": 0.40,
    "tau2": 0.35,
    "eps": 0.5,
    "min_samples": 2,
    "metric": "cosine",
}


@dataclass
class RunResult:
    model: HierarchicalClusterer
    state: dict[str, Any]
    start: int  # first item of this batch (0 for a full run)
    report: Path | None
    incremental: bool
    warnings: list[str] = field(default_factory=list)

    def records(self) -> list[dict[str, Any]]:
        """This batch's assignments, in input order."""
        return self.model.records(self.start)


def _with_batch(meta: pa.Table, batch: int) -> pa.Table:
    return meta.append_column("batch", pa.array([batch] * len(meta), pa.int32()))


def run_clustering(
    warehouse: Warehouse,
    source: Source,
    *,
    ontology: str | Path | None = None,
    run: str | None = None,
    incremental: bool = False,
    encoder: str = "auto",
    namer: ClusterNamer | None = None,
    report: bool | str | Path = True,
    **params: Any,
) -> RunResult:
    """Cluster a source (a table such as `mining/signals`, or a text file) and store the run.

    `incremental=True` continues the latest run: only new actions (a new file, or table
    partitions that run has not read) are assigned; earlier assignments are kept as stored.
    """
    params = {**DEFAULTS, **params}
    params["metric"] = canonical_metric(params["metric"])
    onto = load_ontology(ontology)
    onto_file = str(Path(ontology).resolve()) if ontology else str(default_ontology_path())
    warnings: list[str] = []
    if onto.status == "proposed":
        warnings.append(
            f"ontology {onto_file} is marked `status: proposed`: review it before relying on it"
        )
    state = latest_state(warehouse) if incremental else None
    is_incremental = state is not None
    if incremental and state is None:
        warnings.append("no earlier clustering run: doing a full run")
    model = HierarchicalClusterer(onto, encoder=encoder, namer=namer, cache=warehouse, **params)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if state is None:
        src = read_source(warehouse, source, run=run)
        model.fit(src.actions)
        run_id = new_run_id()
        state = {
            "run": run_id,
            "dt": time.strftime("%Y-%m-%d", time.gmtime()),
            "created": now,
            "ontology_file": onto_file,
            "ontology_sha256": onto.sha256(),
            "params": params,
            "encoder": model.encoder_.name,
            "source": src.name,
            "partitions": src.partitions,
            "batches": [
                {"batch": 0, "source": src.name, "items": len(src.actions), "created": now}
            ],
        }
        meta, start = _with_batch(src.meta, 0), 0
    else:
        check_compatible(state, onto, params)
        model, old_meta = load_run(warehouse, state, model)
        same_table = str(source) == state["source"]
        src = read_source(
            warehouse,
            source,
            run=run,
            skip_partitions=set(state["partitions"]) if same_table else frozenset(),
        )
        if not model.encoder_.multilingual and any(has_cjk(a) for a in src.actions):
            warnings.append(
                f"run {state['run']} uses the English-only encoder {model.encoder_.name!r} but new "
                "actions contain Chinese: their semantic scores are unreliable; rerun in full "
                "with --encoder e5-centered"
            )
        start = model.n_items_
        model.assign_incremental(src.actions)
        batch = len(state["batches"])
        meta = align_meta(old_meta, _with_batch(src.meta, batch))
        state = {
            **state,
            "partitions": sorted(set(state["partitions"]) | set(src.partitions)),
            "batches": [
                *state["batches"],
                {"batch": batch, "source": src.name, "items": len(src.actions), "created": now},
            ],
        }
    state = save_run(warehouse, model, state=state, meta=meta)
    report_path = None
    if report:
        target = (
            run_dir(warehouse, state["run"]) / "report.html" if report is True else Path(report)
        )
        report_path = write_report(
            model,
            target,
            title=f"Clustering run {state['run']}",
            meta={
                "source": state["source"],
                "ontology": onto_file,
                "batches": len(state["batches"]),
            },
        )
    return RunResult(model, state, start, report_path, is_incremental, warnings)


def support_of_latest_run(warehouse: Warehouse) -> tuple[dict[str, Any] | None, dict[str, int]]:
    """(state, {tool key: assigned actions}) of the latest run, or (None, {})."""
    state = latest_state(warehouse)
    if state is None:
        return None, {}
    tab = warehouse.read(ASSIGNMENTS, columns=["main", "sub", "run"])
    rows = tab.filter(pa.compute.equal(tab["run"], state["run"])).select(["main", "sub"])
    support: dict[str, int] = {}
    for r in rows.group_by(["main", "sub"]).aggregate([([], "count_all")]).to_pylist():
        if r["main"] is not None and r["sub"] is not None:
            support[tool_key(r["main"], r["sub"])] = r["count_all"]
    return state, support


def update_tool_list(
    warehouse: Warehouse,
    *,
    ontology: str | Path | Ontology | None = None,
    min_support: int = 0,
) -> list[ToolSpec]:
    """Build the tool list from the ontology (default: the latest run's) and store it."""
    state, support = support_of_latest_run(warehouse)
    if isinstance(ontology, Ontology):
        onto = ontology
    elif ontology is not None:
        onto = load_ontology(ontology)
    elif state is not None and Path(state["ontology_file"]).is_file():
        onto = load_ontology(state["ontology_file"])
    else:
        onto = load_ontology(None)
    if min_support > 0 and state is None:
        raise MissingArtifactError("--min-support needs a clustering run (revision cluster run)")
    # keys in the ontology may be explicit `key:`s; map support through them
    keyed: dict[str, int] = {}
    for main, sub in onto.leaves():
        key = str((sub.model_extra or {}).get("key") or tool_key(main.name, sub.name))
        keyed[key] = support.get(tool_key(main.name, sub.name), 0)
    tools = build_tool_list(
        onto,
        load_tool_list(warehouse, missing_ok=True),
        support=keyed if state is not None else None,
        min_support=min_support,
    )
    save_tool_list(warehouse, tools)
    return tools


def demo_actions() -> list[str]:
    """The bundled sample of mined actions (English and Chinese) used when no signals exist."""
    text = resources.files("revision.clustering").joinpath("demo_actions.txt").read_text("utf-8")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]

"""Reading action sources and keeping clustering runs in the warehouse.

A `Source` is either a text file (one action per line; blank lines and `# ` comments skipped)
or a warehouse table with `request_id`, `position` and `action` columns (normally
`mining/signals`); the two are different options (`--file`, `--table`), never guessed from a
string. A table is read whole (every `dt=`/`run=` partition) and ordered by
request_id, then position; an incremental run reads only the partitions that no earlier batch
of the run consumed.

A clustering run lives in
    clustering/assignments/dt=…/run=…/    one row per input item, all batches
    clustering/aux_clusters/dt=…/run=…/   one row per auxiliary cluster
    artifacts/clustering/runs/RUN/        state.json, hierarchy.json, report.html
    artifacts/clustering/latest.json      which run `--incremental` and `tools` continue from
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from revision.clustering.hierarchy import AuxCluster, HierarchicalClusterer
from revision.clustering.ontology import Ontology
from revision.errors import ConfigError, InputError, MissingArtifactError
from revision.tables import ASSIGNMENTS, AUX_CLUSTERS, SIGNALS
from revision.warehouse import Warehouse

_COMMENT = re.compile(r"^\s*#(\s|$)")  # "# note" is a comment; "#1 Refine …" is an action


@dataclass(frozen=True)
class Source:
    """Where actions come from: a warehouse table or a text file (`str`: "table:NAME" or
    "file:PATH", the form a run's state records)."""

    kind: Literal["table", "file"]
    ref: str

    @classmethod
    def table(cls, name: str = SIGNALS) -> Source:
        return cls("table", str(name))

    @classmethod
    def file(cls, path: str | Path) -> Source:
        return cls("file", str(Path(path).resolve()))

    @classmethod
    def from_options(cls, table: str | None, file: str | Path | None) -> Source:
        """The CLI's `--table NAME` / `--file PATH` (one of them; `--table` by default)."""
        if table is not None and file is not None:
            raise InputError("give either --table NAME or --file PATH, not both")
        return cls.file(file) if file is not None else cls.table(table or SIGNALS)

    @classmethod
    def parse(cls, text: str) -> Source:
        kind, _, ref = text.partition(":")
        if kind not in ("table", "file") or not ref:
            raise InputError(f"source {text!r}: expected 'table:NAME' or 'file:PATH'")
        return cls(kind, ref)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.kind}:{self.ref}"


@dataclass
class ActionSource:
    """Actions in input order plus where each came from (`meta`: one row per action)."""

    name: str
    actions: list[str]
    meta: pa.Table
    partitions: list[str] = field(default_factory=list)  # "dt=…/run=…" read from a table


def read_source(
    warehouse: Warehouse,
    source: Source,
    *,
    run: str | None = None,
    skip_partitions: set[str] | frozenset[str] = frozenset(),
) -> ActionSource:
    """Read a source (`run` restricts a table to one `run=` value)."""
    if source.kind == "file":
        path = Path(source.ref)
        if run is not None:
            raise InputError(f"--run applies to a --table source, not to the file {path}")
        if not path.is_file():
            raise InputError(f"--file {path}: no such file")
        return _read_text_file(path)
    if not warehouse.exists(source.ref):
        raise MissingArtifactError(
            f"--table {source.ref}: not found in warehouse {warehouse.root}"
            + (" (run `revision mine run` first)" if source.ref == SIGNALS else "")
        )
    return _read_table(warehouse, source.ref, run, skip_partitions)


def _read_text_file(path: Path) -> ActionSource:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(f"{path}: line {line} is not UTF-8 text") from None
    actions, lines = [], []
    for no, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not _COMMENT.match(line):
            actions.append(line.strip())
            lines.append(no)
    if not actions:
        raise InputError(f"{path}: no actions (expected one action per line)")
    meta = pa.table({"line": pa.array(lines, pa.int32())})
    return ActionSource(str(Source.file(path)), actions, meta)


def _read_table(
    warehouse: Warehouse, name: str, run: str | None, skip: set[str] | frozenset[str]
) -> ActionSource:
    table = warehouse.read(name)
    missing = [c for c in ("request_id", "position", "action") if c not in table.column_names]
    if missing:
        raise InputError(
            f"table {name}: missing column(s) {', '.join(missing)} "
            f"(has: {', '.join(table.column_names)})"
        )
    for col in ("dt", "run"):
        if col not in table.column_names:
            table = table.append_column(col, pa.nulls(len(table), pa.string()))
    if run is not None:
        table = table.filter(pc.equal(table["run"], run))
        if not len(table):
            raise InputError(f"table {name}: no partition run={run}")
    part = pc.binary_join_element_wise(
        pc.binary_join_element_wise("dt=", pc.fill_null(table["dt"], ""), ""),
        pc.binary_join_element_wise("run=", pc.fill_null(table["run"], ""), ""),
        "/",
    )
    table = table.append_column("partition", part)
    if skip:
        table = table.filter(pc.invert(pc.is_in(table["partition"], pa.array(sorted(skip)))))
    table = table.sort_by(
        [
            ("request_id", "ascending"),
            ("position", "ascending"),
            ("dt", "ascending"),
            ("run", "ascending"),
        ]
    )
    actions = table["action"].to_pylist()
    for i, a in enumerate(actions):
        if a is None or not str(a).strip():
            row = table.slice(i, 1).to_pylist()[0]
            raise InputError(
                f"table {name} ({row['partition']}): request_id={row['request_id']} "
                f"position={row['position']} has an empty action"
            )
    # where each action came from; `dt`/`run` would clash with the clustering run's partition
    meta = table.select(["request_id", "position", "dt", "run"]).rename_columns(
        ["request_id", "position", "source_dt", "source_run"]
    )
    partitions = sorted(set(table["partition"].to_pylist()))
    return ActionSource(str(Source.table(name)), [a.strip() for a in actions], meta, partitions)


# -- runs -------------------------------------------------------------------------------------


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def run_dir(warehouse: Warehouse, run_id: str) -> Path:
    path = warehouse.artifact("clustering", "runs", run_id, "state.json").parent
    return path


def latest_state(warehouse: Warehouse) -> dict[str, Any] | None:
    pointer = warehouse.root / "artifacts" / "clustering" / "latest.json"
    if not pointer.is_file():
        return None
    run_id = json.loads(pointer.read_text())["run"]
    state_file = run_dir(warehouse, run_id) / "state.json"
    if not state_file.is_file():
        raise MissingArtifactError(f"{pointer} points at run {run_id}, whose state is missing")
    return json.loads(state_file.read_text())


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + f".{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2, default=str))
    tmp.replace(path)


def save_run(
    warehouse: Warehouse,
    model: HierarchicalClusterer,
    *,
    state: dict[str, Any],
    meta: pa.Table,
) -> dict[str, Any]:
    """Write assignments (all batches, item order), aux clusters, hierarchy and state."""
    part = {"dt": state["dt"], "run": state["run"]}
    table = model.to_arrow()
    for col in meta.column_names:
        table = table.append_column(col, meta[col])
    warehouse.write(ASSIGNMENTS, table, part)
    aux = list(model.aux_clusters_.values())
    warehouse.write(
        AUX_CLUSTERS,
        pa.table(
            {
                "id": pa.array([c.id for c in aux], pa.int64()),
                "label": pa.array([c.label for c in aux], pa.string()),
                "keywords": pa.array([c.keywords for c in aux], pa.list_(pa.string())),
                "size": pa.array([c.size for c in aux], pa.int64()),
                "n_texts": pa.array([c.n_texts for c in aux], pa.int64()),
                "examples": pa.array([c.examples for c in aux], pa.list_(pa.string())),
            }
        ),
        part,
    )
    folder = run_dir(warehouse, state["run"])
    _write_json(folder / "hierarchy.json", model.hierarchy())
    import numpy as np

    tmp = folder / f".dbscan_state.{uuid.uuid4().hex}.npz"
    with tmp.open("wb") as fh:
        np.savez(fh, **model.dbscan_state())
    tmp.replace(folder / "dbscan_state.npz")
    state = {**state, "summary": model.summary()}
    _write_json(folder / "state.json", state)
    _write_json(warehouse.artifact("clustering", "latest.json"), {"run": state["run"]})
    return state


def check_compatible(state: dict[str, Any], ontology: Ontology, params: dict[str, Any]) -> None:
    """An incremental batch must use the ontology and parameters of the run it extends."""
    if state["ontology_sha256"] != ontology.sha256():
        raise ConfigError(
            f"the ontology differs from the one run {state['run']} used "
            f"({state.get('ontology_file')}); run a full clustering without --incremental"
        )
    diff = [
        f"{k}: {state['params'].get(k)} → {v}"
        for k, v in params.items()
        if state["params"].get(k) != v
    ]
    if diff:
        raise ConfigError(
            f"parameters differ from run {state['run']} ({'; '.join(diff)}); "
            "run a full clustering without --incremental"
        )


def load_run(
    warehouse: Warehouse, state: dict[str, Any], model: HierarchicalClusterer
) -> tuple[HierarchicalClusterer, pa.Table]:
    """Restore `model` (unfitted, same ontology and params) from a stored run."""
    part = f"dt={state['dt']}/run={state['run']}"
    folder = warehouse.table_dir(ASSIGNMENTS) / part
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise MissingArtifactError(f"table {ASSIGNMENTS} has no partition {part}")
    import pyarrow.parquet as pq

    table = pa.concat_tables([pq.read_table(f) for f in files]).sort_by("item")
    aux_folder = warehouse.table_dir(AUX_CLUSTERS) / part
    aux: list[AuxCluster] = []
    for f in sorted(aux_folder.glob("*.parquet")):
        aux.extend(AuxCluster(**row) for row in pq.read_table(f).to_pylist())
    model.encoder = state["encoder"]
    dbscan_state = None
    state_file = run_dir(warehouse, state["run"]) / "dbscan_state.npz"
    if state_file.is_file():
        import numpy as np

        with np.load(state_file) as npz:
            dbscan_state = {k: npz[k] for k in npz.files}
    model.restore(
        table["action"].to_pylist(),
        table["main"].to_pylist(),
        table["sub"].to_pylist(),
        table["score_main"].to_pylist(),
        table["score_sub"].to_pylist(),
        table["aux_cluster"].to_pylist(),
        aux,
        dbscan_state=dbscan_state,
    )
    meta_cols = [
        c
        for c in table.column_names
        if c
        not in {"item", "action", "main", "sub", "tool", "score_main", "score_sub", "aux_cluster"}
    ]
    return model, table.select(meta_cols)


def align_meta(old: pa.Table, new: pa.Table) -> pa.Table:
    """Concatenate source metadata of two batches whose columns may differ."""
    cols = list(dict.fromkeys([*old.column_names, *new.column_names]))

    def fill(t: pa.Table) -> pa.Table:
        arrays, names = [], []
        for c in cols:
            typ = old.schema.field(c).type if c in old.column_names else new.schema.field(c).type
            arrays.append(t[c].cast(typ) if c in t.column_names else pa.nulls(len(t), typ))
            names.append(c)
        return pa.table(arrays, names=names)

    return pa.concat_tables([fill(old), fill(new)])

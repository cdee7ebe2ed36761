"""Every warehouse table, declared once: name, columns and types, partition keys, who may read it.

Stages talk through these tables, so this module is the contract between them. A nullable
column may be left out by a writer (a team's logs rarely have every optional field); a
non-nullable one may not. A table's `optional` columns are declared and typed, but only some
writers give them (the online service's decision on `logs/requests`); readers see them as
nulls in the other writers' files. A reader or a
writer imports the declaration (`from revision import tables` … `warehouse.read(tables.SIGNALS)`);
no table name is spelled anywhere else in `src/`. `Warehouse.write` checks a table against its
declaration (every declared column present with its type; extra columns only where the table is
`open`), so a stage that drifts from the contract fails where it writes, not three stages later.

`readers` names the packages that may read a table besides its writers; `tests/test_architecture.py`
holds the code to it. `sim/truth` is the one table with a closed reader list: the simulator's
hidden intents are for evaluation only.
"""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("ms", tz="UTC")
ANY = frozenset({"*"})


class Table(str):
    """A warehouse table, `name/[key=value/…]/part*.parquet`: its name (a `str`, so it goes
    wherever a table name goes: paths, JSON, dictionary keys) with its declaration attached."""

    schema: pa.Schema
    partitions: tuple[str, ...]
    writers: frozenset[str]
    readers: frozenset[str]
    open: bool  # writers may add columns beyond `schema` (e.g. a run's metadata)
    required: tuple[str, ...]  # columns every writer must give (default: the non-nullable ones)
    optional: pa.Schema  # declared columns only some writers give (typed when present)
    doc: str

    def __new__(
        cls,
        name: str,
        schema: pa.Schema,
        partitions: tuple[str, ...] = (),
        writers: frozenset[str] = frozenset(),
        readers: frozenset[str] = ANY,
        open: bool = False,
        required: tuple[str, ...] | None = None,
        doc: str = "",
        optional: pa.Schema | None = None,
    ) -> Table:
        self = super().__new__(cls, name)
        self.schema, self.partitions, self.writers = schema, partitions, writers
        self.readers, self.open, self.doc = readers, open, doc
        self.optional = optional if optional is not None else pa.schema([])
        clash = set(self.optional.names) & set(schema.names)
        if clash:
            both = ", ".join(sorted(clash))
            raise ValueError(f"table {name}: {both} declared both in schema and optional")
        if required is None:
            required = tuple(f.name for f in schema if not f.nullable)
        self.required = required
        return self

    @property
    def name(self) -> str:
        return str.__str__(self)

    def __reduce__(self):  # pickles (joblib, Ray, multiprocessing) as its name
        return (_restore, (self.name,))

    @property
    def names(self) -> list[str]:
        return self.schema.names

    def empty(self) -> pa.Table:
        return self.schema.empty_table()

    @property
    def full_schema(self) -> pa.Schema:
        """`schema` followed by the `optional` columns: what a reader may find."""
        return pa.schema([*self.schema, *self.optional])

    def check(self, table: pa.Table) -> str | None:
        """Why `table` does not fit the declaration, or None when it does."""
        have = {f.name: f.type for f in table.schema}
        for f in self.full_schema:
            if f.name not in have:
                if f.name in self.required:
                    return f"column {f.name!r} is missing (declared {f.type})"
                continue
            if pa.types.is_null(f.type) or pa.types.is_null(have[f.name]):
                continue
            if have[f.name] != f.type:
                return f"column {f.name!r} is {have[f.name]}, declared {f.type}"
        if not self.open:
            declared = set(self.full_schema.names) | set(self.partitions)
            extra = sorted(set(have) - declared)
            if extra:
                return f"undeclared column(s) {', '.join(extra)}"
        return None


def _schema(*fields: tuple) -> pa.Schema:
    """`(name, type)` or `(name, type, nullable)` per column; type `pa.null()` means any."""
    return pa.schema([pa.field(f[0], f[1], nullable=f[2] if len(f) > 2 else True) for f in fields])


_ALL: dict[str, Table] = {}


def _declare(table: Table) -> Table:
    if table.name in _ALL:
        raise ValueError(f"table {table.name} declared twice")
    _ALL[table.name] = table
    return table


def _restore(name: str) -> str:
    return _ALL.get(name, name)


def all_tables() -> list[Table]:
    return list(_ALL.values())


def get(name: str) -> Table | None:
    """The declaration of a table name, or None for a table a user named (e.g. `--table`)."""
    return _ALL.get(str(name))


# -- catalog -------------------------------------------------------------------------------------

PRODUCTS = _declare(
    Table(
        "catalog/products",
        _schema(
            ("product_id", pa.string(), False),
            ("title", pa.string(), False),
            ("description", pa.string()),
            ("category", pa.string()),  # product type, e.g. "Dress"
            ("colour", pa.string()),
            ("pattern", pa.string()),
            ("department", pa.string()),
            ("index_group", pa.string()),  # audience, e.g. "Ladieswear", "Baby/Children"
            ("price", pa.float64()),  # nullable: never invented
            ("variant_group", pa.string()),  # colour variants of one design share it
            ("image_path", pa.string(), False),  # absolute
        ),
        writers=frozenset({"catalog"}),
        doc="the one normalised product table every stage reads",
    )
)
CATALOG_REJECTS = _declare(
    Table(
        "catalog/rejects",
        _schema(
            ("source", pa.string()),  # file the row came from
            ("row", pa.int64()),  # 1-based data row (header excluded)
            ("product_id", pa.string()),
            ("field", pa.string()),
            ("reason", pa.string()),
        ),
        writers=frozenset({"catalog"}),
        doc="catalog rows `revision catalog import` skipped, with the reason",
    )
)
IMAGE_HASHES = _declare(
    Table(
        "catalog/image_hashes",
        _schema(("product_id", pa.string()), ("image_hash", pa.string())),
        writers=frozenset({"search"}),
        doc="sha256 of each catalog photo (the embedding cache's key), written by `index build`",
    )
)

# -- logs (the contract between a team's logs, or the simulator, or the service, and mining) -----

_LOG_WRITERS = frozenset({"logs", "sim", "serve"})
REQUESTS = _declare(
    Table(
        "logs/requests",
        _schema(
            ("request_id", pa.string(), False),
            ("user_id", pa.string(), False),
            ("ts", TS, False),
            ("image", pa.string(), False),  # path or URI of the query photo
            ("image_hash", pa.string()),  # sha256 of the photo bytes (embedding cache key)
            ("relevance", pa.float64()),  # the engine's relevance score for the request
            ("variant", pa.string()),  # A/B arm or pipeline name ("baseline" by default)
        ),
        partitions=("dt",),
        writers=_LOG_WRITERS,
        open=True,  # a team's logs may carry more
        # The online service's decision (`revision.search.Decision.log_row`); other writers may
        # leave these out. `triggered` is the trigger rule's verdict whether or not the arm
        # acted on it, so the trigger subset can be recomputed from any arm's logs.
        optional=_schema(
            ("triggered", pa.bool_()),  # relevance below the threshold and user under the cap
            ("capped", pa.bool_()),  # relevance was below the threshold, the cap was spent
            ("threshold", pa.float64()),  # the trigger threshold in force
            ("shown", pa.bool_()),  # the tools' output reached the user
            ("plan", pa.string()),  # the planner's completion "<think>…</think> (2) (6)"
            ("applied", pa.list_(pa.int32())),  # tool indices whose output was committed
            ("cache", pa.string()),  # decision cache: "hit" | "miss" (null: not looked up)
            ("fallback", pa.string()),  # why the baseline was served: timeout | error | …
            ("planner_version", pa.string()),
            ("toollist_digest", pa.string()),
            ("cues", pa.string()),  # the response's cues, JSON
            ("latency_ms", pa.float64()),
            ("search_ms", pa.float64()),
            ("planner_ms", pa.float64()),
            ("tools_ms", pa.float64()),
        ),
        doc="one row per search request",
    )
)
IMPRESSIONS = _declare(
    Table(
        "logs/impressions",
        _schema(
            ("request_id", pa.string(), False),
            ("product_id", pa.string(), False),
            ("rank", pa.int32(), False),  # 1-based
            ("score", pa.float64()),
            ("source", pa.string()),  # "visual", or the component of the tool that placed it
            ("tool", pa.int32()),  # that tool's index in the tool list (null for visual)
        ),
        partitions=("dt",),
        writers=_LOG_WRITERS,
        doc="one row per result shown",
    )
)
CLICKS = _declare(
    Table(
        "logs/clicks",
        _schema(
            ("request_id", pa.string(), False),
            ("product_id", pa.string(), False),
            ("ts", TS, False),
            ("dwell_s", pa.float64()),
        ),
        partitions=("dt",),
        writers=_LOG_WRITERS,
        doc="one row per click on a result",
    )
)
ORDERS = _declare(
    Table(
        "logs/orders",
        _schema(
            ("request_id", pa.string(), False),
            ("product_id", pa.string(), False),
            ("ts", TS, False),
            ("price", pa.float64()),
        ),
        partitions=("dt",),
        writers=_LOG_WRITERS,
        doc="one row per order that followed a request",
    )
)
# What users may do after a response (follow-up events), and the values each kind carries.
EVENT_KINDS = (
    "sort_price",  # value: asc | desc
    "filter_colour",  # value: a colour
    "filter_department",  # value: an audience (index group)
    "filter_category",  # value: a product type
    "open_details",  # value: material | care | size
    "text_query",  # value: free text (untrusted)
    "reupload",  # value: empty
    "question_answer",  # value: the option chosen
    "leave",  # value: empty
)
EVENTS = _declare(
    Table(
        "logs/events",
        _schema(
            ("request_id", pa.string(), False),
            ("user_id", pa.string(), False),
            ("ts", TS, False),
            ("kind", pa.string(), False),  # one of EVENT_KINDS
            ("value", pa.string()),
        ),
        partitions=("dt",),
        writers=_LOG_WRITERS,
        doc="what users did after a response: sorted, filtered, typed, re-uploaded, left",
    )
)
NO_CLICK = _declare(
    Table(
        "logs/no_click",
        _schema(
            ("request_id", pa.string(), False),
            ("kept", pa.bool_(), False),
            ("drop_reason", pa.string()),  # null when kept: "bot", "low_quality", …
            ("user_id", pa.string()),
            ("ts", TS),
            ("image", pa.string()),
            ("image_hash", pa.string()),
            ("bot_score", pa.float64()),  # the user's; null with --bot-filter none
            ("quality", pa.string()),  # low-quality reasons joined by ",", "" = passes
            ("late_clicks", pa.int32()),  # clicks after the window (do not count)
        ),
        partitions=("dt",),
        writers=frozenset({"logs"}),
        doc="no-click requests (no click within the window), kept or dropped with the reason",
    )
)
LOG_REJECTS = _declare(
    Table(
        "logs/rejects",
        _schema(
            ("source", pa.string(), False),  # file the row came from
            ("line", pa.int64(), False),  # 1-based line (JSONL) or row (Parquet)
            ("table", pa.string()),  # target table, e.g. "logs/clicks"
            ("field", pa.string()),
            ("reason", pa.string(), False),
            ("action", pa.string(), False),  # "skipped" or "kept"
        ),
        writers=frozenset({"logs"}),
        doc="rows `revision logs import` skipped or kept with a warning",
    )
)
IMAGE_QUALITY = _declare(
    Table(
        "logs/image_quality",
        _schema(
            ("image_key", pa.string(), False),  # image_hash, else the image path
            ("image", pa.string()),
            ("blur", pa.float64()),
            ("brightness", pa.float64()),
            ("dark_fraction", pa.float64()),
            ("bright_fraction", pa.float64()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("nsfw", pa.float64()),  # null when not measured
        ),
        writers=frozenset({"logs"}),
        doc="quality figures per distinct query photo (a cache)",
    )
)
BOT_SCORES = _declare(
    Table(
        "logs/bot_scores",
        _schema(
            ("user_id", pa.string(), False),
            ("n_requests", pa.int64()),
            ("bot_score", pa.float64()),  # model probability, or 0/1 for rules
            ("is_bot", pa.bool_()),
            ("method", pa.string()),  # "model" or "rules"
        ),
        writers=frozenset({"logs"}),
        doc="per user: bot score and verdict of the last no-click run",
    )
)

# -- mining ----------------------------------------------------------------------------------------

SIGNALS = _declare(
    Table(
        "mining/signals",
        _schema(
            ("request_id", pa.string(), False),
            ("position", pa.int32(), False),  # 1-based, by confidence
            ("action", pa.string(), False),
            ("info", pa.string(), False),
            ("thinking", pa.string()),  # the request's thinking, repeated on each row
            ("confidence", pa.float64()),  # embedded rules only; null from LLM backends
            ("backend", pa.string()),
        ),
        partitions=("dt", "run"),
        writers=frozenset({"mining"}),
        doc="ordered `Action -> Info` signals per mined request",
    )
)
MINING_ERRORS = _declare(
    Table(
        "mining/errors",
        _schema(
            ("request_id", pa.string(), False),
            ("stage", pa.string(), False),  # input, perception, stage1, stage2, …
            ("reason", pa.string(), False),
            ("backend", pa.string()),
        ),
        partitions=("dt", "run"),
        writers=frozenset({"mining"}),
        doc="requests mining could not analyse, with the stage and reason",
    )
)
OCR = _declare(
    Table(
        "mining/ocr",
        _schema(("image_hash", pa.string()), ("text", pa.string())),
        writers=frozenset({"mining"}),
        doc="OCR text per query photo hash (a cache)",
    )
)

# -- clustering ------------------------------------------------------------------------------------

ASSIGNMENTS = _declare(
    Table(
        "clustering/assignments",
        _schema(
            ("item", pa.int64()),
            ("action", pa.string()),
            ("main", pa.string()),
            ("sub", pa.string()),
            ("tool", pa.string()),
            ("score_main", pa.float32()),
            ("score_sub", pa.float32()),
            ("aux_cluster", pa.int64()),
        ),
        partitions=("dt", "run"),
        writers=frozenset({"clustering"}),
        open=True,  # plus the source's: request_id, position, source_dt, source_run (mining)
        doc="one row per clustered action: main category, subcategory, bound tool",
    )
)
AUX_CLUSTERS = _declare(
    Table(
        "clustering/aux_clusters",
        _schema(
            ("id", pa.int64()),
            ("label", pa.string()),
            ("keywords", pa.list_(pa.string())),
            ("size", pa.int64()),
            ("n_texts", pa.int64()),
            ("examples", pa.list_(pa.string())),
        ),
        partitions=("dt", "run"),
        writers=frozenset({"clustering"}),
        doc="DBSCAN clusters of the actions no ontology category took",
    )
)
TOOLLIST = _declare(
    Table(
        "clustering/toollist",
        _schema(
            ("index", pa.int32()),
            ("title", pa.string()),
            ("description", pa.string()),
            ("component", pa.string()),
            ("retired", pa.bool_()),
            ("key", pa.string()),
            ("main", pa.string()),
            ("support", pa.int64()),
        ),
        writers=frozenset({"clustering"}),
        doc="the tool list as a table (the JSON artefact `tools/toollist.json` is the source)",
    )
)

# -- caches ----------------------------------------------------------------------------------------

TEXT_EMBEDDINGS = _declare(
    Table(
        "cache/text_embeddings",
        _schema(("key", pa.string()), ("vector", pa.null())),  # vector: fixed-size list per encoder
        partitions=("encoder",),
        writers=frozenset({"text"}),
        readers=frozenset({"text"}),
        doc="text embeddings by encoder and text (a cache)",
    )
)

# -- the simulator's hidden truth: evaluation only -------------------------------------------------

TRUTH = _declare(
    Table(
        "sim/truth",
        _schema(
            ("request_id", pa.string(), False),
            ("user_id", pa.string(), False),
            ("variant", pa.string()),  # the pipeline that served the request
            ("is_bot", pa.bool_(), False),
            ("intent", pa.string()),  # null for bots
            ("target_product_id", pa.string()),  # the photographed product
            ("photo_kind", pa.string()),  # mild/medium/hard, dark/blurred/tiny/off_topic, catalog
            ("preferred", pa.string()),  # the hidden value the intent is about, if any
            ("satisfied", pa.bool_()),  # the response served the intent (null for bots)
            ("clicked", pa.bool_(), False),  # any click, however late
            ("ordered", pa.bool_(), False),
        ),
        partitions=("dt",),
        writers=frozenset({"sim"}),
        readers=frozenset({"eval", "cli", "pipeline", "experiment"}),  # the A/B harness too
        doc="each simulated request's hidden intent: for evaluation only",
    )
)
USER_TRUTH = _declare(
    Table(
        "sim/users",
        _schema(
            ("user_id", pa.string(), False),
            ("price_sensitivity", pa.float64()),
            ("patience", pa.float64()),
            ("home_group", pa.string()),  # the audience the user shops for, if the world has them
            ("intents", pa.list_(pa.string())),  # the world's intents, in `habits` order
            ("habits", pa.list_(pa.float64())),  # per-intent factors on the priors
        ),
        partitions=("seed",),
        writers=frozenset({"sim"}),
        readers=frozenset({"eval", "cli", "pipeline"}),
        doc="each simulated user's hidden traits: for evaluation only (the Bayes bound)",
    )
)

# -- the planner -------------------------------------------------------------------------------

PLANNER_SAMPLES = _declare(
    Table(
        "planner/samples",
        _schema(
            ("request_id", pa.string(), False),
            ("split", pa.string(), False),  # train | test | held (left out to avoid leakage)
            ("day", pa.string()),
            ("design", pa.string()),  # the first result's design: the split's unit
            ("category", pa.string()),  # the main category of the first tool
            ("image", pa.string()),
            ("image_hash", pa.string()),
            ("result_ids", pa.list_(pa.string())),
            ("result_scores", pa.list_(pa.float32())),
            ("context", pa.list_(pa.float32())),
            ("thinking", pa.string()),
            ("answer", pa.list_(pa.int32())),
            ("live", pa.list_(pa.int32())),
            ("toollist_digest", pa.string(), False),
            ("mining_run", pa.string()),
        ),
        partitions=("build",),
        writers=frozenset({"planner"}),
        doc="planner training and test samples: request, reference thinking and tool answer",
    )
)

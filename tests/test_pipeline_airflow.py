"""The weekly pipeline as an Airflow DAG, run by Airflow itself.

`airflow dags test` (a SQLite metadata DB under a temp `AIRFLOW_HOME`, a dags folder holding the
one-line file the docs ask for) runs the real stage functions as Airflow tasks over a small
simulated week: first a subset of stages (the others skipped), then the rest of the week (the
finished stages are no-ops), then the whole week again, which changes nothing. A stage that
fails is retried, then fails the run.

Airflow has its own environment (`.venv/airflow`, made by `make test`): apache-airflow 3.3 wants
fastapi < 0.137, the service's extra pins a newer one. The test runs its `airflow` command.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from revision.pipeline.stages import STAGES
from revision.warehouse import Warehouse

REPO = Path(__file__).resolve().parents[1]
AIRFLOW_ENV = REPO / ".venv" / "airflow"
INSTALL = (
    f"`make test` creates it; by hand: python -m venv {AIRFLOW_ENV} && "
    f"{AIRFLOW_ENV}/bin/pip install torch==2.13.0 -e '.[airflow]'"
)
AS_OF = "2025-06-06"  # the simulated days are 2025-06-02 … 2025-06-05
CHEAP = {"window_days": 4, "sft_epochs": 1, "grpo_steps": 0}
SHIM = "from revision.pipeline.airflow_dag import dag  # noqa: F401\n"


def executable(name: str) -> Path:
    path = AIRFLOW_ENV / "bin" / name
    if not path.exists():
        pytest.fail(f"Airflow's environment not found ({path} missing): {INSTALL}", pytrace=False)
    return path


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory) -> dict[str, str]:
    """The environment of every `airflow` command: a fresh SQLite metadata DB, our dags folder."""
    home = tmp_path_factory.mktemp("airflow")
    (home / "dags").mkdir()
    (home / "dags" / "revision_weekly.py").write_text(SHIM)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "VIRTUAL_ENV"))},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "REVISION_HOME": str(home / "no-warehouse"),  # each run names its warehouse
        # retries stay on (the DAG's own); only the wait between them is cut short
        "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "1",
    }
    run([str(executable("airflow")), "db", "migrate"], env, timeout=300)
    return env


def run(command: list[str], env: dict[str, str], *, ok: bool = True, timeout: int = 600) -> str:
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    logs = out.stdout + out.stderr
    assert (out.returncode == 0) == ok, f"{command[1:3]} exited {out.returncode}:\n{logs[-6000:]}"
    return logs


def dags_test(
    env: dict[str, str], logical_date: str, conf: dict, *, ok: bool = True, **overrides: str
) -> str:
    command = [str(executable("airflow")), "dags", "test", "revision_weekly", logical_date]
    return run([*command, "-c", json.dumps(conf)], {**env, **overrides}, ok=ok)


def task_states(env: dict[str, str], logical_date: str, what: str = "state") -> dict[str, str]:
    """The task instances Airflow recorded for the run at `logical_date`: their state (or
    `try_number`)."""
    db = sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db")
    try:
        rows = db.execute(
            f"SELECT ti.task_id, ti.{what} FROM task_instance ti JOIN dag_run dr"
            " ON ti.dag_id = dr.dag_id AND ti.run_id = dr.run_id"
            " WHERE dr.dag_id = 'revision_weekly' AND dr.logical_date LIKE ?",
            (f"{logical_date}%",),
        ).fetchall()
    finally:
        db.close()
    return dict(rows)


@pytest.fixture(scope="module")
def week(built_warehouse, tmp_path_factory) -> Warehouse:
    """The small catalog, its attribute heads and four simulated days (2025-06-02 … 05)."""
    from conftest import copy_with_heads, small_world
    from revision.search.pipeline import SearchPipeline
    from revision.sim.traffic import simulate

    root = tmp_path_factory.mktemp("weekly") / "warehouse"
    wh, engine = copy_with_heads(built_warehouse, root)
    simulate(small_world(), SearchPipeline(engine), wh, users=300, days=4, requests=1200, seed=4)
    return wh


SHAPE = """
import json
from revision.pipeline.airflow_dag import dag, run_week_stage
print(json.dumps({
    "dag_id": dag.dag_id,
    "timetable": [
        type(dag.timetable).__name__, dag.timetable.expression, str(dag.timetable.timezone)
    ],
    "catchup": dag.catchup,
    "max_active_runs": dag.max_active_runs,
    "tasks": [
        [t.task_id, sorted(t.upstream_task_ids), t.python_callable is run_week_stage, t.retries]
        for t in dag.tasks
    ],
}))
"""


def test_the_dag_is_one_task_per_stage_in_order(airflow_home):
    shape = json.loads(run([str(executable("python")), "-c", SHAPE], airflow_home).splitlines()[-1])
    assert shape["dag_id"] == "revision_weekly" and shape["catchup"] is False
    assert shape["timetable"] == ["CronTriggerTimetable", "0 2 * * 1", "UTC"], shape  # Mondays
    assert shape["max_active_runs"] == 1
    tasks = shape["tasks"]
    assert [t[0] for t in tasks] == list(STAGES)
    assert [t[1] for t in tasks] == [[]] + [[s] for s in STAGES[:-1]]
    assert all(t[2] for t in tasks), "every task calls run_week_stage"
    assert all(t[3] >= 1 for t in tasks), "stages are idempotent: retries are on"


def test_airflow_runs_the_week_resumes_it_and_a_rerun_changes_nothing(airflow_home, week, tmp_path):
    folder = week.root / "artifacts" / "pipeline" / f"as_of={AS_OF}"
    env = {**airflow_home, "REVISION_HOME": str(week.root)}

    # 1. the first stages only, the week from the logical date, the warehouse from $REVISION_HOME
    first = list(STAGES[:4])
    dags_test(env, AS_OF, {**CHEAP, "stages": first})
    states = task_states(env, AS_OF)
    assert states == {s: "success" if s in first else "skipped" for s in STAGES}, states
    assert sorted(p.stem for p in folder.glob("*.json")) == sorted(first)
    done = {s: (folder / f"{s}.json").stat().st_mtime_ns for s in first}

    # 2. the whole week, named by the as_of param (another logical date): the rest runs, the
    # finished stages are no-ops
    dags_test(env, "2025-06-07", {**CHEAP, "as_of": AS_OF})
    assert task_states(env, "2025-06-07") == dict.fromkeys(STAGES, "success")
    records = {s: json.loads((folder / f"{s}.json").read_text()) for s in STAGES}
    assert all(r["stage"] == s and r["as_of"] == AS_OF for s, r in records.items())
    assert {s: (folder / f"{s}.json").stat().st_mtime_ns for s in first} == done
    assert records["mine"]["result"]["run"] == f"week-{AS_OF}"
    assert records["planner_data"]["result"]["samples"]["train"] > 0
    assert records["publish"]["result"]["published"] is True, records["gate"]

    # 3. again, the warehouse named by the param ($REVISION_HOME points elsewhere): nothing moves
    before = snapshot(week.root)
    elsewhere = tmp_path / "elsewhere"
    dags_test(
        airflow_home,
        "2025-06-08",
        {**CHEAP, "as_of": AS_OF, "warehouse": str(week.root)},
        REVISION_HOME=str(elsewhere),
    )
    assert task_states(env, "2025-06-08") == dict.fromkeys(STAGES, "success")
    assert snapshot(week.root) == before
    assert not elsewhere.exists()


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def test_a_failing_stage_is_retried_then_fails_the_run(airflow_home, tmp_path):
    empty = tmp_path / "empty"  # no logs: no_click has nothing to read
    logs = dags_test(airflow_home, "2025-06-09", {"warehouse": str(empty)}, ok=False)
    assert "no table logs/requests" in logs
    assert task_states(airflow_home, "2025-06-09")["no_click"] == "failed"
    assert task_states(airflow_home, "2025-06-09", "try_number")["no_click"] == 3  # 2 retries
    assert set(task_states(airflow_home, "2025-06-09").values()) == {"failed", "upstream_failed"}
    assert not (empty / "artifacts" / "pipeline" / "as_of=2025-06-09" / "no_click.json").exists()

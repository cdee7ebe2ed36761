"""The weekly pipeline as an Airflow DAG: one task per stage, each calling `run_stage`.

Trade-off: Airflow adds a schedule, retries, history and a UI, but holds none of the logic.
Every task builds a `RunContext` and calls the same `run_stage` as `revision pipeline run`, so
both write the same records under `artifacts/pipeline/as_of=<date>/` and either can finish a
week the other started. Stages are idempotent (a finished one is a no-op, a half-done one
resumes from its own state), which is what makes Airflow's retries safe.

Airflow finds the DAG through a one-line file in its dags folder (the DAG is built when `dag`
is first imported, so this module itself imports without Airflow):

    from revision.pipeline.airflow_dag import dag  # noqa: F401

The week (`as_of`: the run covers the `window_days` before it) is the `as_of` param when given
(`-c '{"as_of": "2025-06-09"}'`), else the day the run's interval ends: the Monday of the
trigger for a scheduled run, the logical date for `airflow dags test revision_weekly DATE`.
The warehouse is the `warehouse` param, else `$REVISION_HOME` (the worker's settings). The
`stages` param runs a subset (the others are skipped; a selected stage still needs the stages
before it finished for that week).
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from revision.errors import InputError
from revision.pipeline.stages import STAGES, RunContext, run_stage
from revision.warehouse import Warehouse

if TYPE_CHECKING:
    from airflow.sdk import DAG

DAG_ID = "revision_weekly"
# Mondays 02:00 UTC: the logs' days are UTC days, and the last one's late rows have landed.
SCHEDULE = "0 2 * * 1"
INSTALL = (
    "install the `airflow` extra in an environment of its own (it cannot share one with `serve`, "
    "see docs/pipeline.md): python -m venv .venv/airflow && "
    ".venv/airflow/bin/pip install torch==2.13.0 -e '.[airflow]'"
)


def week_of(
    as_of: str | None,
    *,
    data_interval_end: datetime | None = None,
    logical_date: datetime | None = None,
    run_after: datetime | None = None,
) -> date:
    """The week a run covers: `as_of` when given, else the (UTC) day its interval ends, its
    logical date, or when it ran, whichever is known first.

    >>> week_of("2025-06-09")
    datetime.date(2025, 6, 9)
    >>> week_of(None, logical_date=datetime(2025, 6, 16, 2, tzinfo=UTC))
    datetime.date(2025, 6, 16)
    """
    if as_of:
        try:
            return date.fromisoformat(as_of)
        except ValueError:
            raise InputError(f"as_of {as_of!r}: expected YYYY-MM-DD") from None
    for moment in (data_interval_end, logical_date, run_after):
        if moment is not None:
            return moment.astimezone(UTC).date()
    raise InputError("the run has no as_of param and no date of its own: pass as_of")


def run_week_stage(stage: str, **context: Any) -> dict:
    """One Airflow task: `run_stage` for the run's week (its result goes to XCom)."""
    from airflow.sdk.exceptions import AirflowSkipException

    params = context["params"]
    if stage not in params["stages"]:
        raise AirflowSkipException(f"stage {stage} not selected (stages: {params['stages']})")
    dag_run = context.get("dag_run")
    ctx = RunContext(
        Warehouse(params.get("warehouse") or None),
        week_of(
            params.get("as_of"),
            data_interval_end=context.get("data_interval_end"),
            logical_date=context.get("logical_date"),
            run_after=getattr(dag_run, "run_after", None),
        ),
        window_days=params["window_days"],
        mining_engine=params["mining_engine"],
        sft_epochs=params["sft_epochs"],
        grpo_steps=params["grpo_steps"],
    )
    result = run_stage(ctx, stage)
    return json.loads(json.dumps(result, default=str))  # paths as strings, as in the record


def build_dag(
    dag_id: str = DAG_ID,
    *,
    schedule: str | None = SCHEDULE,
    retries: int = 2,
    retry_delay: timedelta | None = None,
) -> DAG:
    """The weekly DAG: the stages in order, each a `run_week_stage` task. A failed stage is
    retried `retries` times, `retry_delay` apart (default: Airflow's `[core]
    default_task_retry_delay`, 300 s)."""
    try:
        from airflow.providers.standard.operators.python import PythonOperator
        from airflow.sdk import DAG, CronTriggerTimetable, Param, TriggerRule
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(f"Airflow is not installed ({exc}): {INSTALL}") from exc

    timetable = (
        CronTriggerTimetable(schedule, timezone="UTC", interval=timedelta(days=7))
        if schedule
        else None
    )
    params = {
        "as_of": Param(
            None,
            type=["null", "string"],
            pattern=r"^\d{4}-\d{2}-\d{2}$",
            description="The week ends the day before (YYYY-MM-DD); default: the run's date.",
        ),
        "warehouse": Param(
            None,
            type=["null", "string"],
            description="The warehouse directory; default: $REVISION_HOME of the worker.",
        ),
        "window_days": Param(7, type="integer", minimum=1, description="Days mined."),
        "stages": Param(
            list(STAGES),
            type="array",
            items={"type": "string", "enum": list(STAGES)},
            uniqueItems=True,
            description="The stages to run; the others are skipped.",
        ),
        "mining_engine": Param("local", enum=["local", "ray"], description="Mining engine."),
        "sft_epochs": Param(6, type="integer", minimum=1, description="Planner SFT epochs."),
        "grpo_steps": Param(60, type="integer", minimum=0, description="Planner GRPO steps."),
    }
    with DAG(
        dag_id,
        schedule=timetable,
        start_date=datetime(2025, 1, 6, tzinfo=UTC),
        catchup=False,
        # one week at a time: the clustering state and the publication move forward in order
        max_active_runs=1,
        params=params,
        default_args={"retries": retries, **({"retry_delay": retry_delay} if retry_delay else {})},
        doc_md=__doc__,
        tags=["revision"],
    ) as dag:
        previous = None
        for stage in STAGES:
            task = PythonOperator(
                task_id=stage,
                python_callable=run_week_stage,
                op_kwargs={"stage": stage},
                # an unselected stage is skipped; the stages after it still run if selected
                trigger_rule=TriggerRule.NONE_FAILED,
            )
            if previous is not None:
                previous >> task
            previous = task
    return dag


def __getattr__(name: str) -> Any:
    """`dag`, built on first import, so that this module imports without Airflow."""
    if name == "dag":
        built = globals()["dag"] = build_dag()
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

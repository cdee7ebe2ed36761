"""`revision experiment …`: A/B tests through the online service, their analysis, the loop."""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Annotated

import typer

from revision.cli._common import JsonOpt, WarehouseOpt, console, open_warehouse, print_json

app = typer.Typer(
    help="A/B tests and the weekly loop (paper §IV-A(c), Tables I-III).", no_args_is_help=True
)

WorldOpt = Annotated[
    Path | None,
    typer.Option(
        "--world", help="World file (default: the shipped default world).", show_default=False
    ),
]


def _split(text: str | None, n: int) -> tuple[float, ...] | None:
    if not text:
        return None
    from revision.errors import InputError

    try:
        parts = tuple(float(x) for x in text.split("/"))
    except ValueError:
        raise InputError(f"--split {text!r}: write shares as 50/50 (one per arm)") from None
    if len(parts) != n:
        raise InputError(f"--split {text!r}: {len(parts)} shares for {n} arms")
    return parts


@app.command("run")
def run(
    world: WorldOpt = None,
    days: Annotated[int, typer.Option(min=1, help="Simulated days.")] = 7,
    arms: Annotated[
        str,
        typer.Option(
            "--arms",
            help="Comma-separated: baseline, revision, always_all, random_plan, oracle.",
        ),
    ] = "baseline,revision",
    split: Annotated[
        str | None, typer.Option("--split", help="Shares per arm, e.g. 50/50.", show_default=False)
    ] = None,
    users: Annotated[int, typer.Option(min=1, help="Simulated users.")] = 2000,
    requests: Annotated[int, typer.Option(min=1, help="Requests in all.")] = 20000,
    seed: Annotated[int, typer.Option(help="Traffic seed.")] = 0,
    name: Annotated[str, typer.Option(help="Experiment name (log file names, hash salt).")] = "ab",
    http: Annotated[
        bool, typer.Option("--http", help="Serve the revision arm by a real `revision serve`.")
    ] = False,
    report: Annotated[
        Path | None, typer.Option("--report", help="HTML report (default: artifacts/reports/).")
    ] = None,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Simulate an A/B test through the online service and analyse it.

    Users are split by a stable hash; every arm is the real service with the same trigger
    rule and daily cap; the baseline arm decides and logs but never acts.

    Example: revision experiment run --days 7 --arms baseline,revision,always_all,oracle
    """
    from revision.experiment.analyze import analyze
    from revision.experiment.report import write_report
    from revision.experiment.run import ExperimentConfig, run_experiment

    wh = open_warehouse(warehouse)
    arm_list = tuple(a.strip() for a in arms.split(",") if a.strip())
    config = ExperimentConfig(
        world=world,
        arms=arm_list,
        split=_split(split, len(arm_list)),
        days=days,
        users=users,
        requests=requests,
        seed=seed,
        name=name,
        http=http,
    )
    summary = run_experiment(wh, config)
    analysis = analyze(wh, days=tuple(summary["days"]))
    _add_relevance(wh, analysis, tuple(summary["days"]), world)
    path = write_report(wh, analysis, report, title=f"Experiment {name}", run=summary)
    out = {"run": summary, "analysis": analysis, "report": str(path)}
    if json:
        print_json(out)
        return
    _print(analysis)
    console.print(f"report: {path}")


@app.command("analyze")
def analyze_cmd(
    baseline: Annotated[str, typer.Option(help="The control arm.")] = "baseline",
    first_day: Annotated[str | None, typer.Option("--from", help="First day (YYYY-MM-DD).")] = None,
    last_day: Annotated[str | None, typer.Option("--to", help="Last day (YYYY-MM-DD).")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="HTML report path.")] = None,
    world: WorldOpt = None,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Analyse experiment logs (any logs whose requests carry an arm in `variant` and the
    trigger rule's `triggered`): lifts with 95% intervals and p-values, per arm, for all
    requests and the trigger subset; per hidden intent, and top-1 / top-4 relevance against
    the baseline on each arm's requests (`--world` gives the predicates), when the simulator's
    truth exists.

    Example: revision experiment analyze --from 2025-06-09 --to 2025-06-15 --json
    """
    from revision.experiment.analyze import analyze
    from revision.experiment.report import write_report

    wh = open_warehouse(warehouse)
    days = (
        (first_day or "0000-01-01", last_day or "9999-12-31") if (first_day or last_day) else None
    )
    analysis = analyze(wh, baseline=baseline, days=days)
    _add_relevance(wh, analysis, days, world)
    path = write_report(wh, analysis, report, title="Experiment analysis")
    if json:
        print_json({"analysis": analysis, "report": str(path)})
        return
    _print(analysis)
    console.print(f"report: {path}")


@app.command("relevance")
def relevance_cmd(
    judge: Annotated[
        str, typer.Option("--judge", help="truth (the simulator's hidden intents) or llm.")
    ] = "truth",
    arm: Annotated[str, typer.Option(help="The arm whose requests and results are judged.")] = (
        "revision"
    ),
    limit: Annotated[
        int | None,
        typer.Option(min=1, help="Judge a seeded random sample of N requests.", show_default=False),
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(
            "--base-url",
            help="llm: the OpenAI-compatible server (…/v1; default $REVISION_LLM_BASE_URL).",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="llm: the model name sent (default $REVISION_LLM_MODEL).", show_default=False
        ),
    ] = None,
    images: Annotated[
        bool, typer.Option("--images", help="llm: send the query photo too (a VLM).")
    ] = False,
    world: WorldOpt = None,
    first_day: Annotated[str | None, typer.Option("--from", help="First day (YYYY-MM-DD).")] = None,
    last_day: Annotated[str | None, typer.Option("--to", help="Last day (YYYY-MM-DD).")] = None,
    seed: Annotated[int, typer.Option(help="Sample and bootstrap seed.")] = 0,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Top-1 / top-4 relevance of the baseline and an arm on the same requests (Table I).

    For each request of the arm's logs, the arm's first four results (what it showed) and the
    baseline's (the plain visual search of the same photo, run again) are judged relevant to
    the user's need or not: by the simulator's predicate on the hidden intent (`--judge truth`,
    evaluation only; `--world` gives its thresholds), or by a language model (`--judge llm`,
    any OpenAI-compatible server; replies are cached). Prints the rates and the difference in
    points with a 95% bootstrap interval over users, for all requests and the trigger subset.

    Example: revision experiment relevance --judge llm --base-url http://127.0.0.1:8080/v1 --json
    """
    from revision.experiment.judges import get_judge
    from revision.experiment.relevance import evaluate_relevance

    wh = open_warehouse(warehouse)
    days = (
        (first_day or "0000-01-01", last_day or "9999-12-31") if (first_day or last_day) else None
    )
    if judge == "llm":
        options: dict = {"base_url": base_url, "model": model, "images": images}
    else:
        options = {"world": world}
    judged = get_judge(judge, wh, **options)
    try:
        report = evaluate_relevance(wh, judged, arm=arm, days=days, limit=limit, seed=seed)
    finally:
        judged.close()
    if json:
        print_json(report)
        return
    _print_relevance(report)


def _print_relevance(report: dict) -> None:
    console.print(
        f"relevance by the {report['judge']} judge: {report['evaluated']} requests of arm "
        f"{report['arm']}, {report['pairs']} pairs judged",
        highlight=False,
    )
    for subset in ("all", "triggered"):
        block = report.get(subset)
        if not block:
            continue
        console.print(
            f"  {subset}: {block['requests']} requests, {block['users']} users",
            highlight=False,
        )
        for k in ("top1", "top4"):
            m = block[k]
            if m.get("diff_points") is None:
                console.print(f"    {k}: nothing judged ({m['unjudged']} unjudged)")
                continue
            lo, hi = m.get("ci95") or (float("nan"), float("nan"))
            console.print(
                f"    {k}: baseline {m['baseline']:.1%}, {report['arm']} {m['arm']:.1%}: "
                f"{m['diff_points']:+.1f} points [{lo:+.1f}, {hi:+.1f}], p={m['p']:.3f}"
                + (f" ({m['unjudged']} unjudged)" if m["unjudged"] else ""),
                highlight=False,
            )
    for note in report.get("notes", []):
        console.print(f"  [yellow]note:[/] {note}")


def _add_relevance(wh, analysis: dict, days, world) -> None:
    """Table I beside the A/B figures, where the simulator's truth exists (evaluation only)."""
    from revision.experiment.relevance import truth_relevance

    found, notes = truth_relevance(
        wh, analysis["arms"], baseline=analysis["baseline"], world=world, days=days
    )
    if found:
        analysis["relevance"] = found
    analysis["notes"].extend(notes)


def _print(analysis: dict) -> None:
    console.print(
        f"{analysis['requests']} requests, arms {', '.join(analysis['arms'])}; "
        f"trigger share {analysis['trigger_share']}"
    )
    for subset in ("triggered", "all"):
        for arm, block in analysis[subset].items():
            lifts = block["lift"]
            parts = [
                f"{m} {v['lift']:+.1%} [{v['ci95'][0]:+.1%}, {v['ci95'][1]:+.1%}] p={v['p']:.3f}"
                for m, v in lifts.items()
                if v.get("lift") is not None and m in ("no_click_ratio", "ctr", "gmv_per_request")
            ]
            console.print(f"  {subset:>9} {arm:>12}: " + "; ".join(parts), highlight=False)
    for rel in (analysis.get("relevance") or {}).values():
        _print_relevance(rel)
    for note in analysis.get("notes", []):
        console.print(f"  [yellow]note:[/] {note}")


@app.command("loop")
def loop(
    world: WorldOpt = None,
    weeks: Annotated[int, typer.Option(min=2, help="Weeks: the first is baseline traffic.")] = 3,
    users: Annotated[int, typer.Option(min=1, help="Simulated users.")] = 2000,
    requests: Annotated[int, typer.Option(min=1, help="Requests per week.")] = 8000,
    seed: Annotated[int, typer.Option(help="Traffic seed of the first week.")] = 0,
    epochs: Annotated[int, typer.Option(min=1, help="Planner SFT epochs per week.")] = 4,
    grpo_steps: Annotated[int, typer.Option(min=0, help="Planner GRPO steps per week.")] = 30,
    period_days: Annotated[
        int,
        typer.Option(
            min=1,
            help="Days between pipeline runs (Table III ablation: 4, 8, 16); --weeks "
            "counts these periods, --requests stays per 7 days.",
        ),
    ] = 7,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """The loop that learns from its own traffic: week 1 baseline, then each week an A/B test
    (baseline vs the planner the weekly pipeline published from the weeks before), and the
    pipeline mines that week's logs too (tools shown and used included).

    Examples:

      revision experiment loop --weeks 3 --requests 8000

      revision experiment loop --weeks 8 --period-days 4   # mining every 4 days
    """
    from revision.experiment.loop import run_loop

    report = run_loop(
        open_warehouse(warehouse),
        world=world,
        weeks=weeks,
        users=users,
        requests=requests,
        seed=seed,
        sft_epochs=epochs,
        grpo_steps=grpo_steps,
        period_days=period_days,
    )
    if json:
        print_json(report)
        return
    for week in report["weeks"]:
        console.print(jsonlib.dumps(week, default=str), highlight=False)

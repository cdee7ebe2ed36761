"""`revision planner …`: training data, training (embedded or TRL), evaluation, prediction."""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Annotated

import typer

from revision.cli._common import JsonOpt, WarehouseOpt, console, open_warehouse, print_json

app = typer.Typer(
    help="The planner REVISION-R1: data, SFT + GRPO, evaluation, prediction (paper §III-C).",
    no_args_is_help=True,
)

OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        help="Training folder (default: artifacts/planner/runs/latest).",
        show_default=False,
    ),
]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        help="A checkpoint or training folder (default: the published planner).",
        show_default=False,
    ),
]


def _default_out(wh) -> Path:
    return wh.artifact_dir("planner", "runs", "latest")


@app.command("data")
def data(
    run: Annotated[
        str | None,
        typer.Option("--run", help="Mining run (default: the latest).", show_default=False),
    ] = None,
    max_tools: Annotated[int, typer.Option(min=1, help="Tools per plan at most.")] = 2,
    keep_ratio: Annotated[
        float, typer.Option(help="Keep a signal while its confidence is this share of the first's.")
    ] = 0.5,
    test_days: Annotated[int, typer.Option(min=1, help="Last days held out for testing.")] = 2,
    heldout_designs: Annotated[float, typer.Option(help="Share of designs held out.")] = 0.3,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Build planner samples from mined signals, clustering and the tool list.

    Writes table planner/samples (build=…) and artifacts/planner/products (the features of
    every product the planner reads).

    Example: revision planner data --max-tools 2 --json
    """
    from revision.planner.data import DataConfig, build_planner_data

    report = build_planner_data(
        open_warehouse(warehouse),
        DataConfig(
            mining_run=run,
            max_tools=max_tools,
            keep_ratio=keep_ratio,
            test_days=test_days,
            heldout_designs=heldout_designs,
        ),
    )
    if json:
        print_json(report.as_dict())
        return
    console.print(
        f"build {report.build} from mining run {report.mining_run} (tool list "
        f"{report.toollist_digest}): {report.samples}, {report.tools_per_plan} tools per plan"
    )
    for split, tools in report.per_tool.items():
        console.print(f"  {split:>5}: " + ", ".join(f"({t}) {n}" for t, n in tools.items()))
    if report.left_out:
        console.print(f"  left out: {report.left_out}")


@app.command("train")
def train(
    backend: Annotated[
        str, typer.Option("--backend", help="embedded (CPU, from scratch) or trl (Qwen2.5-VL).")
    ] = "embedded",
    model: Annotated[
        Path | None,
        typer.Option("--model", help="trl: a Qwen2.5-VL model folder.", show_default=False),
    ] = None,
    out: OutOpt = None,
    epochs: Annotated[int, typer.Option(min=1, help="SFT epochs.")] = 8,
    grpo_steps: Annotated[int, typer.Option(min=0, help="GRPO steps (0: SFT only).")] = 60,
    generations: Annotated[int, typer.Option(min=2, help="GRPO group size G.")] = 8,
    dropout: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="SFT dropout (training only).")
    ] = 0.2,
    drop_results: Annotated[
        float,
        typer.Option(min=0.0, max=0.9, help="SFT: share of result tokens hidden per sample."),
    ] = 0.3,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run.")] = False,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Train the planner on the latest planner data: SFT, then GRPO on the hard samples.

    GRPO from a random model gets no signal (every sampled plan earns the same reward), so
    SFT always comes first. Curves and an HTML report are written per stage.

    Examples:

      revision planner train --epochs 8 --grpo-steps 60

      revision planner train --backend trl --model ./Qwen2.5-VL-3B-Instruct --out runs/r1
    """
    from revision import toollist
    from revision.errors import InputError
    from revision.planner.data import load_samples

    wh = open_warehouse(warehouse)
    doc = toollist.load(wh)
    samples = load_samples(wh, "train", expected_digest=doc.digest)
    if out is None:
        out = _default_out(wh)
        if not resume and out.is_dir() and any(out.iterdir()):
            # a new run in the default folder: the previous one is kept beside it, renamed
            # (publications hold their own copy, so nothing published moves)
            import time

            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(out.stat().st_mtime))
            out.rename(out.with_name(f"run-{stamp}"))
    if backend == "trl":
        from revision.planner.trl_backend import TRLConfig, to_chat_dataset, train_grpo, train_sft

        if model is None:
            raise InputError("--backend trl needs --model DIR (a Qwen2.5-VL model folder)")
        _with_meta(wh, samples)
        config = TRLConfig(model_dir=str(model), output_dir=str(out), num_generations=generations)
        dataset = to_chat_dataset(samples, doc_text(doc), image_root=str(wh.root))
        sft = train_sft(config, dataset)
        result = train_grpo(config, dataset) if grpo_steps else sft
        summary = {"backend": "trl", "sft": str(sft), "final": str(result)}
    elif backend == "embedded":
        from revision.planner.train import PlannerTrainConfig, train_planner

        report = train_planner(
            samples,
            PlannerTrainConfig(
                out=out,
                sft_epochs=epochs,
                grpo_steps=grpo_steps,
                num_generations=generations,
                dropout=dropout,
                drop_results=drop_results,
                skip_grpo=grpo_steps == 0,
            ),
            doc.digest,
            resume=resume,
        )
        summary = report.as_dict()
    else:
        raise InputError(f"--backend {backend!r}: valid backends are embedded, trl")
    if json:
        print_json(summary)
        return
    console.print(f"trained: {summary.get('final')}  ({summary.get('seconds', '?')} s)")


def doc_text(doc) -> list[tuple[int, str, str]]:
    return [(t.index, t.title, t.description) for t in doc.active() if t.component]


def _with_meta(wh, samples) -> None:
    """Images and result metadata for the TRL path (which reads photos, not embeddings)."""
    from revision.catalog.schema import load_products

    products = load_products(wh).set_index("product_id")
    for s in samples:
        s.meta["image"] = str(wh.resolve(s.meta["image"]))
        s.meta["results"] = [
            {
                "image": products.at[p, "image_path"],
                "title": products.at[p, "title"],
                "price": products.at[p, "price"],
            }
            for p in s.meta["results"]
            if p in products.index
        ]


@app.command("eval")
def evaluate(
    checkpoint: CheckpointOpt = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write the figures as JSON here.")
    ] = None,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Evaluate a planner on the held-out test split (paper Table IV shape): by default the
    latest training run (artifacts/planner/runs/latest), else the published planner.

    Answers: tool match, order match, set match, tools per plan, per main category. Thinking:
    BLEU-4, CIDEr, METEOR, ROUGE-L and a semantic score. With the simulator's truth (evaluation
    only): the share of plans that hold a tool serving the hidden intent.

    Example: revision planner eval --checkpoint artifacts/planner/runs/latest --json
    """
    from revision.eval.planner import evaluate_planner

    wh = open_warehouse(warehouse)
    if checkpoint is None and (_default_out(wh) / "final.json").is_file():
        checkpoint = _default_out(wh)  # what `revision planner train` just wrote
    figures = evaluate_planner(wh, checkpoint)
    if report is not None:
        report.write_text(jsonlib.dumps(figures, indent=2, default=str))
    if json:
        print_json(figures)
        return
    a = figures["answers"]
    console.print(
        f"{figures['checkpoint']}: tool match {a['tool_match']}, order match {a['order_match']}, "
        f"tools per plan {a['tools_per_plan']} on {a['requests']} test requests"
    )
    t = figures.get("thinking") or {}
    if t:
        console.print(
            f"  thinking: BLEU-4 {t['bleu4']}, CIDEr {t['cider']}, METEOR {t['meteor']}, "
            f"ROUGE-L {t['rouge_l']}, {t['judge_kind']} {t['judge']}"
        )
    if figures.get("intents"):
        console.print(f"  plans serving the hidden intent: {figures['intents']['all']}")


@app.command("predict")
def predict(
    photos: Annotated[list[Path], typer.Argument(help="Query photos.")],
    user: Annotated[str | None, typer.Option("--user", help="The user asking.")] = None,
    checkpoint: CheckpointOpt = None,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Plan tools for photos: `<think>…</think> (i) (j)`, with the baseline search's results.

    Example: revision planner predict q.jpg --user u123 --json
    """
    from revision.planner.online import PlanRequest, open_planner
    from revision.search._base import SearchRequest
    from revision.search.engine import SearchEngine
    from revision.search.pipeline import SearchPipeline

    wh = open_warehouse(warehouse)
    planner = open_planner(wh, checkpoint)
    engine = SearchEngine.open(wh)
    pipeline = SearchPipeline(engine)
    failed = 0
    for photo in photos:
        try:
            from revision.vision.images import load_image

            image = load_image(photo)
            embedding = engine.encode(image)
            response = pipeline.respond(SearchRequest(embedding=embedding, source=str(photo)))
            outcome = planner.plan(
                PlanRequest(
                    embedding=embedding,
                    results=[(h.product_id, h.score, h.rank) for h in response.results],
                    user_id=user,
                )
            )
        except Exception as exc:  # answer the rest, exit non-zero at the end
            failed += 1
            console.print(f"[red]{photo}: {exc}[/]")
            continue
        doc = {
            "query": str(photo),
            "plan": str(outcome.completion) if outcome.completion else None,
            "tools": list(outcome.completion.tools) if outcome.completion else [],
            "error": outcome.error,
            "planner_ms": outcome.ms,
            "planner_version": planner.version,
        }
        if json:
            print_json(doc)
        else:
            console.print(f"{photo}: {doc['plan'] or doc['error']}  ({outcome.ms:.1f} ms)")
    if failed:
        raise typer.Exit(1 if failed < len(photos) else 2)


@app.command("publish")
def publish_cmd(
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="Default: the latest training run's final checkpoint."),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold", help="Relevance below which the service triggers.", show_default=False
        ),
    ] = None,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Publish a planner for the service (it hot-reloads `artifacts/published/current.json`).

    Example: revision planner publish
    """
    from revision.planner.publish import publish
    from revision.planner.train import final_checkpoint

    wh = open_warehouse(warehouse)
    ckpt = final_checkpoint(checkpoint or _default_out(wh))
    pub = publish(wh, ckpt, trigger_threshold=threshold)
    if json:
        print_json(pub.as_dict())
        return
    console.print(f"published planner {pub.version} (tool list {pub.toollist_digest})")

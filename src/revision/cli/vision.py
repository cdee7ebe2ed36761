"""`revision vision …`: attribute heads, simulated user photos, OCR."""

from __future__ import annotations

from typing import Annotated

import typer

from revision.cli._common import JsonOpt, WarehouseOpt, console, open_warehouse, print_json

app = typer.Typer(help="Vision models: attribute heads, query photos, OCR.", no_args_is_help=True)


@app.command("train-attributes")
def train_attributes(
    augment: Annotated[int, typer.Option(help="Simulated user photos added to training.")] = 2000,
    eval_queries: Annotated[int, typer.Option(help="User photos to evaluate on.")] = 300,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 30,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Train colour / type / pattern / index-group heads on the catalog's labels.

    Reports held-out accuracy per attribute (variant groups unseen in training), on catalog
    photos and on simulated user photos, next to the majority-class baseline.

    Example: revision vision train-attributes --augment 2000 --json
    """
    from revision.search.engine import SearchEngine
    from revision.vision.training import train_attributes as train

    wh = open_warehouse(warehouse)
    engine = SearchEngine.open(wh)  # the catalog photos' raw embeddings, aligned to the index
    report = train(
        wh,
        engine.products.loc[engine.index.ids_],
        engine.raw_vectors,
        engine.encode,
        augment=augment,
        eval_queries=eval_queries,
        epochs=epochs,
        seed=seed,
    )
    if json:
        print_json(report)
        return
    console.print(
        f"trained on {report['train_rows']} rows; held out {report['test_products']} "
        f"products; saved {report['path']}"
    )
    console.print(
        f"{'attribute':>12} {'classes':>7} {'accuracy':>8} {'user photo':>10} {'majority':>8}"
    )
    for attr, r in report["attributes"].items():
        console.print(
            f"{attr:>12} {r['classes']:>7} {r['accuracy']:>8.3f} "
            f"{r['query_photo_accuracy'] or 0:>10.3f} {r['majority_baseline']:>8.3f}"
        )


@app.command("attributes")
def attributes(
    images: Annotated[list[str], typer.Argument(help="Photo path(s).")],
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Predict colour, type, pattern and index group for photos.

    Example: revision vision attributes photo.jpg --json
    """
    from revision.vision.understanding import QueryUnderstanding

    understanding = QueryUnderstanding.for_warehouse(open_warehouse(warehouse), require_heads=True)
    for path in images:
        prediction = understanding.photo(path).reading().as_dict()
        out = {
            "image": path,
            **{a: {"label": lab, "p": round(p, 4)} for a, (lab, p) in prediction.items()},
        }
        if json:
            print_json(out)
        else:
            console.print(
                f"[bold]{path}[/] "
                + ", ".join(f"{a}={lab} ({p:.2f})" for a, (lab, p) in prediction.items())
            )


@app.command("query-photo")
def query_photo(
    image: Annotated[str, typer.Argument(help="A catalog (product) photo.")],
    out: Annotated[str, typer.Option("--out", help="Where to write the JPEG.")],
    severity: Annotated[str, typer.Option(help="mild, medium or hard.")] = "medium",
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same photo).")] = 0,
) -> None:
    """Turn a product photo into a simulated user photo (crop, tilt, blur, light, background).

    There are no consumer photos in the data; these stand in for them.

    Example: revision vision query-photo item.jpg --severity hard --seed 3 --out q.jpg
    """
    from pathlib import Path

    from revision.errors import InputError
    from revision.vision.images import load_image
    from revision.vision.query_photos import SEVERITIES, query_photo_bytes

    if severity not in SEVERITIES:
        raise InputError(f"--severity {severity!r}: valid: {', '.join(SEVERITIES)}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_bytes(query_photo_bytes(load_image(image), severity, seed))
    console.print(f"wrote {out}")


@app.command("ocr")
def ocr(
    images: Annotated[list[str], typer.Argument(help="Photo path(s).")],
    min_score: Annotated[float, typer.Option(help="Drop lines below this confidence.")] = 0.5,
    json: JsonOpt = False,
) -> None:
    """Read text (brands, labels) on photos with the bundled PP-OCR models.

    Example: revision vision ocr label.jpg --json
    """
    from revision.vision.ocr import OcrReader

    reader = OcrReader(min_score=min_score)
    for path in images:
        lines = reader.read(path)
        if json:
            print_json(
                {
                    "image": path,
                    "lines": [
                        {"text": ln.text, "box": ln.box, "score": round(ln.score, 4)}
                        for ln in lines
                    ],
                }
            )
        else:
            console.print(f"[bold]{path}[/]: " + " | ".join(ln.text for ln in lines))

import io
import shutil

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from revision.catalog import import_hm, import_table, load_products
from revision.catalog.importer import parse_column_map
from revision.cli.main import app
from revision.errors import InputError
from revision.warehouse import Warehouse


def test_hm_import_normalises_and_prices_from_real_purchases(small_hm, tmp_path):
    wh = Warehouse(tmp_path / "wh")
    report = import_hm(small_hm, wh)
    products = load_products(wh)
    articles = pd.read_csv(small_hm / "articles.csv", dtype=str)
    assert report.imported == len(articles) == len(products) and report.rejected == 0
    assert products["product_id"].is_monotonic_increasing
    sales = pd.read_csv(small_hm / "transactions.csv", dtype={"article_id": str})
    median = sales.groupby("article_id")["price"].median()
    priced = products.dropna(subset=["price"])
    assert len(priced) > 0 and len(priced) < len(products)  # never invented for the rest
    for row in priced.head(20).itertuples():
        assert row.price == pytest.approx(median[row.product_id])
    assert products["price"].isna().sum() == (~products["product_id"].isin(median.index)).sum()
    row = products.iloc[0]
    source = articles.set_index("article_id").loc[row.product_id]
    assert row.title == source["prod_name"] and row.category == source["product_type_name"]
    assert row.variant_group == source["product_code"]


def test_importing_twice_changes_nothing(small_hm, tmp_path):
    wh = Warehouse(tmp_path / "wh")
    import_hm(small_hm, wh)
    first = load_products(wh)
    report = import_hm(small_hm, wh)
    pd.testing.assert_frame_equal(first, load_products(wh))
    assert report.total == len(first)


@pytest.fixture
def messy_table(hm_dir, tmp_path):
    """A CSV with good rows, a duplicate id, a corrupt JPEG, a text file and a missing image."""
    folder = tmp_path / "shop"
    (folder / "img").mkdir(parents=True)
    good = sorted((hm_dir / "images" / "011").glob("*.jpg"))[:3]
    for path in good:
        shutil.copy(path, folder / "img" / path.name)
    data = good[0].read_bytes()
    (folder / "img" / "cut.jpg").write_bytes(data[: len(data) // 2])
    (folder / "img" / "notes.jpg").write_text("not an image")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "PNG")
    (folder / "img" / "red.png").write_bytes(buf.getvalue())
    rows = [
        ("a1", "Dress", f"img/{good[0].name}", "12.5"),
        ("a2", "Shirt", f"img/{good[1].name}", ""),
        ("a1", "Dup", f"img/{good[2].name}", "3"),
        ("a3", "Cut", "img/cut.jpg", "1"),
        ("a4", "Text", "img/notes.jpg", "1"),
        ("a5", "Gone", "img/missing.jpg", "1"),
        ("a6", "Red", "img/red.png", "abc"),
        ("a7", "Red", "img/red.png", "2"),
    ]
    frame = pd.DataFrame(rows, columns=["sku", "name", "photo", "cost"])
    frame.to_csv(folder / "items.csv", index=False)
    return folder / "items.csv"


def test_table_import_reports_bad_rows_and_keeps_good_ones(messy_table, tmp_path):
    wh = Warehouse(tmp_path / "wh")
    mapping = parse_column_map(["id=sku", "title=name", "image=photo", "price=cost"])
    report = import_table(messy_table, mapping, wh)
    products = load_products(wh)
    assert products["product_id"].tolist() == ["a1", "a2", "a7"]
    assert products.set_index("product_id")["price"].isna().tolist() == [False, True, False]
    rejects = {(r["row"], r["field"]): r["reason"] for r in report.rejects}
    assert "duplicate id (first at row 1)" in rejects[(3, "id")]
    assert "cut.jpg" in rejects[(4, "image")]
    assert "notes.jpg" in rejects[(5, "image")]
    assert "missing.jpg" in rejects[(6, "image")]
    assert "abc" in rejects[(7, "price")]
    assert all(r["source"] == str(messy_table) for r in report.rejects)
    stored = wh.read_pandas("catalog/rejects")
    assert len(stored) == report.rejected == 5
    import_table(messy_table, mapping, wh)  # idempotent, rejects too
    assert len(wh.read_pandas("catalog/rejects")) == 5


def test_wrong_column_names_and_empty_catalog_fail_clearly(messy_table, tmp_path):
    wh = Warehouse(tmp_path / "wh")
    with pytest.raises(InputError, match=r"items.csv: missing column\(s\) title_col"):
        import_table(messy_table, {"id": "sku", "title": "title_col", "image": "photo"}, wh)
    with pytest.raises(InputError, match="lacks required field"):
        import_table(messy_table, {"id": "sku"}, wh)
    with pytest.raises(InputError, match="unknown field 'colur'"):
        parse_column_map(["colur=x"])
    empty = messy_table.parent / "empty.csv"
    empty.write_text("sku,name,photo\n")
    with pytest.raises(InputError, match=r"empty\.csv: the catalog is empty"):
        import_table(empty, {"id": "sku", "title": "name", "image": "photo"}, wh)


def test_cli_import_json_and_clear_error(messy_table, tmp_path):
    runner = CliRunner()
    args = [
        "catalog",
        "import",
        str(messy_table),
        "--format",
        "table",
        "--map",
        "id=sku",
        "--map",
        "title=name",
        "--map",
        "image=photo",
        "--json",
        "--warehouse",
        str(tmp_path / "wh"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    import json

    out = json.loads(result.stdout)
    assert out["imported"] == 4 and out["rejected"] == 4  # no price map: 'abc' is not read
    bad = runner.invoke(app, ["catalog", "import", str(messy_table), "--format", "xml"])
    assert isinstance(bad.exception, InputError) and "valid formats" in str(bad.exception)

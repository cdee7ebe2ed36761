from pathlib import Path

import pyarrow as pa
import pytest

from revision import tables
from revision.errors import InputError, MissingArtifactError
from revision.settings import Settings, get_settings
from revision.warehouse import Warehouse, resolve_root


def test_root_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("REVISION_HOME", str(tmp_path / "env"))
    get_settings.cache_clear()
    assert resolve_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_root(None) == tmp_path / "env"
    monkeypatch.delenv("REVISION_HOME")
    assert Settings().home == Path(".revision")


def test_a_declared_table_must_fit_its_declaration(tmp_path):
    wh = Warehouse(tmp_path)
    with pytest.raises(InputError, match="logs/clicks: column 'request_id' is missing"):
        wh.write(tables.CLICKS, pa.table({"x": [1]}), {"dt": "2026-11-25"})
    wrong = tables.CLICKS.empty().set_column(0, "request_id", pa.array([], pa.int64()))
    with pytest.raises(InputError, match="'request_id' is int64, declared string"):
        wh.write("logs/clicks", wrong, {"dt": "2026-11-25"})  # by name, the same check
    extra = tables.CLICKS.empty().append_column("surprise", pa.array([], pa.int8()))
    with pytest.raises(InputError, match="undeclared column"):
        wh.write(tables.CLICKS, extra, {"dt": "2026-11-25"})
    open_table = tables.IMPRESSIONS.empty().append_column("source", pa.array([], pa.string()))
    wh.write(tables.IMPRESSIONS, open_table, {"dt": "2026-11-25"})  # open: extras allowed
    assert wh.exists("logs/impressions")


def test_partitioned_round_trip_keeps_partitions_as_strings(tmp_path):
    wh = Warehouse(tmp_path)
    wh.write("demo/requests", pa.table({"x": [1, 2]}), {"dt": "2026-11-25", "run": "a"})
    wh.write("demo/requests", pa.table({"x": [3]}), {"dt": "2026-11-26", "run": "a"})
    table = wh.read("demo/requests").sort_by("x")
    assert table.column("x").to_pylist() == [1, 2, 3]
    assert table.column("dt").to_pylist() == ["2026-11-25", "2026-11-25", "2026-11-26"]
    assert table.schema.field("dt").type == pa.string()
    assert (tmp_path / "demo/requests/dt=2026-11-25/run=a/part.parquet").exists()


def test_rewrite_replaces_and_leaves_no_temp_files(tmp_path):
    wh = Warehouse(tmp_path)
    wh.write("t", pa.table({"x": [1]}))
    wh.write("t", pa.table({"x": [2]}))
    assert wh.read("t").column("x").to_pylist() == [2]
    assert [p.name for p in (tmp_path / "t").iterdir()] == ["part.parquet"]
    # a writer killed mid-file left its temp file: the next write of that file sweeps it
    (tmp_path / "t" / ".part.parquet.0123abcd.tmp").write_bytes(b"PAR1 half")
    (tmp_path / "t" / ".other.parquet.0123abcd.tmp").write_bytes(b"another file's")
    wh.write("t", pa.table({"x": [3]}))
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        ".other.parquet.0123abcd.tmp",
        "part.parquet",
    ]


def test_duckdb_views_query_tables(tmp_path):
    wh = Warehouse(tmp_path)
    wh.write("demo/clicks", pa.table({"x": [1, 2, 3]}), {"dt": "2026-11-25"})
    con = wh.duckdb("demo/clicks")
    assert con.execute("select sum(x), min(dt) from demo_clicks").fetchone() == (6, "2026-11-25")


def test_bad_names_and_missing_tables_fail_clearly(tmp_path):
    wh = Warehouse(tmp_path)
    with pytest.raises(InputError, match="bad table name"):
        wh.write("../escape", pa.table({"x": [1]}))
    with pytest.raises(InputError, match="bad partition value"):
        wh.write("t", pa.table({"x": [1]}), {"dt": "a/b"})
    with pytest.raises(MissingArtifactError, match="'mining/signals' not found"):
        wh.read("mining/signals")


def test_paths_inside_are_stored_relative_and_resolved_back(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    inside = wh.artifact("sim", "photos", "a.jpg")
    outside = tmp_path / "catalog" / "b.jpg"
    assert wh.relative(inside) == "artifacts/sim/photos/a.jpg"
    assert wh.relative(outside) == str(outside)  # outside the warehouse: kept absolute
    assert wh.resolve("artifacts/sim/photos/a.jpg") == inside
    assert wh.resolve(str(outside)) == outside
    moved = Warehouse(tmp_path / "elsewhere")
    assert moved.resolve(wh.relative(inside)) == moved.root / "artifacts/sim/photos/a.jpg"

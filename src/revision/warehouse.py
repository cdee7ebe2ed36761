"""The warehouse: a directory of hive-partitioned Parquet tables that stages share.

A table is a folder, `name/` (names may nest: `logs/requests`), holding `part*.parquet` files,
optionally under partition folders `key=value/` (`dt=YYYY-MM-DD/run=ID/`). Writes go to a
temporary file and are renamed into place, so a killed process never leaves half a file.
Partition values are always read back as strings (DuckDB and pyarrow would guess a DATE).
Non-tabular artefacts (indexes, trained heads, caches, reports) live under `artifacts/`.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from revision.errors import InputError, MissingArtifactError
from revision.tables import Table
from revision.tables import get as declared

_NAME = re.compile(r"^[a-z0-9_]+(/[a-z0-9_]+)*$")
_PART_VALUE = re.compile(r"^[A-Za-z0-9_.:-]+$")


def resolve_root(path: str | os.PathLike | None = None) -> Path:
    """`--warehouse DIR`, else the settings' home (`$REVISION_HOME`, else `./.revision`)."""
    if path:
        return Path(path)
    from revision.settings import get_settings

    return get_settings().home


class Warehouse:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = resolve_root(root).absolute()

    def __repr__(self) -> str:
        return f"Warehouse({str(self.root)!r})"

    # -- paths ---------------------------------------------------------------------------------
    def table_dir(self, name: str) -> Path:
        if not _NAME.match(name):
            raise InputError(f"bad table name {name!r}: use lowercase words joined by '/'")
        return self.root / name

    def artifact(self, *parts: str) -> Path:
        """Path of a non-tabular artefact file; its folder is created."""
        path = self.root.joinpath("artifacts", *parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def artifact_dir(self, *parts: str) -> Path:
        """A folder for non-tabular artefacts (created), e.g. `artifact_dir("models")`."""
        path = self.root.joinpath("artifacts", *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def relative(self, path: str | os.PathLike) -> str:
        """How a file inside the warehouse is stored in a table: relative to the root, so the
        warehouse can move (or be copied to another machine) without breaking its logs."""
        path = Path(path).absolute()
        return (
            path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)
        )

    def resolve(self, path: str | os.PathLike) -> Path:
        """A path read from a table: relative ones start at the warehouse root."""
        path = Path(path)
        return path if path.is_absolute() else self.root / path

    def exists(self, name: str) -> bool:
        folder = self.table_dir(name)
        return folder.is_dir() and any(folder.rglob("*.parquet"))

    # -- writing -------------------------------------------------------------------------------
    def write(
        self,
        name: str,
        table: pa.Table,
        partition: Mapping[str, str] | None = None,
        *,
        file: str = "part.parquet",
    ) -> Path:
        """Atomically write `table` as `name/[k=v/...]/file`, replacing that file if present.
        A declared table (`revision.tables`) must fit its declaration."""
        spec = name if isinstance(name, Table) else declared(name)
        if spec is not None:
            problem = spec.check(table)
            if problem:
                raise InputError(f"writing table {spec.name}: {problem}")
        folder = self.table_dir(name)
        for key, value in (partition or {}).items():
            value = str(value)
            if not _PART_VALUE.match(value):
                raise InputError(f"bad partition value {key}={value!r} for table {name}")
            folder = folder / f"{key}={value}"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / file
        for stale in folder.glob(f".{file}.*.tmp"):  # left by a writer killed mid-file
            stale.unlink(missing_ok=True)
        tmp = folder / f".{file}.{uuid.uuid4().hex}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, target)
        return target

    def drop(self, name: str, partition: Mapping[str, str] | None = None) -> None:
        """Remove a table or one of its partitions."""
        import shutil

        folder = self.table_dir(name)
        for key, value in (partition or {}).items():
            folder = folder / f"{key}={value}"
        if folder.exists():
            shutil.rmtree(folder)

    # -- reading -------------------------------------------------------------------------------
    def files(self, name: str) -> list[Path]:
        folder = self.table_dir(name)
        return sorted(p for p in folder.rglob("*.parquet") if not p.name.startswith("."))

    def dataset(self, name: str) -> ds.Dataset:
        files = self.files(name)
        if not files:
            raise MissingArtifactError(
                f"table {str(name)!r} not found in warehouse {self.root} "
                "(run the stage that writes it)"
            )
        folder = self.table_dir(name)
        keys = [
            seg.split("=", 1)[0] for seg in files[0].relative_to(folder).parts[:-1] if "=" in seg
        ]
        partitioning = ds.partitioning(pa.schema([(k, pa.string()) for k in keys]), flavor="hive")
        return ds.dataset(
            [str(f) for f in files],
            schema=_with_optional(name, files[0], keys),
            format="parquet",
            partitioning=partitioning,
            partition_base_dir=str(folder),
        )

    def read(self, name: str, columns: list[str] | None = None, filter=None) -> pa.Table:
        return self.dataset(name).to_table(columns=columns, filter=filter)

    def read_pandas(self, name: str, columns: list[str] | None = None, filter=None):
        return self.read(name, columns=columns, filter=filter).to_pandas()

    def duckdb(self, *names: str):
        """A DuckDB connection with a view per named table (view name: `/` → `_`)."""
        import duckdb

        con = duckdb.connect()
        for name in names:
            con.register(name.replace("/", "_"), self.dataset(name))
        return con


def _with_optional(name: str, first: Path, keys: list[str]) -> pa.Schema | None:
    """A dataset's schema comes from its first file; a declared table's optional columns
    (`Table.optional`) that this file lacks are added, so that files of other writers that have
    them (the service's decision columns beside the simulator's rows) are read, not dropped."""
    spec = declared(name)
    if spec is None or not len(spec.optional):
        return None
    schema = pq.read_schema(first)
    missing = [f for f in spec.optional if f.name not in schema.names]
    if not missing:
        return None
    own = [f for f in schema if f.name not in keys]
    return pa.schema([*own, *missing, *(pa.field(k, pa.string()) for k in keys)])

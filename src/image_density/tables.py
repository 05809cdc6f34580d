"""Tidy CSV tables (results/tables/*.csv): insert-or-replace rows by key, atomically, under a lock.

One row per model x dataset x split x setting; `key_columns` say which columns identify a row, so
rerunning an evaluation replaces its row instead of adding a second one. Several jobs may update the
same table at once (Snakemake runs them in parallel): a read-modify-write happens under an exclusive
`fcntl.flock` on `<table>.lock`, and the new table replaces the old one by os.replace, so a reader
never sees half a file.
"""

from __future__ import annotations

import csv
import fcntl
import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from image_density import atomic


def _cell(v: Any) -> str:
    if isinstance(v, np.generic):
        v = v.item()
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)  # shortest exact round-trip
    return str(v)


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(columns, rows as dicts of strings) of a CSV table; ([], []) when it does not exist."""
    path = Path(path)
    if not path.exists():
        return [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def write_rows(path: Path, rows: Iterable[Mapping[str, Any]], columns: list[str] | None = None) -> None:
    """Write a whole table atomically (temp file in the same folder + os.replace)."""
    path = Path(path)
    rows = list(rows)
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: _cell(r.get(c)) for c in columns})
    atomic.write_text(path, buf.getvalue())


def upsert_rows(path: Path, rows: Iterable[Mapping[str, Any]], key_columns: list[str]) -> None:
    """Insert `rows` into the CSV at `path`, replacing existing rows with the same key_columns values.

    Existing column order is kept, new columns go at the end; rows keep their order, replaced rows
    take the place of the old ones.
    """
    path = Path(path)
    rows = list(rows)
    missing = [(i, k) for i, r in enumerate(rows) for k in key_columns if k not in r]
    if missing:
        raise ValueError(f"{path}: rows lack key columns {sorted({k for _, k in missing})}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        columns, old = read_rows(path)
        absent = [k for k in key_columns if old and k not in columns]
        if absent:
            raise ValueError(f"{path}: existing table has no key columns {absent} (columns: {columns})")

        def key(r: Mapping[str, Any]) -> tuple[str, ...]:
            return tuple(_cell(r.get(k)) for k in key_columns)

        new = {key(r): {c: _cell(v) for c, v in r.items()} for r in rows}
        merged = [new.pop(key(r), r) for r in old]
        merged += list(new.values())
        columns += [c for r in rows for c in r if c not in columns]
        write_rows(path, merged, list(dict.fromkeys(columns)))

"""The results store: one SQLite file (WAL mode) per run directory, one row per cell.

Each finished cell is written at once in one transaction. A ``done`` row is never overwritten, so
re-running a spec into the same directory resumes: finished cells are skipped, failed ones run
again, nothing is duplicated. All SQL uses bound parameters.

Integrity and provenance:

- A file that is not a privfl store (0 bytes, not SQLite, no ``cells`` table) raises
  :class:`StoreError` naming the path; nothing is created or overwritten in its place.
- ``meta`` holds the spec bound to the run (its content hash), the privfl / torch / Python versions
  and the machine's devices (:func:`provenance`); every cell row names the spec hash and the versions
  that produced it (column ``producer``), so a report can say which versions produced which cells.
- Results are strict JSON (RFC 8259, readable by any tool): a non-finite float is stored as ``null``
  and listed, by its path in the result, in the row's ``nonfinite`` column (e.g.
  ``[[["summary", "epsilon"], "inf"]]``); :meth:`Store.rows` puts the values back.
"""

from __future__ import annotations

import json
import math
import platform
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Store", "CellRow", "StoreError", "DB_NAME", "provenance", "encode_strict", "decode_strict"]

DB_NAME = "results.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    cell_id   TEXT PRIMARY KEY,
    spec      TEXT NOT NULL,
    label     TEXT NOT NULL,
    seed      INTEGER NOT NULL,
    scenario  TEXT NOT NULL,
    status    TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    result    TEXT,
    error     TEXT,
    attempts  INTEGER NOT NULL DEFAULT 1,
    finished  REAL NOT NULL,
    nonfinite TEXT,
    producer  TEXT
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
# columns added after the first release (older stores gain them, empty, on open)
_ADDED_COLUMNS = {"nonfinite": "TEXT", "producer": "TEXT"}


class StoreError(Exception):
    """The run directory's store cannot be used: damaged, not a privfl store, or bound to another spec."""


@dataclass
class CellRow:
    cell_id: str
    spec: str
    label: str
    seed: int
    scenario: dict[str, Any]
    status: str
    result: dict[str, Any] | None
    error: str | None
    attempts: int
    finished: float
    producer: dict[str, Any] = field(default_factory=dict)


def provenance() -> dict[str, Any]:
    """What produced a result: privfl, torch and Python versions and this machine's devices."""
    import torch

    import privfl

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    return {
        "privfl": privfl.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "devices": devices,
    }


# ---------------------------------------------------------------------------------------- strict JSON
def encode_strict(obj: Any) -> tuple[Any, list[list[Any]]]:
    """``(clean, flags)``: ``obj`` with every non-finite float replaced by ``None``, and the
    ``[path, "inf" | "-inf" | "nan"]`` of each replaced value."""
    flags: list[list[Any]] = []

    def walk(x: Any, path: list[Any]) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            flags.append([list(path), "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")])
            return None
        if isinstance(x, dict):
            return {k: walk(v, [*path, k]) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, [*path, i]) for i, v in enumerate(x)]
        return x

    return walk(obj, []), flags


def decode_strict(obj: Any, flags: list[list[Any]] | None) -> Any:
    """Undo :func:`encode_strict` in place (returns ``obj``)."""
    for path, value in flags or []:
        node = obj
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = float(value)
    return obj


# ---------------------------------------------------------------------------------------- the store
def check_store_file(path: Path) -> None:
    """Raise :class:`StoreError` when ``path`` exists but is a directory or an empty file."""
    if not path.exists():
        return
    if not path.is_file():
        raise StoreError(f"{str(path)!r} is not a file; a run directory's store must be a privfl results file")
    size = path.stat().st_size
    if size == 0:
        raise StoreError(
            f"{str(path)!r} is empty (0 bytes): a damaged or truncated results store. Nothing was run or "
            "overwritten; move the file away (a new run starts from scratch) or choose another --out")
    # The header is not read with open(): closing another descriptor of an SQLite file drops the POSIX
    # locks this process's connections hold on it. SQLite itself rejects a file that is not a database.


class Store:
    """``Store(run_dir)`` opens (creating if needed) ``run_dir/results.sqlite``.

    ``create=False`` only opens an existing store (:class:`StoreError` when there is none).
    """

    def __init__(self, run_dir: str | Path, *, create: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        check_store_file(self.path)
        if not self.path.exists():
            if not create:
                raise StoreError(f"{str(self.run_dir)!r} holds no {DB_NAME}; run `privfl run` into it first")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with self._connect() as con:
                con.execute("PRAGMA journal_mode=WAL")
                con.executescript(SCHEMA)
            return
        with self._connect(what="not an SQLite database, or a damaged one") as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {"cells", "meta"} <= tables:
                raise StoreError(f"{str(self.path)!r} is an SQLite file but not a privfl results store "
                                 f"(tables: {', '.join(sorted(tables)) or 'none'})")
            have = {r[1] for r in con.execute("PRAGMA table_info(cells)")}
            for name, kind in _ADDED_COLUMNS.items():
                if name not in have:
                    con.execute(f"ALTER TABLE cells ADD COLUMN {name} {kind}")  # names from the constant above

    @contextmanager
    def _connect(self, what: str = "damaged or unreadable results store") -> Iterator[sqlite3.Connection]:
        try:
            con = sqlite3.connect(self.path, timeout=60.0)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {str(self.path)!r}: {exc}") from None
        try:
            con.execute("PRAGMA busy_timeout = 60000")
            with con:  # one transaction, committed on success
                yield con
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            raise StoreError(f"{str(self.path)!r}: {what} ({exc}). Nothing was run or overwritten; move the file "
                             "away or choose another --out") from None
        finally:
            con.close()

    # ------------------------------------------------------------------ writes
    def record(
        self,
        *,
        cell_id: str,
        spec: str,
        label: str,
        seed: int,
        scenario: dict[str, Any],
        status: str,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        producer: dict[str, Any] | None = None,
    ) -> bool:
        """Write a finished (``done``) or ``failed`` cell. A ``done`` row is never replaced.

        Returns False when the cell was already done (nothing written).
        """
        if status not in ("done", "failed"):
            raise ValueError(f"status must be 'done' or 'failed', got {status!r}")
        clean, flags = encode_strict(result) if result is not None else (None, [])
        clean_scenario, _ = encode_strict(scenario)
        with self._connect() as con:
            cur = con.execute(
                """
                INSERT INTO cells (cell_id, spec, label, seed, scenario, status, result, error, attempts, finished,
                                   nonfinite, producer)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)
                ON CONFLICT(cell_id) DO UPDATE SET
                    status = excluded.status, result = excluded.result, error = excluded.error,
                    attempts = cells.attempts + 1, finished = excluded.finished, nonfinite = excluded.nonfinite,
                    producer = excluded.producer, label = excluded.label, spec = excluded.spec
                WHERE cells.status != 'done'
                """,
                (
                    cell_id,
                    spec,
                    label,
                    int(seed),
                    json.dumps(clean_scenario, sort_keys=True, allow_nan=False),
                    status,
                    None if clean is None else json.dumps(clean, allow_nan=False),
                    error,
                    time.time(),
                    json.dumps(flags) if flags else None,
                    json.dumps(producer or {}, allow_nan=False),
                ),
            )
            return cur.rowcount > 0

    def relabel(self, labels: dict[str, tuple[str, str]]) -> None:
        """Set ``(spec name, label)`` of existing cells by id (a reused cell shows the current spec's label)."""
        with self._connect() as con:
            con.executemany("UPDATE cells SET spec = ?, label = ? WHERE cell_id = ?",
                            [(s, lab, cid) for cid, (s, lab) in labels.items()])

    def set_meta(self, key: str, value: Any) -> None:
        with self._connect() as con:
            con.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value, allow_nan=False)),
            )

    # ------------------------------------------------------------------ reads
    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._connect() as con:
            row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def done_ids(self) -> set[str]:
        with self._connect() as con:
            return {r[0] for r in con.execute("SELECT cell_id FROM cells WHERE status = 'done'")}

    def count(self) -> int:
        with self._connect() as con:
            return int(con.execute("SELECT COUNT(*) FROM cells").fetchone()[0])

    def rows(self, status: str | None = None) -> list[CellRow]:
        query = ("SELECT cell_id, spec, label, seed, scenario, status, result, error, attempts, finished, nonfinite, "
                 "producer FROM cells")
        args: tuple[Any, ...] = ()
        if status is not None:
            query += " WHERE status = ?"
            args = (status,)
        query += " ORDER BY rowid"
        with self._connect() as con:
            raw = con.execute(query, args).fetchall()
        out = []
        for r in raw:
            try:
                result = None if r[6] is None else decode_strict(json.loads(r[6]), json.loads(r[10] or "[]"))
                row = CellRow(cell_id=r[0], spec=r[1], label=r[2], seed=r[3], scenario=json.loads(r[4]),
                              status=r[5], result=result, error=r[7], attempts=r[8], finished=r[9],
                              producer=json.loads(r[11] or "{}"))
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                raise StoreError(f"{str(self.path)!r}: cell {r[0]!r} is unreadable: {exc}") from None
            out.append(row)
        return out

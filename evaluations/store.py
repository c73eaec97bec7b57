"""The results store: one SQLite file (WAL mode) per run directory, one row per cell.

Each finished cell is written at once, by the process that computed it, in one transaction.
A ``done`` row is never overwritten, so re-running a spec into the same directory resumes:
finished cells are skipped, failed ones run again, nothing is duplicated. All SQL uses bound
parameters.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Store", "CellRow", "DB_NAME"]

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
    finished  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


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


class Store:
    """``Store(run_dir)`` opens (creating if needed) ``run_dir/results.sqlite``."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=60.0)
        try:
            con.execute("PRAGMA busy_timeout = 60000")
            with con:  # one transaction, committed on success
                yield con
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
    ) -> bool:
        """Write a finished (``done``) or ``failed`` cell. A ``done`` row is never replaced.

        Returns False when the cell was already done (nothing written).
        """
        if status not in ("done", "failed"):
            raise ValueError(f"status must be 'done' or 'failed', got {status!r}")
        with self._connect() as con:
            cur = con.execute(
                """
                INSERT INTO cells (cell_id, spec, label, seed, scenario, status, result, error, attempts, finished)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?)
                ON CONFLICT(cell_id) DO UPDATE SET
                    status = excluded.status, result = excluded.result, error = excluded.error,
                    attempts = cells.attempts + 1, finished = excluded.finished
                WHERE cells.status != 'done'
                """,
                (
                    cell_id,
                    spec,
                    label,
                    int(seed),
                    json.dumps(scenario, sort_keys=True),
                    status,
                    None if result is None else json.dumps(result, allow_nan=True),
                    error,
                    time.time(),
                ),
            )
            return cur.rowcount > 0

    def set_meta(self, key: str, value: Any) -> None:
        with self._connect() as con:
            con.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

    # ------------------------------------------------------------------ reads
    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._connect() as con:
            row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def done_ids(self) -> set[str]:
        with self._connect() as con:
            return {r[0] for r in con.execute("SELECT cell_id FROM cells WHERE status = 'done'")}

    def rows(self, status: str | None = None) -> list[CellRow]:
        query = "SELECT cell_id, spec, label, seed, scenario, status, result, error, attempts, finished FROM cells"
        args: tuple[Any, ...] = ()
        if status is not None:
            query += " WHERE status = ?"
            args = (status,)
        query += " ORDER BY rowid"
        with self._connect() as con:
            raw = con.execute(query, args).fetchall()
        return [
            CellRow(
                cell_id=r[0],
                spec=r[1],
                label=r[2],
                seed=r[3],
                scenario=json.loads(r[4]),
                status=r[5],
                result=None if r[6] is None else json.loads(r[6]),
                error=r[7],
                attempts=r[8],
                finished=r[9],
            )
            for r in raw
        ]

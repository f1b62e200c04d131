"""RunStore: atomic, batched Parquet part files per table, and readers that refuse bad files.

Parts of an older schema version that READABLE_VERSIONS names are read as the current schema,
the columns they lack NULL (pyarrow fills them when a part is read with the current schema).
Layout: RUN_DIR/tables/<table>/part-<ns>-<pid>-<seq>.parquet. A part is written under a
temporary name, fsynced, then renamed, so readers (and DuckDB globs over part-*.parquet)
never see a torn file; leftovers of a crash are removed when a store is opened.
Appends are buffered and flushed as one part per table when `flush_rows` rows are waiting
or the oldest waiting row is `flush_seconds` old (`flush_if_due`, called by the writer's loop).
`compact` merges a table's parts into one that names them (`actscale.supersedes`); readers
skip superseded parts, so a crash during a compaction never loses or doubles a row.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from storage.durable import TMP_PREFIX, fsync_dir, replace_durably
from storage.errors import StorageError
from storage.run_dir import RunDir
from storage.schema import (
    META_SUPERSEDES,
    META_TABLE,
    META_VERSION,
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    SCHEMAS,
    schema_for,
)

COMPACT_OVER = 50  # a table with more parts than this is compacted after a flush


def table_dir(run_dir: Path, table: str) -> Path:
    return RunDir(run_dir).table(table)


def part_files(run_dir: Path, table: str) -> list[Path]:
    return sorted(table_dir(run_dir, table).glob("part-*.parquet"))


def check_part(path: Path, table: str) -> str | None:
    """None if `path` is a readable actscale part of `table`, else why it is refused."""
    return _inspect(path, table)[0]


def _inspect(path: Path, table: str) -> tuple[str | None, list[str]]:
    """(why the part is refused or None, the names of the parts it supersedes: a compacted part's)."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception as exc:  # pyarrow raises several types for corrupt files
        return f"{path}: not a readable Parquet file ({type(exc).__name__}: {str(exc)[:120]})", []
    problem = _refusal(path, table, meta)
    return problem, json.loads(meta.get(META_SUPERSEDES, b"[]")) if problem is None else []


def _refusal(path: Path, table: str, meta: dict[bytes, bytes]) -> str | None:
    if META_VERSION not in meta:
        return f"{path}: not an actscale part file (no {META_VERSION.decode()} metadata); move it out of {path.parent}"
    version = meta[META_VERSION].decode()
    if version not in {str(v) for v in READABLE_VERSIONS}:
        readable = ", ".join(str(v) for v in READABLE_VERSIONS)
        return (f"{path}: schema version {version} is not supported (this actscale reads versions {readable}, "
                f"writes {SCHEMA_VERSION}); upgrade actscale or move the file away")
    if meta.get(META_TABLE, b"").decode() != table:
        return f"{path}: holds table {meta.get(META_TABLE, b'?').decode()!r}, not {table!r}"
    return None


@dataclass
class ReadResult:
    table: pa.Table
    files: list[Path]
    problems: list[str] = field(default_factory=list)


def valid_parts(run_dirs: list[Path] | Path, table: str) -> tuple[list[Path], list[str]]:
    """The part files of `table` that can be read, and why each other file is refused. A part that
    a present compacted part supersedes is left out: its rows are in the compacted one."""
    files, problems, _ = _parts(run_dirs, table)
    return files, problems


def _parts(run_dirs: list[Path] | Path, table: str) -> tuple[list[Path], list[str], list[Path]]:
    """(valid parts, refusals, superseded parts that a crash during compaction left behind)."""
    if table not in SCHEMAS:
        raise StorageError(f"unknown table {table!r}; tables: {', '.join(SCHEMAS)}")
    dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else run_dirs
    files: list[Path] = []
    problems: list[str] = []
    superseded: list[Path] = []
    for run_dir in dirs:
        found: list[Path] = []
        covered: set[str] = set()
        for path in part_files(Path(run_dir), table):
            problem, supersedes = _inspect(path, table)
            (found.append(path) if problem is None else problems.append(problem))
            covered.update(supersedes)
        for path in found:
            (superseded if path.name in covered else files).append(path)
    return files, problems, superseded


VANISHED_RETRIES = 20  # a part deleted between listing and reading (a compaction finishing): list again


def read_table(run_dirs: list[Path] | Path, table: str) -> ReadResult:
    """Every good part of `table` across run directories; bad files are listed, not read."""
    for _ in range(VANISHED_RETRIES):
        candidates, problems = valid_parts(run_dirs, table)
        parts, files = [], []
        try:
            for path in candidates:
                try:
                    parts.append(pq.read_table(path, schema=schema_for(table)))
                    files.append(path)
                except FileNotFoundError:
                    raise
                except Exception as exc:
                    problems.append(f"{path}: unreadable ({type(exc).__name__}: {str(exc)[:120]})")
        except FileNotFoundError:  # its rows are in a merged part now: list the parts again
            continue
        data = pa.concat_tables(parts) if parts else schema_for(table).empty_table()
        return ReadResult(data, files, problems)
    raise StorageError(f"parts of table {table!r} kept vanishing while they were read ({VANISHED_RETRIES} tries)")


class RunStore:
    """The only writer of a run directory's tables (one per process)."""

    def __init__(self, run_dir: Path | str, flush_rows: int = 100, flush_seconds: float = 5.0,
                 compact_over: int = COMPACT_OVER):
        self.run_dir = Path(run_dir)
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.compact_over = compact_over  # compact a table after a flush leaves more parts than this (0: never)
        self._buffers: dict[str, list[dict[str, Any]]] = {t: [] for t in SCHEMAS}
        self._oldest: float | None = None
        self._seq = 0
        self._lock = threading.Lock()
        self._parts_written: dict[str, int] = {}
        for table in SCHEMAS:
            directory = table_dir(self.run_dir, table)
            directory.mkdir(parents=True, exist_ok=True)
            for leftover in directory.glob(TMP_PREFIX + "*"):
                leftover.unlink(missing_ok=True)
            self._parts_written[table] = len(part_files(self.run_dir, table))

    # ------------------------------------------------------------ writing
    def append(self, table: str, rows: list[dict[str, Any]]) -> bool:
        """Buffer rows; returns True if this call flushed (the rows are then durable)."""
        if table not in SCHEMAS:
            raise StorageError(f"unknown table {table!r}; tables: {', '.join(SCHEMAS)}")
        with self._lock:
            self._buffers[table].extend(rows)
            if self._oldest is None and rows:
                self._oldest = time.monotonic()
        return self.flush_if_due()

    def pending_rows(self) -> int:
        return sum(len(b) for b in self._buffers.values())

    def flush_if_due(self) -> bool:
        due = self.pending_rows() >= self.flush_rows or (
            self._oldest is not None and time.monotonic() - self._oldest >= self.flush_seconds)
        if due:
            self.flush()
        return due

    def flush(self) -> list[Path]:
        """Write every buffered row now: one part file per table that has rows. The trials part
        goes last, so a complete trials row is never durable without its scalars and predictions."""
        written = []
        with self._lock:
            for table in sorted(self._buffers, key=lambda t: t == "trials"):
                rows = self._buffers[table]
                if rows:
                    written.append(self._write_part(table, rows))
                    self._buffers[table] = []
            self._oldest = None
        for table in SCHEMAS:
            self._compact_if_many(table)
        return written

    def write_now(self, table: str, rows: list[dict[str, Any]]) -> Path:
        """Write one part immediately (e.g. the run and unit records)."""
        with self._lock:
            return self._write_part(table, rows)

    def _write_part(self, table: str, rows: list[dict[str, Any]]) -> Path:
        schema = schema_for(table)
        try:
            data = pa.Table.from_pylist(rows, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError) as exc:
            raise StorageError(f"rows for table {table!r} do not fit its schema: {exc}") from exc
        directory = table_dir(self.run_dir, table)
        name = self._part_name()
        tmp = directory / f"{TMP_PREFIX}{name}"
        final = directory / name
        try:
            with open(tmp, "wb") as fh:
                pq.write_table(data, fh, compression="zstd")
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"could not write a {table!r} part in {directory} ({exc.strerror or exc}); "
                               "the rows are kept in memory: free space and flush again, or run the same "
                               "command again later to resume") from exc
        fsync_dir(directory)
        self._parts_written[table] += 1
        return final

    def _part_name(self) -> str:
        self._seq += 1
        return f"part-{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.parquet"

    def close(self) -> None:
        self.flush()

    # ------------------------------------------------------------ compaction
    def compact(self, table: str) -> Path | None:
        """Merge every part of `table` into one. A reader never misses or doubles a row, whenever a
        crash comes: the merged part is written under a temporary name and renamed like any part; it
        names the parts it holds in its metadata (`actscale.supersedes`) so that readers skip them
        from the moment it appears; they are deleted only after that."""
        with self._lock:
            files, _, leftovers = _parts(self.run_dir, table)
            for path in leftovers:  # held by a present merged part since an earlier, interrupted compaction
                path.unlink(missing_ok=True)
            if len(files) < 2:
                return None
            schema = schema_for(table)
            merged = schema.with_metadata({**schema.metadata, META_SUPERSEDES: json.dumps([f.name for f in files]).encode()})
            directory = table_dir(self.run_dir, table)
            final = directory / self._part_name()
            tmp = directory / f"{TMP_PREFIX}{final.name}"
            try:
                with pq.ParquetWriter(tmp, merged, compression="zstd") as writer:
                    for path in files:  # one part at a time: memory stays at one part's size
                        writer.write_table(pq.read_table(path, schema=schema).replace_schema_metadata(merged.metadata))
                replace_durably(tmp, final)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise StorageError(f"could not compact table {table!r} in {directory} ({exc.strerror or exc}); "
                                   "nothing was lost: its parts are as they were") from exc
            for path in files:
                path.unlink(missing_ok=True)
            fsync_dir(directory)
            self._parts_written[table] = 1
            return final

    def compact_all(self) -> dict[str, Path | None]:
        """Compact every table (at the end of a run)."""
        return {table: self.compact(table) for table in SCHEMAS}

    def _compact_if_many(self, table: str) -> None:
        if self.compact_over and self._parts_written[table] > self.compact_over:
            self.compact(table)

    # ------------------------------------------------------------ reading
    def read(self, table: str) -> ReadResult:
        return read_table(self.run_dir, table)

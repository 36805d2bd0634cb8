"""Symbol universes: the tickers a pipeline covers, from a list in config, a file or a database table.

A file or table is read again whenever a run (or a stream's symbol check) asks, so editing it changes the
next run without restarting anything; a file is re-parsed only when its modification time or size change.
"""

from __future__ import annotations

import csv
import io
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stockpulse.errors import ConfigError

_file_cache: dict[str, tuple[tuple[int, int], tuple[str, ...]]] = {}
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class Universe:
    """Where a pipeline's symbols come from: exactly one of ``tickers``, ``file`` or ``table``."""

    name: str
    tickers: tuple[str, ...] = ()
    file: str | None = None
    table: str | None = None
    column: str = "symbol"

    def describe(self) -> str:
        if self.file:
            return f"file {self.file}"
        if self.table:
            return f"table {self.table}.{self.column}"
        return f"list {self.name}"

    def resolve(self) -> tuple[str, ...]:
        """The tickers now (upper case, in source order, duplicates dropped); a ConfigError names the
        source and the offending entry when one is not a ticker or the source cannot be read."""
        if self.file:
            return _read_file(self, Path(self.file))
        if self.table:
            return _read_table(self)
        return self.tickers


def from_config(name: str, spec: Any, root: Path) -> Universe:
    """A universe from a ``symbols.<name>`` value: a list of tickers, ``{file: path}`` or ``{table: name}``."""
    from stockpulse.config import TICKER_PATTERN

    if isinstance(spec, list) and all(isinstance(s, str) for s in spec):
        bad = [s for s in spec if not TICKER_PATTERN.match(s)]
        if bad:
            raise ConfigError(f"invalid symbol {bad[0]!r}: tickers are upper case letters and digits, optionally "
                              "one '.' or '-' class suffix (e.g. AAPL, BRK.B, BTC-USD)")
        return Universe(name, tickers=tuple(spec))
    if isinstance(spec, dict) and set(spec) in ({"file"}, {"table"}, {"table", "column"}):
        if "file" in spec:
            path = Path(str(spec["file"]))
            path = path if path.is_absolute() else root / path
            universe = Universe(name, file=str(path))
            universe.resolve()  # a missing or malformed file is a configuration error now, not at 3 a.m.
            return universe
        table, column = str(spec["table"]), str(spec.get("column", "symbol"))
        if not all(part.isidentifier() for part in [*table.split("."), column]):
            raise ConfigError(f"table {table!r} / column {column!r}: not plain SQL identifiers")
        return Universe(name, table=table, column=column)
    raise ConfigError("must be a list of tickers, {file: path} (one symbol per line, or CSV with a 'symbol' "
                      "column) or {table: name[, column: symbol]}")


def _clean(universe: Universe, entries: list[tuple[str, str]]) -> tuple[str, ...]:
    """Upper-cased tickers without duplicates; ``entries`` are (where, value) pairs for error messages."""
    from stockpulse.config import TICKER_PATTERN

    seen: dict[str, None] = {}
    for where, value in entries:
        ticker = value.strip().upper()
        if not TICKER_PATTERN.match(ticker):
            raise ConfigError(f"symbols.{universe.name} ({universe.describe()}): {where}: {value!r} is not a ticker")
        seen.setdefault(ticker, None)
    return tuple(seen)


def _read_file(universe: Universe, path: Path) -> tuple[str, ...]:
    try:
        stat = path.stat()
        key = (stat.st_mtime_ns, stat.st_size)
        with _cache_lock:
            cached = _file_cache.get(str(path))
        if cached and cached[0] == key:
            return cached[1]
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"symbols.{universe.name}: cannot read {path}: {exc.strerror}") from None
    tickers = _clean(universe, _file_entries(text))
    with _cache_lock:
        _file_cache[str(path)] = (key, tickers)
    return tickers


def _file_entries(text: str) -> list[tuple[str, str]]:
    """One symbol per line (blank lines and ``#`` comments skipped), or CSV whose header has a ``symbol``
    (or ``ticker``) column; other columns (name, weight…) are ignored."""
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip() and not line.startswith("#")]
    if not lines:
        return []
    header = next(csv.reader([lines[0][1]]))
    names = [h.strip().lower() for h in header]
    column = next((names.index(c) for c in ("symbol", "ticker") if c in names), None)
    if column is None:
        if len(header) > 1:
            return [(f"line {n}", next(csv.reader([line]))[0]) for n, line in lines]
        return [(f"line {n}", line) for n, line in lines]
    rows = csv.reader(io.StringIO("\n".join(line for _, line in lines[1:])))
    return [(f"line {lines[i + 1][0]}", row[column] if column < len(row) else "")
            for i, row in enumerate(rows)]


def _read_table(universe: Universe) -> tuple[str, ...]:
    import sqlalchemy as sa

    from stockpulse.db.engine import get_engine

    assert universe.table is not None
    schema, _, name = universe.table.rpartition(".")
    table = sa.table(name, sa.column(universe.column), schema=schema or None)
    query = sa.select(table.c[universe.column]).order_by(table.c[universe.column])
    try:
        with get_engine().connect() as conn:
            values = [row[0] for row in conn.execute(query)]
    except sa.exc.DBAPIError as exc:
        raise ConfigError(f"symbols.{universe.name}: cannot read {universe.describe()}: "
                          f"{str(exc.orig).strip().splitlines()[0]}") from None
    return _clean(universe, [(f"row {n}", "" if v is None else str(v)) for n, v in enumerate(values, 1)])

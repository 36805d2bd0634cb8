"""Table definitions (SQLAlchemy Core: the loaders work in bulk, not object by object).

Every timestamp is stored in UTC. ``UTCDateTime`` keeps that true on SQLite too, which has no zone type.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)

metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
})


class UTCDateTime(TypeDecorator):
    """timestamptz on PostgreSQL; on SQLite a naive UTC value that comes back as an aware datetime."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must carry a zone")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


STAGES = ("fetch", "transform", "load")


def stage_columns() -> list[Column]:
    """Start and end of each stage, on runs and on their batches."""
    return [Column(f"{stage}_{edge}_at", UTCDateTime()) for stage in STAGES for edge in ("started", "finished")]


def ohlcv_columns() -> list[Column]:
    """The prices and volume of a bar (served or reference)."""
    return [Column(name, Float, nullable=False) for name in ("open", "high", "low", "close", "volume")]


bars = Table(
    "bars", metadata,
    Column("symbol", String(24), primary_key=True),
    Column("interval", String(8), primary_key=True),
    # Daily bars: the session date at 00:00 UTC, whatever the provider stamped (see docs/data-model.md).
    Column("ts", UTCDateTime(), primary_key=True),
    *ohlcv_columns(),
    Column("source", String(32), nullable=False),
    Column("ingested_at", UTCDateTime(), nullable=False),
)

# Bars of a pipeline marked ``options.reference``: a second provider's view of the same bars, kept per
# source and compared with ``bars`` by the reconciliation task, never served as the bars.
reference_bars = Table(
    "reference_bars", metadata,
    Column("source", String(32), primary_key=True),
    Column("symbol", String(24), primary_key=True),
    Column("interval", String(8), primary_key=True),
    Column("ts", UTCDateTime(), primary_key=True),
    *ohlcv_columns(),
    Column("ingested_at", UTCDateTime(), nullable=False),
)

pipeline_runs = Table(
    "pipeline_runs", metadata,
    Column("id", String(36), primary_key=True),
    Column("pipeline", String(64), nullable=False),
    Column("data_type", String(32), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("trigger", String(16), nullable=False),  # schedule | manual | backfill | replay | gap_fill
    # queued | running | succeeded | partial | failed | skipped (a calendar-bound schedule outside its days)
    Column("status", String(16), nullable=False),
    Column("params", JSON, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime()),
    Column("finished_at", UTCDateTime()),
    *stage_columns(),
    Column("batches_total", Integer, nullable=False, default=0),
    Column("batches_done", Integer, nullable=False, default=0),
    Column("records_fetched", Integer, nullable=False, default=0),
    Column("records_loaded", Integer, nullable=False, default=0),
    Column("records_rejected", Integer, nullable=False, default=0),
    Column("error_type", String(64)),
    Column("error_message", Text),
    Column("task_ids", JSON, nullable=False),
    # The run's OpenTelemetry trace (32 hex digits) when tracing is on and the run was sampled.
    Column("trace_id", String(32)),
    Index("ix_pipeline_runs_pipeline_created", "pipeline", "created_at"),
    Index("ix_pipeline_runs_trace", "trace_id"),
    Index("ix_pipeline_runs_status", "status"),
)

# One row per fetch -> transform -> load chain of a run. Stages *set* these counts rather than add to
# them, so a stage that runs twice (redelivery after a worker died) cannot double-count.
pipeline_run_batches = Table(
    "pipeline_run_batches", metadata,
    Column("run_id", String(36), primary_key=True),
    Column("batch_no", Integer, primary_key=True),
    Column("symbols", JSON, nullable=False),
    # ISO dates; for a stream's gap fill, ISO datetimes of the exact window.
    Column("start", String(40), nullable=False),
    Column("end", String(40), nullable=False),
    Column("status", String(16), nullable=False),  # queued | running | loaded | failed
    Column("fetched", Integer, nullable=False, default=0),
    Column("valid", Integer, nullable=False, default=0),
    Column("rejected", Integer, nullable=False, default=0),
    Column("loaded", Integer, nullable=False, default=0),
    *stage_columns(),
    Column("attempts", JSON, nullable=False),
    Column("task_ids", JSON, nullable=False),
    Column("error_type", String(64)),
    Column("error_message", Text),
    # Last sign of life (any stage start, retry or wait): the stale-run sweeper looks at it.
    Column("updated_at", UTCDateTime()),
    Index("ix_pipeline_run_batches_status", "status"),
)

watermarks = Table(
    "watermarks", metadata,
    Column("pipeline", String(64), primary_key=True),
    Column("symbol", String(24), primary_key=True),
    Column("last_ts", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

quarantine = Table(
    "quarantine", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pipeline", String(64), nullable=False),
    Column("run_id", String(36), nullable=False),
    Column("batch_no", Integer, nullable=False),
    Column("record_no", Integer, nullable=False),
    Column("data_type", String(32), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("symbol", String(64)),
    Column("record", Text, nullable=False),  # the record as received, JSON text
    Column("reason", Text, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    # A transform that runs twice quarantines the same record once.
    UniqueConstraint("run_id", "batch_no", "record_no"),
    Index("ix_quarantine_pipeline_created", "pipeline", "created_at"),
)

# Data-quality findings of the transform stage's checks (stockpulse/quality.py): a warn finding's record
# loaded, an error finding's record quarantined as well. One row per (run, batch, check, record).
data_quality_findings = Table(
    "data_quality_findings", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("found_at", UTCDateTime(), nullable=False),
    Column("pipeline", String(64), nullable=False),
    Column("data_type", String(32), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("run_id", String(36), nullable=False),
    Column("batch_no", Integer, nullable=False),
    Column("check", String(64), nullable=False),
    Column("severity", String(8), nullable=False),
    Column("symbol", String(64)),
    Column("record_key", String(200), nullable=False),  # the record's natural key, e.g. AAPL|1d|2024-01-02...
    Column("details", JSON, nullable=False),
    UniqueConstraint("run_id", "batch_no", "check", "record_key"),
    Index("ix_quality_pipeline_found", "pipeline", "found_at"),
)

# News: one article per canonical URL (scheme and host lower-cased, tracking parameters removed, see
# stockpulse/datatypes/news.py), whichever providers reported it; each provider's sighting in
# news_article_sources, the symbols it concerns (with provider sentiment where given) in news_symbols.
news_articles = Table(
    "news_articles", metadata,
    Column("id", String(32), primary_key=True),  # first 32 hex digits of sha256(canonical_url)
    Column("canonical_url", Text, nullable=False),
    Column("url", Text, nullable=False),  # as the first provider gave it
    Column("title", Text, nullable=False),
    Column("summary", Text),
    Column("publisher", String(200)),
    Column("author", String(200)),
    Column("published_at", UTCDateTime(), nullable=False),
    Column("language", String(16)),
    Column("first_provider", String(32), nullable=False),
    Column("ingested_at", UTCDateTime(), nullable=False),
    Index("ix_news_articles_published_at", "published_at"),
)

news_article_sources = Table(
    "news_article_sources", metadata,
    Column("article_id", String(32), ForeignKey("news_articles.id", ondelete="CASCADE"), primary_key=True),
    Column("provider", String(32), primary_key=True),
    Column("provider_id", String(200)),  # the provider's own id for the item, when it has one
    Column("url", Text, nullable=False),  # the URL as this provider gave it
    Column("pipeline", String(64), nullable=False),
    Column("first_seen_at", UTCDateTime(), nullable=False),
)

news_symbols = Table(
    "news_symbols", metadata,
    Column("article_id", String(32), ForeignKey("news_articles.id", ondelete="CASCADE"), primary_key=True),
    Column("symbol", String(24), primary_key=True),
    Column("sentiment_score", Float),
    Column("sentiment_label", String(32)),
    Column("relevance_score", Float),
    Column("sentiment_provider", String(32)),
    Index("ix_news_symbols_symbol", "symbol"),
)

# Fundamentals. company_profiles: one current row per symbol and source, updated in place.
company_profiles = Table(
    "company_profiles", metadata,
    Column("symbol", String(24), primary_key=True),
    Column("source", String(32), primary_key=True),
    Column("name", String(300)),
    Column("exchange", String(100)),
    Column("currency", String(8)),
    Column("country", String(64)),
    Column("sector", String(200)),
    Column("industry", String(200)),
    Column("cik", String(10)),
    Column("market_cap", Float),  # in currency units (Finnhub reports millions: converted)
    Column("shares_outstanding", Float),  # in shares (Finnhub reports millions: converted)
    Column("ipo_date", String(10)),
    Column("website", Text),
    Column("description", Text),
    Column("fiscal_year_end", String(16)),
    Column("as_of", String(10)),  # the provider's reference date (Alpha Vantage's LatestQuarter), if any
    Column("updated_at", UTCDateTime(), nullable=False),
)

# financial_facts: long form, one row per (symbol, source, concept, unit, period, filing). An instant fact
# (a balance) has period_start = period_end. A restated value (same concept and period, later filing) is
# another row; financial_facts_latest (a view) and facts_as_of() pick the newest filed as of a date.
# Sources without filings (Finnhub, Alpha Vantage ratios) use accession '' and their as-of date as filed.
financial_facts = Table(
    "financial_facts", metadata,
    Column("symbol", String(24), primary_key=True),
    Column("source", String(32), primary_key=True),
    Column("concept", String(200), primary_key=True),  # e.g. us-gaap:Revenues, peTTM, PERatio
    Column("unit", String(32), primary_key=True),
    Column("period_start", String(10), primary_key=True),
    Column("period_end", String(10), primary_key=True),
    Column("accession", String(32), primary_key=True),
    Column("fiscal_year", Integer),
    Column("fiscal_period", String(8)),
    Column("form", String(16)),
    Column("filed", String(10), nullable=False),
    Column("value", Float, nullable=False),
    Column("frame", String(16)),
    Column("ingested_at", UTCDateTime(), nullable=False),
    Index("ix_financial_facts_symbol_concept", "symbol", "concept", "period_end"),
)

# SEC's ticker -> CIK map (company_tickers.json), refreshed daily by the SEC fetcher.
sec_tickers = Table(
    "sec_tickers", metadata,
    Column("ticker", String(24), primary_key=True),
    Column("cik", Integer, nullable=False),
    Column("title", String(300)),
    Column("refreshed_at", UTCDateTime(), nullable=False),
)

# Real-time trades. trade_id is the provider's id where it sends one (Alpaca ``i``, Coinbase ``trade_id``);
# Finnhub sends none, so it is derived from the trade itself (see stockpulse/providers/finnhub.py), which
# makes a replayed frame a no-op.
trades = Table(
    "trades", metadata,
    Column("source", String(32), primary_key=True),
    Column("symbol", String(24), primary_key=True),
    Column("ts", UTCDateTime(), primary_key=True),  # microsecond precision
    Column("trade_id", String(64), primary_key=True),
    Column("price", Float, nullable=False),
    Column("size", Float, nullable=False),
    Column("conditions", String(64)),  # comma-separated condition codes, as given
    Column("exchange", String(16)),
    Column("ingested_at", UTCDateTime(), nullable=False),
    Index("ix_trades_symbol_ts", "symbol", "ts"),
)

# One row per stream shard: the highest fencing token that has written. A consumer writes only while its
# token is the highest, in the same transaction as its rows, so a consumer that lost its lease (paused,
# partitioned) cannot write after another took over.
stream_fences = Table(
    "stream_fences", metadata,
    Column("shard", String(128), primary_key=True),
    Column("token", Integer, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# Windows a stream was not receiving (disconnects, silences), and how each was closed.
stream_gaps = Table(
    "stream_gaps", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pipeline", String(64), nullable=False),
    Column("shard", String(128), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("ended_at", UTCDateTime(), nullable=False),
    Column("reason", Text, nullable=False),
    # reported (no REST source, or the fill could not start) | backfill queued | market closed (nothing traded)
    Column("resolution", String(32), nullable=False),
    Column("backfill_run_id", String(36)),
    Index("ix_stream_gaps_pipeline_started", "pipeline", "started_at"),
)

"""Company fundamentals: profiles (one current row per symbol and source) and financial facts in long form.

A record is ``kind: profile`` or ``kind: fact``. Facts keep every filing: a restated value (same concept
and period, later filing) is a row of its own, and "latest as of a date" is :func:`facts_as_of` (or the
``financial_facts_latest`` view for today). Dates are ISO strings (``YYYY-MM-DD``); an instant fact (a
balance) has ``period_start == period_end``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema
from sqlalchemy import Connection, func, select

from stockpulse.datatypes.bars import SYMBOL
from stockpulse.datatypes.base import DataType
from stockpulse.db.models import company_profiles, financial_facts
from stockpulse.pipeline.loader import upsert


class _CompanyRecord(Schema):
    class Meta:
        unknown = RAISE

    symbol = fields.String(required=True, validate=validate.Regexp(SYMBOL, error="invalid symbol"))
    source = fields.String(required=True)


class ProfileSchema(_CompanyRecord):
    kind = fields.Constant("profile")
    name = fields.String(required=True, validate=validate.Length(min=1, max=300), error_messages={
        "required": "the provider returned an empty profile (unknown symbol, or a fund it has no profile for)"})
    exchange = fields.String(allow_none=True, load_default=None)
    currency = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=8))
    country = fields.String(allow_none=True, load_default=None)
    sector = fields.String(allow_none=True, load_default=None)
    industry = fields.String(allow_none=True, load_default=None)
    cik = fields.String(allow_none=True, load_default=None, validate=validate.Regexp(r"^\d{1,10}$"))
    market_cap = fields.Float(allow_none=True, load_default=None, allow_nan=False, validate=validate.Range(min=0))
    shares_outstanding = fields.Float(allow_none=True, load_default=None, allow_nan=False,
                                      validate=validate.Range(min=0))
    ipo_date = fields.Date(allow_none=True, load_default=None)
    website = fields.String(allow_none=True, load_default=None)
    description = fields.String(allow_none=True, load_default=None)
    fiscal_year_end = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=16))
    as_of = fields.Date(allow_none=True, load_default=None)


class FactSchema(_CompanyRecord):
    kind = fields.Constant("fact")
    concept = fields.String(required=True, validate=validate.Length(min=1, max=200))
    unit = fields.String(load_default="", validate=validate.Length(max=32))
    period_start = fields.Date(allow_none=True, load_default=None)
    period_end = fields.Date(required=True)
    accession = fields.String(load_default="", validate=validate.Length(max=32))
    fiscal_year = fields.Integer(allow_none=True, load_default=None)
    fiscal_period = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=8))
    form = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=16))
    filed = fields.Date(required=True)
    value = fields.Float(required=True, allow_nan=False)
    frame = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=16))

    @validates_schema
    def _period(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("period_start") and data["period_start"] > data["period_end"]:
            raise ValidationError(f"period_start {data['period_start']} is after period_end {data['period_end']}")


class FundamentalsSchema(Schema):
    """Dispatches on ``kind`` to the profile or the fact schema (their messages are the reasons)."""

    SCHEMAS = {"profile": ProfileSchema(), "fact": FactSchema()}

    def load(self, data: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind not in self.SCHEMAS:
            raise ValidationError({"kind": [f"must be one of: {', '.join(self.SCHEMAS)}"]})
        return self.SCHEMAS[kind].load(data, **kwargs)


PROFILE_COLUMNS = ("symbol", "source", "name", "exchange", "currency", "country", "sector", "industry", "cik",
                   "market_cap", "shares_outstanding", "ipo_date", "website", "description", "fiscal_year_end",
                   "as_of")
FACT_COLUMNS = ("symbol", "source", "concept", "unit", "period_start", "period_end", "accession", "fiscal_year",
                "fiscal_period", "form", "filed", "value", "frame")
FACT_KEY = ("symbol", "source", "concept", "unit", "period_start", "period_end", "accession")


def normalise(record: dict[str, Any]) -> dict[str, Any]:
    for name, value in list(record.items()):
        if isinstance(value, date):
            record[name] = value.isoformat()
    if record["kind"] == "fact" and record["period_start"] is None:
        record["period_start"] = record["period_end"]  # an instant
    return record


def key_of(record: dict[str, Any]) -> tuple[Any, ...]:
    if record["kind"] == "profile":
        return ("profile", record["symbol"], record["source"])
    return ("fact", *(record[c] for c in FACT_KEY))


def to_row(record: dict[str, Any]) -> list[Any]:
    columns = PROFILE_COLUMNS if record["kind"] == "profile" else FACT_COLUMNS
    return [record["kind"], *(record[c] for c in columns)]


def load(conn: Connection, rows: list[tuple[Any, ...]], *, pipeline: str) -> int:
    profiles = [tuple(r[1:]) for r in rows if r[0] == "profile"]
    facts = [tuple(r[1:]) for r in rows if r[0] == "fact"]
    changed = upsert(conn, company_profiles, PROFILE_COLUMNS, ("symbol", "source"), profiles,
                     stamp_column="updated_at")
    return changed + upsert(conn, financial_facts, FACT_COLUMNS, FACT_KEY, facts)


def watermark_points(rows: list[tuple[Any, ...]]) -> dict[str, datetime]:
    """Per symbol, the newest filing date among loaded facts (a profile counts as filed on its as-of date,
    else today)."""
    latest: dict[str, datetime] = {}
    today = datetime.now(UTC).date().isoformat()
    for row in rows:
        day = row[1 + FACT_COLUMNS.index("filed")] if row[0] == "fact" else (
            row[1 + PROFILE_COLUMNS.index("as_of")] or today)
        moment = datetime.fromisoformat(day).replace(tzinfo=UTC)
        symbol = row[1]
        if symbol not in latest or moment > latest[symbol]:
            latest[symbol] = moment
    return latest


def facts_as_of(conn: Connection, symbol: str, as_of: date, *, concept: str | None = None,
                source: str | None = None) -> list[Any]:
    """Each (source, concept, unit, period)'s value as known on ``as_of``: the newest filing filed by then."""
    f = financial_facts
    query = select(f).where(f.c.symbol == symbol, f.c.filed <= as_of.isoformat())
    if concept:
        query = query.where(f.c.concept == concept)
    if source:
        query = query.where(f.c.source == source)
    ranked = query.add_columns(func.row_number().over(
        partition_by=(f.c.source, f.c.concept, f.c.unit, f.c.period_start, f.c.period_end),
        order_by=(f.c.filed.desc(), f.c.accession.desc())).label("newest")).subquery()
    return conn.execute(select(*[ranked.c[c.name] for c in f.columns]).where(ranked.c.newest == 1)
                        .order_by(ranked.c.concept, ranked.c.period_end)).all()


FUNDAMENTALS = DataType(
    name="fundamentals",
    schema=FundamentalsSchema(),
    table=financial_facts,
    key=FACT_KEY,
    columns=("kind", *FACT_COLUMNS),
    normalise=normalise,
    to_row=to_row,
    from_row=tuple,
    key_of=key_of,
    load=load,
    watermark_points=watermark_points,
    # An incremental run finds no new filing for most companies most days.
    every_symbol_has_data=False,
)
